//! The persistent disk tier, seen through the proxy, its metrics and its directory: objects
//! survive restarts (graceful or SIGKILL), corrupt entries are never served, the tier stays within
//! its byte limit, disk faults do not stop a node from serving, and the `tiers` modes.
//!
//! Every test starts its own origin and node. Restarts start the same `NodeConfig` again: same
//! ports, same temporary directory, same `<dir>/cache`.
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::disk::{
    assert_segments, du, find_in_segments, flip_bytes, listing, only_record_for, records,
    segment_files, truncate, Kind, Record, RECORD_HEADER,
};
use common::*;

/// Deadline for background work (disk writes, promotions) to show up in the metrics.
const WAIT: Duration = Duration::from_secs(10);

const DISK_OBJECTS: &str = "outpost_cache_disk_objects";
const DISK_BYTES: &str = "outpost_cache_disk_bytes";
const DISK_CAPACITY: &str = "outpost_cache_disk_capacity_bytes";
const TIER_HITS: &str = "outpost_cache_tier_hits_total";
const TIER_MISSES: &str = "outpost_cache_tier_misses_total";
const PROMOTIONS: &str = "outpost_cache_promotions_total";
const EVICTIONS: &str = "outpost_cache_evictions_total";
const WRITE_ERRORS: &str = "outpost_cache_disk_write_errors_total";
const CORRUPT: &str = "outpost_cache_disk_corrupt_total";

const MEMORY: &[(&str, &str)] = &[("tier", "memory")];
const DISK: &[(&str, &str)] = &[("tier", "disk")];

/// The cache directory the harness configures: `<tempdir>/cache`.
fn cache_dir(cfg: &NodeConfig) -> PathBuf {
    cfg.dir().join("cache")
}

/// The default `disk_size` of the harness's nodes (the configuration's default).
const DEFAULT_DISK_SIZE: u64 = 1 << 30;

/// Exactly `n` objects on disk, laid out as the disk tier's segment log: segment files of one
/// ring within `disk_size` (see `assert_segments`), holding `n` object records and nothing
/// else (no tombstone, no file of the old layout). Returns the records.
fn assert_layout(cache: &Path, disk_size: u64, n: usize, what: &str) -> Vec<Record> {
    assert_segments(cache, disk_size, what);
    assert!(
        !cache.join("objects").exists(),
        "{what}: a directory of the old layout:\n{}",
        listing(cache)
    );
    let records = records(cache);
    assert!(
        records.len() == n && records.iter().all(|r| r.kind == Kind::Object),
        "{what}: expected {n} object records in the segments, found {:?}:\n{}",
        records
            .iter()
            .map(|r| (r.kind, r.seg.display().to_string(), r.offset, r.body_len))
            .collect::<Vec<_>>(),
        listing(cache)
    );
    records
}

/// GET `path` and read the whole response; a transport error (e.g. a body cut short) panics
/// with the node's log tail.
fn fetch_ok(node: &Node, path: &str) -> Fetched {
    try_fetch(node.client().get(node.url(path)).send())
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n--- log (tail) ---\n{}", node.log_tail(60)))
}

fn metric(node: &Node, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(&node.metrics(), name, labels)
}

fn assert_not_served_from_cache(f: &Fetched, what: &str) {
    let cs = f.cache_status();
    assert!(
        cs.starts_with("outpost") && !cs_has(&cs, "hit") && cs_get(&cs, "fwd").is_some(),
        "{what}: expected a response fetched from the origin, Cache-Status: {cs:?}"
    );
}

fn cacheable(body: impl Into<Vec<u8>>) -> Reply {
    Reply::ok(body)
        .header("Cache-Control", "max-age=600")
        .header("Content-Type", "application/octet-stream")
}

// ---------------------------------------------------------------------------------------------
// Restarts
// ---------------------------------------------------------------------------------------------

