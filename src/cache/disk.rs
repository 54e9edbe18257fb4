//! The disk tier: a persistent, crash-safe, size-bounded object store.
//!
//! Layout under the cache directory:
//! - `objects/<aa>/<key>.body`: the body bytes, nothing else (so it can be sent as is);
//! - `objects/<aa>/<key>.head`: a checksummed record of the key, the body's length and
//!   checksum, and the stored head ([`super::entry`]);
//! - `tmp/`: files being written; emptied at start.
//!
//! Contracts:
//! - Crash safety: files are written under `tmp/` and renamed into place, body first, then head.
//!   Every read verifies the head's checksum and the body's length and checksum, so a crash or
//!   power cut at any point (renames reordered, a file cut short) yields a miss, never wrong
//!   bytes. A corrupt entry is deleted, counted, and refetched. No fsync is needed for that.
//! - Writes happen behind the response, on one writer thread fed by a bounded queue; until a
//!   write lands, lookups are answered from the queued object. A full queue drops the write.
//! - Size: the tier's files stay within `capacity` bytes; eviction removes the least recently
//!   used objects. Recency is the head file's mtime (refreshed on hits, at most once a minute
//!   per object), so it survives restarts.
//! - Start-up does not wait for the directory scan that rebuilds the index: until it finishes,
//!   lookups go straight to the file named by the key; eviction waits for the scan.
//! - Deleting never races a reader into wrong bytes: a reader holds whole files it read, and a
//!   replaced object's head is unlinked before its new body lands.
//! - Faults (disk full, permissions, directory removed) are counted and logged at most once per
//!   interval; the node keeps serving from memory and origin, and recreates its directories.
//! - Reads are synchronous on the request's thread and read the whole object (page-cache
//!   speed for hot files); streaming very large objects from disk is not done yet.

use crate::metrics::StorageMetrics;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

const MAGIC: &[u8; 4] = b"OPHD";
const FORMAT: u8 = 1;
/// magic 4 | format 1 | pad 3 | key 16 | body_len 8 | body_hash 8 | head_len 4 | record_hash 8
const RECORD: usize = 52;
const HASH_AT: usize = 44;
/// Queued write-behind bytes at most; a write beyond is dropped (counted).
const MAX_QUEUED_BYTES: u64 = 256 << 20;
/// Queued write-behind jobs at most.
const MAX_QUEUED_JOBS: usize = 4096;
/// A hit refreshes an object's recency when it is older than this (nanoseconds).
const TOUCH_INTERVAL: u64 = 60_000_000_000;
/// At most one log line per fault kind per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// An object read from (or queued for) the disk tier.
#[derive(Clone)]
pub struct DiskObject {
    /// The encoded head ([`super::entry::encode_head`]).
    pub head: Bytes,
    /// The whole body.
    pub body: Bytes,
}

impl DiskObject {
    /// Bytes it occupies in the write queue.
    fn size(&self) -> u64 {
        (self.head.len() + self.body.len()) as u64
    }
}

enum Job {
    Put { key: u128, seq: u64 },
    Head { key: u128, head: Bytes },
}

#[derive(Clone, Copy)]
struct Indexed {
    bytes: u64,
    /// Last write or (coarsely) last hit, nanoseconds since the Unix epoch.
    stamp: u64,
}

/// Which objects are on disk, their sizes, and their recency order.
#[derive(Default)]
struct Index {
    map: HashMap<u128, Indexed>,
    lru: BTreeSet<(u64, u128)>,
    bytes: u64,
}

impl Index {
    fn insert(&mut self, key: u128, bytes: u64, stamp: u64) {
        self.remove(key);
        self.map.insert(key, Indexed { bytes, stamp });
        self.lru.insert((stamp, key));
        self.bytes += bytes;
    }

    fn remove(&mut self, key: u128) -> bool {
        match self.map.remove(&key) {
            Some(old) => {
                self.lru.remove(&(old.stamp, key));
                self.bytes -= old.bytes;
                true
            }
            None => false,
        }
    }

