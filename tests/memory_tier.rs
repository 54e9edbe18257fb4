//! The memory tier's bound and eviction policy, seen through the proxy and its metrics.
mod common;

use common::*;

const CAPACITY: u64 = 1024 * 1024;
const OBJECT: usize = 16 * 1024;
const SCAN: usize = 150; // 150 x 16 KiB = 2.4 MiB: more than twice the tier

fn node_with_small_tier(origin: &TestOrigin) -> Node {
    for i in 0..SCAN {
        origin.set(
            &format!("/scan/{i}"),
            Reply::ok(payload(OBJECT)).header("Cache-Control", "max-age=600"),
        );
    }
    origin.set(
        "/hot",
        Reply::ok(payload(OBJECT)).header("Cache-Control", "max-age=600"),
    );
    NodeConfig::new(&origin.url())
        .cache(&format!(
            "tiers = \"memory\"\nmemory_size = {CAPACITY}\nmax_object_size = \"64KiB\""
        ))
        .start()
}

#[test]
fn tier_stays_within_its_byte_limit_while_filling_past_it() {
    let origin = TestOrigin::start();
    let node = node_with_small_tier(&origin);
    for i in 0..SCAN {
        let r = get(&node, &format!("/scan/{i}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), OBJECT, "/scan/{i} served whole");
    }
    let m = node.metrics();
    let bytes = metric_sum(&m, "outpost_cache_memory_bytes", &[]);
    let objects = metric_sum(&m, "outpost_cache_memory_objects", &[]);
    let capacity = metric_sum(&m, "outpost_cache_memory_capacity_bytes", &[]);
    assert_eq!(capacity, CAPACITY as f64);
    assert!(
        bytes <= CAPACITY as f64,
        "tier holds {bytes} bytes, over its {CAPACITY}-byte limit"
    );
    assert!(
        objects > 0.0 && objects < SCAN as f64,
        "{objects} objects after {SCAN} x {OBJECT} bytes into {CAPACITY} bytes"
    );
    // charged at least the bodies it holds
    assert!(
        bytes >= objects * OBJECT as f64,
        "{bytes} bytes for {objects} objects"
    );
    // and what it still holds is served whole from memory
    let last = get(&node, &format!("/scan/{}", SCAN - 1));
    assert_hit(&last, "the newest object");
    assert_eq!(last.body, payload(OBJECT));
}

#[test]
fn a_scan_of_one_hit_objects_does_not_flush_a_hot_object() {
    let origin = TestOrigin::start();
    let node = node_with_small_tier(&origin);
    for _ in 0..4 {
        assert_eq!(get(&node, "/hot").status, 200);
    }
    for i in 0..SCAN {
        assert_eq!(get(&node, &format!("/scan/{i}")).status, 200);
    }
    let hot = get(&node, "/hot");
    assert_hit(&hot, "/hot after a scan of one-hit objects");
    assert_eq!(origin.hits("/hot"), 1, "the hot object was refetched");
    // the scan itself was evicted, not kept at the hot object's expense
    let refetched = (0..SCAN)
        .filter(|i| {
            get(&node, &format!("/scan/{i}"))
                .cache_status()
                .contains("fwd=")
        })
        .count();
    assert!(
        refetched > 0,
        "all {SCAN} scan objects still cached in a 1 MiB tier"
    );
}
