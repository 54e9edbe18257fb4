//! Origin failures: connection refused, slow origin, reset mid-body.
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// GET that tolerates transport errors (the point of these tests).
fn try_get(node: &Node, path: &str) -> Result<Fetched, reqwest::Error> {
    try_fetch(node.client().get(node.url(path)).send())
}

#[test]
fn origin_down_gives_502_and_node_recovers() {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let node = NodeConfig::new(&format!("http://{addr}")).start();

    for i in 0..2 {
        let r = get(&node, "/x");
        assert_eq!(r.status, 502, "request {i} with the origin down");
        assert!(!r.body.is_empty(), "502 without a body");
        assert!(
            r.header("cache-status").is_some(),
            "502 without Cache-Status"
        );
    }
    assert!(node.try_wait().is_none(), "node died");
    assert!(!node.metrics().is_empty());

    // the origin comes up on the configured address: the node serves (the 502 was not cached)
    let origin = TestOrigin::start_on(addr);
    origin.set("/x", Reply::ok("up").header("Cache-Control", "max-age=60"));
    let r = get(&node, "/x");
    assert_eq!(r.status, 200, "Cache-Status {}", r.cache_status());
    assert_eq!(r.text(), "up");
    assert_eq!(origin.hits("/x"), 1);
}

#[test]
fn slow_origin_beyond_read_timeout_gives_504() {
    let origin = TestOrigin::start();
    origin.set(
        "/slow",
        Reply::ok("late")
            .header("Cache-Control", "max-age=60")
            .delay(Duration::from_millis(2500)),
    );
    origin.set("/fast", Reply::ok("fast"));
    let node = NodeConfig::new(&origin.url())
        .origin("read_timeout = \"500ms\"")
        .start();

    let r = get(&node, "/slow");
    assert_eq!(r.status, 504, "Cache-Status {}", r.cache_status());
    assert!(r.header("cache-status").is_some());
    // the node keeps serving
    let r = get(&node, "/fast");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "fast");
    // the timeout was not cached: once the origin is quick, the full answer comes back
    origin.set(
        "/slow",
        Reply::ok("now quick").header("Cache-Control", "max-age=60"),
    );
    let r = get(&node, "/slow");
    assert_eq!(r.status, 200, "Cache-Status {}", r.cache_status());
    assert_eq!(r.text(), "now quick");
}

fn check_truncated_not_complete(r: Result<Fetched, reqwest::Error>, full_len: usize, what: &str) {
    match r {
        Err(e) => assert!(!e.is_timeout(), "{what}: client hung until timeout: {e}"),
        Ok(f) if f.status == 200 => panic!(
            "{what}: truncated origin body presented as a complete 200 ({} of {full_len} bytes, Cache-Status {})",
            f.body.len(),
            f.cache_status()
        ),
        Ok(f) => assert!(
            f.status >= 500,
            "{what}: unexpected status {} (Cache-Status {})",
            f.status,
            f.cache_status()
        ),
    }
}

#[test]
fn origin_reset_mid_body_is_not_complete_and_not_cached() {
    let origin = TestOrigin::start();
    let body = payload(100 * 1024);
    let broken = Reply::ok(body.clone())
        .header("Cache-Control", "max-age=60")
        .truncate_after(1000);
    origin.set("/t", broken);
    let node = NodeConfig::new(&origin.url()).start();

    check_truncated_not_complete(try_get(&node, "/t"), body.len(), "first fetch");
    assert_eq!(origin.hits("/t"), 1);
    // not served from cache: the origin is asked again
    check_truncated_not_complete(try_get(&node, "/t"), body.len(), "second fetch");
    assert_eq!(
        origin.hits("/t"),
        2,
        "the partial body was served from cache"
    );

    // the origin is fixed: the full body is served, and then cached
    origin.set(
        "/t",
        Reply::ok(body.clone()).header("Cache-Control", "max-age=60"),
    );
    let r = get(&node, "/t");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body);
    assert_eq!(origin.hits("/t"), 3);
    let r = get(&node, "/t");
    assert!(cs_has(&r.cache_status(), "hit"), "{}", r.cache_status());
    assert!(r.body == body);
    assert_eq!(origin.hits("/t"), 3);
}

#[test]
fn origin_reset_mid_chunked_body_is_not_complete_and_not_cached() {
    let origin = TestOrigin::start();
    let body = payload(100 * 1024);
    let encoded = chunked(&body, 4096);
    origin.set(
        "/c",
        Reply::ok(encoded.clone())
            .header("Transfer-Encoding", "chunked")
            .header("Cache-Control", "max-age=60")
            .truncate_after(10_000),
    );
    let node = NodeConfig::new(&origin.url()).start();

    check_truncated_not_complete(try_get(&node, "/c"), body.len(), "first fetch");
    check_truncated_not_complete(try_get(&node, "/c"), body.len(), "second fetch");
    assert_eq!(
        origin.hits("/c"),
        2,
        "the partial body was served from cache"
    );

    origin.set(
        "/c",
        Reply::ok(encoded)
            .header("Transfer-Encoding", "chunked")
            .header("Cache-Control", "max-age=60"),
    );
    let r = get(&node, "/c");
    assert_eq!(r.status, 200);
    assert!(r.body == body, "full chunked body after the fix");
    assert_eq!(origin.hits("/c"), 3);
}
