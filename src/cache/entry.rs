//! The compact stored form of a cached object's head: its freshness fields and response
//! header, in one buffer; the body is stored separately so a 304 can refresh the head without
//! touching the body.
//!
//! Pingora's own `CacheMeta::serialize` compresses the header with zstd and parses it back with
//! a fresh 8 KiB header array on every hit (about 3 µs, most of a memory hit). This form decodes
//! with no decompression and no copies: header names and values are `Bytes` slices of the
//! stored buffer.
//!
//! Head encoding, little endian: `format u8 | fresh_until_ms u64 | created_ms u64 |
//! epoch_ms u64 | updated_ms u64 | stale_while_revalidate u32 | stale_if_error u32 | has_variance u8 |
//! variance [u8; 16] if present | key_len u16 | primary key | header`, where header is `status u16 | version u8 |
//! count u16 | (name_len u16, name, value_len u32, value)*`, names in their original case.
//! Times are milliseconds since the Unix epoch (HTTP caching's unit is the second). The
//! primary cache key is kept so that a background pass can tell which purges cover an object
//! (the tiers index objects by hash only); hits skip it.
//!
//! Fidelity: `CacheMeta::new` is the only public constructor, so provenance is restored as the
//! creation time. Provenance is only ever earlier than creation after a full refetch of an
//! expired `Vary` primary; restoring it later makes older variants count as invalid (an extra
//! miss), never the other way round.

use bytes::{BufMut, Bytes};
use http::{HeaderValue, Version};
use pingora_cache::CacheMeta;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The head format this build writes; formats 1 (no `updated_ms`, no key) and 2 (no key) are
/// still read.
const FORMAT: u8 = 3;
/// Bytes of the fixed freshness record before the optional variance.
const FIXED: usize = 1 + 8 * 4 + 4 * 2 + 1;

/// When the origin last confirmed a stored response: when it was stored or last revalidated
/// (Pingora's `updated`, which `CacheMeta::new` cannot restore, so decoded metas carry it as
/// this extension). Purges compare against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed(pub SystemTime);

/// When the origin last confirmed `meta` ([`Confirmed`]).
pub fn confirmed_at(meta: &CacheMeta) -> SystemTime {
    meta.extensions()
        .get::<Confirmed>()
        .map_or(meta.updated(), |c| c.0.max(meta.updated()))
}

/// `t` in milliseconds since the Unix epoch (0 before it), the unit of stored times.
pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The exact encoded size of `meta`'s head.
fn head_len(meta: &CacheMeta) -> usize {
    let header = meta.response_header();
    let fields: usize = if header.has_case() {
        header
            .case_header_iter()
            .map(|(n, v)| 6 + n.as_slice().len() + v.len())
            .sum()
    } else {
        header
            .headers
            .iter()
            .map(|(n, v)| 6 + n.as_str().len() + v.len())
            .sum()
    };
    FIXED + meta.variance().map_or(0, |_| 16) + 2 + 5 + fields
}

/// Encode `meta` (freshness fields and response header) and the object's `primary` cache key
/// into an exact-size buffer. An empty `primary` records that the key is not known.
pub fn encode_head(meta: &CacheMeta, primary: &[u8]) -> Result<Vec<u8>> {
    let key_len = u16::try_from(primary.len()).map_err(|_| too_long())?;
    let mut out = Vec::with_capacity(head_len(meta) + primary.len());
    out.put_u8(FORMAT);
    out.put_u64_le(to_ms(meta.fresh_until()));
    out.put_u64_le(to_ms(meta.created()));
    out.put_u64_le(to_ms(meta.epoch()));
    out.put_u64_le(to_ms(confirmed_at(meta)));
    out.put_u32_le(meta.stale_while_revalidate_sec());
    out.put_u32_le(meta.stale_if_error_sec());
    match meta.variance() {
        Some(v) => {
            out.put_u8(1);
            out.put_slice(&v);
        }
        None => out.put_u8(0),
    }
    out.put_u16_le(key_len);
    out.put_slice(primary);
    encode_header(meta.response_header(), &mut out)?;
    Ok(out)
}

