//! Caching behaviour of the real binary: hits, Cache-Status, rules, keys, cacheability, TTLs.
mod common;

use std::time::Duration;

use common::*;

/// A stored miss, and the `Cache-Status` entry is outpost's own.
fn assert_outpost_stored_miss(f: &Fetched, what: &str) {
    let cs = f.cache_status();
    assert!(
        cs.starts_with("outpost"),
        "{what}: expected a stored miss, Cache-Status: {cs:?}"
    );
    assert_stored_miss(f, what);
}

fn assert_not_hit(f: &Fetched, what: &str) {
    let cs = f.cache_status();
    assert!(
        cs.starts_with("outpost") && !cs_has(&cs, "hit") && cs_get(&cs, "fwd").is_some(),
        "{what}: expected a forwarded response, Cache-Status: {cs:?}"
    );
}

fn get_host(node: &Node, path: &str, host: &str) -> Fetched {
    get_with(node, path, &[("Host", host)])
}

fn head(node: &Node, path: &str) -> Fetched {
    fetch(
        node.client()
            .head(node.url(path))
            .send()
            .unwrap_or_else(|e| panic!("HEAD {path}: {e}\n{}", node.log())),
    )
}

#[test]
fn hit_after_miss_serves_identical_body_without_origin_request() {
    let origin = TestOrigin::start();
    origin.set(
        "/page",
        Reply::ok("hello world")
            .header("Cache-Control", "max-age=60")
            .header("Content-Type", "text/plain")
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();

    let r1 = get(&node, "/page");
    assert_eq!(r1.status, 200);
    assert_eq!(r1.text(), "hello world#1");
    assert_outpost_stored_miss(&r1, "first request");
    assert!(
        cs_get(&r1.cache_status(), "fwd-status").as_deref() == Some("200"),
        "{}",
        r1.cache_status()
    );
    assert_eq!(origin.hits("/page"), 1);

    for i in 0..3 {
        let r = get(&node, "/page");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, r1.body, "cached body differs");
        assert_hit(&r, &format!("repeat {i}"));
        assert!(r.header("age").is_some(), "hit without Age header");
        assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    }
    assert_eq!(origin.hits("/page"), 1, "hits went to the origin");
}

#[test]
fn uncacheable_response_is_forwarded_not_stored() {
    let origin = TestOrigin::start();
    origin.set(
        "/nostore",
        Reply::ok("x")
            .header("Cache-Control", "no-store")
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();
    for i in 1..=2 {
        let r = get(&node, "/nostore");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("x#{i}"));
        let cs = r.cache_status();
        assert!(
            cs_get(&cs, "fwd").is_some_and(|f| f.ends_with("miss"))
                && cs_get(&cs, "fwd-status").as_deref() == Some("200")
                && !cs_has(&cs, "stored"),
            "request {i}: Cache-Status {cs:?}"
        );
    }
    assert_eq!(origin.hits("/nostore"), 2);
}

#[test]
fn bypass_rule_never_caches() {
    let origin = TestOrigin::start();
    origin.set(
        "/api/x",
        Reply::ok("api")
            .header("Cache-Control", "public, max-age=3600")
            .body_counter(),
    );
    origin.set(
        "/other",
        Reply::ok("other").header("Cache-Control", "max-age=3600"),
    );
    let node = NodeConfig::new(&origin.url())
        .rules(RULES_BYPASS_API_ELSE_HEURISTIC)
        .start();
    for i in 1..=3 {
        let r = get(&node, "/api/x");
        assert_eq!(r.text(), format!("api#{i}"));
        let cs = r.cache_status();
        assert!(
            cs_get(&cs, "fwd").as_deref() == Some("bypass")
                && cs_get(&cs, "fwd-status").as_deref() == Some("200")
                && !cs_has(&cs, "stored"),
            "bypass request {i}: Cache-Status {cs:?}"
        );
    }
    assert_eq!(origin.hits("/api/x"), 3);
    // the other rule still caches
    assert_outpost_stored_miss(&get(&node, "/other"), "/other first");
    assert_hit(&get(&node, "/other"), "/other second");
    assert_eq!(origin.hits("/other"), 1);
}

