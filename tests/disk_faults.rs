//! A cache directory that is read-only (not removed): at runtime, at start-up, and with objects
//! already on it. The node keeps serving every request correctly from memory and origin, counts
//! the failed disk writes, and writes again once the directory is writable.
//!
//! Root ignores file permissions, so the directory is made read-only with a bind mount of itself
//! (`mount --bind DIR DIR`, then `mount -o remount,bind,ro DIR`). Where mounting is not
//! permitted (not root, or a container without CAP_SYS_ADMIN) each test prints
//! `skipped: <reason>` to stderr and passes.
mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Deadline for background work (disk writes, error counters) to show up in the metrics.
const WAIT: Duration = Duration::from_secs(10);

const DISK_OBJECTS: &str = "outpost_cache_disk_objects";
const WRITE_ERRORS: &str = "outpost_cache_disk_write_errors_total";
const WRITES_DROPPED: &str = "outpost_cache_disk_writes_dropped_total";
const TIER_HITS: &str = "outpost_cache_tier_hits_total";
const DISK: &[(&str, &str)] = &[("tier", "disk")];

/// What the disk writer logs (at most every 10 s) when a write fails.
const WRITE_FAILED_LOG: &str = "disk tier write failed";

/// Runs `program args`, returning its stderr on failure.
fn run(program: &str, args: &[&OsStr]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        ))
    }
}

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
    /// writing, so a refusal is retried for a while (a disk write may be in flight).
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

