//! OpenTelemetry tracing: with `[tracing]` on, a request's W3C `traceparent` is continued, the
//! origin gets the fetch span's `traceparent`, and the server and fetch spans (with the cache
//! status) reach an OTLP/HTTP collector; off (the default), `traceparent` passes untouched and
//! nothing is exported.
mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fake OTLP/HTTP collector: every POST body, answered 200.
struct Collector {
    addr: std::net::SocketAddr,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b = bodies.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    loop {
                        let mut len = 0usize;
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            if h == "\r\n" {
                                break;
                            }
                            if let Some((n, v)) = h.split_once(':') {
                                if n.eq_ignore_ascii_case("content-length") {
                                    len = v.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                        let mut body = vec![0; len];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        if let Ok(json) = serde_json::from_slice(&body) {
                            b.lock().unwrap().push(json);
                        }
                        let mut w = &conn;
                        let _ = w.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                        );
                    }
                });
            }
        });
        Collector { addr, bodies }
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for body in self.bodies.lock().unwrap().iter() {
            for rs in body["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    out.extend(ss["spans"].as_array().into_iter().flatten().cloned());
                }
            }
        }
        out
    }
}

fn attribute(span: &serde_json::Value, key: &str) -> serde_json::Value {
    span["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["key"] == key)
        .map(|a| a["value"].clone())
        .unwrap_or_default()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

#[test]
fn spans_reach_the_collector_and_traceparent_the_origin() {
    let collector = Collector::start();
    let origin = TestOrigin::start();
    origin.set(
        "/t",
        Reply::ok("traced").header("Cache-Control", "max-age=60"),
    );
    let node = NodeConfig::new(&origin.url())
        .node("name = \"edge-t\"")
        .extra(&format!(
            "[tracing]\nenabled = true\nprotocol = \"http/json\"\nendpoint = \"http://{}/v1/traces\"",
            collector.addr
        ))
        .start();
    let traceparent = format!("00-{TRACE}-{CALLER}-01");
    for _ in 0..2 {
        let r = fetch(
            node.client()
                .get(node.url("/t"))
                .header("traceparent", &traceparent)
                .send()
                .unwrap(),
        );
        assert_eq!(r.status, 200);
    }
    // the origin saw this trace, with the node's fetch span as parent
    let sent = origin.requests("/t")[0]
        .header("traceparent")
        .expect("traceparent at the origin");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE, "01"));
    assert_ne!(parts[2], CALLER);
    let fetch_span = parts[2].to_string();

    let mut spans = Vec::new();
    wait_until(
        "three spans at the collector",
        Duration::from_secs(15),
        || {
            spans = collector.spans();
            spans.len() >= 3
        },
    );
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert!(spans.iter().all(|s| s["traceId"] == TRACE));
    let server: Vec<&serde_json::Value> = spans.iter().filter(|s| s["kind"] == 2).collect();
    let client: Vec<&serde_json::Value> = spans.iter().filter(|s| s["kind"] == 3).collect();
    assert_eq!((server.len(), client.len()), (2, 1), "{spans:#?}");
    // both server spans continue the caller's span; the miss has the fetch span as child
    assert!(server.iter().all(|s| s["parentSpanId"] == CALLER));
    let fetch = client[0];
    assert_eq!(fetch["spanId"], fetch_span);
    let miss = server
        .iter()
        .find(|s| s["spanId"] == fetch["parentSpanId"])
        .expect("the fetch span's parent is a server span");
    assert_eq!(
        attribute(miss, "outpost.cache_status")["stringValue"],
        "miss"
    );
    assert_eq!(attribute(fetch, "outpost.tier")["stringValue"], "origin");
    let hit = server
        .iter()
        .find(|s| s["spanId"] != miss["spanId"])
        .unwrap();
    assert_eq!(attribute(hit, "outpost.cache_status")["stringValue"], "hit");
    assert_eq!(
        attribute(hit, "http.response.status_code")["intValue"],
        "200"
    );

    // a request without traceparent starts a trace of its own, propagated too
    get(&node, "/new");
    let sent = origin.requests("/new")[0]
        .header("traceparent")
        .expect("traceparent");
    assert!(!sent.contains(TRACE));
}

#[test]
fn off_by_default_traceparent_passes_untouched() {
    let origin = TestOrigin::start();
    origin.set("/t", Reply::ok("x"));
    let node = NodeConfig::new(&origin.url()).start();
    let traceparent = format!("00-{TRACE}-{CALLER}-01");
    fetch(
        node.client()
            .get(node.url("/t"))
            .header("traceparent", &traceparent)
            .send()
            .unwrap(),
    );
    get(&node, "/t2");
    assert_eq!(
        origin.requests("/t")[0].header("traceparent").as_deref(),
        Some(traceparent.as_str())
    );
    assert_eq!(origin.requests("/t2")[0].header("traceparent"), None);
}

#[test]
fn tracing_settings_are_validated() {
    assert_refused("[tracing]\nprotocol = \"grpc\"", "tracing.protocol");
    assert_refused("[tracing]\nendpoint = \"ftp://x\"", "tracing.endpoint");
    assert_refused("[tracing]\nsample = -1.0", "tracing.sample");
}