#[test]
fn rule_matches_by_host() {
    let origin = TestOrigin::start();
    origin.set("/h", Reply::ok("h").body_counter());
    let node = NodeConfig::new(&origin.url())
        .rules(
            r#"
[[rules]]
name = "nocache-hosts"
action = "bypass"
[rules.match]
hosts = ["nocache.example.com", "*.bypass.test"]

[[rules]]
name = "default"
action = "cache"
[rules.ttl]
default = "60s"
"#,
        )
        .start();

    let r = get_host(&node, "/h", "nocache.example.com");
    assert_eq!(
        origin.requests("/h")[0].header("host").as_deref(),
        Some("nocache.example.com"),
        "test setup: Host header not forwarded as set"
    );
    assert!(
        cs_get(&r.cache_status(), "fwd").as_deref() == Some("bypass"),
        "{}",
        r.cache_status()
    );
    let r = get_host(&node, "/h", "nocache.example.com");
    assert!(
        cs_get(&r.cache_status(), "fwd").as_deref() == Some("bypass"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/h"), 2);

    // glob, case-insensitive, port ignored
    let r = get_host(&node, "/h", "Sub.Bypass.Test:8080");
    assert!(
        cs_get(&r.cache_status(), "fwd").as_deref() == Some("bypass"),
        "glob host: {}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/h"), 3);

    // any other host falls to the caching rule
    let r = get_host(&node, "/h", "www.example.com");
    assert_outpost_stored_miss(&r, "www first");
    let r2 = get_host(&node, "/h", "www.example.com");
    assert_hit(&r2, "www second");
    assert_eq!(r2.body, r.body);
    assert_eq!(origin.hits("/h"), 4);
}

#[test]
fn rule_matches_by_path_prefix() {
    let origin = TestOrigin::start();
    origin.set(
        "/private/a",
        Reply::ok("p")
            .header("Cache-Control", "max-age=60")
            .body_counter(),
    );
    origin.set(
        "/public/a",
        Reply::ok("q")
            .header("Cache-Control", "max-age=60")
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url())
        .rules(
            r#"
[[rules]]
name = "private"
action = "bypass"
[rules.match]
path_prefix = ["/nothing/", "/private/"]

[[rules]]
name = "default"
action = "cache"
"#,
        )
        .start();
    for _ in 0..2 {
        let r = get(&node, "/private/a");
        assert!(
            cs_get(&r.cache_status(), "fwd").as_deref() == Some("bypass"),
            "{}",
            r.cache_status()
        );
        get(&node, "/public/a");
    }
    assert_eq!(origin.hits("/private/a"), 2);
    assert_eq!(origin.hits("/public/a"), 1);
}

#[test]
fn rule_matches_by_glob() {
    let origin = TestOrigin::start();
    for p in [
        "/assets/a/b/app.js",
        "/img/logo.png",
        "/img/sub/logo.png",
        "/assets/a/app.css",
    ] {
        origin.set(p, Reply::ok(p).body_counter());
    }
    let node = NodeConfig::new(&origin.url())
        .rules(
            r#"
[[rules]]
name = "globbed"
action = "cache"
[rules.match]
paths = ["/assets/**/*.js", "/img/*.png"]
[rules.ttl]
default = "60s"

[[rules]]
name = "rest"
action = "bypass"
"#,
        )
        .start();
    for p in [
        "/assets/a/b/app.js",
        "/img/logo.png",
        "/img/sub/logo.png",
        "/assets/a/app.css",
    ] {
        get(&node, p);
        get(&node, p);
    }
    assert_eq!(origin.hits("/assets/a/b/app.js"), 1, "** glob should match");
    assert_eq!(origin.hits("/img/logo.png"), 1, "* glob should match");
    assert_eq!(
        origin.hits("/img/sub/logo.png"),
        2,
        "* must stay within one path segment"
    );
    assert_eq!(origin.hits("/assets/a/app.css"), 2, "extension mismatch");
}

#[test]
fn rule_matches_by_method() {
    let origin = TestOrigin::start();
    origin.set("/m", Reply::ok("m").body_counter());
    let node = NodeConfig::new(&origin.url())
        .rules(
            r#"
[[rules]]
name = "get-only"
action = "cache"
[rules.match]
methods = ["GET"]
[rules.ttl]
default = "60s"

[[rules]]
name = "rest"
action = "bypass"
"#,
        )
        .start();
    assert_outpost_stored_miss(&get(&node, "/m"), "GET 1");
    assert_hit(&get(&node, "/m"), "GET 2");
    assert_eq!(origin.hits("/m"), 1);
    for i in 0..2 {
        let r = head(&node, "/m");
        assert_eq!(r.status, 200);
        assert!(
            cs_get(&r.cache_status(), "fwd").as_deref() == Some("bypass"),
            "HEAD {i}: {}",
            r.cache_status()
        );
    }
    assert_eq!(origin.hits("/m"), 3);
    let methods: Vec<String> = origin
        .requests("/m")
        .into_iter()
        .map(|r| r.method)
        .collect();
    assert_eq!(methods, ["GET", "HEAD", "HEAD"]);
}

fn key_node(origin: &TestOrigin, key_toml: &str) -> Node {
    NodeConfig::new(&origin.url())
        .rules(&format!(
            r#"
[[rules]]
name = "keyed"
action = "cache"
[rules.ttl]
default = "60s"
[rules.key]
{key_toml}
"#
        ))
        .start()
}

/// GETs each path in turn on `node` and checks the (counter-suffixed) body it answers with.
fn assert_bodies(node: &Node, expected: &[(&str, &str)]) {
    for (path, want) in expected {
        assert_eq!(get(node, path).text(), *want, "GET {path}");
    }
}

#[test]
fn key_query_full() {
    let origin = TestOrigin::start();
    origin.set("/q", Reply::ok("q").body_counter());
    let node = key_node(&origin, "query = \"full\"");
    assert_bodies(
        &node,
        &[
            ("/q?a=1", "q#1"),
            ("/q?a=2", "q#2"),
            ("/q?a=1", "q#1"),
            ("/q", "q#3"),
            ("/q?a=1&b=2", "q#4"),
            ("/q?b=2&a=1", "q#5"), // full keeps the order
        ],
    );
    assert_eq!(origin.hits("/q"), 5);
    // the origin got the query as sent
    assert_eq!(origin.requests("/q")[4].uri, "/q?b=2&a=1");
}

#[test]
fn key_query_ignore() {
    let origin = TestOrigin::start();
    origin.set("/q", Reply::ok("q").body_counter());
    let node = key_node(&origin, "query = \"ignore\"");
    assert_bodies(
        &node,
        &[
            ("/q?a=1", "q#1"),
            ("/q?a=2", "q#1"),
            ("/q", "q#1"),
            ("/q?utm=x&z=1", "q#1"),
        ],
    );
    assert_eq!(origin.hits("/q"), 1);
}

#[test]
fn key_query_keep() {
    let origin = TestOrigin::start();
    origin.set("/q", Reply::ok("q").body_counter());
    let node = key_node(&origin, "query = \"keep\"\nquery_keep = [\"v\", \"lang\"]");
    assert_bodies(
        &node,
        &[
            ("/q?v=1&utm=a", "q#1"),
            ("/q?utm=b&v=1", "q#1"), // unlisted param
            ("/q?v=1", "q#1"),
            ("/q?v=2&utm=a", "q#2"), // listed param
            ("/q?v=1&lang=de", "q#3"),
            ("/q?lang=de&v=1&x=9", "q#3"),
            ("/q?utm=z", "q#4"), // no kept param
            ("/q", "q#4"),
        ],
    );
    assert_eq!(origin.hits("/q"), 4);
}

#[test]
fn key_query_sorted() {
    let origin = TestOrigin::start();
    origin.set("/q", Reply::ok("q").body_counter());
    let node = key_node(&origin, "query = \"sorted\"");
    assert_bodies(
        &node,
        &[
            ("/q?a=1&b=2", "q#1"),
            ("/q?b=2&a=1", "q#1"),
            ("/q?a=1&b=3", "q#2"),
            ("/q?a=1", "q#3"),
        ],
    );
    assert_eq!(origin.hits("/q"), 3);
}

#[test]
fn key_headers_split_entries() {
    let origin = TestOrigin::start();
    origin.set("/d", Reply::ok("d").body_counter());
    let node = key_node(&origin, "headers = [\"X-Device\"]");
    let dev = |v: &str| get_with(&node, "/d", &[("X-Device", v)]).text();
    assert_eq!(dev("mobile"), "d#1");
    assert_eq!(dev("desktop"), "d#2");
    assert_eq!(dev("mobile"), "d#1");
    assert_eq!(dev("desktop"), "d#2");
    assert_eq!(
        get(&node, "/d").text(),
        "d#3",
        "absent header is its own entry"
    );
    assert_eq!(get(&node, "/d").text(), "d#3");
    // other headers do not split
    assert_eq!(
        get_with(&node, "/d", &[("X-Device", "mobile"), ("X-Other", "1")]).text(),
        "d#1"
    );
    assert_eq!(origin.hits("/d"), 3);
}

#[test]
fn cacheable_status_list() {
    let origin = TestOrigin::start();
    for prefix in ["/strict", "/loose", "/errs"] {
        origin.set(
            &format!("{prefix}/gone"),
            Reply::new(404)
                .body("gone")
                .header("Cache-Control", "max-age=60")
                .body_counter(),
        );
        origin.set(
            &format!("{prefix}/err"),
            Reply::new(500)
                .body("err")
                .header("Cache-Control", "max-age=60")
                .body_counter(),
        );
        origin.set(
            &format!("{prefix}/ok"),
            Reply::ok("ok")
                .header("Cache-Control", "max-age=60")
                .body_counter(),
        );
    }
    let node = NodeConfig::new(&origin.url())
        .rules(
            r#"
[[rules]]
name = "strict"
action = "cache"
[rules.match]
path_prefix = ["/strict/"]
[rules.cacheable]
status = [200]

[[rules]]
name = "errs"
action = "cache"
[rules.match]
path_prefix = ["/errs/"]
[rules.cacheable]
status = [200, 500]

[[rules]]
name = "default"
action = "cache"
[rules.ttl]
heuristic = true
"#,
        )
        .start();

    for _ in 0..2 {
        for prefix in ["/strict", "/loose", "/errs"] {
            for what in ["gone", "err", "ok"] {
                let r = get(&node, &format!("{prefix}/{what}"));
                let want = match what {
                    "gone" => 404,
                    "err" => 500,
                    _ => 200,
                };
                assert_eq!(r.status, want, "{prefix}/{what}");
            }
        }
    }
    // 404 is cacheable by default; a rule's own list restricts storage to its codes
    assert_eq!(origin.hits("/loose/gone"), 1, "404 default-cacheable");
    assert_eq!(origin.hits("/strict/gone"), 2, "404 not in the rule's list");
    // any final status with explicit freshness by default (RFC 9111 3)
    assert_eq!(
        origin.hits("/loose/err"),
        1,
        "500 with max-age not cached by default"
    );
    assert_eq!(origin.hits("/strict/err"), 2);
    assert_eq!(origin.hits("/errs/err"), 1, "500 listed explicitly");
    for prefix in ["/strict", "/loose", "/errs"] {
        assert_eq!(origin.hits(&format!("{prefix}/ok")), 1, "{prefix}/ok");
    }
    let r = get(&node, "/loose/gone");
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "gone#1");
    assert_hit(&r, "cached 404");
    let r = get(&node, "/strict/gone");
    assert_not_hit(&r, "unlisted 404");
}

