//! Objects larger than the memory tier: spooled to disk as they arrive (whether their length is
//! announced or not), streamed from disk block by block with every block verified before it is
//! sent, served with bounded memory, after restarts, to coalesced readers, and by range.
mod common;

use std::fs;
use std::time::Duration;

use common::disk::{assert_segments, flip_byte, only_record_for, truncate, Record, BLOCK};
use common::*;

const MIB: usize = 1 << 20;
/// Deadline for background work (disk writes) to show up in the metrics.
const WAIT: Duration = Duration::from_secs(30);

const MEMORY_OBJECTS: &str = "outpost_cache_memory_objects";
const CORRUPT: &str = "outpost_cache_disk_corrupt_total";

/// A node whose memory tier stores objects of up to 1 MiB, over a 1 GiB disk tier.
fn large_cfg(origin: &TestOrigin) -> NodeConfig {
    NodeConfig::new(&origin.url()).cache(
        r#"
max_object_size = "1MiB"
disk_size = "1GiB"
disk_max_object_size = "512MiB"
"#,
    )
}

/// A cacheable generated body of `len` bytes.
fn large(len: usize) -> Reply {
    Reply::new(200)
        .generated(len)
        .header("Cache-Control", "max-age=600")
        .header("Content-Type", "application/octet-stream")
}

fn fetch_ok(node: &Node, path: &str, headers: &[(&str, &str)]) -> Fetched {
    let mut rb = node.client().get(node.url(path));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    try_fetch(rb.send())
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n--- log (tail) ---\n{}", node.log_tail(60)))
}

/// A `kB` field of /proc/<pid>/status (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn metric(node: &Node, name: &str) -> f64 {
    metric_sum(&node.metrics(), name, &[])
}

/// The one object record of `path` in the node's segment files, holding a body of `len` bytes
/// hashed per 1 MiB block (a block table of one entry per MiB).
fn only_record(cfg: &NodeConfig, path: &str, len: usize) -> Record {
    let cache = cfg.dir().join("cache");
    assert_segments(&cache, 1 << 30, path);
    let record = only_record_for(&cache, path);
    assert_eq!(
        record.body_len, len as u64,
        "{path}: the record's body length"
    );
    assert_eq!(
        record.blocks,
        (len as u64).div_ceil(BLOCK),
        "{path}: the record's block table"
    );
    record
}

fn assert_body(f: &Fetched, expected: &[u8], what: &str) {
    assert_eq!(f.body.len(), expected.len(), "{what}: body length");
    if let Some(i) = (0..expected.len()).find(|&i| f.body[i] != expected[i]) {
        panic!("{what}: body differs first at byte {i}");
    }
}

#[test]
fn object_of_200_mib_is_spooled_and_streamed_from_disk_with_bounded_memory() {
    let origin = TestOrigin::start();
    let len = 200 * MIB;
    origin.set("/huge", large(len));
    let cfg = large_cfg(&origin);
    let expected = generated_body(0, len);

    let node = cfg.start();
    let base = status_kib(node.pid(), "VmRSS");
    let first = fetch_ok(&node, "/huge", &[]);
    assert_eq!(first.status, 200);
    assert_stored_miss(&first, "/huge, first request");
    assert_body(&first, &expected, "/huge, first request");
    wait_disk_objects(&node, 1, WAIT, "the 200 MiB object written to disk");
    assert_eq!(
        metric(&node, MEMORY_OBJECTS),
        0.0,
        "a 200 MiB object in a 1 MiB-object memory tier"
    );
    // one record in the segment files (running through several of them), the body whole
    let record = only_record(&cfg, "/huge", len);
    assert!(
        record.body() == expected,
        "/huge: the body in the segment files"
    );
    drop(record);

    let second = fetch_ok(&node, "/huge", &[]);
    assert_hit(&second, "/huge, second request");
    assert_body(&second, &expected, "/huge, second request");
    let peak = status_kib(node.pid(), "VmHWM");
    assert!(
        peak < base + 64 * 1024,
        "RSS peaked at {peak} KiB (started at {base} KiB) while filling and serving a 200 MiB \
         object: it was buffered in memory"
    );
    node.stop();

    // after a restart: still a hit, streamed, memory still bounded
    let node = cfg.start();
    let base = status_kib(node.pid(), "VmRSS");
    let third = fetch_ok(&node, "/huge", &[]);
    assert_hit(&third, "/huge after a restart");
    assert_body(&third, &expected, "/huge after a restart");
    let peak = status_kib(node.pid(), "VmHWM");
    assert!(
        peak < base + 64 * 1024,
        "RSS peaked at {peak} KiB (started at {base} KiB) serving a 200 MiB disk hit"
    );
    assert_eq!(origin.hits("/huge"), 1, "the origin was asked again");
}

