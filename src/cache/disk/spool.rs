//! Streaming fills to disk: a body too large for memory is written to a temporary file as it
//! arrives, hashed block by block, and appended to the segment log by the writer thread when
//! complete. Memory use is one chunk in flight, whatever the object's size.
//!
//! Contracts:
//! - Readers following a spool (coalesced requests, and the first client when fills stream)
//!   read what has been written; a spool dropped before [`Spool::finish`] fails them.
//! - A disk fault while spooling never fails a response: the rest of the body is kept in
//!   memory for the spool's readers, and the object is not stored (counted, logged).
//! - A purge of the key cancels the spool: the finished object is deleted, never served.

use super::record::BlockHasher;
use super::writer::Source;
use super::{blocking, DiskTier};
use bytes::Bytes;
use parking_lot::Mutex;
use pingora_cache::key::CacheKey;
use pingora_cache::storage::{HandleHit, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_error::{Error, ErrorType, Result};
use std::any::Any;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// First byte of a spool's streaming-write tag (the memory tier's tags are 8 bytes long).
pub const SPOOL_TAG: u8 = b'd';

/// Bytes a reader takes from a spool file per read.
const READ_CHUNK: u64 = 256 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Writing,
    Complete,
    Failed,
}

struct State {
    /// Body bytes in the file.
    in_file: u64,
    /// Body bytes after `in_file` that could not be written (disk fault): kept for readers.
    tail: Vec<Bytes>,
    status: Status,
}

/// What readers of a spool share with its writer.
pub struct SpoolShared {
    id: u64,
    head: Bytes,
    file: Arc<File>,
    state: Mutex<State>,
    /// Set by a purge: the object must not be stored.
    cancelled: AtomicBool,
    progress: watch::Sender<u64>,
}

impl SpoolShared {
    /// The spool's id (its streaming-write tag without the [`SPOOL_TAG`] byte).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The encoded head of the object being written.
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    /// Mark the spool cancelled (a purge of its key).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    fn set_status(&self, status: Status) {
        self.state.lock().status = status;
        self.progress.send_modify(|n| *n += 1);
    }

    /// A reader of the body from byte `offset` on.
    pub fn follow(self: &Arc<Self>, offset: u64) -> SpoolHit {
        SpoolHit {
            progress: self.progress.subscribe(),
            shared: self.clone(),
            pos: offset,
        }
    }
}

/// Writes one object's body to disk as it arrives. Create with [`DiskTier::begin_spool`].
pub struct Spool {
    tier: Arc<DiskTier>,
    key: u128,
    shared: Arc<SpoolShared>,
    tmp: PathBuf,
    hasher: BlockHasher,
    len: u64,
    write_failed: bool,
    finished: bool,
    tag: [u8; 9],
}

impl DiskTier {
    /// Start spooling the body of `key` (stored head `head`) to a temporary file; `None` if
    /// the file cannot be created (counted and logged).
    pub fn begin_spool(self: &Arc<Self>, key: u128, head: Bytes) -> Option<Spool> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}-{seq}.spool", std::process::id()));
        let create = || {
            File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
        };
        let file = match create() {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.prepare_dirs().and_then(|()| create())
            }
            other => other,
        };
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                self.write_failed(&e, "disk tier write failed; object not stored");
                return None;
            }
        };
        let (progress, _) = watch::channel(0);
        let shared = Arc::new(SpoolShared {
            id: seq,
            head,
            file: Arc::new(file),
            state: Mutex::new(State {
                in_file: 0,
                tail: Vec::new(),
                status: Status::Writing,
            }),
            cancelled: AtomicBool::new(false),
            progress,
        });
        self.spools
            .lock()
            .entry(key)
            .or_default()
            .push(shared.clone());
        let mut tag = [SPOOL_TAG; 9];
        tag[1..].copy_from_slice(&seq.to_le_bytes());
        Some(Spool {
            tier: self.clone(),
            key,
            shared,
            tmp,
            hasher: BlockHasher::default(),
            len: 0,
            write_failed: false,
            finished: false,
            tag,
        })
    }

    /// The in-flight spool of `key` (the one with `id`, or the newest).
    pub fn spool(&self, key: u128, id: Option<u64>) -> Option<Arc<SpoolShared>> {
        let spools = self.spools.lock();
        let list = spools.get(&key)?;
        match id {
            Some(id) => list.iter().find(|s| s.id == id).cloned(),
            None => list.last().cloned(),
        }
    }

    fn end_spool(&self, key: u128, id: u64) {
        let mut spools = self.spools.lock();
        if let Some(list) = spools.get_mut(&key) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                spools.remove(&key);
            }
        }
    }

    /// Cancel in-flight spools of `key`; true if there were any.
    pub(super) fn cancel_spools(&self, key: u128) -> bool {
        match self.spools.lock().get(&key) {
            Some(list) => {
                list.iter().for_each(|s| s.cancel());
                !list.is_empty()
            }
            None => false,
        }
    }
}

