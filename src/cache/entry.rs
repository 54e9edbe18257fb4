//! The compact stored form of a cached object's head: its freshness fields and response
//! header, in one buffer; the body is stored separately so a 304 can refresh the head without
//! touching the body.
//!
//! Pingora's own `CacheMeta::serialize` compresses the header with zstd and parses it back with
//! a fresh 8 KiB header array on every hit (about 3 µs, most of a memory hit). This form decodes
//! with no decompression and no copies: header names and values are `Bytes` slices of the
//! stored buffer (or static names), and [`HeadView`] reads it in place.
//!
//! Head encoding (format 5; integers little endian, `varint` is LEB128):
//! `format u8 | flags u8 | created_ms varint | fresh_until delta | epoch delta if flagged |
//! confirmed delta if flagged | stale_while_revalidate varint, stale_if_error varint if
//! flagged | variance [u8; 16] if flagged | key_len varint | primary key | status u16 |
//! count varint | (code u8, [name_len varint, name if code is 0], value)*`, where a value is
//! a varint `v` and what it says follows: `v` even, `v / 2` bytes stored as they are; `v`
//! odd, `v / 2` is a kind: 0 an HTTP date in IMF-fixdate form (a zigzag varint of seconds
//! from `created_ms`), 1 a decimal number (a varint), 2 and more a common value
//! (`names::value`, code `kind - 1`). Only values that render back byte for byte are coded
//! (a `Date` of 29 bytes takes 1 or 2, `Content-Type: application/octet-stream` 1).
//! Flags: [`F_VARIANCE`], [`F_HTTP_10`], [`F_EPOCH`], [`F_CONFIRMED`], [`F_STALE`]. Times are
//! milliseconds since the Unix epoch; the others are stored relative to `created_ms` (a
//! zigzag varint, in whole seconds when they are whole seconds). Well-known field names are
//! one-byte codes (`names`), the others are kept as they came; every name keeps its
//! original case. Fields the node regenerates on every response are not among those stored
//! anyway (hop-by-hop fields are removed before a response is stored; `Age` is set on hits),
//! and `Date` is stored as the origin sent it (as a number when it renders back the same).
//! The primary cache key is kept so that a background pass can tell which purges cover an
//! object (the tiers index objects by hash only); hits skip it. Format 4 (values always
//! stored as they are: `value_len varint, value`) and formats 1 to 3 (fixed-width fields,
//! names and values with u16/u32 lengths, `legacy`), written by earlier versions to the disk
//! tier, are still read.
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
use prost::encoding::{decode_varint, encode_varint};
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod legacy;
mod names;

/// The head format this build writes; formats 1 to 4 are still read.
const FORMAT: u8 = 5;
/// The format before coded values (read only).
const FORMAT_4: u8 = 4;

/// Flag: a variance follows.
const F_VARIANCE: u8 = 1;
/// Flag: the response was HTTP/1.0 (else HTTP/1.1).
const F_HTTP_10: u8 = 2;
/// Flag: the epoch differs from the creation time; its delta follows.
const F_EPOCH: u8 = 4;
/// Flag: the confirmation time differs from the creation time; its delta follows.
const F_CONFIRMED: u8 = 8;
/// Flag: stale-while-revalidate and stale-if-error follow (else both are 0).
const F_STALE: u8 = 16;
/// Bytes a varint takes at most.
const VARINT_MAX: usize = 10;
/// The last second an HTTP date can name (9999-12-31T23:59:59Z): past it, a stored date is
/// corrupt (and would not render).
const MAX_DATE_S: u64 = 253_402_300_799;

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

/// Call `f` with each field of `header` (name in its original case, value), in order.
fn each_field(
    header: &ResponseHeader,
    mut f: impl FnMut(&[u8], &HeaderValue) -> Result<()>,
) -> Result<()> {
    if header.has_case() {
        for (name, value) in header.case_header_iter() {
            f(name.as_slice(), value)?;
        }
    } else {
        for (name, value) in header.headers.iter() {
            f(name.as_str().as_bytes(), value)?;
        }
    }
    Ok(())
}

/// Encode `meta` (freshness fields and response header) and the object's `primary` cache key
/// into an exact-size buffer. An empty `primary` records that the key is not known.
pub fn encode_head(meta: &CacheMeta, primary: &[u8]) -> Result<Vec<u8>> {
    encode_as(FORMAT, meta, primary)
}