#[test]
fn restart_after_graceful_stop_serves_hits_from_disk() {
    let origin = TestOrigin::start();
    let big = payload(200 * 1024);
    origin.set(
        "/small",
        Reply::ok("a small object")
            .header("Cache-Control", "max-age=600")
            .header("Content-Type", "text/plain"),
    );
    origin.set("/big", cacheable(big.clone()));
    let cfg = NodeConfig::new(&origin.url());
    let node = cfg.start();

    let started = Instant::now();
    for path in ["/small", "/big"] {
        let r = fetch_ok(&node, path);
        assert_eq!(r.status, 200, "{path}");
        assert_stored_miss(&r, path);
    }
    let fetched = Instant::now();
    let m = node.metrics();
    for tier in [MEMORY, DISK] {
        let misses = metric_sum(&m, TIER_MISSES, tier);
        assert!(
            misses >= 2.0,
            "two new keys missed the {tier:?} tier, yet {TIER_MISSES}{tier:?} = {misses}"
        );
    }
    wait_disk_objects(&node, 2, WAIT, "both objects written to disk");
    let cache = cache_dir(&cfg);
    assert_layout(&cache, DEFAULT_DISK_SIZE, 2, "before the restart");
    // each object is one record of its own, its body as served
    assert!(only_record_for(&cache, "/small").body() == b"a small object");
    assert!(
        only_record_for(&cache, "/big").body() == big,
        "/big's record"
    );

    // Let the objects age, so that the Age after the restart shows their residence time.
    std::thread::sleep(Duration::from_millis(2100));
    stop_ok(node, "first node");

    let node = cfg.start();
    let min_age = fetched.elapsed().as_secs();
    let small = fetch_ok(&node, "/small");
    let big_r = fetch_ok(&node, "/big");
    let max_age = started.elapsed().as_secs() + 2;

    assert_eq!(small.status, 200);
    assert_hit(&small, "/small after a graceful restart");
    assert_eq!(small.text(), "a small object");
    assert_eq!(small.header("content-type").as_deref(), Some("text/plain"));

    assert_eq!(big_r.status, 200);
    assert_hit(&big_r, "/big after a graceful restart");
    assert!(big_r.body == big, "/big: body differs after the restart");
    assert_eq!(
        big_r.header("content-type").as_deref(),
        Some("application/octet-stream")
    );

    for (path, r) in [("/small", &small), ("/big", &big_r)] {
        let age = r
            .age()
            .unwrap_or_else(|| panic!("{path}: hit after restart without a numeric Age"));
        assert!(
            (min_age..=max_age).contains(&age),
            "{path}: Age {age} after the restart, expected {min_age}..={max_age} \
             (the object was stored {min_age}+ s before)"
        );
    }
    assert_eq!(
        origin.hits("/small"),
        1,
        "/small refetched after the restart"
    );
    assert_eq!(origin.hits("/big"), 1, "/big refetched after the restart");
    assert_eq!(origin.total_hits(), 2);
}

#[test]
fn restart_after_sigkill_serves_hits_from_disk() {
    let origin = TestOrigin::start();
    let body = payload(48 * 1024);
    origin.set("/aged", cacheable(body.clone()).header("Age", "100"));
    let cfg = NodeConfig::new(&origin.url());
    let node = cfg.start();

    let started = Instant::now();
    let r = fetch_ok(&node, "/aged");
    assert_eq!(r.status, 200);
    assert_stored_miss(&r, "/aged");
    wait_disk_objects(&node, 1, WAIT, "/aged written to disk");
    node.kill();
    drop(node);

    let node = cfg.start();
    let r = fetch_ok(&node, "/aged");
    let elapsed = started.elapsed().as_secs();
    assert_eq!(r.status, 200);
    assert_hit(&r, "/aged after SIGKILL and restart");
    assert!(r.body == body, "/aged: body differs after the restart");
    let age = r.age().expect("hit after restart without a numeric Age");
    assert!(
        (100..=100 + elapsed + 2).contains(&age),
        "Age {age} after the restart: the origin sent Age: 100 {elapsed} s ago"
    );
    assert_eq!(origin.hits("/aged"), 1, "/aged refetched after the restart");
    let disk_hits = metric(&node, TIER_HITS, DISK);
    assert!(
        disk_hits >= 1.0,
        "served after a restart, so from disk, yet {TIER_HITS}{{tier=\"disk\"}} = {disk_hits}"
    );
}

// ---------------------------------------------------------------------------------------------
// Corruption
// ---------------------------------------------------------------------------------------------

const CORRUPT_OBJECT: usize = 64 * 1024;
/// A field value of the object damaged, stored as it is in its head (common values such as
/// `application/octet-stream` are stored as codes).
const HEAD_TEXT: &str = "a field value stored as text";