    /// Refresh `key`'s recency if it is older than [`TOUCH_INTERVAL`]; true if refreshed.
    fn touch(&mut self, key: u128, now: u64) -> bool {
        match self.map.get_mut(&key) {
            Some(e) if now.saturating_sub(e.stamp) >= TOUCH_INTERVAL => {
                self.lru.remove(&(e.stamp, key));
                e.stamp = now;
                self.lru.insert((now, key));
                true
            }
            _ => false,
        }
    }

    fn oldest(&self) -> Option<u128> {
        self.lru.first().map(|(_, k)| *k)
    }
}

struct Pending {
    seq: u64,
    object: DiskObject,
}

/// The disk tier. Create with [`DiskTier::open`]; it starts its writer and scanner threads.
pub struct DiskTier {
    objects: PathBuf,
    tmp: PathBuf,
    capacity: u64,
    max_object: u64,
    index: Mutex<Index>,
    scanned: AtomicBool,
    pending: Mutex<HashMap<u128, Pending>>,
    drained: Condvar,
    queued_bytes: AtomicU64,
    next_seq: AtomicU64,
    queue: SyncSender<Job>,
    metrics: StorageMetrics,
    last_log: Mutex<HashMap<&'static str, Instant>>,
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn now_nanos() -> u64 {
    nanos(SystemTime::now())
}

fn mtime_nanos(meta: &fs::Metadata) -> u64 {
    meta.modified().map_or(0, nanos)
}

/// Why a stored entry could not be used.
enum ReadFailure {
    /// Not on disk.
    Missing,
    /// On disk but wrong: delete it.
    Corrupt(&'static str),
    /// The disk failed.
    Io(io::Error),
}

impl From<io::Error> for ReadFailure {
    fn from(e: io::Error) -> Self {
        if e.kind() == ErrorKind::NotFound {
            ReadFailure::Missing
        } else {
            ReadFailure::Io(e)
        }
    }
}

/// Build a head file: the checksummed record (vouching for a body of `body_len` bytes with
/// checksum `body_hash`) followed by the stored head.
fn head_file(key: u128, head: &[u8], body_len: u64, body_hash: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD + head.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[FORMAT, 0, 0, 0]);
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&body_hash.to_le_bytes());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(head);
    let hash = record_hash(&out);
    out[HASH_AT..RECORD].copy_from_slice(&hash.to_le_bytes());
    out
}

fn record_hash(file: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&file[..HASH_AT]);
    h.update(&file[RECORD..]);
    h.digest()
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// A verified head file: the stored head and the body it vouches for.
struct HeadRecord {
    head: Bytes,
    body_len: u64,
    body_hash: u64,
}

fn parse_head_file(key: u128, file: Bytes) -> Result<HeadRecord, ReadFailure> {
    if file.len() < RECORD || &file[..4] != MAGIC {
        return Err(ReadFailure::Corrupt("head record truncated or not ours"));
    }
    if file[4] != FORMAT {
        return Err(ReadFailure::Corrupt("head record of an unknown format"));
    }
    let mut k = [0u8; 16];
    k.copy_from_slice(&file[8..24]);
    if u128::from_le_bytes(k) != key {
        return Err(ReadFailure::Corrupt("head record of another key"));
    }
    let head_len = u32::from_le_bytes([file[40], file[41], file[42], file[43]]) as usize;
    if file.len() != RECORD + head_len {
        return Err(ReadFailure::Corrupt("head record length mismatch"));
    }
    if le_u64(&file[HASH_AT..]) != record_hash(&file) {
        return Err(ReadFailure::Corrupt("head record checksum mismatch"));
    }
    Ok(HeadRecord {
        body_len: le_u64(&file[24..]),
        body_hash: le_u64(&file[32..]),
        head: file.slice(RECORD..),
    })
}