/// [`encode_head`] in `format` (5, or 4 for the tests that read older heads).
fn encode_as(format: u8, meta: &CacheMeta, primary: &[u8]) -> Result<Vec<u8>> {
    let header = meta.response_header();
    let created = to_ms(meta.created());
    let epoch = to_ms(meta.epoch());
    let confirmed = to_ms(confirmed_at(meta));
    let (swr, sie) = (meta.stale_while_revalidate_sec(), meta.stale_if_error_sec());
    let variance = meta.variance();
    let mut flags = 0;
    for (set, flag) in [
        (variance.is_some(), F_VARIANCE),
        (header.version == Version::HTTP_10, F_HTTP_10),
        (epoch != created, F_EPOCH),
        (confirmed != created, F_CONFIRMED),
        (swr != 0 || sie != 0, F_STALE),
    ] {
        if set {
            flags |= flag;
        }
    }
    let (mut count, mut fields_len) = (0u64, 0);
    each_field(header, |name, value| {
        count += 1;
        fields_len += 1 + VARINT_MAX * 2 + name.len() + value.len();
        Ok(())
    })?;
    let mut out = Vec::with_capacity(2 + VARINT_MAX * 9 + 16 + primary.len() + 2 + fields_len);
    let created_s = created / 1000;
    out.put_u8(format);
    out.put_u8(flags);
    encode_varint(created, &mut out);
    put_delta(to_ms(meta.fresh_until()), created, &mut out)?;
    if flags & F_EPOCH != 0 {
        put_delta(epoch, created, &mut out)?;
    }
    if flags & F_CONFIRMED != 0 {
        put_delta(confirmed, created, &mut out)?;
    }
    if flags & F_STALE != 0 {
        encode_varint(swr.into(), &mut out);
        encode_varint(sie.into(), &mut out);
    }
    if let Some(v) = variance {
        out.put_slice(&v);
    }
    encode_varint(primary.len() as u64, &mut out);
    out.put_slice(primary);
    out.put_u16_le(header.status.as_u16());
    encode_varint(count, &mut out);
    each_field(header, |name, value| {
        match names::code(name) {
            Some(code) => out.put_u8(code),
            None => {
                out.put_u8(names::LITERAL);
                encode_varint(name.len() as u64, &mut out);
                out.put_slice(name);
            }
        }
        if format == FORMAT_4 {
            encode_varint(value.len() as u64, &mut out);
            out.put_slice(value.as_bytes());
        } else {
            put_value(value.as_bytes(), created_s, &mut out);
        }
        Ok(())
    })?;
    out.shrink_to_fit();
    Ok(out)
}

/// Append `at` relative to `base` (both in ms): a zigzag varint, tagged in its lowest bit as
/// whole seconds when it is (freshness lifetimes are; 2 bytes instead of 4 for an hour).
fn put_delta(at: u64, base: u64, out: &mut Vec<u8>) -> Result<()> {
    let d = i64::try_from(i128::from(at) - i128::from(base)).map_err(|_| out_of_range())?;
    let tagged = if d % 1000 == 0 {
        (zigzag(d / 1000) << 1) | 1
    } else {
        zigzag(d).checked_mul(2).ok_or_else(out_of_range)?
    };
    encode_varint(tagged, out);
    Ok(())
}

/// Value kind: an HTTP date.
const V_DATE: u64 = 0;
/// Value kind: a decimal number.
const V_NUMBER: u64 = 1;
/// Value kinds from here on: `names::value(kind - 1)`.
const V_KNOWN: u64 = 2;

/// Append a format 5 field value (see the module doc); `created_s` is the date base.
fn put_value(value: &[u8], created_s: u64, out: &mut Vec<u8>) {
    let kind = |k: u64| (k << 1) | 1;
    if let Some(code) = names::value_code(value) {
        encode_varint(kind(V_KNOWN - 1 + code), out);
    } else if let Some(n) = decimal(value) {
        encode_varint(kind(V_NUMBER), out);
        encode_varint(n, out);
    } else if let Some(s) = imf_date(value) {
        encode_varint(kind(V_DATE), out);
        encode_varint(zigzag(s.wrapping_sub(created_s) as i64), out);
    } else {
        encode_varint((value.len() as u64) << 1, out);
        out.put_slice(value);
    }
}

