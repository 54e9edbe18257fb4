//! TLS to clients: HTTPS listeners choose the certificate by SNI, speak HTTP/2 through ALPN
//! (cache hits included), reload certificates when their files change (a bad file keeps the
//! previous ones in service), refuse bad certificate files at start, redirect plain HTTP to
//! HTTPS per rule, and keep the connection limits of the HTTP listeners.
mod common;

use common::tls::{client, peer_certificate, raw_tls};
use common::*;
use std::io::Read;
use std::time::{Duration, Instant};

/// A node with an HTTPS listener serving `leaves` (written as `c<i>.crt`/`c<i>.key` into its
/// directory), each with its extra certificate lines.
fn tls_node(origin: &TestOrigin, leaves: &[(&Leaf, &str)], tls: &str) -> NodeConfig {
    let mut cfg = NodeConfig::new(&origin.url()).https().tls(tls);
    for (i, (leaf, extra)) in leaves.iter().enumerate() {
        let (cert, key) = leaf.write(cfg.dir(), &format!("c{i}"));
        cfg = cfg.certificate(&cert, &key, extra);
    }
    cfg
}

/// GET `https://<sni>:port<path>` trusting `ca`; returns the response and the served certificate.
fn get_tls(
    node: &Node,
    ca: &TestCa,
    sni: &str,
    path: &str,
    h2: Option<bool>,
) -> (Fetched, Vec<u8>, reqwest::Version) {
    let resp = client(ca, sni, node.https_addr(), h2)
        .get(node.https_url(sni, path))
        .send()
        .unwrap_or_else(|e| {
            panic!(
                "GET {path} with SNI {sni}: {e:?}\n--- log ---\n{}",
                node.log()
            )
        });
    let served = peer_certificate(&resp);
    let version = resp.version();
    (fetch(resp), served, version)
}

#[test]
fn each_sni_name_gets_its_own_certificate_and_unknown_names_the_default() {
    let origin = TestOrigin::start();
    origin.set("/x", Reply::ok("x").header("Cache-Control", "max-age=60"));
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"], Validity::Current);
    let b = ca.leaf(&["b.test", "*.b.test"], Validity::Current);
    let node = tls_node(&origin, &[(&a, ""), (&b, "default = true")], "").start();

    let (resp, served, _) = get_tls(&node, &ca, "a.test", "/x", None);
    assert_eq!((resp.status, resp.text().as_str()), (200, "x"));
    assert_eq!(served, a.der, "a.test gets a.test's certificate");
    let (resp, served, _) = get_tls(&node, &ca, "b.test", "/x", None);
    assert_eq!(resp.status, 200);
    assert_eq!(served, b.der, "b.test gets b.test's certificate");
    let (_, served, _) = get_tls(&node, &ca, "img.b.test", "/x", None);
    assert_eq!(served, b.der, "the wildcard covers one label");

    // an unknown name gets the default certificate, which does not verify for it
    let err = client(&ca, "c.test", node.https_addr(), None)
        .get(node.https_url("c.test", "/x"))
        .send()
        .expect_err("c.test must not verify against b.test's certificate");
    assert!(
        format!("{err:?}").contains("NotValidForName"),
        "a name mismatch, not another failure: {err:?}"
    );
}

#[test]
fn http2_through_alpn_serves_cache_hits_and_http1_still_works() {
    let origin = TestOrigin::start();
    let made = http_date(std::time::SystemTime::now() - Duration::from_secs(30));
    origin.set(
        "/h",
        Reply::ok("hello")
            .header("Cache-Control", "max-age=60")
            .header("Date", &made),
    );
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"], Validity::Current);
    let node = tls_node(&origin, &[(&a, "")], "").start();

    let (first, _, version) = get_tls(&node, &ca, "a.test", "/h", None);
    assert_eq!(version, reqwest::Version::HTTP_2, "ALPN picks h2");
    assert_stored_miss(&first, "first request over h2");
    let (hit, _, version) = get_tls(&node, &ca, "a.test", "/h", Some(true));
    assert_eq!(version, reqwest::Version::HTTP_2);
    assert_hit(&hit, "second request over h2");
    assert_eq!(
        hit.header("date").as_deref(),
        Some(made.as_str()),
        "stored Date over h2"
    );
    assert_eq!(hit.text(), "hello");
    let (hit, _, version) = get_tls(&node, &ca, "a.test", "/h", Some(false));
    assert_eq!(version, reqwest::Version::HTTP_11, "HTTP/1.1 over TLS");
    assert_hit(&hit, "request over HTTP/1.1 and TLS");
    assert_eq!(origin.hits("/h"), 1);
}

