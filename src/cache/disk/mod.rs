//! The disk tier: a log-structured, crash-safe, size-bounded object store.
//!
//! Layout under the cache directory:
//! - `segments/<slot>.seg`: the segment files, preallocated, `disk_size` bytes in all
//!   ([`log`]); objects are records appended to them ([`record`]);
//! - `directory`: the last checkpoint of the in-memory directory ([`directory`], [`recover`]);
//! - `tmp/`: large bodies being spooled as they arrive ([`spool`]); emptied at start;
//! - `lock`: held (`flock`) by the process that writes the segments.
//!
//! A cache directory of the layout before (`objects/`, a file pair per object) is dropped at
//! start with a log line (in the background): its objects are refetched.
//!
//! Contracts:
//! - Writes never wait for the disk: a small object is appended to a buffer in memory (and is
//!   found there until written), and the writer thread writes each buffer of up to 1 MiB with
//!   one `pwrite`. More than 256 MiB waiting is dropped (counted).
//! - Reads: the directory gives the record's segment, offset and size, so a small hit is one
//!   `pread` from a segment file that stays open, verified (the record's checksum, seeded by
//!   the segment's nonce, the key, the body's checksum) before anything is sent. Larger
//!   objects stream block by block ([`stream`]), each block verified first.
//! - Space: the segments are a ring. When it comes round, the oldest segment is cleaned: objects
//!   hit since they were written are copied to the head of the log (up to a quarter of a
//!   segment), the rest evicted; then its file is replaced. Readers holding the old file keep
//!   reading it; bytes are never overwritten in place.
//! - Crash safety: a checkpoint of the directory names the log position it covers; after a
//!   crash the log from there on is replayed. Records are checksummed and carry their segment's
//!   generation, so torn writes, stale bytes and bit flips are misses (and refetches), never
//!   wrong bytes. A purge appends a tombstone before it answers (or, when the segment is full
//!   and the next not prepared, as soon as it is: [`DiskTier::flush_queued_so_far`] waits for
//!   it; a buffer whose write fails has its tombstones appended again), so a purged object is
//!   never served after a restart. No fsync is needed for any of that (only the checkpoint is
//!   synced).
//! - Upgrades: one process writes the segments at a time (the `lock` file). A new process
//!   started while the old one still runs waits: it keeps what it would write in memory, and
//!   takes over when the old one, stopping, has written its last buffers and a checkpoint and
//!   exited.
//! - Faults (disk full, permissions, directory removed) are counted and logged at most once per
//!   interval; the node keeps serving from memory and origin, and recreates its directories.

mod directory;
mod log;
pub mod record;
mod recover;
pub mod spool;
pub mod stream;
mod writer;

use crate::metrics::StorageMetrics;
use crate::observe::logging::{LogLimit, LOG_INTERVAL};
use bytes::Bytes;
use directory::{fingerprint, Directory, Entry, Lookup};
use log::{Geometry, Job, Log, Pos, Segment, BUFFER};
use parking_lot::Mutex;
use record::{align, blocks_for, BodyDigest, Header, Kind, Record, BLOCK, HEADER};
use spool::SpoolShared;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stream::StreamHit;
use writer::{Source, Task};

/// Bytes waiting for the writer at most; a write beyond is dropped (counted).
const MAX_QUEUED_BYTES: u64 = 256 << 20;
/// Records up to this size go through the buffers; larger ones are written by the writer
/// thread on their own.
const SMALL_RECORD: u64 = (BUFFER / 2) as u64;
/// What is logged when no segment file can be created.
const NO_SEGMENT: &str =
    "disk tier write failed: cannot create a segment file; objects kept in memory only";
/// A lookup in a part of the directory still being recovered waits this long for it at most
/// (then misses).
const LOAD_WAIT: Duration = Duration::from_secs(1);
/// Bytes of a record read first when its size is not known.
const FIRST_READ: u64 = 4096;
/// Records larger than this are read in two: their first bytes, then the body into a buffer
/// of its own (one copy of the body fewer than slicing it out of the record).
const SPLIT_ABOVE: u64 = 16 << 10;
/// Bodies larger than this are offered for sending from their segment file
/// ([`ReadyHit::file`]): below it, copying the body costs less than the second system call.
const SEND_FILE_ABOVE: u64 = SPLIT_ABOVE;
/// While another process holds the directory, how often to try taking it over.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// An object read from (or written to) the disk tier.
#[derive(Clone)]
pub struct DiskObject {
    /// The encoded head ([`super::entry::encode_head`]).
    pub head: Bytes,
    /// The whole body.
    pub body: Bytes,
}

/// A small object read whole from the disk tier and verified.
pub struct WholeObject {
    /// The encoded head ([`super::entry::encode_head`]).
    pub head: Bytes,
    /// The body, in a buffer of its own (the memory tier takes it without a copy).
    pub body: Box<[u8]>,
}

