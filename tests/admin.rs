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
    // a disk tier of 75,000 (empty) objects: the start-up scan takes a moment to index them
    let objects = cfg.dir().join("cache/objects");
    for shard in 0..=255u32 {
        std::fs::create_dir_all(objects.join(format!("{shard:02x}"))).expect("mkdir");
    }
    for i in 0..75_000u128 {
        let key = (i << 112) | i;
        let dir = objects.join(format!("{:02x}", (key >> 120) as u8));
        for ext in ["body", "head"] {
            std::fs::File::create(dir.join(format!("{key:032x}.{ext}"))).expect("create");
        }
    }
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
}