/// A stored head decoded with its primary cache key.
pub struct Stored {
    /// The primary cache key, if the head records it (heads of formats 1 and 2 do not).
    pub primary: Option<Bytes>,
    /// Freshness fields and response header.
    pub meta: CacheMeta,
}

/// Decode a head written by [`encode_head`]; header values share `head`'s memory.
pub fn decode_head(head: &Bytes) -> Result<CacheMeta> {
    decode(head, false).map(|s| s.meta)
}

/// Decode a head written by [`encode_head`], with its primary key.
pub fn decode_stored(head: &Bytes) -> Result<Stored> {
    decode(head, true)
}

fn decode(head: &Bytes, want_key: bool) -> Result<Stored> {
    let mut r = Reader { buf: head, pos: 0 };
    let format = r.u8()?;
    if !(1..=FORMAT).contains(&format) {
        return Err(corrupt("stored head has an unknown format"));
    }
    let fresh_until = from_ms(r.u64()?);
    let created = from_ms(r.u64()?);
    let epoch_ms = r.u64()?;
    let confirmed = if format == 1 {
        created
    } else {
        from_ms(r.u64()?)
    };
    let swr = r.u32()?;
    let sie = r.u32()?;
    let variance = match r.u8()? {
        0 => None,
        1 => Some(r.array::<16>()?),
        _ => return Err(corrupt("stored head has an invalid variance flag")),
    };
    let mut primary = None;
    if format >= 3 {
        let len = r.u16()? as usize;
        if want_key && len > 0 {
            primary = Some(r.take(len)?);
        } else {
            r.skip(len)?;
        }
    }
    let header = decode_header(&mut r)?;
    if r.pos != head.len() {
        return Err(corrupt("stored head has trailing bytes"));
    }
    let mut meta = CacheMeta::new(fresh_until, created, swr, sie, header);
    if epoch_ms != to_ms(created) {
        meta.set_epoch_override(from_ms(epoch_ms));
    }
    if let Some(v) = variance {
        meta.set_variance(v);
    }
    if confirmed > created {
        meta.extensions_mut().insert(Confirmed(confirmed));
    }
    Ok(Stored { primary, meta })
}

/// `stored`'s head made stale from `at` (keeping its key), or `None` if it already is.
pub fn expire_stored(stored: Stored, at: SystemTime) -> Result<Option<Vec<u8>>> {
    let Stored { primary, mut meta } = stored;
    if meta.fresh_until() <= at {
        return Ok(None);
    }
    meta.expire_at(at);
    encode_head(&meta, &primary.unwrap_or_default()).map(Some)
}

/// A stored head read in place, without building a header map: what the lean hit path
/// (`crate::lean`) needs to answer from it. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub struct HeadView<'a> {
    /// Fresh until then.
    pub fresh_until_ms: u64,
    /// Stored then (a decoded meta's creation and provenance).
    pub created_ms: u64,
    /// Age is counted from then (the decoded meta's epoch).
    pub epoch_ms: u64,
    /// When the origin last confirmed the response ([`Confirmed`]).
    pub confirmed_ms: u64,
    /// The object is a variant of a response with `Vary`.
    pub has_variance: bool,
    /// Its variance (secondary key hash), when it has one.
    pub variance: Option<[u8; 16]>,
    /// Response status code.
    pub status: u16,
    /// Header field count.
    count: u16,
    /// The encoded fields.
    fields: &'a [u8],
}

