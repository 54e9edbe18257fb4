//! Partial content: parts of responses stored from `206 (Partial Content)` answers to range
//! requests (RFC 9111 3.3 and 3.4, RFC 9110 14), the mechanism only (when to use it is the
//! request path's, src/proxy/partial.rs).
//!
//! - [`RangeSpec`] and [`ContentRange`] read the single-range `Range` and `Content-Range`
//!   fields.
//! - [`Parts`] are the byte spans held of one representation, with the head a complete
//!   response would be stored with (status 200, `Content-Length`) and its freshness. Parts
//!   are combined only under one strong [`Validator`] (RFC 9111 3.4): same strong `ETag`, or
//!   the same strong `Last-Modified` when there is no `ETag`.
//! - [`PartialStore`] keeps them in memory, bounded by bytes (`cache.partial_size`), least
//!   recently used sets leaving first. Parts are replaced, never changed in place: readers
//!   keep the set they looked up. When a set covers its whole representation, the request path
//!   stores it as a complete object in the tiers and drops it here.

use bytes::Bytes;
use http::header::{DATE, ETAG, LAST_MODIFIED};
use http::HeaderValue;
use pingora_cache::key::{CacheHashKey, CacheKey, HashBinary};
use pingora_cache::CacheMeta;
use pingora_http::ResponseHeader;
use quick_cache::sync::DefaultLifecycle;
use quick_cache::DefaultHashBuilder;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Why a response to a range request is not stored as the URL's object (a 416, or a 206 not
/// taken as a part).
pub const RANGE_ANSWER: &str = "range-answer";

/// Why a 206 taken as a part is not stored as the URL's object (it is kept apart, here).
pub const PARTIAL: &str = "partial";

/// Pieces one set holds before adjacent ones are joined into one buffer.
const MAX_PIECES: usize = 64;

/// Bytes a set is counted for beyond its body bytes (head, bookkeeping).
const PARTS_OVERHEAD: u64 = 1024;

/// A single byte range a request asks for (RFC 9110 14.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `first-last`, or `first-` (to the end) without `last`.
    From {
        /// First byte.
        first: u64,
        /// Last byte, inclusive.
        last: Option<u64>,
    },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// A run of ASCII digits as a number (no sign, no spaces, not empty).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl RangeSpec {
    /// The one range of a `Range` field value; `None` for another unit, several ranges or an
    /// invalid one (those go the whole-object way).
    pub fn parse(value: &[u8]) -> Option<RangeSpec> {
        let s = std::str::from_utf8(value).ok()?.trim();
        let (unit, set) = s.split_once('=')?;
        if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
            return None;
        }
        let (first, last) = set.trim().split_once('-')?;
        let (first, last) = (first.trim(), last.trim());
        if first.is_empty() {
            return number(last).filter(|n| *n > 0).map(RangeSpec::Suffix);
        }
        let first = number(first)?;
        if last.is_empty() {
            return Some(RangeSpec::From { first, last: None });
        }
        let last = number(last)?;
        (first <= last).then_some(RangeSpec::From {
            first,
            last: Some(last),
        })
    }

    /// The inclusive span it selects of a representation of `len` bytes, `None` when it
    /// selects nothing (RFC 9110 14.1.1: unsatisfiable).
    pub fn resolve(self, len: u64) -> Option<(u64, u64)> {
        match self {
            RangeSpec::From { first, last } => {
                (first < len).then(|| (first, last.map_or(len - 1, |l| l.min(len - 1))))
            }
            RangeSpec::Suffix(n) => (len > 0).then(|| (len - n.min(len), len - 1)),
        }
    }
}

/// A `Content-Range: bytes first-last/complete` value whose complete length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// First byte sent.
    pub first: u64,
    /// Last byte sent, inclusive.
    pub last: u64,
    /// Length of the whole representation.
    pub complete: u64,
}

impl ContentRange {
    /// Read a `Content-Range` value; `None` for another unit, `*` lengths or an invalid span.
    pub fn parse(value: &[u8]) -> Option<ContentRange> {
        let s = std::str::from_utf8(value).ok()?.trim();
        let (unit, rest) = s.split_once(' ')?;
        if !unit.eq_ignore_ascii_case("bytes") {
            return None;
        }
        let (span, complete) = rest.trim().split_once('/')?;
        let (first, last) = span.split_once('-')?;
        let r = ContentRange {
            first: number(first)?,
            last: number(last)?,
            complete: number(complete)?,
        };
        (r.first <= r.last && r.last < r.complete).then_some(r)
    }

