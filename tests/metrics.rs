//! Prometheus metrics and the admin health check.
mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn admin_healthz_is_200() {
    let origin = TestOrigin::start();
    let node = NodeConfig::new(&origin.url()).start();
    let r = node
        .client()
        .get(node.admin_url("/healthz"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // the admin listener is not the proxy: nothing reached the origin
    assert_eq!(origin.total_hits(), 0);
}

#[test]
fn metrics_content_type_is_prometheus_text() {
    let origin = TestOrigin::start();
    let node = NodeConfig::new(&origin.url()).start();
    let r = node.client().get(node.metrics_url()).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "Content-Type {ct:?}");
}

fn requests(m: &str, status: &str) -> f64 {
    metric_sum(m, "outpost_requests_total", &[("cache_status", status)])
}

fn durations(m: &str, status: &str) -> f64 {
    metric_sum(
        m,
        "outpost_request_duration_seconds_count",
        &[("cache_status", status)],
    )
}

/// Request metrics are recorded when the request is logged, just after the response went
/// out, and one scrape is not an atomic snapshot (families are gathered one after another):
/// scrape until both the counter and the duration histogram of `status` moved past `before`
/// (or give up after 5 s and return the last).
fn metrics_after(node: &Node, status: &str, before: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = node.metrics();
        let moved = requests(&m, status) > requests(before, status)
            && durations(&m, status) > durations(before, status);
        if moved || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_move_after_miss_hit_and_bypass() {
    let origin = TestOrigin::start();
    origin.set(
        "/m",
        Reply::ok(payload(2000)).header("Cache-Control", "max-age=60"),
    );
    origin.set(
        "/api/b",
        Reply::ok("b").header("Cache-Control", "max-age=60"),
    );
    let node = NodeConfig::new(&origin.url())
        .rules(RULES_BYPASS_API_ELSE_HEURISTIC)
        .start();

    let m0 = node.metrics();

    let r = get(&node, "/m");
    assert!(
        cs_get(&r.cache_status(), "fwd").is_some_and(|f| f.ends_with("miss")),
        "{}",
        r.cache_status()
    );
    let m1 = metrics_after(&node, "miss", &m0);
    assert_eq!(
        requests(&m1, "miss") - requests(&m0, "miss"),
        1.0,
        "miss counter after one miss:\n{m1}"
    );
    assert_eq!(requests(&m1, "hit"), requests(&m0, "hit"));
    assert_eq!(
        metric_sum(&m1, "outpost_upstream_requests_total", &[])
            - metric_sum(&m0, "outpost_upstream_requests_total", &[]),
        1.0,
        "origin requests after one miss:\n{m1}"
    );

    let r = get(&node, "/m");
    assert!(cs_has(&r.cache_status(), "hit"), "{}", r.cache_status());
    let m2 = metrics_after(&node, "hit", &m1);
    assert_eq!(
        requests(&m2, "hit") - requests(&m1, "hit"),
        1.0,
        "hit counter after one hit:\n{m2}"
    );
    assert_eq!(requests(&m2, "miss"), requests(&m1, "miss"));
    assert_eq!(
        metric_sum(&m2, "outpost_upstream_requests_total", &[]),
        metric_sum(&m1, "outpost_upstream_requests_total", &[]),
        "a hit counted as an origin request"
    );

    let r = get(&node, "/api/b");
    assert!(
        cs_get(&r.cache_status(), "fwd").as_deref() == Some("bypass"),
        "{}",
        r.cache_status()
    );
    let m3 = metrics_after(&node, "bypass", &m2);
    assert_eq!(
        requests(&m3, "bypass") - requests(&m2, "bypass"),
        1.0,
        "bypass counter:\n{m3}"
    );
    assert_eq!(
        metric_sum(&m3, "outpost_upstream_requests_total", &[])
            - metric_sum(&m2, "outpost_upstream_requests_total", &[]),
        1.0
    );

    // histograms
    for family in [
        "outpost_request_duration_seconds",
        "outpost_upstream_request_duration_seconds",
    ] {
        assert!(
            metric_present(&m3, &format!("{family}_bucket")),
            "{family} buckets missing:\n{m3}"
        );
        assert!(metric_present(&m3, &format!("{family}_sum")));
    }
    assert_eq!(
        metric_sum(&m3, "outpost_request_duration_seconds_count", &[])
            - metric_sum(&m0, "outpost_request_duration_seconds_count", &[]),
        3.0,
        "request duration observations for 3 requests:\n{m3}"
    );
    assert_eq!(
        metric_sum(&m3, "outpost_upstream_request_duration_seconds_count", &[])
            - metric_sum(&m0, "outpost_upstream_request_duration_seconds_count", &[]),
        2.0,
        "origin duration observations for 2 origin requests:\n{m3}"
    );

    // memory tier gauges: one object of at least its body size (allow a moment for
    // eventually-consistent bookkeeping)
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let m = node.metrics();
        let objects = metric_sum(&m, "outpost_cache_memory_objects", &[]);
        let bytes = metric_sum(&m, "outpost_cache_memory_bytes", &[]);
        if objects == 1.0 && bytes >= 2000.0 {
            break;
        }
        if Instant::now() > deadline {
            panic!("memory gauges: objects={objects} bytes={bytes} (want 1 and >= 2000):\n{m}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
