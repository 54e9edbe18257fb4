//! Helpers for tests that look at the disk tier: its files, its writes landing, restarts.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{wait_metric, Node};

/// Every regular file under `dir`, recursively, sorted (none if `dir` does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&e.path())),
            Ok(t) if t.is_file() => out.push(e.path()),
            _ => {}
        }
    }
    out.sort();
    out
}

/// The files `<cache>/objects/*/*.<ext>` (`head` or `body`), sorted.
pub fn object_files(cache: &Path, ext: &str) -> Vec<PathBuf> {
    files_under(&cache.join("objects"))
        .into_iter()
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some(ext))
        .collect()
}

/// Waits (at most `limit`) until the disk tier reports at least `n` objects: the background
/// writes have landed.
pub fn wait_disk_objects(node: &Node, n: usize, limit: Duration, what: &str) {
    wait_metric(
        node,
        "outpost_cache_disk_objects",
        &[],
        |v| v >= n as f64,
        limit,
        what,
    );
}

/// Graceful stop that must succeed.
pub fn stop_ok(node: Node, what: &str) {
    let status = node.stop();
    assert!(
        status.success(),
        "{what}: graceful stop exited with {status}\n--- log (tail) ---\n{}",
        node.log_tail(60)
    );
}
