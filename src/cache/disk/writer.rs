//! The writer thread: writes the log's buffers in order, prepares the next segment ahead of
//! the cursor (cleaning the slot it replaces: objects hit since they were written are copied
//! forward, the rest evicted), writes records too large for the buffers, and checkpoints the
//! directory.
//!
//! Everything that changes the log is ordered: buffers and tasks are done in the order they
//! were queued, so a checkpoint written after the buffers before it never points at bytes not
//! yet on disk.

use super::directory::{Entry, Loc, Lookup};
use super::log::{read_append, Job, Pos, Segment, State, BUFFER, DATA_START};
use super::record::{
    align, blocks_for, encode_object, encode_tombstone, padding, BodyDigest, Header, Kind, Record,
    BLOCK, HEADER,
};
use super::{recover, DiskTier, Fault};
use bytes::Bytes;
use std::fs::{self, File};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A buffer is written once it has waited this long, full or not.
const LINGER: Duration = Duration::from_millis(5);
/// After a segment could not be created, wait this long before trying again.
const RETRY: Duration = Duration::from_secs(1);
/// How often the writer checks that its segment file is still linked in the directory.
const LINK_CHECK: Duration = Duration::from_secs(1);
/// A checkpoint waits at least this long after the last one (plus a second per million
/// objects, as it writes 16 bytes an object).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// Where a large record's body comes from.
pub enum Source {
    /// In memory.
    Memory(Bytes),
    /// A spool file, from its start.
    File(Arc<File>),
    /// An older record of the same object (its head is being replaced).
    Record {
        /// Its segments, from its first.
        segs: Vec<Arc<Segment>>,
        /// Where it starts.
        start: Pos,
        /// Its verified prefix.
        record: Arc<Record>,
    },
}

impl Source {
    /// Bytes of the body it holds in memory (counted in the queue while it waits).
    pub fn in_memory(&self) -> u64 {
        match self {
            Source::Memory(b) => b.len() as u64,
            Source::File(_) | Source::Record { .. } => 0,
        }
    }
}

/// Work the writer does in its turn.
pub enum Task {
    /// Write an object too large for the buffers.
    Large {
        /// Its key.
        key: u128,
        /// The stored head.
        head: Bytes,
        /// The body.
        body: Source,
        /// The body's length.
        body_len: u64,
        /// The body's digest.
        digest: BodyDigest,
        /// Set by a purge of the key.
        cancelled: Arc<AtomicBool>,
        /// Told the bytes stored (0 if not).
        done: Option<oneshot::Sender<u64>>,
    },
    /// Write a checkpoint of the directory, covering the log up to `at`.
    Checkpoint {
        /// The log position it covers.
        at: Pos,
    },
}

enum Work {
    Prepare(u64),
    Write {
        seq: u64,
        at: Pos,
        seg: Arc<Segment>,
        bytes: Bytes,
        objects: u64,
    },
    Task(u64, Task),
    CheckLinks,
    Stop,
}

/// A checkpoint is written once this much log was appended since the last one (whatever the
/// time): the log a restart after a crash replays stays within it. Twice the checkpoint's
/// size, so that checkpoints add at most half to what a fill writes.
fn tail_limit(objects: u64) -> u64 {
    (objects * 2 * super::directory::ENTRY_BYTES as u64).max(256 << 20)
}

/// The checkpoint interval for a directory of `objects` objects.
fn checkpoint_interval(objects: u64) -> Duration {
    CHECKPOINT_EVERY + Duration::from_secs(objects / 1_000_000)
}

