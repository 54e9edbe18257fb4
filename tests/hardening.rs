//! Request hardening, black-box: size limits (414, 431, 413 declared and chunked), request
//! smuggling attempts (400/501, nothing reaches the origin), slow clients (header deadline,
//! body timeout 408, idle keep-alive connections closed at the header deadline), the
//! connection limit (an idle connection makes room for a new one), and hop-by-hop fields
//! stripped both ways.
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const LIMITS: &str = r#"
[limits]
max_uri_bytes = 100
max_headers = 20
max_header_bytes = "2KiB"
max_body_bytes = "1KiB"
header_timeout = "1s"
body_timeout = "1s"
max_connections = 3
"#;

fn node() -> (TestOrigin, Node) {
    let origin = TestOrigin::start();
    origin.set("/a", Reply::ok("a").header("Cache-Control", "max-age=60"));
    origin.set("/post", Reply::ok("posted"));
    let node = NodeConfig::new(&origin.url()).extra(LIMITS).start();
    (origin, node)
}

fn rejected(node: &Node, reason: &str) -> f64 {
    metric_sum(
        &node.metrics(),
        "outpost_rejected_requests_total",
        &[("reason", reason)],
    )
}

/// Whether the server closed `s` within `limit` (reading until EOF or an error).
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 1024];
    let start = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return start.elapsed() < limit,
        }
    }
}

