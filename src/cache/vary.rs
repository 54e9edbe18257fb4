//! Secondary cache keys from `Vary` (RFC 9111 4.1).
//!
//! `Vary: *` responses are never stored (see [`super::freshness`]), so only field lists occur.

use blake2::digest::consts::U16;
use blake2::{Blake2b, Digest};
use http::header;
use pingora_cache::key::HashBinary;
use pingora_http::{HMap, RequestHeader, ResponseHeader};
use smallvec::SmallVec;
use std::borrow::Cow;

/// The field names `headers`' `Vary` lists, lowercase, in order (`*` as it is).
pub fn fields(headers: &HMap) -> Vec<String> {
    names(headers).map(Cow::into_owned).collect()
}

/// [`fields`] without allocating unless a name has upper-case letters.
fn names(headers: &HMap) -> impl Iterator<Item = Cow<'_, str>> {
    vary_names(
        headers
            .get_all(header::VARY)
            .iter()
            .map(http::HeaderValue::as_bytes),
    )
}

/// Add `field` (lowercase) to `resp`'s `Vary` unless it is there (or `*` is).
pub fn add(resp: &mut ResponseHeader, field: &str) -> pingora_error::Result<()> {
    let present = fields(&resp.headers);
    if present.iter().any(|f| f == field || f == "*") {
        return Ok(());
    }
    let value = if present.is_empty() {
        field.to_string()
    } else {
        format!("{}, {field}", present.join(", "))
    };
    resp.insert_header(header::VARY, value)?;
    Ok(())
}

/// The variance of `req` for the stored response headers `stored`, or `None` without `Vary`.
///
/// Field names are compared case-insensitively and each field counts once; an absent request
/// field and an empty one are treated alike (RFC 9111 4.1 allows normalisation). With
/// `encoding`, `Accept-Encoding` is normalised to it: the encoding negotiated for the request,
/// so that clients whose lists differ but get the same encoding share one variant.
///
/// The hash is the one Pingora's `VarianceBuilder` makes of the (name, value) pairs (stored
/// objects keep their variance across versions), computed as the fields are read: nothing is
/// allocated unless a `Vary` field name has upper-case letters. This runs on every hit on a
/// varying object.
pub fn variance(stored: &HMap, req: &RequestHeader, encoding: Option<&str>) -> Option<HashBinary> {
    let vary = stored
        .get_all(header::VARY)
        .iter()
        .map(http::HeaderValue::as_bytes);
    variance_of(
        vary,
        |name| req.headers.get_all(name).iter().map(|v| v.as_bytes()),
        encoding,
    )
}