#[test]
fn chunked_object_outgrowing_memory_spills_to_disk_with_bounded_memory() {
    let origin = TestOrigin::start();
    let len = 48 * MIB + 321;
    origin.set("/chunked", large(len).chunked());
    let cfg = large_cfg(&origin);
    let node = cfg.start();
    let base = status_kib(node.pid(), "VmRSS");
    let expected = generated_body(0, len);

    let first = fetch_ok(&node, "/chunked", &[]);
    assert_eq!(first.status, 200);
    assert_stored_miss(&first, "/chunked, first request");
    assert_body(&first, &expected, "/chunked, first request");
    wait_disk_objects(&node, 1, WAIT, "the spilled object on disk");
    assert_eq!(metric(&node, MEMORY_OBJECTS), 0.0);
    let record = only_record(&cfg, "/chunked", len);
    assert!(
        record.body() == expected,
        "/chunked: the body in the segment files"
    );
    let peak = status_kib(node.pid(), "VmHWM");
    assert!(
        peak < base + 24 * 1024,
        "RSS peaked at {peak} KiB (started at {base} KiB) while filling a 48 MiB object of \
         unannounced length: it was buffered in memory, not spilled to disk"
    );

    let second = fetch_ok(&node, "/chunked", &[]);
    assert_hit(&second, "/chunked, second request");
    assert_body(&second, &expected, "/chunked, second request");
    assert_eq!(origin.hits("/chunked"), 1);
}

#[test]
fn disk_only_tier_spools_and_streams_large_objects() {
    let origin = TestOrigin::start();
    let len = 5 * MIB + 7;
    origin.set("/known", large(len));
    origin.set("/unknown", large(len).chunked());
    let cfg = NodeConfig::new(&origin.url()).cache("tiers = \"disk\"\ndisk_size = \"256MiB\"");
    let node = cfg.start();
    let expected = generated_body(0, len);
    for path in ["/known", "/unknown"] {
        let first = fetch_ok(&node, path, &[]);
        assert_stored_miss(&first, path);
        assert_body(&first, &expected, path);
    }
    wait_disk_objects(&node, 2, WAIT, "both objects on disk");
    for path in ["/known", "/unknown"] {
        let hit = fetch_ok(&node, path, &[]);
        assert_hit(&hit, path);
        assert_body(&hit, &expected, path);
        assert_eq!(origin.hits(path), 1, "{path}");
    }
}

/// Stores a 4 MiB + 5 object, damages its record in the segment files with `damage` (the node
/// running), and returns the node.
fn stored_then_damaged(
    origin: &TestOrigin,
    cfg: &NodeConfig,
    damage: impl FnOnce(&Record),
) -> (Node, Vec<u8>) {
    let len = 4 * MIB + 5;
    origin.set("/obj", large(len));
    let node = cfg.start();
    let expected = generated_body(0, len);
    let first = fetch_ok(&node, "/obj", &[]);
    assert_body(&first, &expected, "first request");
    wait_disk_objects(&node, 1, WAIT, "the object on disk");
    let record = only_record(cfg, "/obj", len);
    assert!(record.body() == expected, "the body in the segment files");
    damage(&record);
    (node, expected)
}

