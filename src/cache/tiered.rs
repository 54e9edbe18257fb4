//! Memory over disk behind one pingora-cache [`Storage`].
//!
//! - Lookup: memory, then disk; a disk hit is put into memory (promotion: its body's buffer,
//!   not a copy), where the memory tier's eviction policy decides whether it stays (a promoted
//!   object not hit again leaves first, so a scan of cold disk objects does not flush the hot
//!   set). [`TieredStorage::lookup_now`] is the same lookup without waiting, for the lean path.
//!   Objects too large for memory are streamed from disk, never promoted.
//! - Fill: into memory (streaming readers follow it there); when it completes, the object is
//!   queued for the disk writer and the response does not wait for the disk.
//! - Large fills: a body known (`Content-Length`) or found (while it arrives) to be larger
//!   than the memory tier's objects may be, or than [`BLOCK`] with no memory tier, is spooled
//!   to disk as it arrives ([`Spool`]); readers of a fill that spills follow it there.
//! - 304 freshening, expiry and purges apply to both tiers; a purge also drops a queued write
//!   and cancels in-flight fills.
//! - Either tier may be absent (`cache.tiers`).
//! - Background passes ([`TieredStorage::sweep`]) visit every stored object in both tiers
//!   and remove it or lower its freshness as told. Objects still on their way in (fills,
//!   spools, queued writes) are counted by the time the origin confirmed them
//!   ([`TieredStorage::oldest_arriving`]): a pass may miss them, so whoever acts on a pass
//!   must not assume it covered objects at least that old. A promotion that raced a pass
//!   acting on its object's disk copy is undone.

use super::disk::record::BLOCK;
use super::disk::spool::{Spool, SpoolShared, SPOOL_TAG};
use super::disk::{BodyFile, DiskHit, DiskObject, DiskTier, Now, ReadyHit, WholeObject};
use super::entry::{
    confirmed_at, decode_head, decode_stored, encode_head, expire_stored, from_ms, to_ms, Stored,
};
use super::memory::{
    concat, hash, purged, Committed, CompleteHit, Continuation, Held, MemoryMiss, MemoryTier,
    StoredObject,
};
use super::partial::PartialStore;
use super::ranges::announced_length;
use crate::metrics::StorageMetrics;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora_cache::eviction::CacheEntryKey;
use pingora_cache::key::CacheKey;
use pingora_cache::storage::{
    HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType,
    Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheMeta;
use pingora_error::Result;
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// Disk heads a sweep reads per trip to the blocking pool.
const SWEEP_BATCH: usize = 256;

/// The node's storage: an optional memory tier over an optional disk tier.
pub struct TieredStorage {
    memory: Option<&'static MemoryTier>,
    disk: Option<Arc<DiskTier>>,
    metrics: StorageMetrics,
    /// Objects on their way in, by confirmation time (ms since the epoch): how many of each.
    arriving: Mutex<BTreeMap<u64, usize>>,
    /// Bumped after a sweep changes an object on disk (promotions check it).
    sweeps: AtomicU64,
    /// Parts of objects from 206 responses (purged with their URL).
    parts: Option<PartialStore>,
}

/// What a sweep does with one stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepAction {
    /// Leave it.
    Keep,
    /// Remove it from both tiers.
    Remove,
    /// Make it stale from this time on (if it is fresh longer).
    ExpireAt(SystemTime),
}

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Objects looked at (an object in both tiers counts twice).
    pub visited: u64,
    /// Objects removed.
    pub removed: u64,
    /// Objects made stale.
    pub expired: u64,
    /// Objects whose head could not be read or decoded (left alone).
    pub unreadable: u64,
}

/// An object on its way into the tiers (see [`TieredStorage::oldest_arriving`]).
/// An object counted as on its way into the storage until this drops
/// ([`TieredStorage::oldest_arriving`]).
pub struct Arriving {
    storage: &'static TieredStorage,
    ms: u64,
}

impl Drop for Arriving {
    fn drop(&mut self) {
        let mut arriving = self.storage.arriving.lock();
        if let Some(n) = arriving.get_mut(&self.ms) {
            *n -= 1;
            if *n == 0 {
                arriving.remove(&self.ms);
            }
        }
    }
}

