//! Disk faults that are not a removed directory: a cache directory read-only at start-up (empty,
//! or with objects on it), and a disk that fills up at runtime. The node keeps serving every
//! request correctly from memory and origin, counts the failed disk writes and the writes it
//! drops, and writes again once the disk is usable.
//!
//! Root ignores file permissions, so the directory is made read-only with a bind mount of itself
//! (`mount --bind DIR DIR`, then `mount -o remount,bind,ro DIR`), and a disk that fills up is a
//! small tmpfs mounted on the cache directory. Where mounting is not permitted (not root, or a
//! container without CAP_SYS_ADMIN) each test prints `skipped: <reason>` to stderr and passes.
//!
//! The disk tier keeps its segment files open for writing while it runs, so a read-only remount
//! of its directory at runtime is refused (EBUSY): read-only only happens at start-up. Its
//! segment files are preallocated, so a full disk shows when a segment is created: the creation
//! fails (a write error, counted once per retry, every second) and writes are dropped (counted
//! in `outpost_cache_disk_writes_dropped_total`) until a segment can be created again.
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::disk::{
    assert_segments, listing, only_record_for, records, run, segment_files, Kind, SmallDisk,
};
use common::*;

/// Deadline for background work (disk writes, error counters) to show up in the metrics.
const WAIT: Duration = Duration::from_secs(10);

const DISK_OBJECTS: &str = "outpost_cache_disk_objects";
const CORRUPT: &str = "outpost_cache_disk_corrupt_total";
const WRITE_ERRORS: &str = "outpost_cache_disk_write_errors_total";
const WRITES_DROPPED: &str = "outpost_cache_disk_writes_dropped_total";
const TIER_HITS: &str = "outpost_cache_tier_hits_total";
const DISK: &[(&str, &str)] = &[("tier", "disk")];

/// What the disk tier logs when a write fails: a segment or an object not written, or a
/// checkpoint. Each is a write fault, logged at most once per 10 s in all.
const WRITE_FAILED_LOGS: [&str; 2] = ["disk tier write failed", "disk tier checkpoint failed"];

/// `dir` bind-mounted onto itself, so that it can be remounted read-only and back. Unmounted on
/// drop (also when a test panics), lazily if it is busy.
struct BindMount {
    dir: PathBuf,
}

impl BindMount {
    fn new(dir: &Path) -> Result<BindMount, String> {
        run(
            "mount",
            &["--bind".as_ref(), dir.as_os_str(), dir.as_os_str()],
        )?;
        Ok(BindMount {
            dir: dir.to_path_buf(),
        })
    }

    fn remount(&self, mode: &str) -> Result<(), String> {
        let opts = format!("remount,bind,{mode}");
        run(
            "mount",
            &["-o".as_ref(), opts.as_ref(), self.dir.as_os_str()],
        )
    }

