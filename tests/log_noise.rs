//! The node's log stays readable under routine client behaviour: a client that goes away (mid
//! request header, mid request body, while the origin is slow to answer, mid response, HTTP/2
//! streams reset, an HTTP/2 preconnect never used) is counted in
//! `outpost_client_disconnects_total{phase}` and logged at debug only, where Pingora logged an
//! ERROR per event; a TLS client sending an IP address as SNI does not get rustls's WARN each;
//! `OUTPOST_LOG` with debug still shows the lines left out.
mod common;

use common::tls::client;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

const DISCONNECTS: &str = "outpost_client_disconnects_total";

/// Send `request`, read `n` bytes of the answer, close the connection.
fn leave_after(addr: SocketAddr, request: &[u8], n: usize) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).expect("send");
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)
        .expect("the first bytes of the answer");
}

/// Send `request` and close the connection after `wait`, having read nothing.
fn leave_unanswered(addr: SocketAddr, request: &[u8], wait: Duration) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(request).expect("send");
    std::thread::sleep(wait);
}

/// The node's own log lines (not the access log's JSON) at WARN or ERROR, from byte `from` of
/// its output on.
fn warnings(node: &Node, from: usize) -> Vec<String> {
    node.log()
        .get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('{') && (l.contains(" WARN ") || l.contains(" ERROR ")))
        .map(str::to_string)
        .collect()
}

/// Wait until `phase` has counted at least `n` disconnects; returns the count.
fn wait_disconnects(node: &Node, phase: &str, n: f64) -> f64 {
    wait_metric(
        node,
        DISCONNECTS,
        &[("phase", phase)],
        |v| v >= n,
        Duration::from_secs(10),
        &format!("{n} disconnects in phase {phase}"),
    )
}

/// An origin with a large cacheable body (`/big`), a slow uncacheable body (`/slow-body`:
/// 1,000 bytes then a pause, then more than the kernel's socket buffers hold, 4 MiB of send
/// buffer here, so that the node cannot have written it all before a client that stopped
/// reading closes) and slow uncacheable headers (`/slow-header`, `/form`).
fn origin() -> TestOrigin {
    let origin = TestOrigin::start();
    origin.set(
        "/big",
        Reply::ok("")
            .generated(8 << 20)
            .header("Cache-Control", "max-age=600"),
    );
    origin.set(
        "/slow-body",
        Reply::ok("")
            .generated(16 << 20)
            .header("Cache-Control", "no-store")
            .stall_after(1000, Duration::from_secs(1)),
    );
    // answers late: a client's request body is cut short before any answer
    origin.set("/form", Reply::ok("ok").delay(Duration::from_secs(2)));
    origin.set(
        "/slow-header",
        Reply::ok("late")
            .header("Cache-Control", "no-store")
            .delay(Duration::from_secs(1)),
    );
    origin
}

/// `GET /big` twice (the second a hit): the object is stored for the clients that leave.
fn store_big(node: &Node) {
    assert_eq!(get(node, "/big").status, 200);
    wait_until("/big served as a hit", Duration::from_secs(10), || {
        get(node, "/big").cache_status().contains("hit")
    });
}

const HIT: &[u8] = b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// A node with an HTTPS listener serving a certificate of `ca` for `names` (the default one).
fn https_node(origin: &TestOrigin, ca: &TestCa, names: &[&str]) -> Node {
    let leaf = ca.leaf(names, Validity::Current);
    let cfg = NodeConfig::new(&origin.url()).https();
    let (cert, key) = leaf.write(cfg.dir(), "leaf");
    cfg.certificate(&cert, &key, "default = true").start()
}

