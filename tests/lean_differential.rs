//! The lean hit path (src/lean) against the full path: one matrix of requests, sent as raw
//! bytes to a node with `lean_hits = true` and to one with `lean_hits = false`, in the same
//! order; every response must have the same status, the same header fields (as a multiset of
//! name, in the case written, and value; `Age`, `Date` and the request id left out, `ttl=` of Cache-Status
//! masked: the two nodes stored their copies moments apart) and the same body. Afterwards both
//! nodes must have counted the same requests and tier hits, and logged the same lines.
//! Pass-through requests go to `/echo`, whose (never stored) body is the request as the origin
//! received it: what a request handed from the lean loop to the full path carries upstream is
//! compared too. Rate limits: a second pair of nodes with limits of every request.
mod common;

use common::tls::{raw_tls, TestCa, Validity};
use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A response as read from the wire.
#[derive(Debug, PartialEq)]
struct Wire {
    status: u16,
    /// (lowercase name, value), sorted: a multiset.
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Fields whose values differ between two nodes by time or by design (names keep their case:
/// the lean paths write names as Pingora writes them).
fn comparable(name: &str, value: &str) -> Option<(String, String)> {
    let name = name.to_string();
    match name.to_ascii_lowercase().as_str() {
        "age" | "date" | "x-request-id" => None,
        "cache-status" => {
            // `ttl=<seconds>`: the nodes stored their copies moments apart
            let masked = value
                .split(';')
                .map(|p| {
                    if p.trim().starts_with("ttl=") {
                        " ttl=*".to_string()
                    } else {
                        p.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(";");
            Some((name, masked))
        }
        _ => Some((name, value.to_string())),
    }
}

/// Read one response to a request with method `method` from `s`, `pending` holding bytes read
/// past the previous one. `None` if the connection ended first.
fn read_response(
    s: &mut (impl Read + ?Sized),
    pending: &mut Vec<u8>,
    method: &str,
) -> Option<Wire> {
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        fill(s, pending)?;
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).to_string();
    pending.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let status = status_of(lines.next()?)?;
    let mut fields = Vec::new();
    let (mut length, mut chunked, mut has_id) = (None, false, false);
    let mut boundary = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
        if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
            chunked = true;
        }
        if name.eq_ignore_ascii_case("x-request-id") {
            has_id = true;
        }
        if let Some((_, b)) = value.split_once("boundary=") {
            // a multipart boundary is random per response
            boundary = Some(b.to_string());
            fields.push((name.to_ascii_lowercase(), value.replace(b, "*")));
            continue;
        }
        fields.extend(comparable(name, value));
    }
    if has_id {
        fields.push(("x-request-id".into(), "(present)".into()));
    }
    fields.sort();
    let no_body = method == "HEAD" || status == 304 || status == 204;
    let body = if no_body {
        Vec::new()
    } else if chunked {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(s, pending)?;
            };
            let size_text = String::from_utf8_lossy(&pending[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            pending.drain(..line_end + 2);
            while pending.len() < size + 2 {
                fill(s, pending)?;
            }
            body.extend_from_slice(&pending[..size]);
            pending.drain(..size + 2);
            if size == 0 {
                break body;
            }
        }
    } else {
        let length = length.unwrap_or(0);
        while pending.len() < length {
            fill(s, pending)?;
        }
        pending.drain(..length).collect()
    };
    let body = match boundary {
        Some(b) => String::from_utf8_lossy(&body).replace(&b, "*").into_bytes(),
        None => body,
    };
    Some(Wire {
        status,
        fields,
        body,
    })
}

fn fill(s: &mut (impl Read + ?Sized), pending: &mut Vec<u8>) -> Option<()> {
    let mut buf = [0u8; 16384];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            pending.extend_from_slice(&buf[..n]);
            Some(())
        }
    }
}