/// `v` as a number, if it is one written the one way `to_string` writes it.
fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if v[0] == b'0' && v.len() > 1 {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// `v` as seconds since the Unix epoch, if it is an HTTP date in the form it renders back to
/// (IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`).
fn imf_date(v: &[u8]) -> Option<u64> {
    if v.len() != 29 || !v.ends_with(b" GMT") {
        return None;
    }
    let text = std::str::from_utf8(v).ok()?;
    let at = httpdate::parse_http_date(text).ok()?;
    (httpdate::fmt_http_date(at) == text)
        .then(|| at.duration_since(UNIX_EPOCH).ok())
        .flatten()
        .map(|d| d.as_secs())
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

fn out_of_range() -> Box<Error> {
    Error::explain(ErrorType::InternalError, "stored time out of range")
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
    let p = Parts::parse(head)?;
    let mut header = ResponseHeader::build(p.status, Some(p.fields.left))?;
    header.set_version(if p.http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    });
    for field in p.fields {
        let (name, value) = field?;
        let name = match name {
            Name::Known(n) => Bytes::from_static(n),
            Name::Stored(n) => head.slice_ref(n),
        };
        let value = match value {
            Value::Stored(v) => HeaderValue::from_maybe_shared(head.slice_ref(v)),
            Value::Known(v) => Ok(HeaderValue::from_static(v)),
            made => HeaderValue::from_maybe_shared(Bytes::from(made.bytes().into_owned())),
        }
        .map_err(|_| corrupt("stored header value invalid"))?;
        header.append_header(name, value)?;
    }
    let created = from_ms(p.created_ms);
    let mut meta = CacheMeta::new(from_ms(p.fresh_until_ms), created, p.swr, p.sie, header);
    if p.epoch_ms != p.created_ms {
        meta.set_epoch_override(from_ms(p.epoch_ms));
    }
    if let Some(v) = p.variance {
        meta.set_variance(v);
    }
    if p.confirmed_ms > p.created_ms {
        meta.extensions_mut()
            .insert(Confirmed(from_ms(p.confirmed_ms)));
    }
    let primary = p
        .primary
        .filter(|k| want_key && !k.is_empty())
        .map(|k| head.slice_ref(k));
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

/// A stored head's parts, read in place (any format this build reads).
struct Parts<'a> {
    fresh_until_ms: u64,
    created_ms: u64,
    epoch_ms: u64,
    /// As stored (formats before 2: the creation time).
    confirmed_ms: u64,
    swr: u32,
    sie: u32,
    variance: Option<[u8; 16]>,
    /// The primary key (empty when not known), formats 3 and later.
    primary: Option<&'a [u8]>,
    status: u16,
    http10: bool,
    fields: Fields<'a>,
}

impl<'a> Parts<'a> {
    fn parse(head: &'a [u8]) -> Result<Parts<'a>> {
        let mut r = Slice(head);
        match r.u8()? {
            format @ (FORMAT_4 | FORMAT) => Self::parse_compact(format, r),
            format @ 1..=3 => legacy::parse(format, r),
            _ => Err(corrupt("stored head has an unknown format")),
        }
    }

    /// The rest of a format 4 or 5 head.
    fn parse_compact(format: u8, mut r: Slice<'a>) -> Result<Parts<'a>> {
        let flags = r.u8()?;
        let created_ms = r.varint()?;
        let fresh_until_ms = r.delta(created_ms)?;
        let flagged = |r: &mut Slice<'a>, flag| {
            if flags & flag != 0 {
                r.delta(created_ms)
            } else {
                Ok(created_ms)
            }
        };
        let epoch_ms = flagged(&mut r, F_EPOCH)?;
        let confirmed_ms = flagged(&mut r, F_CONFIRMED)?;
        let (swr, sie) = if flags & F_STALE != 0 {
            (r.varint_u32()?, r.varint_u32()?)
        } else {
            (0, 0)
        };
        let variance = if flags & F_VARIANCE != 0 {
            Some(r.array()?)
        } else {
            None
        };
        let key_len = r.len()?;
        let primary = Some(r.take(key_len)?);
        let status = r.u16()?;
        let count = r.len()?;
        Ok(Parts {
            fresh_until_ms,
            created_ms,
            epoch_ms,
            confirmed_ms,
            swr,
            sie,
            variance,
            primary,
            status,
            http10: flags & F_HTTP_10 != 0,
            fields: Fields::new(format, count, r.0, created_ms / 1000)?,
        })
    }
}

/// A field name: one of the well-known ones, or as stored.
#[derive(Debug, Clone, Copy)]
enum Name<'a> {
    Known(&'static [u8]),
    Stored(&'a [u8]),
}

impl<'a> Name<'a> {
    fn bytes(self) -> &'a [u8] {
        match self {
            Name::Known(n) => n,
            Name::Stored(n) => n,
        }
    }
}

/// A stored field value: borrowed from the head, or coded (rendered by [`Value::bytes`]).
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// As stored.
    Stored(&'a [u8]),
    /// A common value, coded.
    Known(&'static str),
    /// An HTTP date (seconds since the Unix epoch), rendered in IMF-fixdate form.
    Date(u64),
    /// A decimal number.
    Number(u64),
}

impl<'a> Value<'a> {
    /// The value's bytes (made for a date or a number).
    pub fn bytes(self) -> Cow<'a, [u8]> {
        match self {
            Value::Stored(v) => Cow::Borrowed(v),
            Value::Known(v) => Cow::Borrowed(v.as_bytes()),
            Value::Date(s) => Cow::Owned(
                httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s)).into_bytes(),
            ),
            Value::Number(n) => Cow::Owned(n.to_string().into_bytes()),
        }
    }
}