/// The `.body` files under `<cache>/objects/*/`, sorted.
fn body_files(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(shards) = fs::read_dir(cache.join("objects")) else {
        return out;
    };
    for shard in shards.flatten() {
        let Ok(files) = fs::read_dir(shard.path()) else {
            continue;
        };
        for f in files.flatten() {
            if f.path().extension().and_then(|x| x.to_str()) == Some("body") {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

fn stop_ok(node: Node, what: &str) {
    let status = node.stop();
    assert!(
        status.success(),
        "{what}: graceful stop exited with {status}\n--- log (tail) ---\n{}",
        node.log_tail(60)
    );
}

/// The write-failure log lines are rate limited: at most one per started 10 s.
fn assert_write_failures_logged_sparingly(node: &Node, since: Instant, what: &str) {
    let log = node.log();
    let lines = log.lines().filter(|l| l.contains(WRITE_FAILED_LOG)).count();
    let allowed = 1 + since.elapsed().as_secs() as usize / 10;
    assert!(
        (1..=allowed).contains(&lines),
        "{what}: {lines} log lines {WRITE_FAILED_LOG:?} within {:?} (expected 1..={allowed})\n\
         --- log (tail) ---\n{}",
        since.elapsed(),
        node.log_tail(40)
    );
}

#[test]
fn cache_dir_read_only_at_runtime_keeps_serving_counts_write_errors_and_recovers() {
    require_mount!();
    const RO_OBJECTS: usize = 12;
    let origin = TestOrigin::start();
    let warm = body_for("warm", 30_000);
    origin.set("/warm", cacheable(warm.clone()));
    for i in 0..RO_OBJECTS {
        let p = format!("/ro/{i}");
        origin.set(&p, cacheable(body_for(&p, 5_000 + i)));
    }
    let later = body_for("later", 20_000);
    origin.set("/later", cacheable(later.clone()));

    let cfg = NodeConfig::new(&origin.url());
    let cache = cfg.dir().join("cache");
    fs::create_dir_all(&cache).unwrap();
    // Declared before the node: unmounted after the node is gone.
    let mount = BindMount::new(&cache).expect("bind mount (checked on a scratch dir)");
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
    assert_eq!(body_files(&cache).len(), 1, "object files before the fault");
    assert_eq!(metric(&node, WRITE_ERRORS, &[]), 0.0, "write errors before");

    mount.read_only();
    assert_read_only(&cache);
    let fault_start = Instant::now();

    // Every request is served correctly: new objects from the origin (and stored in memory),
    // then from memory; the object cached before the fault from memory.
    for i in 0..RO_OBJECTS {
        let p = format!("/ro/{i}");
        let want = body_for(&p, 5_000 + i);
        let r = get_exact(&node, &p, &want, "read-only dir, first request");
        assert_stored_miss(&r, &format!("{p} with a read-only cache dir"));
        let r = get_exact(&node, &p, &want, "read-only dir, second request");
        assert_hit(&r, &format!("{p} again with a read-only cache dir"));
        let r = get_exact(&node, "/warm", &warm, "read-only dir");
        assert_hit(&r, "/warm with a read-only cache dir");
    }
    for i in 0..RO_OBJECTS {
        assert_eq!(origin.hits(&format!("/ro/{i}")), 1, "/ro/{i} refetched");
    }
    assert_eq!(origin.hits("/warm"), 1, "/warm refetched");

    // Each of the fills failed to reach the disk, and was counted.
    let errors = wait_metric(
        &node,
        WRITE_ERRORS,
        &[],
        |v| v >= RO_OBJECTS as f64,
        WAIT,
        "one write error per fill while the dir is read-only",
    );
    let m = node.metrics();
    assert_eq!(
        metric_sum(&m, WRITES_DROPPED, &[]),
        0.0,
        "the failed writes were tried, not dropped"
    );
    assert_eq!(
        metric_sum(&m, DISK_OBJECTS, &[]),
        1.0,
        "disk objects while read-only"
    );
    assert_eq!(body_files(&cache).len(), 1, "object files while read-only");
    assert_write_failures_logged_sparingly(&node, fault_start, "while read-only");
    assert!(node.try_wait().is_none(), "the node exited");

    // Writable again: the next fill lands on disk, with no new errors.
    mount.read_write();
    let r = get_exact(&node, "/later", &later, "after recovery");
    assert_stored_miss(&r, "/later after recovery");
    wait_metric(
        &node,
        DISK_OBJECTS,
        &[],
        |v| v >= 2.0,
        WAIT,
        "the first fill after the dir became writable again written to disk",
    );
    assert_eq!(
        body_files(&cache).len(),
        2,
        "object files after recovery: {:?}",
        body_files(&cache)
    );
    assert_eq!(
        metric(&node, WRITE_ERRORS, &[]),
        errors,
        "write errors after the dir became writable again"
    );
    let r = get_exact(&node, "/warm", &warm, "after recovery");
    assert_hit(&r, "/warm after recovery");

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
    // The fills of the read-only period never reached the disk; served right all the same.
    for i in 0..RO_OBJECTS {
        let p = format!("/ro/{i}");
        get_exact(&node, &p, &body_for(&p, 5_000 + i), "after a restart");
    }
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

    let errors = wait_metric(
        &node,
        WRITE_ERRORS,
        &[],
        |v| v >= 2.0,
        WAIT,
        "both fills' writes failed on the read-only dir",
    );
    assert!(
        files_under(&cache).is_empty(),
        "files in the read-only dir: {:?}",
        files_under(&cache)
    );
    assert_write_failures_logged_sparingly(&node, fault_start, "read-only at start");
    assert!(node.try_wait().is_none(), "the node exited");

    // Writable: the tier creates its directories and writes the next fill.
    mount.read_write();
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
    assert_eq!(
        body_files(&cache).len(),
        1,
        "object files after recovery: {:?}",
        files_under(&cache)
    );
    assert_eq!(metric(&node, WRITE_ERRORS, &[]), errors);
    stop_ok(node, "recovered node");
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
    let before = files_under(&cache);

    let mount = BindMount::new(&cache).expect("bind mount (checked on a scratch dir)");
    mount.read_only();
    let node = cfg.start();
    for (p, b) in &objects {
        let r = get_exact(&node, p, b, "read-only dir with objects");
        assert_hit(&r, &format!("{p} from the read-only disk tier"));
    }
    assert!(metric(&node, TIER_HITS, DISK) >= objects.len() as f64);
    for (p, _) in &objects {
        assert_eq!(origin.hits(p), 1, "{p} refetched");
    }
    // A new object is served (and its write fails, counted); the old files are untouched.
    get_exact(&node, "/fresh", &fresh, "new object, read-only dir");
    get_exact(&node, "/fresh", &fresh, "new object again, read-only dir");
    assert_eq!(origin.hits("/fresh"), 1);
    wait_metric(
        &node,
        WRITE_ERRORS,
        &[],
        |v| v >= 1.0,
        WAIT,
        "the new object's write failed",
    );
    assert_eq!(
        metric(&node, "outpost_cache_disk_corrupt_total", &[]),
        0.0,
        "read-only entries taken for corrupt"
    );
    assert!(node.try_wait().is_none(), "the node exited");
    drop(node);
    assert_eq!(
        files_under(&cache),
        before,
        "files changed on a read-only dir"
    );
}
