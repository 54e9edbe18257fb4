//! Watching a node: the access log.

pub mod access_log;