/// The stored header fields, in order; an error at the first malformed one (or at trailing
/// bytes after the last), then nothing.
#[derive(Debug, Clone, Copy)]
struct Fields<'a> {
    /// The head's format (1 to 3: `legacy`).
    format: u8,
    /// The base of stored dates: the creation time, in seconds (format 5).
    created_s: u64,
    left: usize,
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(format: u8, count: usize, rest: &'a [u8], created_s: u64) -> Result<Fields<'a>> {
        // a field takes at least 2 bytes: a count beyond that is corrupt, and must not size
        // a header map
        if count > rest.len() / 2 {
            return Err(corrupt("stored header truncated"));
        }
        Ok(Fields {
            format,
            created_s,
            left: count,
            rest,
        })
    }

    fn field(&mut self) -> Result<(Name<'a>, Value<'a>)> {
        let mut r = Slice(self.rest);
        let field = if self.format >= FORMAT_4 {
            let name = match r.u8()? {
                names::LITERAL => {
                    let len = r.len()?;
                    Name::Stored(r.take(len)?)
                }
                code => Name::Known(
                    names::name(code).ok_or_else(|| corrupt("stored field name code unknown"))?,
                ),
            };
            let value = if self.format == FORMAT_4 {
                let len = r.len()?;
                Value::Stored(r.take(len)?)
            } else {
                r.value(self.created_s)?
            };
            (name, value)
        } else {
            let (name, value) = legacy::field(&mut r)?;
            (name, Value::Stored(value))
        };
        self.rest = r.0;
        Ok(field)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(Name<'a>, Value<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            if self.rest.is_empty() {
                return None;
            }
            self.rest = &[];
            return Some(Err(corrupt("stored head has trailing bytes")));
        }
        self.left -= 1;
        let field = self.field();
        if field.is_err() {
            self.left = 0;
            self.rest = &[];
        }
        Some(field)
    }
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
    /// The encoded fields.
    fields: Fields<'a>,
}

