//! The lean pass path (src/lean/pass.rs): requests the cache predicts uncacheable forwarded on
//! the node's own keep-alive origin connections. What happens when the origin misbehaves: a
//! pooled connection it closed, an origin down, too slow, failing mid-body; a response that
//! turns storable; a close-delimited response to an HTTP/1.0 client. That its responses equal
//! the full path's is tests/lean_differential.rs.
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn lean_passes(node: &Node) -> f64 {
    metric_sum(&node.metrics(), "outpost_lean_passes_total", &[])
}

fn no_store(body: &str) -> Reply {
    Reply::ok(body.to_string()).header("Cache-Control", "no-store")
}

/// Everything `s` sends until it closes (or 5 s pass).
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// The head (as text) and what followed it in a response read whole.
fn head_and_body(got: &[u8]) -> (String, &[u8]) {
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    (
        String::from_utf8_lossy(&got[..end]).into_owned(),
        &got[end..],
    )
}

#[test]
fn passes_survive_an_origin_that_closed_pooled_connections() {
    let origin = TestOrigin::start();
    origin.set("/p", no_store("pass me"));
    let node = NodeConfig::new(&origin.url()).start();
    for _ in 0..3 {
        let r = get(&node, "/p");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "pass me");
    }
    assert_eq!(lean_passes(&node), 2.0, "the second and third went lean");
    // the origin restarts on the same address: the node's idle connections to it are dead
    let addr = origin.addr();
    drop(origin);
    let origin = TestOrigin::start_on(addr);
    origin.set("/p", no_store("pass me again"));
    for i in 0..3 {
        let r = get(&node, "/p");
        assert_eq!(r.status, 200, "request {i} after the restart");
        assert_eq!(r.text(), "pass me again");
    }
    assert_eq!(origin.hits("/p"), 3, "each request reached the origin once");
    // all three went lean: a pooled connection found dead is retried on a new one
    assert_eq!(lean_passes(&node), 5.0);
}

#[test]
fn an_origin_down_for_a_pass_gets_the_full_path_answer() {
    let origin = TestOrigin::start();
    origin.set("/p", no_store("up"));
    let node = NodeConfig::new(&origin.url()).start();
    assert_eq!(get(&node, "/p").status, 200);
    assert_eq!(get(&node, "/p").status, 200);
    let addr = origin.addr();
    drop(origin);
    // connection refused: handed to the full path, which answers as it always does
    let r = get(&node, "/p");
    assert_eq!(r.status, 502);
    let cs = r.cache_status();
    assert!(cs_has(&cs, "detail=origin-unreachable"), "{cs}");
    // back up: passes go on
    let origin = TestOrigin::start_on(addr);
    origin.set("/p", no_store("up again"));
    let r = get(&node, "/p");
    assert_eq!((r.status, r.text().as_str()), (200, "up again"));
    assert!(
        node.log().contains("request failed"),
        "the failure is logged"
    );
}

#[test]
fn a_slow_origin_for_a_pass_times_out_as_on_the_full_path() {
    let origin = TestOrigin::start();
    origin.set("/slow", no_store("slow"));
    let node = NodeConfig::new(&origin.url())
        .origin("read_timeout = \"600ms\"")
        .start();
    assert_eq!(get(&node, "/slow").status, 200);
    origin.set("/slow", no_store("slow").delay(Duration::from_secs(2)));
    let r = get(&node, "/slow");
    assert_eq!(r.status, 504);
    assert!(cs_has(&r.cache_status(), "detail=origin-timeout"));
    assert_eq!(lean_passes(&node), 1.0);
    // asked once (one server, nowhere to retry), not again by the full path
    assert_eq!(origin.hits("/slow"), 2);
    let m = node.metrics();
    assert_eq!(
        metric_sum(&m, "outpost_upstream_errors_total", &[("kind", "timeout")]),
        1.0,
        "{m}"
    );
}