/// What [`DiskTier::lookup_now`] found.
pub enum Now {
    /// A small object, read whole and verified; not counted yet ([`DiskTier::count_hit`]).
    Ready(ReadyHit),
    /// No object under the key.
    Absent,
    /// Only [`DiskTier::lookup_hit`] can tell (a large object, a part of the directory still
    /// being recovered, a read that failed or found damage: it counts and drops it).
    Later,
}

/// An object found by [`DiskTier::lookup_now`].
pub struct ReadyHit {
    /// The object.
    pub object: WholeObject,
    /// Where its body lies in a segment file, when it was read from one (not from a write
    /// buffer) and is large enough to be worth sending from there.
    pub file: Option<BodyFile>,
    entry: Entry,
}

/// Where a verified body lies in a segment file: the lean hit path sends it from there with
/// `sendfile`, the kernel passing page-cache pages to the socket without copying them. The
/// bytes are those just read and verified: a segment file is never written again where it
/// holds records ([`log`]), and the segment is held open here, so recycling its slot does not
/// touch them; only another process writing into the file could (as under any cache that
/// sends from files).
#[derive(Clone)]
pub struct BodyFile {
    seg: Arc<Segment>,
    off: u64,
    len: u64,
}

impl BodyFile {
    /// The segment file.
    pub fn file(&self) -> &std::fs::File {
        &self.seg.file
    }

    /// The body's offset in the file.
    pub fn offset(&self) -> u64 {
        self.off
    }

    /// The body's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A hit from the disk tier.
pub enum DiskHit {
    /// A small object, read whole and verified.
    Whole(WholeObject),
    /// A large object, streamed from its segments block by block.
    Stream {
        /// The encoded head.
        head: Bytes,
        /// Serves the body.
        hit: StreamHit,
    },
}

/// What a process not (yet) holding the directory was asked to write.
enum Waiting {
    Put(u128, DiskObject),
    Remove(u128),
}

/// The disk tier. Create with [`DiskTier::open`].
pub struct DiskTier {
    root: PathBuf,
    tmp: PathBuf,
    max_object: u64,
    log: Log,
    dir: Directory,
    /// Whether this process holds the directory (the log is open for writing).
    active: AtomicBool,
    /// Whether the wait for another process was logged.
    announced: AtomicBool,
    /// What to write once active, and its bytes.
    waiting: Mutex<(Vec<Waiting>, u64)>,
    lock: Mutex<Option<File>>,
    spools: Mutex<HashMap<u128, Vec<Arc<SpoolShared>>>>,
    /// Large writes queued for the writer, by key: a purge cancels them.
    inflight: Mutex<HashMap<u128, Vec<Arc<AtomicBool>>>>,
    /// Counts changes to the directory (a checkpoint is due when it moved).
    changes: AtomicU64,
    /// Bytes of records appended to the log since start.
    appended: AtomicU64,
    next_seq: AtomicU64,
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

/// Run blocking file work on the runtime's blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// Whether a lookup streams the object of record `h` by block rather than reading it whole
/// (larger than `whole_up_to` and block-hashed).
fn streams(h: &Header, whole_up_to: u64) -> bool {
    h.body_len > whole_up_to && blocks_for(h.body_len) > 0
}

/// Why a stored entry could not be used.
pub(super) enum ReadFailure {
    /// Not there (any more): a plain miss.
    Missing,
    /// Its part of the directory is not recovered yet.
    Loading,
    /// There but wrong: drop it.
    Corrupt(&'static str),
    /// The disk failed.
    Io(io::Error),
}

impl From<io::Error> for ReadFailure {
    fn from(e: io::Error) -> Self {
        ReadFailure::Io(e)
    }
}

/// A record found through the directory: where it is and its first bytes.
struct Found {
    entry: Entry,
    seg: Arc<Segment>,
    pos: Pos,
    header: Header,
    /// The record's bytes from its start (at least its header).
    bytes: Bytes,
    /// They were read from the segment file (not from a buffer not yet written).
    on_file: bool,
}

impl DiskTier {
    /// Open (creating if needed) the tier under `dir`: `capacity` bytes of segments, objects
    /// of up to `max_object` bytes. Returns at once: the directory is recovered in the
    /// background (lookups miss until their part of it is loaded). A directory that cannot be
    /// used is not fatal: writes fail (counted) and are retried, reads miss.
    pub fn open(
        dir: &Path,
        capacity: u64,
        max_object: u64,
        metrics: StorageMetrics,
    ) -> Arc<DiskTier> {
        let geo = Geometry::for_capacity(capacity);
        let tier = Arc::new(DiskTier {
            root: dir.to_path_buf(),
            tmp: dir.join("tmp"),
            max_object: max_object.min(geo.max_record()),
            log: Log::new(dir.join("segments"), geo),
            dir: Directory::new(false),
            active: AtomicBool::new(false),
            announced: AtomicBool::new(false),
            waiting: Mutex::new((Vec::new(), 0)),
            lock: Mutex::new(None),
            spools: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            next_seq: AtomicU64::new(1),
            metrics,
            faults: [(); 3].map(|_| LogLimit::new(LOG_INTERVAL)),
        });
        if !tier.try_activate() {
            let t = tier.clone();
            let spawned = std::thread::Builder::new()
                .name("disk-takeover".into())
                .spawn(move || {
                    while !t.try_activate() {
                        std::thread::sleep(LOCK_POLL);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the disk tier's takeover thread");
            }
        }
        tier
    }

    /// Take the directory if no other process holds it: recover, start the writer. False if
    /// another process holds it (an upgrade in progress).
    fn try_activate(self: &Arc<Self>) -> bool {
        match self.take_lock() {
            Ok(true) => {}
            Ok(false) => {
                if !self.announced.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        dir = %self.root.display(),
                        "disk tier held by another process (an upgrade?): waiting to take over"
                    );
                }
                return false;
            }
            Err(e) => {
                // unusable directory: go on without the lock (reads may still work); writes
                // fail and are counted until it is usable, and the writer takes the lock then
                self.fault(
                    Fault::Open,
                    &e,
                    "disk tier directory unusable; serving without it until it is",
                );
            }
        }
        self.drop_old_layout();
        let _ = fs::create_dir_all(&self.log.dir);
        self.clear_tmp();
        let segs = recover::open_segments(self);
        let base = segs.last().map_or(0, |s| s.gen);
        self.log.state.lock().prepared = base;
        if let Err(e) = self.prepare(base + 1) {
            self.write_failed(&e, NO_SEGMENT);
        }
        let loader = self.clone();
        let spawned = std::thread::Builder::new()
            .name("disk-recover".into())
            .spawn(move || recover::recover(&loader, segs));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the disk recovery thread");
        }
        let writer = self.clone();
        let spawned = std::thread::Builder::new()
            .name("disk-writer".into())
            .spawn(move || writer.write_loop());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the disk writer thread");
        }
        // what waited goes first, in order; writes made meanwhile wait on the lock behind it
        let mut waiting = self.waiting.lock();
        for w in std::mem::take(&mut waiting.0) {
            match w {
                Waiting::Put(key, object) => {
                    self.put_now(key, object);
                }
                Waiting::Remove(key) => {
                    self.remove_now(key);
                }
            }
        }
        waiting.1 = 0;
        self.active.store(true, Ordering::Release);
        true
    }