impl DiskTier {
    /// The writer thread's loop (returns once stopped and drained).
    pub(super) fn write_loop(self: Arc<Self>) {
        let mut retry_at: Option<Instant> = None;
        let mut links_at = Instant::now() + LINK_CHECK;
        let mut checkpoint_at = Instant::now();
        let mut changes_then = self.changes.load(Ordering::Relaxed);
        let mut appended_then = self.appended.load(Ordering::Relaxed);
        loop {
            let work = {
                let mut st = self.log.state.lock();
                loop {
                    let now = Instant::now();
                    let wants_segment = match st.cursor {
                        None => true,
                        Some(c) => st.prepared <= c.gen,
                    };
                    if wants_segment && retry_at.is_none_or(|t| now >= t) && !st.stopping {
                        break Work::Prepare(st.prepared + 1);
                    }
                    match st.jobs.front() {
                        Some((
                            seq,
                            Job::Buffer {
                                at,
                                seg,
                                bytes,
                                objects,
                            },
                        )) => {
                            break Work::Write {
                                seq: *seq,
                                at: *at,
                                seg: seg.clone(),
                                bytes: bytes.clone(),
                                objects: *objects,
                            };
                        }
                        Some((_, Job::Task(_))) => {
                            if let Some((seq, Job::Task(t))) = st.jobs.pop_front() {
                                break Work::Task(seq, t);
                            }
                        }
                        None => {}
                    }
                    if st.active_since.is_some_and(|t| now >= t + LINGER) || st.stopping {
                        self.log.seal(&mut st);
                        if !st.jobs.is_empty() {
                            continue;
                        }
                    }
                    if st.stopping {
                        break Work::Stop;
                    }
                    let changes = self.changes.load(Ordering::Relaxed);
                    let appended = self.appended.load(Ordering::Relaxed);
                    let due = (changes != changes_then
                        && now >= checkpoint_at + checkpoint_interval(self.dir.len()))
                        || appended - appended_then >= tail_limit(self.dir.len());
                    if due && self.dir.complete() && self.checkpoint_here(&mut st) {
                        changes_then = changes;
                        appended_then = appended;
                        checkpoint_at = now;
                        continue;
                    }
                    if now >= links_at {
                        links_at = now + LINK_CHECK;
                        break Work::CheckLinks;
                    }
                    let wait = if st.active_since.is_some() {
                        LINGER
                    } else {
                        Duration::from_millis(200)
                    };
                    self.log.wake.wait_for(&mut st, wait);
                }
            };
            match work {
                Work::Stop => return,
                Work::Prepare(gen) => match self.prepare(gen) {
                    Ok(()) => retry_at = None,
                    Err(e) => {
                        self.write_failed(&e, super::NO_SEGMENT);
                        retry_at = Some(Instant::now() + RETRY);
                        self.drop_buffers_without_segment();
                    }
                },
                Work::Write {
                    seq,
                    at,
                    seg,
                    bytes,
                    objects,
                } => {
                    let written = seg.file.write_all_at_checked(&bytes, at.off);
                    if let Err(e) = &written {
                        self.write_failed(e, "disk tier write failed; objects kept in memory only");
                        self.forget_records(&seg, at, &bytes);
                    }
                    let mut st = self.log.state.lock();
                    if st.jobs.front().is_some_and(|(s, _)| *s == seq) {
                        st.jobs.pop_front();
                    }
                    if written.is_err() {
                        self.after_hole(&mut st, at.gen, &bytes);
                    }
                    st.queued = st.queued.saturating_sub(bytes.len() as u64);
                    st.unwritten = st.unwritten.saturating_sub(objects);
                    st.done_seq = seq + 1;
                    self.log
                        .set_durable(self.log.geo.global(at) + bytes.len() as u64);
                    drop(st);
                    self.log.landed.notify_all();
                }
                Work::Task(seq, task) => {
                    self.run_task(task);
                    self.log.state.lock().done_seq = seq + 1;
                    self.log.landed.notify_all();
                }
                Work::CheckLinks => self.check_links(),
            }
        }
    }

    /// Queue a checkpoint covering the log up to the cursor (after the buffers before it).
    pub(super) fn checkpoint_here(&self, st: &mut State) -> bool {
        let Some(at) = st.cursor else {
            return false;
        };
        self.log.seal(st);
        self.log.push(st, Job::Task(Task::Checkpoint { at }));
        true
    }

    fn run_task(&self, task: Task) {
        match task {
            Task::Checkpoint { at } => {
                if let Err(e) = recover::write_checkpoint(self, at) {
                    self.write_failed(&e, "disk tier checkpoint failed");
                }
            }
            Task::Large {
                key,
                head,
                body,
                body_len,
                digest,
                cancelled,
                done,
            } => {
                let in_memory = body.in_memory();
                let stored = match self.write_large(key, &head, body, body_len, &digest, &cancelled)
                {
                    Ok(n) => n,
                    Err(e) => {
                        self.write_failed(&e, "disk tier write failed; object not stored");
                        0
                    }
                };
                self.end_inflight(key, &cancelled, in_memory);
                if let Some(done) = done {
                    let _ = done.send(stored);
                }
            }
        }
    }

