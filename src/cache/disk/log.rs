//! The segment log: a ring of preallocated segment files that records are appended to.
//!
//! - The ring has `slots` segment files of `seg` bytes each (`segments/<slot>.seg`), their sizes
//!   adding up to the tier's capacity. A segment has a generation: the log is the sequence of
//!   generations, and generation `g` lives in slot `g % slots`. When the ring comes round to a
//!   slot, its file is replaced by a new one (created beside it, preallocated, renamed over it):
//!   readers holding the old file keep reading it, nothing is ever overwritten in place.
//! - A segment starts with a 64-byte header (generation, a random nonce that seeds its records'
//!   checksums, the ring's geometry), then records ([`super::record`]) at 8-byte boundaries.
//! - Small records are gathered in a buffer of up to [`BUFFER`] bytes and written with one
//!   `pwrite`; until then, readers find them in the buffer. A record larger than a segment
//!   runs on into the next generations' segments.
//!
//! This module is the mechanism: positions, segment files, buffers. The writer thread and the
//! cleaner that decide what is written when are in [`super::writer`].

use super::directory::Loc;
use super::record::HEADER;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::VecDeque;
use std::fs::{self, File};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Where a segment's records start (after its header).
pub const DATA_START: u64 = 64;
/// The segment size aimed at; small tiers have smaller segments.
const SEGMENT_TARGET: u64 = 64 << 20;
/// Segments at least (the one being written, the next one, and room for objects).
const MIN_SLOTS: u64 = 8;
const MAX_SLOTS: u64 = u16::MAX as u64;
/// Bytes gathered before one write.
pub const BUFFER: usize = 1 << 20;
const SEG_MAGIC: &[u8; 4] = b"OPSG";
const SEG_FORMAT: u32 = 1;
const SEG_HASH_AT: usize = 56;

/// The ring's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Number of segment files.
    pub slots: u64,
    /// Bytes in each.
    pub seg: u64,
}

/// A position in the log: a segment's generation and a byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// The segment's generation.
    pub gen: u64,
    /// Bytes from the segment file's start.
    pub off: u64,
}

impl Geometry {
    /// The ring for a tier of `capacity` bytes.
    pub fn for_capacity(capacity: u64) -> Geometry {
        let slots = (capacity / SEGMENT_TARGET).clamp(MIN_SLOTS, MAX_SLOTS);
        let seg = (capacity / slots / 4096 * 4096).max(64 << 10);
        Geometry { slots, seg }
    }

    /// Bytes of records a segment holds.
    pub fn data(&self) -> u64 {
        self.seg - DATA_START
    }

    /// The largest record the ring stores: it leaves room for the segment being written and
    /// the one being cleaned.
    pub fn max_record(&self) -> u64 {
        (self.slots - 3) * self.data()
    }

    /// The slot of generation `gen`.
    pub fn slot(&self, gen: u64) -> u16 {
        (gen % self.slots) as u16
    }

    /// The lap of generation `gen` (how often the ring came round, truncated).
    pub fn lap(&self, gen: u64) -> u8 {
        (gen / self.slots) as u8
    }

    /// A position as one number that grows along the log.
    pub fn global(&self, pos: Pos) -> u64 {
        pos.gen * self.seg + pos.off
    }

    /// The position `len` bytes of a record after `pos` (records larger than a segment go on
    /// at the next segment's [`DATA_START`]).
    pub fn advance(&self, mut pos: Pos, mut len: u64) -> Pos {
        loop {
            let room = self.seg - pos.off;
            if len <= room {
                pos.off += len;
                return pos;
            }
            len -= room;
            pos = Pos {
                gen: pos.gen + 1,
                off: DATA_START,
            };
        }
    }

    /// Where bytes `from..from + len` of a record starting at `start` are: (generation,
    /// offset, length) pieces, one per segment.
    pub fn pieces(&self, start: Pos, from: u64, len: u64) -> Vec<(u64, u64, u64)> {
        let mut at = self.advance(start, from);
        if at.off == self.seg {
            at = Pos {
                gen: at.gen + 1,
                off: DATA_START,
            };
        }
        let mut out = Vec::with_capacity(1);
        let mut left = len;
        while left > 0 {
            let take = (self.seg - at.off).min(left);
            out.push((at.gen, at.off, take));
            left -= take;
            at = Pos {
                gen: at.gen + 1,
                off: DATA_START,
            };
        }
        out
    }
}