/// Send `requests` (method, raw bytes) in one write on a new connection (TLS when `tls` is
/// given) and read as many responses as come (a closed connection ends the list).
fn exchange(node: &Node, tls: Option<&TestCa>, requests: &[(&str, String)]) -> Vec<Wire> {
    let bytes: Vec<u8> = requests.iter().flat_map(|(_, r)| r.bytes()).collect();
    let read_all = |s: &mut dyn ReadWrite| {
        s.write_all(&bytes).expect("send");
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for (method, _) in requests {
            match read_response(s, &mut pending, method) {
                Some(w) => out.push(w),
                None => break,
            }
        }
        out
    };
    match tls {
        None => {
            let mut s = TcpStream::connect(node.addr()).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            read_all(&mut s)
        }
        Some(ca) => {
            let mut s = raw_tls(ca, "a.test", node.https_addr(), &[b"http/1.1"]);
            read_all(&mut s)
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The responses of each of `nodes` to `requests` (method, raw bytes with `{host}` and
/// `{HOST}` standing for the node's address, as is and upper-cased), sent on one connection.
fn on_each(nodes: &[&Node], requests: &[(&str, String)]) -> Vec<Vec<Wire>> {
    nodes
        .iter()
        .map(|n| {
            let host = n.addr().to_string();
            let concrete: Vec<(&str, String)> = requests
                .iter()
                .map(|(m, r)| {
                    let r = r
                        .replace("{HOST}", &host.to_uppercase())
                        .replace("{host}", &host);
                    (*m, r)
                })
                .collect();
            exchange(n, None, &concrete)
        })
        .collect()
}

/// A GET-like request for `path` with Host `host` and `extra` field lines.
fn request(method: &str, path: &str, host: &str, extra: &[&str]) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for e in extra {
        r.push_str(e);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

fn origin() -> TestOrigin {
    // one Date for every response (both nodes store the same fields), a second ago: fresh
    let date = common::origin::http_date(std::time::SystemTime::now() - Duration::from_secs(1));
    let date = date.as_str();
    let origin = TestOrigin::start();
    let cached = |body: &str| {
        Reply::ok(body.to_string())
            .header("Cache-Control", "max-age=300")
            .header("Date", date)
            .header("Last-Modified", "Fri, 04 Dec 2026 10:00:00 GMT")
            .header("ETag", "\"v1\"")
            .header("Surrogate-Key", "tag-a")
            .header("X-Powered-By", "origin")
            .conditional()
    };
    for p in [
        "/a",
        "/b",
        "/q",
        "/p%20q",
        "/auth",
        "/purge-me",
        "/pipe-hit",
        "/post-me",
        "/rl/x",
        "/key/y",
    ] {
        origin.set(p, cached(&format!("body of {p}")));
    }
    origin.set(
        "/txt",
        cached(&"compressible text, ".repeat(60)).header("Content-Type", "text/plain"),
    );
    origin.set("/lang", cached("bonjour").header("Vary", "Accept-Language"));
    origin.set("/chunked", cached(&"chunked body ".repeat(30)).chunked());
    origin.set(
        "/untagged",
        Reply::ok("no tags")
            .header("Cache-Control", "max-age=300")
            .header("Date", date),
    );
    origin.set(
        "/short",
        Reply::ok("short-lived")
            .header("Cache-Control", "max-age=1")
            .header("Date", date)
            .header("ETag", "\"s1\"")
            .conditional(),
    );
    origin.set(
        "/swr",
        Reply::ok("stale while revalidate")
            .header("Cache-Control", "max-age=1, stale-while-revalidate=30")
            .header("Date", date),
    );
    origin.set(
        "/404",
        Reply::new(404)
            .body("not here")
            .header("Cache-Control", "max-age=300")
            .header("Date", date),
    );
    origin.set("/form", Reply::ok("posted").header("Date", date));
    // responses never stored: after the first, requests for them are predicted uncacheable
    // (the lean node forwards those on its lean pass path)
    let uncached = |r: Reply| r.header("Cache-Control", "no-store").header("Date", date);
    origin.set("/ns", uncached(Reply::ok("x".repeat(1024))));
    origin.set(
        "/ns-chunked",
        uncached(Reply::ok(payload(150_000)).chunked()),
    );
    origin.set(
        "/ns-close",
        uncached(Reply::ok(payload(100_000)).close_delimited()),
    );
    origin.set("/ns-big", uncached(Reply::ok("").generated(300_000)));
    origin.set("/ns-204", uncached(Reply::new(204)));
    origin.set("/ns-500", uncached(Reply::new(500).body("origin broke")));
    origin.set(
        "/ns-fields",
        uncached(Reply::ok("fields"))
            .header("Cache-Status", "upstream-cache; fwd=miss")
            .header("Via", "1.1 upstream")
            .header("Surrogate-Key", "tag-a")
            .header("X-Powered-By", "origin")
            .header("Keep-Alive", "timeout=5")
            .header("Connection", "X-Hop")
            .header("X-Hop", "1")
            .header("Set-Cookie", "s=1"),
    );
    // under a bypass rule: never stored, whatever the response says
    origin.set(
        "/api/x",
        Reply::ok("api answer")
            .header("Cache-Control", "max-age=300")
            .header("Date", date),
    );
    origin.set(
        "/api/chunked",
        Reply::ok(payload(70_000)).chunked().header("Date", date),
    );
    origin.set(
        "/private",
        Reply::ok("<p>private page</p>".repeat(40))
            .header("Cache-Control", "private")
            .header("Content-Type", "text/html")
            .header("Set-Cookie", "session=abc")
            .header("Date", date),
    );
    // never stored: what the origin received, as the body (fields that name the node's own
    // address or a generated id left out: the two nodes differ there by design)
    let echo_date = date.to_string();
    origin.set_handler("/echo", move |req, _| {
        let mut fields: Vec<String> = req
            .headers
            .iter()
            .filter(|(k, _)| {
                !["host", "x-forwarded-host", "x-request-id"]
                    .contains(&k.to_ascii_lowercase().as_str())
            })
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        fields.sort();
        let body = format!(
            "{} {} {}\n{}\n",
            req.method,
            req.uri,
            req.version,
            fields.join("\n")
        );
        Reply::ok(body)
            .header("Cache-Control", "no-store")
            .header("Date", &echo_date)
    });
    origin
}

/// The paths of `origin()` whose responses are never stored.
const UNCACHED: [&str; 10] = [
    "/api/x",
    "/api/chunked",
    "/ns",
    "/ns-chunked",
    "/ns-close",
    "/ns-big",
    "/ns-204",
    "/ns-500",
    "/ns-fields",
    "/private",
];

fn node(origin: &TestOrigin, lean: bool, ca: &TestCa) -> Node {
    let cfg = NodeConfig::new(&origin.url())
        .https()
        .node(&format!("lean_hits = {lean}"))
        .rules(RULES_BYPASS_API_ELSE_HEURISTIC)
        .extra(
            "[headers.response]\nremove = [\"X-Powered-By\"]\nset = { \"X-Served-By\" = \"{node}\" }\n\n\
             [headers.request]\nremove = [\"X-Drop\"]\nset = { \"X-From\" = \"edge\" }\n\n\
             [access_log]\nrequest_id_header = \"X-Request-Id\"\n\n\
             [purge]\ntag_headers = [\"Surrogate-Key\"]\nstrip_tag_headers = true",
        );
    let leaf = ca.leaf(&["a.test"], Validity::Current);
    let (cert, key) = leaf.write(cfg.dir(), "leaf");
    cfg.certificate(&cert, &key, "default = true").start()
}

/// `POST /purge` with the JSON `body` on `node`'s admin listener.
fn purge(node: &Node, body: &str) {
    let r = node
        .client()
        .post(node.admin_url("/purge"))
        .header("Authorization", "Bearer test-token")
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .expect("POST /purge");
    assert_eq!(r.status().as_u16(), 200, "purge {body}");
}

/// Metric samples both nodes must agree on.
fn counted(node: &Node) -> BTreeMap<String, String> {
    std::thread::sleep(Duration::from_millis(300));
    node.metrics()
        .lines()
        .filter(|l| {
            l.starts_with("outpost_requests_total")
                || l.starts_with("outpost_cache_tier_hits_total")
                || l.starts_with("outpost_cache_tier_misses_total")
                || l.starts_with("outpost_response_bytes_total")
                || l.starts_with("outpost_client_disconnects_total")
                || l.starts_with("outpost_requests_rejected_total")
                || l.starts_with("outpost_rate_limited_total")
        })
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The access log lines of `node`, without the fields that differ by time or id.
fn log_lines(node: &Node) -> Vec<String> {
    node.log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                for k in ["ts", "ms", "origin_ms", "id", "upstream"] {
                    o.remove(k);
                }
            }
            v.to_string()
        })
        .collect()
}

#[test]
fn the_lean_path_answers_exactly_as_the_full_path() {
    let origin = origin();
    let ca = TestCa::new();
    let lean = node(&origin, true, &ca);
    let full = node(&origin, false, &ca);
    let nodes = [&lean, &full];

    // what both nodes store first, in the same order
    let warm: Vec<(&str, &[&str])> = vec![
        ("/a", &[]),
        ("/b", &[]),
        ("/q?x=1&y=2", &[]),
        ("/p%20q", &[]),
        ("/auth", &[]),
        ("/purge-me", &[]),
        ("/post-me", &[]),
        ("/404", &[]),
        ("/untagged", &[]),
        ("/chunked", &[]),
        ("/short", &[]),
        ("/swr", &[]),
        ("/txt", &["Accept-Encoding: gzip"]),
        ("/txt", &["Accept-Encoding: br"]),
        ("/txt", &[]),
        ("/lang", &["Accept-Language: fr"]),
        ("/lang", &["Accept-Language: en"]),
    ];
    for n in nodes {
        let host = n.addr().to_string();
        for (path, extra) in &warm {
            let got = exchange(n, None, &[("GET", request("GET", path, &host, extra))]);
            assert_eq!(got.len(), 1, "warming {path}");
        }
    }
    std::thread::sleep(Duration::from_millis(1500)); // /short and /swr go stale

    // (case, requests as templates: {host} is each node's own address)
    type Case = (&'static str, Vec<(&'static str, String)>);
    let get = |path: &str, extra: &[&str]| ("GET", request("GET", path, "{host}", extra));
    let head = |path: &str| ("HEAD", request("HEAD", path, "{host}", &[]));
    let cases: Vec<Case> = vec![
        ("GET hit", vec![get("/a", &[])]),
        ("HEAD hit", vec![head("/a")]),
        (
            "GET hit with client fields",
            vec![get(
                "/a",
                &["User-Agent: t/1", "Accept: */*", "Referer: http://r/"],
            )],
        ),
        (
            "GET hit keep-alive explicit",
            vec![get("/a", &["Connection: keep-alive"])],
        ),
        (
            "GET hit Connection: close",
            vec![get("/a", &["Connection: close"])],
        ),
        (
            "HTTP/1.0 hit",
            vec![("GET", "GET /a HTTP/1.0\r\nHost: {host}\r\n\r\n".to_string())],
        ),
        (
            "HTTP/1.0 keep-alive hit",
            vec![(
                "GET",
                "GET /a HTTP/1.0\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".to_string(),
            )],
        ),
        (
            "hits in sequence",
            vec![get("/a", &[]), get("/b", &[]), head("/b"), get("/a", &[])],
        ),
        (
            "pipelined hit miss hit",
            vec![get("/a", &[]), get("/pipe-miss", &[]), get("/b", &[])],
        ),
        (
            "query and percent-encoding",
            vec![
                get("/q?x=1&y=2", &[]),
                get("/p%20q", &[]),
                get("/q?y=2&x=1", &[]),
            ],
        ),
        (
            "upper-case host",
            vec![("GET", "GET /a HTTP/1.1\r\nHost: {HOST}\r\n\r\n".to_string())],
        ),
        (
            "chunked-stored hit",
            vec![get("/chunked", &[]), head("/chunked")],
        ),
        ("negative hit", vec![get("/404", &[])]),
        (
            "Vary accept-encoding",
            vec![
                get("/txt", &["Accept-Encoding: gzip"]),
                get("/txt", &["Accept-Encoding: br;q=1, gzip;q=0.5"]),
                get("/txt", &[]),
                get("/txt", &["Accept-Encoding: zstd"]),
            ],
        ),
        (
            "Vary accept-language",
            vec![
                get("/lang", &["Accept-Language: fr"]),
                get("/lang", &["Accept-Language: en"]),
                get("/lang", &["Accept-Language: de"]),
            ],
        ),
        (
            "ranges",
            vec![
                get("/a", &["Range: bytes=0-3"]),
                get("/a", &["Range: bytes=0-1,4-5"]),
                get("/a", &["Range: bytes=900-"]),
            ],
        ),
        (
            "If-Range",
            vec![
                get("/a", &["Range: bytes=0-3", "If-Range: \"v1\""]),
                get("/a", &["Range: bytes=0-3", "If-Range: \"v0\""]),
            ],
        ),
        (
            "conditionals",
            vec![
                get("/a", &["If-None-Match: \"v1\""]),
                get("/a", &["If-None-Match: \"zz\""]),
                get("/a", &["If-Modified-Since: Fri, 04 Dec 2026 10:00:00 GMT"]),
            ],
        ),
        (
            "request directives",
            vec![
                get("/b", &["Cache-Control: max-age=0"]),
                get("/b", &["Pragma: no-cache"]),
                get("/never", &["Cache-Control: only-if-cached"]),
            ],
        ),
        (
            "Authorization",
            vec![get("/auth", &["Authorization: Bearer x"])],
        ),
        ("stale", vec![get("/short", &[]), get("/swr", &[])]),
        (
            "unsafe methods",
            vec![
                (
                    "POST",
                    "POST /post-me HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\nhi"
                        .to_string(),
                ),
                get("/post-me", &[]),
            ],
        ),
        (
            "pass-through: what the origin receives",
            vec![
                get(
                    "/echo",
                    &[
                        "User-Agent: t/1",
                        "X-Forwarded-For: 10.9.9.9",
                        "X-Custom: a",
                        "X-Custom: b",
                        "Accept-Encoding: gzip",
                    ],
                ),
                head("/echo"),
                get(
                    "/echo?q=1",
                    &["Connection: keep-alive", "Referer: http://r/"],
                ),
            ],
        ),
        (
            "pipelined hit, pass, hit",
            vec![get("/a", &[]), get("/echo", &["X-One: 1"]), get("/b", &[])],
        ),
        (
            "pass after a request body",
            vec![
                (
                    "POST",
                    "POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n\r\nabc"
                        .to_string(),
                ),
                get("/echo", &[]),
            ],
        ),
        (
            "OPTIONS and DELETE",
            vec![
                ("OPTIONS", request("OPTIONS", "/a", "{host}", &[])),
                ("DELETE", request("DELETE", "/form", "{host}", &[])),
            ],
        ),
        (
            "absolute-form target",
            vec![(
                "GET",
                "GET http://{host}/a HTTP/1.1\r\nHost: {host}\r\n\r\n".to_string(),
            )],
        ),
        (
            "request id sent",
            vec![get("/a", &["X-Request-Id: abc-123"])],
        ),
        (
            "Via and CDN-Loop from a client",
            vec![
                get("/a", &["Via: 1.1 other"]),
                get("/a", &["CDN-Loop: other"]),
            ],
        ),
        (
            "forwarding fields",
            vec![get(
                "/a",
                &["X-Forwarded-For: 10.0.0.1", "X-Forwarded-Host: evil"],
            )],
        ),
        (
            "missing Host",
            vec![("GET", "GET /a HTTP/1.1\r\n\r\n".to_string())],
        ),
        (
            "bad request line",
            vec![(
                "GET",
                "GET /a\x01b HTTP/1.1\r\nHost: {host}\r\n\r\n".to_string(),
            )],
        ),
        (
            "oversized header",
            vec![(
                "GET",
                format!(
                    "GET /a HTTP/1.1\r\nHost: {{host}}\r\nX-Big: {}\r\n\r\n",
                    "x".repeat(40 * 1024)
                ),
            )],
        ),
    ];
    for (name, requests) in &cases {
        let answers = on_each(&nodes, requests);
        assert!(!answers[0].is_empty(), "{name}: no response");
        assert_eq!(
            answers[0], answers[1],
            "case {name:?}: lean (left) and full (right) differ"
        );
        if name.starts_with("pass-through") {
            // the echo says what the origin saw: forwarding fields settled, both X-Custom lines
            let seen = String::from_utf8_lossy(&answers[0][0].body).to_ascii_lowercase();
            assert!(seen.starts_with("get /echo http/1.1\n"), "{seen}");
            for line in [
                "x-custom: a",
                "x-custom: b",
                "x-forwarded-for: 127.0.0.1",
                "cdn-loop:",
            ] {
                assert!(
                    seen.contains(line),
                    "{line:?} not in what the origin saw: {seen}"
                );
            }
            assert!(
                !seen.contains("10.9.9.9"),
                "a client's X-Forwarded-For passed: {seen}"
            );
        }
    }
    // a purged object, and the same over TLS
    for n in nodes {
        purge(n, &format!(r#"{{"url": "http://{}/purge-me"}}"#, n.addr()));
    }
    for tls in [None, Some(&ca)] {
        let answers: Vec<Vec<Wire>> = nodes
            .iter()
            .map(|n| {
                let host = if tls.is_some() {
                    "a.test".to_string()
                } else {
                    n.addr().to_string()
                };
                let reqs = [
                    ("GET", request("GET", "/purge-me", &host, &[])),
                    ("GET", request("GET", "/a", &host, &[])),
                    ("GET", request("GET", "/a", &host, &[])),
                    (
                        "HEAD",
                        request("HEAD", "/txt", &host, &["Accept-Encoding: gzip"]),
                    ),
                ];
                exchange(n, tls, &reqs)
            })
            .collect();
        assert_eq!(answers[0].len(), 4, "tls {}: responses", tls.is_some());
        assert_eq!(
            answers[0],
            answers[1],
            "purged / over TLS ({}): lean and full differ",
            tls.is_some()
        );
    }

    // a tag purge: a ban pending until the background pass retires it; objects it covers are
    // refetched, others stay hits
    for n in nodes {
        purge(n, r#"{"tags": ["tag-a"]}"#);
    }
    let answers: Vec<Vec<Wire>> = nodes
        .iter()
        .map(|n| {
            let host = n.addr().to_string();
            let reqs = [
                ("GET", request("GET", "/untagged", &host, &[])),
                ("GET", request("GET", "/b", &host, &[])),
                ("GET", request("GET", "/b", &host, &[])),
            ];
            exchange(n, None, &reqs)
        })
        .collect();
    assert_eq!(answers[0].len(), 3);
    assert_eq!(
        answers[0], answers[1],
        "after a tag purge: lean and full differ"
    );

    assert!(
        metric_sum(&lean.metrics(), "outpost_lean_hits_total", &[]) > 20.0,
        "the lean node answered hits on the lean path"
    );
    assert_eq!(
        metric_sum(&full.metrics(), "outpost_lean_hits_total", &[]),
        0.0
    );
    let lines = counted_and_logged_alike(&lean, &full, 61);
    assert!(lines > 60, "{lines} access log lines");
}

#[test]
fn predicted_passes_are_forwarded_exactly_as_by_the_full_path() {
    let origin = origin();
    let ca = TestCa::new();
    let lean = node(&origin, true, &ca);
    let full = node(&origin, false, &ca);
    let nodes = [&lean, &full];
    // a first request for each: the full path on both nodes, which learn they are uncacheable
    for n in nodes {
        let host = n.addr().to_string();
        for path in UNCACHED.iter().chain(&["/echo", "/a"]) {
            let got = exchange(n, None, &[("GET", request("GET", path, &host, &[]))]);
            assert_eq!(got.len(), 1, "first request for {path}");
        }
    }
    let get = |path: &str, extra: &[&str]| ("GET", request("GET", path, "{host}", extra));
    let head = |path: &str| ("HEAD", request("HEAD", path, "{host}", &[]));
    type Case = (&'static str, Vec<(&'static str, String)>);
    let mut cases: Vec<Case> = vec![
        ("GET each", UNCACHED.iter().map(|p| get(p, &[])).collect()),
        ("HEAD each", UNCACHED.iter().map(|p| head(p)).collect()),
        (
            "Connection: close",
            vec![get("/ns", &["Connection: close"])],
        ),
        (
            "HTTP/1.0 keep-alive",
            vec![(
                "GET",
                "GET /ns HTTP/1.0\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".to_string(),
            )],
        ),
        (
            "pipelined passes and hits",
            vec![
                get("/ns", &[]),
                get("/a", &[]),
                get("/ns-chunked", &[]),
                get("/echo", &["X-One: 1"]),
                get("/ns-close", &[]),
                get("/a", &[]),
            ],
        ),
        (
            "what the origin receives",
            vec![get(
                "/echo",
                &[
                    "User-Agent: t/1",
                    "X-Forwarded-For: 10.9.9.9",
                    "X-Forwarded-Host: evil",
                    "Forwarded: for=10.9.9.9",
                    "X-Custom: a",
                    "X-Custom: b",
                    "Referer: http://r/",
                    "X-Request-Id: from-client",
                    "X-Drop: 1",
                    "X-From: client",
                    "Proxy-Authorization: Basic eDp5",
                    "TE: trailers",
                    "Keep-Alive: 300",
                    "Proxy-Connection: keep-alive",
                ],
            )],
        ),
        (
            "negotiated encodings",
            vec![
                get("/private", &["Accept-Encoding: gzip"]),
                get("/private", &["Accept-Encoding: identity"]),
                get("/private", &["Accept-Encoding: br;q=0, gzip;q=0"]),
            ],
        ),
        (
            "a new key, then predicted",
            vec![get("/echo?n=1", &[]), get("/echo?n=1", &[])],
        ),
    ];
    cases.push((
        "over 64 KiB, twice on one connection",
        vec![get("/ns-big", &[]), get("/ns-big", &[])],
    ));
    for (name, requests) in &cases {
        let answers = on_each(&nodes, requests);
        assert_eq!(
            answers[0].len(),
            requests.len(),
            "{name}: every request answered"
        );
        if answers[0] != answers[1] {
            for (l, f) in answers[0].iter().zip(&answers[1]) {
                eprintln!(
                    "LEAN {}\nFULL {}",
                    String::from_utf8_lossy(&l.body),
                    String::from_utf8_lossy(&f.body)
                );
            }
        }
        assert_eq!(
            answers[0], answers[1],
            "case {name:?}: lean (left) and full (right) differ"
        );
        if *name == "what the origin receives" {
            let seen = String::from_utf8_lossy(&answers[0][0].body).to_ascii_lowercase();
            for line in [
                "x-custom: a",
                "x-custom: b",
                "x-forwarded-for: 127.0.0.1",
                "x-forwarded-proto: http",
                "cdn-loop:",
                "via: 1.1 ",
            ] {
                assert!(seen.contains(line), "{line:?} not in: {seen}");
            }
            assert!(seen.contains("x-from: edge"), "{seen}");
            for gone in [
                "10.9.9.9",
                "evil",
                "forwarded: ",
                "x-drop",
                "client",
                "proxy-",
                "te: ",
                "keep-alive",
            ] {
                assert!(!seen.contains(gone), "{gone:?} passed: {seen}");
            }
        }
    }
    // and over TLS (X-Forwarded-Proto: https)
    let answers: Vec<Vec<Wire>> = nodes
        .iter()
        .map(|n| {
            let reqs = [
                ("GET", request("GET", "/echo", "a.test", &[])),
                ("GET", request("GET", "/ns-chunked", "a.test", &[])),
            ];
            exchange(n, Some(&ca), &reqs)
        })
        .collect();
    assert_eq!(answers[0].len(), 2);
    assert_eq!(answers[0], answers[1], "over TLS: lean and full differ");
    let seen = String::from_utf8_lossy(&answers[0][0].body).to_ascii_lowercase();
    assert!(seen.contains("x-forwarded-proto: https"), "{seen}");

    let passes = metric_sum(&lean.metrics(), "outpost_lean_passes_total", &[]);
    assert!(
        passes >= 25.0,
        "the lean node forwarded {passes} passes itself"
    );
    assert_eq!(
        metric_sum(&full.metrics(), "outpost_lean_passes_total", &[]),
        0.0
    );
    let lines = counted_and_logged_alike(&lean, &full, 44);
    assert!(lines >= 44, "{lines} access log lines");
}

#[test]
fn passes_that_fail_are_answered_as_by_the_full_path() {
    let origin = TestOrigin::start();
    let fine = |body: &str| Reply::ok(body.to_string()).header("Cache-Control", "no-store");
    for p in ["/hang", "/slow", "/bad"] {
        origin.set(p, fine(p));
    }
    let ca = TestCa::new();
    let node = |lean: bool| {
        let cfg = NodeConfig::new(&origin.url())
            .node(&format!("lean_hits = {lean}"))
            .origin("read_timeout = \"400ms\"\nretries = 1")
            .rules(RULES_BYPASS_API_ELSE_HEURISTIC)
            .extra("[access_log]\nrequest_id_header = \"X-Request-Id\"");
        let _ = &ca;
        cfg.start()
    };
    let (lean, full) = (node(true), node(false));
    let nodes = [&lean, &full];
    for n in nodes {
        let host = n.addr().to_string();
        for p in ["/hang", "/slow", "/bad"] {
            let got = exchange(n, None, &[("GET", request("GET", p, &host, &[]))]);
            assert_eq!(got[0].status, 200, "{p} at first");
        }
    }
    // the origin hangs up on the request, answers too late, answers garbage
    origin.set("/hang", fine("").hang_up());
    origin.set("/slow", fine("late").delay(Duration::from_millis(900)));
    origin.set("/bad", fine("").header("Content-Length", "x"));
    // under a bypass rule (no first request needed)
    origin.set("/api/hang", fine("").hang_up());
    let failing = [
        ("GET", "/hang"),
        ("HEAD", "/hang"),
        ("GET", "/slow"),
        ("GET", "/bad"),
        ("GET", "/api/hang"),
    ];
    for (method, path) in failing {
        let answers: Vec<Vec<Wire>> = nodes
            .iter()
            .map(|n| {
                let r = request(method, path, &n.addr().to_string(), &[]);
                exchange(n, None, &[(method, r)])
            })
            .collect();
        assert_eq!(answers[0].len(), 1, "{method} {path}: answered");
        assert_eq!(
            answers[0], answers[1],
            "{method} {path}: lean (left) and full (right) differ"
        );
        assert!(
            answers[0][0].status >= 500,
            "{method} {path}: {:?}",
            answers[0][0]
        );
    }
    assert_eq!(
        metric_sum(&lean.metrics(), "outpost_lean_passes_total", &[]),
        5.0
    );
    let errors = |n: &Node| metric_sum(&n.metrics(), "outpost_upstream_errors_total", &[]);
    assert_eq!(
        errors(&lean),
        errors(&full),
        "server failures counted alike"
    );
    counted_and_logged_alike(&lean, &full, 8);
}

/// Assert that `lean` and `full` counted the same metrics and logged the same access log
/// lines (as a multiset: the log is written by a thread of its own, and a background
/// revalidation logs when it ends), waiting for at least `want` of them; the number of lines.
fn counted_and_logged_alike(lean: &Node, full: &Node, want: usize) -> usize {
    let mut counts = [counted(lean), counted(full)];
    for _ in 0..20 {
        if counts[0] == counts[1] {
            break;
        }
        counts = [counted(lean), counted(full)];
    }
    assert_eq!(counts[0], counts[1], "metrics counted alike");
    let logged = || {
        let mut both = [log_lines(lean), log_lines(full)];
        both.iter_mut().for_each(|l| l.sort());
        both
    };
    let mut lines = logged();
    for _ in 0..40 {
        if lines[0] == lines[1] && lines[0].len() >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        lines = logged();
    }
    assert_eq!(lines[0], lines[1], "access log lines alike");
    lines[0].len()
}

/// Limits of every request: 2 a minute with a burst of 1 on /rl/ (two allowed, then refused),
/// and one keyed on a request field on /key/ (one per key; no key: by address).
const LIMITS: &str = r#"
[[rate_limit.rules]]
name = "strict"
limit = "2/min"
burst = 1
[rate_limit.rules.match]
path_prefix = ["/rl/"]

[[rate_limit.rules]]
name = "keyed"
limit = "2/min"
burst = 0
key = "header:X-Api-Key"
[rate_limit.rules.match]
path_prefix = ["/key/"]
"#;

#[test]
fn rate_limited_hits_are_counted_and_refused_as_on_the_full_path() {
    let origin = origin();
    let start = |lean: bool| {
        NodeConfig::new(&origin.url())
            .node(&format!("lean_hits = {lean}"))
            .extra(&format!(
                "[access_log]\nrequest_id_header = \"X-Request-Id\"\n{LIMITS}"
            ))
            .start()
    };
    let lean = start(true);
    let full = start(false);
    let answers: Vec<Vec<Wire>> = [&lean, &full]
        .iter()
        .map(|n| {
            let host = n.addr().to_string();
            let reqs = [
                // a miss and a hit allowed, then refused (GET and HEAD)
                ("GET", request("GET", "/rl/x", &host, &[])),
                ("GET", request("GET", "/rl/x", &host, &["User-Agent: t/1"])),
                ("GET", request("GET", "/rl/x", &host, &[])),
                ("HEAD", request("HEAD", "/rl/x", &host, &[])),
                // not limited: no fields
                ("GET", request("GET", "/b", &host, &[])),
                ("GET", request("GET", "/b", &host, &[])),
                // keyed: k1 allowed once, k2 and no key counted apart
                ("GET", request("GET", "/key/y", &host, &["X-Api-Key: k1"])),
                ("GET", request("GET", "/key/y", &host, &["X-Api-Key: k1"])),
                ("GET", request("GET", "/key/y", &host, &["X-Api-Key: k2"])),
                ("GET", request("GET", "/key/y", &host, &[])),
                (
                    "GET",
                    request("GET", "/rl/x", &host, &["Connection: close"]),
                ),
            ];
            exchange(n, None, &reqs)
        })
        .collect();
    assert_eq!(answers[0].len(), 11, "every request answered");
    let statuses: Vec<u16> = answers[0].iter().map(|w| w.status).collect();
    assert_eq!(
        statuses,
        [200, 200, 429, 429, 200, 200, 200, 429, 200, 200, 429]
    );
    assert_eq!(answers[0], answers[1], "lean and full differ");
    assert!(
        metric_sum(&lean.metrics(), "outpost_lean_hits_total", &[]) >= 3.0,
        "allowed hits were lean"
    );
    assert_eq!(
        counted_and_logged_alike(&lean, &full, 11),
        11,
        "access log lines"
    );
}

/// Disk hits: a pair of nodes (lean and full) stores objects of several sizes, is restarted
/// (memory empty, the disk tier kept), and answers the same requests from disk (the lean node
/// on the lean path, promoting into memory as the full path's lookup does), then again (from
/// memory where promoted); with `tiers = "disk"` too. A large object streamed from disk, a
/// varying one and HEAD are in the matrix. Both must count and log the same (source `disk`).
#[test]
fn disk_hits_are_answered_exactly_as_by_the_full_path() {
    let date = common::origin::http_date(std::time::SystemTime::now() - Duration::from_secs(1));
    let origin = TestOrigin::start();
    let cached = |body: Vec<u8>| {
        Reply::ok(body)
            .header("Cache-Control", "max-age=300")
            .header("Date", &date)
            .header("ETag", "\"d1\"")
            .header("X-Powered-By", "origin")
    };
    let paths: [(&str, Vec<u8>); 4] = [
        ("/small", b"a small object".to_vec()),
        // read in two (its first bytes, then the body into a buffer of its own)
        ("/mid", payload(20 * 1024)),
        ("/big", payload(100 * 1024)),
        // block-hashed and larger than the memory tier's objects: streamed on the full path
        ("/large", payload(3 << 20)),
    ];
    for (p, body) in &paths {
        origin.set(p, cached(body.clone()));
    }
    origin.set(
        "/lang",
        cached(b"bonjour".to_vec()).header("Vary", "Accept-Language"),
    );
    let fr = "Accept-Language: fr";
    let de = "Accept-Language: de";
    for tiers in ["memory+disk", "disk"] {
        let fetched = origin.hits("/big");
        let cfgs = [true, false].map(|lean| {
            NodeConfig::new(&origin.url())
                .node(&format!("lean_hits = {lean}"))
                .cache(&format!("tiers = \"{tiers}\""))
                .extra("[access_log]\nrequest_id_header = \"X-Request-Id\"")
        });
        let nodes = cfgs.each_ref().map(|c| c.start());
        let warm: Vec<(&str, String)> = paths
            .iter()
            .map(|(p, _)| ("GET", request("GET", p, "{host}", &[])))
            .chain([
                ("GET", request("GET", "/lang", "{host}", &[fr])),
                ("GET", request("GET", "/lang", "{host}", &[de])),
            ])
            .collect();
        let warmed = on_each(&nodes.each_ref(), &warm);
        assert_eq!(warmed[0].len(), warm.len(), "{tiers}: warm-up responses");
        // five objects and the variant
        for n in &nodes {
            wait_disk_objects(n, 6, Duration::from_secs(20), "objects written to disk");
        }
        for n in &nodes {
            n.stop();
        }
        drop(nodes);
        let nodes = cfgs.each_ref().map(|c| c.start());
        let [lean, full] = &nodes;
        let mut reqs = Vec::new();
        for round in 0..2 {
            for (p, _) in &paths {
                reqs.push(("GET", request("GET", p, "{host}", &[])));
                if round == 0 {
                    reqs.push(("HEAD", request("HEAD", p, "{host}", &[])));
                }
            }
            reqs.push(("GET", request("GET", "/lang", "{host}", &[de])));
            reqs.push(("GET", request("GET", "/lang", "{host}", &[fr])));
        }
        let answers = on_each(&[lean, full], &reqs);
        assert_eq!(answers[0].len(), reqs.len(), "{tiers}: responses");
        assert_eq!(
            answers[0], answers[1],
            "{tiers}: disk hits, lean and full differ"
        );
        for (w, (m, r)) in answers[0].iter().zip(&reqs) {
            assert_eq!(w.status, 200, "{tiers}: {m} {r}");
            let hit = w
                .fields
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case("cache-status") && v.contains("hit"));
            assert!(hit, "{tiers}: {m} {r} not a hit: {:?}", w.fields);
        }
        assert!(answers[0]
            .iter()
            .zip(&reqs)
            .any(|(w, (m, r))| *m == "GET" && r.starts_with("GET /big ") && w.body == paths[2].1));
        assert_eq!(
            origin.hits("/big"),
            fetched + 2,
            "{tiers}: /big fetched once per node"
        );
        for n in [lean, full] {
            let m = n.metrics();
            let disk = metric_sum(&m, "outpost_cache_tier_hits_total", &[("tier", "disk")]);
            // each path's first GET at least (the memory tier keeps what it promoted)
            assert!(disk >= 4.0, "{tiers}: {disk} disk hits");
        }
        let promoted = |n: &Node| metric_sum(&n.metrics(), "outpost_cache_promotions_total", &[]);
        assert_eq!(promoted(lean), promoted(full), "{tiers}: promotions");
        let lean_hits = metric_sum(&lean.metrics(), "outpost_lean_hits_total", &[]);
        assert!(lean_hits >= 9.0, "{tiers}: {lean_hits} lean hits");
        let lines = counted_and_logged_alike(lean, full, reqs.len());
        assert!(lines >= reqs.len(), "{tiers}: {lines} access log lines");
        let from_disk = log_lines(lean)
            .iter()
            .filter(|l| l.contains(r#""source":"disk""#))
            .count();
        assert!(
            from_disk >= 4,
            "{tiers}: {from_disk} lines with source disk"
        );
        for n in &nodes {
            n.stop();
        }
    }
}
