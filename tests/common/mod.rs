//! Black-box test harness: a scriptable origin and the real `outpost` binary.
#![allow(dead_code)]
#![allow(unused_imports)]

pub mod asserts;
pub mod background;
pub mod disk;
pub mod link;
pub mod nats;
pub mod node;
pub mod origin;
pub mod tls;
pub mod wire;

pub use asserts::{assert_hit, assert_stored_miss};
pub use disk::{files_under, stop_ok, wait_disk_objects};
pub use node::{
    assert_refused, assert_refused_text, free_port, outpost_bin, run_check, Node, NodeConfig,
};
pub use origin::{
    generated_body, http_date, parse_http_date, range_reply, Recorded, Reply, TestOrigin,
};
pub use tls::{Leaf, TestCa, Validity};
pub use wire::{read_response, Response};

/// Sets a load loop's stop flag when dropped. A thread scope waits for its threads, so an
/// assertion failing in the scope before the flag is set would hang the test instead of
/// failing it: hold one of these in the scope.
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The `Cache-Status` header of a response ("" if absent).
pub fn cache_status(resp: &reqwest::blocking::Response) -> String {
    resp.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// A response read to the end: status, headers, body.
pub struct Fetched {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Fetched {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_string())
    }

    pub fn cache_status(&self) -> String {
        self.header("cache-status").unwrap_or_default()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// Reads a whole response, passing transport errors (sending or reading the body) back.
pub fn try_fetch(resp: reqwest::Result<reqwest::blocking::Response>) -> reqwest::Result<Fetched> {
    resp.and_then(|r| {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        r.bytes().map(|b| Fetched {
            status,
            headers,
            body: b.to_vec(),
        })
    })
}

/// Rules: bypass everything under `/api/`, cache the rest with heuristic freshness.
pub const RULES_BYPASS_API_ELSE_HEURISTIC: &str = r#"
[[rules]]
name = "api"
action = "bypass"
[rules.match]
path_prefix = ["/api/"]

[[rules]]
name = "default"
action = "cache"
[rules.ttl]
heuristic = true
"#;

/// Reads a whole response; panics on transport errors.
pub fn fetch(resp: reqwest::blocking::Response) -> Fetched {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().expect("read body").to_vec();
    Fetched {
        status,
        headers,
        body,
    }
}

/// GET `path` on `node` and read it to the end.
pub fn get(node: &Node, path: &str) -> Fetched {
    fetch(node.get(path))
}

/// GET `path` on `node` with extra request headers, read to the end.
pub fn get_with(node: &Node, path: &str, headers: &[(&str, &str)]) -> Fetched {
    let mut rb = node.client().get(node.url(path));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    fetch(
        rb.send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n--- log ---\n{}", node.log())),
    )
}

/// The `Authorization` value of the harness's admin token.
pub const ADMIN_AUTH: &str = "Bearer test-token";

/// POST `body` to the admin's /purge; (status, JSON answer).
pub fn purge(node: &Node, body: &str) -> (u16, serde_json::Value) {
    let r = node
        .client()
        .post(node.admin_url("/purge"))
        .header("Authorization", ADMIN_AUTH)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .expect("POST /purge");
    let status = r.status().as_u16();
    let text = r.text().expect("answer");
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, json)
}

/// POST `body` to the admin's /purge, which must take it (200) and record it durably.
pub fn purged_ok(node: &Node, body: &str) -> serde_json::Value {
    let (status, answer) = purge(node, body);
    assert_eq!(status, 200, "{body}: {answer}");
    assert_eq!(answer["durable"], true, "{answer}");
    answer
}

/// Splits a Prometheus sample line into (name, labels, value).
fn parse_sample(line: &str) -> Option<(&str, &str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, value) = match line.find('}') {
        Some(i) => (&line[..=i], line[i + 1..].trim()),
        None => line.split_once(char::is_whitespace)?,
    };
    let value: f64 = value.split_whitespace().next()?.parse().ok()?;
    match series.find('{') {
        Some(i) => Some((&series[..i], &series[i..], value)),
        None => Some((series, "", value)),
    }
}