/// One segment file.
pub struct Segment {
    /// The open file.
    pub file: File,
    /// Its generation.
    pub gen: u64,
    /// Seeds its records' checksums.
    pub nonce: u64,
}

impl Segment {
    fn header(gen: u64, nonce: u64, geo: Geometry) -> [u8; DATA_START as usize] {
        let mut h = [0u8; DATA_START as usize];
        h[..4].copy_from_slice(SEG_MAGIC);
        h[4..8].copy_from_slice(&SEG_FORMAT.to_le_bytes());
        h[8..16].copy_from_slice(&gen.to_le_bytes());
        h[16..24].copy_from_slice(&nonce.to_le_bytes());
        h[24..32].copy_from_slice(&geo.slots.to_le_bytes());
        h[32..40].copy_from_slice(&geo.seg.to_le_bytes());
        let hash = xxhash_rust::xxh3::xxh3_64(&h[..SEG_HASH_AT]);
        h[SEG_HASH_AT..].copy_from_slice(&hash.to_le_bytes());
        h
    }

    /// Open the segment file at `path`: its generation and nonce, if its header is sound and
    /// of this geometry (else why not).
    pub fn open(path: &Path, geo: Geometry) -> io::Result<Result<Segment, &'static str>> {
        let file = match File::options().read(true).write(true).open(path) {
            // a read-only directory: its objects can still be read
            Err(e)
                if e.kind() == ErrorKind::PermissionDenied
                    || e.raw_os_error() == Some(libc::EROFS) =>
            {
                File::open(path)?
            }
            other => other?,
        };
        let mut h = [0u8; DATA_START as usize];
        if read_full(&file, &mut h, 0)? < h.len() || &h[..4] != SEG_MAGIC {
            return Ok(Err("not a segment"));
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if word(SEG_HASH_AT) != xxhash_rust::xxh3::xxh3_64(&h[..SEG_HASH_AT]) {
            return Ok(Err("segment header checksum mismatch"));
        }
        if u32::from_le_bytes([h[4], h[5], h[6], h[7]]) != SEG_FORMAT
            || word(24) != geo.slots
            || word(32) != geo.seg
        {
            return Ok(Err("segment of another format or disk_size"));
        }
        Ok(Ok(Segment {
            file,
            gen: word(8),
            nonce: word(16),
        }))
    }

    /// Create the segment of generation `gen` at `path`: a new file, preallocated, its header
    /// written, renamed over whatever was there.
    pub fn create(path: &Path, gen: u64, geo: Geometry) -> io::Result<Segment> {
        let tmp = path.with_extension("new");
        let made = (|| {
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            preallocate(&file, geo.seg)?;
            let nonce = RandomState::new().hash_one((gen, std::process::id(), Instant::now()));
            file.write_all_at(&Segment::header(gen, nonce, geo), 0)?;
            fs::rename(&tmp, path)?;
            Ok(Segment { file, gen, nonce })
        })();
        if made.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        made
    }

    /// Whether the file was unlinked (its directory removed under us).
    pub fn unlinked(&self) -> bool {
        self.file
            .metadata()
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::nlink(&m) == 0)
    }
}

/// Allocate `len` bytes of `file` on disk now (a full disk fails here, not mid-segment).
fn preallocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
    // SAFETY: `file` is an open descriptor for the duration of the call.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return file.set_len(len as u64);
    }
    Err(e)
}

