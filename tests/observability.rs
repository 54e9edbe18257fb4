//! Metrics after a scripted traffic mix: every family present with the right type, values
//! matching exactly what the test did, and label cardinality bounded under 100,000 distinct
//! paths.
mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// `# TYPE` of every metric family in an exposition.
fn types(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_string(), kind.to_string()))
        })
        .collect()
}

fn settle(node: &Node, requests: f64) -> String {
    wait_metric(
        node,
        "outpost_request_duration_seconds_count",
        &[],
        |v| v >= requests,
        Duration::from_secs(5),
        "every request recorded",
    );
    node.metrics()
}

#[test]
fn a_scripted_traffic_mix_is_counted_exactly() {
    let origin = TestOrigin::start();
    for p in ["/a", "/b", "/c"] {
        origin.set(
            p,
            Reply::ok(vec![b'x'; 1000]).header("Cache-Control", "max-age=60"),
        );
    }
    origin.set("/api/x", Reply::ok("api"));
    origin.set("/form", Reply::new(201).body("created"));
    let node = NodeConfig::new(&origin.url())
        .rules("[[rules]]\nname = \"api\"\naction = \"bypass\"\n[rules.match]\npath_prefix = [\"/api/\"]")
        .rules("[[rules]]\nname = \"default\"\naction = \"cache\"")
        // declared, never reached: its series exists at zero
        .extra("[[rate_limit.rules]]\nname = \"api\"\nlimit = \"1000/s\"\n[rate_limit.rules.match]\npath_prefix = [\"/nothing/\"]")
        .start();

    // 3 misses, 5 GET hits, 2 HEAD hits, 2 bypasses, 1 POST, 1 refused (no Host)
    for p in ["/a", "/b", "/c"] {
        assert_eq!(get(&node, p).status, 200);
    }
    for _ in 0..5 {
        assert!(get(&node, "/a").cache_status().contains("hit"));
    }
    for _ in 0..2 {
        let r = node.client().head(node.url("/b")).send().unwrap();
        assert_eq!(r.status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(get(&node, "/api/x").status, 200);
    }
    let r = node
        .client()
        .post(node.url("/form"))
        .body("f=1")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(raw(&node, b"GET /a HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"));

    let m = settle(&node, 14.0);
    let count = |labels: &[(&str, &str)]| metric_sum(&m, "outpost_requests_total", labels);
    assert_eq!(
        count(&[
            ("cache_status", "miss"),
            ("method", "GET"),
            ("status_class", "2xx")
        ]),
        3.0
    );
    assert_eq!(count(&[("cache_status", "hit"), ("method", "GET")]), 5.0);
    assert_eq!(count(&[("cache_status", "hit"), ("method", "HEAD")]), 2.0);
    assert_eq!(count(&[("cache_status", "bypass"), ("method", "GET")]), 2.0);
    assert_eq!(
        count(&[("cache_status", "bypass"), ("method", "POST")]),
        1.0
    );
    assert_eq!(
        count(&[("cache_status", "refused"), ("status_class", "4xx")]),
        1.0
    );
    assert_eq!(count(&[]), 14.0);
    // time to first byte: one observation per request, by cache status
    assert_eq!(
        metric_sum(
            &m,
            "outpost_response_first_byte_seconds_count",
            &[("cache_status", "hit")]
        ),
        7.0
    );
    // bytes by source: 5 GET hits of 1000 bytes from memory (HEAD sends none), 3 misses and
    // the bypasses from the origin
    assert_eq!(
        metric_sum(&m, "outpost_response_bytes_total", &[("source", "memory")]),
        5000.0
    );
    assert_eq!(
        metric_sum(&m, "outpost_response_bytes_total", &[("source", "origin")]),
        3000.0 + 2.0 * 3.0 + 7.0
    );
    assert!(metric_sum(&m, "outpost_response_bytes_total", &[("source", "node")]) > 0.0);
    // upstream: 3 misses + 2 bypasses + 1 POST reached the one origin server
    assert_eq!(
        metric_sum(&m, "outpost_upstream_requests_total", &[("tier", "origin")]),
        6.0
    );
    assert_eq!(
        metric_sum(&m, "outpost_cache_tier_hits_total", &[("tier", "memory")]),
        7.0
    );

    // families have the types Prometheus conventions ask for
    let t = types(&m);
    for (name, kind) in [
        ("outpost_requests_total", "counter"),
        ("outpost_request_duration_seconds", "histogram"),
        ("outpost_response_first_byte_seconds", "histogram"),
        ("outpost_response_bytes_total", "counter"),
        ("outpost_upstream_requests_total", "counter"),
        ("outpost_upstream_request_duration_seconds", "histogram"),
        ("outpost_upstream_errors_total", "counter"),
        ("outpost_upstream_open_connections", "gauge"),
        ("outpost_upstream_healthy", "gauge"),
        ("outpost_cache_memory_bytes", "gauge"),
        ("outpost_cache_evictions_total", "counter"),
        ("outpost_cache_lock_wait_seconds", "histogram"),
        ("outpost_cache_lock_timeouts_total", "counter"),
        ("outpost_cache_revalidations_total", "counter"),
        ("outpost_cache_stale_served_total", "counter"),
        ("outpost_purges_total", "counter"),
        ("outpost_purge_duration_seconds", "histogram"),
        ("outpost_rate_limited_total", "counter"),
        ("outpost_compression_bytes_in_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_open_fds", "gauge"),
        ("process_threads", "gauge"),
    ] {
        assert_eq!(t.get(name).map(String::as_str), Some(kind), "{name}");
    }
    // every counter ends in _total, every outpost family has the prefix
    for (name, kind) in &t {
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} without _total");
        }
        assert!(
            name.starts_with("outpost_") || name.starts_with("process_"),
            "{name}"
        );
    }
}

