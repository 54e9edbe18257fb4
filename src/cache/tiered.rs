//! Memory over disk behind one pingora-cache [`Storage`].
//!
//! - Lookup: memory, then disk; a disk hit is copied into memory (promotion), where the memory
//!   tier's eviction policy decides whether it stays (a promoted object not hit again leaves
//!   first, so a scan of cold disk objects does not flush the hot set).
//! - Fill: into memory (streaming readers follow it there); when it completes, the object is
//!   queued for the disk writer and the response does not wait for the disk.
//! - 304 freshening, expiry and purges apply to both tiers; a purge also drops a queued write.
//! - Either tier may be absent (`cache.tiers`).

use super::disk::{DiskObject, DiskTier};
use super::entry::{decode_head, encode_head};
use super::memory::{concat, hash, purged, Committed, CompleteHit, MemoryMiss, MemoryTier};
use crate::metrics::StorageMetrics;
use async_trait::async_trait;
use bytes::Bytes;
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
use std::sync::Arc;
use std::time::SystemTime;

/// The node's storage: an optional memory tier over an optional disk tier.
pub struct TieredStorage {
    memory: Option<&'static MemoryTier>,
    disk: Option<Arc<DiskTier>>,
    metrics: StorageMetrics,
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
        }
    }

    /// The memory tier, if running.
    pub fn memory(&self) -> Option<&'static MemoryTier> {
        self.memory
    }

    /// The disk tier, if running.
    pub fn disk(&self) -> Option<&Arc<DiskTier>> {
        self.disk.as_ref()
    }

    fn disk_hit(&self, key: u128) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(disk) = &self.disk else {
            return Ok(None);
        };
        let Some(object) = disk.lookup(key) else {
            return Ok(None);
        };
        let meta = decode_head(&object.head)?;
        if let Some(memory) = self.memory {
            if memory.insert(key, &object.head, object.body.clone()) {
                self.metrics.promotions.inc();
            }
        }
        Ok(Some((meta, Box::new(CompleteHit::new(object.body)))))
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
        self.disk_hit(hash(key))
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
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
        let fill = match self.memory {
            Some(memory) => Fill::Memory(memory.begin_fill(key, meta)?),
            None => Fill::Buffer {
                head: Bytes::from(encode_head(meta)?),
                chunks: Vec::new(),
            },
        };
        Ok(Box::new(TieredMiss {
            fill,
            key: hash(key),
            disk: self.disk.clone(),
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
        let mut found = false;
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
        let mut found = false;
        if let Some(memory) = self.memory {
            found |= !matches!(memory.expire(target, trace).await?, PurgeOutcome::NotFound);
        }
        if let Some(disk) = &self.disk {
            if let Some(object) = disk.lookup(key) {
                let mut meta = decode_head(&object.head)?;
                meta.expire_at(SystemTime::now());
                found |= disk.update_head(key, Bytes::from(encode_head(&meta)?));
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
            found |= disk.update_head(hash(key), Bytes::from(encode_head(meta)?));
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
    /// No memory tier: collect the body for the disk writer.
    Buffer { head: Bytes, chunks: Vec<Bytes> },
}

/// One fill: into memory if it runs, then queued for disk on completion.
struct TieredMiss {
    fill: Fill,
    key: u128,
    disk: Option<Arc<DiskTier>>,
}

#[async_trait]
impl HandleMiss for TieredMiss {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        match &mut self.fill {
            Fill::Memory(m) => m.write_body(data, eof).await,
            Fill::Buffer { chunks, .. } => {
                if !data.is_empty() {
                    chunks.push(data);
                }
                Ok(())
            }
        }
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let TieredMiss { fill, key, disk } = *self;
        let object = match fill {
            Fill::Memory(m) => match m.commit() {
                Committed::Object { head, body } => DiskObject { head, body },
                Committed::Cancelled => return Ok(MissFinishType::Created(0)),
            },
            Fill::Buffer { head, chunks } => DiskObject {
                head,
                body: concat(&chunks),
            },
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
            Fill::Buffer { .. } => None,
        }
    }
}
