//! The memory (hot) tier: a byte-bounded `quick_cache` behind pingora-cache's [`Storage`].
//!
//! Contracts:
//! - Bounded by total weight (head + body + [`ENTRY_OVERHEAD`]). The eviction policy is
//!   Clock-PRO (scan resistant, like S3-FIFO): new objects enter a small cold segment once the
//!   tier is full and must be hit again to join the hot set, so one-hit wonders cannot flush it.
//! - Streaming writes (when enabled): a fill is readable while it is written; readers of a fill
//!   whose writer is dropped without `finish` get an error, never a clean (truncated) end.
//! - A purge also cancels in-flight fills of the key, so a purge racing a fill cannot be undone
//!   when the fill finishes.
//! - The hit path copies no body bytes: readers get the body as `Bytes` lent by the entry's
//!   own `Arc`. A 304 stores a new entry with the new head and a copy of the body (one copy per
//!   revalidation rather than a 24 B shared-buffer record on every object); readers of the old
//!   entry keep theirs.
//!
//! Why not moka (the stack's first choice): its bookkeeping alone measured ~285 bytes per
//! entry, the whole per-object budget; quick_cache's is 55 (its slot and index; see issue 2's
//! note and `examples/memory_per_object.rs`).

use super::entry::{decode_head, decode_stored, encode_head, expire_stored};
use crate::metrics::TierMetrics;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use pingora_cache::eviction::CacheEntryKey;
use pingora_cache::key::{CacheHashKey, CacheKey};
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheMeta;
use pingora_error::{Error, ErrorType, Result};
use prometheus::IntCounter;
use quick_cache::DefaultHashBuilder;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

mod hit;
mod miss;

pub(crate) use hit::is_memory_hit;
pub use hit::CompleteHit;
use hit::PartialHit;
pub use miss::{Committed, MemoryMiss};

/// Bytes charged per entry on top of head and body: the table's slot (48) and its share of
/// the table's index (~7), and our `Entry` with its `Arc` (48); allocator rounding of the
/// head comes on top (`examples/memory_per_object.rs`).
pub const ENTRY_OVERHEAD: u64 = 104;

/// Average object size assumed when sizing the tier's bookkeeping for a byte capacity.
const ESTIMATED_OBJECT_SIZE: u64 = 8 * 1024;

/// A stored object: its head (freshness fields + encoded header, exact size) and its body
/// (exact size). Readers share both through the entry's `Arc` ([`HeadOf`], [`BodyOf`]): a
/// body of its own `Bytes` would carry a 24 B shared-buffer record for every object.
struct Entry {
    head: Box<[u8]>,
    body: Box<[u8]>,
}

/// Lends an entry's body to `Bytes` without copying it.
struct BodyOf(Arc<Entry>);

impl AsRef<[u8]> for BodyOf {
    fn as_ref(&self) -> &[u8] {
        &self.0.body
    }
}

/// Lends an entry's head to `Bytes` without copying it.
struct HeadOf(Arc<Entry>);

impl AsRef<[u8]> for HeadOf {
    fn as_ref(&self) -> &[u8] {
        &self.0.head
    }
}

impl Entry {
    /// Copy the body `chunks` into one exact-size buffer: a chunk may be a slice of a larger
    /// read buffer that would otherwise stay allocated as long as the object is cached.
    fn new(head: Box<[u8]>, chunks: &[Bytes]) -> Entry {
        Entry {
            head,
            // an exact-size, unshared buffer: no second copy
            body: Vec::from(concat(chunks)).into_boxed_slice(),
        }
    }

    /// The body, sharing the entry's memory.
    fn body_bytes(self: &Arc<Self>) -> Bytes {
        Bytes::from_owner(BodyOf(self.clone()))
    }

    /// The encoded head, sharing the entry's memory.
    fn head_bytes(self: &Arc<Self>) -> Bytes {
        Bytes::from_owner(HeadOf(self.clone()))
    }

    fn meta(self: &Arc<Self>) -> Result<CacheMeta> {
        decode_head(&self.head_bytes())
    }
}

/// A stored object lent out by [`MemoryTier::stored`].
pub struct StoredObject(Arc<Entry>);

/// What the memory tier holds under a key ([`MemoryTier::stored`]).
pub enum Held {
    /// A complete object.
    Stored(StoredObject),
    /// A fill in flight, readable (newer than any stored object: lookups follow it).
    Filling,
    /// Neither.
    Absent,
}

