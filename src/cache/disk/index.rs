//! The disk tier's index: which objects are on disk, their sizes, and their recency order.
//!
//! Compact, as it holds an entry for every object on disk (millions): a slab of 40-byte nodes
//! linked in recency order (least recent first), found through a table of slab positions
//! (4 bytes a bucket). The standard `HashMap` plus a `BTreeSet` ordered by time it replaces took
//! ~107 bytes an object.

use hashbrown::HashTable;
use std::hash::{BuildHasher, RandomState};

/// A hit refreshes an object's recency when it is older than this (nanoseconds).
const TOUCH_INTERVAL: u64 = 60_000_000_000;

/// No node (end of a list).
const NIL: u32 = u32::MAX;

/// One object: its key, size and recency, and its neighbours in recency order (or, free, the
/// next free node).
#[derive(Clone, Copy)]
struct Node {
    /// The key's halves (a u128 would align, and pad, the node to 48 bytes).
    key: [u64; 2],
    bytes: u64,
    /// Last write or (coarsely) last hit, seconds since the Unix epoch.
    stamp: u32,
    prev: u32,
    next: u32,
}

/// Which objects are on disk, their sizes, and their recency order.
pub(super) struct Index {
    /// Positions in `nodes`, by key.
    table: HashTable<u32>,
    nodes: Vec<Node>,
    /// First free node, [`NIL`] if none.
    free: u32,
    /// Least and most recently used nodes.
    oldest: u32,
    newest: u32,
    hasher: RandomState,
    pub(super) bytes: u64,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            table: HashTable::new(),
            nodes: Vec::new(),
            free: NIL,
            oldest: NIL,
            newest: NIL,
            hasher: RandomState::new(),
            bytes: 0,
        }
    }
}

fn halves(key: u128) -> [u64; 2] {
    [key as u64, (key >> 64) as u64]
}

fn whole([low, high]: [u64; 2]) -> u128 {
    u128::from(high) << 64 | u128::from(low)
}

fn seconds(nanos: u64) -> u32 {
    u32::try_from(nanos / 1_000_000_000).unwrap_or(u32::MAX)
}

impl Index {
    fn hash(&self, key: [u64; 2]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The node of `key`.
    fn find(&self, key: u128) -> Option<u32> {
        let key = halves(key);
        self.table
            .find(self.hash(key), |&i| self.nodes[i as usize].key == key)
            .copied()
    }

    /// Number of objects indexed.
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether `key` is indexed.
    pub(super) fn contains(&self, key: u128) -> bool {
        self.find(key).is_some()
    }

    /// Every indexed key.
    pub(super) fn keys(&self) -> impl Iterator<Item = u128> + '_ {
        self.table
            .iter()
            .map(|&i| whole(self.nodes[i as usize].key))
    }

