//! How responses reach the client: a header is held and sent with its body (write coalescing,
//! `policy::coalesce`). Whatever the sizes, a kept-alive connection (requests one by one, or
//! pipelined) gets every response byte-exact and in order, misses (streamed from the origin,
//! with a Content-Length or chunked) and hits alike, and HEAD answers carry no body.
mod common;

use common::*;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Body sizes around the held-bytes limit (1,460) and well past it.
const SIZES: [usize; 10] = [
    0, 1, 700, 1_100, 1_459, 1_460, 1_461, 5_000, 70_000, 300_000,
];

fn origin_with_sizes() -> TestOrigin {
    let origin = TestOrigin::start();
    for size in SIZES {
        for (kind, reply) in [
            ("cl", Reply::new(200).generated(size)),
            ("chunked", Reply::new(200).generated(size).chunked()),
        ] {
            origin.set(
                &format!("/{kind}/{size}"),
                reply
                    .header("Cache-Control", "max-age=600")
                    .header("Content-Type", "application/octet-stream"),
            );
        }
    }
    origin
}

fn connect(node: &Node) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(node.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn request(method: &str, path: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: writes.test\r\n\r\n")
}

fn check(resp: &Response, path: &str, size: usize, round: &str) {
    assert_eq!(resp.status, 200, "{round} {path}");
    assert_eq!(resp.body.len(), size, "{round} {path}: body length");
    assert!(
        resp.body == generated_body(0, size),
        "{round} {path}: body bytes differ"
    );
}

#[test]
fn one_by_one_on_a_kept_alive_connection_misses_then_hits_are_byte_exact() {
    let origin = origin_with_sizes();
    let node = NodeConfig::new(&origin.url()).start();
    let (mut s, mut r) = connect(&node);
    for round in ["miss", "hit"] {
        for kind in ["cl", "chunked"] {
            for size in SIZES {
                let path = format!("/{kind}/{size}");
                s.write_all(request("GET", &path).as_bytes()).unwrap();
                let resp = read_response(&mut r, false);
                check(&resp, &path, size, round);
                let cs = resp.header("cache-status").unwrap_or_default().to_string();
                if round == "hit" {
                    assert!(cs_has(&cs, "hit"), "{path}: {cs}");
                }
                // a HEAD between two GETs: a header alone, nothing held back or sent after it
                s.write_all(request("HEAD", &path).as_bytes()).unwrap();
                let head = read_response(&mut r, true);
                assert_eq!(head.status, 200, "HEAD {path}");
            }
        }
    }
    for kind in ["cl", "chunked"] {
        for size in SIZES {
            assert_eq!(origin.hits(&format!("/{kind}/{size}")), 1, "/{kind}/{size}");
        }
    }
}

#[test]
fn pipelined_requests_get_every_response_in_order() {
    let origin = origin_with_sizes();
    let node = NodeConfig::new(&origin.url()).start();
    let paths: Vec<(String, usize)> = ["cl", "chunked"]
        .iter()
        .flat_map(|kind| SIZES.iter().map(move |&s| (format!("/{kind}/{s}"), s)))
        .collect();
    for round in ["miss", "hit"] {
        let (mut s, mut r) = connect(&node);
        let all: String = paths.iter().map(|(p, _)| request("GET", p)).collect();
        s.write_all(all.as_bytes()).unwrap();
        for (path, size) in &paths {
            let resp = read_response(&mut r, false);
            check(&resp, path, *size, round);
        }
    }
}

#[test]
fn a_pipelined_request_with_a_body_and_a_bad_one_after_it() {
    let origin = origin_with_sizes();
    origin.set(
        "/post",
        Reply::ok("posted").header("Cache-Control", "no-store"),
    );
    let node = NodeConfig::new(&origin.url()).start();
    let (mut s, mut r) = connect(&node);
    let body = "hello world";
    let pipelined = format!(
        "POST /post HTTP/1.1\r\nHost: writes.test\r\nContent-Length: {}\r\n\r\n{body}{}{}",
        body.len(),
        request("GET", "/cl/5000"),
        "NOT-HTTP\r\n\r\n",
    );
    s.write_all(pipelined.as_bytes()).unwrap();
    let post = read_response(&mut r, false);
    assert_eq!((post.status, post.body.as_slice()), (200, &b"posted"[..]));
    check(
        &read_response(&mut r, false),
        "/cl/5000",
        5000,
        "after a POST",
    );
    let bad = read_response(&mut r, true);
    assert_eq!(bad.status, 400, "the malformed third request is refused");
    assert_eq!(origin.hits("/post"), 1);
    let post_seen = &origin.requests("/post")[0];
    assert_eq!(post_seen.header("content-length").as_deref(), Some("11"));
}