impl TieredStorage {
    /// Compose the tiers; at least one should be present (a storage with neither never hits).
    pub fn new(
        memory: Option<&'static MemoryTier>,
        disk: Option<Arc<DiskTier>>,
        metrics: StorageMetrics,
    ) -> Self {
        TieredStorage {
            memory,
            disk,
            metrics,
            arriving: Mutex::new(BTreeMap::new()),
            sweeps: AtomicU64::new(0),
            parts: None,
        }
    }

    /// This storage with a store of parts of 206 responses, `capacity` bytes (0: none).
    pub fn with_parts(mut self, capacity: u64) -> Self {
        self.parts = (capacity > 0).then(|| PartialStore::new(capacity));
        self
    }

    /// The store of parts of 206 responses, when the node keeps them.
    pub fn parts(&self) -> Option<&PartialStore> {
        self.parts.as_ref()
    }

    /// Count an object confirmed by the origin at `confirmed` as arriving until the guard
    /// drops (after it is stored or abandoned).
    pub fn arriving(&'static self, confirmed: SystemTime) -> Arriving {
        let ms = to_ms(confirmed);
        *self.arriving.lock().entry(ms).or_default() += 1;
        Arriving { storage: self, ms }
    }

    /// The earliest origin confirmation time of the objects on their way into the tiers (a
    /// sweep may not see them), if any.
    pub fn oldest_arriving(&self) -> Option<SystemTime> {
        let arriving = self.arriving.lock();
        let ms = *arriving.keys().next()?;
        Some(from_ms(ms))
    }

