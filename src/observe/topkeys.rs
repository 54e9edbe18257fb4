//! The node's heaviest keys (`host + path`) by requests over the last minute or so: a bounded
//! Space-Saving table (Metwally et al., 2005) per window, two windows kept.
//!
//! Space-Saving keeps at most [`CAPACITY`] counters. A key already counted is incremented; a
//! new key takes a free counter or, when the table is full, the counter with the fewest
//! requests, inheriting its count (+1) as its possible overcount. Any key with more than
//! `total / CAPACITY` requests in a window is guaranteed to be in the table, and no count is
//! below its key's true count. The minimum is found through an indexed binary min-heap, so a
//! request costs one hash lookup and O(log CAPACITY) swaps under one short lock.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters per window table: keys beyond it compete for the least-counted slot.
pub const CAPACITY: usize = 1000;

/// Keys (`host + path`) are cut to this many bytes (at a character boundary).
pub const MAX_KEY_LEN: usize = 256;

/// Length of one window: [`TopKeys::top`] covers the previous window and the current one, so
/// between one and two of these.
pub const WINDOW: Duration = Duration::from_secs(30);

/// One counter: a key, its requests (an upper bound), their bytes, and where it is in the heap.
struct Slot {
    key: Arc<str>,
    requests: u64,
    /// Requests inherited from the key this slot counted before (at most this many of
    /// `requests` may belong to other keys).
    overcount: u64,
    /// Response body bytes sent since the key took this slot.
    bytes: u64,
    /// Position of this slot in `Table::heap`.
    pos: usize,
}

/// A Space-Saving table of at most `capacity` keys.
struct Table {
    capacity: usize,
    slots: Vec<Slot>,
    /// Slot ids, a binary min-heap on `requests`.
    heap: Vec<usize>,
    index: HashMap<Arc<str>, usize>,
    /// Every request counted in this window, tracked or not.
    requests: u64,
    /// Every body byte counted in this window.
    bytes: u64,
}

impl Table {
    fn new(capacity: usize) -> Table {
        Table {
            capacity,
            slots: Vec::with_capacity(capacity),
            heap: Vec::with_capacity(capacity),
            index: HashMap::with_capacity(capacity),
            requests: 0,
            bytes: 0,
        }
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.heap.clear();
        self.index.clear();
        self.requests = 0;
        self.bytes = 0;
    }

    fn record(&mut self, key: &str, bytes: u64) {
        self.requests += 1;
        self.bytes += bytes;
        if let Some(&id) = self.index.get(key) {
            let slot = &mut self.slots[id];
            slot.requests += 1;
            slot.bytes += bytes;
            let pos = slot.pos;
            self.sift_down(pos);
            return;
        }
        let key: Arc<str> = Arc::from(key);
        if self.slots.len() < self.capacity {
            let id = self.slots.len();
            let pos = self.heap.len();
            self.slots.push(Slot {
                key: key.clone(),
                requests: 1,
                overcount: 0,
                bytes,
                pos,
            });
            self.heap.push(id);
            self.index.insert(key, id);
            self.sift_up(pos);
            return;
        }
        // full: the least-counted key gives its slot (and its count) to the new one
        let Some(&id) = self.heap.first() else {
            return; // capacity 0: nothing is tracked
        };
        let slot = &mut self.slots[id];
        self.index.remove(&slot.key);
        slot.key = key.clone();
        slot.overcount = slot.requests;
        slot.requests += 1;
        slot.bytes = bytes;
        self.index.insert(key, id);
        self.sift_down(0);
    }

    fn count_at(&self, pos: usize) -> u64 {
        self.slots[self.heap[pos]].requests
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.slots[self.heap[a]].pos = a;
        self.slots[self.heap[b]].pos = b;
    }

    fn sift_up(&mut self, mut pos: usize) {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.count_at(parent) <= self.count_at(pos) {
                break;
            }
            self.swap(parent, pos);
            pos = parent;
        }
    }

    fn sift_down(&mut self, mut pos: usize) {
        let len = self.heap.len();
        loop {
            let (left, right) = (2 * pos + 1, 2 * pos + 2);
            let mut least = pos;
            if left < len && self.count_at(left) < self.count_at(least) {
                least = left;
            }
            if right < len && self.count_at(right) < self.count_at(least) {
                least = right;
            }
            if least == pos {
                break;
            }
            self.swap(pos, least);
            pos = least;
        }
    }
}

/// One key of a [`TopSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyCount {
    /// `host + path`, cut to [`MAX_KEY_LEN`] bytes.
    pub key: String,
    /// Requests in the window: exact while the node sees at most [`CAPACITY`] distinct keys
    /// per window, else an upper bound (over by at most `overcount`).
    pub requests: u64,
    /// How many of `requests` may belong to keys that held its counter before.
    pub overcount: u64,
    /// Response body bytes sent for it while it was tracked in the window.
    pub bytes: u64,
}

