//! Fleet purge over NATS JetStream against a real `nats-server`: a purge issued on one node
//! reaches every node (every target type, soft too), a node that was down catches up before it
//! serves objects from before its outage, and purges issued while NATS is down are applied
//! locally at once and published when it returns. Skipped (with a message) where
//! `nats-server` is not installed; a torn outbox record is tested without NATS.
mod common;

use common::nats::Nats;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn purge(node: &Node, body: &str) -> serde_json::Value {
    let r = node
        .client()
        .post(node.admin_url("/purge"))
        .bearer_auth("test-token")
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .expect("POST /purge");
    assert_eq!(r.status(), 200);
    r.json().expect("JSON answer")
}

fn member(name: &str, origin: &TestOrigin, nats: &Nats) -> NodeConfig {
    NodeConfig::new(&origin.url())
        .node(&format!("name = \"{name}\""))
        .extra(&format!(
            "[cluster]\nnats_url = \"{}\"\nstream = \"PURGES\"",
            nats.url()
        ))
}

/// `/v/*` objects whose body says which fetch of the path it is.
fn versioned(origin: &TestOrigin) -> Arc<AtomicUsize> {
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = fetches.clone();
    origin.set_handler("*", move |_, hit| {
        f.fetch_add(1, Ordering::SeqCst);
        Reply::ok(format!("v{hit}"))
            .header("Cache-Control", "max-age=600")
            .header("ETag", &format!("\"v{hit}\""))
            .header("Surrogate-Key", "fleet")
    });
    fetches
}

fn wait_synced(node: &Node) {
    wait_until(
        "the node to catch up with the stream",
        Duration::from_secs(10),
        || admin_status(node)["cluster"]["synced"] == true,
    );
}

fn applied(node: &Node) -> f64 {
    metric_sum(&node.metrics(), "outpost_cluster_purges_applied_total", &[])
}

/// An origin serving versioned objects and two members caught up with the stream: edge-a,
/// edge-b and edge-b's configuration (to start it again).
fn two_edges(nats: &Nats) -> (TestOrigin, Node, Node, NodeConfig) {
    let origin = TestOrigin::start();
    versioned(&origin);
    let a = member("edge-a", &origin, nats).start();
    let b_config = member("edge-b", &origin, nats);
    let b = b_config.start();
    wait_synced(&a);
    wait_synced(&b);
    (origin, a, b, b_config)
}

