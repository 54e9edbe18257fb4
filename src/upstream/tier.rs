//! Tiering between Outpost nodes: loop detection (RFC 8586 `CDN-Loop`, and `Via`) and the
//! cache-key hint an edge sends its shield so both store the object under one key.

use http::header::{HeaderMap, HeaderValue, VIA};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

/// RFC 8586 loop-detection field.
pub const CDN_LOOP: &str = "cdn-loop";

/// The edge's primary cache key, sent to its shield (honoured from `[shield] trusted_edges`).
pub const CACHE_KEY: &str = "outpost-cache-key";

/// Bytes escaped in the key hint: controls (the key's `\n` separators), space, `%`, and
/// anything outside ASCII.
const KEY_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b'"').add(0x7f);

/// Whether this request already passed the node `name`: its `CDN-Loop` names it as a cdn-id,
/// or its `Via` as a received-by pseudonym.
pub fn passed(headers: &HeaderMap, name: &str) -> bool {
    let matches = |id: &str| id.trim().eq_ignore_ascii_case(name);
    let cdn_loop = headers
        .get_all(CDN_LOOP)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        // cdn-info = cdn-id *( OWS ";" OWS parameter )
        .any(|info| matches(info.split(';').next().unwrap_or("")));
    cdn_loop
        || headers
            .get_all(VIA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            // via entry = received-protocol RWS received-by [ RWS comment ]
            .any(|entry| entry.split_whitespace().nth(1).is_some_and(matches))
}

/// The `CDN-Loop` value with this node's entry appended.
pub fn cdn_loop_value(headers: &HeaderMap, name: &str) -> String {
    let mut value = String::new();
    for v in headers
        .get_all(CDN_LOOP)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        if !v.trim().is_empty() {
            value.push_str(v.trim());
            value.push_str(", ");
        }
    }
    value.push_str(name);
    value
}

/// The key hint for `primary` (a header value: never fails).
pub fn encode_key(primary: &str) -> HeaderValue {
    let text = utf8_percent_encode(primary, KEY_ESCAPES).to_string();
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The primary key carried by a key hint, if it decodes.
pub fn decode_key(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let key = percent_decode_str(text).decode_utf8().ok()?;
    (!key.is_empty()).then(|| key.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::headers;

    #[test]
    fn loops_are_found_in_cdn_loop_and_via() {
        let h = headers(&[("cdn-loop", "foo, Shield-1; v=2"), ("cdn-loop", "bar")]);
        assert!(passed(&h, "shield-1"));
        assert!(passed(&h, "bar"));
        assert!(!passed(&h, "shield"));
        let h = headers(&[("via", "1.1 edge-a, HTTP/1.1 shield (Outpost)")]);
        assert!(passed(&h, "shield"));
        assert!(passed(&h, "edge-a"));
        assert!(!passed(&h, "1.1"));
        assert!(!passed(&HeaderMap::new(), "x"));
    }

    #[test]
    fn cdn_loop_appends() {
        let h = headers(&[("cdn-loop", "a"), ("cdn-loop", "b; x=1")]);
        assert_eq!(cdn_loop_value(&h, "me"), "a, b; x=1, me");
        assert_eq!(cdn_loop_value(&HeaderMap::new(), "me"), "me");
    }

    #[test]
    fn key_hint_round_trips() {
        for key in [
            "example.com\n/a?b=1\n",
            "h\n/ü x%41\nx-device:phone\n",
            "h\n/\"q\"\n",
        ] {
            let v = encode_key(key);
            assert!(!v.as_bytes().contains(&b'\n'));
            assert_eq!(decode_key(&v).as_deref(), Some(key));
        }
        assert_eq!(decode_key(&HeaderValue::from_static("")), None);
    }
}