    /// Visit every stored object, disk first, then memory, and do what `judge` says with it.
    /// Every object stored before the sweep starts and not removed meanwhile is visited (see
    /// [`TieredStorage::oldest_arriving`] for the rest). Disk reads run on the blocking pool.
    pub async fn sweep<J>(&'static self, judge: J) -> SweepReport
    where
        J: Fn(&Stored) -> SweepAction + Send + Sync + 'static,
    {
        let judge = Arc::new(judge);
        let mut report = SweepReport::default();
        if let Some(disk) = &self.disk {
            let keys = disk.keys();
            for batch in keys.chunks(SWEEP_BATCH) {
                let batch = batch.to_vec();
                let (disk, judge) = (disk.clone(), judge.clone());
                let done = tokio::task::spawn_blocking(move || {
                    let mut report = SweepReport::default();
                    for key in batch {
                        sweep_disk_object(&disk, key, judge.as_ref(), &mut report);
                    }
                    report
                })
                .await
                .unwrap_or_default();
                report.add(done);
                if done.removed + done.expired > 0 {
                    self.sweeps.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        if let Some(memory) = self.memory {
            // after the disk: a promotion landing after this started is undone (see disk_hit)
            let mut seen = 0u32;
            for (key, head) in memory.heads() {
                report.visited += 1;
                match decode_stored(&head) {
                    Ok(stored) => match judge(&stored) {
                        SweepAction::Keep => {}
                        SweepAction::Remove => {
                            report.removed += u64::from(memory.remove(key));
                        }
                        SweepAction::ExpireAt(at) => {
                            if let Ok(Some(head)) = expire_stored(stored, at) {
                                report.expired += u64::from(memory.replace_head(key, &head));
                            }
                        }
                    },
                    Err(_) => report.unreadable += 1,
                }
                seen += 1;
                if seen.is_multiple_of(4096) {
                    tokio::task::yield_now().await;
                }
            }
        }
        if let Some(parts) = &self.parts {
            // parts are not kept stale: whatever a ban covers is dropped
            for (slot, held) in parts.sets() {
                report.visited += 1;
                let stored = Stored {
                    primary: held.primary_key().map(Bytes::copy_from_slice),
                    meta: held.meta(),
                };
                if judge(&stored) != SweepAction::Keep {
                    report.removed += u64::from(parts.remove_slot(slot));
                }
            }
        }
        report
    }

    /// The memory tier, if running.
    pub fn memory(&self) -> Option<&'static MemoryTier> {
        self.memory
    }

    /// The disk tier, if running.
    pub fn disk(&self) -> Option<&Arc<DiskTier>> {
        self.disk.as_ref()
    }

    /// Bodies above this size are spooled to disk rather than held in memory.
    fn spill_above(&self) -> u64 {
        self.memory.map_or(BLOCK, |m| m.max_object())
    }

    async fn disk_hit(&self, key: u128) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(disk) = &self.disk else {
            return Ok(None);
        };
        // a fill being spooled is newer than what is stored (readers follow it when fills
        // stream, as they do in the memory tier)
        if self.support_streaming_partial_write() {
            if let Some(spool) = disk.spool(key, None) {
                return Ok(Some(spool_hit(&spool)?));
            }
        }
        let sweeps = self.sweeps.load(Ordering::SeqCst);
        match disk.lookup_hit(key, self.spill_above()).await {
            None => Ok(None),
            Some(DiskHit::Whole(object)) => {
                let meta = decode_head(&object.head)?;
                let body = self.promote(key, object, sweeps).into_bytes();
                Ok(Some((meta, Box::new(CompleteHit::from_disk(body)))))
            }
            Some(DiskHit::Stream { head, hit }) => Ok(Some((decode_head(&head)?, Box::new(hit)))),
        }
    }
}

impl TieredStorage {
    /// Put a disk hit into the memory tier, if there is one (its eviction policy decides
    /// whether it stays); the body to serve. `sweeps` is [`TieredStorage::sweeps`] as it was
    /// before the object was read.
    fn promote(&self, key: u128, object: WholeObject, sweeps: u64) -> Body {
        let Some(memory) = self.memory else {
            return Body::Own(Bytes::from(object.body));
        };
        match memory.insert(key, &object.head, object.body) {
            Ok(stored) => {
                if self.sweeps.load(Ordering::SeqCst) != sweeps {
                    // a sweep changed disk objects since this one was read: it may have been
                    // one of them, and the memory sweep may be past it
                    memory.remove(key);
                } else {
                    self.metrics.promotions.inc();
                }
                Body::Entry(stored)
            }
            Err(body) => Body::Own(Bytes::from(body)),
        }
    }

    /// The complete object under `key`, if one is found at once, without waiting (the lean
    /// hit path, `crate::lean`): in the memory tier, else a small object on disk. Nothing is
    /// counted or promoted until [`TieredStorage::settle`]. `None` when [`Storage::lookup`]
    /// must decide (a miss, a fill in flight, a large or streamed object, a disk read to
    /// settle).
    pub fn lookup_now(&self, key: u128) -> Option<Found> {
        if let Some(memory) = self.memory {
            match memory.stored(key) {
                Held::Stored(object) => return Some(Found::Memory(object)),
                Held::Filling => return None,
                Held::Absent => {}
            }
        }
        let disk = self.disk.as_ref()?;
        if self.support_streaming_partial_write() && disk.spool(key, None).is_some() {
            return None;
        }
        let sweeps = self.sweeps.load(Ordering::SeqCst);
        match disk.lookup_now(key, self.spill_above()) {
            Now::Ready(hit) => Some(Found::Disk(hit, sweeps)),
            Now::Absent | Now::Later => None,
        }
    }

    /// Count a lookup of [`TieredStorage::lookup_now`] as [`Storage::lookup`] counts one
    /// (a memory hit; or a memory miss, a disk hit and its promotion) and give its body.
    pub fn settle(&self, key: u128, found: Found) -> Body {
        match found {
            Found::Memory(object) => {
                self.metrics.memory.hits.inc();
                Body::Entry(object)
            }
            Found::Disk(hit, sweeps) => {
                if self.memory.is_some() {
                    self.metrics.memory.misses.inc();
                }
                if let Some(disk) = &self.disk {
                    disk.count_hit(&hit);
                }
                self.promote(key, hit.object, sweeps)
            }
        }
    }
}

/// A body served from the tiers.
pub enum Body {
    /// A memory-tier entry's (shared with the tier).
    Entry(StoredObject),
    /// In a buffer of its own.
    Own(Bytes),
}

impl Body {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Body::Entry(object) => object.body(),
            Body::Own(bytes) => bytes,
        }
    }