/// Read into `buf` at `off` until it is full or the file ends; the bytes read.
pub fn read_full(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// What the writer thread has to do, in log order.
pub enum Job {
    /// Write a buffer of small records.
    Buffer {
        /// Where it starts.
        at: Pos,
        /// Its segment.
        seg: Arc<Segment>,
        /// The records.
        bytes: Bytes,
        /// Object records in it.
        objects: u64,
    },
    /// Something the writer does itself, in turn ([`super::writer`]).
    Task(super::writer::Task),
}

/// The log's mutable state (under [`Log::state`]).
pub struct State {
    /// Where the next record goes; `None` while no segment can be written.
    pub cursor: Option<Pos>,
    /// The segment of the cursor.
    pub cursor_seg: Option<Arc<Segment>>,
    /// Records not yet handed to the writer, starting at `active_at`.
    pub active: Vec<u8>,
    /// Where `active` starts.
    pub active_at: Pos,
    /// Object records in `active`.
    pub active_objects: u64,
    /// When the first record went into `active`.
    pub active_since: Option<Instant>,
    /// Jobs for the writer, in order; a buffer stays here (readable) until written.
    pub jobs: VecDeque<(u64, Job)>,
    /// Bytes of records buffered and queued.
    pub queued: u64,
    /// Sequence number of the next job.
    pub next_seq: u64,
    /// Jobs numbered below this are done.
    pub done_seq: u64,
    /// The highest generation whose segment file is in its slot.
    pub prepared: u64,
    /// Object records not yet on disk.
    pub unwritten: u64,
    /// The writer should stop once the queue is empty.
    pub stopping: bool,
    /// Keys purged while no segment had room for their tombstone: appended as soon as the
    /// writer has prepared the next segment.
    pub pending_tombstones: Vec<u128>,
    /// How often tombstones were put back to be appended again (a write that failed).
    pub requeued: u64,
}

/// The ring of segments and the buffers in front of it.
pub struct Log {
    /// The ring's shape.
    pub geo: Geometry,
    /// `<cache dir>/segments`.
    pub dir: PathBuf,
    slots: Box<[RwLock<Option<Arc<Segment>>>]>,
    /// Cursor, buffers and queue.
    pub state: Mutex<State>,
    /// Wakes the writer.
    pub wake: Condvar,
    /// Signalled when jobs are done.
    pub landed: Condvar,
    /// Every buffered record below this global position is on disk.
    durable: AtomicU64,
}

impl Log {
    /// An empty log over `dir` (segments are installed by recovery and the writer).
    pub fn new(dir: PathBuf, geo: Geometry) -> Log {
        Log {
            geo,
            dir,
            slots: (0..geo.slots).map(|_| RwLock::new(None)).collect(),
            state: Mutex::new(State {
                cursor: None,
                cursor_seg: None,
                active: Vec::new(),
                active_at: Pos::default(),
                active_objects: 0,
                active_since: None,
                jobs: VecDeque::new(),
                queued: 0,
                next_seq: 0,
                done_seq: 0,
                prepared: 0,
                unwritten: 0,
                stopping: false,
                pending_tombstones: Vec::new(),
                requeued: 0,
            }),
            wake: Condvar::new(),
            landed: Condvar::new(),
            durable: AtomicU64::new(0),
        }
    }

    /// The path of `slot`'s file.
    pub fn path(&self, slot: u16) -> PathBuf {
        self.dir.join(format!("{slot:05}.seg"))
    }

    /// The segment now in `slot`.
    pub fn in_slot(&self, slot: u16) -> Option<Arc<Segment>> {
        self.slots.get(slot as usize)?.read().clone()
    }

    /// The segment of generation `gen`, if it is still in its slot.
    pub fn segment(&self, gen: u64) -> Option<Arc<Segment>> {
        self.in_slot(self.geo.slot(gen)).filter(|s| s.gen == gen)
    }

    /// The segment a directory location points into, if it is of the location's lap.
    pub fn segment_of(&self, loc: &Loc) -> Option<Arc<Segment>> {
        self.in_slot(loc.slot)
            .filter(|s| self.geo.lap(s.gen) == loc.lap && loc.off < self.geo.seg)
    }

    /// Put `seg` in its slot (the old file stays readable by whoever holds it).
    pub fn install(&self, seg: Arc<Segment>) {
        let slot = self.geo.slot(seg.gen) as usize;
        *self.slots[slot].write() = Some(seg);
    }

    /// The segments of generations `from..=to`, if all are still in their slots.
    pub fn segments(&self, from: u64, to: u64) -> Option<Vec<Arc<Segment>>> {
        (from..=to).map(|g| self.segment(g)).collect()
    }

    /// Note that everything buffered below `global` is on disk.
    pub fn set_durable(&self, global: u64) {
        self.durable.fetch_max(global, Ordering::AcqRel);
    }

    /// Whether bytes `pos..pos + len` may still be only in a buffer.
    pub fn maybe_buffered(&self, pos: Pos, len: u64) -> bool {
        self.geo.global(pos) + len > self.durable.load(Ordering::Acquire)
    }

    /// The bytes of the buffer holding the record at `pos`, from `pos` on: at most `want` of
    /// them if they must be copied (`None` if no buffer holds it: it is on disk).
    pub fn buffered(&self, pos: Pos, want: u64) -> Option<Bytes> {
        let st = self.state.lock();
        let end = st.active_at.off + st.active.len() as u64;
        if st.active_at.gen == pos.gen && (st.active_at.off..end).contains(&pos.off) {
            let from = (pos.off - st.active_at.off) as usize;
            let to = st.active.len().min(from.saturating_add(want as usize));
            return Some(Bytes::copy_from_slice(&st.active[from..to]));
        }
        st.jobs.iter().find_map(|(_, job)| match job {
            Job::Buffer { at, bytes, .. }
                if at.gen == pos.gen
                    && (at.off..at.off + bytes.len() as u64).contains(&pos.off) =>
            {
                Some(bytes.slice((pos.off - at.off) as usize..))
            }
            _ => None,
        })
    }

    /// Hand the buffered records to the writer.
    pub fn seal(&self, st: &mut State) {
        if st.active.is_empty() {
            return;
        }
        let Some(seg) = self.segment(st.active_at.gen) else {
            // its segment was replaced under us (cannot happen while it is the cursor's)
            st.active.clear();
            return;
        };
        let bytes = Bytes::from(std::mem::replace(
            &mut st.active,
            Vec::with_capacity(BUFFER),
        ));
        let objects = std::mem::take(&mut st.active_objects);
        st.active_since = None;
        let job = Job::Buffer {
            at: st.active_at,
            seg,
            bytes,
            objects,
        };
        self.push(st, job);
    }

    /// Queue a job; its sequence number.
    pub fn push(&self, st: &mut State, job: Job) -> u64 {
        let seq = st.next_seq;
        st.next_seq += 1;
        st.jobs.push_back((seq, job));
        self.wake.notify_one();
        seq
    }

    /// Room for a small record of `span` bytes at the cursor (moving to the next segment, and
    /// sealing the buffer, when needed): where it goes and its segment's nonce. The caller
    /// appends exactly `span` bytes to `st.active`. `None` when no segment is ready.
    pub fn place(&self, st: &mut State, span: u64) -> Option<(Pos, u64)> {
        debug_assert!(span <= self.geo.data() && span <= BUFFER as u64);
        let mut cur = st.cursor?;
        if cur.off + span > self.geo.seg {
            self.seal(st);
            let next = cur.gen + 1;
            self.wake.notify_one();
            if st.prepared < next {
                return None;
            }
            let seg = self.segment(next)?;
            cur = Pos {
                gen: next,
                off: DATA_START,
            };
            st.cursor = Some(cur);
            st.cursor_seg = Some(seg);
        }
        if st.active.len() as u64 + span > BUFFER as u64 {
            self.seal(st);
        }
        if st.active.is_empty() {
            st.active_at = cur;
            st.active_since = Some(Instant::now());
        }
        let nonce = st.cursor_seg.as_ref()?.nonce;
        st.cursor = Some(Pos {
            gen: cur.gen,
            off: cur.off + span,
        });
        Some((cur, nonce))
    }

    /// Room for a record of `span` bytes whose prefix is `prefix` bytes, written outside the
    /// buffers (by the writer): its start and the segments it runs through. `None` if those
    /// segments are not prepared yet (`st.prepared` must reach the returned end generation).
    pub fn reserve(
        &self,
        st: &mut State,
        span: u64,
        prefix: u64,
    ) -> Result<(Pos, Vec<Arc<Segment>>), Option<u64>> {
        self.seal(st);
        let cur = st.cursor.ok_or(None)?;
        let mut start = cur;
        // a record that fits a segment does not straddle two; a prefix never does
        let fits = span <= self.geo.data();
        if (fits && cur.off + span > self.geo.seg) || cur.off + prefix > self.geo.seg {
            start = Pos {
                gen: cur.gen + 1,
                off: DATA_START,
            };
        }
        let end = self.geo.advance(start, span);
        if st.prepared < end.gen {
            return Err(Some(end.gen));
        }
        let segs = self.segments(start.gen, end.gen).ok_or(None)?;
        st.cursor = Some(end);
        st.cursor_seg = segs.last().cloned();
        Ok((start, segs))
    }

    /// Append bytes `from..from + len` of the record starting at `start` (in `segs`) to `buf`,
    /// without zeroing its spare capacity first.
    pub fn read_span(
        &self,
        segs: &[Arc<Segment>],
        start: Pos,
        from: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        buf.reserve_exact(len);
        for (gen, off, n) in self.geo.pieces(start, from, len as u64) {
            let seg = piece_segment(segs, start, gen).ok_or_else(|| {
                io::Error::new(ErrorKind::UnexpectedEof, "record past its segments")
            })?;
            let want = buf.len() + n as usize;
            read_append(&seg.file, buf, n as usize, off)?;
            if buf.len() < want {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "segment cut short",
                ));
            }
        }
        Ok(())
    }

    /// Write `bytes` as bytes `from..` of the record starting at `start` (in `segs`).
    pub fn write_span(
        &self,
        segs: &[Arc<Segment>],
        start: Pos,
        from: u64,
        bytes: &[u8],
    ) -> io::Result<()> {
        let mut done = 0usize;
        for (gen, off, len) in self.geo.pieces(start, from, bytes.len() as u64) {
            let seg = piece_segment(segs, start, gen)
                .ok_or_else(|| io::Error::other("record past its segments"))?;
            seg.file
                .write_all_at(&bytes[done..done + len as usize], off)?;
            done += len as usize;
        }
        Ok(())
    }
}

