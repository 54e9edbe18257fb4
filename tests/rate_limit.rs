//! Rate limits, black-box: the limit reached exactly at the configured rate with its burst, the
//! 429 with `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` fields, per-key
//! buckets, X-Forwarded-For believed only from trusted proxies, the allow-list, limits that
//! count only misses, and configuration errors by key.
mod common;

use common::*;

/// A limit of 2 per minute: one request per 30 s, so nothing refills during a test.
const API_LIMIT: &str = r#"
[[rate_limit.rules]]
name = "api"
limit = "2/min"
burst = 3
key = "header:X-Api-Key"
[rate_limit.rules.match]
path_prefix = ["/api/"]
"#;

fn cacheable(node_origin: &TestOrigin, paths: &[&str]) {
    for p in paths {
        node_origin.set(p, Reply::ok("v").header("Cache-Control", "max-age=600"));
    }
}

#[test]
fn the_limit_allows_exactly_rate_plus_burst_then_answers_429_with_its_fields() {
    let origin = TestOrigin::start();
    cacheable(&origin, &["/api/x", "/static/y"]);
    let node = NodeConfig::new(&origin.url()).extra(API_LIMIT).start();
    let key_a = [("X-Api-Key", "a")];
    let mut remaining = Vec::new();
    for i in 0..4 {
        let r = get_with(&node, "/api/x", &key_a);
        assert_eq!(r.status, 200, "request {i} of the burst refused");
        assert_eq!(
            r.header("ratelimit-policy").as_deref(),
            Some("\"api\";q=2;w=60")
        );
        remaining.push(r.header("ratelimit").unwrap_or_default());
    }
    assert_eq!(
        remaining
            .iter()
            .map(|v| v.split(';').nth(1).unwrap_or("").to_string())
            .collect::<Vec<_>>(),
        ["r=3", "r=2", "r=1", "r=0"],
        "{remaining:?}"
    );
    let refused = get_with(&node, "/api/x", &key_a);
    assert_eq!(refused.status, 429);
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!(
        (25..=30).contains(&retry),
        "one request per 30 s: retry after {retry}"
    );
    assert_eq!(
        refused.header("ratelimit-policy").as_deref(),
        Some("\"api\";q=2;w=60")
    );
    let state = refused.header("ratelimit").expect("RateLimit");
    assert!(state.starts_with("\"api\";r=0;t="), "{state}");
    assert_eq!(refused.header("cache-control").as_deref(), Some("no-store"));
    assert!(refused.text().contains("rate limit \"api\""));
    // a HEAD is counted and refused too, without a body
    let head = request_with(&node, "HEAD", "/api/x", &key_a);
    assert_eq!(head.status, 429);
    assert!(head.body.is_empty());

    // another key has its own bucket; requests outside the match are not limited
    assert_eq!(get_with(&node, "/api/x", &[("X-Api-Key", "b")]).status, 200);
    for _ in 0..10 {
        let r = get_with(&node, "/static/y", &key_a);
        assert_eq!(r.status, 200);
        assert!(r.header("ratelimit").is_none());
    }
    let m = node.metrics();
    assert_eq!(
        metric_sum(&m, "outpost_rate_limited_total", &[("limit", "api")]),
        2.0
    );
    assert_eq!(
        metric_sum(&m, "outpost_requests_total", &[("cache_status", "refused")]),
        2.0
    );
    assert_eq!(
        origin.hits("/api/x"),
        1,
        "refused requests never reach the origin"
    );
}

const PER_IP: &str = r#"
[[rate_limit.rules]]
name = "per-ip"
limit = "1/min"
"#;

#[test]
fn x_forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    let origin = TestOrigin::start();
    cacheable(&origin, &["/p"]);
    // untrusted: the header is ignored, every request is 127.0.0.1's
    let node = NodeConfig::new(&origin.url()).extra(PER_IP).start();
    assert_eq!(
        get_with(&node, "/p", &[("X-Forwarded-For", "203.0.113.1")]).status,
        200
    );
    assert_eq!(
        get_with(&node, "/p", &[("X-Forwarded-For", "203.0.113.2")]).status,
        429,
        "a client chose its own bucket"
    );
    drop(node);

    // trusted: each forwarded client has its own bucket, a spoofed left entry changes nothing
    let node = NodeConfig::new(&origin.url())
        .extra(PER_IP)
        .extra("[client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]")
        .start();
    for client in ["203.0.113.1", "203.0.113.2"] {
        assert_eq!(
            get_with(&node, "/p", &[("X-Forwarded-For", client)]).status,
            200,
            "{client}"
        );
    }
    assert_eq!(
        get_with(
            &node,
            "/p",
            &[("X-Forwarded-For", "198.51.100.9, 203.0.113.1")]
        )
        .status,
        429,
        "the proxy-appended address counts, not the client-written one"
    );
    // RFC 7239 Forwarded when configured
    drop(node);
    let node = NodeConfig::new(&origin.url())
        .extra(PER_IP)
        .extra("[client_ip]\ntrusted_proxies = [\"127.0.0.0/8\"]\nheader = \"Forwarded\"")
        .start();
    for client in ["for=203.0.113.7", "for=\"[2001:db8::7]:1234\""] {
        assert_eq!(
            get_with(&node, "/p", &[("Forwarded", client)]).status,
            200,
            "{client}"
        );
    }
    assert_eq!(
        get_with(&node, "/p", &[("Forwarded", "for=203.0.113.7")]).status,
        429
    );
}