    /// Write a large record; the bytes stored (0 if purged meanwhile or no room).
    fn write_large(
        &self,
        key: u128,
        head: &[u8],
        body: Source,
        body_len: u64,
        digest: &BodyDigest,
        cancelled: &AtomicBool,
    ) -> io::Result<u64> {
        let prefix = HEADER as u64 + 8 * u64::from(blocks_for(body_len)) + head.len() as u64;
        let span = align(prefix + body_len);
        if span > self.log.geo.max_record() {
            self.metrics.disk.rejected.inc();
            return Ok(0);
        }
        let (start, segs) = loop {
            if cancelled.load(Ordering::Acquire) {
                return Ok(0);
            }
            let reserved = {
                let mut st = self.log.state.lock();
                self.log.reserve(&mut st, span, prefix)
            };
            match reserved {
                Ok(r) => break r,
                Err(Some(gen)) => {
                    let next = self.log.state.lock().prepared + 1;
                    debug_assert!(next <= gen);
                    self.prepare(next)?;
                }
                Err(None) => return Err(io::Error::other("no segment to write to")),
            }
        };
        let mut out = Vec::with_capacity(prefix as usize);
        encode_object(
            key,
            start.gen,
            segs[0].nonce,
            head,
            body_len,
            digest,
            &mut out,
        );
        if let Err(e) = self.log.write_span(&segs, start, 0, &out) {
            // no record where one was reserved: a replay of its segment stops there (and of
            // the last one it runs into, which begins with the rest of it); a body that fails
            // later leaves a record a replay skips (its blocks fail when served)
            let mut st = self.log.state.lock();
            let last = segs.last().map_or(start.gen, |s| s.gen);
            self.after_hole(&mut st, start.gen, &[]);
            if last != start.gen {
                self.after_hole(&mut st, last, &[]);
            }
            return Err(e);
        }
        self.write_body(&body, body_len, prefix, start, &segs)?;
        let loc = Loc {
            slot: self.log.geo.slot(start.gen),
            lap: self.log.geo.lap(start.gen),
            off: start.off,
            hint: if span <= BUFFER as u64 { span } else { 0 },
        };
        let entry = Entry::new(key, loc).ok_or_else(|| io::Error::other("offset out of range"))?;
        let mut st = self.log.state.lock();
        if cancelled.load(Ordering::Acquire) {
            // purged while written: the purge's tombstone may be before this record
            self.append_tombstone(&mut st, key);
            return Ok(0);
        }
        self.dir.insert(entry);
        self.changes.fetch_add(1, Ordering::Relaxed);
        self.appended.fetch_add(span, Ordering::Relaxed);
        drop(st);
        if cancelled.load(Ordering::Acquire) {
            let mut st = self.log.state.lock();
            self.dir.remove_entry(&entry);
            self.append_tombstone(&mut st, key);
            return Ok(0);
        }
        Ok(span)
    }

    /// Append a tombstone for `key` (under the log's lock); when no segment has room for it
    /// yet (the next one not prepared), it waits in `pending_tombstones` for the writer to
    /// prepare one ([`DiskTier::flush_queued_so_far`] waits for it too).
    pub(super) fn append_tombstone(&self, st: &mut State, key: u128) {
        if !self.place_tombstone(st, key) {
            st.pending_tombstones.push(key);
            self.log.wake.notify_one();
        }
    }

    /// Place a tombstone for `key` in the buffer; false if there is no room.
    fn place_tombstone(&self, st: &mut State, key: u128) -> bool {
        let span = HEADER as u64;
        let Some((at, nonce)) = self.log.place(st, span) else {
            return false;
        };
        encode_tombstone(key, at.gen, nonce, &mut st.active);
        st.queued += span;
        true
    }