    /// Take the `lock` file: Ok(false) if another process holds it.
    pub(super) fn take_lock(&self) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        fs::create_dir_all(&self.root)?;
        let path = self.root.join("lock");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .or_else(|_| File::open(&path))?;
        // SAFETY: `file` is an open descriptor for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(false);
            }
            return Err(e);
        }
        *self.lock.lock() = Some(file);
        Ok(true)
    }

    /// Remove the file-per-object layout of earlier versions, in the background.
    fn drop_old_layout(&self) {
        let objects = self.root.join("objects");
        if !objects.is_dir() {
            return;
        }
        tracing::warn!(
            dir = %objects.display(),
            "disk tier: dropping the cache's old layout (a file pair per object); its objects are refetched"
        );
        let spawned = std::thread::Builder::new()
            .name("disk-drop-old".into())
            .spawn(move || {
                if let Err(e) = fs::remove_dir_all(&objects) {
                    tracing::warn!(error = %e, dir = %objects.display(), "cannot remove the old disk cache layout");
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the thread removing the old layout");
        }
    }

    /// Empty `tmp/` (spools of earlier processes).
    fn clear_tmp(&self) {
        if let Ok(entries) = fs::read_dir(&self.tmp) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::create_dir_all(&self.tmp);
    }

    pub(super) fn prepare_dirs(&self) -> io::Result<()> {
        fs::create_dir_all(&self.log.dir)?;
        fs::create_dir_all(&self.tmp)?;
        Ok(())
    }

    /// Whether the directory is fully recovered (lookups in parts not yet loaded miss).
    pub fn index_complete(&self) -> bool {
        self.dir.complete()
    }

    /// The largest body this tier stores.
    pub fn max_object(&self) -> u64 {
        self.max_object
    }

    /// Objects on disk (written, not merely queued).
    pub fn objects(&self) -> u64 {
        let unwritten = self.log.state.lock().unwritten;
        self.dir.len().saturating_sub(unwritten)
    }

    /// Bytes of objects waiting for the writer.
    pub fn queued_bytes(&self) -> u64 {
        let st = self.log.state.lock();
        st.queued
    }

    /// Bytes of records appended to the log since start (what the objects take on disk).
    pub fn appended_bytes(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// Bytes of disk the tier's segment files take.
    pub fn bytes(&self) -> u64 {
        let geo = self.log.geo;
        let slots = (0..geo.slots)
            .filter(|&s| self.log.in_slot(s as u16).is_some())
            .count() as u64;
        slots * geo.seg
    }

    /// Count a failed write and log it (at most once per [`LOG_INTERVAL`]).
    fn write_failed(&self, e: &io::Error, what: &str) {
        self.metrics.disk_write_errors.inc();
        self.fault(Fault::Write, e, what);
    }

    /// Count a write not even tried (no room in the queue, no segment to write to).
    fn write_dropped(&self) {
        self.metrics.disk_writes_dropped.inc();
        self.metrics.disk.rejected.inc();
    }

    /// Log a fault at most once per [`LOG_INTERVAL`] per kind (saying how many were not).
    fn fault(&self, kind: Fault, e: &io::Error, what: &str) {
        if let Some(suppressed) = self.faults[kind as usize].admit() {
            tracing::error!(error = %e, dir = %self.root.display(), suppressed, "{what}");
        }
    }

    /// Find `key`'s record and read its first bytes (the whole record if it is small).
    fn find(&self, key: u128) -> Result<Found, ReadFailure> {
        let entry = match self.dir.get(key) {
            Lookup::Found(e) => e,
            Lookup::Absent => return Err(ReadFailure::Missing),
            Lookup::Loading => return Err(ReadFailure::Loading),
        };
        let found = self.read_entry(entry)?;
        if found.header.key != key {
            // another key with the same 56 bits: not damage, just not this key's
            return Err(ReadFailure::Missing);
        }
        Ok(found)
    }

    /// Read the first bytes of the object record `entry` points at (the whole record if it is
    /// small), whose key has the entry's fingerprint.
    fn read_entry(&self, entry: Entry) -> Result<Found, ReadFailure> {
        let loc = entry.loc();
        let Some(seg) = self.log.segment_of(&loc) else {
            // its segment was recycled: evicted
            self.dir.remove_entry(&entry);
            return Err(ReadFailure::Missing);
        };
        let pos = Pos {
            gen: seg.gen,
            off: loc.off,
        };
        let want = if loc.hint > 0 { loc.hint } else { FIRST_READ };
        let mut bytes = None;
        if self.log.maybe_buffered(pos, want) {
            bytes = self.log.buffered(pos, want);
        }
        let on_file = bytes.is_none();
        let bytes = match bytes {
            Some(b) => b,
            // a large record's body is read on its own, into a buffer of its own (`verified`)
            None if want > SPLIT_ABOVE => log::read_head(&seg, pos, FIRST_READ, self.log.geo)?,
            None => log::read_head(&seg, pos, want, self.log.geo)?,
        };
        let header = Header::peek(&bytes).map_err(ReadFailure::Corrupt)?;
        if header.gen != seg.gen {
            return Err(ReadFailure::Corrupt("record of another generation"));
        }
        if fingerprint(header.key) != entry.fp() {
            return Err(ReadFailure::Corrupt("record of another key"));
        }
        if header.kind != Kind::Object {
            return Err(ReadFailure::Corrupt("record is not an object"));
        }
        Ok(Found {
            entry,
            seg,
            pos,
            header,
            bytes,
            on_file,
        })
    }

    /// The verified prefix of a found record (reading more of it if needed).
    fn prefix(&self, f: &Found) -> Result<Record, ReadFailure> {
        let len = f.header.prefix_len();
        let bytes = if (f.bytes.len() as u64) < len {
            log::read_head(&f.seg, f.pos, len, self.log.geo)?
        } else {
            f.bytes.clone()
        };
        f.header
            .verify(f.seg.nonce, bytes)
            .map_err(ReadFailure::Corrupt)
    }

    /// The whole object of a found record, verified.
    fn whole(&self, f: &Found) -> Result<WholeObject, ReadFailure> {
        let (record, body) = self.verified(f)?;
        Ok(WholeObject {
            head: record.head,
            body,
        })
    }

    /// A found record read whole (reading the rest of it if needed) and verified, prefix and
    /// body: the record and its body (in a buffer of its own).
    fn verified(&self, f: &Found) -> Result<(Record, Box<[u8]>), ReadFailure> {
        if f.header.span() > self.log.geo.data() {
            return Err(ReadFailure::Corrupt(
                "record larger than a segment read whole",
            ));
        }
        let record = self.prefix(f)?;
        let at = f.header.prefix_len();
        let len = usize::try_from(f.header.body_len)
            .map_err(|_| ReadFailure::Corrupt("body length out of range"))?;
        // what the first read brought of the body, then the rest straight into the buffer
        let have = f.bytes.get(at as usize..).unwrap_or_default();
        let have = &have[..have.len().min(len)];
        let mut body = Vec::with_capacity(len);
        body.extend_from_slice(have);
        if body.len() < len {
            let from = f.pos.off + at + body.len() as u64;
            log::read_append(&f.seg.file, &mut body, len - have.len(), from)?;
        }
        if body.len() < len {
            return Err(ReadFailure::Corrupt("segment cut short (truncated?)"));
        }
        record.verify(&body).map_err(ReadFailure::Corrupt)?;
        Ok((record, body.into_boxed_slice()))
    }

    /// Count a lookup's outcome, note a hit, drop a corrupt entry.
    fn settle<T>(&self, entry: Option<&Entry>, read: Result<T, ReadFailure>) -> Option<T> {
        match read {
            Ok(found) => {
                self.metrics.disk.hits.inc();
                if let Some(e) = entry {
                    self.dir.mark_hit(e);
                }
                Some(found)
            }
            Err(ReadFailure::Missing | ReadFailure::Loading) => {
                self.metrics.disk.misses.inc();
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
                if let Some(e) = entry {
                    self.drop_corrupt(e, why);
                }
                None
            }
        }
    }

    /// Drop a corrupt entry (counted, logged).
    pub(super) fn drop_corrupt(&self, entry: &Entry, why: &'static str) {
        if self.dir.remove_entry(entry) {
            self.metrics.disk_corrupt.inc();
            self.changes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                key = %format!("{:014x}", entry.fp()),
                why,
                "dropped a corrupt disk cache entry"
            );
        }
    }

    /// A small object under `key` read at once on the calling thread, counting nothing (the
    /// lean hit path's lookup): [`Now::Later`] for whatever [`DiskTier::lookup_hit`] must
    /// settle (large objects, streamed ones, a shard still loading, a failed read, damage).
    pub fn lookup_now(&self, key: u128, whole_up_to: u64) -> Now {
        let found = match self.find(key) {
            Ok(f) => f,
            Err(ReadFailure::Missing) => return Now::Absent,
            Err(_) => return Now::Later,
        };
        let h = &found.header;
        if h.span() > BLOCK || streams(h, whole_up_to) {
            return Now::Later;
        }
        match self.whole(&found) {
            Ok(object) => Now::Ready(ReadyHit {
                object,
                file: (found.on_file && h.body_len > SEND_FILE_ABOVE).then(|| BodyFile {
                    seg: found.seg.clone(),
                    off: found.pos.off + h.prefix_len(),
                    len: h.body_len,
                }),
                entry: found.entry,
            }),
            Err(_) => Now::Later,
        }
    }

    /// Count a hit found by [`DiskTier::lookup_now`] as [`DiskTier::lookup_hit`] counts one.
    pub fn count_hit(&self, hit: &ReadyHit) {
        self.settle(Some(&hit.entry), Ok(()));
    }

    /// A hit on `key`, verified; `None` when absent, unreadable or corrupt (a corrupt entry is
    /// dropped and counted). Objects of up to `whole_up_to` bytes (and any not block-hashed)
    /// are read whole, larger ones are streamed ([`StreamHit`]).
    pub async fn lookup_hit(self: &Arc<Self>, key: u128, whole_up_to: u64) -> Option<DiskHit> {
        let mut found = self.find(key);
        if matches!(found, Err(ReadFailure::Loading))
            && self.active.load(Ordering::Acquire)
            && self.dir.wait_loaded(key, LOAD_WAIT).await
        {
            found = self.find(key);
        }
        let found = match found {
            Ok(f) => f,
            Err(e) => return self.settle(None, Err::<DiskHit, _>(e)),
        };
        let entry = found.entry;
        let h = found.header;
        let read = if streams(&h, whole_up_to) {
            let tier = self.clone();
            blocking(move || Ok(tier.open_stream(found)))
                .await
                .unwrap_or_else(|e| Err(ReadFailure::Io(e)))
        } else if h.span() > BLOCK {
            // a large read would stall this thread's other requests on a cold disk
            let tier = self.clone();
            blocking(move || Ok(tier.whole(&found).map(DiskHit::Whole)))
                .await
                .unwrap_or_else(|e| Err(ReadFailure::Io(e)))
        } else {
            self.whole(&found).map(DiskHit::Whole)
        };
        self.settle(Some(&entry), read)
    }

    fn open_stream(self: &Arc<Self>, f: Found) -> Result<DiskHit, ReadFailure> {
        let record = self.prefix(&f)?;
        let end = self.log.geo.advance(f.pos, f.header.span());
        let segs = self
            .log
            .segments(f.pos.gen, end.gen)
            .ok_or(ReadFailure::Missing)?;
        // the files must hold the whole body: a cut-short segment is a miss now, not a
        // response cut off later
        let body_end = self
            .log
            .geo
            .advance(f.pos, f.header.prefix_len() + f.header.body_len);
        for seg in &segs {
            let need = if seg.gen == body_end.gen {
                body_end.off
            } else {
                self.log.geo.seg
            };
            if seg.file.metadata()?.len() < need {
                return Err(ReadFailure::Corrupt("segment cut short (truncated?)"));
            }
        }
        let head = record.head.clone();
        let hit = StreamHit::open(self.clone(), f.entry, segs, f.pos, record)?;
        Ok(DiskHit::Stream { head, hit })
    }

    /// The stored head of `key` (verified), without its body.
    pub fn head(&self, key: u128) -> Option<Bytes> {
        let found = self.find(key).ok()?;
        self.prefix(&found).ok().map(|r| r.head)
    }

    /// The key and stored head of the object whose fingerprint is `fp` ([`DiskTier::keys`]).
    pub fn stored_head(&self, fp: u64) -> Option<(u128, Bytes)> {
        let found = self.read_entry(self.dir.get_fp(fp)?).ok()?;
        let record = self.prefix(&found).ok()?;
        Some((found.header.key, record.head))
    }

    /// Store `object` under `key`, behind the response (it is found at once, written soon).
    /// Returns false if it was not stored (too large, no room in the queue, no segment).
    pub fn put(&self, key: u128, object: DiskObject) -> bool {
        if object.body.len() as u64 > self.max_object {
            self.metrics.disk.rejected.inc();
            return false;
        }
        if !self.active.load(Ordering::Acquire) {
            return self.wait_with(Waiting::Put(key, object));
        }
        self.put_now(key, object)
    }

    /// [`DiskTier::put`] into the log (this process holds the directory).
    fn put_now(&self, key: u128, object: DiskObject) -> bool {
        let digest = BodyDigest::of(&object.body);
        let body_len = object.body.len() as u64;
        let prefix = HEADER as u64 + 8 * u64::from(blocks_for(body_len)) + object.head.len() as u64;
        let span = align(prefix + body_len);
        if span > SMALL_RECORD || span > self.log.geo.data() {
            return self.queue_large(
                key,
                object.head,
                Source::Memory(object.body),
                body_len,
                digest,
                None,
            );
        }
        let mut st = self.log.state.lock();
        if st.queued + span > MAX_QUEUED_BYTES {
            drop(st);
            self.write_dropped();
            return false;
        }
        match self.append_object(&mut st, key, &object.head, &object.body, &digest) {
            Some(entry) => {
                self.dir.insert(entry);
                drop(st);
                self.changes.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => {
                drop(st);
                self.write_dropped();
                false
            }
        }
    }

    /// Queue a large object for the writer (registered so that a purge cancels it).
    fn queue_large(
        &self,
        key: u128,
        head: Bytes,
        body: Source,
        body_len: u64,
        digest: BodyDigest,
        done: Option<tokio::sync::oneshot::Sender<u64>>,
    ) -> bool {
        let in_memory = body.in_memory();
        let cancelled = Arc::new(AtomicBool::new(false));
        let mut st = self.log.state.lock();
        if st.queued + in_memory > MAX_QUEUED_BYTES {
            drop(st);
            self.write_dropped();
            return false;
        }
        st.queued += in_memory;
        self.inflight
            .lock()
            .entry(key)
            .or_default()
            .push(cancelled.clone());
        let task = Task::Large {
            key,
            head,
            body,
            body_len,
            digest,
            cancelled,
            done,
        };
        self.log.push(&mut st, Job::Task(task));
        true
    }

    /// A large write is over: unregister it (and release its queued bytes).
    pub(super) fn end_inflight(&self, key: u128, flag: &Arc<AtomicBool>, in_memory: u64) {
        let mut inflight = self.inflight.lock();
        if let Some(list) = inflight.get_mut(&key) {
            list.retain(|f| !Arc::ptr_eq(f, flag));
            if list.is_empty() {
                inflight.remove(&key);
            }
        }
        drop(inflight);
        let mut st = self.log.state.lock();
        st.queued = st.queued.saturating_sub(in_memory);
    }

    /// Keep a write for when this process holds the directory; false if too much waits.
    fn wait_with(&self, w: Waiting) -> bool {
        let size = match &w {
            Waiting::Put(_, o) => (o.head.len() + o.body.len()) as u64,
            Waiting::Remove(_) => 16,
        };
        let mut waiting = self.waiting.lock();
        if self.active.load(Ordering::Acquire) {
            drop(waiting);
            return match w {
                Waiting::Put(k, o) => self.put_now(k, o),
                Waiting::Remove(k) => self.remove_now(k),
            };
        }
        if waiting.1 + size > MAX_QUEUED_BYTES {
            self.write_dropped();
            return false;
        }
        waiting.1 += size;
        waiting.0.push(w);
        true
    }

    /// Replace the stored head of `key` (a 304 freshened it), keeping its body. Returns
    /// whether the object is (as far as the directory knows) stored.
    pub fn update_head(&self, key: u128, head: Bytes) -> bool {
        let found = match self.find(key) {
            Ok(f) => f,
            Err(ReadFailure::Missing | ReadFailure::Loading) => return !self.dir.complete(),
            Err(_) => return false,
        };
        let span = found.header.span();
        if span <= SMALL_RECORD {
            return match self.whole(&found) {
                Ok(object) => self.put(
                    key,
                    DiskObject {
                        head,
                        body: Bytes::from(object.body),
                    },
                ),
                Err(why) => {
                    self.settle(Some(&found.entry), Err::<(), _>(why));
                    false
                }
            };
        }
        let record = match self.prefix(&found) {
            Ok(r) => r,
            Err(_) => return false,
        };
        let end = self.log.geo.advance(found.pos, span);
        let Some(segs) = self.log.segments(found.pos.gen, end.gen) else {
            return false;
        };
        let body_len = record.body_len();
        let digest = record.digest.clone();
        let source = Source::Record {
            segs,
            start: found.pos,
            record: Arc::new(record),
        };
        self.queue_large(key, head, source, body_len, digest, None)
    }

    /// Every object's fingerprint (a snapshot: objects placed later are not in it); see
    /// [`DiskTier::stored_head`].
    pub fn keys(&self) -> Vec<u64> {
        self.dir.fingerprints()
    }

    /// Replace the stored head of `key` now, keeping its body; false if it is not stored.
    pub fn replace_head_now(&self, key: u128, head: Bytes) -> io::Result<bool> {
        if !matches!(self.dir.get(key), Lookup::Found(_)) {
            return Ok(false);
        }
        Ok(self.update_head(key, head))
    }

    /// Make what was written durable (`syncfs` of the cache's file system). Blocking.
    pub fn sync(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let dir = File::open(&self.root)?;
        // SAFETY: `dir` is an open descriptor for the duration of the call.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Remove `key` (stored, queued or being spooled); true if it was there. A tombstone is
    /// appended so that a restart does not bring it back ([`DiskTier::flush_queued_so_far`]
    /// makes it durable).
    pub fn remove(&self, key: u128) -> bool {
        if !self.active.load(Ordering::Acquire) {
            let spooling = self.cancel_spools(key);
            let found = self.dir.remove(key);
            self.wait_with(Waiting::Remove(key));
            return found || spooling;
        }
        self.remove_now(key)
    }

    /// [`DiskTier::remove`] with a tombstone in the log (this process holds the directory).
    fn remove_now(&self, key: u128) -> bool {
        let spooling = self.cancel_spools(key);
        let inflight = self.cancel_inflight(key);
        let mut st = self.log.state.lock();
        let found = self.dir.remove(key);
        if found || spooling || inflight || !self.dir.complete() {
            self.append_tombstone(&mut st, key);
        }
        drop(st);
        self.changes.fetch_add(1, Ordering::Relaxed);
        found || spooling || inflight
    }

    fn cancel_inflight(&self, key: u128) -> bool {
        match self.inflight.lock().get(&key) {
            Some(list) => {
                list.iter().for_each(|f| f.store(true, Ordering::Release));
                !list.is_empty()
            }
            None => false,
        }
    }

    /// Wait until queued writes have landed, at most `timeout`; true if drained.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.flush_queued_so_far(timeout)
    }

    /// Wait until the writes queued before this call have landed (or failed), at most
    /// `timeout`; true if they have. Writes queued meanwhile are not waited for.
    pub fn flush_queued_so_far(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.log.state.lock();
        loop {
            // tombstones waiting for a segment go into the buffers first
            while !st.pending_tombstones.is_empty() {
                if !self.active.load(Ordering::Acquire)
                    || self.log.landed.wait_until(&mut st, deadline).timed_out()
                {
                    return false;
                }
            }
            let requeued = st.requeued;
            self.log.seal(&mut st);
            let target = st.next_seq;
            while st.done_seq < target {
                if !self.active.load(Ordering::Acquire) {
                    return false;
                }
                if self.log.landed.wait_until(&mut st, deadline).timed_out() {
                    return st.done_seq >= target && st.requeued == requeued;
                }
            }
            // a write that failed meanwhile put its tombstones back: they must land too
            if st.requeued == requeued {
                return true;
            }
        }
    }

    /// A graceful stop: write what is queued and a checkpoint, within `timeout`; true if done.
    /// The process then exits (releasing the directory to a process taking over).
    pub fn shutdown(&self, timeout: Duration) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return true;
        }
        let deadline = Instant::now() + timeout;
        {
            let mut st = self.log.state.lock();
            if self.dir.complete() {
                self.checkpoint_here(&mut st);
            }
        }
        let flushed = self.flush_queued_so_far(deadline.saturating_duration_since(Instant::now()));
        // from here on, writes wait (as in a process that does not hold the directory)
        self.active.store(false, Ordering::Release);
        let mut st = self.log.state.lock();
        st.stopping = true;
        self.log.wake.notify_one();
        drop(st);
        if flushed {
            *self.lock.lock() = None;
        }
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    /// A tier of 4 MiB (8 segments of 512 KiB) once `prepared` segments are ready.
    fn small_tier(dir: &Path, prepared: u64) -> Arc<DiskTier> {
        let metrics = Metrics::new(16 << 20, 1 << 30).expect("metrics");
        let tier = DiskTier::open(dir, 4 << 20, 1 << 20, metrics.storage.clone());
        let ready = Instant::now() + Duration::from_secs(10);
        while tier.log.state.lock().prepared < prepared {
            assert!(Instant::now() < ready, "no segments prepared");
            std::thread::sleep(Duration::from_millis(10));
        }
        tier
    }

    /// The key of the first record of generation `gen`'s segment, if it is a tombstone.
    fn first_tombstone(tier: &DiskTier, gen: u64) -> Option<u128> {
        let seg = tier.log.segment(gen)?;
        let mut first = vec![0u8; HEADER];
        let read = log::read_full(&seg.file, &mut first, log::DATA_START).ok()?;
        let h = Header::peek(&first[..read]).ok()?;
        (h.kind == Kind::Tombstone).then_some(h.key)
    }

    /// A purge whose tombstone finds no room (the segment full, the next one not prepared yet)
    /// is not lost: the tombstone waits, the writer appends it first thing in the next segment,
    /// and `flush_queued_so_far` (which the ban lurker waits on before retiring a purge) returns
    /// only once it is on disk.
    #[test]
    fn a_tombstone_with_no_room_waits_for_the_next_segment_and_is_flushed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tier = small_tier(dir.path(), 1);
        let key = 0x1234_5678_9abc_def0_0fed_cba9_8765_4321_u128;
        let gen = {
            let mut st = tier.log.state.lock();
            // the cursor at the very end of the last segment prepared
            let gen = st.prepared;
            st.cursor = Some(Pos {
                gen,
                off: tier.log.geo.seg,
            });
            st.cursor_seg = tier.log.segment(gen);
            tier.append_tombstone(&mut st, key);
            assert_eq!(st.pending_tombstones, [key], "no room: the tombstone waits");
            gen
        };
        assert!(
            tier.flush_queued_so_far(Duration::from_secs(10)),
            "the waiting tombstone was written"
        );
        assert!(tier.log.state.lock().pending_tombstones.is_empty());
        assert_eq!(first_tombstone(&tier, gen + 1), Some(key));
    }

    /// A buffer whose write fails leaves a hole (a replay stops there): the purges'
    /// tombstones in it are appended again in the next segment, nothing more goes into the
    /// damaged one, and `flush_queued_so_far` returns once they are on disk.
    #[test]
    fn tombstones_of_a_buffer_that_failed_are_appended_again_in_the_next_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tier = small_tier(dir.path(), 2);
        let gen = tier.log.state.lock().cursor.expect("cursor").gen;
        // the segment's file, open read-only from now on: its next write fails
        let seg = tier.log.segment(gen).expect("segment");
        let read_only = File::open(tier.log.path(tier.log.geo.slot(gen))).expect("open");
        tier.log.install(Arc::new(Segment {
            file: read_only,
            gen,
            nonce: seg.nonce,
        }));
        let key = 0xfeed_u128 << 64 | 0xbeef;
        tier.append_tombstone(&mut tier.log.state.lock(), key);
        assert!(
            tier.flush_queued_so_far(Duration::from_secs(10)),
            "the tombstone was written again"
        );
        let st = tier.log.state.lock();
        assert!(st.pending_tombstones.is_empty());
        assert_eq!(
            st.requeued, 1,
            "the failed buffer's tombstone put back once"
        );
        assert!(
            st.cursor.is_some_and(|c| c.gen > gen),
            "nothing more goes into the segment with the hole"
        );
        drop(st);
        assert_eq!(first_tombstone(&tier, gen + 1), Some(key));
    }
}