#[test]
fn a_purge_on_one_node_reaches_every_node() {
    let Some(nats) = Nats::start() else { return };
    let origin = TestOrigin::start();
    versioned(&origin);
    let nodes: Vec<Node> = ["edge-a", "edge-b", "shield"]
        .iter()
        .map(|n| member(n, &origin, &nats).start())
        .collect();
    for n in &nodes {
        wait_synced(n);
    }
    let everywhere =
        |path: &str| -> Vec<String> { nodes.iter().map(|n| get(n, path).text()).collect() };
    for p in ["/u", "/p/x", "/t", "/s"] {
        everywhere(p);
        // every node has it: hits now
        for n in &nodes {
            assert!(get(n, p).cache_status().contains("hit"), "{p}");
        }
    }

    for (i, body) in [
        r#"{"url": "http://127.0.0.1/u"}"#,
        r#"{"prefix": "/p/"}"#,
        r#"{"tags": ["fleet"]}"#,
    ]
    .iter()
    .enumerate()
    {
        let answer = purge(&nodes[0], body);
        assert_eq!(answer["fleet"], "queued", "{answer}");
        for n in &nodes[1..] {
            wait_until("the purge to arrive", Duration::from_secs(5), || {
                applied(n) >= (i + 1) as f64
            });
        }
    }
    // after the tag purge everything tagged is gone on every node: each refetches
    for n in &nodes {
        for p in ["/u", "/p/x", "/t"] {
            let r = get(n, p);
            assert!(
                !r.cache_status().contains("; hit"),
                "{p}: {}",
                r.cache_status()
            );
        }
    }

    // a soft purge from another node: stale everywhere, revalidated (304 keeps the body)
    origin.set_handler("/soft", |req, hit| {
        if req.header("if-none-match").as_deref() == Some("\"v1\"") {
            return Reply::new(304).header("ETag", "\"v1\"");
        }
        Reply::ok(format!("v{hit}"))
            .header("Cache-Control", "max-age=600")
            .header("ETag", "\"v1\"")
    });
    for n in &nodes {
        get(n, "/soft");
    }
    let before = applied(&nodes[0]);
    purge(&nodes[2], r#"{"prefix": "/soft", "soft": true}"#);
    wait_until("the soft purge on edge-a", Duration::from_secs(5), || {
        applied(&nodes[0]) > before
    });
    let r = get(&nodes[0], "/soft");
    assert_eq!(r.text(), "v1");
    assert!(
        r.cache_status().contains("fwd=stale"),
        "{}",
        r.cache_status()
    );
    let seen = origin.requests("/soft");
    assert_eq!(
        seen.last().unwrap().header("if-none-match").as_deref(),
        Some("\"v1\"")
    );
}

#[test]
fn a_node_that_was_down_catches_up_before_serving_old_objects() {
    let Some(nats) = Nats::start() else { return };
    let (_origin, a, b, b_config) = two_edges(&nats);
    assert_eq!(get(&b, "/old").text(), "v1");
    wait_disk_objects(&b, 1, Duration::from_secs(5), "the object on disk");
    b.stop();

    // purged while edge-b is down
    purge(&a, r#"{"url": "http://127.0.0.1/old"}"#);
    let b = b_config.start();
    // whether or not it has caught up yet, it never serves the purged copy
    let r = get(&b, "/old");
    assert_eq!(r.text(), "v2", "{}", r.cache_status());
    wait_synced(&b);
    assert!(applied(&b) >= 1.0);
    // a purge from the bus is dated when it arrives here (safe whatever the nodes' clocks say),
    // so a copy fetched before it arrived may be refetched once (v3); then it is cached again
    let again = get(&b, "/old").text();
    assert!(again == "v2" || again == "v3", "{again}");
    assert!(get(&b, "/old").cache_status().contains("hit"));
}

#[test]
fn purges_issued_while_nats_is_down_apply_locally_and_travel_when_it_returns() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let (_origin, a, b, _) = two_edges(&nats);
    for n in [&a, &b] {
        assert_eq!(get(n, "/x").text().len(), 2);
    }
    nats.stop();
    wait_until("edge-a to notice", Duration::from_secs(10), || {
        admin_status(&a)["cluster"]["connected"] == false
    });

    let answer = purge(&a, r#"{"url": "http://127.0.0.1/x"}"#);
    assert_eq!(answer["durable"], true);
    // applied here at once
    assert!(!get(&a, "/x").cache_status().contains("; hit"));
    let m = a.metrics();
    assert_eq!(
        metric_sum(&m, "outpost_cluster_outbox_purges", &[]),
        1.0,
        "{m}"
    );
    // not on edge-b yet
    assert!(get(&b, "/x").cache_status().contains("hit"));

    let nats = nats.start_again();
    wait_until(
        "the queued purge to reach edge-b",
        Duration::from_secs(15),
        || applied(&b) >= 1.0,
    );
    assert!(!get(&b, "/x").cache_status().contains("; hit"));
    assert_eq!(
        metric_sum(&a.metrics(), "outpost_cluster_outbox_purges", &[]),
        0.0
    );
    drop(nats);
}

#[test]
fn cluster_settings_are_validated() {
    assert_refused("[cluster]\nstream = \"S\"", "cluster.nats_url");
    assert_refused("[cluster]\nnats_url = \"http://x:1\"", "cluster.nats_url");
    assert_refused(
        "[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\nstream = \"a.b\"",
        "cluster.stream",
    );
    assert_refused(
        "[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\nuntil_synced = \"maybe\"",
        "cluster.until_synced",
    );
}

/// End-to-end purge latency across nodes on loopback: `cargo test --release --test cluster --
/// --ignored --nocapture`. Prints percentiles of the time from publication to application on
/// the other node (its `outpost_cluster_purge_delay_seconds` histogram) and of the time from
/// the admin answer on one node to the purge showing on the other.
#[test]
#[ignore]
fn fleet_purge_latency() {
    let Some(nats) = Nats::start() else { return };
    let (_origin, a, b, _) = two_edges(&nats);
    let n = 300;
    let mut seen = Vec::with_capacity(n);
    for i in 0..n {
        let before = applied(&b);
        let start = Instant::now();
        purge(&a, &format!(r#"{{"tags": ["t{i}"]}}"#));
        wait_until("the purge on edge-b", Duration::from_secs(5), || {
            applied(&b) > before
        });
        seen.push(start.elapsed());
    }
    seen.sort();
    let pct = |p: f64| seen[((n as f64 * p) as usize).min(n - 1)];
    println!(
        "fleet purge, admin answer on edge-a -> applied on edge-b (metrics polled): p50 {:?} p99 {:?} max {:?}",
        pct(0.5),
        pct(0.99),
        seen[n - 1]
    );
    let m = b.metrics();
    let count = metric_sum(&m, "outpost_cluster_purge_delay_seconds_count", &[]);
    for le in [
        "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "1",
    ] {
        let within = metric_sum(
            &m,
            "outpost_cluster_purge_delay_seconds_bucket",
            &[("le", le)],
        );
        println!("publication -> applied within {le} s: {within} of {count}");
    }
}

#[test]
fn a_torn_outbox_record_costs_that_record_only() {
    // no NATS needed: nothing listens at the bus's address, so purges wait in the outbox
    let origin = TestOrigin::start();
    let cfg = NodeConfig::new(&origin.url()).extra(&format!(
        "[cluster]\nnats_url = \"nats://127.0.0.1:{}\"\nstream = \"PURGES\"",
        free_port()
    ));
    let outbox = cfg.dir().join("cache/cluster-outbox.jsonl");
    let queued = |node: &Node| metric_sum(&node.metrics(), "outpost_cluster_outbox_purges", &[]);
    // what a crash while appending a purge of tag `café` can leave: cut inside `é` (two
    // bytes in UTF-8), or mid-JSON
    let record = r#"{"node":"edge","id":9,"soft":false,"target":{"type":"tags","tags":["café"]},"url":null,"issued_ms":1}"#.as_bytes();
    let e_acute = record.iter().position(|b| *b == 0xC3).expect("é");
    let tails = [
        ("cut inside é", &record[..=e_acute]),
        ("cut mid-JSON", &record[..20]),
    ];
    let mut node = cfg.start();
    for (i, (what, tail)) in tails.iter().enumerate() {
        let answer = purge(&node, &format!(r#"{{"tags": ["t{i}"]}}"#));
        assert_eq!(answer["fleet"], "queued", "{answer}");
        stop_ok(node, what);
        let mut text = std::fs::read(&outbox).expect("outbox");
        text.extend_from_slice(tail);
        std::fs::write(&outbox, text).expect("tear the outbox");

        node = cfg.start();
        assert_eq!(queued(&node), (i + 1) as f64, "{what}: purges lost");
        assert_journal_damage(&node, &outbox, 1, what);
    }
    // the purge appended after the torn record is whole
    stop_ok(node, "last run");
    let node = cfg.start();
    assert_journal_damage(&node, &outbox, 0, "torn tails were cut off");
    assert_eq!(queued(&node), tails.len() as f64);
}
