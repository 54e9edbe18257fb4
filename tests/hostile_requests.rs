//! Malformed and hostile requests: a clear 4xx (or a closed connection), never a crash, never a
//! poisoned cache entry. Raw sockets, because HTTP clients refuse to send most of these.
mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

fn node_with_cached_object() -> (TestOrigin, Node) {
    let origin = TestOrigin::start();
    origin.set(
        "/a",
        Reply::ok("fine").header("Cache-Control", "max-age=60"),
    );
    let node = NodeConfig::new(&origin.url()).start();
    assert_eq!(get(&node, "/a").text(), "fine");
    (origin, node)
}

fn still_serves(node: &Node) {
    let r = get(node, "/a");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "fine"),
        "{}",
        node.log()
    );
    assert!(cs_has(&r.cache_status(), "hit"), "{}", r.cache_status());
}

#[test]
fn http11_request_without_host_is_400() {
    let (_o, node) = node_with_cached_object();
    let resp = raw(&node, b"GET /a HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&resp), Some(400), "{resp}");
    still_serves(&node);
}

#[test]
fn garbage_request_lines_get_400_or_close_and_the_node_survives() {
    let (origin, node) = node_with_cached_object();
    let hits = origin.total_hits();
    let cases: &[&[u8]] = &[
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /a HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: x\r\nX: \x01\x02\r\n\r\n",
        b"G\xffT /a HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for case in cases {
        let resp = raw(&node, case);
        if let Some(code) = status_of(&resp) {
            assert!((400..500).contains(&code), "{case:?} -> {resp}");
        }
    }
    assert_eq!(
        origin.total_hits(),
        hits,
        "a malformed request reached the origin"
    );
    still_serves(&node);
}

#[test]
fn oversized_header_block_is_rejected_without_crashing() {
    let (origin, node) = node_with_cached_object();
    let hits = origin.total_hits();
    let mut req = b"GET /a HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..2000 {
        req.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(100)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let resp = raw(&node, &req);
    if let Some(code) = status_of(&resp) {
        assert!((400..500).contains(&code), "{resp}");
    }
    assert_eq!(origin.total_hits(), hits);
    still_serves(&node);
}

#[test]
fn conflicting_content_length_and_transfer_encoding_never_reach_the_origin_as_sent() {
    let (origin, node) = node_with_cached_object();
    let smuggle = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let resp = raw(&node, smuggle);
    let _ = status_of(&resp);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        origin.hits("/smuggled"),
        0,
        "request smuggled to the origin: {resp}"
    );
    still_serves(&node);
}

#[test]
fn half_sent_request_then_close_does_not_hurt() {
    let (_o, node) = node_with_cached_object();
    for _ in 0..20 {
        let mut s = TcpStream::connect(node.addr()).unwrap();
        let _ = s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\nX-Partial: ");
    }
    still_serves(&node);
}