/// Sum of the samples of metric `name` whose labels include every `k="v"` of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(parse_sample)
        .filter(|(n, l, _)| {
            *n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// Whether the exposition has at least one sample of metric `name`.
pub fn metric_present(text: &str, name: &str) -> bool {
    text.lines()
        .filter_map(parse_sample)
        .any(|(n, _, _)| n == name)
}

/// Encodes `body` with chunked transfer coding, `chunk` bytes per chunk, with the final chunk.
pub fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A deterministic payload of `n` bytes (printable, position-dependent).
pub fn payload(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b'a' + ((i * 7 + i / 26) % 26) as u8)
        .collect()
}

/// The `;`-separated parameters of a `Cache-Status` value, trimmed:
/// `outpost; fwd=uri-miss; stored` -> `["outpost", "fwd=uri-miss", "stored"]`.
pub fn cs_params(cs: &str) -> Vec<String> {
    cs.split(';').map(|p| p.trim().to_string()).collect()
}

/// Whether a `Cache-Status` value has the bare parameter `token` (e.g. `hit`, `stored`).
pub fn cs_has(cs: &str, token: &str) -> bool {
    cs_params(cs).iter().skip(1).any(|p| p == token)
}

/// The value of parameter `key` (e.g. `fwd`, `fwd-status`, `ttl`) of a `Cache-Status` value.
pub fn cs_get(cs: &str, key: &str) -> Option<String> {
    cs_params(cs).iter().skip(1).find_map(|p| {
        p.strip_prefix(&format!("{key}="))
            .map(|v| v.trim_matches('"').to_string())
    })
}

/// Sends `method` `path` on `node` with extra request headers and reads the response to the end.
pub fn request_with(node: &Node, method: &str, path: &str, headers: &[(&str, &str)]) -> Fetched {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("valid method");
    let mut rb = node.client().request(m, node.url(path));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    fetch(
        rb.send()
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n--- log ---\n{}", node.log())),
    )
}

/// The `ttl` parameter of a `Cache-Status` value as a number.
pub fn cs_ttl(cs: &str) -> Option<i64> {
    cs_get(cs, "ttl").and_then(|t| t.parse().ok())
}

impl Fetched {
    /// The `Age` header as a number of seconds.
    pub fn age(&self) -> Option<u64> {
        self.header("age").and_then(|a| a.trim().parse().ok())
    }
}

/// Polls `node`'s /metrics (every 100 ms) until the sum of metric `name` with `labels` satisfies
/// `pred`, and returns that value. Panics after `limit` with `what`, the last value and the
/// node's log tail.
pub fn wait_metric(
    node: &Node,
    name: &str,
    labels: &[(&str, &str)],
    pred: impl Fn(f64) -> bool,
    limit: std::time::Duration,
    what: &str,
) -> f64 {
    let start = std::time::Instant::now();
    loop {
        let v = metric_sum(&node.metrics(), name, labels);
        if pred(v) {
            return v;
        }
        if start.elapsed() > limit {
            panic!(
                "{what}: {name}{labels:?} is {v} after {limit:?}\n--- log (tail) ---\n{}",
                node.log_tail(60)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Sends `bytes` on a new connection to `node` and returns what comes back up to the end of
/// the first response head (or until the connection closes or 3 s pass).
pub fn raw(node: &Node, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(node.addr()).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if out.windows(4).any(|w| w == b"\r\n\r\n") && out.len() > 12 {
            // one response head is enough for these checks
            break;
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

/// The status code of a raw response.
pub fn status_of(resp: &str) -> Option<u16> {
    resp.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

/// Poll `f` every 25 ms until it holds; panic naming `what` after `limit`.
pub fn wait_until(what: &str, limit: std::time::Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// The node's `GET /status` (admin token of the harness).
pub fn admin_status(node: &Node) -> serde_json::Value {
    node.client()
        .get(node.admin_url("/status"))
        .bearer_auth("test-token")
        .send()
        .expect("GET /status")
        .json()
        .expect("status JSON")
}

/// `POST /config/reload` on the node (harness token); the answer's status.
pub fn admin_reload(node: &Node) -> u16 {
    node.client()
        .post(node.admin_url("/config/reload"))
        .bearer_auth("test-token")
        .send()
        .expect("POST /config/reload")
        .status()
        .as_u16()
}

/// Assert that the node's log has one warning about damaged lines skipped in the journal
/// `file` (`bans.jsonl`, `cluster-outbox.jsonl`), counting `skipped` of them; none at all if
/// `skipped` is 0.
pub fn assert_journal_damage(node: &Node, file: &std::path::Path, skipped: usize, what: &str) {
    let log = node.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("skipped damaged lines"))
        .collect();
    if skipped == 0 {
        assert!(warnings.is_empty(), "{what}: {warnings:?}");
        return;
    }
    assert_eq!(warnings.len(), 1, "{what}: {warnings:?}");
    assert!(
        warnings[0].contains(&file.display().to_string())
            && warnings[0].contains(&format!("skipped={skipped}")),
        "{what}: {}",
        warnings[0]
    );
}