impl StoredObject {
    /// The body as `Bytes`, sharing the entry's memory.
    pub fn body_bytes(&self) -> Bytes {
        self.0.body_bytes()
    }

    /// The encoded head (`entry::encode_head`).
    pub fn head(&self) -> &[u8] {
        &self.0.head
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.0.body
    }
}

/// A key as the table stores it: the tiers' u128 key as two u64 halves. A u128 is 16-aligned,
/// which pads each of the table's slots by 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Slot([u64; 2]);

impl From<u128> for Slot {
    fn from(key: u128) -> Slot {
        Slot([key as u64, (key >> 64) as u64])
    }
}

impl From<Slot> for u128 {
    fn from(Slot([low, high]): Slot) -> u128 {
        u128::from(high) << 64 | u128::from(low)
    }
}

/// Counts evictions.
#[derive(Clone)]
struct Lifecycle(Option<IntCounter>);

impl quick_cache::Lifecycle<Slot, Arc<Entry>> for Lifecycle {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _state: &mut (), _key: Slot, _val: Arc<Entry>) {
        if let Some(c) = &self.0 {
            c.inc();
        }
    }
}

#[derive(Clone)]
struct Weigher;

impl quick_cache::Weighter<Slot, Arc<Entry>> for Weigher {
    fn weight(&self, _key: &Slot, e: &Arc<Entry>) -> u64 {
        (e.head.len() + e.body.len()) as u64 + ENTRY_OVERHEAD
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FillStatus {
    Writing,
    Complete,
    Failed,
    /// The fill outgrew this tier and goes on elsewhere ([`MemoryMiss::spill`]).
    Spilled,
}

/// Where a fill's body goes on once it outgrew this tier ([`MemoryMiss::spill`]).
pub trait Continuation: Send + Sync {
    /// A reader of the body from byte `offset` on.
    fn follow(&self, offset: u64) -> HitHandler;
}

struct FillState {
    chunks: Vec<Bytes>,
    status: FillStatus,
    /// Set by a purge: the finished fill must not be inserted.
    cancelled: bool,
    /// Set when spilled: where readers go on.
    continuation: Option<Arc<dyn Continuation>>,
}

/// A body being written; readers follow it chunk by chunk.
struct Fill {
    id: u64,
    head: Bytes,
    state: RwLock<FillState>,
    progress: watch::Sender<usize>,
}

/// The memory tier storage. Create one with [`MemoryTier::new`] and leak it once at start-up.
pub struct MemoryTier {
    entries: quick_cache::sync::Cache<Slot, Arc<Entry>, Weigher, DefaultHashBuilder, Lifecycle>,
    /// Counts objects too large for this tier.
    rejected: Option<IntCounter>,
    max_object: u64,
    fills: Mutex<HashMap<u128, Vec<Arc<Fill>>>>,
    fill_count: AtomicUsize,
    next_fill_id: AtomicU64,
    stream_fills: bool,
}

/// The tiers' key: Pingora's combined (primary + variance) hash.
pub fn hash(key: &impl CacheHashKey) -> u128 {
    u128::from_le_bytes(key.combined_bin())
}

/// `chunks` copied into one exact-size buffer (a stored body must not pin the larger read
/// buffers its chunks may be slices of).
pub fn concat(chunks: &[Bytes]) -> Bytes {
    let mut body = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks {
        body.extend_from_slice(c);
    }
    Bytes::from(body)
}

/// The outcome of a purge that `found` something or not.
pub fn purged(found: bool) -> PurgeOutcome {
    if found {
        PurgeOutcome::Purged(None)
    } else {
        PurgeOutcome::NotFound
    }
}

/// Shard count: as many as useful for concurrency, but few enough that one shard's hot
/// segment (97% of its share of the capacity) holds an object of `max_object` bytes.
fn shards_for(capacity: u64, max_object: u64) -> usize {
    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut shards = (parallel * 4).next_power_of_two();
    let largest = max_object
        .saturating_add(64 * 1024)
        .saturating_add(ENTRY_OVERHEAD);
    while shards > 1 && (capacity / shards as u64) * 97 / 100 < largest {
        shards /= 2;
    }
    shards
}

impl MemoryTier {
    /// A tier holding at most `capacity` bytes, storing objects of up to `max_object` bytes.
    /// With `stream_fills`, requests coalesced behind a fill read it while it is written;
    /// without, they wait until it is complete (and refetch if it fails), and the first client
    /// is served straight from the origin.
    pub fn new(capacity: u64, max_object: u64, stream_fills: bool) -> Self {
        Self::with_metrics(capacity, max_object, stream_fills, None)
    }

    /// [`MemoryTier::new`], counting evictions and rejected admissions in `metrics`.
    pub fn with_metrics(
        capacity: u64,
        max_object: u64,
        stream_fills: bool,
        metrics: Option<TierMetrics>,
    ) -> Self {
        let (evictions, rejected) = match metrics {
            Some(m) => (Some(m.evictions), Some(m.rejected)),
            None => (None, None),
        };
        let estimated = usize::try_from(capacity / ESTIMATED_OBJECT_SIZE)
            .unwrap_or(usize::MAX)
            .max(64);
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(estimated)
            .weight_capacity(capacity)
            .shards(shards_for(capacity, max_object))
            .build()
            .unwrap_or_else(|e| unreachable!("both capacities are set: {e:?}"));
        let entries = quick_cache::sync::Cache::with_options(
            options,
            Weigher,
            DefaultHashBuilder::default(),
            Lifecycle(evictions),
        );
        MemoryTier {
            entries,
            rejected,
            max_object,
            fills: Mutex::new(HashMap::new()),
            fill_count: AtomicUsize::new(0),
            next_fill_id: AtomicU64::new(1),
            stream_fills,
        }
    }

    fn count_rejected(&self) {
        if let Some(c) = &self.rejected {
            c.inc();
        }
    }

    /// Number of stored objects.
    pub fn objects(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Weighted bytes stored (heads, bodies and [`ENTRY_OVERHEAD`] per object).
    pub fn bytes(&self) -> u64 {
        self.entries.weight()
    }

    /// The largest body this tier stores.
    pub fn max_object(&self) -> u64 {
        self.max_object
    }

    /// Whether streaming fills are on.
    pub fn streams_fills(&self) -> bool {
        self.stream_fills
    }

    /// Store an object read from elsewhere (a disk hit being promoted), taking its body buffer
    /// as it is (no copy), and return it as stored, or the body given back if it is larger than
    /// this tier's objects may be. Admission is the eviction policy's: a promoted object that
    /// is not hit again leaves first.
    pub fn insert(
        &self,
        key: u128,
        head: &[u8],
        body: Box<[u8]>,
    ) -> Result<StoredObject, Box<[u8]>> {
        if body.len() as u64 > self.max_object {
            self.count_rejected();
            return Err(body);
        }
        let entry = Arc::new(Entry {
            head: Box::from(head),
            body,
        });
        self.entries.insert(key.into(), entry.clone());
        Ok(StoredObject(entry))
    }

    /// Every stored object's key and encoded head (objects stored while this runs may or may
    /// not be included; every object stored before it starts and not removed is).
    pub fn heads(&self) -> impl Iterator<Item = (u128, Bytes)> + '_ {
        self.entries
            .iter()
            .map(|(key, entry)| (key.into(), entry.head_bytes()))
    }

    /// What a lookup of `key` finds here: the complete object stored under it, unless a fill of
    /// the key is in flight and readable (it is newer than the stored object). Touches the entry
    /// for the eviction policy as a lookup does.
    pub fn stored(&self, key: u128) -> Held {
        if self.stream_fills && self.fill_for(key, None).is_some() {
            return Held::Filling;
        }
        match self.entries.get(&Slot::from(key)) {
            Some(entry) => Held::Stored(StoredObject(entry)),
            None => Held::Absent,
        }
    }

    /// Remove the object stored under `key`; true if there was one.
    pub fn remove(&self, key: u128) -> bool {
        self.entries.remove(&Slot::from(key)).is_some()
    }

    /// Replace the head of the object stored under `key`, keeping its body (copied: readers
    /// of the old entry keep theirs); false if none.
    pub fn replace_head(&self, key: u128, head: &[u8]) -> bool {
        let Some(entry) = self.entries.get(&Slot::from(key)) else {
            return false;
        };
        let updated = Entry {
            head: Box::from(head),
            body: entry.body.clone(),
        };
        self.entries.insert(key.into(), Arc::new(updated));
        true
    }

    /// Start a fill of `key` (the miss handler of this tier, as its concrete type).
    pub fn begin_fill(&'static self, key: &CacheKey, meta: &CacheMeta) -> Result<MemoryMiss> {
        let head = Bytes::from(encode_head(meta, key.primary_key())?);
        let id = self.next_fill_id.fetch_add(1, Ordering::Relaxed);
        let (progress, _) = watch::channel(0);
        let fill = Arc::new(Fill {
            id,
            head,
            state: RwLock::new(FillState {
                chunks: Vec::new(),
                status: FillStatus::Writing,
                cancelled: false,
                continuation: None,
            }),
            progress,
        });
        let h = hash(key);
        {
            let mut fills = self.fills.lock();
            fills.entry(h).or_default().push(fill.clone());
            self.fill_count.fetch_add(1, Ordering::AcqRel);
        }
        Ok(MemoryMiss {
            tier: self,
            key: h,
            tag: id.to_le_bytes(),
            fill,
            len: 0,
            finished: false,
        })
    }

    fn fill_for(&self, key: u128, id: Option<u64>) -> Option<Arc<Fill>> {
        if self.fill_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let fills = self.fills.lock();
        let list = fills.get(&key)?;
        match id {
            Some(id) => list.iter().find(|f| f.id == id).cloned(),
            None => list.first().cloned(),
        }
    }

    fn remove_fill(&self, key: u128, id: u64) {
        let mut fills = self.fills.lock();
        if let Some(list) = fills.get_mut(&key) {
            let before = list.len();
            list.retain(|f| f.id != id);
            let removed = before - list.len();
            if list.is_empty() {
                fills.remove(&key);
            }
            self.fill_count.fetch_sub(removed, Ordering::AcqRel);
        }
    }

    /// Store `meta` for an existing object with primary key `primary`: a new head, the same
    /// body (copied).
    fn replace_meta(
        &self,
        key: u128,
        entry: &Entry,
        meta: &CacheMeta,
        primary: &[u8],
    ) -> Result<()> {
        let updated = Entry {
            head: encode_head(meta, primary)?.into_boxed_slice(),
            body: entry.body.clone(),
        };
        self.entries.insert(key.into(), Arc::new(updated));
        Ok(())
    }

    fn partial_hit(fill: Arc<Fill>) -> Result<Option<(CacheMeta, HitHandler)>> {
        let meta = decode_head(&fill.head)?;
        let progress = fill.progress.subscribe();
        Ok(Some((
            meta,
            Box::new(PartialHit {
                fill,
                next_chunk: 0,
                offset: 0,
                progress,
                moved: None,
            }),
        )))
    }
}

#[async_trait]
impl Storage for MemoryTier {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let h = hash(key);
        // An in-flight fill is newer than any stored entry (it may be replacing an expired one).
        // Without streaming, fills are invisible until finished: waiters get complete objects.
        if self.stream_fills {
            if let Some(fill) = self.fill_for(h, None) {
                return Self::partial_hit(fill);
            }
        }
        let Some(entry) = self.entries.get(&Slot::from(h)) else {
            return Ok(None);
        };
        let meta = entry.meta()?;
        Ok(Some((meta, Box::new(CompleteHit::new(entry.body_bytes())))))
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(id) = tag
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .map(u64::from_le_bytes)
        else {
            return self.lookup(key, trace).await;
        };
        match self.fill_for(hash(key), Some(id)) {
            Some(fill) => Self::partial_hit(fill),
            None => Ok(None),
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(self.begin_fill(key, meta)?))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            // This tier does not assign entry ids, so an identified entry is never ours.
            return Ok(PurgeOutcome::NotFound);
        }
        let h = hash(target.key());
        let mut found = self.entries.remove(&Slot::from(h)).is_some();
        if let Some(list) = self.fills.lock().get(&h) {
            for fill in list {
                fill.state.write().cancelled = true;
                found = true;
            }
        }
        Ok(purged(found))
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let h = hash(target.key());
        let Some(entry) = self.entries.get(&Slot::from(h)) else {
            return Ok(PurgeOutcome::NotFound);
        };
        if let Some(head) = expire_stored(decode_stored(&entry.head_bytes())?, SystemTime::now())? {
            self.replace_head(h, &head);
        }
        Ok(PurgeOutcome::Expired)
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let h = hash(key);
        let Some(entry) = self.entries.get(&Slot::from(h)) else {
            return Ok(false);
        };
        // The body is copied into the new entry (one copy per revalidation, not 24 B more
        // for every object to share it); readers of the old entry keep theirs.
        self.replace_meta(h, &entry, meta, key.primary_key())?;
        Ok(true)
    }

    fn support_streaming_partial_write(&self) -> bool {
        self.stream_fills
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
