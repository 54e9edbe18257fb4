//! Writers of the memory tier: one fill, committed whole on `finish`.

use super::*;

/// Writes one fill; inserts the object on `finish`, fails readers if dropped before.
pub struct MemoryMiss {
    pub(super) tier: &'static MemoryTier,
    pub(super) key: u128,
    pub(super) tag: [u8; 8],
    pub(super) fill: Arc<Fill>,
    /// Body bytes written.
    pub(super) len: u64,
    pub(super) finished: bool,
}

impl MemoryMiss {
    fn set_status(&self, status: FillStatus) {
        self.fill.state.write().status = status;
        self.fill.progress.send_modify(|n| *n += 1);
    }
}

#[async_trait]
impl HandleMiss for MemoryMiss {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        {
            let mut state = self.fill.state.write();
            if state.status != FillStatus::Writing {
                return Error::e_explain(ErrorType::InternalError, "write after end of cache fill");
            }
            if !data.is_empty() {
                self.len += data.len() as u64;
                state.chunks.push(data);
            }
        }
        let _ = eof; // the end is signalled by finish(), which also commits the object
        self.fill.progress.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        Ok(MissFinishType::Created((*self).commit().size()))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(&self.tag)
    }
}

/// What a finished fill produced.
pub enum Committed {
    /// The complete object (stored in this tier unless it was too large).
    Object {
        /// The encoded head.
        head: Bytes,
        /// The whole body, exact size.
        body: Bytes,
    },
    /// A purge cancelled the fill: the object must not be stored anywhere.
    Cancelled,
}

impl Committed {
    fn size(&self) -> usize {
        match self {
            Committed::Object { head, body } => head.len() + body.len(),
            Committed::Cancelled => 0,
        }
    }
}

impl MemoryMiss {
    /// Body bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.len
    }

    /// The encoded head of the object being filled.
    pub fn head(&self) -> Bytes {
        self.fill.head.clone()
    }

    /// The body written so far (shared, not copied).
    pub fn body_so_far(&self) -> Vec<Bytes> {
        self.fill.state.read().chunks.clone()
    }

    /// Hand the fill over to `next` (which already holds [`MemoryMiss::body_so_far`]): its
    /// chunks are freed, its readers go on through `next` from where they are, and nothing is
    /// stored in this tier. Returns true if a purge had cancelled the fill.
    pub fn spill(mut self, next: Arc<dyn Continuation>) -> bool {
        let cancelled = {
            let mut state = self.fill.state.write();
            state.chunks = Vec::new();
            state.continuation = Some(next);
            state.cancelled
        };
        self.finished = true;
        self.set_status(FillStatus::Spilled);
        self.tier.remove_fill(self.key, self.fill.id);
        cancelled
    }

    /// Complete the fill: store the object (if not cancelled and small enough) and return it.
    pub fn commit(mut self) -> Committed {
        let (entry, cancelled) = {
            let state = self.fill.state.read();
            let entry = Entry::new(Box::from(&self.fill.head[..]), &state.chunks);
            (Arc::new(entry), state.cancelled)
        };
        let body = entry.body_bytes();
        if !cancelled && body.len() as u64 <= self.tier.max_object {
            self.tier.entries.insert(self.key.into(), entry);
        } else if !cancelled {
            self.tier.count_rejected();
        }
        self.finished = true;
        self.set_status(FillStatus::Complete);
        self.tier.remove_fill(self.key, self.fill.id);
        if cancelled {
            Committed::Cancelled
        } else {
            Committed::Object {
                head: self.fill.head.clone(),
                body,
            }
        }
    }
}

impl Drop for MemoryMiss {
    fn drop(&mut self) {
        if !self.finished {
            self.set_status(FillStatus::Failed);
            self.tier.remove_fill(self.key, self.fill.id);
        }
    }
}