impl<'a> HeadView<'a> {
    /// Read a head written by [`encode_head`] (any format this build reads).
    pub fn parse(head: &'a [u8]) -> Result<HeadView<'a>> {
        let mut r = Slice(head);
        let format = r.u8()?;
        if !(1..=FORMAT).contains(&format) {
            return Err(corrupt("stored head has an unknown format"));
        }
        let fresh_until_ms = r.u64()?;
        let created_ms = r.u64()?;
        let epoch_ms = r.u64()?;
        let confirmed_ms = if format == 1 { created_ms } else { r.u64()? };
        r.take(8)?; // stale-while-revalidate, stale-if-error
        let variance = match r.u8()? {
            0 => None,
            1 => Some(r.array::<16>()?),
            _ => return Err(corrupt("stored head has an invalid variance flag")),
        };
        if format >= 3 {
            let len = r.u16()? as usize;
            r.take(len)?;
        }
        let status = r.u16()?;
        r.u8()?; // version: a hit is answered as HTTP/1.1
        let count = r.u16()?;
        Ok(HeadView {
            fresh_until_ms,
            created_ms,
            epoch_ms,
            confirmed_ms: confirmed_ms.max(created_ms),
            has_variance: variance.is_some(),
            variance,
            status,
            count,
            fields: r.0,
        })
    }

    /// The header fields, names in their stored case, in order; an error at the first
    /// malformed one.
    pub fn fields(&self) -> impl Iterator<Item = Result<(&'a [u8], &'a [u8])>> {
        let mut r = Slice(self.fields);
        let mut left = self.count;
        std::iter::from_fn(move || {
            if left == 0 {
                return (!r.0.is_empty()).then(|| Err(corrupt("stored head has trailing bytes")));
            }
            left -= 1;
            let field = (|| {
                let name_len = r.u16()? as usize;
                let name = r.take(name_len)?;
                let value_len = r.u32()? as usize;
                Ok((name, r.take(value_len)?))
            })();
            if field.is_err() {
                left = 0;
                r.0 = &[];
            }
            Some(field)
        })
    }
}

/// A byte slice read from the front.
struct Slice<'a>(&'a [u8]);

impl<'a> Slice<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.0.len() {
            return Err(corrupt("stored header truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_le_bytes)
    }
}

fn too_long() -> Box<Error> {
    Error::explain(ErrorType::InternalError, "header field too long to store")
}

/// Append the encoding of `header` to `out`.
fn encode_header(header: &ResponseHeader, out: &mut Vec<u8>) -> Result<()> {
    out.put_u16_le(header.status.as_u16());
    out.put_u8(if header.version == Version::HTTP_10 {
        10
    } else {
        11
    });
    let count_at = out.len();
    out.put_u16_le(0);
    let mut count: u16 = 0;
    let mut put = |name: &[u8], value: &HeaderValue| -> Result<()> {
        let name_len = u16::try_from(name.len()).map_err(|_| too_long())?;
        let value_len = u32::try_from(value.len()).map_err(|_| too_long())?;
        out.put_u16_le(name_len);
        out.put_slice(name);
        out.put_u32_le(value_len);
        out.put_slice(value.as_bytes());
        count = count.checked_add(1).ok_or_else(too_long)?;
        Ok(())
    };
    if header.has_case() {
        for (name, value) in header.case_header_iter() {
            put(name.as_slice(), value)?;
        }
    } else {
        for (name, value) in header.headers.iter() {
            put(name.as_str().as_bytes(), value)?;
        }
    }
    out[count_at..count_at + 2].copy_from_slice(&count.to_le_bytes());
    Ok(())
}

fn corrupt(what: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, what)
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn skip(&mut self, n: usize) -> Result<usize> {
        let start = self.pos;
        let end = start.checked_add(n).filter(|&e| e <= self.buf.len());
        self.pos = end.ok_or_else(|| corrupt("stored header truncated"))?;
        Ok(start)
    }

    /// The next `n` bytes, borrowed (no reference count touched: most reads are these).
    fn bytes(&mut self, n: usize) -> Result<&[u8]> {
        let start = self.skip(n)?;
        Ok(&self.buf[start..self.pos])
    }

    /// The next `n` bytes as a `Bytes` sharing the stored buffer (names and values).
    fn take(&mut self, n: usize) -> Result<Bytes> {
        let start = self.skip(n)?;
        Ok(self.buf.slice(start..self.pos))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_le_bytes)
    }
}

