//! Response field names stored as one-byte codes (head format 4).
//!
//! A code is `1 + index` into [`WELL_KNOWN`], with bit 7 set when the name was stored in
//! lowercase (as HTTP/2 origins and `http::HeaderName` spell it) rather than as the table
//! spells it (as HTTP/1 origins usually do); a name spelled any other way is stored as it is
//! (code 0). The table is part of the stored format: append only, never reorder.
//!
//! Format 5 also codes values: common field values ([`VALUES`], byte for byte), and HTTP dates
//! in their preferred form (IMF-fixdate), which are stored as a number of seconds (see
//! `entry::Value`). The values table is part of the stored format too.

/// Names with a code, as HTTP/1 origins usually spell them.
const WELL_KNOWN: [&str; 56] = [
    "Accept-Ranges",
    "Access-Control-Allow-Credentials",
    "Access-Control-Allow-Headers",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Origin",
    "Access-Control-Expose-Headers",
    "Access-Control-Max-Age",
    "Age",
    "Allow",
    "Alt-Svc",
    "Cache-Control",
    "Cache-Status",
    "Cache-Tag",
    "CDN-Cache-Control",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Location",
    "Content-Range",
    "Content-Security-Policy",
    "Content-Type",
    "Cross-Origin-Embedder-Policy",
    "Cross-Origin-Opener-Policy",
    "Cross-Origin-Resource-Policy",
    "Date",
    "ETag",
    "Expires",
    "Last-Modified",
    "Link",
    "Location",
    "NEL",
    "Permissions-Policy",
    "Pragma",
    "Referrer-Policy",
    "Report-To",
    "Retry-After",
    "Server",
    "Server-Timing",
    "Set-Cookie",
    "Strict-Transport-Security",
    "Surrogate-Control",
    "Surrogate-Key",
    "Timing-Allow-Origin",
    "Transfer-Encoding",
    "Vary",
    "Via",
    "WWW-Authenticate",
    "X-Cache",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-Powered-By",
    "X-Request-Id",
    "X-Robots-Tag",
    "X-XSS-Protection",
    "Content-MD5",
];

/// [`WELL_KNOWN`] in lowercase, index for index.
const LOWERCASE: [&str; 56] = [
    "accept-ranges",
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-origin",
    "access-control-expose-headers",
    "access-control-max-age",
    "age",
    "allow",
    "alt-svc",
    "cache-control",
    "cache-status",
    "cache-tag",
    "cdn-cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-security-policy",
    "content-type",
    "cross-origin-embedder-policy",
    "cross-origin-opener-policy",
    "cross-origin-resource-policy",
    "date",
    "etag",
    "expires",
    "last-modified",
    "link",
    "location",
    "nel",
    "permissions-policy",
    "pragma",
    "referrer-policy",
    "report-to",
    "retry-after",
    "server",
    "server-timing",
    "set-cookie",
    "strict-transport-security",
    "surrogate-control",
    "surrogate-key",
    "timing-allow-origin",
    "transfer-encoding",
    "vary",
    "via",
    "www-authenticate",
    "x-cache",
    "x-content-type-options",
    "x-frame-options",
    "x-powered-by",
    "x-request-id",
    "x-robots-tag",
    "x-xss-protection",
    "content-md5",
];

/// Field values with a code (format 5), byte for byte as origins send them: append only.
const VALUES: [&str; 48] = [
    "bytes",
    "none",
    "application/octet-stream",
    "application/json",
    "application/json; charset=utf-8",
    "application/javascript",
    "application/javascript; charset=utf-8",
    "text/javascript",
    "text/javascript; charset=utf-8",
    "text/css",
    "text/css; charset=utf-8",
    "text/html",
    "text/html; charset=utf-8",
    "text/html; charset=UTF-8",
    "text/plain",
    "text/plain; charset=utf-8",
    "text/plain; charset=UTF-8",
    "text/xml",
    "application/xml",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "image/svg+xml",
    "image/x-icon",
    "font/woff2",
    "font/woff",
    "video/mp4",
    "application/wasm",
    "gzip",
    "br",
    "zstd",
    "chunked",
    "Accept-Encoding",
    "accept-encoding",
    "Origin",
    "Accept-Encoding, Origin",
    "nosniff",
    "SAMEORIGIN",
    "DENY",
    "*",
    "no-cache",
    "no-store",
    "private",
    "public",
    "max-age=31536000",
    "public, max-age=31536000, immutable",
];

/// The code of a field value (1-based index into [`VALUES`]), if it has one.
pub(super) fn value_code(value: &[u8]) -> Option<u64> {
    VALUES
        .iter()
        .position(|v| v.as_bytes() == value)
        .map(|i| i as u64 + 1)
}

/// The value a code from [`value_code`] stands for; `None` for an unknown code.
pub(super) fn value(code: u64) -> Option<&'static str> {
    let i = usize::try_from(code).ok()?.checked_sub(1)?;
    VALUES.get(i).copied()
}

/// Code 0: the name follows, stored as it is.
pub(super) const LITERAL: u8 = 0;
const LOWER: u8 = 0x80;

/// The code of `name` in its exact spelling, if it has one.
pub(super) fn code(name: &[u8]) -> Option<u8> {
    let i = LOWERCASE
        .iter()
        .position(|n| n.len() == name.len() && n.as_bytes().eq_ignore_ascii_case(name))?;
    // at most 56 entries: the index fits the low 7 bits
    let base = i as u8 + 1;
    if name == WELL_KNOWN[i].as_bytes() {
        Some(base)
    } else if name == LOWERCASE[i].as_bytes() {
        Some(base | LOWER)
    } else {
        None
    }
}

/// The name a code other than [`LITERAL`] stands for; `None` for an unknown code.
pub(super) fn name(code: u8) -> Option<&'static [u8]> {
    let i = usize::from(code & !LOWER).checked_sub(1)?;
    let table = if code & LOWER == 0 {
        &WELL_KNOWN
    } else {
        &LOWERCASE
    };
    table.get(i).map(|n| n.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_agree_and_every_spelling_round_trips() {
        for (w, l) in WELL_KNOWN.iter().zip(LOWERCASE) {
            assert_eq!(w.to_ascii_lowercase(), l);
            for spelling in [*w, l] {
                let c = code(spelling.as_bytes()).unwrap();
                assert_eq!(name(c), Some(spelling.as_bytes()));
            }
        }
        assert_eq!(
            code(b"CONTENT-TYPE"),
            None,
            "other spellings are stored as they are"
        );
        assert_eq!(code(b"x-unknown"), None);
        assert_eq!(name(LITERAL), None);
        assert_eq!(name(LOWER), None);
        assert_eq!(name(WELL_KNOWN.len() as u8 + 1), None);
    }

    #[test]
    fn every_value_round_trips_and_codes_are_exact() {
        for v in VALUES {
            assert_eq!(value(value_code(v.as_bytes()).unwrap()), Some(v));
        }
        assert_eq!(value_code(b"BYTES"), None);
        assert_eq!(value_code(b"bytes "), None);
        assert_eq!(value(0), None);
        assert_eq!(value(VALUES.len() as u64 + 1), None);
        let mut sorted = VALUES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), VALUES.len(), "no value twice");
    }
}
