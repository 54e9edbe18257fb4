//! RFC 9211 `Cache-Status` values, e.g. `outpost; hit; ttl=57` or
//! `outpost; fwd=uri-miss; fwd-status=200; stored`.

use std::fmt::Write;

/// Why a request went forward to the origin (RFC 9211 2.2 `fwd` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// A rule says not to cache.
    Bypass,
    /// The method is not cacheable (POST, PUT ...).
    Method,
    /// Nothing stored for the URI.
    UriMiss,
    /// A response is stored for the URI but not for this request's `Vary` values.
    VaryMiss,
    /// Not found for another reason (e.g. the key was predicted uncacheable, lock timeout).
    Miss,
    /// The request asked for validation or refused the stored response (`no-cache`, `max-age`).
    Request,
    /// The stored response was stale and had to be validated or replaced.
    Stale,
    /// Parts of the response were held; the origin was asked for the rest.
    Partial,
}

impl Forward {
    /// The RFC 9211 token.
    pub fn as_str(self) -> &'static str {
        match self {
            Forward::Bypass => "bypass",
            Forward::Method => "method",
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Miss => "miss",
            Forward::Request => "request",
            Forward::Stale => "stale",
            Forward::Partial => "partial",
        }
    }
}

/// What the cache did for one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from cache without contacting the origin; `ttl` is the remaining freshness
    /// (negative when a stale response was served).
    Hit {
        /// Remaining freshness in seconds.
        ttl: i64,
        /// The response was stale (served under max-stale / stale-while-revalidate / stale-if-error).
        stale: bool,
        /// This request waited for another request's fill of the same key.
        collapsed: bool,
        /// Why a stale response was served (`stale-while-revalidate`, `max-stale`).
        detail: Option<&'static str>,
    },
    /// The origin failed (unreachable, timed out, or answered `status`) and a stale stored
    /// response was served instead (stale-if-error).
    StaleOnError {
        /// Remaining freshness in seconds (negative).
        ttl: i64,
        /// The origin's error status, when it answered one.
        status: Option<u16>,
        /// The origin could not be reached: served under RFC 9111 4.2.4, not a
        /// stale-if-error window.
        disconnected: bool,
    },
    /// Went to the origin.
    Forward {
        /// Why.
        fwd: Forward,
        /// The origin's status, when it answered.
        status: Option<u16>,
        /// The response was stored.
        stored: bool,
        /// Extra detail (e.g. why it was not stored).
        detail: Option<&'static str>,
    },
}

/// The `Cache-Status` value of a response that came with `upstream` (from a shield or an
/// origin's cache), this node's entry being `ours`: RFC 9211 lists the caches nearer the origin
/// first, this node's entry last.
pub fn after_upstream(upstream: Option<&http::HeaderValue>, ours: String) -> String {
    match upstream.and_then(|v| v.to_str().ok()).map(str::trim) {
        Some(upstream) if !upstream.is_empty() => format!("{upstream}, {ours}"),
        _ => ours,
    }
}

impl CacheStatus {
    /// Render as a `Cache-Status` field value for cache `name`.
    pub fn render(&self, name: &str) -> String {
        let mut s = String::with_capacity(64);
        s.push_str(name);
        match self {
            CacheStatus::Hit {
                ttl,
                stale,
                collapsed,
                detail,
            } => {
                let _ = write!(s, "; hit; ttl={ttl}");
                if *stale {
                    s.push_str("; fwd=stale");
                }
                if *collapsed {
                    s.push_str("; collapsed");
                }
                if let Some(d) = detail {
                    let _ = write!(s, "; detail={d}");
                }
            }
            CacheStatus::StaleOnError {
                ttl,
                status,
                disconnected,
            } => {
                s.push_str("; fwd=stale");
                if let Some(code) = status {
                    let _ = write!(s, "; fwd-status={code}");
                }
                let detail = if *disconnected {
                    "disconnected"
                } else {
                    "stale-if-error"
                };
                let _ = write!(s, "; ttl={ttl}; detail={detail}");
            }
            CacheStatus::Forward {
                fwd,
                status,
                stored,
                detail,
            } => {
                s.push_str("; fwd=");
                s.push_str(fwd.as_str());
                if let Some(code) = status {
                    let _ = write!(s, "; fwd-status={code}");
                }
                if *stored {
                    s.push_str("; stored");
                }
                if let Some(d) = detail {
                    let _ = write!(s, "; detail={d}");
                }
            }
        }
        s
    }

    /// The low-cardinality metrics label for this status.
    pub fn label(&self) -> &'static str {
        match self {
            CacheStatus::Hit { stale: false, .. } => "hit",
            CacheStatus::Hit { stale: true, .. } | CacheStatus::StaleOnError { .. } => "stale",
            CacheStatus::Forward {
                fwd: Forward::Bypass | Forward::Method,
                ..
            } => "bypass",
            CacheStatus::Forward {
                fwd: Forward::Stale,
                status: Some(304),
                ..
            } => "revalidated",
            CacheStatus::Forward {
                fwd: Forward::Stale,
                ..
            } => "expired",
            CacheStatus::Forward { stored: true, .. } => "miss",
            CacheStatus::Forward { status: None, .. } => "error",
            CacheStatus::Forward { .. } => "uncacheable",
        }
    }
}

/// Every value [`CacheStatus::label`] can return (metrics are pre-registered for each), and
/// `refused`: answered by the node's traffic policy (a rate limit) without the cache.
pub const LABELS: &[&str] = &[
    "refused",
    "hit",
    "stale",
    "bypass",
    "revalidated",
    "expired",
    "miss",
    "error",
    "uncacheable",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc9211_parameters() {
        let hit = CacheStatus::Hit {
            ttl: 57,
            stale: false,
            collapsed: false,
            detail: None,
        };
        assert_eq!(hit.render("outpost"), "outpost; hit; ttl=57");
        let swr = CacheStatus::Hit {
            ttl: -3,
            stale: true,
            collapsed: false,
            detail: Some("stale-while-revalidate"),
        };
        assert_eq!(
            swr.render("outpost"),
            "outpost; hit; ttl=-3; fwd=stale; detail=stale-while-revalidate"
        );
        let sie = CacheStatus::StaleOnError {
            ttl: -12,
            status: Some(503),
            disconnected: false,
        };
        assert_eq!(
            sie.render("outpost"),
            "outpost; fwd=stale; fwd-status=503; ttl=-12; detail=stale-if-error"
        );
        let gone = CacheStatus::StaleOnError {
            ttl: -99,
            status: None,
            disconnected: true,
        };
        assert_eq!(
            gone.render("outpost"),
            "outpost; fwd=stale; ttl=-99; detail=disconnected"
        );
        let miss = CacheStatus::Forward {
            fwd: Forward::UriMiss,
            status: Some(200),
            stored: true,
            detail: None,
        };
        assert_eq!(
            miss.render("outpost"),
            "outpost; fwd=uri-miss; fwd-status=200; stored"
        );
        let ns = CacheStatus::Forward {
            fwd: Forward::UriMiss,
            status: Some(200),
            stored: false,
            detail: Some("no-store"),
        };
        assert_eq!(
            ns.render("edge"),
            "edge; fwd=uri-miss; fwd-status=200; detail=no-store"
        );
        for s in [hit, swr, sie, miss, ns] {
            assert!(LABELS.contains(&s.label()));
        }
    }
}