impl<'a> HeadView<'a> {
    /// Read a head written by [`encode_head`] (any format this build reads).
    pub fn parse(head: &'a [u8]) -> Result<HeadView<'a>> {
        let p = Parts::parse(head)?;
        Ok(HeadView {
            fresh_until_ms: p.fresh_until_ms,
            created_ms: p.created_ms,
            epoch_ms: p.epoch_ms,
            confirmed_ms: p.confirmed_ms.max(p.created_ms),
            has_variance: p.variance.is_some(),
            variance: p.variance,
            status: p.status,
            fields: p.fields,
        })
    }

    /// The header fields, names in their stored case, in order; an error at the first
    /// malformed one. A value is rendered only when asked ([`Value::bytes`]).
    pub fn fields(&self) -> impl Iterator<Item = Result<(&'a [u8], Value<'a>)>> {
        self.fields
            .map(|f| f.map(|(name, value)| (name.bytes(), value)))
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

    fn varint(&mut self) -> Result<u64> {
        decode_varint(&mut self.0).map_err(|_| corrupt("stored head has an invalid varint"))
    }

    fn varint_u32(&mut self) -> Result<u32> {
        u32::try_from(self.varint()?).map_err(|_| corrupt("stored head value out of range"))
    }

    /// A length (of something that must still follow).
    fn len(&mut self) -> Result<usize> {
        usize::try_from(self.varint()?).map_err(|_| corrupt("stored header truncated"))
    }

    /// A format 5 field value (see [`put_value`]); `created_s` is the date base.
    fn value(&mut self, created_s: u64) -> Result<Value<'a>> {
        let v = self.varint()?;
        if v & 1 == 0 {
            let len = usize::try_from(v >> 1).map_err(|_| corrupt("stored header truncated"))?;
            return Ok(Value::Stored(self.take(len)?));
        }
        Ok(match v >> 1 {
            V_DATE => {
                let s = created_s.wrapping_add(unzigzag(self.varint()?) as u64);
                if s > MAX_DATE_S {
                    return Err(corrupt("stored date out of range"));
                }
                Value::Date(s)
            }
            V_NUMBER => Value::Number(self.varint()?),
            code => Value::Known(
                names::value(code - (V_KNOWN - 1))
                    .ok_or_else(|| corrupt("stored field value code unknown"))?,
            ),
        })
    }

    /// A time stored relative to `base` by [`put_delta`].
    fn delta(&mut self, base: u64) -> Result<u64> {
        let v = self.varint()?;
        let d = i128::from(unzigzag(v >> 1));
        let d = if v & 1 == 1 { d * 1000 } else { d };
        u64::try_from(i128::from(base) + d).map_err(|_| out_of_range())
    }
}

fn corrupt(what: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, what)
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
        h.append_header("Date", "Sat, 05 Dec 2026 13:37:01 GMT")
            .unwrap();
        h.append_header("Content-Length", "123456").unwrap();
        h.append_header("Accept-Ranges", "bytes").unwrap();
        let mut meta = meta_with(h);
        meta.set_variance([9; 16]);
        for full in [
            Bytes::from(encode_head(&meta, b"k").unwrap()),
            Bytes::from(encode_as(FORMAT_4, &meta, b"k").unwrap()),
            Bytes::from(legacy::encode_v3(&meta, b"k")),
        ] {
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

    /// `meta` and `d` have the same freshness fields and header (on the wire, in order).
    fn assert_same(meta: &CacheMeta, d: &CacheMeta) {
        for (a, b) in [
            (meta.fresh_until(), d.fresh_until()),
            (meta.created(), d.created()),
            (meta.epoch(), d.epoch()),
            (confirmed_at(meta), confirmed_at(d)),
        ] {
            assert_eq!(to_ms(a), to_ms(b));
        }
        assert_eq!(meta.variance(), d.variance());
        assert_eq!(
            (meta.stale_while_revalidate_sec(), meta.stale_if_error_sec()),
            (d.stale_while_revalidate_sec(), d.stale_if_error_sec())
        );
        let (mut a, mut b) = (Vec::new(), Vec::new());
        meta.response_header().header_to_h1_wire(&mut a);
        d.response_header().header_to_h1_wire(&mut b);
        assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
        assert_eq!(meta.response_header().version, d.response_header().version);
    }

    /// A response as nginx sends a static file, and the same with every optional part set.
    fn metas() -> Vec<CacheMeta> {
        let now = SystemTime::now();
        let mut h = ResponseHeader::build(200, None).unwrap();
        for (k, v) in [
            ("Server", "nginx/1.22.1"),
            ("Date", "Sat, 05 Dec 2026 13:37:01 GMT"),
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", "1024"),
            ("Last-Modified", "Tue, 01 Apr 2025 10:00:00 GMT"),
            ("ETag", "\"67ebb9a0-400\""),
            ("Cache-Control", "public, max-age=3600"),
            ("Accept-Ranges", "bytes"),
        ] {
            h.append_header(k, v).unwrap();
        }
        let plain = CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, h);
        let mut h = ResponseHeader::build(404, None).unwrap();
        h.set_version(Version::HTTP_10);
        h.append_header("x-Odd-CASE", "").unwrap();
        h.append_header("vary", "accept-encoding").unwrap();
        h.append_header("Set-Cookie", "a=1").unwrap();
        h.append_header("set-cookie", "b=2").unwrap();
        // stale when stored, by a fraction of a second
        let mut full = CacheMeta::new(now - Duration::from_millis(1500), now, 30, 86_400, h);
        full.set_epoch_override(now - Duration::from_millis(45_123));
        full.set_variance([7; 16]);
        full.extensions_mut()
            .insert(Confirmed(now + Duration::from_millis(2_001)));
        vec![plain, full]
    }