impl Spool {
    /// The streaming-write tag readers use to find this spool.
    pub fn tag(&self) -> &[u8] {
        &self.tag
    }

    /// What readers share with this writer.
    pub fn shared(&self) -> &Arc<SpoolShared> {
        &self.shared
    }

    /// Append `data` to the body. Never fails: a disk fault keeps the rest in memory for the
    /// spool's readers and the object is not stored.
    pub async fn write(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        self.len += data.len() as u64;
        if !self.write_failed {
            self.hasher.update(&data);
            let file = self.shared.file.clone();
            let offset = self.shared.state.lock().in_file;
            let piece = data.clone();
            match blocking(move || file.write_all_at(&piece, offset)).await {
                Ok(()) => {
                    self.shared.state.lock().in_file += data.len() as u64;
                    self.shared.progress.send_modify(|n| *n += 1);
                    return;
                }
                Err(e) => {
                    self.write_failed = true;
                    self.tier
                        .write_failed(&e, "disk tier write failed; object not stored");
                }
            }
        }
        self.shared.state.lock().tail.push(data);
        self.shared.progress.send_modify(|n| *n += 1);
    }

    /// Complete the body: store the object unless a fault or a purge got in the way. Returns
    /// the bytes stored (0 if not stored).
    pub async fn finish(mut self) -> u64 {
        // if this future is dropped mid-commit, Drop fails the readers and cleans up
        let stored = self.commit().await;
        self.finished = true;
        self.shared.set_status(Status::Complete);
        self.tier.end_spool(self.key, self.shared.id);
        let tmp = std::mem::take(&mut self.tmp);
        let _ = blocking(move || {
            let _ = fs::remove_file(&tmp);
            Ok(())
        })
        .await;
        stored
    }

    async fn commit(&mut self) -> u64 {
        if self.write_failed || self.shared.cancelled.load(Ordering::Acquire) {
            return 0;
        }
        let hasher = std::mem::take(&mut self.hasher);
        let (done, stored) = tokio::sync::oneshot::channel();
        let queued = self.tier.queue_large(
            self.key,
            self.shared.head.clone(),
            Source::File(self.shared.file.clone()),
            self.len,
            hasher.finish(),
            Some(done),
        );
        if !queued {
            return 0;
        }
        // a purge between the check above and the queueing cancels the queued write too
        if self.shared.cancelled.load(Ordering::Acquire) {
            self.tier.cancel_inflight(self.key);
        }
        stored.await.unwrap_or(0)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.set_status(Status::Failed);
            self.tier.end_spool(self.key, self.shared.id);
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A reader following a spool (or a fill that spilled into one).
pub struct SpoolHit {
    shared: Arc<SpoolShared>,
    pos: u64,
    progress: watch::Receiver<u64>,
}

/// Where the next bytes of a spool come from.
enum Next {
    File(u64),
    Memory(Bytes),
    End,
    Failed,
    Wait,
}

impl SpoolHit {
    fn next(&mut self) -> Next {
        let state = self.shared.state.lock();
        self.progress.mark_unchanged();
        if self.pos < state.in_file {
            return Next::File((state.in_file - self.pos).min(READ_CHUNK));
        }
        let mut at = state.in_file;
        for piece in &state.tail {
            let end = at + piece.len() as u64;
            if self.pos < end {
                return Next::Memory(piece.slice((self.pos - at) as usize..));
            }
            at = end;
        }
        match state.status {
            Status::Complete => Next::End,
            Status::Failed => Next::Failed,
            Status::Writing => Next::Wait,
        }
    }
}

#[async_trait::async_trait]
impl HandleHit for SpoolHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.next() {
                Next::File(n) => {
                    let file = self.shared.file.clone();
                    let pos = self.pos;
                    let read = blocking(move || {
                        let mut buf = vec![0; n as usize];
                        file.read_exact_at(&mut buf, pos)?;
                        Ok(buf)
                    })
                    .await;
                    let buf = read.map_err(|e| {
                        Error::because(ErrorType::InternalError, "reading a spooled cache fill", e)
                    })?;
                    self.pos += n;
                    return Ok(Some(Bytes::from(buf)));
                }
                Next::Memory(piece) => {
                    self.pos += piece.len() as u64;
                    return Ok(Some(piece));
                }
                Next::End => return Ok(None),
                Next::Failed => {
                    return Error::e_explain(
                        ErrorType::InternalError,
                        "the cache fill this response streams from failed",
                    )
                }
                Next::Wait => {
                    if self.progress.changed().await.is_err() {
                        return Error::e_explain(
                            ErrorType::InternalError,
                            "cache fill writer vanished",
                        );
                    }
                }
            }
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn should_count_access(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
