//! Range requests answered from cache (RFC 9110 14). Pingora's range filter does the slicing;
//! this adds what it lacks: `If-Range` evaluated with the strong comparison RFC 9110 13.1.5
//! requires (a weak validator never yields a partial response, so a resumed download is never
//! stitched from two versions), and a length for stored bodies whose origin response had none
//! (chunked), so they can be served by range too.

use super::disk::stream::StreamHit;
use super::memory::CompleteHit;
use http::header::{DATE, ETAG, LAST_MODIFIED};
use http::HeaderValue;
use pingora_cache::HitHandler;
use pingora_http::ResponseHeader;
use std::time::{Duration, SystemTime};

/// The body length `headers` announce (`Content-Length`), if they do and it reads as a number.
pub fn announced_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The byte span `[start, end)` a hit handler's `seek(start, end)` selects in a body of `len`
/// bytes (`end` clamped to it, the whole rest without one); a start at or past the end is an
/// error.
pub fn seek_span(len: u64, start: usize, end: Option<usize>) -> pingora_error::Result<(u64, u64)> {
    if start as u64 >= len {
        return pingora_error::Error::e_explain(
            pingora_error::ErrorType::InternalError,
            format!("seek start out of range {start} >= {len}"),
        );
    }
    Ok((start as u64, end.map_or(len, |e| (e as u64).min(len))))
}

/// Whether `If-Range: if_range` lets a range of the stored response `resp` be served.
pub fn if_range_allows(if_range: &HeaderValue, resp: &ResponseHeader) -> bool {
    let Ok(ir) = if_range.to_str() else {
        return false;
    };
    let ir = ir.trim();
    if ir.starts_with('"') {
        // strong comparison: both strong, same opaque tag
        return resp
            .headers
            .get(ETAG)
            .and_then(|e| e.to_str().ok())
            .is_some_and(|etag| etag.trim() == ir);
    }
    if ir.starts_with("W/") {
        return false;
    }
    let date_of = |name| {
        resp.headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
    };
    let (Ok(asked), Some(modified)) = (httpdate::parse_http_date(ir), date_of(LAST_MODIFIED))
    else {
        return false;
    };
    // RFC 9110 8.8.2.2: Last-Modified is strong only if at least a second before the Date
    let strong = date_of(DATE).is_some_and(|date: SystemTime| {
        modified
            .checked_add(Duration::from_secs(1))
            .is_some_and(|m| m <= date)
    });
    strong && asked == modified
}

/// The length of the complete body a seekable cache hit serves.
pub fn stored_body_len(hit: &HitHandler) -> Option<u64> {
    let any = hit.as_any();
    any.downcast_ref::<CompleteHit>()
        .map(|h| h.body_len() as u64)
        .or_else(|| any.downcast_ref::<StreamHit>().map(StreamHit::body_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).expect("header");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    fn allows(if_range: &str, r: &ResponseHeader) -> bool {
        if_range_allows(&HeaderValue::from_str(if_range).expect("value"), r)
    }

    #[test]
    fn etags_compare_strongly() {
        let strong = resp(&[("etag", "\"v1\"")]);
        let weak = resp(&[("etag", "W/\"v1\"")]);
        assert!(allows("\"v1\"", &strong));
        assert!(!allows("\"v2\"", &strong));
        assert!(!allows("W/\"v1\"", &strong));
        assert!(!allows("W/\"v1\"", &weak));
        assert!(!allows("\"v1\"", &weak));
        assert!(!allows("\"v1\"", &resp(&[])));
    }

    #[test]
    fn dates_match_only_a_strong_last_modified() {
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        let strong = resp(&[
            ("last-modified", lm),
            ("date", "Sun, 06 Nov 1994 09:00:00 GMT"),
        ]);
        let same_second = resp(&[("last-modified", lm), ("date", lm)]);
        let no_date = resp(&[("last-modified", lm)]);
        assert!(allows(lm, &strong));
        assert!(!allows("Sun, 06 Nov 1994 08:49:38 GMT", &strong));
        assert!(!allows(lm, &same_second));
        assert!(!allows(lm, &no_date));
        assert!(!allows("not a date", &strong));
    }
}