/// Write `data` to `tmp`, then rename it to `dest`.
fn write_then_rename(tmp: &Path, dest: &Path, data: &[&[u8]]) -> io::Result<()> {
    let result = (|| {
        let mut f = File::create(tmp)?;
        for d in data {
            f.write_all(d)?;
        }
        drop(f);
        fs::rename(tmp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

impl DiskTier {
    /// Open (creating if needed) the tier under `dir`, start its writer thread and the scan
    /// that rebuilds its index. A directory that cannot be created is not fatal: writes fail
    /// (counted) and are retried, reads miss.
    pub fn open(
        dir: &Path,
        capacity: u64,
        max_object: u64,
        metrics: StorageMetrics,
    ) -> Arc<DiskTier> {
        let (queue, jobs) = sync_channel(MAX_QUEUED_JOBS);
        let tier = Arc::new(DiskTier {
            objects: dir.join("objects"),
            tmp: dir.join("tmp"),
            capacity,
            max_object,
            index: Mutex::new(Index::default()),
            scanned: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            drained: Condvar::new(),
            queued_bytes: AtomicU64::new(0),
            next_seq: AtomicU64::new(1),
            queue,
            metrics,
            last_log: Mutex::new(HashMap::new()),
        });
        if let Err(e) = tier.prepare_dirs() {
            tier.fault(
                "open",
                &e,
                "disk tier directory unusable; serving without it until it is",
            );
        }
        let writer = tier.clone();
        let spawned = std::thread::Builder::new()
            .name("disk-writer".into())
            .spawn(move || writer.write_loop(jobs));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the disk writer thread");
        }
        let scanner = tier.clone();
        let spawned = std::thread::Builder::new()
            .name("disk-scan".into())
            .spawn(move || scanner.scan());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the disk scan thread");
            tier.scanned.store(true, Ordering::Release);
        }
        tier
    }

    fn prepare_dirs(&self) -> io::Result<()> {
        fs::create_dir_all(&self.objects)?;
        fs::create_dir_all(&self.tmp)?;
        Ok(())
    }

    /// Objects on disk (and being written).
    pub fn objects(&self) -> u64 {
        self.index.lock().map.len() as u64
    }

    /// Bytes of the tier's files.
    pub fn bytes(&self) -> u64 {
        self.index.lock().bytes
    }

    /// Log a fault at most once per [`LOG_INTERVAL`] per kind.
    fn fault(&self, kind: &'static str, e: &io::Error, what: &str) {
        let mut last = self.last_log.lock();
        let now = Instant::now();
        if last
            .get(kind)
            .is_none_or(|t| now.duration_since(*t) >= LOG_INTERVAL)
        {
            last.insert(kind, now);
            tracing::error!(error = %e, dir = %self.objects.display(), "{what}");
        }
    }

    fn paths(&self, key: u128) -> (PathBuf, PathBuf) {
        let dir = self.objects.join(format!("{:02x}", (key >> 120) as u8));
        let name = format!("{key:032x}");
        (
            dir.join(format!("{name}.head")),
            dir.join(format!("{name}.body")),
        )
    }

    /// The object stored under `key`, verified; `None` when absent, unreadable or corrupt
    /// (a corrupt entry is deleted and counted).
    pub fn lookup(&self, key: u128) -> Option<DiskObject> {
        if let Some(p) = self.pending.lock().get(&key) {
            self.metrics.disk.hits.inc();
            return Some(p.object.clone());
        }
        if self.scanned.load(Ordering::Acquire) && !self.index.lock().map.contains_key(&key) {
            self.metrics.disk.misses.inc();
            return None;
        }
        let (head_path, body_path) = self.paths(key);
        match self.read(key, &head_path, &body_path) {
            Ok(object) => {
                self.metrics.disk.hits.inc();
                let now = now_nanos();
                if self.index.lock().touch(key, now) {
                    // best effort: recency for eviction after a restart
                    let _ = File::options()
                        .write(true)
                        .open(&head_path)
                        .and_then(|f| f.set_modified(SystemTime::now()));
                }
                Some(object)
            }
            Err(ReadFailure::Missing) => {
                self.metrics.disk.misses.inc();
                self.index.lock().remove(key);
                None
            }
            Err(ReadFailure::Io(e)) => {
                self.metrics.disk.misses.inc();
                self.metrics.disk_read_errors.inc();
                self.fault("read", &e, "disk tier read failed; treated as a miss");
                None
            }
            Err(ReadFailure::Corrupt(why)) => {
                self.metrics.disk.misses.inc();
                self.drop_corrupt(key, &head_path, why);
                None
            }
        }
    }

    fn read(
        &self,
        key: u128,
        head_path: &Path,
        body_path: &Path,
    ) -> Result<DiskObject, ReadFailure> {
        let record = parse_head_file(key, Bytes::from(fs::read(head_path)?))?;
        if record.body_len > self.max_object.max(1 << 30) {
            return Err(ReadFailure::Corrupt("body length out of range"));
        }
        let body = match fs::read(body_path) {
            Ok(b) => b,
            // the head vouches for a body that is not there
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(ReadFailure::Corrupt("body file missing"))
            }
            Err(e) => return Err(e.into()),
        };
        if body.len() as u64 != record.body_len {
            return Err(ReadFailure::Corrupt("body length mismatch (truncated?)"));
        }
        if xxh3_64(&body) != record.body_hash {
            return Err(ReadFailure::Corrupt("body checksum mismatch"));
        }
        Ok(DiskObject {
            head: record.head,
            body: Bytes::from(body),
        })
    }

    /// Delete a corrupt entry, unless it changed under us (a concurrent replacement is not
    /// corruption: its head is unlinked before its new body lands).
    fn drop_corrupt(&self, key: u128, head_path: &Path, why: &'static str) {
        let first = fs::read(head_path).ok();
        std::thread::yield_now();
        if self.pending.lock().contains_key(&key) || fs::read(head_path).ok() != first {
            return;
        }
        self.delete(key);
        self.metrics.disk_corrupt.inc();
        tracing::warn!(key = %format!("{key:032x}"), why, "dropped a corrupt disk cache entry");
    }

    /// Queue `object` to be written behind the response. Returns false if it was not queued
    /// (too large, or the queue is full).
    pub fn put(&self, key: u128, object: DiskObject) -> bool {
        let size = object.size();
        if object.body.len() as u64 > self.max_object {
            return false;
        }
        if self.queued_bytes.load(Ordering::Acquire) + size > MAX_QUEUED_BYTES {
            self.metrics.disk_writes_dropped.inc();
            return false;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let replaced = self
            .pending
            .lock()
            .insert(key, Pending { seq, object })
            .map_or(0, |p| p.object.size());
        self.queued_bytes.fetch_add(size, Ordering::AcqRel);
        self.queued_bytes.fetch_sub(replaced, Ordering::AcqRel);
        match self.queue.try_send(Job::Put { key, seq }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.take_pending(key, Some(seq));
                self.metrics.disk_writes_dropped.inc();
                false
            }
        }
    }

    /// Replace the stored head of `key` (a 304 freshened it), keeping its body file. Returns
    /// whether the object is (as far as the index knows) on disk or queued for it.
    pub fn update_head(&self, key: u128, head: Bytes) -> bool {
        {
            let mut pending = self.pending.lock();
            if let Some(p) = pending.get_mut(&key) {
                p.object.head = head;
                return true;
            }
        }
        if !self.index.lock().map.contains_key(&key) && self.scanned.load(Ordering::Acquire) {
            return false;
        }
        if self.queue.try_send(Job::Head { key, head }).is_err() {
            self.metrics.disk_writes_dropped.inc();
        }
        true
    }

    /// Remove `key` from disk (and from the write queue); true if it was there.
    pub fn remove(&self, key: u128) -> bool {
        let queued = self.take_pending(key, None);
        self.delete(key) || queued
    }

    /// Delete `key`'s files and index entry; true if its head file or index entry existed.
    fn delete(&self, key: u128) -> bool {
        let (head_path, body_path) = self.paths(key);
        let had_head = fs::remove_file(&head_path).is_ok();
        let _ = fs::remove_file(&body_path);
        let indexed = self.index.lock().remove(key);
        had_head || indexed
    }

    /// Wait until queued writes have landed, at most `timeout`; true if drained.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pending = self.pending.lock();
        while !pending.is_empty() {
            if self.drained.wait_until(&mut pending, deadline).timed_out() {
                return pending.is_empty();
            }
        }
        true
    }

    /// Drop `key`'s queued write (only write `seq` if given); true if one was dropped.
    fn take_pending(&self, key: u128, seq: Option<u64>) -> bool {
        let mut pending = self.pending.lock();
        let matches = pending
            .get(&key)
            .is_some_and(|p| seq.is_none_or(|s| p.seq == s));
        let taken = if matches { pending.remove(&key) } else { None };
        if let Some(p) = &taken {
            self.queued_bytes
                .fetch_sub(p.object.size(), Ordering::AcqRel);
        }
        if pending.is_empty() {
            self.drained.notify_all();
        }
        taken.is_some()
    }

    fn write_loop(&self, jobs: Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Put { key, seq } => {
                    let object = match self.pending.lock().get(&key) {
                        Some(p) if p.seq == seq => p.object.clone(),
                        // purged or superseded while queued
                        _ => continue,
                    };
                    if let Err(e) = self.write_object(key, seq, &object) {
                        self.metrics.disk_write_errors.inc();
                        self.fault(
                            "write",
                            &e,
                            "disk tier write failed; object kept in memory only",
                        );
                    }
                    self.take_pending(key, Some(seq));
                    self.evict();
                }
                Job::Head { key, head } => {
                    if let Err(e) = self.rewrite_head(key, &head) {
                        if e.kind() != ErrorKind::NotFound {
                            self.metrics.disk_write_errors.inc();
                            self.fault("write", &e, "disk tier head update failed");
                        }
                    }
                }
            }
        }
    }

    fn tmp_path(&self, seq: u64, ext: &str) -> PathBuf {
        self.tmp.join(format!("{}-{seq}.{ext}", std::process::id()))
    }

    fn write_object(&self, key: u128, seq: u64, object: &DiskObject) -> io::Result<()> {
        let (head_path, body_path) = self.paths(key);
        let record = head_file(
            key,
            &object.head,
            object.body.len() as u64,
            xxh3_64(&object.body),
        );
        let attempt = || -> io::Result<()> {
            if let Some(dir) = head_path.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::create_dir_all(&self.tmp)?;
            // A reader must never pair the old head with the new body.
            match fs::remove_file(&head_path) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            write_then_rename(&self.tmp_path(seq, "body"), &body_path, &[&object.body])?;
            write_then_rename(&self.tmp_path(seq, "head"), &head_path, &[&record])
        };
        self.index.lock().remove(key);
        attempt()?;
        let bytes = (record.len() + object.body.len()) as u64;
        // a purge may have removed the key while it was written: then delete what we wrote
        if self.pending.lock().get(&key).is_none_or(|p| p.seq != seq) {
            self.delete(key);
            return Ok(());
        }
        self.index.lock().insert(key, bytes, now_nanos());
        Ok(())
    }

    fn rewrite_head(&self, key: u128, head: &Bytes) -> io::Result<()> {
        let (head_path, body_path) = self.paths(key);
        let old = parse_head_file(key, Bytes::from(fs::read(&head_path)?))
            .map_err(|_| io::Error::new(ErrorKind::NotFound, "no valid head to update"))?;
        // the body file is not rewritten: the new head vouches for it as the old one did
        let record = head_file(key, head, old.body_len, old.body_hash);
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        write_then_rename(&self.tmp_path(seq, "head"), &head_path, &[&record])?;
        let bytes = record.len() as u64 + old.body_len;
        if body_path.exists() {
            self.index.lock().insert(key, bytes, now_nanos());
        }
        Ok(())
    }

    /// Remove least recently used objects until the tier fits its capacity.
    fn evict(&self) {
        if !self.scanned.load(Ordering::Acquire) {
            return;
        }
        loop {
            let victim = {
                let index = self.index.lock();
                if index.bytes <= self.capacity {
                    return;
                }
                index.oldest()
            };
            let Some(key) = victim else { return };
            self.delete(key);
            self.metrics.disk.evictions.inc();
        }
    }

    /// Rebuild the index from the files on disk, then enforce the capacity.
    fn scan(&self) {
        let started = Instant::now();
        if let Ok(entries) = fs::read_dir(&self.tmp) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let mut found = 0u64;
        if let Ok(dirs) = fs::read_dir(&self.objects) {
            for dir in dirs.flatten() {
                let Ok(files) = fs::read_dir(dir.path()) else {
                    continue;
                };
                for f in files.flatten() {
                    found += self.scan_file(&f.path());
                }
            }
        }
        self.scanned.store(true, Ordering::Release);
        let (objects, bytes) = {
            let index = self.index.lock();
            (index.map.len(), index.bytes)
        };
        tracing::info!(
            objects,
            bytes,
            found,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "disk tier index rebuilt"
        );
        self.evict();
    }

    /// Index one file found by the scan; returns 1 if it indexed an object.
    fn scan_file(&self, path: &Path) -> u64 {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some((stem, ext)) = name.split_once('.') else {
            return 0;
        };
        let Ok(key) = u128::from_str_radix(stem, 16) else {
            return 0;
        };
        let (head_path, body_path) = self.paths(key);
        match ext {
            "head" => {
                let (Ok(head), Ok(body)) = (fs::metadata(&head_path), fs::metadata(&body_path))
                else {
                    return 0;
                };
                let mut index = self.index.lock();
                if index.map.contains_key(&key) || self.pending.lock().contains_key(&key) {
                    return 0;
                }
                index.insert(key, head.len() + body.len(), mtime_nanos(&head));
                1
            }
            "body" => {
                // a body without a head is a write cut short: delete it once clearly old
                let orphan = !head_path.exists()
                    && !self.pending.lock().contains_key(&key)
                    && fs::metadata(&body_path)
                        .ok()
                        .and_then(|m| m.modified().ok())
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(60));
                if orphan {
                    let _ = fs::remove_file(&body_path);
                }
                0
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_tracks_bytes_and_evicts_oldest_first() {
        let mut i = Index::default();
        i.insert(1, 100, 10);
        i.insert(2, 200, 20);
        i.insert(3, 300, 30);
        assert_eq!(i.bytes, 600);
        assert_eq!(i.oldest(), Some(1));
        // a touch makes 1 the newest
        assert!(i.touch(1, 10 + TOUCH_INTERVAL));
        assert_eq!(i.oldest(), Some(2));
        // re-inserting replaces size and recency
        i.insert(2, 50, 100);
        assert_eq!(i.bytes, 450);
        assert_eq!(i.oldest(), Some(3));
        assert!(i.remove(3));
        assert!(!i.remove(3));
        assert_eq!(i.bytes, 150);
        assert_eq!(i.map.len(), i.lru.len());
    }

    #[test]
    fn index_bookkeeping_holds_under_random_operations() {
        // property: bytes == sum of sizes, lru mirrors map, oldest has the smallest stamp
        let mut i = Index::default();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for step in 0..20_000u64 {
            let key = u128::from(next() % 500);
            match next() % 4 {
                0 | 1 => i.insert(key, next() % 10_000, step * TOUCH_INTERVAL / 8),
                2 => {
                    i.remove(key);
                }
                _ => {
                    i.touch(key, step * TOUCH_INTERVAL / 8);
                }
            }
            if step % 97 == 0 {
                assert_eq!(i.bytes, i.map.values().map(|e| e.bytes).sum::<u64>());
                assert_eq!(i.map.len(), i.lru.len());
                let min = i.map.values().map(|e| e.stamp).min();
                assert_eq!(i.lru.first().map(|(s, _)| *s), min);
            }
        }
    }

    #[test]
    fn head_record_detects_every_single_byte_flip_and_cut() {
        let file = Bytes::from(head_file(7, b"HEAD", 4, xxh3_64(b"body")));
        let ok = parse_head_file(7, file.clone()).ok().expect("valid");
        assert_eq!(&ok.head[..], b"HEAD");
        assert_eq!(ok.body_len, 4);
        assert_eq!(ok.body_hash, xxh3_64(b"body"));
        assert!(matches!(
            parse_head_file(8, file.clone()),
            Err(ReadFailure::Corrupt(_))
        ));
        for i in 0..file.len() {
            let mut bad = file.to_vec();
            bad[i] ^= 0x40;
            assert!(
                parse_head_file(7, Bytes::from(bad)).is_err(),
                "flip at {i} accepted"
            );
        }
        for cut in 0..file.len() {
            assert!(
                parse_head_file(7, file.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
    }
}