/// Decode a header encoded by [`encode_header`] at the reader's position.
fn decode_header(r: &mut Reader<'_>) -> Result<ResponseHeader> {
    let status = r.u16()?;
    let version = r.u8()?;
    let count = r.u16()?;
    let mut header = ResponseHeader::build(status, Some(count as usize))?;
    header.set_version(if version == 10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    });
    for _ in 0..count {
        let name_len = r.u16()? as usize;
        let name = r.take(name_len)?;
        let value_len = r.u32()? as usize;
        let value = HeaderValue::from_maybe_shared(r.take(value_len)?)
            .map_err(|_| corrupt("stored header value invalid"))?;
        header.append_header(name, value)?;
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta_with(header: ResponseHeader) -> CacheMeta {
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
    }

    #[test]
    fn header_round_trips_with_case_and_duplicates() {
        let mut h = ResponseHeader::build(404, None).unwrap();
        h.append_header("Content-Type", "text/plain").unwrap();
        h.append_header("X-Custom-Thing", "a").unwrap();
        h.append_header("set-cookie", "a=1").unwrap();
        h.append_header("set-cookie", "b=2").unwrap();
        let meta = meta_with(h.clone());
        let head = encode_head(&meta, b"example.com\n/x\n").unwrap();
        assert_eq!(head.len(), head.capacity(), "exact-size buffer");
        let d = decode_head(&Bytes::from(head)).unwrap();
        assert_eq!(d.response_header().status.as_u16(), 404);
        let mut wire = Vec::new();
        d.response_header().header_to_h1_wire(&mut wire);
        let mut orig = Vec::new();
        h.header_to_h1_wire(&mut orig);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            String::from_utf8(orig).unwrap()
        );
    }

    #[test]
    fn truncated_or_extended_head_is_an_error_not_a_panic() {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.append_header("ETag", "\"x\"").unwrap();
        let mut meta = meta_with(h);
        meta.set_variance([9; 16]);
        let full = Bytes::from(encode_head(&meta, b"k").unwrap());
        for cut in 0..full.len() {
            assert!(decode_head(&full.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = full.to_vec();
        longer.push(0);
        assert!(decode_head(&Bytes::from(longer)).is_err());
        let mut other_format = full.to_vec();
        other_format[0] = 0xff;
        assert!(decode_head(&Bytes::from(other_format)).is_err());
    }

    #[test]
    fn meta_fields_survive_including_epoch_and_variance() {
        let now = SystemTime::now();
        let mut meta = CacheMeta::new(
            now + Duration::from_secs(60),
            now,
            5,
            7,
            ResponseHeader::build(200, None).unwrap(),
        );
        meta.set_epoch_override(now - Duration::from_secs(30));
        meta.set_variance([3; 16]);
        let back = decode_head(&Bytes::from(encode_head(&meta, b"").unwrap())).unwrap();
        assert_eq!(to_ms(back.fresh_until()), to_ms(meta.fresh_until()));
        assert_eq!(to_ms(back.created()), to_ms(meta.created()));
        assert_eq!(to_ms(back.epoch()), to_ms(meta.epoch()));
        assert!(
            back.fresh_until() <= meta.fresh_until(),
            "truncation only ever shortens freshness"
        );
        assert_eq!(back.variance(), Some([3; 16]));
        assert_eq!(
            (back.stale_while_revalidate_sec(), back.stale_if_error_sec()),
            (5, 7)
        );
        assert!((29..=31).contains(&back.age().as_secs()));
    }

    #[test]
    fn confirmation_time_survives_and_format_1_heads_still_decode() {
        let now = SystemTime::now();
        let meta = CacheMeta::new(
            now + Duration::from_secs(60),
            now,
            0,
            0,
            ResponseHeader::build(200, None).unwrap(),
        );
        let mut head = encode_head(&meta, b"").unwrap();
        assert_eq!(to_ms(confirmed_at(&meta)), to_ms(now));
        // a revalidation 5 s later (Pingora keeps `created`, moves `updated`)
        let later = to_ms(now) + 5_000;
        head[25..33].copy_from_slice(&later.to_le_bytes());
        let back = decode_head(&Bytes::from(head.clone())).unwrap();
        assert_eq!(to_ms(back.created()), to_ms(now));
        assert_eq!(to_ms(confirmed_at(&back)), later);
        assert_eq!(
            encode_head(&back, b"").unwrap(),
            head,
            "re-encoding keeps it"
        );
        // format 1: no confirmation field, no key; confirmed when created
        let mut v1 = head.clone();
        v1.drain(FIXED..FIXED + 2);
        v1.drain(25..33);
        v1[0] = 1;
        let old = decode_head(&Bytes::from(v1)).unwrap();
        assert_eq!(to_ms(confirmed_at(&old)), to_ms(now));
        assert_eq!(to_ms(old.fresh_until()), to_ms(meta.fresh_until()));
    }

    #[test]
    fn the_primary_key_is_kept_and_format_2_heads_still_decode() {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.append_header("Surrogate-Key", "a b").unwrap();
        let meta = meta_with(h);
        let key = b"example.com\n/p?q=1\n";
        let head = Bytes::from(encode_head(&meta, key).unwrap());
        let stored = decode_stored(&head).unwrap();
        assert_eq!(stored.primary.as_deref(), Some(&key[..]));
        assert_eq!(stored.meta.headers()["surrogate-key"], "a b");
        assert_eq!(
            decode_head(&head).unwrap().headers()["surrogate-key"],
            "a b"
        );
        let unknown = Bytes::from(encode_head(&meta, b"").unwrap());
        assert!(decode_stored(&unknown).unwrap().primary.is_none());
        // format 2: the same without the key field
        let mut v2 = unknown.to_vec();
        v2.drain(FIXED..FIXED + 2);
        v2[0] = 2;
        let old = decode_stored(&Bytes::from(v2)).unwrap();
        assert!(old.primary.is_none());
        assert_eq!(old.meta.headers()["surrogate-key"], "a b");
    }
    #[test]
    fn the_view_reads_what_decoding_reads() {
        let mut h = ResponseHeader::build(203, None).unwrap();
        h.append_header("Content-Type", "text/plain").unwrap();
        h.append_header("set-cookie", "a=1").unwrap();
        h.append_header("set-cookie", "b=2").unwrap();
        let mut meta = meta_with(h);
        meta.set_variance([1; 16]);
        let head = encode_head(&meta, b"example.com\n/x\n").unwrap();
        let view = HeadView::parse(&head).unwrap();
        let decoded = decode_head(&Bytes::from(head.clone())).unwrap();
        assert_eq!(view.status, 203);
        assert!(view.has_variance);
        assert_eq!(view.variance, Some([1; 16]));
        assert_eq!(view.created_ms, to_ms(decoded.created()));
        assert_eq!(view.fresh_until_ms, to_ms(decoded.fresh_until()));
        assert_eq!(view.epoch_ms, to_ms(decoded.epoch()));
        assert_eq!(view.confirmed_ms, to_ms(confirmed_at(&decoded)));
        let fields: Vec<_> = view.fields().map(Result::unwrap).collect();
        assert_eq!(
            fields,
            [
                (&b"Content-Type"[..], &b"text/plain"[..]),
                (b"set-cookie", b"a=1"),
                (b"set-cookie", b"b=2")
            ]
        );
        for cut in 0..head.len() {
            let ok = HeadView::parse(&head[..cut])
                .map(|v| v.fields().all(|f| f.is_ok()))
                .unwrap_or(false);
            assert!(!ok, "cut at {cut}");
        }
    }
}
