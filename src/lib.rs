//! Outpost: an HTTP edge caching reverse proxy (a self-hosted CDN node) on Pingora.
//!
//! Module map (see `shared/design/architecture.md`): `config` (TOML -> typed), `rules`
//! (policy), `cache` (storage tiers and HTTP caching semantics), `upstream` (origins),
//! `policy` (client address, rate limits, header rules, hardening, compression), `proxy` (the
//! request path), `purge` (bans and their lurker), `journal` (the crash-safe record files
//! of the cache directory), `admin` and `metrics` (own listeners),
//! `tls` (HTTPS listeners' certificates, their reload, HTTP -> HTTPS redirects), `observe`
//! (top keys, `outpost top`), `server` (bootstrap).

#![deny(missing_docs)]

pub mod admin;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod journal;
pub mod lean;
pub mod metrics;
pub mod node;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod purge;
pub mod rules;
pub mod server;
pub mod tls;
pub mod upstream;

/// Helpers shared by unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use http::{HeaderMap, HeaderName};

    /// A header map of `(name, value)` pairs, in order (repeated names appended).
    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).expect("a header name"),
                v.parse().expect("a header value"),
            );
        }
        h
    }
}