/// Flip a bit of byte `at` of the record's body, in its segment file.
fn flip_body_byte(record: &Record, at: u64) {
    let (seg, off) = record.body_byte(at);
    flip_byte(&seg, off);
}

#[test]
fn corrupt_block_deep_in_a_large_object_is_never_served_as_complete() {
    let origin = TestOrigin::start();
    let cfg = large_cfg(&origin);
    let (node, expected) =
        stored_then_damaged(&origin, &cfg, |r| flip_body_byte(r, 2 * MIB as u64 + 4321));
    // Blocks 0 and 1 are sound and sent; block 2 fails its checksum: the response is cut short.
    let damaged = try_fetch(node.client().get(node.url("/obj")).send());
    match damaged {
        Err(_) => {}
        Ok(f) => assert!(
            f.body.len() < expected.len(),
            "a response with a corrupt block was served complete ({} bytes, {})",
            f.body.len(),
            if f.body == expected {
                "correct bytes?"
            } else {
                "wrong bytes"
            }
        ),
    }
    assert_eq!(metric(&node, CORRUPT), 1.0, "corrupt entry not counted");
    // the entry was dropped: the next request refetches and gets the whole, right body
    let next = fetch_ok(&node, "/obj", &[]);
    assert_stored_miss(&next, "after the corrupt block");
    assert_body(&next, &expected, "after the corrupt block");
    assert_eq!(origin.hits("/obj"), 2);
}

#[test]
fn corrupt_first_block_of_a_large_object_is_a_miss_and_refetched() {
    let origin = TestOrigin::start();
    let cfg = large_cfg(&origin);
    let (node, expected) = stored_then_damaged(&origin, &cfg, |r| flip_body_byte(r, 17));
    let r = fetch_ok(&node, "/obj", &[]);
    assert_stored_miss(&r, "corrupt first block");
    assert_body(&r, &expected, "corrupt first block");
    assert_eq!(metric(&node, CORRUPT), 1.0);
    assert_eq!(origin.hits("/obj"), 2);
}

/// The segment file holding a large object cut short inside its body (past its first block):
/// the lookup must find the record incomplete, so that the request is a miss and a refetch, as
/// it was when the body file was cut short in the layout before.
#[test]
fn truncated_large_body_file_is_a_miss_and_refetched() {
    let origin = TestOrigin::start();
    let cfg = large_cfg(&origin);
    // the segment file ends 3 MiB into the body (its first blocks are whole)
    let (node, expected) = stored_then_damaged(&origin, &cfg, |r| {
        let (seg, off) = r.body_byte(3 * MIB as u64);
        truncate(&seg, off);
    });
    // a miss and a refetch: never a hit cut short where the segment file ends
    let r = try_fetch(node.client().get(node.url("/obj")).send()).unwrap_or_else(|e| {
        panic!(
            "the record cut short by the truncated segment was served, then aborted ({e}): \
             it must be a miss and a refetch\n--- log (tail) ---\n{}",
            node.log_tail(10)
        )
    });
    assert_stored_miss(&r, "truncated segment");
    assert_body(&r, &expected, "truncated segment");
    assert_eq!(metric(&node, CORRUPT), 1.0);
    assert_eq!(origin.hits("/obj"), 2);
}

