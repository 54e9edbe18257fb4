//! Traffic policy applied on the request path: who the client is behind proxies, request rate
//! limits, header rules, and request hardening.

pub mod client_ip;
pub mod compression;
pub mod connections;
pub mod hardening;
pub mod headers;
pub mod ratelimit;
