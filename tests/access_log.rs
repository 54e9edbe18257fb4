//! The access log: one line per request with the fields an operator needs, request ids passed
//! to the origin and back, sampling, a slow sink that drops (and counts) lines instead of
//! slowing requests, reopening after rotation, and the error log kept apart.
mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

fn lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    wait_until("the access log lines", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        out = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        out.len() >= n
    });
    out
}

fn logged_node(origin: &TestOrigin, more: &str) -> (NodeConfig, std::path::PathBuf) {
    let config = NodeConfig::new(&origin.url());
    let path = config.dir().join("logs/access.log");
    let config = config.extra(&format!(
        "[access_log]\npath = \"{}\"\n{more}",
        path.display()
    ));
    (config, path)
}

#[test]
fn one_json_line_per_request_with_ids_passed_to_the_origin() {
    let origin = TestOrigin::start();
    origin.set(
        "/a",
        Reply::ok("hello").header("Cache-Control", "max-age=60"),
    );
    let (config, path) = logged_node(&origin, "");
    let node = config.start();

    let first = get(&node, "/a?x=1");
    let id = first.header("x-request-id").expect("a request id");
    assert_eq!(id.len(), 16);
    assert_eq!(
        origin.requests("/a")[0].header("x-request-id").as_deref(),
        Some(id.as_str())
    );
    let hit = fetch(
        node.client()
            .get(node.url("/a?x=1"))
            .header("user-agent", "probe/1.0")
            .header("referer", "https://ref.test/")
            .header("x-request-id", "client-chosen-42")
            .send()
            .unwrap(),
    );
    assert_eq!(
        hit.header("x-request-id").as_deref(),
        Some("client-chosen-42")
    );
    // an id that could break a log line is replaced
    let r = fetch(
        node.client()
            .get(node.url("/a?x=1"))
            .header("x-request-id", "bad id \"quoted\"")
            .send()
            .unwrap(),
    );
    assert_ne!(
        r.header("x-request-id").as_deref(),
        Some("bad id \"quoted\"")
    );

    let logged = lines(&path, 3);
    assert_eq!(logged.len(), 3);
    let miss = &logged[0];
    assert_eq!(miss["method"], "GET");
    assert_eq!(miss["uri"], "/a?x=1");
    assert_eq!(miss["host"], "127.0.0.1");
    assert_eq!(miss["status"], 200);
    assert_eq!(miss["bytes"], 5);
    assert_eq!(miss["cache"], "miss");
    assert_eq!(miss["source"], "origin");
    assert_eq!(miss["client"], "127.0.0.1");
    assert_eq!(miss["id"], id.as_str());
    assert_eq!(miss["upstream"], origin.addr().to_string());
    assert!(miss["origin_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    assert!(miss["ms"]
        .as_f64()
        .is_some_and(|ms| ms >= miss["origin_ms"].as_f64().unwrap()));
    assert!(miss["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
    let hit = &logged[1];
    assert_eq!(hit["cache"], "hit");
    assert_eq!(hit["source"], "memory");
    assert_eq!(hit["origin_ms"], serde_json::Value::Null);
    assert_eq!(hit["ua"], "probe/1.0");
    assert_eq!(hit["referer"], "https://ref.test/");
    assert_eq!(hit["id"], "client-chosen-42");

    // the error log (the node's own log) is separate: no access lines in it
    assert!(!node.log().contains("\"uri\""), "{}", node.log_tail(10));
}

#[test]
fn combined_format_and_sampling_keep_errors() {
    let origin = TestOrigin::start();
    origin.set("/ok", Reply::ok("ok").header("Cache-Control", "no-store"));
    origin.set("/fail", Reply::new(503).body("down"));
    let (config, path) = logged_node(&origin, "format = \"combined\"\nsample = 0.25");
    let node = config.start();
    for _ in 0..40 {
        get(&node, "/ok");
    }
    for _ in 0..3 {
        get(&node, "/fail");
    }
    let mut text = String::new();
    wait_until("13 lines", Duration::from_secs(5), || {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines().count() >= 13
    });
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&path).unwrap();
    let all: Vec<&str> = text.lines().collect();
    // a quarter of the 40 successes, every 503
    assert_eq!(
        all.iter()
            .filter(|l| l.contains("\"GET /ok HTTP/1.1\" 200 "))
            .count(),
        10
    );
    assert_eq!(
        all.iter()
            .filter(|l| l.contains("\"GET /fail HTTP/1.1\" 503 "))
            .count(),
        3
    );
    assert!(
        all.iter()
            .all(|l| l.starts_with("127.0.0.1 - - [") && l.contains(" cache=")),
        "{text}"
    );
}

#[test]
fn a_stalled_sink_drops_lines_and_never_slows_requests() {
    let origin = TestOrigin::start();
    origin.set(
        "/x",
        Reply::ok(vec![b'x'; 100]).header("Cache-Control", "max-age=60"),
    );
    let config = NodeConfig::new(&origin.url());
    let fifo = config.dir().join("stalled.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    // a reader that never reads: the pipe fills, the writer blocks
    let fifo2 = fifo.clone();
    let reader = std::thread::spawn(move || {
        let f = std::fs::File::open(fifo2).unwrap();
        std::thread::sleep(Duration::from_secs(30));
        drop(f);
    });
    let node = config
        .extra(&format!(
            "[access_log]\npath = \"{}\"\nbuffer = 16",
            fifo.display()
        ))
        .start();
    let long = "u".repeat(2000);
    for i in 0..300 {
        let r = fetch(
            node.client()
                .get(node.url(&format!("/x?{i}")))
                .header("user-agent", &long)
                .send()
                .unwrap(),
        );
        assert_eq!(r.status, 200);
    }
    let dropped = wait_metric(
        &node,
        "outpost_access_log_dropped_total",
        &[],
        |v| v > 0.0,
        Duration::from_secs(5),
        "dropped lines",
    );
    assert!(dropped >= 200.0, "{dropped}");
    drop(node);
    drop(reader);
}

#[test]
fn the_file_is_reopened_after_rotation_on_reload() {
    let origin = TestOrigin::start();
    origin.set("/r", Reply::ok("r"));
    let (config, path) = logged_node(&origin, "");
    let node = config.start();
    get(&node, "/r");
    lines(&path, 1);
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    assert_eq!(admin_reload(&node), 200);
    get(&node, "/r");
    get(&node, "/r");
    let fresh = lines(&path, 1);
    assert!(!fresh.is_empty());
    assert_eq!(lines(&rotated, 1).len(), 1);
}

#[test]
fn access_log_settings_are_validated() {
    assert_refused("[access_log]\nformat = \"xml\"", "access_log.format");
    assert_refused("[access_log]\nsample = 1.5", "access_log.sample");
    assert_refused("[access_log]\npath = \"\"", "access_log.path");
    assert_refused("[access_log]\nbuffer = 0", "access_log.buffer");
    assert_refused(
        "[access_log]\nrequest_id_header = \"bad header\"",
        "access_log.request_id_header",
    );
}
