//! Start-up and checkpoints: the directory is written to `directory` (periodically and on a
//! graceful stop) with the log position it covers; at start-up it is read back and the log
//! after that position replayed (records are self-describing), so a restart after a crash
//! finds everything that reached the segment files, and nothing purged.
//!
//! ```text
//! header 64: magic 4 | format 4 | slots 8 | seg 8 | gen 8 | off 8 | pad 16 | hash 8
//! then per shard: count 8 | entries 16 x count | xxh3 of the entries 8
//! ```
//! A checkpoint that fails any check is ignored and the whole log replayed instead (slower,
//! same result). Start-up does not wait for any of it: lookups in a shard not yet loaded miss.

use super::directory::{Directory, Entry, Loc, ENTRY_BYTES, SHARDS};
use super::log::{Geometry, Log, Pos, Segment, DATA_START};
use super::record::{Header, Kind, ALIGN, HEADER};
use super::{DiskTier, Fault};
use bytes::Bytes;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use xxhash_rust::xxh3::xxh3_64;

const MAGIC: &[u8; 4] = b"OPDC";
const FORMAT: u32 = 1;
const CP_HEADER: usize = 64;
const HASH_AT: usize = 56;
const RECORD_MAGIC: &[u8; 4] = b"OPR1";

fn word(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Write the directory as a checkpoint covering the log up to `at` (blocking).
pub fn write_checkpoint(tier: &DiskTier, at: Pos) -> io::Result<()> {
    let started = Instant::now();
    let path = tier.root.join("directory");
    let tmp = tier.root.join("directory.new");
    let written = (|| {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let geo = tier.log.geo;
        let mut h = [0u8; CP_HEADER];
        h[..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&FORMAT.to_le_bytes());
        h[8..16].copy_from_slice(&geo.slots.to_le_bytes());
        h[16..24].copy_from_slice(&geo.seg.to_le_bytes());
        h[24..32].copy_from_slice(&at.gen.to_le_bytes());
        h[32..40].copy_from_slice(&at.off.to_le_bytes());
        let hash = xxh3_64(&h[..HASH_AT]);
        h[HASH_AT..].copy_from_slice(&hash.to_le_bytes());
        out.write_all(&h)?;
        let mut buf = Vec::new();
        let mut total = 0;
        for i in 0..SHARDS {
            buf.clear();
            let n = tier.dir.dump_shard(i, &mut buf);
            total += n;
            out.write_all(&n.to_le_bytes())?;
            out.write_all(&buf)?;
            out.write_all(&xxh3_64(&buf).to_le_bytes())?;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        fs::rename(&tmp, &path)?;
        Ok(total)
    })();
    match written {
        Ok(objects) => {
            tracing::debug!(
                objects,
                gen = at.gen,
                off = at.off,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "disk tier checkpoint written"
            );
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Stage the entries of the checkpoint under `root` (covering the log up to `at`) into the
/// directory, reading it shard by shard: the objects staged, or why it is unusable (then what
/// was staged must be dropped).
fn stage_checkpoint(
    tier: &DiskTier,
    at: Pos,
    valid: impl Fn(&Entry) -> bool + Copy,
) -> Result<u64, String> {
    use std::io::Read;
    let file = File::open(tier.root.join("directory")).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut f = io::BufReader::with_capacity(1 << 20, file);
    let mut h = [0u8; CP_HEADER];
    f.read_exact(&mut h).map_err(|e| e.to_string())?;
    if checkpoint_header(&h, tier.log.geo) != Some(at) {
        return Err("checkpoint replaced while read".into());
    }
    let mut consumed = CP_HEADER as u64;
    let mut buf = Vec::new();
    let mut word8 = [0u8; 8];
    let mut total = 0;
    for i in 0..SHARDS {
        f.read_exact(&mut word8)
            .map_err(|_| "checkpoint cut short")?;
        let count = u64::from_le_bytes(word8);
        let bytes = count
            .checked_mul(ENTRY_BYTES as u64)
            .filter(|b| consumed + 16 + b <= len)
            .ok_or("checkpoint count out of range")?;
        buf.resize(bytes as usize, 0);
        f.read_exact(&mut buf).map_err(|_| "checkpoint cut short")?;
        f.read_exact(&mut word8)
            .map_err(|_| "checkpoint cut short")?;
        if xxh3_64(&buf) != u64::from_le_bytes(word8) {
            return Err("checkpoint checksum mismatch".into());
        }
        tier.dir.stage_shard(
            i,
            buf.chunks_exact(ENTRY_BYTES).map(Entry::from_bytes),
            valid,
        );
        consumed += 16 + bytes;
        total += count;
    }
    if consumed != len {
        return Err("checkpoint length mismatch".into());
    }
    Ok(total)
}

/// Open the segment files under the log's directory and install them; sorted by generation.
/// Files that are not segments of this geometry are removed.
pub fn open_segments(tier: &DiskTier) -> Vec<Arc<Segment>> {
    let log: &Log = &tier.log;
    let mut found: Vec<Arc<Segment>> = Vec::new();
    let Ok(entries) = fs::read_dir(&log.dir) else {
        return found;
    };
    let mut dropped = 0u32;
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        let slot = name
            .strip_suffix(".seg")
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|s| u64::from(*s) < log.geo.slots);
        let Some(slot) = slot else {
            // a segment being created when the last process stopped, or of another geometry
            dropped += u32::from(fs::remove_file(&path).is_ok());
            continue;
        };
        match Segment::open(&path, log.geo) {
            Ok(Ok(seg)) if log.geo.slot(seg.gen) == slot && seg.gen > 0 => {
                found.push(Arc::new(seg));
            }
            Ok(_) => dropped += u32::from(fs::remove_file(&path).is_ok()),
            Err(e) => tier.fault(Fault::Read, &e, "disk tier segment unreadable; skipped"),
        }
    }
    if dropped > 0 {
        tracing::warn!(
            files = dropped,
            "disk tier: dropped segment files of another disk_size or not complete"
        );
    }
    found.sort_by_key(|s| s.gen);
    for seg in &found {
        log.install(seg.clone());
    }
    found
}

/// Where the checkpoint under `root` says the log is to be replayed from, if it has a sound
/// header of this geometry (its entries are checked when read).
fn checkpoint_at(root: &Path, geo: Geometry) -> Option<Pos> {
    use std::io::Read;
    let mut h = [0u8; CP_HEADER];
    File::open(root.join("directory"))
        .ok()?
        .read_exact(&mut h)
        .ok()?;
    checkpoint_header(&h, geo)
}

/// The log position a checkpoint header covers, if it is sound and of this geometry.
fn checkpoint_header(h: &[u8; CP_HEADER], geo: Geometry) -> Option<Pos> {
    let sound = &h[..4] == MAGIC
        && word(h, HASH_AT) == xxh3_64(&h[..HASH_AT])
        && u32::from_le_bytes([h[4], h[5], h[6], h[7]]) == FORMAT
        && word(h, 8) == geo.slots
        && word(h, 16) == geo.seg;
    sound.then(|| Pos {
        gen: word(h, 24),
        off: word(h, 32),
    })
}

/// The log's operations per shard, from `pos` on: (records replayed, damaged).
fn replay_from(
    tier: &DiskTier,
    segs: &[Arc<Segment>],
    mut pos: Pos,
    ops: &mut [Vec<(u64, Option<Entry>)>],
) -> (u64, u64) {
    let geo = tier.log.geo;
    let (mut replayed, mut damaged) = (0u64, 0u64);
    while let Some(seg) = segs
        .binary_search_by_key(&pos.gen, |s| s.gen)
        .ok()
        .map(|i| &segs[i])
    {
        pos = match replay_segment(tier, seg, pos.off, ops, &mut replayed, &mut damaged) {
            Ok(next) => next,
            Err(e) => {
                tier.fault(
                    Fault::Read,
                    &e,
                    "disk tier segment unreadable during recovery",
                );
                Pos {
                    gen: pos.gen + 1,
                    off: DATA_START,
                }
            }
        };
        if pos.off >= geo.seg {
            pos = Pos {
                gen: pos.gen + 1,
                off: DATA_START,
            };
        }
    }
    (replayed, damaged)
}

/// Rebuild the directory: the checkpoint's entries (read on a second thread), and the log
/// after it (every segment, if there is no usable checkpoint). Runs on its own thread at
/// start-up; each shard is ready once both are in.
pub fn recover(tier: &DiskTier, segs: Vec<Arc<Segment>>) {
    let started = Instant::now();
    let geo = tier.log.geo;
    let oldest = Pos {
        gen: segs.first().map_or(u64::MAX, |s| s.gen),
        off: DATA_START,
    };
    let at = checkpoint_at(&tier.root, geo);
    let valid = |e: &Entry| tier.log.segment_of(&e.loc()).is_some();
    let mut ops: Vec<Vec<(u64, Option<Entry>)>> = vec![Vec::new(); SHARDS];
    let (checkpoint, (mut replayed, mut damaged)) = std::thread::scope(|s| {
        let staged = at.map(|at| {
            s.spawn(move || match stage_checkpoint(tier, at, valid) {
                Ok(objects) => Some(objects),
                Err(why) => {
                    tracing::warn!(
                        why,
                        "disk tier checkpoint unusable; replaying the whole log"
                    );
                    None
                }
            })
        });
        let tail = replay_from(tier, &segs, at.unwrap_or(oldest), &mut ops);
        let loaded = staged.and_then(|t| t.join().ok().flatten());
        (loaded, tail)
    });
    if at.is_some() && checkpoint.is_none() {
        // the checkpoint was damaged after all: the whole log, then
        for (i, ops) in ops.iter_mut().enumerate() {
            tier.dir.unstage_shard(i);
            ops.clear();
        }
        (replayed, damaged) = replay_from(tier, &segs, oldest, &mut ops);
    }
    for (i, ops) in ops.iter().enumerate() {
        tier.dir.finish_shard(i, ops, valid);
    }
    if replayed > 0 {
        tier.changes.fetch_add(1, Ordering::Relaxed);
    }
    if damaged > 0 {
        tier.metrics.disk_corrupt.inc_by(damaged);
    }
    tracing::info!(
        objects = tier.dir.len(),
        checkpoint = checkpoint.is_some(),
        replayed,
        damaged,
        segments = segs.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "disk tier directory recovered"
    );
}

/// Bytes of a segment read at a time by the replay.
const WINDOW: u64 = 4 << 20;

/// Replay the records of `seg` from `off` on into `ops`; where the log goes on. The segment's
/// records end at the first all-zero header (the rest of a preallocated file); damaged bytes
/// are skipped by looking for the next record's magic.
fn replay_segment(
    tier: &DiskTier,
    seg: &Segment,
    off: u64,
    ops: &mut [Vec<(u64, Option<Entry>)>],
    replayed: &mut u64,
    damaged: &mut u64,
) -> io::Result<Pos> {
    let geo = tier.log.geo;
    let next_segment = Pos {
        gen: seg.gen + 1,
        off: DATA_START,
    };
    let finder = memchr::memmem::Finder::new(RECORD_MAGIC);
    let mut base = off.max(DATA_START);
    while base + HEADER as u64 <= geo.seg {
        let len = WINDOW.min(geo.seg - base);
        let mut buf = vec![0u8; len as usize];
        let n = super::log::read_full(&seg.file, &mut buf, base)?;
        if n < HEADER {
            return Ok(next_segment); // the file ends here (cut short)
        }
        buf.truncate(n);
        let buf = Bytes::from(buf);
        let mut i = 0usize;
        while i + HEADER <= buf.len() {
            if buf[i..i + HEADER].iter().all(|&b| b == 0) {
                return Ok(next_segment);
            }
            let at = Pos {
                gen: seg.gen,
                off: base + i as u64,
            };
            if let Some(next) = replay_one(tier, seg, &buf, i, at, ops, replayed, damaged) {
                if next.gen != seg.gen {
                    return Ok(next);
                }
                i = (next.off - base) as usize;
                continue;
            }
            if needs_more(&buf[i..], seg) {
                break; // read again from this record's start
            }
            // damage: resynchronise at the next record magic on a record boundary
            let mut from = i + ALIGN as usize;
            i = buf.len().saturating_sub(HEADER) / ALIGN as usize * ALIGN as usize;
            i = i.max(from);
            while from < buf.len() {
                match finder.find(&buf[from..]) {
                    Some(k) if (from + k).is_multiple_of(ALIGN as usize) => {
                        i = from + k;
                        break;
                    }
                    Some(k) => from += k + 1,
                    None => break,
                }
            }
        }
        if i == 0 {
            // one record larger than the window
            match replay_large(tier, seg, base, ops, replayed) {
                Some(next) if next.gen != seg.gen => return Ok(next),
                Some(next) => base = next.off,
                None => base += ALIGN,
            }
            continue;
        }
        base += i as u64;
    }
    Ok(next_segment)
}

/// Whether `bytes` start with a sound header of `seg` for a record longer than `bytes`.
fn needs_more(bytes: &[u8], seg: &Segment) -> bool {
    Header::peek(bytes).is_ok_and(|h| h.gen == seg.gen && h.span() > bytes.len() as u64)
}

/// Replay a record larger than a replay window at `off` of `seg` (its prefix verified, its
/// body not: that is done block by block when it is served); where the next record begins.
fn replay_large(
    tier: &DiskTier,
    seg: &Segment,
    off: u64,
    ops: &mut [Vec<(u64, Option<Entry>)>],
    replayed: &mut u64,
) -> Option<Pos> {
    let geo = tier.log.geo;
    let at = Pos { gen: seg.gen, off };
    let head = super::log::read_head(seg, at, HEADER as u64, geo).ok()?;
    let h = Header::peek(&head).ok().filter(|h| h.gen == seg.gen)?;
    let prefix = super::log::read_head(seg, at, h.prefix_len(), geo).ok()?;
    h.verify(seg.nonce, prefix).ok()?;
    record_op(geo, &h, at, ops);
    *replayed += 1;
    Some(geo.advance(at, h.span()))
}

/// Note what the record `h` at `at` does to its key.
fn record_op(geo: Geometry, h: &Header, at: Pos, ops: &mut [Vec<(u64, Option<Entry>)>]) {
    let fp = super::directory::fingerprint(h.key);
    let span = h.span();
    let op = match h.kind {
        Kind::Tombstone => None,
        Kind::Object => Entry::new(
            h.key,
            Loc {
                slot: geo.slot(at.gen),
                lap: geo.lap(at.gen),
                off: at.off,
                hint: if span <= super::log::BUFFER as u64 {
                    span
                } else {
                    0
                },
            },
        ),
    };
    ops[Directory::shard_index(fp)].push((fp, op));
}

/// Replay the record at `buf[i..]` (log position `at`) if it is one that fits `buf` (or runs
/// on past the segment); where the next begins.
#[allow(clippy::too_many_arguments)]
fn replay_one(
    tier: &DiskTier,
    seg: &Segment,
    buf: &Bytes,
    i: usize,
    at: Pos,
    ops: &mut [Vec<(u64, Option<Entry>)>],
    replayed: &mut u64,
    damaged: &mut u64,
) -> Option<Pos> {
    let geo = tier.log.geo;
    let h = Header::peek(&buf[i..]).ok().filter(|h| h.gen == seg.gen)?;
    let prefix = h.prefix_len() as usize;
    let span = h.span();
    let body_at = i + prefix;
    let body_end = body_at + h.body_len as usize;
    if body_end > buf.len() {
        return None;
    }
    let record = h.verify(seg.nonce, buf.slice(i..body_at)).ok()?;
    if record.verify(&buf[body_at..body_end]).is_err() {
        // a write cut short by the crash: skip it, the log goes on after it
        *damaged += 1;
        return Some(geo.advance(at, span));
    }
    record_op(geo, &h, at, ops);
    *replayed += 1;
    Some(geo.advance(at, span))
}