    /// The field value.
    pub fn render(&self) -> String {
        format!("bytes {}-{}/{}", self.first, self.last, self.complete)
    }

    /// Bytes in the span.
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// Never true (a span holds at least one byte); here for completeness' sake.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A strong validator of a representation (RFC 9110 8.8): what parts are combined under, and
/// what `If-Range` sends to ask for more of the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validator(HeaderValue);

impl Validator {
    /// The response's strong validator: a strong `ETag`, or without an `ETag` a
    /// `Last-Modified` at least a second before its `Date` (RFC 9110 8.8.2.2). A weak `ETag`
    /// gives none.
    pub fn of(headers: &http::HeaderMap) -> Option<Validator> {
        if let Some(etag) = headers.get(ETAG) {
            let tag = etag.as_bytes().trim_ascii();
            if tag.first() != Some(&b'"') || tag.len() < 2 || tag.last() != Some(&b'"') {
                return None;
            }
            return HeaderValue::from_bytes(tag).ok().map(Validator);
        }
        let date = |v: &HeaderValue| {
            v.to_str()
                .ok()
                .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
        };
        let modified = headers.get(LAST_MODIFIED)?;
        let (m, d) = (date(modified)?, date(headers.get(DATE)?)?);
        (m + Duration::from_secs(1) <= d).then(|| Validator(modified.clone()))
    }

    /// The `If-Range` value that asks for more of this representation.
    pub fn if_range(&self) -> &HeaderValue {
        &self.0
    }
}

/// The slot of `key`'s parts: its primary key hash (one variant per URL is held).
fn slot(key: &impl CacheHashKey) -> u128 {
    u128::from_le_bytes(key.primary_bin())
}

/// What a node holds of one representation.
#[derive(Debug, Clone)]
pub struct Parts {
    /// The key the complete object is stored under.
    key: CacheKey,
    /// The head a complete response would be stored with (status 200, `Content-Length`).
    header: ResponseHeader,
    fresh_until: SystemTime,
    created: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    epoch: Option<SystemTime>,
    variance: Option<HashBinary>,
    validator: Validator,
    len: u64,
    /// Non-overlapping byte spans, by first byte.
    pieces: BTreeMap<u64, Bytes>,
    /// Bytes held (sum of the pieces).
    stored: u64,
}

impl Parts {
    /// No bytes yet of the representation `meta` describes (a complete response's head and
    /// freshness), `len` bytes long, stored under `key`.
    pub fn new(key: CacheKey, meta: &CacheMeta, validator: Validator, len: u64) -> Parts {
        Parts {
            key,
            header: meta.response_header().clone(),
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            epoch: meta.epoch_override(),
            variance: meta.variance(),
            validator,
            len,
            pieces: BTreeMap::new(),
            stored: 0,
        }
    }

