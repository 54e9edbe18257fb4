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
    if let Some(value) = with_field(&resp.headers, field) {
        resp.insert_header(header::VARY, value)?;
    }
    Ok(())
}

/// The `Vary` value [`add`] sets for `field` (lowercase) on a response with `headers`; `None`
/// if it names the field already (or `*`).
pub fn with_field(headers: &HMap, field: &str) -> Option<String> {
    let present = fields(headers);
    if present.iter().any(|f| f == field || f == "*") {
        return None;
    }
    Some(if present.is_empty() {
        field.to_string()
    } else {
        format!("{}, {field}", present.join(", "))
    })
}

/// The variance of `req` for the stored response headers `stored`, or `None` without `Vary`.
///
/// Field names are compared case-insensitively and each field counts once; an absent request
/// field and an empty one are treated alike, and each value is normalised as its field allows
/// (RFC 9111 4.1; [`Normalise`]: whitespace, empty list members, token case, member order).
/// With
/// `encoding`, `Accept-Encoding` is normalised to it: the encoding negotiated for the request,
/// so that clients whose lists differ but get the same encoding share one variant.
///
/// The hash is the one Pingora's `VarianceBuilder` makes of the (name, normal value) pairs
/// (stored objects whose request values were in normal form keep their variance across
/// versions), computed as the fields are read. This runs on every hit on a varying object.
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
            _ => hash.update(normal_value(name, request(name))),
        }
        hash.update([0u8]);
    }
    Some(hash.finalize().into())
}

/// How a request field named in `Vary` is normalised before it is hashed (RFC 9111 4.1: "a
/// cache MAY normalize ... whitespace, case, order ... where the field's semantics allow").
#[derive(Clone, Copy, PartialEq, Eq)]
struct Normalise {
    /// Token case carries no meaning (content codings, media types, language tags, charsets).
    fold_case: bool,
    /// The order of the list's members carries no meaning (preference is by q-value).
    sort: bool,
    /// Members have `;`-separated parameters (`br;q=1` and `br; q=1` are one value).
    parameters: bool,
}

impl Normalise {
    /// The normalisation of the field `name` (lowercase). Every list field loses the whitespace
    /// around its members and its empty members; `Accept-Language` keeps its order (servers
    /// read it as a preference even among equal q-values).
    fn of(name: &str) -> Normalise {
        let accept = |sort| Normalise {
            fold_case: true,
            sort,
            parameters: true,
        };
        match name {
            "accept" | "accept-encoding" | "accept-charset" => accept(true),
            "accept-language" => accept(false),
            _ => Normalise {
                fold_case: false,
                sort: false,
                parameters: false,
            },
        }
    }
}

/// The members of the comma-separated list in `lines` (field lines, as one list: RFC 9110 5.3),
/// split outside quoted strings.
fn members<'r>(lines: impl Iterator<Item = &'r [u8]>) -> SmallVec<[&'r [u8]; 8]> {
    let mut out = SmallVec::new();
    for line in lines {
        let (mut start, mut quoted, mut escaped) = (0, false, false);
        for (i, &b) in line.iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    out.push(&line[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.push(&line[start..]);
    }
    out
}

/// One list member in normal form: no surrounding whitespace, with `parameters` none around
/// `;` and `=` (outside quoted strings), with `fold_case` lower case outside quoted strings.
fn normal_member(member: &[u8], how: Normalise, out: &mut Vec<u8>) {
    let member = member.trim_ascii();
    let (mut quoted, mut escaped) = (false, false);
    for (i, &b) in member.iter().enumerate() {
        if quoted {
            out.push(b);
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                quoted = true;
                out.push(b);
            }
            b' ' | b'\t' if how.parameters => {
                // dropped before `;`/`=` and after them
                let next = member[i + 1..].iter().find(|c| !matches!(c, b' ' | b'\t'));
                let prev = out.last();
                let around = matches!(next, Some(b';' | b'=')) || matches!(prev, Some(b';' | b'='));
                if !around {
                    out.push(b);
                }
            }
            _ if how.fold_case => out.push(b.to_ascii_lowercase()),
            _ => out.push(b),
        }
    }
}

/// The request's value of field `name` in normal form ([`Normalise`]): its members joined by
/// `", "`, as several field lines are. A value already in normal form is unchanged, so it
/// hashes as before normalisation.
fn normal_value<'r>(name: &str, lines: impl Iterator<Item = &'r [u8]>) -> Vec<u8> {
    let how = Normalise::of(name);
    let mut normal: SmallVec<[Vec<u8>; 8]> = members(lines)
        .into_iter()
        .filter(|m| !m.trim_ascii().is_empty())
        .map(|m| {
            let mut out = Vec::with_capacity(m.len());
            normal_member(m, how, &mut out);
            out
        })
        .collect();
    if how.sort {
        normal.sort_unstable();
    }
    normal.join(&b", "[..])
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
            // values in normal form (sorted where order means nothing) hash as they always did
            req(&[("accept-encoding", "br, gzip"), ("x-lang", "en")]),
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
    fn values_are_normalised_as_their_field_allows() {
        let n = |name: &str, lines: &[&str]| {
            String::from_utf8(normal_value(name, lines.iter().map(|l| l.as_bytes()))).unwrap()
        };
        assert_eq!(
            n("accept-language", &["EN-us ,fr ; q=0.5,,"]),
            "en-us, fr;q=0.5"
        );
        assert_eq!(n("accept-language", &["fr", "en"]), "fr, en", "order kept");
        assert_eq!(
            n("accept", &["Text/HTML;Q=0.9, */*"]),
            "*/*, text/html;q=0.9"
        );
        assert_eq!(n("accept-encoding", &["gzip", " BR;q=1"]), "br;q=1, gzip");
        assert_eq!(n("x-device", &[" Mobile , x "]), "Mobile, x", "case kept");
        assert_eq!(
            n("x-q", &["\"a, b\" , c"]),
            "\"a, b\", c",
            "quoted commas are not separators"
        );
        assert_eq!(
            n("accept", &["text/plain;format=\"A ; B\""]),
            "text/plain;format=\"A ; B\"",
            "quoted strings keep case and spaces"
        );
        assert_eq!(n("x-empty", &[]), "");
        assert_eq!(n("x-empty", &[" , "]), "");
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
