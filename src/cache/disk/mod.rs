//! The disk tier: a persistent, crash-safe, size-bounded object store.
//!
//! Layout under the cache directory:
//! - `objects/<aa>/<key>.body`: the body bytes, nothing else (so it can be sent as is);
//! - `objects/<aa>/<key>.head`: a checksummed record of the key, the body's length and
//!   checksums, and the stored head ([`record`]);
//! - `tmp/`: files being written; emptied at start.
//!
//! Contracts:
//! - Crash safety: files are written under `tmp/` and renamed into place, body first, then head.
//!   Every read verifies the head's checksum and the body's length and checksums, so a crash or
//!   power cut at any point (renames reordered, a file cut short) yields a miss, never wrong
//!   bytes. A corrupt entry is deleted, counted, and refetched. No fsync is needed for that.
//! - Small objects are written behind the response, on one writer thread fed by a bounded
//!   queue; until a write lands, lookups are answered from the queued object. A full queue
//!   drops the write. Large objects are spooled to a temporary file as they arrive
//!   ([`spool`]) and never held whole in memory.
//! - Reads: an object the memory tier can take is read whole and verified (on the request's
//!   thread up to [`BLOCK`] bytes, from page cache as nginx does; larger ones on the blocking
//!   pool); a larger one is streamed block by block, each block verified before it is sent
//!   ([`stream`]).
//! - Size: the tier's files stay within `capacity` bytes of disk, each counted in whole
//!   allocation units of the filesystem as `du` counts it (a 1 KiB object is two files of 4 KiB
//!   on ext4); eviction removes the least recently used objects. Recency is the head file's mtime (refreshed on hits, at most once a minute
//!   per object), so it survives restarts.
//! - Start-up does not wait for the directory scan that rebuilds the index: until it finishes,
//!   lookups go straight to the file named by the key; eviction waits for the scan.
//! - Deleting never races a reader into wrong bytes: a reader holds whole files it read or an
//!   open descriptor of the body it streams, and a replaced object's head is unlinked before
//!   its new body lands.
//! - Faults (disk full, permissions, directory removed) are counted and logged at most once per
//!   interval; the node keeps serving from memory and origin, and recreates its directories.

mod index;
pub mod record;
pub mod spool;
pub mod stream;

use crate::metrics::StorageMetrics;
use crate::observe::logging::{LogLimit, LOG_INTERVAL};
use bytes::Bytes;
use index::Index;
use parking_lot::{Condvar, Mutex};
use record::{BodyDigest, HeadRecord, BLOCK};
use spool::SpoolShared;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stream::StreamHit;

/// Queued write-behind bytes at most; a write beyond is dropped (counted).
const MAX_QUEUED_BYTES: u64 = 256 << 20;
/// Queued write-behind jobs at most. A job is a key (the object is in `pending`, counted in
/// bytes above), so this bound is set for bursts of small objects, not for memory: a cold
/// start pulling 10,000 distinct 1 KiB objects in a second dropped ~250 writes at 4,096.
const MAX_QUEUED_JOBS: usize = 32_768;

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

/// A hit from the disk tier.
pub enum DiskHit {
    /// A small object, read whole and verified.
    Whole(DiskObject),
    /// A large object, streamed from its file block by block.
    Stream {
        /// The encoded head.
        head: Bytes,
        /// Serves the body.
        hit: StreamHit,
    },
}

enum Job {
    Put { key: u128, seq: u64 },
    Head { key: u128, head: Bytes },
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
    /// The filesystem's allocation unit: a file takes its length rounded up to it.
    block: u64,
    max_object: u64,
    index: Mutex<Index>,
    scanned: AtomicBool,
    pending: Mutex<HashMap<u128, Pending>>,
    spools: Mutex<HashMap<u128, Vec<Arc<SpoolShared>>>>,
    drained: Condvar,
    queued_bytes: AtomicU64,
    next_seq: AtomicU64,
    queue: SyncSender<Job>,
    metrics: StorageMetrics,
    /// One log line per interval per kind of [`Fault`].
    faults: [LogLimit; 3],
}

/// What failed, for the log (each kind has its own line per [`LOG_INTERVAL`]).
#[derive(Debug, Clone, Copy)]
pub(super) enum Fault {
    /// Creating or opening the tier's directories.
    Open,
    /// Reading an entry.
    Read,
    /// Writing an entry.
    Write,
}