/// The segment of generation `gen` among `segs`, the segments of a record starting at `start`.
fn piece_segment(segs: &[Arc<Segment>], start: Pos, gen: u64) -> Option<&Arc<Segment>> {
    usize::try_from(gen.checked_sub(start.gen)?)
        .ok()
        .and_then(|i| segs.get(i))
}

/// A record's header read at `pos` of `seg` (with at least `want` bytes of it, fewer if the
/// segment ends): the bytes read.
pub fn read_head(seg: &Segment, pos: Pos, want: u64, geo: Geometry) -> io::Result<Bytes> {
    let want = want.max(HEADER as u64).min(geo.seg.saturating_sub(pos.off));
    read_fresh(&seg.file, want as usize, pos.off).map(Bytes::from)
}

/// Read up to `len` bytes at `off` into a new buffer, without zeroing it first (a hit reads
/// up to a whole object this way: zeroing it would cost a pass over it).
pub fn read_fresh(file: &File, len: usize, off: u64) -> io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    read_append(file, &mut buf, len, off)?;
    Ok(buf)
}

/// Append up to `len` bytes read at `off` to `buf` (fewer at the end of the file), without
/// zeroing its spare capacity first.
pub fn read_append(file: &File, buf: &mut Vec<u8>, len: usize, off: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    buf.reserve_exact(len);
    let start = buf.len();
    let mut done = 0usize;
    while done < len {
        let at = libc::off_t::try_from(off + done as u64).map_err(io::Error::other)?;
        // SAFETY: the destination is the vector's spare capacity (`len - done` bytes from
        // `start + done`, reserved above), and `file` is open for the duration of the call.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(start + done).cast(),
                len - done,
                at,
            )
        };
        match n {
            0 => break,
            n if n > 0 => done += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        // SAFETY: the kernel wrote `done` bytes from `start`.
        unsafe { buf.set_len(start + done) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_fits_the_capacity() {
        for cap in [1 << 20, 10 << 20, 1 << 30, 100 << 30, 1 << 42] {
            let g = Geometry::for_capacity(cap);
            assert!(g.slots * g.seg <= cap, "{cap}: {g:?}");
            assert!(g.slots >= MIN_SLOTS && g.seg >= 64 << 10, "{cap}: {g:?}");
            assert!(
                g.seg <= SEGMENT_TARGET * 2 || g.slots == MAX_SLOTS,
                "{cap}: {g:?}"
            );
        }
    }

    #[test]
    fn records_past_a_segment_go_on_in_the_next() {
        let g = Geometry {
            slots: 8,
            seg: 1000,
        };
        let start = Pos { gen: 3, off: 900 };
        assert_eq!(g.advance(start, 100), Pos { gen: 3, off: 1000 });
        assert_eq!(g.advance(start, 101), Pos { gen: 4, off: 65 });
        assert_eq!(
            g.pieces(start, 50, 2000),
            vec![(3, 950, 50), (4, 64, 936), (5, 64, 936), (6, 64, 78)]
        );
        assert_eq!(g.pieces(start, 100, 10), vec![(4, 64, 10)]);
        assert_eq!(g.slot(9), 1);
        assert_eq!(g.lap(9), 1);
    }
}
