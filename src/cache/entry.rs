//! The compact stored form of a cached object: freshness fields plus one buffer holding the
//! encoded response header followed by the body.
//!
//! Pingora's own `CacheMeta::serialize` compresses the header with zstd and parses it back with
//! a fresh 8 KiB header array on every hit (about 3 µs, most of a memory hit). This form decodes
//! with no decompression and no copies: header names and values are `Bytes` slices of the
//! stored buffer.
//!
//! Header encoding: `status u16 | version u8 | count u16 | (name_len u16, name, value_len u32,
//! value)*`, little endian, names in their original case.
//!
//! Fidelity: `CacheMeta::new` is the only public constructor, so provenance is restored as the
//! creation time. Provenance is only ever earlier than creation after a full refetch of an
//! expired `Vary` primary; restoring it later makes older variants count as invalid (an extra
//! miss), never the other way round.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Version};
use pingora_cache::key::HashBinary;
use pingora_cache::CacheMeta;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The freshness fields of a `CacheMeta`, 40 bytes: times are milliseconds since the Unix
/// epoch (sub-millisecond precision is irrelevant to HTTP caching, whose unit is the second).
#[derive(Debug, Clone)]
pub struct StoredMeta {
    fresh_until_ms: u64,
    created_ms: u64,
    /// The age reference point; equal to `created_ms` unless revalidated or aged upstream.
    epoch_ms: u64,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<Box<HashBinary>>,
}

fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl StoredMeta {
    /// Capture the fields of `meta`.
    pub fn from_meta(meta: &CacheMeta) -> Self {
        StoredMeta {
            fresh_until_ms: to_ms(meta.fresh_until()),
            created_ms: to_ms(meta.created()),
            epoch_ms: to_ms(meta.epoch()),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            variance: meta.variance().map(Box::new),
        }
    }

    /// Rebuild a `CacheMeta` around an already decoded header.
    pub fn to_meta(&self, header: ResponseHeader) -> CacheMeta {
        let mut meta = CacheMeta::new(
            from_ms(self.fresh_until_ms),
            from_ms(self.created_ms),
            self.stale_while_revalidate,
            self.stale_if_error,
            header,
        );
        if self.epoch_ms != self.created_ms {
            meta.set_epoch_override(from_ms(self.epoch_ms));
        }
        if let Some(v) = &self.variance {
            meta.set_variance(**v);
        }
        meta
    }
}

fn too_long() -> Box<Error> {
    Error::explain(ErrorType::InternalError, "header field too long to store")
}

/// Append the encoding of `header` to `out`.
pub fn encode_header(header: &ResponseHeader, out: &mut BytesMut) -> Result<()> {
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
    fn take(&mut self, n: usize) -> Result<Bytes> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| corrupt("stored header truncated"))?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Decode a header encoded by [`encode_header`] at the start of `buf`; returns it and the
/// encoded length (where the body starts).
pub fn decode_header(buf: &Bytes) -> Result<(ResponseHeader, usize)> {
    let mut r = Reader { buf, pos: 0 };
    let status = r.u16()?;
    let version = r.take(1)?[0];
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
    Ok((header, r.pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_with_case_duplicates_and_body_offset() {
        let mut h = ResponseHeader::build(404, None).unwrap();
        h.append_header("Content-Type", "text/plain").unwrap();
        h.append_header("X-Custom-Thing", "a").unwrap();
        h.append_header("set-cookie", "a=1").unwrap();
        h.append_header("set-cookie", "b=2").unwrap();
        let mut buf = BytesMut::new();
        encode_header(&h, &mut buf).unwrap();
        buf.put_slice(b"BODY");
        let buf = buf.freeze();
        let (d, at) = decode_header(&buf).unwrap();
        assert_eq!(&buf[at..], b"BODY");
        assert_eq!(d.status.as_u16(), 404);
        let mut wire = Vec::new();
        d.header_to_h1_wire(&mut wire);
        let mut orig = Vec::new();
        h.header_to_h1_wire(&mut orig);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            String::from_utf8(orig).unwrap()
        );
    }

    #[test]
    fn truncated_header_is_an_error_not_a_panic() {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.append_header("ETag", "\"x\"").unwrap();
        let mut buf = BytesMut::new();
        encode_header(&h, &mut buf).unwrap();
        let full = buf.freeze();
        for cut in 0..full.len() {
            assert!(decode_header(&full.slice(..cut)).is_err(), "cut at {cut}");
        }
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
        let stored = StoredMeta::from_meta(&meta);
        let back = stored.to_meta(ResponseHeader::build(200, None).unwrap());
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
}