/// Fills one object (body `payload + "#1"`), waits for its disk write, stops the node,
/// finds its record in the segment files and damages it with `damage(record)`, restarts: the
/// damaged entry must be refetched (body `payload + "#2"`), counted as corrupt, and the next
/// request a hit again.
fn damaged_entry_is_refetched(what: &str, damage: impl FnOnce(&Record)) {
    let origin = TestOrigin::start();
    origin.set(
        "/obj",
        cacheable(payload(CORRUPT_OBJECT))
            .header("X-Head-Text", HEAD_TEXT)
            .body_counter(),
    );
    let expected = payload_with_counter;
    let cfg = NodeConfig::new(&origin.url());
    let node = cfg.start();

    let r = fetch_ok(&node, "/obj");
    assert_eq!(r.status, 200);
    assert!(r.body == expected(1), "{what}: first body");
    assert_stored_miss(&r, &format!("{what}: first request"));
    wait_disk_objects(&node, 1, WAIT, &format!("{what}: /obj written to disk"));
    stop_ok(node, what);

    let cache = cache_dir(&cfg);
    let record = assert_layout(&cache, DEFAULT_DISK_SIZE, 1, what).remove(0);
    assert!(record.is_for("/obj"), "{what}: the record is not /obj's");
    assert!(record.body() == expected(1), "{what}: the record's body");
    // the body's last bytes (with its "#1") are found once in the segments: in that record
    let tail = &expected(1)[CORRUPT_OBJECT - 30..];
    assert_eq!(
        find_in_segments(&cache, tail),
        vec![record.body_byte(record.body_len - tail.len() as u64)],
        "{what}: where the body's last bytes are"
    );
    damage(&record);

    let node = cfg.start();
    let r = fetch_ok(&node, "/obj");
    assert_eq!(r.status, 200, "{what}: status after the restart");
    assert!(
        r.body == expected(2),
        "{what}: served {} bytes that are not the origin's current body ({} bytes, ends {:?}); \
         Cache-Status {:?}",
        r.body.len(),
        expected(2).len(),
        String::from_utf8_lossy(&r.body[r.body.len().saturating_sub(8)..]),
        r.cache_status()
    );
    assert_not_served_from_cache(&r, what);
    assert_eq!(
        origin.hits("/obj"),
        2,
        "{what}: the damaged entry was not refetched"
    );
    let corrupt = metric(&node, CORRUPT, &[]);
    assert!(
        corrupt >= 1.0,
        "{what}: {CORRUPT} = {corrupt}\n--- log (tail) ---\n{}",
        node.log_tail(40)
    );

    // The refetched copy is cached again.
    let again = fetch_ok(&node, "/obj");
    assert_hit(&again, &format!("{what}: the request after the refetch"));
    assert!(
        again.body == expected(2),
        "{what}: body of the hit after the refetch"
    );
    assert_eq!(origin.hits("/obj"), 2, "{what}: refetched twice");
}

#[test]
fn corrupted_body_on_disk_is_never_served() {
    damaged_entry_is_refetched("flipped body bytes", |record| {
        assert_eq!(record.body_len, (CORRUPT_OBJECT + 2) as u64);
        // 16 bytes in the middle of the body, inside the segment file
        let (seg, at) = record.body_byte(record.body_len / 2);
        flip_bytes(&seg, at, 16);
        assert!(
            record.body() != payload_with_counter(1),
            "the body was not damaged"
        );
    });
}

#[test]
fn truncated_body_on_disk_is_never_served() {
    damaged_entry_is_refetched("segment cut in the middle of the body", |record| {
        // the segment file ends halfway through the body
        let (seg, at) = record.body_byte(record.body_len / 2);
        truncate(&seg, at);
        assert_eq!(fs::metadata(&seg).expect("stat segment").len(), at);
    });
}

#[test]
fn corrupted_head_on_disk_is_never_served() {
    damaged_entry_is_refetched("flipped head byte", |record| {
        // one byte of a field value in the stored head: served, it would change the field
        let (seg, at) = record
            .head_text(HEAD_TEXT.as_bytes())
            .expect("the stored head holds the field value");
        assert!(
            at >= record.offset + RECORD_HEADER,
            "head inside the record"
        );
        flip_bytes(&seg, at + 12, 1);
        assert!(
            !record_of(&seg, record).head_has(HEAD_TEXT),
            "the head was not damaged"
        );
    });
}

