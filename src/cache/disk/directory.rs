//! The disk tier's directory: where each object's record is in the segment log, in 16 bytes
//! an object (about 28 bytes of memory an object with the hash table's free slots, at 10
//! million objects).
//!
//! An entry holds 56 bits of the key (the record holds all 128 and every read compares them),
//! the record's segment slot and offset, a read-size hint (so a small hit is one `pread`), a
//! "hit since written" bit (the cleaner rewrites those objects instead of evicting them) and
//! the lap of the slot it was written in: a slot's file is replaced every time the ring comes
//! round to it, and an entry of an older lap is stale (a miss), whether or not the cleaner
//! has removed it yet.
//!
//! 64 shards, each a mutex over a `hashbrown` table. Each shard is either ready or still being
//! loaded from the checkpoint at start-up ([`Directory::stage_shard`], [`Directory::finish_shard`]): until then lookups in
//! it miss, writes go in, and removals are remembered so that the load cannot bring back an
//! object purged meanwhile.

use hashbrown::HashTable;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

fn sorted(fps: &[u64]) -> Vec<u64> {
    let mut v = fps.to_vec();
    v.sort_unstable();
    v
}

/// Number of shards (a power of two).
pub const SHARDS: usize = 64;
const FP_BITS: u32 = 56;
const FP_MASK: u64 = (1 << FP_BITS) - 1;
const HIT: u32 = 1 << 31;
/// Offsets are stored in units of this many bytes (records are aligned to it).
const OFF_UNIT: u64 = 8;
/// Read hints are stored in units of this many bytes.
const HINT_UNIT: u64 = 64;
/// Bytes one entry takes in a checkpoint.
pub const ENTRY_BYTES: usize = 16;

/// Where a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// The segment slot.
    pub slot: u16,
    /// The lap of the slot (its generation / slots, truncated) when the record was written.
    pub lap: u8,
    /// Byte offset in the segment.
    pub off: u64,
    /// Bytes that hold the whole record (rounded up), 0 if more than a hint can say.
    pub hint: u64,
}

/// One directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// 56 bits of the key, and the lap in the top 8.
    word: u64,
    /// Offset in [`OFF_UNIT`]s, and [`HIT`].
    off: u32,
    slot: u16,
    /// Hint in [`HINT_UNIT`]s (0: unknown).
    hint: u16,
}

/// The key bits an entry keeps.
pub fn fingerprint(key: u128) -> u64 {
    key as u64 & FP_MASK
}

fn shard_of(fp: u64) -> usize {
    (fp >> 40) as usize & (SHARDS - 1)
}

