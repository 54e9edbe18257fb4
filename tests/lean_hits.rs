//! The lean hit path (src/lean): which hits it answers (counted in `outpost_lean_hits_total`),
//! the switch that turns it off, and connections moving between it and Pingora's session
//! (pipelined requests of both kinds, a request body followed by a pipelined request). That
//! its responses equal the full path's is tests/lean_differential.rs.
mod common;

use common::tls::{client, TestCa, Validity};
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn origin() -> TestOrigin {
    let origin = TestOrigin::start();
    for p in ["/a", "/b", "/c"] {
        origin.set(
            p,
            Reply::ok(format!("body of {p}")).header("Cache-Control", "max-age=300"),
        );
    }
    origin.set("/post", Reply::ok("posted"));
    origin
}

fn lean_hits(node: &Node) -> f64 {
    metric_sum(&node.metrics(), "outpost_lean_hits_total", &[])
}

/// Wait until `node` has counted `n` lean hits (a request is counted once its response is
/// written, so just after the client has it).
fn expect_lean_hits(node: &Node, n: f64, what: &str) {
    let limit = Duration::from_secs(5);
    wait_metric(
        node,
        "outpost_lean_hits_total",
        &[],
        |v| v >= n,
        limit,
        what,
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(lean_hits(node), n, "{what}");
}

/// Read from `s` until `n` responses with `Content-Length` bodies are complete (or 5 s pass);
/// their status codes and bodies.
fn responses(s: &mut TcpStream, n: usize) -> Vec<(u16, String)> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let parsed = parse(&data);
        if parsed.len() >= n {
            return parsed;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return parse(&data),
            Ok(k) => data.extend_from_slice(&buf[..k]),
        }
    }
}

/// Complete responses at the start of `data`.
fn parse(mut data: &[u8]) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&data[..end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let body_at = end + 4;
        if data.len() < body_at + len {
            break;
        }
        let status = status_of(&head).unwrap_or(0);
        out.push((
            status,
            String::from_utf8_lossy(&data[body_at..body_at + len]).to_string(),
        ));
        data = &data[body_at + len..];
    }
    out
}

#[test]
fn fresh_memory_hits_take_the_lean_path_and_the_switch_turns_it_off() {
    let origin = origin();
    let node = NodeConfig::new(&origin.url()).start();
    assert_stored_miss(&get(&node, "/a"), "first request");
    expect_lean_hits(&node, 0.0, "a miss is not a lean hit");
    for _ in 0..3 {
        let hit = get(&node, "/a");
        assert_eq!(hit.text(), "body of /a");
        assert!(cs_has(&hit.cache_status(), "hit"), "{}", hit.cache_status());
    }
    expect_lean_hits(&node, 3.0, "lean hits");
    // what the lean path does not take: a conditional, a range, request directives
    for headers in [
        &[("If-None-Match", "\"x\"")][..],
        &[("Range", "bytes=0-3")],
        &[("Cache-Control", "max-stale=5")],
    ] {
        get_with(&node, "/a", headers);
    }
    expect_lean_hits(&node, 3.0, "full-path requests are not lean hits");
    assert_eq!(origin.hits("/a"), 1);

    let off = NodeConfig::new(&origin.url())
        .node("lean_hits = false")
        .start();
    get(&off, "/a");
    let hit = get(&off, "/a");
    assert!(cs_has(&hit.cache_status(), "hit"), "{}", hit.cache_status());
    expect_lean_hits(
        &off,
        0.0,
        "lean_hits = false: every request takes the full path",
    );
}