    /// As `Bytes` (an entry's shares its memory).
    pub fn into_bytes(self) -> Bytes {
        match self {
            Body::Entry(object) => object.body_bytes(),
            Body::Own(bytes) => bytes,
        }
    }
}

/// An object found by [`TieredStorage::lookup_now`].
pub enum Found {
    /// In the memory tier.
    Memory(StoredObject),
    /// On disk, read and verified (with the sweep count before the read).
    Disk(ReadyHit, u64),
}

impl Found {
    /// The encoded head.
    pub fn head(&self) -> &[u8] {
        match self {
            Found::Memory(object) => object.head(),
            Found::Disk(hit, _) => &hit.object.head,
        }
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        match self {
            Found::Memory(object) => object.body(),
            Found::Disk(hit, _) => &hit.object.body,
        }
    }

    /// Where a disk hit's body lies in its segment file, if it may be sent from there.
    pub fn body_file(&self) -> Option<BodyFile> {
        match self {
            Found::Memory(_) => None,
            Found::Disk(hit, _) => hit.file.clone(),
        }
    }
}

impl SweepReport {
    fn add(&mut self, other: SweepReport) {
        self.visited += other.visited;
        self.removed += other.removed;
        self.expired += other.expired;
        self.unreadable += other.unreadable;
    }
}

/// One disk object of a sweep (blocking).
fn sweep_disk_object<J>(disk: &DiskTier, fp: u64, judge: &J, report: &mut SweepReport)
where
    J: Fn(&Stored) -> SweepAction,
{
    let Some((key, head)) = disk.stored_head(fp) else {
        return; // removed meanwhile
    };
    report.visited += 1;
    let Ok(stored) = decode_stored(&head) else {
        report.unreadable += 1;
        return;
    };
    match judge(&stored) {
        SweepAction::Keep => {}
        SweepAction::Remove => report.removed += u64::from(disk.remove(key)),
        SweepAction::ExpireAt(at) => {
            let Ok(Some(head)) = expire_stored(stored, at) else {
                return;
            };
            match disk.replace_head_now(key, Bytes::from(head)) {
                Ok(done) => report.expired += u64::from(done),
                Err(e) => {
                    // it stays fresh on disk: drop it rather than serve it past the purge
                    tracing::warn!(error = %e, "cannot rewrite a disk cache head; removing the object");
                    report.removed += u64::from(disk.remove(key));
                }
            }
        }
    }
}

fn spool_hit(spool: &Arc<SpoolShared>) -> Result<(CacheMeta, HitHandler)> {
    Ok((decode_head(spool.head())?, Box::new(spool.follow(0))))
}

/// Readers of a memory fill that spilled go on reading its spool.
struct SpoolContinuation(Arc<SpoolShared>);

impl Continuation for SpoolContinuation {
    fn follow(&self, offset: u64) -> HitHandler {
        Box::new(self.0.follow(offset))
    }
}