/// Trickle header bytes on `s` (one every 200 ms: each read is quick, the header never
/// completes) until the server closes it; whether it did within `limit`.
fn trickled_is_cut_off(s: &mut TcpStream, limit: Duration) -> bool {
    let dripper = {
        let mut s = s.try_clone().expect("clone");
        let drops = limit.as_millis() / 200 + 10;
        std::thread::spawn(move || {
            for _ in 0..drops {
                if s.write_all(b"X").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let closed = closed_within(s, limit);
    let _ = dripper.join();
    closed
}

#[test]
fn oversized_requests_get_their_status_and_never_reach_the_origin() {
    let (origin, node) = node();
    let long = format!("/a?{}", "x".repeat(120));
    assert_eq!(get(&node, &long).status, 414);
    let head = request_with(&node, "HEAD", &long, &[]);
    assert_eq!(head.status, 414);
    assert!(head.body.is_empty(), "a body in an answer to HEAD");
    let many: Vec<(String, String)> = (0..25).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(get_with(&node, "/a", &many).status, 431);
    let big = "v".repeat(3000);
    assert_eq!(
        get_with(&node, "/a", &[("X-Big", big.as_str())]).status,
        431
    );
    let r = node
        .client()
        .post(node.url("/post"))
        .body(vec![b'x'; 2000])
        .send()
        .expect("POST");
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(
        origin.total_hits(),
        0,
        "a refused request reached the origin"
    );
    // a chunked body that grows past the limit
    let mut req = b"POST /post HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'y'; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let resp = raw(&node, &req);
    assert_eq!(status_of(&resp), Some(413), "{resp}");
    for reason in [
        "uri_too_long",
        "too_many_headers",
        "header_too_large",
        "body_too_large",
    ] {
        assert!(rejected(&node, reason) >= 1.0, "{reason} not counted");
    }
    assert!(node.log().contains("request refused"), "no log line");
    assert_eq!(get(&node, "/a").status, 200, "the node still serves");
}

#[test]
fn smuggling_attempts_are_refused_before_the_origin() {
    let (origin, node) = node();
    for (req, status) in [
        (&b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"[..], 400),
        (b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcdGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"POST /post HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ] {
        let resp = raw(&node, req);
        assert_eq!(status_of(&resp), Some(status), "{resp}");
        assert!(resp.to_ascii_lowercase().contains("connection: close"), "{resp}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(origin.hits("/smuggled"), 0);
    assert_eq!(origin.hits("/post"), 0);
    // (differing Content-Lengths are refused by Pingora's parser, before any hook can count)
    assert!(rejected(&node, "conflicting_framing") >= 1.0);
    assert!(rejected(&node, "bad_transfer_encoding") >= 1.0);
    assert!(
        rejected(&node, "malformed") >= 1.0,
        "Pingora's own 400 for differing lengths is counted"
    );
    // a request line that is not HTTP: Pingora's parser answers 400, the node logs and counts it
    let before = rejected(&node, "malformed");
    let resp = raw(&node, b"GET /a\x01 HTTP/1.1 junk\r\n\r\n");
    assert_eq!(status_of(&resp), Some(400), "{resp}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rejected(&node, "malformed"), before + 1.0);
    assert!(node.log().contains("not a valid HTTP request"));
    let r = get_with(&node, "/a", &[("Content-Length", "abc")]);
    assert_eq!(r.status, 400);
}

#[test]
fn a_header_trickled_past_its_deadline_is_cut_off_and_a_stalled_body_gets_408() {
    let (origin, node) = node();
    let mut s = TcpStream::connect(node.addr()).expect("connect");
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    assert!(
        trickled_is_cut_off(&mut s, Duration::from_secs(8)),
        "a trickled header kept its connection"
    );
    assert!(rejected(&node, "header_timeout") >= 1.0);

    let mut s = TcpStream::connect(node.addr()).expect("connect");
    s.write_all(b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        .expect("write");
    s.set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    let resp = String::from_utf8_lossy(&buf[..n]).to_string();
    assert_eq!(status_of(&resp), Some(408), "{resp}");
    assert!(rejected(&node, "body_timeout") >= 1.0);
    assert_eq!(get(&node, "/a").status, 200);
    drop(origin);
}

/// Send one GET on `s` and read its whole response (Content-Length framed) off the
/// connection, leaving it open.
fn get_on(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("response");
        assert!(n > 0, "closed before the response ended");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

#[test]
fn an_idle_keep_alive_connection_is_closed_at_the_header_deadline() {
    let (_origin, node) = node();
    // after one response, then after a second one: each wait for a request has the deadline
    let mut s = TcpStream::connect(node.addr()).expect("connect");
    assert_eq!(status_of(&get_on(&mut s, "/a")), Some(200));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status_of(&get_on(&mut s, "/a")), Some(200));
    let after = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "an idle keep-alive connection stayed open past limits.header_timeout (1s)"
    );
    assert!(
        after.elapsed() >= Duration::from_millis(800),
        "closed before the deadline: {:?}",
        after.elapsed()
    );
    // a keep-alive connection whose next header trickles in is cut off and counted
    let mut s = TcpStream::connect(node.addr()).expect("connect");
    assert_eq!(status_of(&get_on(&mut s, "/a")), Some(200));
    s.write_all(b"GET /a HTTP/1.1\r\n").expect("write");
    assert!(
        trickled_is_cut_off(&mut s, Duration::from_secs(5)),
        "a trickled second header kept its connection"
    );
    assert_eq!(rejected(&node, "header_timeout"), 1.0);
    let m = node.metrics();
    assert!(
        metric_sum(
            &m,
            "outpost_idle_connections_closed_total",
            &[("reason", "header_timeout")]
        ) >= 1.0,
        "idle closes counted apart from slow clients"
    );
}

#[test]
fn past_max_connections_an_idle_connection_makes_room_and_busy_ones_do_not() {
    let origin = TestOrigin::start();
    origin.set("/a", Reply::ok("a").header("Cache-Control", "max-age=60"));
    // a long deadline, so that only the limit closes connections here
    let node = NodeConfig::new(&origin.url())
        .extra("[limits]\nmax_connections = 3\nheader_timeout = \"30s\"\n")
        .start();

    // three idle keep-alive connections (each had a response) hold every slot
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(node.addr()).expect("connect");
            assert_eq!(status_of(&get_on(&mut s, "/a")), Some(200));
            s
        })
        .collect();
    // a new client gets in: one idle connection is closed for it
    for round in 0..3 {
        let mut fourth = TcpStream::connect(node.addr()).expect("connect");
        assert_eq!(
            status_of(&get_on(&mut fourth, "/a")),
            Some(200),
            "round {round}: a new client was refused while connections sat idle"
        );
        idle.push(fourth);
    }
    let closed = idle
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_millis(300)))
        .filter(|closed| *closed)
        .count();
    assert_eq!(closed, 3, "each new client displaced one idle connection");
    assert_eq!(rejected(&node, "max_connections"), 0.0);
    let m = node.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "outpost_idle_connections_closed_total",
            &[("reason", "max_connections")]
        ),
        3.0
    );
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));

    // three connections with a request in flight are not idle: a fourth is closed at once
    // (each its own path: requests for one key would wait on one another, not the origin)
    let busy: Vec<_> = (0..3)
        .map(|i| {
            let path = format!("/slow{i}");
            origin.set(&path, Reply::ok("slow").delay(Duration::from_secs(2)));
            let mut s = TcpStream::connect(node.addr()).expect("connect");
            std::thread::spawn(move || get_on(&mut s, &path))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut fourth = TcpStream::connect(node.addr()).expect("the kernel still accepts");
    let _ = fourth.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 256];
    fourth
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let read = fourth.read(&mut buf);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a connection beyond max_connections was served while all were busy: {:?}",
        read.map(|n| String::from_utf8_lossy(&buf[..n]).to_string())
    );
    assert!(rejected(&node, "max_connections") >= 1.0);
    for b in busy {
        assert_eq!(status_of(&b.join().expect("busy client")), Some(200));
    }
    // slots come back
    assert_eq!(get(&node, "/a").status, 200);
}

#[test]
fn hop_by_hop_fields_are_not_forwarded_either_way() {
    let origin = TestOrigin::start();
    origin.set(
        "/h",
        Reply::ok("h")
            .header("Cache-Control", "max-age=60")
            .header("Keep-Alive", "timeout=5")
            .header("Proxy-Connection", "keep-alive"),
    );
    let node = NodeConfig::new(&origin.url()).start();
    let r = get_with(
        &node,
        "/h",
        &[
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("keep-alive").is_none());
    assert!(r.header("proxy-connection").is_none());
    let seen = &origin.requests("/h")[0];
    assert!(
        seen.header("x-secret").is_none(),
        "Connection-listed field forwarded"
    );
    assert!(seen.header("keep-alive").is_none());
    assert!(seen.header("te").is_none());
    assert!(seen.header("x-forwarded-for").is_some());
    // naming a field the proxy adds does not drop it (or the request is refused outright)
    origin.set("/h2", Reply::ok("h2"));
    let r = get_with(&node, "/h2", &[("Connection", "close, X-Forwarded-For")]);
    if r.status == 200 {
        assert!(origin.requests("/h2")[0]
            .header("x-forwarded-for")
            .is_some());
    } else {
        assert_eq!(r.status, 400);
    }
    // stored without them: a hit is clean too
    let hit = get(&node, "/h");
    assert_hit(&hit, "stored");
    assert!(hit.header("keep-alive").is_none());
}

#[test]
fn bad_limits_are_errors_naming_the_key() {
    for (extra, key) in [
        ("[limits]\nmax_connections = 0", "limits.max_connections"),
        ("[limits]\nheader_timeout = \"0s\"", "limits.header_timeout"),
        (
            "[limits]\nmax_body_bytes = \"lots\"",
            "limits.max_body_bytes",
        ),
        ("[limits]\nmax_uri_bytes = 0", "limits.max_uri_bytes"),
        ("[limits]\nmax_header = 5", "max_header"),
    ] {
        assert_refused(extra, key);
    }
}

/// Sends `req` on a new connection and reads until the node closes it: what it answered, or
/// `None` if the connection stayed open for 5 s.
fn answered_then_closed(node: &Node, req: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect(node.addr()).expect("connect");
    s.write_all(req).expect("write");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&out).to_string()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&out).to_string())
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn control_bytes_or_spaces_in_the_request_target_get_400_and_a_closed_connection() {
    let origin = TestOrigin::start();
    origin.set("/a", Reply::ok("a"));
    let node = NodeConfig::new(&origin.url()).start();
    let mut sent = 0.0;
    for byte in [0x00u8, 0x01, 0x09, 0x1f, 0x7f, b' '] {
        for (before, after) in [(&b"/a"[..], &b"b"[..]), (b"/a?q=", b"")] {
            let mut req = b"GET ".to_vec();
            req.extend_from_slice(before);
            req.push(byte);
            req.extend_from_slice(after);
            req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
            let shown = req.escape_ascii().to_string();
            let resp = answered_then_closed(&node, &req)
                .unwrap_or_else(|| panic!("{shown}: the connection stayed open"));
            assert_eq!(status_of(&resp), Some(400), "{shown}: {resp}");
            assert!(
                resp.to_ascii_lowercase().contains("connection: close"),
                "{shown}: {resp}"
            );
            sent += 1.0;
        }
    }
    assert_eq!(
        origin.total_hits(),
        0,
        "a request with a bad target reached the origin"
    );
    assert_eq!(
        rejected(&node, "malformed"),
        sent,
        "each one counted as malformed"
    );
    let log = node.log();
    let refused = log
        .lines()
        .filter(|l| l.contains("request refused") && l.contains("malformed"))
        .count();
    assert_eq!(refused as f64, sent, "one log line each:\n{log}");
    // the same bytes percent-encoded are an ordinary request, forwarded as sent
    let resp = raw(&node, b"GET /a?q=%00%09%20%7F HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&resp), Some(200), "{resp}");
    let seen = origin.requests("/a");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/a?q=%00%09%20%7F");
    // a request whose body holds such a line is not refused, nor the one after it
    let body = b"GET /a\x00b HTTP/1.1\r\n";
    let mut req = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req.extend_from_slice(b"GET /a?q=%00b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let resp = answered_then_closed(&node, &req).expect("closed after the second answer");
    assert_eq!(resp.matches("HTTP/1.1 200").count(), 2, "{resp}");
    assert_eq!(rejected(&node, "malformed"), sent);
    // pipelined behind an ordinary request: that one is answered, then the 400, then the close
    let forwarded = origin.requests("/a").len();
    let resp = answered_then_closed(
        &node,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /a\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .expect("closed after the 400");
    let statuses: Vec<&str> = resp
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| resp.get(at + 9..at + 12))
        .collect();
    assert_eq!(statuses, ["200", "400"], "{resp}");
    assert_eq!(origin.requests("/a").len(), forwarded + 1);
    assert_eq!(rejected(&node, "malformed"), sent + 1.0);
}