/// The table's hash of a fingerprint (hashbrown takes its top 7 bits as the control byte).
fn hash(fp: u64) -> u64 {
    fp.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Entry {
    /// The entry for `key` at `loc`; `None` if the offset does not fit (over 16 GiB).
    pub fn new(key: u128, loc: Loc) -> Option<Entry> {
        let off = u32::try_from(loc.off / OFF_UNIT)
            .ok()
            .filter(|o| o & HIT == 0)?;
        let hint = u16::try_from(loc.hint.div_ceil(HINT_UNIT)).unwrap_or(0);
        Some(Entry {
            word: fingerprint(key) | u64::from(loc.lap) << FP_BITS,
            off,
            slot: loc.slot,
            hint,
        })
    }

    /// The key bits kept.
    pub fn fp(&self) -> u64 {
        self.word & FP_MASK
    }

    /// Where the record is.
    pub fn loc(&self) -> Loc {
        Loc {
            slot: self.slot,
            lap: (self.word >> FP_BITS) as u8,
            off: u64::from(self.off & !HIT) * OFF_UNIT,
            hint: u64::from(self.hint) * HINT_UNIT,
        }
    }

    /// Whether it was hit since it was written.
    pub fn hit(&self) -> bool {
        self.off & HIT != 0
    }

    fn same_place(&self, other: &Entry) -> bool {
        self.word == other.word && self.slot == other.slot && self.off & !HIT == other.off & !HIT
    }

    /// Its bytes in a checkpoint.
    pub fn to_bytes(self) -> [u8; ENTRY_BYTES] {
        let mut b = [0u8; ENTRY_BYTES];
        b[..8].copy_from_slice(&self.word.to_le_bytes());
        b[8..12].copy_from_slice(&self.off.to_le_bytes());
        b[12..14].copy_from_slice(&self.slot.to_le_bytes());
        b[14..].copy_from_slice(&self.hint.to_le_bytes());
        b
    }

    /// An entry read from a checkpoint.
    pub fn from_bytes(b: &[u8]) -> Entry {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[..8]);
        Entry {
            word: u64::from_le_bytes(w),
            off: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            slot: u16::from_le_bytes([b[12], b[13]]),
            hint: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

#[derive(Default)]
struct Shard {
    table: HashTable<Entry>,
    ready: bool,
    /// Fingerprints written or removed before the shard was loaded: what recovery finds of
    /// them is older.
    touched: Vec<u64>,
}

impl Shard {
    fn find(&self, fp: u64) -> Option<&Entry> {
        self.table.find(hash(fp), |e| e.fp() == fp)
    }

    /// Insert or replace; true if it was new.
    fn put(&mut self, entry: Entry) -> bool {
        let fp = entry.fp();
        match self
            .table
            .entry(hash(fp), |e| e.fp() == fp, |e| hash(e.fp()))
        {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                *o.get_mut() = entry;
                false
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(entry);
                true
            }
        }
    }

    fn take(&mut self, fp: u64, only: Option<&Entry>) -> Option<Entry> {
        let found = self
            .table
            .find_entry(hash(fp), |e| {
                e.fp() == fp && only.is_none_or(|o| o.same_place(e))
            })
            .ok()?;
        Some(found.remove().0)
    }
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The object's record is here.
    Found(Entry),
    /// Not stored.
    Absent,
    /// The shard is still being loaded: not known yet.
    Loading,
}

/// Key -> record location for every object on disk.
pub struct Directory {
    shards: Box<[Mutex<Shard>]>,
    len: AtomicU64,
    ready: AtomicUsize,
    /// Told each time a shard becomes ready.
    loaded: tokio::sync::watch::Sender<()>,
}

impl Directory {
    /// An empty directory; `ready` false: every shard waits for [`Directory::finish_shard`].
    pub fn new(ready: bool) -> Directory {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    ready,
                    ..Shard::default()
                })
            })
            .collect();
        Directory {
            shards,
            len: AtomicU64::new(0),
            ready: AtomicUsize::new(if ready { SHARDS } else { 0 }),
            loaded: tokio::sync::watch::Sender::new(()),
        }
    }

    /// Wait (at most `limit`) until the shard of `key` is loaded; true if it is.
    pub async fn wait_loaded(&self, key: u128, limit: std::time::Duration) -> bool {
        let shard = &self.shards[shard_of(fingerprint(key))];
        let mut rx = self.loaded.subscribe();
        let wait = async {
            while !shard.lock().ready {
                if rx.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }

    fn shard(&self, fp: u64) -> &Mutex<Shard> {
        &self.shards[shard_of(fp)]
    }

    /// Whether every shard is loaded.
    pub fn complete(&self) -> bool {
        self.ready.load(Ordering::Acquire) == SHARDS
    }

    /// Objects in the directory.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    /// Where `key`'s record is.
    pub fn get(&self, key: u128) -> Lookup {
        let fp = fingerprint(key);
        let shard = self.shard(fp).lock();
        match shard.find(fp) {
            Some(e) => Lookup::Found(*e),
            None if shard.ready => Lookup::Absent,
            None => Lookup::Loading,
        }
    }

    /// The entry whose fingerprint is `fp`.
    pub fn get_fp(&self, fp: u64) -> Option<Entry> {
        self.shard(fp).lock().find(fp).copied()
    }

    /// Note a hit on `entry` (if it is still the key's entry).
    pub fn mark_hit(&self, entry: &Entry) {
        if entry.hit() {
            return;
        }
        let fp = entry.fp();
        let mut shard = self.shard(fp).lock();
        if let Some(e) = shard.table.find_mut(hash(fp), |e| e.fp() == fp) {
            if e.same_place(entry) {
                e.off |= HIT;
            }
        }
    }

    /// Point `key` at `entry` (replacing what it pointed at).
    pub fn insert(&self, entry: Entry) {
        let mut shard = self.shard(entry.fp()).lock();
        if !shard.ready {
            shard.touched.push(entry.fp());
        }
        if shard.put(entry) {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Point the key of `was` at `now`, if it still points at `was`; true if it did.
    pub fn replace(&self, was: &Entry, now: Entry) -> bool {
        let fp = was.fp();
        let mut shard = self.shard(fp).lock();
        match shard.table.find_mut(hash(fp), |e| e.fp() == fp) {
            Some(e) if e.same_place(was) => {
                *e = now;
                true
            }
            _ => false,
        }
    }

    /// Forget `key`; true if it was there. Remembered against a load still to come.
    pub fn remove(&self, key: u128) -> bool {
        let fp = fingerprint(key);
        let mut shard = self.shard(fp).lock();
        if !shard.ready {
            shard.touched.push(fp);
        }
        let gone = shard.take(fp, None).is_some();
        if gone {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        gone
    }

    /// Forget `entry` if its key still points at it; true if it did.
    pub fn remove_entry(&self, entry: &Entry) -> bool {
        let gone = self
            .shard(entry.fp())
            .lock()
            .take(entry.fp(), Some(entry))
            .is_some();
        if gone {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        gone
    }

    /// Every fingerprint (a snapshot).
    pub fn fingerprints(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.len() as usize);
        for s in self.shards.iter() {
            out.extend(s.lock().table.iter().map(Entry::fp));
        }
        out
    }

    /// Empty `slot` before its file is replaced: entries of the slot for which `keep` says
    /// true are kept (and returned: the caller rewrites or removes them), the others removed.
    /// Returns the kept ones and the number removed.
    pub fn clear_slot(&self, slot: u16, mut keep: impl FnMut(&Entry) -> bool) -> (Vec<Entry>, u64) {
        let mut kept = Vec::new();
        let mut removed = 0u64;
        for s in self.shards.iter() {
            let mut shard = s.lock();
            shard.table.retain(|e| {
                if e.slot != slot {
                    return true;
                }
                if keep(e) {
                    kept.push(*e);
                    return true;
                }
                removed += 1;
                false
            });
        }
        self.len.fetch_sub(removed, Ordering::Relaxed);
        (kept, removed)
    }

    /// The entries of shard `i` (for a checkpoint), appended to `out` as bytes.
    pub fn dump_shard(&self, i: usize, out: &mut Vec<u8>) -> u64 {
        let shard = self.shards[i].lock();
        out.reserve(shard.table.len() * ENTRY_BYTES);
        for e in shard.table.iter() {
            out.extend_from_slice(&e.to_bytes());
        }
        shard.table.len() as u64
    }

    /// Load `entries` (from the checkpoint) into shard `i`, still not ready, each only if
    /// `valid` and its key was not written or removed since start-up (those are newer).
    pub fn stage_shard(
        &self,
        i: usize,
        entries: impl ExactSizeIterator<Item = Entry>,
        valid: impl Fn(&Entry) -> bool,
    ) {
        let mut shard = self.shards[i].lock();
        if shard.ready {
            return;
        }
        let touched = sorted(&shard.touched);
        let before = shard.table.len();
        shard.table.reserve(entries.len(), |e| hash(e.fp()));
        for e in entries {
            if touched.binary_search(&e.fp()).is_err() && valid(&e) {
                shard.put(e);
            }
        }
        let added = (shard.table.len() - before) as u64;
        drop(shard);
        self.len.fetch_add(added, Ordering::Relaxed);
    }

    /// Drop what [`Directory::stage_shard`] loaded into shard `i` (a checkpoint found damaged
    /// after all), keeping what was written since start-up.
    pub fn unstage_shard(&self, i: usize) {
        let mut shard = self.shards[i].lock();
        if shard.ready {
            return;
        }
        let touched = sorted(&shard.touched);
        let before = shard.table.len();
        shard
            .table
            .retain(|e| touched.binary_search(&e.fp()).is_ok());
        let removed = (before - shard.table.len()) as u64;
        drop(shard);
        self.len.fetch_sub(removed, Ordering::Relaxed);
    }

    /// Apply `ops` (the log after the checkpoint, in order: `Some` stores, `None` removes) to
    /// shard `i`, each only if `valid` and its key was not written or removed since start-up;
    /// then the shard is ready.
    pub fn finish_shard(
        &self,
        i: usize,
        ops: &[(u64, Option<Entry>)],
        valid: impl Fn(&Entry) -> bool,
    ) {
        let mut shard = self.shards[i].lock();
        if shard.ready {
            return;
        }
        let touched = sorted(&shard.touched);
        let before = shard.table.len() as i64;
        for (fp, op) in ops {
            if touched.binary_search(fp).is_ok() {
                continue;
            }
            match op {
                Some(e) if valid(e) => {
                    shard.put(*e);
                }
                _ => {
                    shard.take(*fp, None);
                }
            }
        }
        let delta = shard.table.len() as i64 - before;
        shard.ready = true;
        shard.touched = Vec::new();
        drop(shard);
        if delta >= 0 {
            self.len.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            self.len.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
        self.ready.fetch_add(1, Ordering::Release);
        self.loaded.send_replace(());
    }

    /// The shard a fingerprint is in.
    pub fn shard_index(fp: u64) -> usize {
        shard_of(fp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(slot: u16, off: u64) -> Loc {
        Loc {
            slot,
            lap: 3,
            off,
            hint: 1000,
        }
    }

    #[test]
    fn entries_are_16_bytes_and_round_trip() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        let key = 0xABCD_0000_0000_0000_1234_5678_9ABC_DEF0u128;
        let e = Entry::new(key, loc(7, 4096)).expect("fits");
        assert_eq!(e.fp(), fingerprint(key));
        assert_eq!(
            e.loc(),
            Loc {
                hint: 1024,
                ..loc(7, 4096)
            }
        );
        assert_eq!(Entry::from_bytes(&e.to_bytes()), e);
        assert!(Entry::new(key, loc(1, 1 << 40)).is_none(), "offset too far");
        let big = Entry::new(
            key,
            Loc {
                hint: 1 << 30,
                ..loc(1, 8)
            },
        )
        .expect("fits");
        assert_eq!(big.loc().hint, 0, "too large for a hint");
    }

    #[test]
    fn insert_replace_remove_and_hits() {
        let d = Directory::new(true);
        let e = Entry::new(1, loc(1, 8)).expect("fits");
        d.insert(e);
        assert_eq!(d.get(1), Lookup::Found(e));
        assert_eq!(d.get(2), Lookup::Absent);
        d.mark_hit(&e);
        let Lookup::Found(hit) = d.get(1) else {
            panic!("gone")
        };
        assert!(hit.hit());
        let moved = Entry::new(1, loc(2, 16)).expect("fits");
        assert!(d.replace(&e, moved), "same place, hit bit aside");
        assert!(!d.replace(&e, moved), "no longer there");
        assert!(!d.remove_entry(&e));
        assert_eq!(d.len(), 1);
        assert!(d.remove(1));
        assert!(!d.remove(1));
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn clearing_a_slot_keeps_only_what_is_asked() {
        let d = Directory::new(true);
        for k in 0..1000u128 {
            let slot = (k % 4) as u16;
            d.insert(Entry::new(k << 60 | k, loc(slot, 8 * k as u64)).expect("fits"));
        }
        let (kept, removed) = d.clear_slot(2, |e| e.loc().off % 16 == 0);
        assert_eq!(kept.len() as u64 + removed, 250);
        assert!(kept.iter().all(|e| e.loc().slot == 2));
        assert_eq!(d.len(), 1000 - removed);
    }

    #[test]
    fn a_load_never_brings_back_what_was_written_or_removed_meanwhile() {
        let d = Directory::new(false);
        let key = |k: u128| k << 40 | k; // all in shard 0? no: spread; find each one's shard
        let (a, b, c) = (key(1), key(2), key(3));
        assert_eq!(d.get(a), Lookup::Loading);
        let live = Entry::new(a, loc(9, 8)).expect("fits");
        d.insert(live);
        d.remove(b);
        for i in 0..SHARDS {
            let recovered = [
                Entry::new(a, loc(1, 8)).expect("fits"),
                Entry::new(b, loc(1, 16)).expect("fits"),
                Entry::new(c, loc(1, 24)).expect("fits"),
            ];
            let mine: Vec<Entry> = recovered
                .into_iter()
                .filter(|e| Directory::shard_index(e.fp()) == i)
                .collect();
            d.stage_shard(i, mine.into_iter(), |_| true);
            d.finish_shard(i, &[], |_| true);
        }
        assert!(d.complete());
        assert_eq!(d.get(a), Lookup::Found(live), "written since start-up wins");
        assert_eq!(
            d.get(b),
            Lookup::Absent,
            "removed since start-up stays removed"
        );
        assert!(matches!(d.get(c), Lookup::Found(_)));
        assert_eq!(d.len(), 2);
    }
}