    /// The complete response's meta (head, freshness, variance) as stored now.
    pub fn meta(&self) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate,
            self.stale_if_error,
            self.header.clone(),
        );
        if let Some(epoch) = self.epoch {
            meta.set_epoch_override(epoch);
        }
        if let Some(v) = self.variance {
            meta.set_variance(v);
        }
        meta
    }

    /// The primary key string (for bans), when the key has one.
    pub fn primary_key(&self) -> Option<&[u8]> {
        self.key.primary_key_str().map(str::as_bytes)
    }

    /// The stored head (status 200, `Content-Length` of the whole).
    pub fn header(&self) -> &ResponseHeader {
        &self.header
    }

    /// When the origin sent the newest part's head.
    pub fn created(&self) -> SystemTime {
        self.created
    }

    /// The variance (secondary key) of the variant held, if the response has `Vary`.
    pub fn variance(&self) -> Option<HashBinary> {
        self.variance
    }

    /// The key the complete object is stored under: the primary slot, its variance in the
    /// meta (as Pingora admits a first variant).
    pub fn key(&self) -> CacheKey {
        let mut key = self.key.clone();
        key.remove_variance_key();
        key
    }

    /// The strong validator every part shares.
    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    /// Length of the whole representation.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the representation is empty (nothing to hold).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held.
    pub fn stored(&self) -> u64 {
        self.stored
    }

    /// Whether every byte is held.
    pub fn complete(&self) -> bool {
        self.stored == self.len
    }

    /// Whether `other` describes the same representation (so their bytes may be combined).
    pub fn same_representation(&self, validator: &Validator, len: u64) -> bool {
        self.validator == *validator && self.len == len
    }

    /// The same parts under `meta`'s newer head and freshness (a later 206 of the same
    /// representation: RFC 9111 3.4 lets its fields replace the stored ones).
    pub fn refreshed(&self, key: CacheKey, meta: &CacheMeta) -> Parts {
        Parts {
            pieces: self.pieces.clone(),
            stored: self.stored,
            ..Parts::new(key, meta, self.validator.clone(), self.len)
        }
    }

    /// The pieces overlapping `[first, end)`, with the one that may start before `first`.
    fn overlapping(&self, first: u64, end: u64) -> impl Iterator<Item = (u64, &Bytes)> {
        let from = self
            .pieces
            .range(..=first)
            .next_back()
            .map_or(first, |(s, _)| *s);
        self.pieces
            .range(from..end)
            .map(|(s, b)| (*s, b))
            .filter(move |(s, b)| s + b.len() as u64 > first)
    }

    /// The spans of `[first, last]` not held, in order.
    pub fn gaps(&self, first: u64, last: u64) -> Vec<(u64, u64)> {
        let end = last + 1;
        let mut at = first;
        let mut gaps = Vec::new();
        for (s, b) in self.overlapping(first, end) {
            if s > at {
                gaps.push((at, s - 1));
            }
            at = at.max(s + b.len() as u64);
            if at >= end {
                break;
            }
        }
        if at < end {
            gaps.push((at, last));
        }
        gaps
    }

    /// The smallest span holding every byte of `[first, last]` not held, `None` when all are.
    pub fn missing(&self, first: u64, last: u64) -> Option<(u64, u64)> {
        let gaps = self.gaps(first, last);
        Some((gaps.first()?.0, gaps.last()?.1))
    }

    /// Bytes `[first, last]`, in order, when all are held.
    pub fn read(&self, first: u64, last: u64) -> Option<Vec<Bytes>> {
        let end = last + 1;
        let mut at = first;
        let mut out = Vec::new();
        for (s, b) in self.overlapping(first, end) {
            if s > at {
                return None;
            }
            let stop = end.min(s + b.len() as u64);
            out.push(b.slice((at - s) as usize..(stop - s) as usize));
            at = stop;
            if at >= end {
                return Some(out);
            }
        }
        None
    }

    /// These parts with `data`, bytes `first..` of the same representation, added (what is
    /// held already is kept: under one strong validator the bytes are the same).
    pub fn with(&self, first: u64, data: Bytes) -> Parts {
        let mut out = self.clone();
        let end = (first + data.len() as u64).min(self.len);
        if first >= end {
            return out;
        }
        let mut at = first;
        let mut new = Vec::new();
        for (s, b) in self.overlapping(first, end) {
            if s > at {
                new.push((at, data.slice((at - first) as usize..(s - first) as usize)));
            }
            at = at.max(s + b.len() as u64);
            if at >= end {
                break;
            }
        }
        if at < end {
            new.push((
                at,
                data.slice((at - first) as usize..(end - first) as usize),
            ));
        }
        for (s, b) in new {
            out.stored += b.len() as u64;
            out.pieces.insert(s, b);
        }
        if out.pieces.len() > MAX_PIECES {
            out.join_adjacent();
        }
        out
    }

    /// Join runs of adjacent pieces into one buffer each.
    fn join_adjacent(&mut self) {
        let mut joined: BTreeMap<u64, Bytes> = BTreeMap::new();
        let mut run: Option<(u64, Vec<Bytes>, u64)> = None;
        for (s, b) in std::mem::take(&mut self.pieces) {
            match &mut run {
                Some((_, bufs, end)) if *end == s => {
                    *end += b.len() as u64;
                    bufs.push(b);
                }
                _ => {
                    if let Some((start, bufs, _)) = run.take() {
                        joined.insert(start, concat(&bufs));
                    }
                    let end = s + b.len() as u64;
                    run = Some((s, vec![b], end));
                }
            }
        }
        if let Some((start, bufs, _)) = run {
            joined.insert(start, concat(&bufs));
        }
        self.pieces = joined;
    }

    /// The whole body, when complete.
    pub fn body(&self) -> Option<Bytes> {
        if self.len == 0 {
            return self.complete().then(Bytes::new);
        }
        self.read(0, self.len - 1).map(|b| concat(&b))
    }
}