#[test]
fn http1_clients_leaving_mid_exchange_are_counted_by_phase_not_logged_as_errors() {
    let origin = origin();
    let node = NodeConfig::new(&origin.url()).start();
    store_big(&node);
    let mark = node.log().len();

    for _ in 0..5 {
        // a stored response: the client reads 100 bytes of 8 MiB and closes
        leave_after(node.addr(), HIT, 100);
    }
    for _ in 0..2 {
        // a response streamed from a slow origin
        leave_after(
            node.addr(),
            b"GET /slow-body HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            100,
        );
    }
    for _ in 0..2 {
        // gone while the origin is still to answer
        leave_unanswered(
            node.addr(),
            b"GET /slow-header HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            Duration::from_millis(200),
        );
    }
    for _ in 0..3 {
        // half a request header
        leave_unanswered(node.addr(), b"GET /big HTTP/1.1\r\nHo", Duration::ZERO);
    }
    for _ in 0..3 {
        // 3 bytes of a 1,000-byte body
        leave_unanswered(
            node.addr(),
            b"POST /form HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nabc",
            Duration::ZERO,
        );
    }

    assert_eq!(wait_disconnects(&node, "response_body", 7.0), 7.0);
    assert_eq!(wait_disconnects(&node, "response_header", 2.0), 2.0);
    assert_eq!(wait_disconnects(&node, "request_header", 3.0), 3.0);
    assert_eq!(wait_disconnects(&node, "request_body", 3.0), 3.0);
    assert_eq!(
        metric_sum(&node.metrics(), DISCONNECTS, &[("phase", "h2_preface")]),
        0.0
    );
    let noise = warnings(&node, mark);
    assert!(
        noise.is_empty(),
        "clients leaving logged warnings or errors:\n{}",
        noise.join("\n")
    );
    // the node still serves, and an origin failure is still logged
    assert_hit(&get(&node, "/big"), "GET /big after the disconnects");
    // past the origin's read_timeout (3 s): a 504
    origin.set("/broken", Reply::ok("x").delay(Duration::from_secs(5)));
    assert_eq!(get(&node, "/broken").status, 504);
    wait_until("the origin failure logged", Duration::from_secs(5), || {
        warnings(&node, mark)
            .iter()
            .any(|l| l.contains("request failed") && l.contains("/broken"))
    });
}

/// A rustls client configuration trusting `ca`, offering ALPN `alpn`.
fn tls_config(ca: &TestCa, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.pem().as_bytes()) {
        roots.add(cert.expect("CA certificate")).expect("CA root");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Complete a TLS handshake with `addr` (SNI `name`, ALPN `h2`) and close without a byte of
/// HTTP/2 (with a TLS close_notify, or just the TCP connection): a browser's preconnect that
/// was never used.
fn preconnect_h2(ca: &TestCa, addr: SocketAddr, name: &str, close_notify: bool) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
    let mut tls =
        rustls::ClientConnection::new(tls_config(ca, &[b"h2"]), server).expect("TLS client");
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).expect("TLS handshake");
    }
    assert_eq!(tls.alpn_protocol(), Some(&b"h2"[..]), "HTTP/2 negotiated");
    if close_notify {
        tls.send_close_notify();
        let _ = tls.complete_io(&mut tcp);
    }
}

/// Lines the harness's readiness probe causes on an HTTPS listener: it opens a TCP connection
/// and closes it without a TLS handshake, which Pingora logs (not filtered: the node cannot
/// see failed handshakes to count them).
fn probe_line(line: &str) -> bool {
    line.contains("Downstream handshake error") && line.contains("tls handshake eof")
}

#[test]
fn http2_clients_resetting_streams_and_unused_preconnects_are_counted_not_logged() {
    let origin = origin();
    let ca = TestCa::new();
    let node = https_node(&origin, &ca, &["a.test"]);
    let h2 = client(&ca, "a.test", node.https_addr(), Some(true));
    let url = |path: &str| node.https_url("a.test", path);
    let whole = |path: &str| {
        let mut r = h2.get(url(path)).send().expect("GET over HTTP/2");
        let mut body = Vec::new();
        r.read_to_end(&mut body).expect("body");
        r
    };
    whole("/big");
    wait_until("/big served as a hit", Duration::from_secs(10), || {
        cache_status(&whole("/big")).contains("hit")
    });
    let mark = node.log().len();

    // a load tool stopping with streams open: 2 hits and 2 slow responses, 10 bytes read of
    // each (2 hits fill 4 MiB of the client's 5 MiB connection window)
    let mut open = Vec::new();
    for path in ["/big", "/big", "/slow-body", "/slow-body"] {
        let mut r = h2.get(url(path)).send().expect("GET over HTTP/2");
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        let mut first = [0u8; 10];
        r.read_exact(&mut first).expect("the first bytes");
        open.push(r);
    }
    drop(open);
    drop(h2);
    for close_notify in [true, false, true, false] {
        preconnect_h2(&ca, node.https_addr(), "a.test", close_notify);
    }

    assert_eq!(wait_disconnects(&node, "response_body", 4.0), 4.0);
    assert_eq!(wait_disconnects(&node, "h2_preface", 4.0), 4.0);
    let noise: Vec<String> = warnings(&node, mark)
        .into_iter()
        .filter(|l| !probe_line(l))
        .collect();
    assert!(
        noise.is_empty(),
        "HTTP/2 clients leaving logged warnings or errors:\n{}",
        noise.join("\n")
    );
}