/// What one file's name takes in its directory's blocks (ext4: 8 bytes and the 37-byte name
/// rounded to 4, plus the directory's hash index and slack); directories do not shrink, so
/// this is charged per file. Measured in the soak bench: 12 MiB of directory blocks for
/// 131,000 files, 96 bytes a file.
const DIRECTORY_ENTRY: u64 = 96;

/// The allocation unit of the filesystem holding `dir` (or of the nearest existing parent):
/// `st_blksize`, 4 KiB when unknown (ext4's and XFS's default).
fn allocation_unit(dir: &Path) -> u64 {
    dir.ancestors()
        .find_map(|d| fs::metadata(d).ok())
        .map(|m| std::os::unix::fs::MetadataExt::blksize(&m))
        .filter(|b| (512..=1 << 20).contains(b))
        .unwrap_or(4096)
}

/// Bytes of disk a file takes (its allocated blocks, as `du` counts them).
fn allocated(meta: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(meta).saturating_mul(512)
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub(super) fn now_nanos() -> u64 {
    nanos(SystemTime::now())
}

fn mtime_nanos(meta: &fs::Metadata) -> u64 {
    meta.modified().map_or(0, nanos)
}

/// Run blocking file work on the runtime's blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// Why a stored entry could not be used.
pub(super) enum ReadFailure {
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

/// Read and verify the head file of `key`.
fn read_record(key: u128, head_path: &Path) -> Result<HeadRecord, ReadFailure> {
    HeadRecord::parse(key, Bytes::from(fs::read(head_path)?)).map_err(ReadFailure::Corrupt)
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
            block: allocation_unit(dir),
            max_object,
            index: Mutex::new(Index::default()),
            scanned: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            spools: Mutex::new(HashMap::new()),
            drained: Condvar::new(),
            queued_bytes: AtomicU64::new(0),
            next_seq: AtomicU64::new(1),
            queue,
            metrics,
            faults: [(); 3].map(|_| LogLimit::new(LOG_INTERVAL)),
        });
        if let Err(e) = tier.prepare_dirs() {
            tier.fault(
                Fault::Open,
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

    /// Whether the start-up scan has rebuilt the index (lookups work before; eviction waits).
    pub fn index_complete(&self) -> bool {
        self.scanned.load(Ordering::Acquire)
    }

    /// The largest body this tier stores.
    pub fn max_object(&self) -> u64 {
        self.max_object
    }

    /// Objects on disk (and being written).
    pub fn objects(&self) -> u64 {
        self.index.lock().len() as u64
    }

    /// Bytes of disk a file of `len` bytes takes: whole allocation units (an empty file none)
    /// and its name in its directory.
    fn on_disk(&self, len: u64) -> u64 {
        len.div_ceil(self.block).saturating_mul(self.block) + DIRECTORY_ENTRY
    }

    /// Bytes of objects queued for the writer.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of disk the tier's files take (whole allocation units, as `du` counts them).
    pub fn bytes(&self) -> u64 {
        self.index.lock().bytes
    }

    /// Log a fault at most once per [`LOG_INTERVAL`] per kind (saying how many were not).
    fn fault(&self, kind: Fault, e: &io::Error, what: &str) {
        if let Some(suppressed) = self.faults[kind as usize].admit() {
            tracing::error!(error = %e, dir = %self.objects.display(), suppressed, "{what}");
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

    /// Whether a lookup of `key` can skip the disk: the index is complete and lacks it.
    fn surely_absent(&self, key: u128) -> bool {
        self.scanned.load(Ordering::Acquire) && !self.index.lock().contains(key)
    }

    /// Count a lookup's outcome, refresh recency on a hit, drop a corrupt entry.
    fn settle<T>(&self, key: u128, head_path: &Path, read: Result<T, ReadFailure>) -> Option<T> {
        match read {
            Ok(found) => {
                self.metrics.disk.hits.inc();
                if self.index.lock().touch(key, now_nanos()) {
                    // best effort: recency for eviction after a restart
                    let _ = File::options()
                        .write(true)
                        .open(head_path)
                        .and_then(|f| f.set_modified(SystemTime::now()));
                }
                Some(found)
            }
            Err(ReadFailure::Missing) => {
                self.metrics.disk.misses.inc();
                self.index.lock().remove(key);
                None
            }
            Err(ReadFailure::Io(e)) => {
                self.metrics.disk.misses.inc();
                self.metrics.disk_read_errors.inc();
                self.fault(Fault::Read, &e, "disk tier read failed; treated as a miss");
                None
            }
            Err(ReadFailure::Corrupt(why)) => {
                self.metrics.disk.misses.inc();
                self.drop_corrupt(key, head_path, why);
                None
            }
        }
    }

    /// A hit on `key`, verified; `None` when absent, unreadable or corrupt (a corrupt entry is
    /// deleted and counted). Objects of up to `whole_up_to` bytes (and any not block-hashed)
    /// are read whole, larger ones are streamed ([`StreamHit`]).
    pub async fn lookup_hit(self: &Arc<Self>, key: u128, whole_up_to: u64) -> Option<DiskHit> {
        if let Some(p) = self.pending.lock().get(&key) {
            self.metrics.disk.hits.inc();
            return Some(DiskHit::Whole(p.object.clone()));
        }
        if self.surely_absent(key) {
            self.metrics.disk.misses.inc();
            return None;
        }
        let (head_path, body_path) = self.paths(key);
        let record = match read_record(key, &head_path) {
            Ok(r) => r,
            Err(e) => return self.settle(key, &head_path, Err::<DiskHit, _>(e)),
        };
        let streams =
            record.body_len > whole_up_to && matches!(record.digest, BodyDigest::Blocks(_));
        let read = if streams {
            let head = record.head.clone();
            let (tier, path) = (self.clone(), head_path.clone());
            blocking(move || Ok(StreamHit::open(tier, key, path, body_path, record)))
                .await
                .unwrap_or_else(|e| Err(ReadFailure::Io(e)))
                .map(|hit| DiskHit::Stream { head, hit })
        } else if record.body_len > BLOCK {
            // a large read would stall this thread's other requests on a cold disk
            let tier = self.clone();
            blocking(move || Ok(tier.read_body(&body_path, record)))
                .await
                .unwrap_or_else(|e| Err(ReadFailure::Io(e)))
                .map(DiskHit::Whole)
        } else {
            self.read_body(&body_path, record).map(DiskHit::Whole)
        };
        self.settle(key, &head_path, read)
    }

    /// The stored head of `key` (queued or on disk, verified), without its body.
    pub fn head(&self, key: u128) -> Option<Bytes> {
        if let Some(p) = self.pending.lock().get(&key) {
            return Some(p.object.head.clone());
        }
        if self.surely_absent(key) {
            return None;
        }
        read_record(key, &self.paths(key).0).ok().map(|r| r.head)
    }

    fn read_body(&self, body_path: &Path, record: HeadRecord) -> Result<DiskObject, ReadFailure> {
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
        record.verify(&body).map_err(ReadFailure::Corrupt)?;
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
            self.metrics.disk.rejected.inc();
            return false;
        }
        if self.queued_bytes.load(Ordering::Acquire) + size > MAX_QUEUED_BYTES {
            self.metrics.disk_writes_dropped.inc();
            self.metrics.disk.rejected.inc();
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
                self.metrics.disk.rejected.inc();
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
        if !self.index.lock().contains(key) && self.scanned.load(Ordering::Acquire) {
            return false;
        }
        if self.queue.try_send(Job::Head { key, head }).is_err() {
            self.metrics.disk_writes_dropped.inc();
        }
        true
    }

    /// Every object on disk or queued for it (a snapshot: objects placed later are not in it).
    pub fn keys(&self) -> Vec<u128> {
        let mut keys: Vec<u128> = self.index.lock().keys().collect();
        keys.extend(self.pending.lock().keys().copied());
        keys
    }

    /// Replace the stored head of `key` now (not behind the write queue), keeping its body;
    /// false if it is not stored. Blocking.
    pub fn replace_head_now(&self, key: u128, head: Bytes) -> io::Result<bool> {
        let queued = self.pending.lock().get(&key).map(|p| p.object.body.clone());
        if let Some(body) = queued {
            // a new write supersedes the queued one (and one in progress deletes its files)
            return Ok(self.put(key, DiskObject { head, body }));
        }
        match self.rewrite_head(key, &head) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Make what was written and deleted durable (`syncfs` of the cache's file system).
    /// Blocking.
    pub fn sync(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let dir = File::open(&self.objects)?;
        // SAFETY: `dir` is an open descriptor for the duration of the call.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Remove `key` from disk (and from the write queue); true if it was there.
    pub fn remove(&self, key: u128) -> bool {
        let spooling = self.cancel_spools(key);
        let queued = self.take_pending(key, None);
        self.delete(key) || queued || spooling
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
        self.flush_queued(u64::MAX, timeout)
    }

    /// Wait until the writes queued before this call have landed (or were dropped), at most
    /// `timeout`; true if they have. Writes queued meanwhile are not waited for.
    pub fn flush_queued_so_far(&self, timeout: Duration) -> bool {
        self.flush_queued(self.next_seq.load(Ordering::Acquire), timeout)
    }

    fn flush_queued(&self, before_seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pending = self.pending.lock();
        while pending.values().any(|p| p.seq < before_seq) {
            if self.drained.wait_until(&mut pending, deadline).timed_out() {
                return !pending.values().any(|p| p.seq < before_seq);
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
        if pending.capacity() > 1024 && pending.len() * 8 < pending.capacity() {
            // a burst of writes left the table large (~100 bytes a slot): give it back
            let keep = pending.len() * 2;
            pending.shrink_to(keep);
        }
        if let Some(p) = &taken {
            self.queued_bytes
                .fetch_sub(p.object.size(), Ordering::AcqRel);
        }
        if taken.is_some() {
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
                            Fault::Write,
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
                            self.fault(Fault::Write, &e, "disk tier head update failed");
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
        let record = HeadRecord::encode(
            key,
            &object.head,
            object.body.len() as u64,
            &BodyDigest::of(&object.body),
        );
        let body_tmp = self.tmp_path(seq, "body");
        let written = (|| {
            fs::create_dir_all(&self.tmp)?;
            File::create(&body_tmp)?.write_all(&object.body)?;
            self.place(key, seq, &body_tmp, &record)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&body_tmp);
        }
        written?;
        let bytes = self.on_disk(record.len() as u64) + self.on_disk(object.body.len() as u64);
        // a purge may have removed the key while it was written: then delete what we wrote
        if self.pending.lock().get(&key).is_none_or(|p| p.seq != seq) {
            self.delete(key);
            return Ok(());
        }
        self.index.lock().insert(key, bytes, now_nanos());
        Ok(())
    }

    /// Put an object's files in place: the old head goes first (a reader must never pair it
    /// with the new body), then the body (renamed from `body_tmp`), then the new head. The
    /// caller indexes the object.
    fn place(&self, key: u128, seq: u64, body_tmp: &Path, record: &[u8]) -> io::Result<()> {
        let (head_path, body_path) = self.paths(key);
        self.index.lock().remove(key);
        if let Some(dir) = head_path.parent() {
            fs::create_dir_all(dir)?;
        }
        match fs::remove_file(&head_path) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fs::rename(body_tmp, &body_path)?;
        write_then_rename(&self.tmp_path(seq, "head"), &head_path, &[record])
    }

    fn rewrite_head(&self, key: u128, head: &Bytes) -> io::Result<()> {
        let (head_path, body_path) = self.paths(key);
        let old = read_record(key, &head_path)
            .map_err(|_| io::Error::new(ErrorKind::NotFound, "no valid head to update"))?;
        // the body file is not rewritten: the new head vouches for it as the old one did
        let record = HeadRecord::encode(key, head, old.body_len, &old.digest);
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        write_then_rename(&self.tmp_path(seq, "head"), &head_path, &[&record])?;
        let bytes = self.on_disk(record.len() as u64) + self.on_disk(old.body_len);
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
        // leftovers of earlier processes; this one's writes (`<pid>-<seq>.*`) may have begun
        let ours = format!("{}-", std::process::id());
        if let Ok(entries) = fs::read_dir(&self.tmp) {
            for e in entries.flatten() {
                if !e.file_name().to_string_lossy().starts_with(&ours) {
                    let _ = fs::remove_file(e.path());
                }
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
        let (objects, bytes) = {
            let mut index = self.index.lock();
            index.order_by_stamp();
            self.scanned.store(true, Ordering::Release);
            (index.len(), index.bytes)
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
                if index.contains(key) || self.pending.lock().contains_key(&key) {
                    return 0;
                }
                let bytes = allocated(&head) + allocated(&body) + 2 * DIRECTORY_ENTRY;
                index.insert(key, bytes, mtime_nanos(&head));
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