    /// Add or replace `key` with its size and recency stamp (nanoseconds), as the most recent.
    pub(super) fn insert(&mut self, key: u128, bytes: u64, stamp: u64) {
        self.remove(key);
        let node = Node {
            key: halves(key),
            bytes,
            stamp: seconds(stamp),
            prev: NIL,
            next: NIL,
        };
        let i = if self.free == NIL {
            self.nodes.push(node);
            u32::try_from(self.nodes.len() - 1).unwrap_or_else(|_| unreachable!("4 G objects"))
        } else {
            let i = self.free;
            self.free = self.nodes[i as usize].next;
            self.nodes[i as usize] = node;
            i
        };
        self.link_newest(i);
        let hash = self.hash(node.key);
        let nodes = &self.nodes;
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, i, |&j| hasher.hash_one(nodes[j as usize].key));
        self.bytes += bytes;
    }

    /// Forget `key`; true if it was indexed.
    pub(super) fn remove(&mut self, key: u128) -> bool {
        let key = halves(key);
        let hash = self.hash(key);
        let nodes = &self.nodes;
        let Ok(found) = self
            .table
            .find_entry(hash, |&i| nodes[i as usize].key == key)
        else {
            return false;
        };
        let (i, _) = found.remove();
        self.unlink(i);
        let node = &mut self.nodes[i as usize];
        self.bytes -= node.bytes;
        node.next = self.free;
        self.free = i;
        true
    }

    /// Refresh `key`'s recency if it is older than [`TOUCH_INTERVAL`]; true if refreshed.
    pub(super) fn touch(&mut self, key: u128, now: u64) -> bool {
        let Some(i) = self.find(key) else {
            return false;
        };
        let now = seconds(now);
        let stamp = self.nodes[i as usize].stamp;
        if u64::from(now.saturating_sub(stamp)) * 1_000_000_000 < TOUCH_INTERVAL {
            return false;
        }
        self.unlink(i);
        self.nodes[i as usize].stamp = now;
        self.link_newest(i);
        true
    }

    /// The least recently used key.
    pub(super) fn oldest(&self) -> Option<u128> {
        (self.oldest != NIL).then(|| whole(self.nodes[self.oldest as usize].key))
    }

    /// Put the recency order in stamp order (objects of equal stamps keep their order): the
    /// scan that rebuilds the index finds objects in directory order.
    pub(super) fn order_by_stamp(&mut self) {
        let mut order = Vec::with_capacity(self.len());
        let mut i = self.oldest;
        while i != NIL {
            order.push(i);
            i = self.nodes[i as usize].next;
        }
        order.sort_by_key(|&i| self.nodes[i as usize].stamp);
        self.oldest = NIL;
        self.newest = NIL;
        for i in order {
            self.link_newest(i);
        }
    }

    fn link_newest(&mut self, i: u32) {
        let newest = self.newest;
        let node = &mut self.nodes[i as usize];
        node.prev = newest;
        node.next = NIL;
        if newest == NIL {
            self.oldest = i;
        } else {
            self.nodes[newest as usize].next = i;
        }
        self.newest = i;
    }

    fn unlink(&mut self, i: u32) {
        let Node { prev, next, .. } = self.nodes[i as usize];
        if prev == NIL {
            self.oldest = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.newest = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys from oldest to newest, walking the list.
    fn order(i: &Index) -> Vec<u128> {
        let mut keys = Vec::new();
        let mut n = i.oldest;
        while n != NIL {
            keys.push(whole(i.nodes[n as usize].key));
            n = i.nodes[n as usize].next;
        }
        keys
    }

    #[test]
    fn node_is_40_bytes() {
        assert_eq!(std::mem::size_of::<Node>(), 40);
    }

    #[test]
    fn index_tracks_bytes_and_evicts_oldest_first() {
        let mut i = Index::default();
        let big = u128::MAX - 7;
        i.insert(big, 100, 10);
        i.insert(2, 200, 20);
        i.insert(3, 300, 30);
        assert_eq!(i.bytes, 600);
        assert_eq!(i.oldest(), Some(big));
        // a touch makes `big` the newest
        assert!(i.touch(big, 10 + TOUCH_INTERVAL));
        assert!(
            !i.touch(big, 20 + TOUCH_INTERVAL),
            "refreshed once a minute at most"
        );
        assert_eq!(i.oldest(), Some(2));
        // re-inserting replaces size and recency
        i.insert(2, 50, 100);
        assert_eq!(i.bytes, 450);
        assert_eq!(i.oldest(), Some(3));
        assert!(i.remove(3));
        assert!(!i.remove(3));
        assert_eq!(i.bytes, 150);
        assert_eq!(i.len(), 2);
        assert_eq!(order(&i), [big, 2]);
        assert!(i.contains(big) && !i.contains(3));
    }

    #[test]
    fn the_scan_order_becomes_stamp_order() {
        let mut i = Index::default();
        let s = 1_000_000_000;
        for (key, stamp) in [(1, 50), (2, 10), (3, 30), (4, 10), (5, 20)] {
            i.insert(key, 1, stamp * s);
        }
        i.order_by_stamp();
        assert_eq!(order(&i), [2, 4, 5, 3, 1]);
        i.insert(6, 1, 5 * s);
        assert_eq!(i.oldest(), Some(2), "later inserts are the most recent");
    }

    #[test]
    fn index_bookkeeping_holds_under_random_operations() {
        // property: bytes == sum of sizes, the list holds exactly the indexed keys, oldest
        // first, and the table finds each
        let mut i = Index::default();
        let mut model = std::collections::HashMap::new();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for step in 0..20_000u64 {
            let key = u128::from(next() % 500) << 70 | 1;
            let now = step * TOUCH_INTERVAL / 8;
            match next() % 4 {
                0 | 1 => {
                    let bytes = next() % 10_000;
                    i.insert(key, bytes, now);
                    model.insert(key, bytes);
                }
                2 => {
                    assert_eq!(i.remove(key), model.remove(&key).is_some());
                }
                _ => {
                    i.touch(key, now);
                }
            }
            if step % 97 == 0 {
                assert_eq!(i.bytes, model.values().sum::<u64>());
                let listed = order(&i);
                assert_eq!(listed.len(), model.len());
                assert_eq!(i.len(), model.len());
                let stamps: Vec<u32> = listed
                    .iter()
                    .map(|k| i.nodes[i.find(*k).unwrap() as usize].stamp)
                    .collect();
                assert!(stamps.windows(2).all(|w| w[0] <= w[1]));
                let mut keys: Vec<u128> = i.keys().collect();
                keys.sort_unstable();
                let mut expected: Vec<u128> = model.keys().copied().collect();
                expected.sort_unstable();
                assert_eq!(keys, expected);
            }
        }
    }
}
