//! Targeted cache control (RFC 9213): `CDN-Cache-Control` and node-specific fields such as
//! `Outpost-Cache-Control` let an origin instruct this cache apart from browsers.
//!
//! The first configured targeted field that is present and a valid Structured Fields
//! Dictionary governs this cache's decisions, and `Cache-Control` and `Expires` are then
//! ignored for them; an empty or unparsable targeted field is ignored (as if absent).

use http::{HeaderMap, HeaderName};
use pingora_cache::cache_control::CacheControl;

/// The targeted field governing a response's caching here, if any: the first of `targets`
/// present and valid.
pub fn governing<'a>(headers: &HeaderMap, targets: &'a [HeaderName]) -> Option<&'a HeaderName> {
    targets.iter().find(|name| valid(headers, name))
}

/// Whether `name` is present, non-empty and one valid Dictionary (all its lines together).
fn valid(headers: &HeaderMap, name: &HeaderName) -> bool {
    let mut joined = Vec::new();
    for (i, v) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if joined.iter().all(u8::is_ascii_whitespace) {
        return false;
    }
    sfv::Parser::parse_dictionary(&joined).is_ok()
}

/// The directives deciding this cache's use of a response: those of its governing targeted
/// field (and which field it is), else its `Cache-Control`.
pub fn directives<'a>(
    headers: &HeaderMap,
    targets: &'a [HeaderName],
) -> (Option<CacheControl>, Option<&'a HeaderName>) {
    match governing(headers, targets) {
        Some(name) => (
            CacheControl::from_headers_named(name.as_str(), headers),
            Some(name),
        ),
        None => (
            CacheControl::from_headers_named("cache-control", headers),
            None,
        ),
    }
}

/// The Cache-Status `detail` naming the targeted field that decided (a token).
pub fn detail(name: &HeaderName) -> &'static str {
    match name.as_str() {
        "cdn-cache-control" => "cdn-cache-control",
        "outpost-cache-control" => "outpost-cache-control",
        _ => "targeted-cache-control",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::headers;

    fn targets() -> Vec<HeaderName> {
        vec![
            HeaderName::from_static("outpost-cache-control"),
            HeaderName::from_static("cdn-cache-control"),
        ]
    }

    #[test]
    fn the_first_valid_targeted_field_governs() {
        let t = targets();
        let h = headers(&[
            ("cache-control", "max-age=5"),
            ("cdn-cache-control", "max-age=600"),
        ]);
        let (cc, by) = directives(&h, &t);
        assert_eq!(by.map(|n| n.as_str()), Some("cdn-cache-control"));
        assert_eq!(cc.unwrap().max_age().unwrap(), Some(600));
        let h = headers(&[
            ("outpost-cache-control", "no-store"),
            ("cdn-cache-control", "max-age=600"),
        ]);
        assert_eq!(
            governing(&h, &t).map(|n| n.as_str()),
            Some("outpost-cache-control")
        );
        assert!(directives(&h, &t).0.unwrap().no_store());
    }

    #[test]
    fn empty_or_invalid_targeted_fields_are_ignored() {
        let t = targets();
        for bad in [
            "",
            "   ",
            "max-age=abc,",
            "max-age=\"60",
            "no-store;;",
            "=1",
        ] {
            let h = headers(&[("cdn-cache-control", bad), ("cache-control", "max-age=7")]);
            let (cc, by) = directives(&h, &t);
            assert_eq!(by, None, "{bad:?}");
            assert_eq!(cc.unwrap().max_age().unwrap(), Some(7), "{bad:?}");
        }
        // an invalid node-specific field falls through to CDN-Cache-Control
        let h = headers(&[
            ("outpost-cache-control", "max-age=1.5.5"),
            ("cdn-cache-control", "max-age=9"),
        ]);
        assert_eq!(
            governing(&h, &t).map(|n| n.as_str()),
            Some("cdn-cache-control")
        );
        // several lines form one dictionary
        let h = headers(&[
            ("cdn-cache-control", "max-age=9"),
            ("cdn-cache-control", "must-revalidate"),
        ]);
        let cc = directives(&h, &t).0.unwrap();
        assert!(cc.must_revalidate());
    }
}