#[test]
fn pipelined_requests_are_answered_in_order_whichever_path_takes_each() {
    let origin = origin();
    let node = NodeConfig::new(&origin.url()).start();
    get(&node, "/a");
    get(&node, "/c");
    let mut s = TcpStream::connect(node.addr()).expect("connect");
    // hit (lean), miss (Pingora), hit (lean), a POST with a body (Pingora), hit (lean); the
    // host is the one reqwest sent (the key's)
    let host = node.addr();
    let batch = format!(
        "GET /a HTTP/1.1\r\nHost: {host}\r\n\r\n\
         GET /b HTTP/1.1\r\nHost: {host}\r\n\r\n\
         GET /a HTTP/1.1\r\nHost: {host}\r\n\r\n\
         POST /post HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello\
         GET /c HTTP/1.1\r\nHost: {host}\r\n\r\n"
    );
    s.write_all(batch.as_bytes()).expect("write");
    let got = responses(&mut s, 5);
    let want = [
        (200, "body of /a"),
        (200, "body of /b"),
        (200, "body of /a"),
        (200, "posted"),
        (200, "body of /c"),
    ];
    let got: Vec<(u16, &str)> = got.iter().map(|(c, b)| (*c, b.as_str())).collect();
    assert_eq!(got, want, "{}", node.log());
    expect_lean_hits(&node, 3.0, "lean hits");
    let posted = origin.requests("/post");
    assert_eq!(posted.len(), 1);
    // the connection is still usable, and back on the lean path
    s.write_all(format!("GET /b HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    assert_eq!(responses(&mut s, 1), [(200, "body of /b".to_string())]);
    expect_lean_hits(&node, 4.0, "lean hits");
}

#[test]
fn a_request_body_sent_in_pieces_then_a_pipelined_request_are_both_answered() {
    let origin = origin();
    let node = NodeConfig::new(&origin.url()).start();
    get(&node, "/a");
    let mut s = TcpStream::connect(node.addr()).expect("connect");
    s.write_all(b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhel")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // the rest of the body, and a request behind it in the same write: Pingora reads both
    s.write_all(b"lo worldGET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = responses(&mut s, 2);
    assert_eq!(
        got,
        [(200, "posted".to_string()), (200, "body of /a".to_string())],
        "{}",
        node.log()
    );
    let posted = origin.requests("/post");
    assert_eq!(posted.len(), 1);
    // Pingora kept the connection: the next hit is served, by the full path
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(responses(&mut s, 1), [(200, "body of /a".to_string())]);
}

#[test]
fn connection_close_and_http10_end_the_connection_after_a_lean_hit() {
    let origin = origin();
    let node = NodeConfig::new(&origin.url()).start();
    get(&node, "/a");
    let host = node.addr();
    for request in [
        format!("GET /a HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        format!("GET /a HTTP/1.0\r\nHost: {host}\r\n\r\n"),
    ] {
        let mut s = TcpStream::connect(node.addr()).expect("connect");
        s.write_all(request.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut all = Vec::new();
        let read = s.read_to_end(&mut all);
        assert!(read.is_ok(), "{request:?}: the node closed the connection");
        let text = String::from_utf8_lossy(&all);
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(text.ends_with("body of /a"), "{text}");
    }
    expect_lean_hits(&node, 2.0, "lean hits");
}

/// An origin with a compressible response (the node adds `Vary: Accept-Encoding`) and one
/// with `Vary: Accept-Language`.
fn varying_origin() -> TestOrigin {
    let origin = TestOrigin::start();
    origin.set(
        "/v",
        Reply::ok("the same text, compressible: ".repeat(40))
            .header("Content-Type", "text/plain")
            .header("Cache-Control", "max-age=300"),
    );
    origin.set(
        "/lang",
        Reply::ok("hello")
            .header("Vary", "Accept-Language")
            .header("Cache-Control", "max-age=300"),
    );
    origin
}

/// Variants of both, each requested twice; the memory tier hits counted.
fn variant_traffic(node: &Node) -> f64 {
    let fetch = |path: &str, headers: &[(&str, &str)]| get_with(node, path, headers);
    let gzip = [("Accept-Encoding", "gzip")];
    let plain = [("Accept-Encoding", "identity")];
    for headers in [&gzip[..], &plain, &gzip, &plain] {
        let f = fetch("/v", headers);
        let encoding = f.header("content-encoding");
        assert_eq!(encoding.is_some(), headers == gzip, "{encoding:?}");
    }
    for lang in ["en", "fr", "en", "fr"] {
        assert_eq!(fetch("/lang", &[("Accept-Language", lang)]).text(), "hello");
    }
    std::thread::sleep(Duration::from_millis(200));
    metric_sum(
        &node.metrics(),
        "outpost_cache_tier_hits_total",
        &[("tier", "memory")],
    )
}

#[test]
fn variants_of_a_varying_response_are_lean_hits_counted_as_the_full_path_counts_them() {
    let origin = varying_origin();
    let node = NodeConfig::new(&origin.url()).start();
    let tier_hits = variant_traffic(&node);
    // the second request of each variant
    expect_lean_hits(&node, 4.0, "every variant's hit is a lean hit");
    assert_eq!(origin.hits("/lang"), 2, "one fetch per variant");
    assert_eq!(origin.hits("/v"), 2);

    let origin = varying_origin();
    let full = NodeConfig::new(&origin.url())
        .node("lean_hits = false")
        .start();
    assert_eq!(
        variant_traffic(&full),
        tier_hits,
        "memory tier hits (a lookup of the primary slot, then of the variant) as counted by the full path"
    );
}

#[test]
fn https_http1_hits_take_the_lean_path_and_http2_ones_the_full_path() {
    let origin = origin();
    let ca = TestCa::new();
    let leaf = ca.leaf(&["a.test"], Validity::Current);
    let cfg = NodeConfig::new(&origin.url()).https();
    let (cert, key) = leaf.write(cfg.dir(), "leaf");
    let node = cfg.certificate(&cert, &key, "default = true").start();
    let url = node.https_url("a.test", "/a");
    let h1 = client(&ca, "a.test", node.https_addr(), Some(false));
    for _ in 0..3 {
        let resp = h1.get(&url).send().expect("HTTPS GET");
        assert_eq!(resp.version(), reqwest::Version::HTTP_11);
        assert_eq!(resp.text().expect("body"), "body of /a");
    }
    expect_lean_hits(&node, 2.0, "HTTP/1.1 over TLS: the two hits");
    let h2 = client(&ca, "a.test", node.https_addr(), Some(true));
    let resp = h2.get(&url).send().expect("HTTP/2 GET");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert!(cs_has(&common::cache_status(&resp), "hit"));
    assert_eq!(resp.text().expect("body"), "body of /a");
    expect_lean_hits(&node, 2.0, "an HTTP/2 hit takes the full path");
}

#[test]
fn while_a_tag_purge_is_pending_objects_it_covers_are_refetched_and_others_stay_lean_hits() {
    let origin = origin();
    origin.set(
        "/tagged",
        Reply::ok("tagged")
            .header("Cache-Control", "max-age=300")
            .header("Surrogate-Key", "t1"),
    );
    let node = NodeConfig::new(&origin.url()).start();
    get(&node, "/tagged");
    get(&node, "/a");
    let r = node
        .client()
        .post(node.admin_url("/purge"))
        .header("Authorization", "Bearer test-token")
        .header("Content-Type", "application/json")
        .body(r#"{"tags": ["t1"]}"#)
        .send()
        .expect("POST /purge");
    assert_eq!(r.status().as_u16(), 200);
    // the ban stays pending for at least lurker::SETTLE (2 s): these run while it is
    let untagged = get(&node, "/a");
    assert!(cs_has(&untagged.cache_status(), "hit"));
    expect_lean_hits(&node, 1.0, "an object no ban covers is a lean hit");
    let tagged = get(&node, "/tagged");
    assert!(
        !cs_has(&tagged.cache_status(), "hit"),
        "{}",
        tagged.cache_status()
    );
    assert_eq!(origin.hits("/tagged"), 2, "the covered object is refetched");
    expect_lean_hits(&node, 1.0, "the covered object took the full path");
}
