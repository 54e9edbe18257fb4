//! Watching a node: the access log and OpenTelemetry tracing.

pub mod access_log;
pub mod otel;