#[test]
fn a_pass_whose_response_turns_storable_is_stored_by_the_next_request() {
    let origin = TestOrigin::start();
    origin.set("/flip", no_store("private for now"));
    let node = NodeConfig::new(&origin.url()).start();
    assert!(cs_has(
        &get(&node, "/flip").cache_status(),
        "detail=no-store"
    ));
    origin.set(
        "/flip",
        Reply::ok("public now").header("Cache-Control", "max-age=300"),
    );
    // predicted uncacheable: forwarded, and the prediction cleared
    let r = get(&node, "/flip");
    assert_eq!(r.text(), "public now");
    let cs = r.cache_status();
    assert!(
        cs_has(&cs, "fwd=miss") && cs_has(&cs, "detail=deferred"),
        "{cs}"
    );
    assert!(!cs_has(&cs, "stored"), "{cs}");
    assert_eq!(lean_passes(&node), 1.0);
    // the next one fills the cache, the one after is a hit
    let cs = get(&node, "/flip").cache_status();
    assert!(cs_has(&cs, "stored"), "{cs}");
    let cs = get(&node, "/flip").cache_status();
    assert!(cs_has(&cs, "hit"), "{cs}");
    assert_eq!(origin.hits("/flip"), 3);
}

#[test]
fn an_origin_failing_mid_body_closes_the_client_connection() {
    let origin = TestOrigin::start();
    origin.set("/cut", no_store("whole"));
    let node = NodeConfig::new(&origin.url()).start();
    assert_eq!(get(&node, "/cut").status, 200);
    let body = payload(200_000);
    origin.set(
        "/cut",
        Reply::ok(body.clone())
            .header("Cache-Control", "no-store")
            .truncate_after(100_000),
    );
    let mut s = TcpStream::connect(node.addr()).unwrap();
    let host = node.addr().to_string();
    s.write_all(format!("GET /cut HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let got = read_to_close(&mut s);
    let (head, sent) = head_and_body(&got);
    assert!(head.contains("Content-Length: 200000"), "{head}");
    assert!(
        sent.len() < body.len(),
        "the body is cut short, never padded"
    );
    assert_eq!(sent, &body[..sent.len()], "and what came is the origin's");
    assert_eq!(lean_passes(&node), 1.0);
    wait_until("the failure logged", Duration::from_secs(5), || {
        node.log().contains("the origin failed mid-response")
    });
    origin.set("/cut", no_store("whole again"));
    assert_eq!(get(&node, "/cut").text(), "whole again");
}

#[test]
fn http_1_0_clients_get_bodies_without_chunks_ended_by_the_close() {
    let origin = TestOrigin::start();
    let body = payload(150_000);
    let no_store = |r: Reply| r.header("Cache-Control", "no-store");
    origin.set(
        "/close",
        no_store(Reply::ok(body.clone()).close_delimited()),
    );
    origin.set("/chunked", no_store(Reply::ok(body.clone()).chunked()));
    let node = NodeConfig::new(&origin.url()).start();
    for path in ["/close", "/chunked"] {
        assert_eq!(get(&node, path).body, body, "{path}");
        // HTTP/1.1 (reqwest), on the lean pass path: chunked, the connection kept
        let r = get(&node, path);
        assert_eq!(r.body, body, "{path}");
        assert_eq!(r.header("transfer-encoding").as_deref(), Some("chunked"));
        // HTTP/1.0 has no chunked coding (RFC 9112 7.1): the body as it is, then the close
        // (the full path: the lean path leaves HTTP/1.0 to it)
        let mut s = TcpStream::connect(node.addr()).unwrap();
        let host = node.addr().to_string();
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n");
        s.write_all(request.as_bytes()).unwrap();
        let got = read_to_close(&mut s);
        let (head, sent) = head_and_body(&got);
        let head = head.to_ascii_lowercase();
        assert!(!head.contains("transfer-encoding"), "{path}: {head}");
        assert!(head.contains("connection: close"), "{path}: {head}");
        assert_eq!(sent, &body[..], "{path}");
    }
    assert_eq!(lean_passes(&node), 2.0, "the HTTP/1.1 repeats");
}
