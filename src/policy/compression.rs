//! Compression policy: which encoding a client gets (RFC 9110 12.5.3 `Accept-Encoding` with
//! q-values), and which responses are compressed. The work itself is Pingora's
//! `upstream_compression`, which runs before the cache stores the body: each encoding is
//! produced once per object and stored as its own variant, so a hit never recompresses.

use crate::cache::ranges::announced_length;
use crate::config::{CompressionConfig, Encoding};
use http::header::{self, HeaderValue};
use pingora_http::ResponseHeader;

/// The encoding a client with `accept` (its `Accept-Encoding` fields) gets among `offered` (in
/// preference order): the acceptable one with the highest q-value, ties broken by `offered`'s
/// order; identity when none is acceptable (or none asked for: no `Accept-Encoding` means any
/// coding is acceptable, but a cache cannot know what the client decodes, so it gets identity).
pub fn negotiate<'a>(
    accept: impl Iterator<Item = &'a HeaderValue>,
    offered: &[Encoding],
) -> Encoding {
    negotiate_bytes(accept.map(HeaderValue::as_bytes), offered)
}

/// [`negotiate`] from the raw `Accept-Encoding` values (the lean hit path's); a value that is
/// not visible ASCII is skipped, as `HeaderValue::to_str` refuses it.
pub fn negotiate_bytes<'a>(
    accept: impl Iterator<Item = &'a [u8]>,
    offered: &[Encoding],
) -> Encoding {
    let mut q_of: Vec<(String, u16)> = Vec::new();
    let text = |v: &'a [u8]| {
        v.iter()
            .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b))
            .then(|| std::str::from_utf8(v).ok())
            .flatten()
    };
    for value in accept.filter_map(text) {
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            if coding.is_empty() {
                continue;
            }
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(1000, |(_, v)| qvalue(v.trim()));
            q_of.push((coding, q));
        }
    }
    let q = |name: &str| -> u16 {
        q_of.iter()
            .find(|(c, _)| c == name)
            .or_else(|| q_of.iter().find(|(c, _)| c == "*"))
            .map_or(0, |(_, q)| *q)
    };
    let mut best = (Encoding::Identity, 0u16);
    for &enc in offered {
        let qv = q(enc.token());
        if qv > best.1 {
            best = (enc, qv);
        }
    }
    best.0
}

/// A q-value in thousandths (`1`, `0.8`, `0.005`); malformed ones count as 0.
fn qvalue(text: &str) -> u16 {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    match int {
        "1" if frac.bytes().all(|b| b == b'0') => 1000,
        "0" => {
            let mut thousandths = 0u16;
            for (i, d) in frac.bytes().enumerate() {
                thousandths += u16::from(d - b'0') * [100, 10, 1][i];
            }
            thousandths
        }
        _ => 0,
    }
}

/// Whether `resp` (from the origin) is one this node compresses for clients that accept it:
/// a 200 whose content type is listed, at least `min_size` long (or of unknown length), and
/// not marked `no-transform`. Already-encoded responses are the origin's business.
pub fn eligible(config: &CompressionConfig, resp: &ResponseHeader) -> bool {
    if !config.enabled || resp.status.as_u16() != 200 {
        return false;
    }
    let h = &resp.headers;
    if h.get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
    {
        return false;
    }
    if announced_length(h).is_some_and(|n| n < config.min_size) {
        return false;
    }
    let Some(media) = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    else {
        return false;
    };
    config.types.iter().any(|t| match t.strip_suffix("/*") {
        Some(top) => media.split('/').next() == Some(top),
        None => *t == media,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(ae: &[&str]) -> Encoding {
        let values: Vec<HeaderValue> = ae.iter().map(|v| v.parse().expect("value")).collect();
        negotiate(values.iter(), &[Encoding::Brotli, Encoding::Gzip])
    }

    #[test]
    fn q_values_decide_and_ties_follow_our_preference() {
        assert_eq!(neg(&["gzip, br"]), Encoding::Brotli);
        assert_eq!(neg(&["gzip;q=1.0, br;q=0.8"]), Encoding::Gzip);
        assert_eq!(neg(&["br;q=0"]), Encoding::Identity);
        assert_eq!(neg(&["br;q=0, gzip"]), Encoding::Gzip);
        assert_eq!(neg(&["*"]), Encoding::Brotli);
        assert_eq!(neg(&["*;q=0.5, br;q=0"]), Encoding::Gzip);
        assert_eq!(neg(&["identity"]), Encoding::Identity);
        assert_eq!(neg(&[]), Encoding::Identity);
        assert_eq!(neg(&["GZIP"]), Encoding::Gzip);
        assert_eq!(neg(&["deflate", "gzip;q=0.001"]), Encoding::Gzip);
        assert_eq!(neg(&["gzip;q=2"]), Encoding::Identity, "malformed q");
        assert_eq!(
            neg(&["gzip;q=0.0001"]),
            Encoding::Identity,
            "too many digits"
        );
    }

    fn config() -> CompressionConfig {
        CompressionConfig {
            enabled: true,
            encodings: vec![Encoding::Brotli, Encoding::Gzip],
            types: vec!["text/*".into(), "application/json".into()],
            min_size: 100,
            brotli_level: 5,
            gzip_level: 6,
            zstd_level: 3,
        }
    }

    fn resp(fields: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).expect("response");
        for (k, v) in fields {
            r.append_header(k.to_string(), *v).expect("field");
        }
        r
    }

    #[test]
    fn eligibility_follows_type_size_and_no_transform() {
        let c = config();
        assert!(eligible(
            &c,
            &resp(&[("Content-Type", "text/html; charset=utf-8")])
        ));
        assert!(eligible(
            &c,
            &resp(&[
                ("Content-Type", "application/json"),
                ("Content-Length", "100")
            ])
        ));
        assert!(!eligible(
            &c,
            &resp(&[
                ("Content-Type", "application/json"),
                ("Content-Length", "99")
            ])
        ));
        assert!(!eligible(&c, &resp(&[("Content-Type", "image/png")])));
        assert!(!eligible(&c, &resp(&[])));
        assert!(!eligible(
            &c,
            &resp(&[
                ("Content-Type", "text/css"),
                ("Cache-Control", "public, no-transform")
            ])
        ));
        let mut notfound = resp(&[("Content-Type", "text/html")]);
        notfound.set_status(404).expect("status");
        assert!(!eligible(&c, &notfound));
    }
}
