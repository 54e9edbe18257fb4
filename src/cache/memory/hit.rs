//! Readers of the memory tier: a complete object, or a fill followed as it is written.

use super::*;
use crate::cache::ranges::seek_span;

/// Whether `hit` is one of this tier's hit handlers.
pub(crate) fn is_memory_hit(hit: &(dyn std::any::Any + Send + Sync)) -> bool {
    hit.downcast_ref::<CompleteHit>()
        .is_some_and(|h| !h.from_disk)
        || hit.is::<PartialHit>()
}

/// A hit on a complete object; supports single and multipart range seeks.
pub struct CompleteHit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
    /// Read from the disk tier just now (whether or not promoted): a disk hit.
    from_disk: bool,
}

impl CompleteHit {
    /// The length of the whole body.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// A hit serving `body`.
    pub fn new(body: Bytes) -> Self {
        let end = body.len();
        CompleteHit {
            body,
            start: 0,
            end,
            done: false,
            from_disk: false,
        }
    }

    /// A hit serving `body`, read whole from the disk tier.
    pub fn from_disk(body: Bytes) -> Self {
        CompleteHit {
            from_disk: true,
            ..CompleteHit::new(body)
        }
    }
}

#[async_trait]
impl HandleHit for CompleteHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
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
        let (start, end) = seek_span(self.body.len() as u64, start, end)?;
        // within the body, whose length is a usize
        (self.start, self.end) = (start as usize, end as usize);
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A hit on a fill still being written: follows the writer, fails if the writer fails, goes
/// on where the fill went if it spilled.
pub(super) struct PartialHit {
    pub(super) fill: Arc<Fill>,
    pub(super) next_chunk: usize,
    /// Body bytes read so far.
    pub(super) offset: u64,
    pub(super) progress: watch::Receiver<usize>,
    /// Set once the fill spilled: the reader that took over.
    pub(super) moved: Option<HitHandler>,
}

#[async_trait]
impl HandleHit for PartialHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            if let Some(moved) = &mut self.moved {
                return moved.read_body().await;
            }
            {
                let state = self.fill.state.read();
                if let Some(chunk) = state.chunks.get(self.next_chunk) {
                    self.next_chunk += 1;
                    self.offset += chunk.len() as u64;
                    return Ok(Some(chunk.clone()));
                }
                match state.status {
                    FillStatus::Spilled => {
                        if let Some(c) = &state.continuation {
                            self.moved = Some(c.follow(self.offset));
                            continue;
                        }
                        return Error::e_explain(ErrorType::InternalError, "spilled fill lost");
                    }
                    FillStatus::Complete => return Ok(None),
                    FillStatus::Failed => {
                        return Error::e_explain(
                            ErrorType::InternalError,
                            "the cache fill this response streams from failed",
                        )
                    }
                    FillStatus::Writing => {}
                }
                self.progress.mark_unchanged();
            }
            if self.progress.changed().await.is_err() {
                return Error::e_explain(ErrorType::InternalError, "cache fill writer vanished");
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
