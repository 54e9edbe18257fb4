//! The test origin works against a plain HTTP client (no outpost involved).
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};

use common::*;

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[test]
fn origin_serves_routes_counts_and_records() {
    let origin = TestOrigin::start();
    origin.set(
        "/a",
        Reply::ok("hello")
            .header("Cache-Control", "max-age=60")
            .header("X-Multi", "1")
            .header("X-Multi", "2"),
    );
    origin.set("/counted", Reply::ok("body").body_counter());
    origin.set_handler("/echo", |req, n| {
        Reply::ok(format!("{} {} {}", req.method, req.uri, n))
            .header("X-Seen", &req.header("x-test").unwrap_or_default())
    });
    let c = client();

    let r = c.get(format!("{}/a?x=1", origin.url())).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["cache-control"], "max-age=60");
    assert_eq!(r.headers().get_all("x-multi").iter().count(), 2);
    assert!(r.headers().get("date").is_some());
    assert_eq!(r.text().unwrap(), "hello");

    assert_eq!(
        c.get(format!("{}/counted", origin.url()))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "body#1"
    );
    assert_eq!(
        c.get(format!("{}/counted?q", origin.url()))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "body#2"
    );

    let r = c
        .get(format!("{}/echo?k=v", origin.url()))
        .header("X-Test", "yes")
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-seen"], "yes");
    assert_eq!(r.text().unwrap(), "GET /echo?k=v 1");

    let r = c.get(format!("{}/missing", origin.url())).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.headers().get("cache-control").is_none());
    assert_eq!(r.text().unwrap(), "not found");

    // HEAD: headers only, Content-Length of the GET body
    let r = c.head(format!("{}/a", origin.url())).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-length"], "5");

    assert_eq!(origin.hits("/a"), 2);
    assert_eq!(origin.hits("/counted"), 2);
    assert_eq!(origin.hits("/echo"), 1);
    assert_eq!(origin.hits("/missing"), 1);
    assert_eq!(origin.total_hits(), 6);
    let reqs = origin.requests("/echo");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].uri, "/echo?k=v");
    assert_eq!(reqs[0].header("X-TEST").as_deref(), Some("yes"));
    assert_eq!(origin.requests("/a")[1].method, "HEAD");
}

#[test]
fn origin_conditional_delay_and_truncation() {
    let origin = TestOrigin::start();
    let lm = http_date(SystemTime::now() - Duration::from_secs(3600));
    origin.set(
        "/cond",
        Reply::ok("full body")
            .header("ETag", "\"v1\"")
            .header("Last-Modified", &lm)
            .header("Cache-Control", "max-age=1")
            .conditional(),
    );
    origin.set("/slow", Reply::ok("slow").delay(Duration::from_millis(300)));
    origin.set("/trunc", Reply::ok(vec![b'x'; 10_000]).truncate_after(100));
    let c = client();

    let r = c
        .get(format!("{}/cond", origin.url()))
        .header("If-None-Match", "\"v1\"")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 304);
    assert_eq!(r.headers()["etag"], "\"v1\"");
    assert_eq!(r.headers()["cache-control"], "max-age=1");
    assert_eq!(r.text().unwrap(), "");

    let r = c
        .get(format!("{}/cond", origin.url()))
        .header("If-None-Match", "\"other\"")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().unwrap(), "full body");

    let r = c
        .get(format!("{}/cond", origin.url()))
        .header("If-Modified-Since", &http_date(SystemTime::now()))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 304);
    let r = c
        .get(format!("{}/cond", origin.url()))
        .header(
            "If-Modified-Since",
            &http_date(SystemTime::now() - Duration::from_secs(7200)),
        )
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let t = Instant::now();
    assert_eq!(
        c.get(format!("{}/slow", origin.url()))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "slow"
    );
    assert!(t.elapsed() >= Duration::from_millis(300));

    // truncated: the client must not see a complete body
    let res = c
        .get(format!("{}/trunc", origin.url()))
        .send()
        .and_then(|r| r.bytes());
    if let Ok(b) = res {
        assert!(b.len() < 10_000, "truncated body read as complete");
    }

    // raw check: announced length, then fewer bytes, then EOF/reset
    let mut s = TcpStream::connect(origin.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /trunc HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("Content-Length: 10000"), "{text}");
    assert!(got.len() < 10_000);
}

#[test]
fn http_date_roundtrip() {
    let d = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
    assert_eq!(http_date(d), "Sun, 06 Nov 1994 08:49:37 GMT");
    let now = SystemTime::now();
    let back = parse_http_date(&http_date(now)).unwrap();
    assert!(now.duration_since(back).unwrap() < Duration::from_secs(1));
}

