//! The admin listener: open health probes, everything else behind the bearer token.
mod common;

use common::*;

#[test]
fn health_probes_are_open_and_other_routes_need_the_token() {
    let origin = TestOrigin::start();
    let node = NodeConfig::new(&origin.url()).start();
    let c = node.client();
    for probe in ["/healthz", "/readyz"] {
        let r = c.get(node.admin_url(probe)).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{probe}");
    }
    // no token, wrong token, wrong scheme: 401 with a JSON error and a challenge
    for auth in [None, Some("Bearer nope"), Some("Basic dGVzdC10b2tlbg==")] {
        let mut rb = c.get(node.admin_url("/anything"));
        if let Some(a) = auth {
            rb = rb.header("Authorization", a);
        }
        let r = rb.send().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{auth:?}");
        assert_eq!(r.headers().get("www-authenticate").unwrap(), "Bearer");
        let body = r.text().unwrap();
        assert!(body.contains("\"error\""), "{body}");
    }
    // the right token reaches routing (no admin routes beyond probes yet: 404)
    let r = c
        .get(node.admin_url("/anything"))
        .header("Authorization", "Bearer test-token")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // the token never appears in the log
    assert!(
        !node.log().contains("test-token"),
        "token leaked into the log"
    );
    let r = c.post(node.admin_url("/healthz")).send().unwrap();
    assert_eq!(r.status().as_u16(), 405);
}

#[test]
fn metrics_listener_serves_only_metrics() {
    let origin = TestOrigin::start();
    let node = NodeConfig::new(&origin.url()).start();
    let c = node.client();
    let base = node.metrics_url().replace("/metrics", "");
    assert_eq!(
        c.get(format!("{base}/other"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        c.post(node.metrics_url()).send().unwrap().status().as_u16(),
        405
    );
    assert_eq!(origin.total_hits(), 0);
}

#[test]
fn readyz_waits_for_the_disk_index_while_the_node_already_serves() {
    let origin = TestOrigin::start();
    origin.set("/p", Reply::ok("v").header("Cache-Control", "max-age=60"));
    let cfg = NodeConfig::new(&origin.url());
    // A disk tier of 300,000 small objects, and no directory checkpoint: the node rebuilds its
    // directory by replaying the whole log, which takes a moment.
    let cache = cfg.dir().join("cache");
    fill_disk_tier(&cache, 300_000);
    std::fs::remove_file(cache.join("directory")).expect("remove the directory checkpoint");
    let node = cfg.start();
    let c = node.client();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let r = c.get(node.admin_url("/readyz")).send().expect("readyz");
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().expect("JSON");
        if seen.last() != Some(&(status, body.clone())) {
            seen.push((status, body.clone()));
        }
        if status == 200 {
            assert_eq!(body["disk_index"], "complete", "{seen:?}");
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["status"], "starting");
        assert_eq!(body["disk_index"], "scanning");
        // not ready, yet serving
        assert_eq!(get(&node, "/p").status, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "never ready: {seen:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        seen.first().is_some_and(|(s, _)| *s == 503),
        "ready before the index scan finished: {seen:?}"
    );
    // the replay found every object
    let objects = metric_sum(&node.metrics(), "outpost_cache_disk_objects", &[]);
    assert!(objects >= 300_000.0, "{objects} objects recovered");
}

/// Writes `n` small objects into a disk tier at `cache`, through the library's own writer, with
/// the `disk_size` the harness's nodes use (the ring's geometry follows it: a node with another
/// size would drop the segments), then stops it gracefully as a node would.
fn fill_disk_tier(cache: &std::path::Path, n: u64) {
    use bytes::Bytes;
    use outpost::cache::disk::{DiskObject, DiskTier};
    use outpost::cache::entry::encode_head;
    use std::time::{Duration, SystemTime};

    const DISK_SIZE: u64 = 1 << 30; // the configuration's default
    let metrics = outpost::metrics::Metrics::new(1 << 20, DISK_SIZE).expect("metrics");
    let disk = DiskTier::open(cache, DISK_SIZE, 1 << 20, metrics.storage.clone());
    let now = SystemTime::now();
    let mut header = pingora_http::ResponseHeader::build(200, None).expect("header");
    header
        .append_header("cache-control", "max-age=86400")
        .expect("field");
    let meta = pingora_cache::CacheMeta::new(now + Duration::from_secs(86_400), now, 0, 0, header);
    let body = Bytes::from_static(b"a small object body");
    for i in 0..n {
        let primary = format!("filler\n/{i}");
        let object = DiskObject {
            head: Bytes::from(encode_head(&meta, primary.as_bytes()).expect("encode head")),
            body: body.clone(),
        };
        // keys spread over the directory's shards
        let key = u128::from(i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        // refused when the writer's queue is full: wait for it and try again
        let mut tries = 0;
        while !disk.put(key, object.clone()) {
            tries += 1;
            assert!(
                tries < 10,
                "object {i} refused by the disk tier {tries} times"
            );
            disk.flush(Duration::from_secs(30));
        }
    }
    assert!(disk.flush(Duration::from_secs(120)), "the filler's writes");
    assert_eq!(
        metrics.storage.disk_write_errors.get(),
        0,
        "the filler's write errors"
    );
    assert_eq!(disk.objects(), n, "objects written by the filler");
    assert!(disk.shutdown(Duration::from_secs(120)), "the filler's stop");
}
