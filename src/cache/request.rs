//! Request `Cache-Control` directives (RFC 9111 5.2.1) that change how a stored response is used.

use http::header;
use pingora_cache::cache_control::{CacheControl, DirectiveKey};
use pingora_http::RequestHeader;
use std::time::Duration;

/// The request directives Outpost acts on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `no-cache` (or `Pragma: no-cache` without Cache-Control): validate before using a stored response.
    pub no_cache: bool,
    /// `max-age=N`: don't use a stored response older than N seconds.
    pub max_age: Option<u32>,
    /// `min-fresh=N`: the stored response must stay fresh for N more seconds.
    pub min_fresh: Option<u32>,
    /// `max-stale[=N]`: a stale response is acceptable (up to N seconds past its lifetime).
    pub max_stale: Option<Option<u32>>,
    /// `only-if-cached`: answer from the cache or 504, never the origin.
    pub only_if_cached: bool,
}

impl RequestDirectives {
    /// Parse the directives of `req`; invalid values are ignored.
    pub fn parse(req: &RequestHeader) -> Self {
        let Some(cc) = CacheControl::from_req_headers(req) else {
            let pragma_no_cache = req
                .headers
                .get(header::PRAGMA)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.split(',')
                        .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
                });
            return RequestDirectives {
                no_cache: pragma_no_cache,
                ..Default::default()
            };
        };
        let seconds = |name: &str| {
            cc.directives
                .get(&DirectiveKey::from_lowercase(name))
                .and_then(|v| v.as_ref())
                .and_then(|v| v.parse_as_delta_seconds().ok())
        };
        RequestDirectives {
            no_cache: cc.no_cache(),
            max_age: seconds("max-age"),
            min_fresh: seconds("min-fresh"),
            max_stale: cc.has_key("max-stale").then(|| seconds("max-stale")),
            only_if_cached: cc.only_if_cached(),
        }
    }

    /// Whether the request refuses a stored response of `age` without validation (RFC 9111
    /// 5.2.1.4 `no-cache`, 5.2.1.1 `max-age`, 5.2.1.3 `min-fresh`: a fresh response that stays
    /// so for fewer than N more seconds, `fresh_for` being its remaining freshness).
    pub fn forces_validation(&self, age: Duration, is_fresh: bool, fresh_for: i64) -> bool {
        self.no_cache
            || self
                .max_age
                .is_some_and(|max| age > Duration::from_secs(max.into()))
            || (is_fresh && self.min_fresh.is_some_and(|min| fresh_for < i64::from(min)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(cc: Option<&str>, pragma: Option<&str>) -> RequestDirectives {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        if let Some(cc) = cc {
            req.insert_header("cache-control", cc).unwrap();
        }
        if let Some(p) = pragma {
            req.insert_header("pragma", p).unwrap();
        }
        RequestDirectives::parse(&req)
    }

    #[test]
    fn request_directives_parse() {
        let d = parse(Some("max-age=0, min-fresh=5, max-stale"), None);
        assert_eq!(d.max_age, Some(0));
        assert_eq!(d.min_fresh, Some(5));
        assert_eq!(d.max_stale, Some(None));
        assert!(!d.no_cache);
        assert!(parse(Some("no-cache"), None).no_cache);
        assert!(parse(Some("only-if-cached"), None).only_if_cached);
        assert_eq!(parse(Some("max-stale=30"), None).max_stale, Some(Some(30)));
    }

    #[test]
    fn pragma_no_cache_counts_only_without_cache_control() {
        assert!(parse(None, Some("no-cache")).no_cache);
        assert!(!parse(Some("max-age=60"), Some("no-cache")).no_cache);
    }
}