#[test]
fn node_config_text_has_required_sections() {
    let origin = TestOrigin::start();
    let cfg = NodeConfig::new(&origin.url())
        .cache("memory_size = \"1MiB\"\nmax_object_size = \"1KiB\"")
        .origin("read_timeout = \"500ms\"");
    let text = cfg.config_text();
    assert!(text.contains("[node]"));
    assert!(text.contains("threads = 2"));
    assert!(text.contains(&format!("url = \"{}\"", origin.url())));
    assert!(text.contains("memory_size = \"1MiB\""));
    assert!(!text.contains("memory_size = \"64MiB\""));
    assert!(text.contains("read_timeout = \"500ms\""));
    assert!(!text.contains("read_timeout = \"3s\""));
    assert!(text.contains("name = \"default\""));
    assert!(outpost_bin().exists());
}

#[test]
fn client_host_header_override_reaches_server() {
    let origin = TestOrigin::start();
    origin.set("/h", Reply::ok("h"));
    client()
        .get(format!("{}/h", origin.url()))
        .header("Host", "Sub.Example.Test:8080")
        .send()
        .unwrap();
    assert_eq!(
        origin.requests("/h")[0].header("host").as_deref(),
        Some("Sub.Example.Test:8080")
    );
}

#[test]
fn metric_parsing() {
    let text = "# HELP x y\n# TYPE a counter\na{cache_status=\"hit\",rule=\"r\"} 3\na{cache_status=\"miss\"} 2\nb 1.5\nh_bucket{le=\"+Inf\"} 4\n";
    assert_eq!(metric_sum(text, "a", &[]), 5.0);
    assert_eq!(metric_sum(text, "a", &[("cache_status", "hit")]), 3.0);
    assert_eq!(metric_sum(text, "b", &[]), 1.5);
    assert!(metric_present(text, "h_bucket"));
    assert!(!metric_present(text, "h"));
}

#[test]
fn cache_status_parsing() {
    let cs = "outpost; fwd=uri-miss; fwd-status=200; detail=no-store";
    assert_eq!(cs_get(cs, "fwd").as_deref(), Some("uri-miss"));
    assert_eq!(cs_get(cs, "fwd-status").as_deref(), Some("200"));
    assert!(!cs_has(cs, "stored"));
    assert!(!cs_has(cs, "hit"));
    let cs = "outpost; hit; ttl=57; collapsed";
    assert!(cs_has(cs, "hit"));
    assert_eq!(cs_get(cs, "ttl").as_deref(), Some("57"));
    assert_eq!(cs_get(cs, "fwd"), None);
}

#[test]
fn origin_chunked_reply() {
    let origin = TestOrigin::start();
    let body = payload(4000);
    origin.set(
        "/c",
        Reply::ok(chunked(&body, 1000)).header("Transfer-Encoding", "chunked"),
    );
    let r = client().get(format!("{}/c", origin.url())).send().unwrap();
    assert!(r.headers().get("content-length").is_none());
    assert_eq!(r.bytes().unwrap().to_vec(), body);
}

#[test]
fn tls_origin_serves_http1_and_http2_by_alpn_and_records_the_version() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["origin.test", "127.0.0.1"], Validity::Current);
    let origin = TestOrigin::start_tls(&leaf.cert_pem, &leaf.key_pem, true);
    origin.set(
        "/a",
        Reply::ok("hello").header("Cache-Control", "max-age=60"),
    );
    origin.set(
        "/c",
        Reply::ok("n")
            .body_counter()
            .conditional()
            .header("ETag", "\"v\""),
    );
    assert!(origin.https_url().starts_with("https://127.0.0.1:"));

    for (h2, version) in [(Some(false), "HTTP/1.1"), (None, "HTTP/2.0")] {
        let c = common::tls::client(&ca, "origin.test", origin.addr(), h2);
        let url = format!("https://origin.test:{}/a", origin.addr().port());
        let r = c.get(&url).send().expect("GET over TLS");
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["cache-control"], "max-age=60");
        assert_eq!(
            common::tls::peer_certificate(&r),
            leaf.der,
            "the leaf is served"
        );
        assert_eq!(r.text().unwrap(), "hello");
        let last = origin.requests("/a").pop().expect("recorded");
        assert_eq!(last.version, version);
        assert_eq!(last.header("host").as_deref(), Some(&url[8..url.len() - 2]));

        let url = format!("https://origin.test:{}/c", origin.addr().port());
        let r = c.get(&url).header("If-None-Match", "\"v\"").send().unwrap();
        assert_eq!(
            r.status().as_u16(),
            304,
            "conditional replies over {version}"
        );
    }
    assert_eq!(origin.hits("/a"), 2);

    // an expired certificate, for tests of origin certificate checks, is refused by clients
    let old = ca.leaf(&["origin.test"], Validity::Expired);
    let expired = TestOrigin::start_tls(&old.cert_pem, &old.key_pem, false);
    let err = common::tls::client(&ca, "origin.test", expired.addr(), None)
        .get(format!("https://origin.test:{}/a", expired.addr().port()))
        .send()
        .expect_err("expired certificate");
    assert!(format!("{err:?}").contains("Expired"), "{err:?}");
}