#[test]
fn ttl_override_beats_origin_max_age() {
    let origin = TestOrigin::start();
    origin.set(
        "/short/x",
        Reply::ok("s")
            .header("Cache-Control", "max-age=3600")
            .body_counter(),
    );
    origin.set(
        "/long/x",
        Reply::ok("l")
            .header("Cache-Control", "max-age=0")
            .body_counter(),
    );
    origin.set(
        "/long/expired",
        Reply::ok("e")
            .header("Expires", "Thu, 01 Jan 1970 00:00:00 GMT")
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url())
        .rules(
            r#"
[[rules]]
name = "short"
action = "cache"
[rules.match]
path_prefix = ["/short/"]
[rules.ttl]
override = "2s"

[[rules]]
name = "long"
action = "cache"
[rules.match]
path_prefix = ["/long/"]
[rules.ttl]
override = "1h"
"#,
        )
        .start();

    assert_outpost_stored_miss(&get(&node, "/long/x"), "max-age=0 under override");
    let r = get(&node, "/long/x");
    assert_hit(&r, "max-age=0 under override");
    assert_eq!(r.text(), "l#1");
    assert_outpost_stored_miss(&get(&node, "/long/expired"), "past Expires under override");
    assert_hit(&get(&node, "/long/expired"), "past Expires under override");

    assert_eq!(get(&node, "/short/x").text(), "s#1");
    let r = get(&node, "/short/x");
    assert_hit(&r, "within override");
    assert_eq!(r.text(), "s#1");
    std::thread::sleep(Duration::from_millis(3000));
    let r = get(&node, "/short/x");
    assert_not_hit(&r, "after the 2s override despite max-age=3600");
    assert_eq!(r.text(), "s#2");

    assert_eq!(origin.hits("/long/x"), 1);
    assert_eq!(origin.hits("/long/expired"), 1);
    assert_eq!(origin.hits("/short/x"), 2);
}