    /// Place the tombstones waiting for a segment (under the log's lock), as far as there is
    /// room; waiters of [`DiskTier::flush_queued_so_far`] are woken.
    fn place_pending_tombstones(&self, st: &mut State) {
        if st.pending_tombstones.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut st.pending_tombstones);
        for (i, key) in pending.iter().enumerate() {
            if !self.place_tombstone(st, *key) {
                st.pending_tombstones.extend_from_slice(&pending[i..]);
                break;
            }
        }
        self.log.landed.notify_all();
    }

    /// Make generation `gen`'s segment: clean its slot (when the ring came round), then create
    /// its file.
    pub(super) fn prepare(&self, gen: u64) -> io::Result<()> {
        let slot = self.log.geo.slot(gen);
        if let Some(old) = self.log.in_slot(slot) {
            self.clean(&old);
        }
        let path = self.log.path(slot);
        let seg = match Segment::create(&path, gen, self.log.geo) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.log.dir)?;
                Segment::create(&path, gen, self.log.geo)?
            }
            other => other?,
        };
        let seg = Arc::new(seg);
        self.log.install(seg.clone());
        let mut st = self.log.state.lock();
        st.prepared = st.prepared.max(gen);
        if st.cursor.is_none() {
            st.cursor = Some(Pos {
                gen,
                off: DATA_START,
            });
            st.cursor_seg = Some(seg);
        }
        self.place_pending_tombstones(&mut st);
        Ok(())
    }

    /// Empty the slot of `old` before its file is replaced: objects hit since they were
    /// written (up to a quarter of a segment) are copied to the head of the log, the others
    /// evicted.
    fn clean(&self, old: &Arc<Segment>) {
        let geo = self.log.geo;
        let slot = geo.slot(old.gen);
        let lap = geo.lap(old.gen);
        let mut budget = geo.data() / 4;
        let (kept, removed) = self.dir.clear_slot(slot, |e| {
            let loc = e.loc();
            let keep = e.hit() && loc.lap == lap && loc.hint > 0 && loc.hint <= budget;
            if keep {
                budget -= loc.hint;
            }
            keep
        });
        let mut evicted = removed;
        for e in kept {
            if !self.copy_forward(&e) && self.dir.remove_entry(&e) {
                evicted += 1;
            }
        }
        if evicted > 0 {
            self.metrics.disk.evictions.inc_by(evicted);
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Rewrite the record of `e` at the head of the log; true if done.
    fn copy_forward(&self, e: &Entry) -> bool {
        let Ok(found) = self.read_entry(*e) else {
            return false;
        };
        let Ok((record, body)) = self.verified(&found) else {
            return false;
        };
        let key = found.header.key;
        let mut st = self.log.state.lock();
        // only if the key still points here (a newer write or a purge wins)
        match self.dir.get(key) {
            Lookup::Found(now) if now == *e => {}
            _ => return false,
        }
        self.append_object(&mut st, key, &record.head, &body, &record.digest)
            .is_some_and(|entry| self.dir.replace(e, entry))
    }

    /// Append an object record to the buffer (under the log's lock): its directory entry, not
    /// yet inserted. `None` if there is no room.
    pub(super) fn append_object(
        &self,
        st: &mut State,
        key: u128,
        head: &[u8],
        body: &[u8],
        digest: &BodyDigest,
    ) -> Option<Entry> {
        let prefix = HEADER + head.len();
        let len = (prefix + body.len()) as u64;
        let span = align(len);
        let (at, nonce) = self.log.place(st, span)?;
        encode_object(
            key,
            at.gen,
            nonce,
            head,
            body.len() as u64,
            digest,
            &mut st.active,
        );
        st.active.extend_from_slice(body);
        st.active.resize(st.active.len() + padding(len), 0);
        st.active_objects += 1;
        st.unwritten += 1;
        st.queued += span;
        self.appended.fetch_add(span, Ordering::Relaxed);
        Entry::new(
            key,
            Loc {
                slot: self.log.geo.slot(at.gen),
                lap: self.log.geo.lap(at.gen),
                off: at.off,
                hint: span,
            },
        )
    }

    /// Write the body of a large record whose prefix (`prefix` bytes) is written at `start`
    /// (in `segs`), block by block.
    fn write_body(
        &self,
        body: &Source,
        body_len: u64,
        prefix: u64,
        start: Pos,
        segs: &[Arc<Segment>],
    ) -> io::Result<()> {
        let mut at = 0u64;
        let mut chunk = Vec::with_capacity(BLOCK as usize);
        while at < body_len {
            let n = (body_len - at).min(BLOCK) as usize;
            chunk.clear();
            let piece: &[u8] = match body {
                Source::Memory(b) => &b[at as usize..at as usize + n],
                Source::File(f) => {
                    read_append(f, &mut chunk, n, at)?;
                    if chunk.len() < n {
                        return Err(io::Error::other("spool file cut short"));
                    }
                    &chunk
                }
                Source::Record {
                    segs: from,
                    start: from_start,
                    record,
                } => {
                    let off = record.header.prefix_len() + at;
                    self.log.read_span(from, *from_start, off, n, &mut chunk)?;
                    if n as u64 == BLOCK || at + n as u64 == body_len {
                        record
                            .verify_block((at / BLOCK) as usize, &chunk)
                            .map_err(io::Error::other)?;
                    }
                    &chunk
                }
            };
            self.log.write_span(segs, start, prefix + at, piece)?;
            at += n as u64;
        }
        Ok(())
    }

    /// A buffer was not written: forget the directory entries of its records.
    fn forget_records(&self, seg: &Segment, at: Pos, bytes: &[u8]) {
        let geo = self.log.geo;
        for (i, h) in records_in(bytes) {
            if h.kind == Kind::Object {
                let loc = Loc {
                    slot: geo.slot(seg.gen),
                    lap: geo.lap(seg.gen),
                    off: at.off + i as u64,
                    hint: h.span(),
                };
                if let Some(e) = Entry::new(h.key, loc) {
                    self.dir.remove_entry(&e);
                }
            }
        }
    }

    /// A buffer of segment `gen` was not written (`failed`, under the log's lock). A replay
    /// stops at the hole it leaves, so nothing more is placed in that segment, and the
    /// tombstones in it, or behind it in the segment (queued or buffered), are appended again
    /// in a later one: a purge must survive a crash whatever else the hole loses.
    fn after_hole(&self, st: &mut State, gen: u64, failed: &[u8]) {
        let mut keys = tombstones_in(failed);
        for (_, job) in &st.jobs {
            if let Job::Buffer { at, bytes, .. } = job {
                if at.gen == gen {
                    keys.extend(tombstones_in(bytes));
                }
            }
        }
        if st.active_at.gen == gen {
            keys.extend(tombstones_in(&st.active));
        }
        if st.cursor.is_some_and(|c| c.gen == gen) {
            st.cursor = Some(Pos {
                gen,
                off: self.log.geo.seg,
            });
        }
        if !keys.is_empty() {
            st.requeued += 1;
            st.pending_tombstones.extend(keys);
            self.place_pending_tombstones(st);
        }
        self.log.wake.notify_one();
    }

    /// No segment could be made: the buffered records are lost (they stay in memory only).
    fn drop_buffers_without_segment(&self) {
        let mut st = self.log.state.lock();
        if st.cursor.is_some() {
            return;
        }
        st.active.clear();
        st.active_objects = 0;
        st.active_since = None;
    }

    /// If the cursor's segment file was unlinked (the cache directory removed), start a new
    /// segment: what is written to an unlinked file would not survive a restart.
    fn check_links(&self) {
        if self.lock.lock().is_none() {
            // started on a directory unusable then: take the lock now that it may be usable
            if let Ok(false) = self.take_lock() {
                let e = io::Error::new(io::ErrorKind::WouldBlock, "lock held elsewhere");
                self.fault(
                    Fault::Open,
                    &e,
                    "another process holds the disk tier's lock this process writes without",
                );
            }
        }
        let seg = self.log.state.lock().cursor_seg.clone();
        if !seg.is_some_and(|s| s.unlinked()) {
            return;
        }
        let e = io::Error::new(io::ErrorKind::NotFound, "segment file removed");
        self.fault(
            Fault::Open,
            &e,
            "disk tier directory removed; recreating it (objects written before are lost at the next restart)",
        );
        let mut st = self.log.state.lock();
        self.log.seal(&mut st);
        if let Some(c) = st.cursor.take() {
            st.prepared = c.gen;
        }
        st.cursor_seg = None;
    }
}

/// `write_all_at` that reports a short write as an error.
trait WriteAllAt {
    fn write_all_at_checked(&self, buf: &[u8], off: u64) -> io::Result<()>;
}

impl WriteAllAt for File {
    fn write_all_at_checked(&self, buf: &[u8], off: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, off)
    }
}

/// The records a buffer holds, each with its offset in the buffer.
fn records_in(bytes: &[u8]) -> impl Iterator<Item = (usize, Header)> + '_ {
    let mut i = 0usize;
    std::iter::from_fn(move || {
        let h = Header::peek(bytes.get(i..)?).ok()?;
        if h.span() == 0 {
            return None;
        }
        let at = i;
        i += h.span() as usize;
        Some((at, h))
    })
}

/// The keys of the tombstones a buffer holds.
fn tombstones_in(bytes: &[u8]) -> Vec<u128> {
    records_in(bytes)
        .filter(|(_, h)| h.kind == Kind::Tombstone)
        .map(|(_, h)| h.key)
        .collect()
}