#[async_trait]
impl Storage for TieredStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        if let Some(memory) = self.memory {
            if let Some(hit) = memory.lookup(key, trace).await? {
                self.metrics.memory.hits.inc();
                return Ok(Some(hit));
            }
            self.metrics.memory.misses.inc();
        }
        self.disk_hit(hash(key)).await
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        // a spool's tag is 9 bytes (the memory tier's are 8, and may start with any byte)
        if let (Some(disk), Some(&[SPOOL_TAG, ref id @ ..])) = (&self.disk, tag) {
            if let Ok(id) = <[u8; 8]>::try_from(id) {
                return match disk.spool(hash(key), Some(u64::from_le_bytes(id))) {
                    Some(spool) => Ok(Some(spool_hit(&spool)?)),
                    None => Ok(None),
                };
            }
        }
        match self.memory {
            Some(memory) => memory.lookup_streaming_write(key, tag, trace).await,
            None => self.lookup(key, trace).await,
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let arriving = self.arriving(confirmed_at(meta));
        let h = hash(key);
        let spill_above = self.spill_above();
        let spool = match (&self.disk, announced_length(meta.headers())) {
            (Some(disk), Some(len)) if len > spill_above && len <= disk.max_object() => {
                disk.begin_spool(h, Bytes::from(encode_head(meta, key.primary_key())?))
            }
            _ => None,
        };
        let fill = match (spool, self.memory) {
            (Some(spool), memory) => {
                if memory.is_some() {
                    // announced too large for the memory tier: it goes to disk alone
                    self.metrics.memory.rejected.inc();
                }
                Fill::Spool(Box::new(spool))
            }
            (None, Some(memory)) => Fill::Memory(memory.begin_fill(key, meta)?),
            (None, None) => Fill::Buffer {
                head: Bytes::from(encode_head(meta, key.primary_key())?),
                chunks: Vec::new(),
                len: 0,
            },
        };
        Ok(Box::new(TieredMiss {
            fill,
            key: h,
            disk: self.disk.clone(),
            spill_above,
            spill_tried: false,
            _arriving: arriving,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        let key = hash(target.key());
        let mut found = self.parts.as_ref().is_some_and(|p| p.remove(target.key()));
        if let Some(memory) = self.memory {
            found |= !matches!(
                memory.purge(target, purge_type, trace).await?,
                PurgeOutcome::NotFound
            );
        }
        if let Some(disk) = &self.disk {
            found |= disk.remove(key);
        }
        Ok(purged(found))
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = hash(target.key());
        // parts are not kept stale: an expiry drops them
        let mut found = self.parts.as_ref().is_some_and(|p| p.remove(target.key()));
        if let Some(memory) = self.memory {
            found |= !matches!(memory.expire(target, trace).await?, PurgeOutcome::NotFound);
        }
        if let Some(disk) = &self.disk {
            if let Some(head) = disk.head(key) {
                found = true;
                if let Some(head) = expire_stored(decode_stored(&head)?, SystemTime::now())? {
                    disk.update_head(key, Bytes::from(head));
                }
            }
        }
        Ok(if found {
            PurgeOutcome::Expired
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<bool> {
        let mut found = false;
        if let Some(memory) = self.memory {
            found |= memory.update_meta(key, meta, trace).await?;
        }
        if let Some(disk) = &self.disk {
            // the body file is kept as is
            found |= disk.update_head(
                hash(key),
                Bytes::from(encode_head(meta, key.primary_key())?),
            );
        }
        Ok(found)
    }

    fn support_streaming_partial_write(&self) -> bool {
        self.memory.is_some_and(|m| m.streams_fills())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

enum Fill {
    /// Filling the memory tier (readers may follow the fill there).
    Memory(MemoryMiss),
    /// No memory tier: collect a small body for the disk writer.
    Buffer {
        head: Bytes,
        chunks: Vec<Bytes>,
        len: u64,
    },
    /// A large body, written to disk as it arrives (boxed: its hasher state is large).
    Spool(Box<Spool>),
}

/// One fill: into memory if it runs, then queued for disk on completion; large bodies are
/// spooled to disk instead.
struct TieredMiss {
    fill: Fill,
    key: u128,
    disk: Option<Arc<DiskTier>>,
    spill_above: u64,
    spill_tried: bool,
    /// Counted as arriving until stored or abandoned.
    _arriving: Arriving,
}

impl TieredMiss {
    /// If the body outgrows memory with `incoming` more bytes, move the fill to a spool
    /// (tried once per fill).
    async fn spill_if_large(&mut self, incoming: u64) {
        let written = match &self.fill {
            Fill::Memory(m) => m.bytes_written(),
            Fill::Buffer { len, .. } => *len,
            Fill::Spool(_) => return,
        };
        if self.spill_tried || written + incoming <= self.spill_above {
            return;
        }
        self.spill_tried = true;
        let Some(disk) = &self.disk else { return };
        if written + incoming > disk.max_object() {
            // too large for either tier: Pingora's size limit ends the fill
            return;
        }
        let (head, so_far) = match &self.fill {
            Fill::Memory(m) => (m.head(), m.body_so_far()),
            Fill::Buffer { head, chunks, .. } => (head.clone(), chunks.clone()),
            Fill::Spool(_) => return,
        };
        // on failure (counted and logged by the disk tier) the fill goes on as it was
        let Some(mut spool) = disk.begin_spool(self.key, head) else {
            return;
        };
        for chunk in so_far {
            spool.write(chunk).await;
        }
        let shared = spool.shared().clone();
        if let Fill::Memory(m) = std::mem::replace(&mut self.fill, Fill::Spool(Box::new(spool))) {
            if m.spill(Arc::new(SpoolContinuation(shared.clone()))) {
                shared.cancel();
            }
        }
    }
}

#[async_trait]
impl HandleMiss for TieredMiss {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        self.spill_if_large(data.len() as u64).await;
        match &mut self.fill {
            Fill::Memory(m) => m.write_body(data, eof).await,
            Fill::Buffer { chunks, len, .. } => {
                if !data.is_empty() {
                    *len += data.len() as u64;
                    chunks.push(data);
                }
                Ok(())
            }
            Fill::Spool(spool) => {
                spool.write(data).await;
                Ok(())
            }
        }
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let TieredMiss {
            fill,
            key,
            disk,
            _arriving,
            ..
        } = *self;
        let object = match fill {
            Fill::Memory(m) => match m.commit() {
                Committed::Object { head, body } => DiskObject { head, body },
                Committed::Cancelled => return Ok(MissFinishType::Created(0)),
            },
            Fill::Buffer { head, chunks, .. } => DiskObject {
                head,
                body: concat(&chunks),
            },
            Fill::Spool(spool) => {
                return Ok(MissFinishType::Created((*spool).finish().await as usize))
            }
        };
        let size = object.head.len() + object.body.len();
        if let Some(disk) = disk {
            disk.put(key, object);
        }
        Ok(MissFinishType::Created(size))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        match &self.fill {
            Fill::Memory(m) => m.streaming_write_tag(),
            Fill::Spool(spool) => Some(spool.tag()),
            Fill::Buffer { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use pingora_cache::trace::Span;
    use pingora_http::ResponseHeader;
    use std::time::Duration;

    fn meta(content_length: Option<u64>) -> CacheMeta {
        let now = SystemTime::now();
        let mut header = ResponseHeader::build(200, None).expect("header");
        if let Some(len) = content_length {
            header
                .append_header("content-length", len.to_string())
                .expect("content-length");
        }
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
    }

    #[tokio::test]
    async fn every_streaming_fill_is_found_by_its_tag_in_either_tier() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Metrics::new(16 << 20, 1 << 30).expect("metrics");
        let memory: &'static MemoryTier =
            Box::leak(Box::new(MemoryTier::new(16 << 20, 1 << 20, true)));
        let disk = DiskTier::open(dir.path(), 1 << 30, 1 << 30, metrics.storage.clone());
        let storage: &'static TieredStorage = Box::leak(Box::new(TieredStorage::new(
            Some(memory),
            Some(disk),
            metrics.storage.clone(),
        )));
        let span = Span::inactive().handle();
        // Memory fill tags are counters: hundreds of them start with every possible byte,
        // including the spool tags' first byte.
        for i in 0..600 {
            let large = i % 100 == 0;
            let key = CacheKey::new(format!("key-{i}"), "");
            let meta = meta(large.then_some(4 << 20));
            let miss = storage
                .get_miss_handler(&key, &meta, &span)
                .await
                .expect("miss handler");
            let tag = miss.streaming_write_tag().map(<[u8]>::to_vec);
            assert_eq!(tag.as_ref().map(Vec::len), Some(if large { 9 } else { 8 }));
            let found = storage
                .lookup_streaming_write(&key, tag.as_deref(), &span)
                .await
                .expect("lookup");
            assert!(
                found.is_some(),
                "fill {i} (tag {tag:?}) not found by its tag"
            );
        }
    }
}