/// `bufs` as one buffer (no copy for a single one).
pub fn concat(bufs: &[Bytes]) -> Bytes {
    match bufs {
        [one] => one.clone(),
        _ => {
            let mut out = Vec::with_capacity(bufs.iter().map(Bytes::len).sum());
            for b in bufs {
                out.extend_from_slice(b);
            }
            Bytes::from(out)
        }
    }
}

#[derive(Clone)]
struct PartsWeigher;

impl quick_cache::Weighter<u128, Arc<Parts>> for PartsWeigher {
    fn weight(&self, _key: &u128, p: &Arc<Parts>) -> u64 {
        p.stored + PARTS_OVERHEAD
    }
}

/// URLs whose whole-object fetches started lately are remembered (at most this many).
const WHOLE_FETCHES: usize = 16_384;

/// Parts of responses held in memory, bounded by bytes.
pub struct PartialStore {
    sets: quick_cache::sync::Cache<u128, Arc<Parts>, PartsWeigher>,
    capacity: u64,
    /// URLs whose parts would not do (no strong validator, larger than the store), when a
    /// background fetch of the whole object started.
    whole_fetches: quick_cache::sync::Cache<u128, Instant>,
}

impl PartialStore {
    /// A store of at most `capacity` bytes.
    pub fn new(capacity: u64) -> PartialStore {
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(usize::try_from(capacity >> 18).unwrap_or(1 << 20).max(16))
            .weight_capacity(capacity)
            // one shard: a set may use the whole budget (range requests are not the hot path)
            .shards(1)
            .build()
            .unwrap_or_else(|e| unreachable!("both capacities are set: {e:?}"));
        PartialStore {
            sets: quick_cache::sync::Cache::with_options(
                options,
                PartsWeigher,
                DefaultHashBuilder::default(),
                DefaultLifecycle::default(),
            ),
            capacity,
            whole_fetches: quick_cache::sync::Cache::new(WHOLE_FETCHES),
        }
    }

    /// Whether a fetch of the whole object of `key`'s URL may start now (none started within
    /// `window`); if so it is recorded as started.
    pub fn begin_whole_fetch(&self, key: &impl CacheHashKey, window: Duration) -> bool {
        let slot = slot(key);
        let now = Instant::now();
        if self
            .whole_fetches
            .get(&slot)
            .is_some_and(|at| now.duration_since(at) < window)
        {
            return false;
        }
        self.whole_fetches.insert(slot, now);
        true
    }

    /// The parts held for `key`'s URL (any variant).
    pub fn get(&self, key: &impl CacheHashKey) -> Option<Arc<Parts>> {
        self.sets.get(&slot(key))
    }

    /// Hold `parts` (replacing what its URL had); false when they are larger than the store.
    pub fn put(&self, parts: Arc<Parts>) -> bool {
        let slot = slot(&parts.key);
        if parts.stored + PARTS_OVERHEAD > self.capacity {
            self.sets.remove(&slot);
            return false;
        }
        self.sets.insert(slot, parts);
        true
    }

    /// Drop `parts` if they are still what their URL has.
    pub fn remove_same(&self, parts: &Arc<Parts>) {
        self.sets
            .remove_if(&slot(&parts.key), |held| Arc::ptr_eq(held, parts));
    }

    /// Every set held, by slot (a snapshot: sets may come and go meanwhile).
    pub fn sets(&self) -> Vec<(u128, Arc<Parts>)> {
        self.sets.iter().collect()
    }

    /// Drop the set in `slot`; whether there was one.
    pub fn remove_slot(&self, slot: u128) -> bool {
        self.sets.remove(&slot).is_some()
    }

    /// Drop what `key`'s URL has (and forget it wants a whole fetch); whether there were parts.
    pub fn remove(&self, key: &impl CacheHashKey) -> bool {
        let slot = slot(key);
        self.whole_fetches.remove(&slot);
        self.sets.remove(&slot).is_some()
    }

    /// Largest body a set may hold.
    pub fn capacity(&self) -> u64 {
        self.capacity.saturating_sub(PARTS_OVERHEAD)
    }

    /// Objects with parts held.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether no parts are held.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Bytes held (as counted against the capacity).
    pub fn weight(&self) -> u64 {
        self.sets.weight()
    }
}

#[cfg(test)]
mod tests;
