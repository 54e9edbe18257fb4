//! The disk tier's index: which objects are on disk, their sizes, and their recency order.

use std::collections::{BTreeSet, HashMap};

/// A hit refreshes an object's recency when it is older than this (nanoseconds).
const TOUCH_INTERVAL: u64 = 60_000_000_000;

/// One object's size and recency.
#[derive(Clone, Copy)]
pub(super) struct Indexed {
    bytes: u64,
    /// Last write or (coarsely) last hit, nanoseconds since the Unix epoch.
    stamp: u64,
}

/// Which objects are on disk, their sizes, and their recency order.
#[derive(Default)]
pub(super) struct Index {
    pub(super) map: HashMap<u128, Indexed>,
    lru: BTreeSet<(u64, u128)>,
    pub(super) bytes: u64,
}

impl Index {
    /// Add or replace `key` with its size and recency stamp.
    pub(super) fn insert(&mut self, key: u128, bytes: u64, stamp: u64) {
        self.remove(key);
        self.map.insert(key, Indexed { bytes, stamp });
        self.lru.insert((stamp, key));
        self.bytes += bytes;
    }

    /// Forget `key`; true if it was indexed.
    pub(super) fn remove(&mut self, key: u128) -> bool {
        match self.map.remove(&key) {
            Some(old) => {
                self.lru.remove(&(old.stamp, key));
                self.bytes -= old.bytes;
                true
            }
            None => false,
        }
    }

    /// Refresh `key`'s recency if it is older than [`TOUCH_INTERVAL`]; true if refreshed.
    pub(super) fn touch(&mut self, key: u128, now: u64) -> bool {
        match self.map.get_mut(&key) {
            Some(e) if now.saturating_sub(e.stamp) >= TOUCH_INTERVAL => {
                self.lru.remove(&(e.stamp, key));
                e.stamp = now;
                self.lru.insert((now, key));
                true
            }
            _ => false,
        }
    }

    /// The least recently used key.
    pub(super) fn oldest(&self) -> Option<u128> {
        self.lru.first().map(|(_, k)| *k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_tracks_bytes_and_evicts_oldest_first() {
        let mut i = Index::default();
        i.insert(1, 100, 10);
        i.insert(2, 200, 20);
        i.insert(3, 300, 30);
        assert_eq!(i.bytes, 600);
        assert_eq!(i.oldest(), Some(1));
        // a touch makes 1 the newest
        assert!(i.touch(1, 10 + TOUCH_INTERVAL));
        assert_eq!(i.oldest(), Some(2));
        // re-inserting replaces size and recency
        i.insert(2, 50, 100);
        assert_eq!(i.bytes, 450);
        assert_eq!(i.oldest(), Some(3));
        assert!(i.remove(3));
        assert!(!i.remove(3));
        assert_eq!(i.bytes, 150);
        assert_eq!(i.map.len(), i.lru.len());
    }

    #[test]
    fn index_bookkeeping_holds_under_random_operations() {
        // property: bytes == sum of sizes, lru mirrors map, oldest has the smallest stamp
        let mut i = Index::default();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for step in 0..20_000u64 {
            let key = u128::from(next() % 500);
            match next() % 4 {
                0 | 1 => i.insert(key, next() % 10_000, step * TOUCH_INTERVAL / 8),
                2 => {
                    i.remove(key);
                }
                _ => {
                    i.touch(key, step * TOUCH_INTERVAL / 8);
                }
            }
            if step % 97 == 0 {
                assert_eq!(i.bytes, i.map.values().map(|e| e.bytes).sum::<u64>());
                assert_eq!(i.map.len(), i.lru.len());
                let min = i.map.values().map(|e| e.stamp).min();
                assert_eq!(i.lru.first().map(|(s, _)| *s), min);
            }
        }
    }
}
