//! Traffic policy applied on the request path: who the client is behind proxies, which
//! forwarding fields go upstream, request rate limits, header rules, request hardening, and how
//! responses are written to client connections.

pub mod client_ip;
pub mod coalesce;
pub mod compression;
pub mod connections;
pub mod forwarding;
pub mod hardening;
pub mod headers;
pub mod ratelimit;
pub mod request_line;
pub mod sendfile;