/// The heaviest keys of the recent window, as `GET /top` answers them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TopSnapshot {
    /// Seconds of traffic the counts cover (between one and two [`WINDOW`]s once running).
    pub window_seconds: f64,
    /// Every request counted in the window, whether its key is tracked or not.
    pub requests: u64,
    /// Every response body byte counted in the window.
    pub bytes: u64,
    /// Counters per window table.
    pub capacity: usize,
    /// The keys, most requested first.
    pub keys: Vec<KeyCount>,
}

struct Windows {
    current: Table,
    previous: Table,
    current_since: Instant,
    /// When `previous` began, if it holds a window of traffic.
    previous_since: Option<Instant>,
}

impl Windows {
    /// Move on to the window that contains `now`.
    fn rotate(&mut self, now: Instant, window: Duration) {
        let age = now.saturating_duration_since(self.current_since);
        if age < window {
            return;
        }
        if age >= 2 * window {
            // quiet for over a whole window: nothing recent is left
            self.current.clear();
            self.previous.clear();
            self.previous_since = None;
            self.current_since = now;
            return;
        }
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.clear();
        self.previous_since = Some(self.current_since);
        self.current_since += window;
    }
}

/// Heaviest `host + path` keys by requests over the last one to two windows; shared by every
/// request of the node (see the module documentation for the algorithm and its guarantees).
pub struct TopKeys {
    window: Duration,
    windows: Mutex<Windows>,
}

impl Default for TopKeys {
    fn default() -> Self {
        TopKeys::new(CAPACITY, WINDOW)
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl TopKeys {
    /// A tracker of `capacity` counters per window of `window`.
    pub fn new(capacity: usize, window: Duration) -> TopKeys {
        TopKeys {
            window,
            windows: Mutex::new(Windows {
                current: Table::new(capacity),
                previous: Table::new(capacity),
                current_since: Instant::now(),
                previous_since: None,
            }),
        }
    }

    /// Count one request for `host` + `path` (no query) that sent `bytes` of body. No
    /// allocation unless the key is new to the window.
    pub fn record(&self, host: &str, path: &str, bytes: u64) {
        self.record_at(Instant::now(), host, path, bytes);
    }

    fn record_at(&self, now: Instant, host: &str, path: &str, bytes: u64) {
        let mut buf = [0u8; MAX_KEY_LEN];
        let host = cut(host, MAX_KEY_LEN);
        let path = cut(path, MAX_KEY_LEN - host.len());
        buf[..host.len()].copy_from_slice(host.as_bytes());
        buf[host.len()..host.len() + path.len()].copy_from_slice(path.as_bytes());
        // both parts were cut at character boundaries
        let Ok(key) = std::str::from_utf8(&buf[..host.len() + path.len()]) else {
            return;
        };
        let mut windows = self.windows.lock();
        windows.rotate(now, self.window);
        windows.current.record(key, bytes);
    }

    /// The `n` most requested keys of the recent window (previous and current), most
    /// requested first.
    pub fn top(&self, n: usize) -> TopSnapshot {
        self.top_at(Instant::now(), n)
    }

    fn top_at(&self, now: Instant, n: usize) -> TopSnapshot {
        let mut windows = self.windows.lock();
        windows.rotate(now, self.window);
        let since = windows.previous_since.unwrap_or(windows.current_since);
        let mut merged: HashMap<&str, KeyCount> =
            HashMap::with_capacity(windows.current.slots.len() + windows.previous.slots.len());
        for slot in windows
            .current
            .slots
            .iter()
            .chain(windows.previous.slots.iter())
        {
            let entry = merged.entry(&slot.key).or_insert_with(|| KeyCount {
                key: slot.key.to_string(),
                requests: 0,
                overcount: 0,
                bytes: 0,
            });
            entry.requests += slot.requests;
            entry.overcount += slot.overcount;
            entry.bytes += slot.bytes;
        }
        let mut keys: Vec<KeyCount> = merged.into_values().collect();
        keys.sort_unstable_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then(b.bytes.cmp(&a.bytes))
                .then_with(|| a.key.cmp(&b.key))
        });
        keys.truncate(n);
        TopSnapshot {
            window_seconds: now.saturating_duration_since(since).as_secs_f64(),
            requests: windows.current.requests + windows.previous.requests,
            bytes: windows.current.bytes + windows.previous.bytes,
            capacity: windows.current.capacity,
            keys,
        }
    }

    /// Keys tracked now (both windows), for tests of the bound.
    pub fn tracked(&self) -> usize {
        let windows = self.windows.lock();
        windows.current.slots.len() + windows.previous.slots.len()
    }

