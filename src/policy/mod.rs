//! Traffic policy applied on the request path: who the client is behind proxies, and request
//! rate limits.

pub mod client_ip;
pub mod ratelimit;