#[test]
fn ttl_default_applies_without_freshness_info() {
    let origin = TestOrigin::start();
    origin.set("/plain", Reply::ok("p").body_counter());
    origin.set(
        "/fresh",
        Reply::ok("f")
            .header("Cache-Control", "max-age=3600")
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url())
        .rules(
            r#"
[[rules]]
name = "d"
action = "cache"
[rules.ttl]
default = "2s"
"#,
        )
        .start();
    assert_outpost_stored_miss(&get(&node, "/plain"), "/plain 1");
    assert_hit(&get(&node, "/plain"), "/plain 2");
    assert_outpost_stored_miss(&get(&node, "/fresh"), "/fresh 1");
    assert_hit(&get(&node, "/fresh"), "/fresh 2");
    std::thread::sleep(Duration::from_millis(3000));
    let r = get(&node, "/plain");
    assert_not_hit(&r, "/plain after default ttl");
    assert_eq!(r.text(), "p#2");
    let r = get(&node, "/fresh");
    assert_hit(&r, "origin max-age wins over ttl.default");
    assert_eq!(r.text(), "f#1");
    assert_eq!(origin.hits("/plain"), 2);
    assert_eq!(origin.hits("/fresh"), 1);
}

#[test]
fn max_object_size_served_in_full_but_not_cached() {
    let origin = TestOrigin::start();
    let big = payload(4000);
    origin.set(
        "/big",
        Reply::ok(big.clone())
            .header("Cache-Control", "max-age=60")
            .body_counter(),
    );
    origin.set(
        "/bigchunked",
        Reply::ok(chunked(&big, 1000))
            .header("Transfer-Encoding", "chunked")
            .header("Cache-Control", "max-age=60"),
    );
    origin.set(
        "/small",
        Reply::ok(payload(100)).header("Cache-Control", "max-age=60"),
    );
    // both tiers' limits: the memory tier's and the disk tier's
    let node = NodeConfig::new(&origin.url())
        .cache("max_object_size = \"1KiB\"\ndisk_max_object_size = \"1KiB\"")
        .start();

    for i in 1..=2 {
        let r = get(&node, "/big");
        assert_eq!(r.status, 200);
        let mut want = big.clone();
        want.extend_from_slice(format!("#{i}").as_bytes());
        assert_eq!(r.body.len(), want.len(), "/big request {i}: length");
        assert!(r.body == want, "/big request {i}: body differs");
        assert!(
            !cs_has(&r.cache_status(), "stored") && !cs_has(&r.cache_status(), "hit"),
            "/big request {i}: Cache-Status {}",
            r.cache_status()
        );

        let r = get(&node, "/bigchunked");
        assert_eq!(
            r.status,
            200,
            "/bigchunked request {i}: Cache-Status {}, body {:?}\n--- log ---\n{}",
            r.cache_status(),
            r.text(),
            node.log()
        );
        assert_eq!(r.body.len(), big.len(), "/bigchunked request {i}: length");
        assert!(r.body == big, "/bigchunked request {i}: body differs");
        assert!(
            !cs_has(&r.cache_status(), "hit"),
            "/bigchunked request {i}: Cache-Status {}",
            r.cache_status()
        );

        let r = get(&node, "/small");
        assert_eq!(r.body, payload(100));
    }
    assert_eq!(origin.hits("/big"), 2);
    assert_eq!(origin.hits("/bigchunked"), 2);
    assert_eq!(origin.hits("/small"), 1);
}