/// Start a TLS handshake whose ClientHello names `127.0.0.1` in SNI (as some clients that
/// connect by address do; RFC 6066 allows only host names), read the server's first answer,
/// close. rustls's client never sends an address as SNI: its ClientHello for `localhost`,
/// the same length, is rewritten on the way out.
fn hello_with_ip_sni(ca: &TestCa, addr: SocketAddr) {
    let server = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls =
        rustls::ClientConnection::new(tls_config(ca, &[b"http/1.1"]), server).expect("client");
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).expect("ClientHello");
    let at = hello
        .windows(9)
        .position(|w| w == b"localhost")
        .expect("SNI in the ClientHello");
    hello[at..at + 9].copy_from_slice(b"127.0.0.1");
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(&hello).expect("send ClientHello");
    let mut answer = [0u8; 5];
    tcp.read_exact(&mut answer).expect("the server's answer");
    assert_eq!(
        answer[0], 22,
        "a handshake record (ServerHello), not an alert"
    );
}

#[test]
fn tls_clients_connecting_by_ip_address_do_not_log_a_warning_each() {
    let origin = TestOrigin::start();
    origin.set("/a", Reply::ok("a").header("Cache-Control", "max-age=60"));
    let ca = TestCa::new();
    let node = https_node(&origin, &ca, &["a.test", "127.0.0.1"]);
    let mark = node.log().len();

    for _ in 0..5 {
        hello_with_ip_sni(&ca, node.https_addr());
    }
    // and whole requests by address (no SNI at all), HTTP/1.1 and HTTP/2
    let by_ip = format!("https://127.0.0.1:{}/a", node.https_addr().port());
    for h2 in [false, true] {
        for _ in 0..3 {
            let resp = client(&ca, "a.test", node.https_addr(), Some(h2))
                .get(&by_ip)
                .send()
                .expect("GET by address");
            assert_eq!(resp.status().as_u16(), 200);
        }
    }

    let sni_lines: Vec<String> = warnings(&node, mark)
        .into_iter()
        .filter(|l| l.contains("SNI") || l.contains("rustls"))
        .collect();
    assert!(
        sni_lines.len() <= 1,
        "a warning per TLS connection by IP address:\n{}",
        sni_lines.join("\n")
    );
}

#[test]
fn outpost_log_with_debug_shows_the_lines_left_out_and_disconnects_are_still_counted() {
    let origin = origin();
    // Pingora's line is the full path's (a lean hit never reaches Pingora's session)
    let node = NodeConfig::new(&origin.url())
        .env(
            "OUTPOST_LOG",
            "info,pingora_proxy::proxy_cache=debug,outpost=debug",
        )
        .node("lean_hits = false")
        .start();
    store_big(&node);
    for _ in 0..2 {
        leave_after(node.addr(), HIT, 100);
    }
    assert_eq!(wait_disconnects(&node, "response_body", 2.0), 2.0);
    wait_until(
        "Pingora's line and the node's debug line",
        Duration::from_secs(5),
        || {
            let log = node.log();
            log.contains("Fail to serve cache: Downstream")
                && log.contains("client closed the connection")
        },
    );
}

#[test]
fn failed_tls_handshakes_log_one_line_per_interval_not_one_each() {
    let origin = TestOrigin::start();
    let ca = TestCa::new();
    let node = https_node(&origin, &ca, &["a.test"]);
    // TCP health checks on the HTTPS port: connect, close without a handshake
    for _ in 0..20 {
        drop(std::net::TcpStream::connect(node.https_addr()).expect("connect"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let lines = node
        .log()
        .lines()
        .filter(|l| l.contains("Downstream handshake error"))
        .count();
    // the harness's own readiness probe and these 20 fall in one 10 s interval
    assert!(lines <= 1, "{lines} handshake error lines:\n{}", node.log());
}