    #[test]
    fn every_field_survives_and_format_3_heads_read_the_same() {
        for meta in metas() {
            let key = b"example.com\n/x\n";
            let head = Bytes::from(encode_head(&meta, key).unwrap());
            let stored = decode_stored(&head).unwrap();
            assert_eq!(stored.primary.as_deref(), Some(&key[..]));
            assert_same(&meta, &stored.meta);
            let v3 = Bytes::from(legacy::encode_v3(&meta, key));
            let old = decode_stored(&v3).unwrap();
            assert_eq!(old.primary.as_deref(), Some(&key[..]));
            assert_same(&meta, &old.meta);
            // re-encoding an old head writes the current format, the same object
            let again = encode_head(&old.meta, key).unwrap();
            assert_eq!(again, head.to_vec());
        }
    }

    #[test]
    fn a_typical_origin_head_is_compact() {
        let meta = &metas()[0];
        let key = b"127.0.0.1:18083\n/m/12345\n";
        let head = encode_head(meta, key).unwrap();
        let v3 = legacy::encode_v3(meta, key);
        // the values alone take 138 bytes as sent, the key 25; dates, the length, the type
        // and Accept-Ranges are coded
        assert!(
            head.len() <= 112,
            "{} bytes (format 3: {})",
            head.len(),
            v3.len()
        );
        assert!(
            head.len() + 220 <= v3.len(),
            "{} vs {}",
            head.len(),
            v3.len()
        );
    }

    #[test]
    fn coded_values_render_back_byte_for_byte_and_others_stay_as_sent() {
        let values = [
            ("Date", "Sat, 05 Dec 2026 13:37:01 GMT"),
            ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ("Last-Modified", "Fri, 31 Dec 9999 23:59:59 GMT"),
            // other date forms, a wrong weekday, wrong case: kept as sent
            ("Expires", "Sunday, 06-Nov-94 08:49:37 GMT"),
            ("Expires", "Sun Nov  6 08:49:37 1994"),
            ("Expires", "Mon, 05 Dec 2026 13:37:01 GMT"),
            ("Expires", "Sat, 05 dec 2026 13:37:01 GMT"),
            ("X-Date", "Sat, 05 Dec 2026 13:37:01 GMT"),
            ("Content-Length", "0"),
            ("Content-Length", "18446744073709551615"),
            ("X-N", "007"),
            ("X-N", "18446744073709551616"),
            ("X-N", "+1"),
            ("X-N", ""),
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Type", "text/html;charset=utf-8"),
            ("Vary", "Accept-Encoding"),
            ("X-Bin", "caf\u{e9}"),
        ];
        let mut h = ResponseHeader::build(200, None).unwrap();
        for (k, v) in values {
            h.append_header(k, v).unwrap();
        }
        let meta = meta_with(h.clone());
        for format in [FORMAT, FORMAT_4] {
            let head = encode_as(format, &meta, b"k").unwrap();
            let view = HeadView::parse(&head).unwrap();
            let seen: Vec<(Vec<u8>, Vec<u8>)> = view
                .fields()
                .map(|f| {
                    f.map(|(n, v)| (n.to_vec(), v.bytes().into_owned()))
                        .unwrap()
                })
                .collect();
            let mut want: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            each_field(&h, |n, v| {
                want.push((n.to_vec(), v.as_bytes().to_vec()));
                Ok(())
            })
            .unwrap();
            assert_eq!(want.len(), values.len());
            assert_eq!(seen, want, "format {format}");
            let decoded = decode_head(&Bytes::from(head)).unwrap();
            let mut wire = Vec::new();
            decoded.response_header().header_to_h1_wire(&mut wire);
            let mut orig = Vec::new();
            h.header_to_h1_wire(&mut orig);
            assert_eq!(wire, orig, "format {format}");
        }
        // a date 29 bytes long in IMF-fixdate form takes 3 bytes with its name code
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.append_header("Date", "Sat, 05 Dec 2026 13:37:01 GMT")
            .unwrap();
        let bare = encode_head(&meta_with(ResponseHeader::build(200, None).unwrap()), b"").unwrap();
        let dated = encode_head(&meta_with(h), b"").unwrap();
        assert!(
            dated.len() - bare.len() <= 5,
            "{}",
            dated.len() - bare.len()
        );
    }