/// [`variance`] from the stored `Vary` values and a lookup of the request's field lines by
/// (lowercase) name, in order: the lean hit path reads both in place.
pub fn variance_of<'a, 'r, I>(
    vary: impl Iterator<Item = &'a [u8]>,
    request: impl Fn(&str) -> I,
    encoding: Option<&str>,
) -> Option<HashBinary>
where
    I: Iterator<Item = &'r [u8]>,
{
    let mut listed: SmallVec<[Cow<'a, str>; 4]> = vary_names(vary).collect();
    if listed.is_empty() {
        return None;
    }
    listed.sort_unstable();
    listed.dedup();
    // VarianceBuilder hashes, in name order: name, 0, value, 0 (a value being the request's
    // field lines joined by ", ")
    let mut hash = Blake2b::<U16>::new();
    for name in &listed {
        hash.update(name.as_bytes());
        hash.update([0u8]);
        match (encoding, name.as_ref()) {
            (Some(token), "accept-encoding") => hash.update(token.as_bytes()),
            _ => {
                for (i, v) in request(name).enumerate() {
                    if i > 0 {
                        hash.update(b", ");
                    }
                    hash.update(v);
                }
            }
        }
        hash.update([0u8]);
    }
    Some(hash.finalize().into())
}

/// The field names raw `Vary` values list, as [`names`] reads them from a header map.
fn vary_names<'a>(vary: impl Iterator<Item = &'a [u8]>) -> impl Iterator<Item = Cow<'a, str>> {
    vary.filter(|v| v.iter().all(|&b| b == b'\t' || (b' '..0x7f).contains(&b)))
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            if n.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(n.to_ascii_lowercase())
            } else {
                Cow::Borrowed(n)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(h: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in h {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn variance_(s: &HMap, r: &RequestHeader) -> Option<HashBinary> {
        variance(s, r, None)
    }

    fn stored(vary: &str) -> HMap {
        let mut m = HMap::new();
        m.insert(header::VARY, vary.parse().unwrap());
        m
    }

    /// The former implementation, through Pingora's `VarianceBuilder`: stored variants must
    /// keep their keys.
    fn reference(stored: &HMap, req: &RequestHeader, encoding: Option<&str>) -> Option<HashBinary> {
        let mut names = fields(stored);
        if names.is_empty() {
            return None;
        }
        names.sort_unstable();
        names.dedup();
        let mut builder = pingora_cache::VarianceBuilder::new();
        for name in names {
            if let (Some(token), "accept-encoding") = (encoding, name.as_str()) {
                builder.add_owned_name_value(name, token.as_bytes().to_vec());
                continue;
            }
            let mut value = Vec::new();
            for (i, v) in req.headers.get_all(name.as_str()).iter().enumerate() {
                if i > 0 {
                    value.extend_from_slice(b", ");
                }
                value.extend_from_slice(v.as_bytes());
            }
            builder.add_owned_name_value(name, value);
        }
        builder.finalize()
    }

    #[test]
    fn the_hash_is_pingoras_variance_key() {
        let varies = [
            "Accept-Encoding",
            "accept-encoding",
            "X-Lang, Accept-Encoding",
            "accept-encoding, x-lang, ACCEPT-ENCODING",
            " , Cookie ,,",
            "*",
            "Origin, X-B, X-A",
        ];
        let requests = [
            req(&[]),
            req(&[("accept-encoding", "gzip, br"), ("x-lang", "en")]),
            req(&[
                ("cookie", "a=1"),
                ("cookie", "b=2"),
                ("origin", "https://o"),
            ]),
            req(&[
                ("x-a", ""),
                ("x-b", "2"),
                ("x-lang", "fr"),
                ("x-lang", "de"),
            ]),
        ];
        for vary in varies {
            let s = stored(vary);
            for r in &requests {
                for encoding in [None, Some("br")] {
                    assert_eq!(
                        variance(&s, r, encoding),
                        reference(&s, r, encoding),
                        "Vary: {vary}, {:?}, {encoding:?}",
                        r.headers
                    );
                }
            }
        }
        let mut two = stored("X-Lang");
        two.append(header::VARY, "Accept-Encoding".parse().unwrap());
        let r = &requests[1];
        assert_eq!(variance(&two, r, None), reference(&two, r, None));
    }

    #[test]
    fn same_vary_values_share_a_variant_and_different_ones_do_not() {
        let s = stored("Accept-Encoding, X-Lang");
        let a = variance_(&s, &req(&[("accept-encoding", "gzip"), ("x-lang", "en")]));
        let b = variance_(
            &s,
            &req(&[
                ("accept-encoding", "gzip"),
                ("x-lang", "en"),
                ("other", "1"),
            ]),
        );
        let c = variance_(&s, &req(&[("accept-encoding", "br"), ("x-lang", "en")]));
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn no_vary_means_no_variance_and_field_case_is_ignored() {
        assert_eq!(variance_(&HMap::new(), &req(&[])), None);
        let r = req(&[("x-lang", "en")]);
        assert_eq!(
            variance_(&stored("X-LANG"), &r),
            variance_(&stored("x-lang"), &r)
        );
    }

    #[test]
    fn a_negotiated_encoding_stands_for_accept_encoding() {
        let s = stored("Accept-Encoding");
        let a = variance(&s, &req(&[("accept-encoding", "gzip, br")]), Some("br"));
        let b = variance(
            &s,
            &req(&[("accept-encoding", "br;q=1, *;q=0.1")]),
            Some("br"),
        );
        let c = variance(&s, &req(&[("accept-encoding", "gzip, br")]), Some("gzip"));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