#[test]
fn ranges_of_a_large_disk_object_are_served_from_its_blocks() {
    let origin = TestOrigin::start();
    let len = 3 * MIB + 123;
    origin.set("/ranged", large(len));
    let cfg = large_cfg(&origin);
    let node = cfg.start();
    let expected = generated_body(0, len);
    assert_body(&fetch_ok(&node, "/ranged", &[]), &expected, "fill");
    wait_disk_objects(&node, 1, WAIT, "the object on disk");

    let cases: &[(&str, usize, usize)] = &[
        ("bytes=1048000-1049999", 1_048_000, 1_049_999), // across a block boundary
        ("bytes=1048576-2097151", MIB, 2 * MIB - 1),     // exactly block 1
        ("bytes=2097000-", 2_097_000, len - 1),          // open-ended, into the last block
        ("bytes=-100", len - 100, len - 1),              // suffix
        ("bytes=0-0", 0, 0),
    ];
    for &(range, first, last) in cases {
        let r = fetch_ok(&node, "/ranged", &[("Range", range)]);
        assert_eq!(r.status, 206, "{range}");
        assert_hit(&r, range);
        assert_eq!(
            r.header("content-range").as_deref(),
            Some(format!("bytes {first}-{last}/{len}").as_str()),
            "{range}"
        );
        assert_body(&r, &expected[first..=last], range);
    }
    let r = fetch_ok(&node, "/ranged", &[("Range", "bytes=5000000-")]);
    assert_eq!(r.status, 416, "unsatisfiable range");
    assert_eq!(
        r.header("content-range").as_deref(),
        Some(format!("bytes */{len}").as_str())
    );
    assert_eq!(origin.hits("/ranged"), 1);
}

/// `clients` concurrent GETs of `path`; every one must get `expected` whole.
fn concurrent_gets(node: &Node, path: &str, clients: usize, expected: &[u8]) {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                s.spawn(move || {
                    if i > 0 {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    fetch_ok(node, path, &[])
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let f = h.join().expect("client thread");
            assert_eq!(f.status, 200, "{path} client {i}");
            assert_body(&f, expected, &format!("{path} client {i}"));
        }
    });
}

#[test]
fn coalesced_readers_follow_large_fills_when_fills_stream() {
    let origin = TestOrigin::start();
    let len = 6 * MIB + 99;
    // the origin pauses mid-body, after the fill has spilled (1 MiB) or begun spooling
    let stall = (2 * MIB, Duration::from_millis(700));
    origin.set("/known", large(len).stall_after(stall.0, stall.1));
    origin.set(
        "/unknown",
        large(len).chunked().stall_after(stall.0, stall.1),
    );
    let cfg = large_cfg(&origin).cache("stream_fills = true");
    let node = cfg.start();
    let expected = generated_body(0, len);
    for path in ["/known", "/unknown"] {
        concurrent_gets(&node, path, 6, &expected);
        assert_eq!(
            origin.hits(path),
            1,
            "{path}: coalesced readers went to the origin"
        );
    }
    wait_disk_objects(&node, 2, WAIT, "both objects on disk");
    for path in ["/known", "/unknown"] {
        let hit = fetch_ok(&node, path, &[]);
        assert_hit(&hit, path);
        assert_body(&hit, &expected, path);
    }
}

#[test]
fn invalidation_during_a_spooled_fill_keeps_the_object_out_of_the_cache() {
    let origin = TestOrigin::start();
    let len = 3 * MIB;
    origin.set_handler("/inv", move |rec, _| {
        if rec.method == "POST" {
            Reply::ok("updated")
        } else {
            large(len).stall_after(2 * MIB, Duration::from_millis(800))
        }
    });
    let cfg = large_cfg(&origin);
    let node = cfg.start();
    let expected = generated_body(0, len);
    std::thread::scope(|s| {
        let filler = s.spawn(|| fetch_ok(&node, "/inv", &[]));
        std::thread::sleep(Duration::from_millis(400));
        let post = request_with(&node, "POST", "/inv", &[]);
        assert_eq!(post.status, 200);
        let filled = filler.join().expect("filling client");
        assert_body(&filled, &expected, "the response being filled");
    });
    // the fill finished after the invalidation: it must not be served
    let after = fetch_ok(&node, "/inv", &[]);
    assert!(
        !cs_has(&after.cache_status(), "hit"),
        "served the object whose fill an invalidation cancelled: {}",
        after.cache_status()
    );
    assert_body(&after, &expected, "after the invalidation");
    let gets = origin
        .requests("/inv")
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(gets, 2);
}