    /// Bytes of key text held now (both windows), for tests of the bound.
    pub fn key_bytes(&self) -> usize {
        let windows = self.windows.lock();
        windows
            .current
            .slots
            .iter()
            .chain(windows.previous.slots.iter())
            .map(|s| s.key.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(snapshot: &TopSnapshot, key: &str) -> Option<u64> {
        snapshot
            .keys
            .iter()
            .find(|k| k.key == key)
            .map(|k| k.requests)
    }

    #[test]
    fn heavy_key_is_found_first_among_many_light_ones() {
        let top = TopKeys::default();
        // 5,000 distinct light keys, one request each, with the hot key every 100th request:
        // five times more keys than counters
        for i in 0..5000 {
            if i % 100 == 0 {
                top.record("example.com", "/hot", 1000);
            }
            top.record("example.com", &format!("/light/{i}"), 10);
        }
        let snap = top.top(5);
        assert_eq!(snap.keys[0].key, "example.com/hot", "{snap:?}");
        assert_eq!(snap.keys[0].requests, 50, "inserted first: exact");
        assert_eq!(snap.keys[0].overcount, 0);
        assert_eq!(snap.keys[0].bytes, 50_000);
        assert_eq!(snap.requests, 5050);
        assert_eq!(snap.bytes, 50_000 + 50_000);
        // every other count is an overestimate of a key requested once
        assert!(snap.keys[1..]
            .iter()
            .all(|k| k.requests - k.overcount <= 1 && k.requests < 50));
    }

    #[test]
    fn counts_are_exact_below_capacity() {
        let top = TopKeys::default();
        for _ in 0..30 {
            top.record("a.test", "/hot", 5);
        }
        for i in 0..50 {
            top.record("a.test", &format!("/p{i}"), 1);
        }
        let snap = top.top(100);
        assert_eq!(snap.keys.len(), 51);
        assert_eq!(snap.keys[0].key, "a.test/hot");
        assert_eq!(snap.keys[0].requests, 30);
        assert_eq!(snap.keys[0].bytes, 150);
        assert!(snap.keys[1..]
            .iter()
            .all(|k| k.requests == 1 && k.overcount == 0));
        assert_eq!(top.top(3).keys.len(), 3);
    }

    #[test]
    fn memory_stays_bounded_under_100000_distinct_keys() {
        let top = TopKeys::default();
        let long = "x".repeat(1000);
        for i in 0..100_000 {
            top.record("example.com", &format!("/{i}/{long}"), 1);
        }
        assert!(top.tracked() <= CAPACITY, "{}", top.tracked());
        assert!(top.key_bytes() <= CAPACITY * MAX_KEY_LEN);
        let snap = top.top(CAPACITY + 10);
        assert_eq!(snap.keys.len(), CAPACITY);
        assert!(snap.keys.iter().all(|k| k.key.len() == MAX_KEY_LEN));
        assert_eq!(snap.requests, 100_000);
    }

    #[test]
    fn heap_keeps_the_least_counted_key_on_top() {
        let mut table = Table::new(8);
        for (i, n) in [5u64, 3, 9, 1, 7, 2, 8, 4].into_iter().enumerate() {
            for _ in 0..n {
                table.record(&format!("k{i}"), 0);
            }
        }
        assert_eq!(table.count_at(0), 1);
        for pos in 1..table.heap.len() {
            assert!(table.count_at((pos - 1) / 2) <= table.count_at(pos));
            assert_eq!(table.slots[table.heap[pos]].pos, pos);
        }
        // a new key takes the slot of k3 (1 request) and its count
        table.record("new", 0);
        assert!(!table.index.contains_key("k3"));
        let id = table.index["new"];
        assert_eq!(
            (table.slots[id].requests, table.slots[id].overcount),
            (2, 1)
        );
    }

    #[test]
    fn counts_cover_the_previous_and_current_window_only() {
        let window = Duration::from_secs(30);
        let top = TopKeys::new(CAPACITY, window);
        let t0 = top.windows.lock().current_since;
        top.record_at(t0 + Duration::from_secs(1), "h", "/old", 1);
        top.record_at(t0 + Duration::from_secs(31), "h", "/new", 1);
        let snap = top.top_at(t0 + Duration::from_secs(40), 10);
        assert_eq!(requests(&snap, "h/old"), Some(1));
        assert_eq!(requests(&snap, "h/new"), Some(1));
        assert_eq!(snap.window_seconds, 40.0);
        // two windows later /old has aged out, /new is in the previous window
        let snap = top.top_at(t0 + Duration::from_secs(65), 10);
        assert_eq!(requests(&snap, "h/old"), None);
        assert_eq!(requests(&snap, "h/new"), Some(1));
        assert_eq!(snap.window_seconds, 35.0);
        // quiet for over a window: empty
        let snap = top.top_at(t0 + Duration::from_secs(200), 10);
        assert!(snap.keys.is_empty());
        assert_eq!(snap.requests, 0);
    }

    #[test]
    fn keys_are_cut_at_a_character_boundary() {
        let top = TopKeys::default();
        let path = format!("/{}", "é".repeat(200)); // 401 bytes
        top.record("example.com", &path, 0);
        let key = &top.top(1).keys[0].key;
        assert!(
            key.len() <= MAX_KEY_LEN && key.len() > MAX_KEY_LEN - 2,
            "{}",
            key.len()
        );
        assert!(key.starts_with("example.com/é"));
        top.record(&"h".repeat(300), "/x", 0);
        assert!(top.top(2).keys.iter().any(|k| k.key == "h".repeat(256)));
    }
}