/// The record at the same place as `record`, read again (after damage).
fn record_of(seg: &Path, record: &Record) -> Record {
    let cache = seg
        .parent()
        .and_then(Path::parent)
        .expect("<cache>/segments/<slot>.seg");
    records(cache)
        .into_iter()
        .find(|r| r.seg == record.seg && r.offset == record.offset)
        .expect("the record is still framed")
}

/// `payload(CORRUPT_OBJECT)` and the origin's counter `#n`.
fn payload_with_counter(n: usize) -> Vec<u8> {
    let mut b = payload(CORRUPT_OBJECT);
    b.extend_from_slice(format!("#{n}").as_bytes());
    b
}

// ---------------------------------------------------------------------------------------------
// The byte limit
// ---------------------------------------------------------------------------------------------

#[test]
fn disk_limit_respected_after_writing_three_times_its_size() {
    const DISK_SIZE: u64 = 1024 * 1024;
    const OBJECT: usize = 32 * 1024;
    const COUNT: usize = 96; // 96 x 32 KiB = 3 MiB: three times the tier
    const RECENT: usize = 4; // the newest objects that must survive
    let origin = TestOrigin::start();
    for i in 0..COUNT {
        let mut body = payload(OBJECT);
        body[..8].copy_from_slice(format!("{i:08}").as_bytes());
        origin.set(&format!("/fill/{i}"), cacheable(body));
    }
    // per-object limits well below the tiers' capacities, so each tier holds many objects
    let cfg = NodeConfig::new(&origin.url()).cache(
        "disk_size = \"1MiB\"\ndisk_max_object_size = \"64KiB\"\n\
         memory_size = \"1MiB\"\nmax_object_size = \"64KiB\"",
    );
    let node = cfg.start();

    // Start at the beginning of a wall-clock second, so that most writes share a second: a
    // recency order kept in whole seconds must still tell them apart.
    let sub = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::thread::sleep(Duration::from_nanos(1_000_000_000 - u64::from(sub)));
    let fill_start = Instant::now();
    for i in 0..COUNT {
        let r = fetch_ok(&node, &format!("/fill/{i}"));
        assert_eq!(r.status, 200, "/fill/{i}");
        assert_eq!(r.body.len(), OBJECT, "/fill/{i} served whole");
        assert_eq!(&r.body[..8], format!("{i:08}").as_bytes(), "/fill/{i} body");
    }

    let fill_time = fill_start.elapsed();

    // Wait for the background writes to drain: the gauges unchanged for a second.
    let start = Instant::now();
    let mut last = (-1.0, -1.0);
    let mut stable_since = Instant::now();
    let (objects, bytes) = loop {
        let m = node.metrics();
        let cur = (
            metric_sum(&m, DISK_OBJECTS, &[]),
            metric_sum(&m, DISK_BYTES, &[]),
        );
        if cur != last {
            last = cur;
            stable_since = Instant::now();
        } else if cur.0 > 0.0 && stable_since.elapsed() >= Duration::from_secs(1) {
            break cur;
        }
        if start.elapsed() > WAIT {
            panic!(
                "disk tier gauges did not settle within {WAIT:?}: objects {}, bytes {}\n\
                 --- log (tail) ---\n{}",
                cur.0,
                cur.1,
                node.log_tail(60)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    let m = node.metrics();
    let capacity = metric_sum(&m, DISK_CAPACITY, &[]);
    assert_eq!(capacity, DISK_SIZE as f64, "{DISK_CAPACITY}");
    assert!(
        bytes <= DISK_SIZE as f64,
        "disk tier holds {bytes} bytes, over its {DISK_SIZE}-byte limit"
    );
    assert!(
        objects > 0.0 && objects < COUNT as f64,
        "{objects} objects on disk after {COUNT} x {OBJECT} bytes into {DISK_SIZE} bytes"
    );
    let evictions = metric_sum(&m, EVICTIONS, DISK);
    assert!(
        evictions > 0.0,
        "{COUNT} x {OBJECT} bytes into {DISK_SIZE} bytes, yet {EVICTIONS}{{tier=\"disk\"}} = {evictions}"
    );
    // The tier's files: a ring of preallocated segments whose slots times size is at most
    // disk_size, `du` of segments/ within it. The ring came round (files were replaced, never
    // added), and the rest of the cache directory (its directories, the lock, the directory
    // checkpoint of a few dozen 16-byte entries) is a few blocks.
    let cache = cache_dir(&cfg);
    const OVERHEAD: u64 = 64 * 1024;
    let check_files = |when: &str| {
        let segs = assert_segments(&cache, DISK_SIZE, when);
        let (first, last) = (&segs[0], &segs[segs.len() - 1]);
        assert!(
            last.gen > first.slots,
            "{when}: {COUNT} x {OBJECT} bytes into a ring of {} x {} bytes, yet the newest \
             segment is generation {}",
            first.slots,
            first.size,
            last.gen
        );
        let total = du(&cache);
        assert!(
            total <= DISK_SIZE + OVERHEAD,
            "{when}: the cache directory takes {total} bytes of disk, over disk_size {DISK_SIZE} \
             + {OVERHEAD}:\n{}",
            listing(&cache)
        );
        let stored: std::collections::BTreeSet<u128> = records(&cache)
            .into_iter()
            .filter(|r| r.kind == Kind::Object)
            .map(|r| r.key)
            .collect();
        assert!(
            !stored.is_empty() && stored.len() < COUNT,
            "{when}: {} objects in the segment files",
            stored.len()
        );
        stored.len()
    };
    check_files("while running");

    stop_ok(node, "filled node");
    let stored = check_files("after the graceful stop");

    // The most recently written objects survived the evictions and the restart: the last one,
    // and the three before it (128 KiB of a 1 MiB tier; any recency-based policy keeps them).
    let node = cfg.start();
    for (n, i) in (COUNT - RECENT..COUNT).rev().enumerate() {
        let path = format!("/fill/{i}");
        let r = fetch_ok(&node, &path);
        assert_hit(
            &r,
            &format!(
                "{path} (written {} of {COUNT}, all within {fill_time:?}) after a restart; \
                 {stored} objects were in the segment files",
                i + 1,
            ),
        );
        assert_eq!(&r.body[..8], format!("{i:08}").as_bytes(), "{path} body");
        assert_eq!(r.body.len(), OBJECT, "{path} body length");
        assert_eq!(
            origin.hits(&path),
            1,
            "{path} refetched ({n} newer ones were hits)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Disk faults
// ---------------------------------------------------------------------------------------------

#[test]
fn unusable_cache_dir_at_start_still_serves() {
    let origin = TestOrigin::start();
    origin.set("/a", cacheable(payload(10_000)));
    origin.set("/b", cacheable("bee"));
    let cfg = NodeConfig::new(&origin.url());
    // A regular file where the cache directory's parent should be: even root cannot create it.
    let blocker = cfg.dir().join("not-a-directory");
    fs::write(&blocker, "a regular file").unwrap();
    let unusable = blocker.join("cache");
    let cfg = cfg.cache(&format!("dir = \"{}\"", unusable.display()));
    let node = cfg.start();

    let r = fetch_ok(&node, "/a");
    assert_eq!(r.status, 200);
    assert!(r.body == payload(10_000), "/a body");
    let r = fetch_ok(&node, "/b");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "bee");

    // The memory tier still works.
    let r = fetch_ok(&node, "/a");
    assert_eq!(r.status, 200);
    assert!(r.body == payload(10_000), "/a body on the second request");
    assert_hit(&r, "/a from memory with an unusable cache dir");
    assert_eq!(origin.hits("/a"), 1);

    wait_metric(
        &node,
        WRITE_ERRORS,
        &[],
        |v| v > 0.0,
        WAIT,
        "misses with an unusable cache dir count disk write errors",
    );
    assert!(!unusable.exists());
    assert!(node.try_wait().is_none(), "node exited");
}

#[test]
fn cache_dir_removed_at_runtime_keeps_serving_and_recovers() {
    let origin = TestOrigin::start();
    origin.set("/a", cacheable(payload(20_000)));
    let later = |i: usize| format!("later object {i}").into_bytes();
    for i in 0..200 {
        origin.set(&format!("/later/{i}"), cacheable(later(i)));
    }
    let cfg = NodeConfig::new(&origin.url());
    let cache = cache_dir(&cfg);
    let node = cfg.start();

    let r = fetch_ok(&node, "/a");
    assert_eq!(r.status, 200);
    wait_disk_objects(&node, 1, WAIT, "/a written to disk");
    assert_layout(&cache, DEFAULT_DISK_SIZE, 1, "before the removal");

    fs::remove_dir_all(&cache).expect("remove the cache dir");
    assert!(!cache.exists());

    let r = fetch_ok(&node, "/a");
    assert_eq!(r.status, 200, "/a after the cache dir was removed");
    assert!(r.body == payload(20_000), "/a body after the removal");

    // The objects in the segment files, each checked to be a /later/<i> object with its body.
    let written = |cache: &Path| -> Vec<usize> {
        records(cache)
            .into_iter()
            .filter(|r| r.kind == Kind::Object)
            .map(|r| {
                let i = (0..200)
                    .find(|i| r.is_for(&format!("/later/{i}")))
                    .unwrap_or_else(|| panic!("a record of another object: {r:?}"));
                assert!(r.body() == later(i), "/later/{i}: the record's body");
                i
            })
            .collect()
    };

    // New objects are served, and before long written to disk again.
    let start = Instant::now();
    let mut i = 0;
    while written(&cache).is_empty() {
        if start.elapsed() > WAIT || i == 200 {
            panic!(
                "no object written under {}/segments within {WAIT:?} ({i} new objects served \
                 after the removal):\n{}\n--- log (tail) ---\n{}",
                cache.display(),
                listing(&cache),
                node.log_tail(60)
            );
        }
        let path = format!("/later/{i}");
        let r = fetch_ok(&node, &path);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.body == later(i), "{path}: body {:?}", r.text());
        i += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let served = i;
    // Still serving what it has.
    let r = fetch_ok(&node, "/a");
    assert_eq!(r.status, 200);
    assert!(r.body == payload(20_000));

    // What was written after the recovery is a real, readable entry.
    stop_ok(node, "recovered node");
    assert_segments(&cache, DEFAULT_DISK_SIZE, "after the recovery");
    assert!(!written(&cache).is_empty());
    let hits_before = origin.total_hits();
    let node = cfg.start();
    let mut disk_hits = 0;
    for i in 0..served {
        let path = format!("/later/{i}");
        let r = fetch_ok(&node, &path);
        assert_eq!(r.status, 200, "{path} after the restart");
        assert!(r.body == later(i), "{path} after the restart");
        if cs_has(&r.cache_status(), "hit") {
            disk_hits += 1;
        }
    }
    assert!(
        disk_hits >= 1,
        "none of the {served} objects served after the removal was a hit after a restart \
         ({} origin requests)",
        origin.total_hits() - hits_before
    );
}

// ---------------------------------------------------------------------------------------------
// Tier modes
// ---------------------------------------------------------------------------------------------

#[test]
fn disk_only_tier_serves_hits_from_disk() {
    let origin = TestOrigin::start();
    let body = payload(30_000);
    origin.set("/d", cacheable(body.clone()).body_counter());
    let mut expected = body.clone();
    expected.extend_from_slice(b"#1");
    let cfg = NodeConfig::new(&origin.url()).cache("tiers = \"disk\"");
    let node = cfg.start();

    let r = fetch_ok(&node, "/d");
    assert_eq!(r.status, 200);
    assert_stored_miss(&r, "/d first request");
    wait_disk_objects(&node, 1, WAIT, "/d written to disk");
    let record = assert_layout(&cache_dir(&cfg), DEFAULT_DISK_SIZE, 1, "disk-only tier").remove(0);
    assert!(record.is_for("/d"), "the record is not /d's: {record:?}");
    assert!(record.body() == expected, "/d's record holds another body");

    let before = metric(&node, TIER_HITS, DISK);
    let r = fetch_ok(&node, "/d");
    assert_eq!(r.status, 200);
    assert_hit(&r, "/d second request, disk-only");
    assert!(r.body == expected, "/d body served from disk");
    assert_eq!(origin.hits("/d"), 1, "/d refetched");

    let m = node.metrics();
    let after = metric_sum(&m, TIER_HITS, DISK);
    assert!(
        after >= before + 1.0,
        "a disk-only hit, yet {TIER_HITS}{{tier=\"disk\"}} went {before} -> {after}"
    );
    for (name, labels) in [
        (TIER_HITS, MEMORY),
        (PROMOTIONS, &[][..]),
        ("outpost_cache_memory_objects", &[][..]),
    ] {
        let v = metric_sum(&m, name, labels);
        assert_eq!(v, 0.0, "no memory tier, yet {name}{labels:?} = {v}");
    }
}

#[test]
fn memory_only_tier_writes_nothing_to_disk() {
    let origin = TestOrigin::start();
    origin.set("/m1", cacheable(payload(40_000)).body_counter());
    origin.set("/m2", cacheable("small").body_counter());
    let cfg = NodeConfig::new(&origin.url()).cache("tiers = \"memory\"");
    let cache = cache_dir(&cfg);
    let node = cfg.start();

    for path in ["/m1", "/m2"] {
        let r = fetch_ok(&node, path);
        assert_eq!(r.status, 200);
        assert_stored_miss(&r, path);
        let r = fetch_ok(&node, path);
        assert_hit(&r, &format!("{path} from memory"));
    }
    let memory_hits = metric(&node, TIER_HITS, MEMORY);
    assert!(
        memory_hits >= 2.0,
        "{TIER_HITS}{{tier=\"memory\"}} = {memory_hits}"
    );

    // Give a (wrongly) running disk writer time, then flush it with a graceful stop.
    std::thread::sleep(Duration::from_millis(1000));
    let m = node.metrics();
    for (name, labels) in [(DISK_OBJECTS, &[][..]), (TIER_HITS, DISK)] {
        let v = metric_sum(&m, name, labels);
        assert_eq!(v, 0.0, "tiers = \"memory\", yet {name}{labels:?} = {v}");
    }
    stop_ok(node, "memory-only node");
    let written: Vec<_> = segment_files(&cache)
        .into_iter()
        .chain(files_under(&cache.join("objects")))
        .collect();
    assert!(
        written.is_empty() && !cache.join("directory").exists(),
        "tiers = \"memory\" wrote disk tier files:\n{}",
        listing(&cache)
    );

    // Nothing persisted: after a restart the objects come from the origin again.
    let node = cfg.start();
    let r = fetch_ok(&node, "/m2");
    assert_eq!(r.text(), "small#2");
    assert_not_served_from_cache(&r, "/m2 after a memory-only restart");
    assert_eq!(origin.hits("/m2"), 2);
}

#[test]
fn disk_hit_is_promoted_to_memory() {
    let origin = TestOrigin::start();
    let body = payload(24 * 1024);
    origin.set("/p", cacheable(body.clone()));
    let cfg = NodeConfig::new(&origin.url());
    let node = cfg.start();

    let r = fetch_ok(&node, "/p");
    assert_stored_miss(&r, "/p first request");
    wait_disk_objects(&node, 1, WAIT, "/p written to disk");
    stop_ok(node, "first node");

    let node = cfg.start();
    let m0 = node.metrics();
    let disk0 = metric_sum(&m0, TIER_HITS, DISK);
    let mem0 = metric_sum(&m0, TIER_HITS, MEMORY);

    // First request after the restart: memory is empty, the hit comes from disk.
    let r = fetch_ok(&node, "/p");
    assert_hit(&r, "/p first request after the restart");
    assert!(r.body == body, "/p body from disk");
    let m1 = node.metrics();
    let disk1 = metric_sum(&m1, TIER_HITS, DISK);
    let mem1 = metric_sum(&m1, TIER_HITS, MEMORY);
    assert!(
        disk1 >= disk0 + 1.0 && mem1 == mem0,
        "first request after restart: disk hits {disk0} -> {disk1}, memory hits {mem0} -> {mem1}; \
         expected one disk hit and no memory hit"
    );
    wait_metric(
        &node,
        PROMOTIONS,
        &[],
        |v| v >= 1.0,
        WAIT,
        "the disk hit copied into memory",
    );
    wait_metric(
        &node,
        "outpost_cache_memory_objects",
        &[],
        |v| v >= 1.0,
        WAIT,
        "the promoted object in the memory tier",
    );

    // Second request: from memory.
    let m2 = node.metrics();
    let disk2 = metric_sum(&m2, TIER_HITS, DISK);
    let mem2 = metric_sum(&m2, TIER_HITS, MEMORY);
    let r = fetch_ok(&node, "/p");
    assert_hit(&r, "/p second request after the restart");
    assert!(r.body == body, "/p body from memory");
    let m3 = node.metrics();
    let disk3 = metric_sum(&m3, TIER_HITS, DISK);
    let mem3 = metric_sum(&m3, TIER_HITS, MEMORY);
    assert!(
        mem3 == mem2 + 1.0 && disk3 == disk2,
        "second request after restart: memory hits {mem2} -> {mem3}, disk hits {disk2} -> {disk3}; \
         expected one memory hit and no disk hit"
    );
    assert_eq!(origin.hits("/p"), 1, "/p refetched");
}