    /// Remounts read-only. The kernel refuses (EBUSY) while a file on the mount is open for
    /// writing (a node running on it holds its segment files open): a refusal is retried for a
    /// while, for a process that is exiting.
    fn read_only(&self) {
        let start = Instant::now();
        loop {
            match self.remount("ro") {
                Ok(()) => return,
                Err(e) if start.elapsed() > WAIT => {
                    panic!("remount {} read-only: {e}", self.dir.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn read_write(&self) {
        self.remount("rw")
            .unwrap_or_else(|e| panic!("remount {} read-write: {e}", self.dir.display()));
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        if run("umount", &[self.dir.as_os_str()]).is_err() {
            let _ = run("umount", &["-l".as_ref(), self.dir.as_os_str()]);
        }
    }
}

/// Whether a read-only bind mount can be made here: tried on a scratch directory.
fn mount_capability() -> Result<(), String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let mount = BindMount::new(scratch.path())?;
    mount.remount("ro")?;
    let probe = scratch.path().join("probe");
    match fs::write(&probe, "x") {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
        Err(e) => return Err(format!("a read-only bind mount gave {e}, not EROFS")),
        Ok(()) => return Err("a file was written on a read-only bind mount".to_string()),
    }
    mount.remount("rw")?;
    fs::write(&probe, "x").map_err(|e| format!("write after remounting read-write: {e}"))?;
    Ok(())
}

/// Returns early from the test (passing) with `skipped: <reason>` when mounting is not possible.
macro_rules! require_mount {
    () => {
        if let Err(why) = mount_capability() {
            eprintln!("skipped: cannot make a read-only bind mount here: {why}");
            return;
        }
    };
}

/// Asserts that `dir` refuses new files with EROFS (the mount really is read-only).
fn assert_read_only(dir: &Path) {
    let probe = dir.join("probe-write");
    match fs::write(&probe, "x") {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
        other => panic!(
            "{} should be read-only, writing a file gave {other:?}",
            dir.display()
        ),
    }
}

fn cacheable(body: impl Into<Vec<u8>>) -> Reply {
    Reply::ok(body)
        .header("Cache-Control", "max-age=600")
        .header("Content-Type", "application/octet-stream")
}

/// A body distinct per `name` (so mix-ups show), `len` bytes.
fn body_for(name: &str, len: usize) -> Vec<u8> {
    let mut b = payload(len);
    let tag = format!("<{name}>");
    b[..tag.len()].copy_from_slice(tag.as_bytes());
    b
}

/// GET `path`, read to the end; asserts a 200 with exactly `want` (never a 5xx or a truncated
/// body). Returns the response.
fn get_exact(node: &Node, path: &str, want: &[u8], what: &str) -> Fetched {
    let r = try_fetch(node.client().get(node.url(path)).send()).unwrap_or_else(|e| {
        panic!(
            "{what}: GET {path}: {e}\n--- log (tail) ---\n{}",
            node.log_tail(60)
        )
    });
    assert_eq!(
        r.status,
        200,
        "{what}: GET {path} (Cache-Status {:?}): {}\n--- log (tail) ---\n{}",
        r.cache_status(),
        r.text(),
        node.log_tail(40)
    );
    assert!(
        r.body == want,
        "{what}: GET {path}: {} bytes that are not the object's {} (Cache-Status {:?})",
        r.body.len(),
        want.len(),
        r.cache_status()
    );
    r
}

fn metric(node: &Node, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(&node.metrics(), name, labels)
}

/// The write-failure log lines are rate limited: at most one per started 10 s.
fn assert_write_failures_logged_sparingly(node: &Node, since: Instant, what: &str) {
    let log = node.log();
    let lines = log
        .lines()
        .filter(|l| WRITE_FAILED_LOGS.iter().any(|w| l.contains(w)))
        .count();
    let allowed = 1 + since.elapsed().as_secs() as usize / 10;
    assert!(
        (1..=allowed).contains(&lines),
        "{what}: {lines} log lines {WRITE_FAILED_LOGS:?} within {:?} (expected 1..={allowed})\n\
         --- log (tail) ---\n{}",
        since.elapsed(),
        node.log_tail(40)
    );
}

/// Whether a tmpfs can be mounted here, and fills up (ENOSPC): tried on a scratch directory.
fn tmpfs_capability() -> Result<(), String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let disk = SmallDisk::new(scratch.path(), 1 << 20)?;
    let filler = disk.fill_up();
    match fs::write(scratch.path().join("probe"), vec![1u8; 8192]) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {}
        other => return Err(format!("a full tmpfs gave {other:?}, not ENOSPC")),
    }
    fs::remove_file(filler).map_err(|e| format!("remove the filler: {e}"))?;
    fs::write(scratch.path().join("probe"), "x").map_err(|e| format!("write after: {e}"))?;
    Ok(())
}

/// Formerly "the cache directory read-only at runtime": the disk tier now holds its segment
/// files open for writing, so the kernel refuses to remount the directory read-only under it
/// (EBUSY) and that fault cannot happen to a running node any more. The runtime fault that
/// remains, and the closest to it, is a disk that fills up: segment files are preallocated, so
/// the node sees it when it needs a new segment (its creation fails with ENOSPC). This test
/// checks what the read-only one did: every request served correctly, the failures counted
/// (once per retry, every second, not once per request) and logged sparingly, every fill
/// either written or dropped and counted, and the disk written again once it has room.
#[test]
fn disk_full_at_runtime_keeps_serving_counts_write_errors_and_drops_and_recovers() {
    if let Err(why) = tmpfs_capability() {
        eprintln!("skipped: cannot mount a tmpfs here: {why}");
        return;
    }
    const FULL_OBJECTS: usize = 40;
    const DISK_SIZE: u64 = 8 << 20; // 8 segments of 1 MiB
    let origin = TestOrigin::start();
    let warm = body_for("warm", 30_000);
    origin.set("/warm", cacheable(warm.clone()));
    // 100 KB objects: the ones that still fit the segments made before the disk was full are
    // written, then the writer needs a new segment
    let full_body = |i: usize| body_for(&format!("/full/{i}"), 100_000 + i);
    for i in 0..FULL_OBJECTS {
        origin.set(&format!("/full/{i}"), cacheable(full_body(i)));
    }
    let later = body_for("later", 20_000);
    origin.set("/later", cacheable(later.clone()));

    let cfg = NodeConfig::new(&origin.url()).cache("disk_size = \"8MiB\"");
    let cache = cfg.dir().join("cache");
    fs::create_dir_all(&cache).unwrap();
    // Declared before the node: unmounted after the node is gone.
    let disk = SmallDisk::new(&cache, 32 << 20).expect("tmpfs (checked on a scratch dir)");
    let node = cfg.start();

    // Before the fault: a normal fill, written to disk.
    let r = get_exact(&node, "/warm", &warm, "before the fault");
    assert_stored_miss(&r, "/warm before the fault");
    wait_metric(
        &node,
        DISK_OBJECTS,
        &[],
        |v| v >= 1.0,
        WAIT,
        "/warm on disk",
    );
    assert!(only_record_for(&cache, "/warm").body() == warm);
    let m = node.metrics();
    assert_eq!(
        metric_sum(&m, WRITE_ERRORS, &[]),
        0.0,
        "write errors before"
    );
    assert_eq!(metric_sum(&m, WRITES_DROPPED, &[]), 0.0, "dropped before");
    let segments_before = segment_files(&cache);

    let filler = disk.fill_up();
    let fault_start = Instant::now();

    // Every request is served correctly: new objects from the origin (and stored in memory),
    // then from memory; the object cached before the fault from memory.
    for i in 0..FULL_OBJECTS {
        let p = format!("/full/{i}");
        let r = get_exact(&node, &p, &full_body(i), "disk full, first request");
        assert_stored_miss(&r, &format!("{p} with a full disk"));
        let r = get_exact(&node, &p, &full_body(i), "disk full, second request");
        assert_hit(&r, &format!("{p} again with a full disk"));
        let r = get_exact(&node, "/warm", &warm, "disk full");
        assert_hit(&r, "/warm with a full disk");
    }
    for i in 0..FULL_OBJECTS {
        assert_eq!(origin.hits(&format!("/full/{i}")), 1, "/full/{i} refetched");
    }
    assert_eq!(origin.hits("/warm"), 1, "/warm refetched");

    // The segment the writer needed could not be made: counted, and the fills that did not fit
    // the segments already made were dropped, each counted. Every fill was either written or
    // dropped: none is lost uncounted.
    wait_metric(
        &node,
        WRITE_ERRORS,
        &[],
        |v| v >= 1.0,
        WAIT,
        "the segment creation failing on the full disk",
    );
    let accounted = |m: &str| metric_sum(m, DISK_OBJECTS, &[]) + metric_sum(m, WRITES_DROPPED, &[]);
    let start = Instant::now();
    let m = loop {
        let m = node.metrics();
        if accounted(&m) == (1 + FULL_OBJECTS) as f64 || start.elapsed() > WAIT {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (objects, dropped) = (
        metric_sum(&m, DISK_OBJECTS, &[]),
        metric_sum(&m, WRITES_DROPPED, &[]),
    );
    assert_eq!(
        objects + dropped,
        (1 + FULL_OBJECTS) as f64,
        "{objects} objects on disk and {dropped} writes dropped for {} fills",
        1 + FULL_OBJECTS
    );
    assert!(
        dropped >= 1.0 && objects < (1 + FULL_OBJECTS) as f64,
        "{objects} objects on disk, {dropped} writes dropped with a full disk"
    );
    // once per retry (every second), not once per request; a checkpoint failing adds one
    let errors = metric_sum(&m, WRITE_ERRORS, &[]);
    let secs = fault_start.elapsed().as_secs_f64();
    assert!(
        errors <= 2.0 + 1.5 * secs,
        "{errors} write errors within {secs:.1} s of a full disk ({dropped} writes dropped)"
    );
    assert_eq!(
        segment_files(&cache),
        segments_before,
        "segment files while the disk is full:\n{}",
        listing(&cache)
    );
    assert_write_failures_logged_sparingly(&node, fault_start, "disk full");
    assert!(node.try_wait().is_none(), "the node exited");

    // Room again: the next retry makes a segment, the next fill lands on disk, and the errors
    // and drops stop.
    fs::remove_file(&filler).expect("remove the filler");
    wait_until("a segment made after the disk had room again", WAIT, || {
        segment_files(&cache).len() > segments_before.len()
    });
    let m = node.metrics();
    let (errors, dropped) = (
        metric_sum(&m, WRITE_ERRORS, &[]),
        metric_sum(&m, WRITES_DROPPED, &[]),
    );
    let objects = metric_sum(&m, DISK_OBJECTS, &[]);
    let r = get_exact(&node, "/later", &later, "after recovery");
    assert_stored_miss(&r, "/later after recovery");
    wait_metric(
        &node,
        DISK_OBJECTS,
        &[],
        |v| v >= objects + 1.0,
        WAIT,
        "the first fill after the disk had room again written to disk",
    );
    assert!(only_record_for(&cache, "/later").body() == later);
    let r = get_exact(&node, "/warm", &warm, "after recovery");
    assert_hit(&r, "/warm after recovery");
    std::thread::sleep(Duration::from_millis(2500));
    let m = node.metrics();
    assert_eq!(
        metric_sum(&m, WRITE_ERRORS, &[]),
        errors,
        "write errors after the disk had room again"
    );
    assert_eq!(
        metric_sum(&m, WRITES_DROPPED, &[]),
        dropped,
        "writes dropped after the disk had room again"
    );
    assert_segments(&cache, DISK_SIZE, "after recovery");

    // What was written after the recovery is a real, readable entry: a disk hit after a restart.
    stop_ok(node, "recovered node");
    let node = cfg.start();
    for (path, body) in [("/later", &later), ("/warm", &warm)] {
        let r = get_exact(&node, path, body, "after a restart");
        assert_hit(&r, &format!("{path} from disk after a restart"));
    }
    assert!(metric(&node, TIER_HITS, DISK) >= 2.0);
    assert_eq!(origin.hits("/later"), 1);
    assert_eq!(origin.hits("/warm"), 1);
    // The fills of the full period, written or dropped: served right all the same.
    for i in 0..FULL_OBJECTS {
        let p = format!("/full/{i}");
        get_exact(&node, &p, &full_body(i), "after a restart");
    }
    assert_eq!(metric(&node, CORRUPT, &[]), 0.0);
    drop(node);
}

#[test]
fn cache_dir_read_only_at_start_serves_from_memory_and_origin_counts_errors_and_recovers() {
    require_mount!();
    let origin = TestOrigin::start();
    let a = body_for("a", 40_000);
    origin.set("/a", cacheable(a.clone()));
    origin.set("/b", cacheable("bee"));
    let c = body_for("c", 12_000);
    origin.set("/c", cacheable(c.clone()));

    let cfg = NodeConfig::new(&origin.url());
    let cache = cfg.dir().join("cache");
    fs::create_dir_all(&cache).unwrap();
    let mount = BindMount::new(&cache).expect("bind mount (checked on a scratch dir)");
    mount.read_only();
    assert_read_only(&cache);
    let fault_start = Instant::now();
    let node = cfg.start();

    let r = get_exact(&node, "/a", &a, "read-only at start");
    assert_stored_miss(&r, "/a, read-only at start");
    get_exact(&node, "/b", b"bee", "read-only at start");
    for _ in 0..3 {
        let r = get_exact(&node, "/a", &a, "read-only at start, again");
        assert_hit(&r, "/a from memory, read-only at start");
        let r = get_exact(&node, "/b", b"bee", "read-only at start, again");
        assert_hit(&r, "/b from memory, read-only at start");
    }
    assert_eq!(origin.hits("/a"), 1);
    assert_eq!(origin.hits("/b"), 1);

    // No segment can be made: that fails (counted once per retry, every second), and both
    // fills' writes are dropped (counted) as there is no segment to write them to.
    wait_metric(
        &node,
        WRITE_ERRORS,
        &[],
        |v| v >= 1.0,
        WAIT,
        "creating a segment failed on the read-only dir",
    );
    wait_metric(
        &node,
        WRITES_DROPPED,
        &[],
        |v| v >= 2.0,
        WAIT,
        "both fills' writes dropped on the read-only dir",
    );
    let m = node.metrics();
    let (errors, secs) = (
        metric_sum(&m, WRITE_ERRORS, &[]),
        fault_start.elapsed().as_secs_f64(),
    );
    assert!(
        errors <= 2.0 + 1.5 * secs,
        "{errors} write errors within {secs:.1} s of a read-only dir: more than one per retry"
    );
    assert_eq!(metric_sum(&m, DISK_OBJECTS, &[]), 0.0);
    assert!(
        files_under(&cache).is_empty(),
        "files in the read-only dir: {:?}",
        files_under(&cache)
    );
    assert_write_failures_logged_sparingly(&node, fault_start, "read-only at start");
    assert!(node.try_wait().is_none(), "the node exited");

    // Writable: at its next retry the tier creates its directories and a segment, and writes
    // the next fill; no more errors or drops.
    mount.read_write();
    wait_until("a segment made once the dir is writable", WAIT, || {
        !segment_files(&cache).is_empty()
    });
    let m = node.metrics();
    let (errors, dropped) = (
        metric_sum(&m, WRITE_ERRORS, &[]),
        metric_sum(&m, WRITES_DROPPED, &[]),
    );
    let r = get_exact(&node, "/c", &c, "after the dir became writable");
    assert_stored_miss(&r, "/c after the dir became writable");
    wait_metric(
        &node,
        DISK_OBJECTS,
        &[],
        |v| v >= 1.0,
        WAIT,
        "the first fill after the dir became writable written to disk",
    );
    let written: Vec<_> = records(&cache)
        .into_iter()
        .filter(|r| r.kind == Kind::Object)
        .collect();
    assert!(
        written.len() == 1 && written[0].is_for("/c") && written[0].body() == c,
        "objects in the segment files after recovery: {written:?}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    let m = node.metrics();
    assert_eq!(metric_sum(&m, WRITE_ERRORS, &[]), errors, "write errors");
    assert_eq!(
        metric_sum(&m, WRITES_DROPPED, &[]),
        dropped,
        "writes dropped"
    );
    stop_ok(node, "recovered node");
    assert_segments(&cache, 1 << 30, "after recovery");
    let node = cfg.start();
    let r = get_exact(&node, "/c", &c, "after a restart");
    assert_hit(&r, "/c from disk after a restart");
    assert_eq!(origin.hits("/c"), 1);
    drop(node);
}

#[test]
fn read_only_cache_dir_with_objects_on_it_serves_them_as_disk_hits() {
    require_mount!();
    let origin = TestOrigin::start();
    let objects: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            let p = format!("/kept/{i}");
            let b = body_for(&p, 8_000 * (i + 1));
            (p, b)
        })
        .collect();
    for (p, b) in &objects {
        origin.set(p, cacheable(b.clone()));
    }
    let fresh = body_for("fresh", 9_000);
    origin.set("/fresh", cacheable(fresh.clone()));

    let cfg = NodeConfig::new(&origin.url());
    let cache = cfg.dir().join("cache");
    let node = cfg.start();
    for (p, b) in &objects {
        let r = get_exact(&node, p, b, "filling");
        assert_stored_miss(&r, p);
    }
    wait_metric(
        &node,
        DISK_OBJECTS,
        &[],
        |v| v >= objects.len() as f64,
        WAIT,
        "the fills on disk",
    );
    stop_ok(node, "filling node");
    assert_segments(&cache, 1 << 30, "filled");
    let before = contents(&cache);

    let mount = BindMount::new(&cache).expect("bind mount (checked on a scratch dir)");
    mount.read_only();
    assert_read_only(&cache);
    let node = cfg.start();
    for (p, b) in &objects {
        let r = get_exact(&node, p, b, "read-only dir with objects");
        assert_hit(&r, &format!("{p} from the read-only disk tier"));
    }
    assert!(metric(&node, TIER_HITS, DISK) >= objects.len() as f64);
    for (p, _) in &objects {
        assert_eq!(origin.hits(p), 1, "{p} refetched");
    }
    // A new object is served; no segment can be made for it (counted) and its write is
    // dropped (counted); the files are untouched.
    get_exact(&node, "/fresh", &fresh, "new object, read-only dir");
    get_exact(&node, "/fresh", &fresh, "new object again, read-only dir");
    assert_eq!(origin.hits("/fresh"), 1);
    wait_metric(
        &node,
        WRITE_ERRORS,
        &[],
        |v| v >= 1.0,
        WAIT,
        "creating a segment failed on the read-only dir",
    );
    wait_metric(
        &node,
        WRITES_DROPPED,
        &[],
        |v| v >= 1.0,
        WAIT,
        "the new object's write dropped",
    );
    assert_eq!(
        metric(&node, CORRUPT, &[]),
        0.0,
        "read-only entries taken for corrupt"
    );
    assert!(node.try_wait().is_none(), "the node exited");
    drop(node);
    assert!(
        contents(&cache) == before,
        "files changed on a read-only dir:\n{}",
        listing(&cache)
    );
}

/// Every file under `dir` with a checksum of its bytes.
fn contents(dir: &Path) -> Vec<(PathBuf, u64, u64)> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let data = fs::read(&p).expect("read");
            let hash = xxhash_rust::xxh3::xxh3_64(&data);
            (p, data.len() as u64, hash)
        })
        .collect()
}
