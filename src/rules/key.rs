//! Cache key composition from a rule's [`KeyConfig`].
//!
//! The primary key is `host \n path[?query] \n` followed by `name:value \n` for each key header
//! (`name` alone when the header is absent). Neither a URI nor a header value can contain a
//! newline, so the framing is unambiguous. The key stays readable (for purge by prefix later).

use crate::config::{KeyConfig, QueryMode};
use http::HeaderMap;

/// The cache key of a request for `host` + `path` + `query` under `spec`, hashed once (Pingora
/// would otherwise re-hash the primary key for the predictor, the lock and every storage call).
pub fn cache_key(
    spec: &KeyConfig,
    host: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> pingora_cache::CacheKey {
    let mut primary = String::new();
    build_primary(spec, host, path, query, headers, &mut primary);
    let hash = pingora_cache::key::hash_key(&primary);
    let mut key = pingora_cache::CacheKey::new(primary, String::new());
    key.set_primary_bin_override(hash);
    key
}

/// Append the primary cache key for a request to `out`.
pub fn build_primary(
    spec: &KeyConfig,
    host: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    out: &mut String,
) {
    out.reserve(host.len() + path.len() + query.map_or(0, str::len) + 4);
    out.push_str(host);
    out.push('\n');
    out.push_str(path);
    match (query.filter(|q| !q.is_empty()), &spec.query) {
        (None, _) | (_, QueryMode::Ignore) => {}
        (Some(q), QueryMode::Full) => {
            out.push('?');
            out.push_str(q);
        }
        (Some(q), QueryMode::Sorted) => {
            let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
            params.sort_unstable();
            push_params(out, &params);
        }
        (Some(q), QueryMode::Keep(keep)) => {
            let mut params: Vec<&str> = q
                .split('&')
                .filter(|p| {
                    let name = p.split_once('=').map_or(*p, |(n, _)| n);
                    keep.iter().any(|k| k == name)
                })
                .collect();
            params.sort_unstable();
            push_params(out, &params);
        }
    }
    out.push('\n');
    for name in &spec.headers {
        out.push_str(name.as_str());
        if let Some(v) = headers.get(name) {
            out.push(':');
            out.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
        out.push('\n');
    }
}

fn push_params(out: &mut String, params: &[&str]) {
    for (i, p) in params.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn key(query: QueryMode, headers: &[&str], q: Option<&str>, req: &HeaderMap) -> String {
        let spec = KeyConfig {
            query,
            headers: headers
                .iter()
                .map(|h| HeaderName::from_bytes(h.as_bytes()).unwrap())
                .collect(),
        };
        let mut out = String::new();
        build_primary(&spec, "example.com", "/p", q, req, &mut out);
        out
    }

    #[test]
    fn query_modes_compose_keys() {
        let h = HeaderMap::new();
        assert_eq!(
            key(QueryMode::Full, &[], Some("b=2&a=1"), &h),
            "example.com\n/p?b=2&a=1\n"
        );
        assert_eq!(
            key(QueryMode::Ignore, &[], Some("b=2&a=1"), &h),
            "example.com\n/p\n"
        );
        assert_eq!(
            key(QueryMode::Sorted, &[], Some("b=2&a=1"), &h),
            "example.com\n/p?a=1&b=2\n"
        );
        let keep = QueryMode::Keep(vec!["v".into()]);
        assert_eq!(
            key(keep.clone(), &[], Some("utm=x&v=3"), &h),
            "example.com\n/p?v=3\n"
        );
        assert_eq!(key(keep, &[], Some("utm=x"), &h), "example.com\n/p\n");
        assert_eq!(key(QueryMode::Full, &[], Some(""), &h), "example.com\n/p\n");
    }

    #[test]
    fn key_headers_distinguish_absent_from_empty() {
        let mut h = HeaderMap::new();
        let absent = key(QueryMode::Full, &["x-device"], None, &h);
        h.insert("x-device", "".parse().unwrap());
        let empty = key(QueryMode::Full, &["x-device"], None, &h);
        h.insert("x-device", "mobile".parse().unwrap());
        let mobile = key(QueryMode::Full, &["x-device"], None, &h);
        assert_eq!(absent, "example.com\n/p\nx-device\n");
        assert_eq!(empty, "example.com\n/p\nx-device:\n");
        assert_eq!(mobile, "example.com\n/p\nx-device:mobile\n");
    }
}
