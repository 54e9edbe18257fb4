//! Heads of formats 1 to 3, written by earlier versions (and still on disk): fixed-width
//! fields, little endian.
//!
//! `format u8 | fresh_until_ms u64 | created_ms u64 | epoch_ms u64 | confirmed_ms u64 (not in
//! format 1) | stale_while_revalidate u32 | stale_if_error u32 | has_variance u8 | variance
//! [u8; 16] if present | key_len u16, primary key (format 3) | status u16 | version u8 (10 or
//! 11) | count u16 | (name_len u16, name, value_len u32, value)*`.

use super::{corrupt, Fields, Name, Parts, Slice};
use pingora_error::Result;

/// The rest of a head of `format` (1 to 3), its format byte read.
pub(super) fn parse(format: u8, mut r: Slice<'_>) -> Result<Parts<'_>> {
    let fresh_until_ms = r.u64()?;
    let created_ms = r.u64()?;
    let epoch_ms = r.u64()?;
    let confirmed_ms = if format == 1 { created_ms } else { r.u64()? };
    let swr = r.u32()?;
    let sie = r.u32()?;
    let variance = match r.u8()? {
        0 => None,
        1 => Some(r.array()?),
        _ => return Err(corrupt("stored head has an invalid variance flag")),
    };
    let primary = if format >= 3 {
        let len = usize::from(r.u16()?);
        Some(r.take(len)?)
    } else {
        None
    };
    let status = r.u16()?;
    let http10 = r.u8()? == 10;
    let count = usize::from(r.u16()?);
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
        http10,
        fields: Fields::new(format, count, r.0, 0)?,
    })
}

/// One field of a head of formats 1 to 3.
pub(super) fn field<'a>(r: &mut Slice<'a>) -> Result<(Name<'a>, &'a [u8])> {
    let name_len = usize::from(r.u16()?);
    let name = r.take(name_len)?;
    let value_len = r.u32()? as usize;
    Ok((Name::Stored(name), r.take(value_len)?))
}

/// A format 3 head, as earlier versions wrote it (for the tests that read old heads).
#[cfg(test)]
pub(super) fn encode_v3(meta: &pingora_cache::CacheMeta, primary: &[u8]) -> Vec<u8> {
    use super::{confirmed_at, each_field, to_ms};
    use bytes::BufMut;
    let mut out = Vec::new();
    out.put_u8(3);
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
    out.put_u16_le(primary.len() as u16);
    out.put_slice(primary);
    let header = meta.response_header();
    out.put_u16_le(header.status.as_u16());
    out.put_u8(if header.version == http::Version::HTTP_10 {
        10
    } else {
        11
    });
    let count_at = out.len();
    out.put_u16_le(0);
    let mut count = 0u16;
    each_field(header, |name, value| {
        out.put_u16_le(name.len() as u16);
        out.put_slice(name);
        out.put_u32_le(value.len() as u32);
        out.put_slice(value.as_bytes());
        count += 1;
        Ok(())
    })
    .unwrap();
    out[count_at..count_at + 2].copy_from_slice(&count.to_le_bytes());
    out
}

/// Bytes of a format 3 head before its key length (for the tests that cut older formats
/// out of it).
#[cfg(test)]
pub(super) const FIXED: usize = 1 + 8 * 4 + 4 * 2 + 1;
