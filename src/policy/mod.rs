//! Traffic policy applied on the request path: who the client is behind proxies, request rate
//! limits, and header rules.

pub mod client_ip;
pub mod headers;
pub mod ratelimit;