#[test]
fn allow_listed_clients_are_never_limited() {
    let origin = TestOrigin::start();
    cacheable(&origin, &["/p"]);
    let node = NodeConfig::new(&origin.url())
        .extra(&format!(
            "[rate_limit]\nallow = [\"127.0.0.0/8\"]\n{PER_IP}"
        ))
        .start();
    for _ in 0..5 {
        let r = get(&node, "/p");
        assert_eq!(r.status, 200);
        assert!(r.header("ratelimit").is_none(), "allow-listed: not counted");
    }
}

#[test]
fn a_misses_only_limit_protects_the_origin_and_never_refuses_hits() {
    let origin = TestOrigin::start();
    cacheable(&origin, &["/a", "/b"]);
    let node = NodeConfig::new(&origin.url())
        .extra(
            "[[rate_limit.rules]]\nname = \"origin-guard\"\nlimit = \"1/min\"\nonly_misses = true",
        )
        .start();
    assert_stored_miss(&get(&node, "/a"), "first fetch");
    for _ in 0..10 {
        let r = get(&node, "/a");
        assert_hit(&r, "hits are not limited");
        assert!(r.header("ratelimit").is_none(), "hits are not counted");
    }
    let r = get(&node, "/b");
    assert_eq!(r.status, 429, "a second origin fetch within the minute");
    assert_eq!(origin.hits("/b"), 0);
    assert_eq!(
        r.header("ratelimit-policy").as_deref(),
        Some("\"origin-guard\";q=1;w=60")
    );
    // nothing was stored for the refused request: it is a plain miss later, not a cached 429
    assert_eq!(
        metric_sum(
            &node.metrics(),
            "outpost_rate_limited_total",
            &[("limit", "origin-guard")]
        ),
        1.0
    );
}

#[test]
fn bad_rate_limit_settings_are_errors_naming_the_key() {
    for (extra, key) in [
        (
            "[[rate_limit.rules]]\nname = \"x\"\nlimit = \"10/day\"",
            "rate_limit.rules[0].limit",
        ),
        ("[[rate_limit.rules]]\nname = \"x\"", "rate_limit.rules[0].limit"),
        (
            "[[rate_limit.rules]]\nname = \"x\"\nlimit = \"1/s\"\nkey = \"cookie\"",
            "rate_limit.rules[0].key",
        ),
        (
            "[[rate_limit.rules]]\nname = \"x\"\nlimit = \"1/s\"\nburst = -1",
            "rate_limit.rules[0].burst",
        ),
        (
            "[[rate_limit.rules]]\nname = \"x\"\nlimit = \"1/s\"\n[rate_limit.rules.match]\npath_prefix = [\"api\"]",
            "rate_limit.rules[0].match.path_prefix[0]",
        ),
        (
            "[[rate_limit.rules]]\nname = \"x\"\nlimit = \"1/s\"\n[[rate_limit.rules]]\nname = \"x\"\nlimit = \"1/s\"",
            "rate_limit.rules[1].name",
        ),
        ("[rate_limit]\nallow = [\"10.0.0.0/33\"]", "rate_limit.allow[0]"),
        ("[rate_limit]\nmax_keys = 0", "rate_limit.max_keys"),
        (
            "[client_ip]\ntrusted_proxies = [\"not-an-ip\"]",
            "client_ip.trusted_proxies[0]",
        ),
        ("[client_ip]\nheader = \"X-Real-IP\"", "client_ip.header"),
        ("[rate_limit]\nlimits = 5", "limits"),
    ] {
        assert_refused(extra, key);
    }
}

#[test]
fn outpost_check_prints_the_limits_and_its_output_reads_back() {
    let cfg = NodeConfig::new("http://127.0.0.1:9")
        .extra(API_LIMIT)
        .extra("[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]");
    let out = run_check(&cfg.config_text());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective = String::from_utf8_lossy(&out.stdout).to_string();
    for needle in [
        "trusted_proxies = [\"10.0.0.0/8\", \"::1/128\"]",
        "limit = \"2/min\"",
        "burst = 3",
        "key = \"header:x-api-key\"",
        "max_keys = 1000000",
    ] {
        assert!(effective.contains(needle), "{needle} missing:\n{effective}");
    }
    let again = run_check(&effective);
    assert!(
        again.status.success(),
        "the effective configuration does not read back: {}",
        String::from_utf8_lossy(&again.stderr)
    );
}
