//! Hits on large disk objects, served block by block: each [`BLOCK`] is read off the thread
//! pool, verified against its checksum and only then handed to the client, so a large object
//! never sits whole in memory and no unverified byte is ever sent.
//!
//! The record's segments are held open from the lookup on, and its first block is verified
//! there, so a truncated segment or a corrupt first block is a miss and a refetch. Damage
//! further in is found when its block is read: the response is aborted (the client sees a
//! short body, never a complete-looking wrong one) and the entry is dropped.

use super::directory::Entry;
use super::log::{Pos, Segment};
use super::record::{Record, BLOCK};
use super::{blocking, DiskTier, Fault, ReadFailure};
use crate::cache::ranges::seek_span;
use bytes::Bytes;
use pingora_cache::key::CacheKey;
use pingora_cache::storage::{HandleHit, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_error::{Error, ErrorType, Result};
use std::any::Any;
use std::sync::Arc;

/// A hit streaming a large object from its segments.
pub struct StreamHit {
    tier: Arc<DiskTier>,
    entry: Entry,
    /// The segments the record runs through, from its first (held open: a segment recycled
    /// meanwhile is still read from the file this hit opened).
    segs: Arc<Vec<Arc<Segment>>>,
    start: Pos,
    record: Arc<Record>,
    /// Block 0, read and verified at lookup.
    first: Option<Bytes>,
    pos: u64,
    end: u64,
}

/// Read block `index` of the record's body and verify it.
fn read_block(
    tier: &DiskTier,
    segs: &[Arc<Segment>],
    start: Pos,
    record: &Record,
    index: u64,
) -> Result<Bytes, ReadFailure> {
    let from = index * BLOCK;
    let len = BLOCK.min(record.body_len() - from) as usize;
    let mut buf = Vec::new();
    tier.log
        .read_span(
            segs,
            start,
            record.header.prefix_len() + from,
            len,
            &mut buf,
        )
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ReadFailure::Corrupt("segment shorter than its record (truncated?)")
            } else {
                ReadFailure::Io(e)
            }
        })?;
    record
        .verify_block(index as usize, &buf)
        .map_err(ReadFailure::Corrupt)?;
    Ok(Bytes::from(buf))
}

impl StreamHit {
    /// The length of the whole body.
    pub fn body_len(&self) -> u64 {
        self.record.body_len()
    }

    /// Start streaming the block-hashed `record` at `start` (in `segs`): its first block is
    /// read and verified here (blocking: call off the async threads).
    pub(super) fn open(
        tier: Arc<DiskTier>,
        entry: Entry,
        segs: Vec<Arc<Segment>>,
        start: Pos,
        record: Record,
    ) -> Result<StreamHit, ReadFailure> {
        let first = read_block(&tier, &segs, start, &record, 0)?;
        let end = record.body_len();
        Ok(StreamHit {
            tier,
            entry,
            segs: Arc::new(segs),
            start,
            record: Arc::new(record),
            first: Some(first),
            pos: 0,
            end,
        })
    }
}

#[async_trait::async_trait]
impl HandleHit for StreamHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let index = self.pos / BLOCK;
        let block = match self.first.take().filter(|_| index == 0) {
            Some(b) => b,
            None => {
                let (tier, segs, record) =
                    (self.tier.clone(), self.segs.clone(), self.record.clone());
                let start = self.start;
                let read =
                    blocking(move || Ok(read_block(&tier, &segs, start, &record, index))).await;
                match read {
                    Ok(Ok(b)) => b,
                    Ok(Err(ReadFailure::Corrupt(why))) => {
                        self.tier.drop_corrupt(&self.entry, why);
                        return Error::e_explain(ErrorType::InternalError, why);
                    }
                    Ok(Err(ReadFailure::Io(e))) | Err(e) => {
                        self.tier.metrics.disk_read_errors.inc();
                        self.tier
                            .fault(Fault::Read, &e, "disk tier read failed mid-response");
                        return Err(Error::because(
                            ErrorType::InternalError,
                            "reading a cached body from disk",
                            e,
                        ));
                    }
                    Ok(Err(ReadFailure::Missing | ReadFailure::Loading)) => {
                        return Error::e_explain(ErrorType::InternalError, "segment vanished")
                    }
                }
            }
        };
        let block_start = index * BLOCK;
        let from = (self.pos - block_start) as usize;
        let to = (self.end.min(block_start + block.len() as u64) - block_start) as usize;
        self.pos = block_start + to as u64;
        Ok(Some(block.slice(from..to)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        (self.pos, self.end) = seek_span(self.record.body_len(), start, end)?;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.record.body_len() as usize
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
