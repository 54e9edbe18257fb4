//! Hits on large disk objects, served block by block: each [`BLOCK`] is read off the thread
//! pool, verified against its checksum and only then handed to the client, so a large object
//! never sits whole in memory and no unverified byte is ever sent.
//!
//! The body file is opened (and its length checked) at lookup, and the first block verified
//! there too, so a truncated file or a corrupt first block is a miss and a refetch. Damage
//! further in is found when its block is read: the response is aborted (the client sees a
//! short body, never a complete-looking wrong one) and the entry is dropped.

use super::record::{HeadRecord, BLOCK};
use super::{blocking, DiskTier, Fault, ReadFailure};
use crate::cache::ranges::seek_span;
use bytes::Bytes;
use pingora_cache::key::CacheKey;
use pingora_cache::storage::{HandleHit, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_error::{Error, ErrorType, Result};
use std::any::Any;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// A hit streaming a large object from its body file.
pub struct StreamHit {
    tier: Arc<DiskTier>,
    key: u128,
    head_path: PathBuf,
    file: Arc<File>,
    record: Arc<HeadRecord>,
    /// Block 0, read and verified at lookup.
    first: Option<Bytes>,
    pos: u64,
    end: u64,
}

/// Read block `index` of `file` and verify it.
fn read_block(file: &File, record: &HeadRecord, index: u64) -> Result<Bytes, ReadFailure> {
    let start = index * BLOCK;
    let len = BLOCK.min(record.body_len - start) as usize;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, start).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ReadFailure::Corrupt("body file shorter than its record (truncated?)")
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
        self.record.body_len
    }

    /// Open the body of a block-hashed `record` and verify its length and first block
    /// (blocking: call off the async threads).
    pub(super) fn open(
        tier: Arc<DiskTier>,
        key: u128,
        head_path: PathBuf,
        body_path: PathBuf,
        record: HeadRecord,
    ) -> Result<StreamHit, ReadFailure> {
        let file = match File::open(&body_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReadFailure::Corrupt("body file missing"))
            }
            Err(e) => return Err(ReadFailure::Io(e)),
        };
        if file.metadata()?.len() != record.body_len {
            return Err(ReadFailure::Corrupt("body length mismatch (truncated?)"));
        }
        let first = read_block(&file, &record, 0)?;
        let end = record.body_len;
        Ok(StreamHit {
            tier,
            key,
            head_path,
            file: Arc::new(file),
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
                let (file, record) = (self.file.clone(), self.record.clone());
                let read = blocking(move || Ok(read_block(&file, &record, index))).await;
                match read {
                    Ok(Ok(b)) => b,
                    Ok(Err(ReadFailure::Corrupt(why))) => {
                        let (tier, key, path) =
                            (self.tier.clone(), self.key, self.head_path.clone());
                        let _ = blocking(move || {
                            tier.drop_corrupt(key, &path, why);
                            Ok(())
                        })
                        .await;
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
                    Ok(Err(ReadFailure::Missing)) => {
                        return Error::e_explain(ErrorType::InternalError, "body file vanished")
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
        (self.pos, self.end) = seek_span(self.record.body_len, start, end)?;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.record.body_len as usize
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