    #[test]
    fn a_corrupt_coded_value_is_an_error() {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.append_header("Accept-Ranges", "bytes").unwrap();
        let mut head = encode_head(&meta_with(h), b"").unwrap();
        // the value's code is the last byte: make it one past the table
        let last = head.len() - 1;
        head[last] = 0x7f;
        let view = HeadView::parse(&head).unwrap();
        assert!(view.fields().any(|f| f.is_err()));
        assert!(decode_head(&Bytes::from(head)).is_err());
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
        assert_eq!(to_ms(confirmed_at(&meta)), to_ms(now));
        // a revalidation 5 s later (Pingora keeps `created`, moves `updated`)
        let later = to_ms(now) + 5_000;
        let mut head = legacy::encode_v3(&meta, b"");
        head[25..33].copy_from_slice(&later.to_le_bytes());
        let back = decode_head(&Bytes::from(head.clone())).unwrap();
        assert_eq!(to_ms(back.created()), to_ms(now));
        assert_eq!(to_ms(confirmed_at(&back)), later);
        let again = decode_head(&Bytes::from(encode_head(&back, b"").unwrap())).unwrap();
        assert_eq!(to_ms(confirmed_at(&again)), later, "re-encoding keeps it");
        // format 1: no confirmation field, no key; confirmed when created
        let mut v1 = head.clone();
        v1.drain(legacy::FIXED..legacy::FIXED + 2);
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
        // format 2: format 3 without the key field
        let mut v2 = legacy::encode_v3(&meta, b"");
        v2.drain(legacy::FIXED..legacy::FIXED + 2);
        v2[0] = 2;
        let old = decode_stored(&Bytes::from(v2)).unwrap();
        assert!(old.primary.is_none());
        assert_eq!(old.meta.headers()["surrogate-key"], "a b");
    }

    #[test]
    fn the_view_reads_what_decoding_reads() {
        let mut h = ResponseHeader::build(203, None).unwrap();
        h.append_header("Content-Type", "text/plain").unwrap();
        h.append_header("X-Thing", "x").unwrap();
        h.append_header("set-cookie", "a=1").unwrap();
        h.append_header("set-cookie", "b=2").unwrap();
        let mut meta = meta_with(h);
        meta.set_variance([1; 16]);
        meta.set_epoch_override(meta.created() - Duration::from_secs(3));
        let key = b"example.com\n/x\n";
        for head in [
            encode_head(&meta, key).unwrap(),
            legacy::encode_v3(&meta, key),
        ] {
            let view = HeadView::parse(&head).unwrap();
            let decoded = decode_head(&Bytes::from(head.clone())).unwrap();
            assert_eq!(view.status, 203);
            assert!(view.has_variance);
            assert_eq!(view.variance, Some([1; 16]));
            assert_eq!(view.created_ms, to_ms(decoded.created()));
            assert_eq!(view.fresh_until_ms, to_ms(decoded.fresh_until()));
            assert_eq!(view.epoch_ms, to_ms(decoded.epoch()));
            assert_eq!(view.confirmed_ms, to_ms(confirmed_at(&decoded)));
            let fields: Vec<_> = view
                .fields()
                .map(|f| f.map(|(n, v)| (n, v.bytes().into_owned())).unwrap())
                .collect();
            let want: [(&[u8], &[u8]); 4] = [
                (b"Content-Type", b"text/plain"),
                (b"X-Thing", b"x"),
                (b"set-cookie", b"a=1"),
                (b"set-cookie", b"b=2"),
            ];
            let want: Vec<_> = want.iter().map(|&(n, v)| (n, v.to_vec())).collect();
            assert_eq!(fields, want);
            for cut in 0..head.len() {
                let ok = HeadView::parse(&head[..cut])
                    .map(|v| v.fields().all(|f| f.is_ok()))
                    .unwrap_or(false);
                assert!(!ok, "cut at {cut}");
            }
        }
    }
}