#[test]
fn coalesced_waits_and_upstream_error_kinds_are_counted() {
    let origin = TestOrigin::start();
    origin.set(
        "/slow",
        Reply::ok("s")
            .header("Cache-Control", "max-age=60")
            .delay(Duration::from_millis(400)),
    );
    let node = NodeConfig::new(&origin.url()).start();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = node.url("/slow");
            std::thread::spawn(move || reqwest::blocking::get(url).unwrap().status().as_u16())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    assert_eq!(origin.hits("/slow"), 1);
    let waits = wait_metric(
        &node,
        "outpost_cache_lock_wait_seconds_count",
        &[],
        |v| v >= 3.0,
        Duration::from_secs(5),
        "three coalesced waits",
    );
    assert_eq!(waits, 3.0);

    // a dead origin: a connect error, counted by kind
    let dead = NodeConfig::new(&format!("http://127.0.0.1:{}", free_port())).start();
    assert_eq!(get(&dead, "/x").status, 502);
    wait_metric(
        &dead,
        "outpost_upstream_errors_total",
        &[("kind", "connect")],
        |v| v >= 1.0,
        Duration::from_secs(5),
        "a connect error",
    );
}

/// Series in an exposition (sample lines).
fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count()
}

#[test]
fn label_cardinality_stays_bounded_under_100000_distinct_paths() {
    let origin = TestOrigin::start();
    origin.set_handler("*", |_, _| {
        Reply::ok("x").header("Cache-Control", "max-age=60")
    });
    // 10,000 distinct paths through the cache and the origin, 90,000 more answered by the node
    // itself (a rate limit that refuses them all): every request carries a new path, query
    // and user agent
    let node = NodeConfig::new(&origin.url())
        .extra(
            "[access_log]\nenabled = false\n\n[[rate_limit.rules]]\nname = \"closed\"\nlimit = \"1/h\"\n[rate_limit.rules.match]\npath_prefix = [\"/limited/\"]",
        )
        .start();
    // warm every label combination this traffic can produce
    for i in 0..20 {
        get(&node, &format!("/warm/{i}"));
        get(&node, &format!("/limited/warm/{i}"));
    }
    let before = series(&settle(&node, 40.0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let client = node.client();
            let base = node.url("");
            std::thread::spawn(move || {
                for i in 0..25_000 {
                    let path = if i % 10 == 0 { "p" } else { "limited" };
                    let r = client
                        .get(format!("{base}/{path}/{t}/{i}?q={i}"))
                        .header("user-agent", format!("agent-{i}"))
                        .send()
                        .unwrap();
                    assert!(matches!(r.status().as_u16(), 200 | 429));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let m = settle(&node, 100_040.0);
    // the warm-up's 20 paths and the one /limited/ request the limit let through
    assert_eq!(origin.total_hits(), 10_000 + 20 + 1);
    let after = series(&m);
    assert!(
        after <= before + 10,
        "{before} series before, {after} after 100,000 distinct paths"
    );
    // no path, query or client detail made it into a label value
    let values: HashSet<&str> = m
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.split('"').skip(1).step_by(2))
        .collect();
    assert!(values
        .iter()
        .all(|v| !v.contains("/p/") && !v.contains("/limited/") && !v.contains("agent-")));
}

#[test]
fn objects_a_tier_does_not_take_are_counted() {
    let origin = TestOrigin::start();
    origin.set(
        "/big",
        Reply::ok(vec![b'b'; 4096]).header("Cache-Control", "max-age=60"),
    );
    let node = NodeConfig::new(&origin.url())
        .cache("max_object_size = \"1KiB\"")
        .start();
    assert_eq!(get(&node, "/big").status, 200);
    // too large for memory: kept on disk only
    wait_metric(
        &node,
        "outpost_cache_admissions_rejected_total",
        &[("tier", "memory")],
        |v| v == 1.0,
        Duration::from_secs(5),
        "the memory tier refusing /big",
    );
    wait_disk_objects(&node, 1, Duration::from_secs(5), "/big on disk");
    let m = node.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "outpost_cache_admissions_rejected_total",
            &[("tier", "disk")]
        ),
        0.0
    );
}