#[test]
fn without_h2_alpn_offers_only_http1() {
    let origin = TestOrigin::start();
    origin.set("/h", Reply::ok("hello"));
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"], Validity::Current);
    let node = tls_node(&origin, &[(&a, "")], "h2 = false").start();

    let (resp, _, version) = get_tls(&node, &ca, "a.test", "/h", None);
    assert_eq!(resp.status, 200);
    assert_eq!(version, reqwest::Version::HTTP_11, "ALPN h2 is not offered");
    let err = client(&ca, "a.test", node.https_addr(), Some(true))
        .get(node.https_url("a.test", "/h"))
        .send();
    assert!(err.is_err(), "a client that insists on h2 gets no HTTP/2");
}

/// Polls until a new connection for `sni` is served `want`, or panics after 10 s.
fn wait_for_certificate(node: &Node, ca: &TestCa, sni: &str, want: &[u8], what: &str) {
    let start = Instant::now();
    loop {
        if let Ok(resp) = client(ca, sni, node.https_addr(), None)
            .get(node.https_url(sni, "/x"))
            .send()
        {
            if peer_certificate(&resp) == want {
                return;
            }
        }
        if start.elapsed() > Duration::from_secs(10) {
            panic!(
                "{what}: not served after 10 s\n--- log ---\n{}",
                node.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn changed_certificate_files_are_reloaded_and_a_bad_file_keeps_the_previous_certificate() {
    let origin = TestOrigin::start();
    origin.set("/x", Reply::ok("x"));
    let ca = TestCa::new();
    let first = ca.leaf(&["a.test"], Validity::Current);
    let cfg = tls_node(&origin, &[(&first, "")], "reload_check = \"200ms\"");
    let node = cfg.start();
    let (_, served, _) = get_tls(&node, &ca, "a.test", "/x", None);
    assert_eq!(served, first.der);

    // a keep-alive connection opened before the change
    let before = client(&ca, "a.test", node.https_addr(), Some(false));
    assert_eq!(
        peer_certificate(&before.get(node.https_url("a.test", "/x")).send().unwrap()),
        first.der
    );

    let second = ca.leaf(&["a.test", "www.a.test"], Validity::Current);
    second.write(cfg.dir(), "c0");
    wait_for_certificate(&node, &ca, "a.test", &second.der, "the renewed certificate");
    let (_, served, _) = get_tls(&node, &ca, "www.a.test", "/x", None);
    assert_eq!(served, second.der, "its new name is served too");
    wait_metric(
        &node,
        "outpost_tls_reloads_total",
        &[("outcome", "ok")],
        |v| v >= 1.0,
        Duration::from_secs(5),
        "reload counted",
    );
    // the connection opened before keeps working
    let resp = before.get(node.https_url("a.test", "/x")).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    std::fs::write(cfg.dir().join("c0.crt"), "garbage, not PEM\n").unwrap();
    wait_metric(
        &node,
        "outpost_tls_reloads_total",
        &[("outcome", "error")],
        |v| v >= 1.0,
        Duration::from_secs(10),
        "failed reload counted",
    );
    let (resp, served, _) = get_tls(&node, &ca, "a.test", "/x", None);
    assert_eq!(resp.status, 200);
    assert_eq!(
        served, second.der,
        "the previous certificate is still served"
    );
    let log = node.log();
    assert!(
        log.contains("TLS certificates not reloaded") && log.contains("c0.crt"),
        "the error names the file:\n{log}"
    );
    assert!(node.try_wait().is_none(), "the node keeps running");
}

#[test]
fn a_configuration_reload_loads_the_new_certificate_list() {
    let origin = TestOrigin::start();
    origin.set("/x", Reply::ok("x"));
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"], Validity::Current);
    let b = ca.leaf(&["b.test"], Validity::Current);
    let cfg = tls_node(&origin, &[(&a, "")], "reload_check = \"0s\"");
    let node = cfg.start();
    let before = client(&ca, "b.test", node.https_addr(), None)
        .get(node.https_url("b.test", "/x"))
        .send();
    assert!(
        format!("{before:?}").contains("NotValidForName"),
        "b.test is not configured yet: the default a.test is served: {before:?}"
    );

    b.write(cfg.dir(), "c1");
    let text = std::fs::read_to_string(cfg.config_path()).unwrap();
    let with_b = format!("{text}\n[[tls.certificates]]\ncert = \"c1.crt\"\nkey = \"c1.key\"\n");
    std::fs::write(cfg.config_path(), with_b).unwrap();
    let r = node
        .client()
        .post(node.admin_url("/config/reload"))
        .header("Authorization", "Bearer test-token")
        .send()
        .unwrap();
    let answer: serde_json::Value = r.json().unwrap();
    assert_eq!(answer["reloaded"], true, "{answer}");
    assert_eq!(
        answer["restart_required"],
        serde_json::json!([]),
        "{answer}"
    );
    let (_, served, _) = get_tls(&node, &ca, "b.test", "/x", None);
    assert_eq!(
        served, b.der,
        "relative paths resolve against the config file's directory"
    );
}

#[test]
fn bad_certificate_files_are_refused_by_check_and_run_naming_key_and_file() {
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"], Validity::Current);
    let other = ca.leaf(&["a.test"], Validity::Current);
    // what is wrong, how the files are made so, the key path and words the error must name
    type Case<'a> = (&'a str, &'a dyn Fn(&std::path::Path), &'a str, &'a str);
    let cases: [Case; 4] = [
        (
            "missing file",
            &|_| {},
            "tls.certificates[0].cert",
            "c0.crt",
        ),
        (
            "garbage certificate",
            &|dir| {
                a.write(dir, "c0");
                std::fs::write(dir.join("c0.crt"), "not a certificate").unwrap();
            },
            "tls.certificates[0].cert",
            "no certificate",
        ),
        (
            "garbage key",
            &|dir| {
                a.write(dir, "c0");
                std::fs::write(dir.join("c0.key"), "not a key\n").unwrap();
            },
            "tls.certificates[0].key",
            "no private key",
        ),
        (
            "key of another certificate",
            &|dir| {
                a.write(dir, "c0");
                std::fs::write(dir.join("c0.key"), &other.key_pem).unwrap();
            },
            "tls.certificates[0].key",
            "does not match",
        ),
    ];
    for (what, prepare, key, message) in cases {
        let cfg = NodeConfig::new("http://127.0.0.1:9").https().certificate(
            std::path::Path::new("c0.crt"),
            std::path::Path::new("c0.key"),
            "",
        );
        prepare(cfg.dir());
        std::fs::write(cfg.config_path(), cfg.config_text()).unwrap();
        for command in ["check", "run"] {
            let out = std::process::Command::new(outpost_bin())
                .arg(command)
                .arg("--config")
                .arg(cfg.config_path())
                .current_dir("/")
                .stdin(std::process::Stdio::null())
                .output()
                .expect("spawn outpost");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{what}: {command} accepted it");
            assert!(
                err.contains(key) && err.contains(message) && err.contains("c0."),
                "{what}: {command} does not name {key}, the file and {message:?}: {err}"
            );
            assert!(
                err.contains("outpost.toml"),
                "{what}: names the config file: {err}"
            );
        }
    }
}

#[test]
fn an_expired_certificate_is_served_with_a_warning() {
    let origin = TestOrigin::start();
    origin.set("/x", Reply::ok("x"));
    let ca = TestCa::new();
    let old = ca.leaf(&["a.test"], Validity::Expired);
    let node = tls_node(&origin, &[(&old, "")], "").start();
    assert!(
        node.log().contains("TLS certificate has expired"),
        "{}",
        node.log()
    );
    let expiry = metric_sum(
        &node.metrics(),
        "outpost_tls_certificate_expiry_seconds",
        &[("name", "a.test")],
    );
    assert!(expiry < 0.0, "negative once expired: {expiry}");
}

#[test]
fn redirect_https_rules_send_plain_http_to_https_and_serve_tls_requests() {
    let origin = TestOrigin::start();
    origin.set("/p", Reply::ok("p"));
    origin.set("/open", Reply::ok("open"));
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"], Validity::Current);
    let rules = "[[rules]]\nname = \"secure\"\nredirect_https = true\n[rules.match]\npath_prefix = [\"/p\"]\n\n[[rules]]\nname = \"rest\"\n";
    let node = tls_node(&origin, &[(&a, "")], "").rules(rules).start();
    let port = node.https_addr().port();

    let get = request_with(&node, "GET", "/p/x?q=1&r", &[("Host", "A.test:8080")]);
    assert_eq!(get.status, 301);
    assert_eq!(
        get.header("location").as_deref(),
        Some(format!("https://a.test:{port}/p/x?q=1&r").as_str())
    );
    let post = request_with(&node, "POST", "/p", &[("Host", "a.test")]);
    assert_eq!(post.status, 308, "other methods keep theirs");
    assert_eq!(origin.hits("/p"), 0);
    let open = request_with(&node, "GET", "/open", &[("Host", "a.test")]);
    assert_eq!((open.status, open.text().as_str()), (200, "open"));

    let (resp, _, _) = get_tls(&node, &ca, "a.test", "/p", Some(false));
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "p"),
        "served over TLS"
    );
    let (resp, _, _) = get_tls(&node, &ca, "a.test", "/p", Some(true));
    assert_eq!(resp.status, 200, "served over h2");
}

#[test]
fn redirect_https_without_an_https_listener_and_https_without_certificates_are_refused() {
    assert_refused(
        "[[rules]]\nname = \"r\"\nredirect_https = true\n",
        "rules[1].redirect_https",
    );
    assert_refused_text(
        &NodeConfig::new("http://127.0.0.1:9").https().config_text(),
        "an HTTPS listener without certificates",
        "tls.certificates",
    );
}

/// On a fresh HTTP/2 connection: the preface, an empty SETTINGS and `GET https://a.test<path>`
/// on stream 1; whether it was answered 200 (a HEADERS frame starting with `:status: 200`,
/// static table entry 8).
fn h2_get_ok<S: Read + std::io::Write>(tls: &mut S, path: &str) -> bool {
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .expect("preface");
    tls.write_all(&h2_get(1, path.as_bytes())).expect("HEADERS");
    let (kind, payload) = h2_answer(tls, 1);
    kind == 1 && payload.first() == Some(&0x88)
}

#[test]
fn connection_limits_apply_on_the_https_listener() {
    let origin = TestOrigin::start();
    origin.set("/x", Reply::ok("x"));
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"], Validity::Current);
    let node = tls_node(&origin, &[(&a, "")], "")
        .extra("[limits]\nheader_timeout = \"1s\"\nmax_connections = 2\n")
        .start();

    // a client that completes the handshake and then sends nothing is disconnected
    let connect_with = |alpn: &[&[u8]]| raw_tls(&ca, "a.test", node.https_addr(), alpn);
    let connect = || connect_with(&[]);
    let mut idle = connect();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let read = idle.read(&mut buf);
    let waited = start.elapsed();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the idle TLS connection is closed: {read:?}"
    );
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "closed at limits.header_timeout, after {waited:?}"
    );

    // an HTTP/2 connection with no request in flight is closed at the same deadline
    let mut idle_h2 = connect_with(&[b"h2"]);
    assert_eq!(idle_h2.conn.alpn_protocol(), Some(&b"h2"[..]));
    std::io::Write::write_all(
        &mut idle_h2,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    )
    .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    while let Ok(n) = idle_h2.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "idle h2 connection closed at limits.header_timeout, after {waited:?}"
    );

    // an HTTP/2 connection is closed at the deadline after its last response too
    let mut h2 = connect_with(&[b"h2"]);
    assert!(h2_get_ok(&mut h2, "/x"), "the h2 request was answered 200");
    let start = Instant::now();
    while let Ok(n) = h2.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "h2 connection closed at limits.header_timeout after its response, after {waited:?}"
    );

    // two idle TLS connections hold both slots: a new client displaces one of them
    let mut one = connect();
    let mut two = connect();
    std::thread::sleep(Duration::from_millis(200));
    let served = client(&ca, "a.test", node.https_addr(), Some(false))
        .get(node.https_url("a.test", "/x"))
        .send()
        .expect("an idle connection made room for a new client");
    assert_eq!(served.status(), 200);
    let closed = [&mut one, &mut two]
        .into_iter()
        .map(|s| {
            s.sock
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut b = [0u8; 16];
            match s.read(&mut b) {
                Ok(n) => n == 0,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        })
        .filter(|closed| *closed)
        .count();
    assert_eq!(
        closed, 1,
        "one idle connection was closed for the new client"
    );
    drop((one, two));

    // two connections with a request in flight hold both slots: a third gets nothing
    // (each its own path: requests for one key would wait on one another, not the origin)
    let busy: Vec<_> = (0..2)
        .map(|i| {
            origin.set(
                &format!("/slow{i}"),
                Reply::ok("slow").delay(Duration::from_secs(2)),
            );
            let c = client(&ca, "a.test", node.https_addr(), Some(false));
            let url = node.https_url("a.test", &format!("/slow{i}"));
            std::thread::spawn(move || c.get(url).send().map(|r| r.status().as_u16()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let refused = client(&ca, "a.test", node.https_addr(), Some(false))
        .get(node.https_url("a.test", "/x"))
        .send();
    assert!(refused.is_err(), "beyond max_connections, all busy: closed");
    wait_metric(
        &node,
        "outpost_rejected_requests_total",
        &[("reason", "max_connections")],
        |v| v >= 1.0,
        Duration::from_secs(5),
        "refused connection counted",
    );
    for b in busy {
        assert_eq!(b.join().unwrap().expect("busy request"), 200);
    }
}

#[test]
fn past_max_connections_an_idle_http2_connection_makes_room() {
    let origin = TestOrigin::start();
    origin.set("/x", Reply::ok("x"));
    origin.set("/slow", Reply::ok("slow").delay(Duration::from_secs(2)));
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"], Validity::Current);
    let node = tls_node(&origin, &[(&a, "")], "")
        .extra("[limits]\nheader_timeout = \"30s\"\nmax_connections = 2\n")
        .start();
    // an HTTP/2 connection, idle after its response, and an HTTP/1.1 one busy
    let mut h2 = raw_tls(&ca, "a.test", node.https_addr(), &[b"h2"]);
    assert!(h2_get_ok(&mut h2, "/x"), "the h2 request was answered 200");
    let busy = {
        let c = client(&ca, "a.test", node.https_addr(), Some(false));
        let url = node.https_url("a.test", "/slow");
        std::thread::spawn(move || c.get(url).send().map(|r| r.status().as_u16()))
    };
    std::thread::sleep(Duration::from_millis(500));
    let served = client(&ca, "a.test", node.https_addr(), Some(false))
        .get(node.https_url("a.test", "/x"))
        .send()
        .expect("the idle h2 connection made room for a new client");
    assert_eq!(served.status(), 200);
    let mut buf = [0u8; 256];
    let closed = loop {
        match h2.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) => {
                break !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    };
    assert!(closed, "the idle h2 connection was closed");
    assert_eq!(
        busy.join().unwrap().expect("busy request"),
        200,
        "the busy one was not"
    );
    let m = node.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "outpost_idle_connections_closed_total",
            &[("reason", "max_connections")]
        ),
        1.0
    );
}

/// Reads HTTP/2 frames from `tls` until one of `stream` that answers or ends it; returns its
/// type (1 HEADERS, 3 RST_STREAM) and payload, or a connection-level GOAWAY (7).
fn h2_answer(tls: &mut impl Read, stream: u32) -> (u8, Vec<u8>) {
    loop {
        let mut head = [0u8; 9];
        tls.read_exact(&mut head).expect("an HTTP/2 frame");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload).expect("frame payload");
        if (id == stream && matches!(head[3], 1 | 3)) || head[3] == 7 {
            return (head[3], payload);
        }
    }
}

/// An HTTP/2 HEADERS frame (END_STREAM, END_HEADERS) for `GET https://a.test<path>` on `stream`,
/// HPACK literals without Huffman coding: any bytes can go in `path`.
fn h2_get(stream: u32, path: &[u8]) -> Vec<u8> {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https (static table)
    for (name_index, value) in [(4u8, path), (1, b"a.test")] {
        block.push(name_index); // literal without indexing, name from the static table
        block.push(u8::try_from(value.len()).expect("short value"));
        block.extend_from_slice(value);
    }
    let mut frame = u32::try_from(block.len()).expect("len").to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[0x1, 0x5]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

#[test]
fn control_bytes_in_the_target_are_refused_over_tls_and_http2() {
    let origin = TestOrigin::start();
    origin.set("/a", Reply::ok("a"));
    let ca = TestCa::new();
    let leaf = ca.leaf(&["a.test"], Validity::Current);
    let node = tls_node(&origin, &[(&leaf, "")], "").start();
    let bad: Vec<Vec<u8>> = [0x00u8, 0x01, 0x09, 0x1f, 0x7f, b' ']
        .iter()
        .flat_map(|&b| {
            [
                vec![b'/', b'a', b, b'b'],
                vec![b'/', b'a', b'?', b'q', b'=', b],
            ]
        })
        .collect();

    // HTTP/1.1 over TLS: 400, counted, and the connection closed
    for target in &bad {
        let mut tls = raw_tls(&ca, "a.test", node.https_addr(), &[b"http/1.1"]);
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: a.test\r\n\r\n");
        std::io::Write::write_all(&mut tls, &req).expect("send");
        let mut resp = Vec::new();
        let _ = tls.read_to_end(&mut resp);
        let resp = String::from_utf8_lossy(&resp);
        assert_eq!(
            status_of(&resp),
            Some(400),
            "{}: {resp}",
            target.escape_ascii()
        );
        assert!(resp.contains("Connection: close"), "{resp}");
    }
    let malformed = |node: &Node| {
        metric_sum(
            &node.metrics(),
            "outpost_rejected_requests_total",
            &[("reason", "malformed")],
        )
    };
    assert_eq!(malformed(&node), bad.len() as f64);

    // HTTP/2: the h2 library resets each such stream (PROTOCOL_ERROR: a malformed request,
    // RFC 9113 8.1.1) before the node sees it; the connection goes on serving
    let mut h2 = raw_tls(&ca, "a.test", node.https_addr(), &[b"h2"]);
    assert_eq!(h2.conn.alpn_protocol(), Some(&b"h2"[..]));
    std::io::Write::write_all(
        &mut h2,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
    )
    .expect("preface");
    let mut stream = 1;
    for target in &bad {
        std::io::Write::write_all(&mut h2, &h2_get(stream, target)).expect("HEADERS");
        let (kind, payload) = h2_answer(&mut h2, stream);
        assert_eq!(
            (kind, payload.as_slice()),
            (3, &[0u8, 0, 0, 1][..]),
            "{}: RST_STREAM(PROTOCOL_ERROR)",
            target.escape_ascii()
        );
        stream += 2;
    }
    std::io::Write::write_all(&mut h2, &h2_get(stream, b"/a?q=%00")).expect("HEADERS");
    let (kind, _) = h2_answer(&mut h2, stream);
    assert_eq!(kind, 1, "the percent-encoded form is served");
    let seen = origin.requests("/a");
    assert_eq!(
        seen.iter().map(|r| r.uri.as_str()).collect::<Vec<_>>(),
        ["/a?q=%00"],
        "only the well-formed request reached the origin"
    );
}

/// Partial content over HTTP/2: a range miss kept as a part, a range inside it answered from
/// it, and a range partly held spliced with the origin's bytes, all byte-exact.
#[test]
fn ranges_from_parts_over_http2() {
    const LEN: usize = 10_000;
    let origin = TestOrigin::start();
    let body = generated_body(0, LEN);
    origin.set_handler("/p.bin", move |req, _| {
        range_reply(req, &body, "\"h\"", "max-age=600")
    });
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"], Validity::Current);
    let node = tls_node(&origin, &[(&a, "")], "").start();
    let client = client(&ca, "a.test", node.https_addr(), Some(true));
    let range = |r: &str| {
        let resp = client
            .get(node.https_url("a.test", "/p.bin"))
            .header("Range", r)
            .send()
            .expect("h2 range request");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        fetch(resp)
    };
    let r = range("bytes=0-999");
    assert_eq!(r.status, 206);
    assert!(r.body == generated_body(0, 1000));
    let r = range("bytes=100-199");
    assert_hit(&r, "range from parts over h2");
    assert!(r.body == generated_body(100, 200));
    let r = range("bytes=900-1099");
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 900-1099/10000")
    );
    assert!(r.body == generated_body(900, 1100), "spliced over h2");
    assert_eq!(origin.hits("/p.bin"), 2);
}
