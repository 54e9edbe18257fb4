//! Request hardening: size limits on what a client sends, and message framing that could be
//! read two ways (request smuggling, RFC 9112 6.3 and 11.2) refused before anything is
//! forwarded. Hop-by-hop fields (RFC 9110 7.6.1) are removed from forwarded messages.

use crate::config::LimitsConfig;
use http::header::{self, HeaderMap, HeaderName};
use pingora_http::RequestHeader;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// HTTP/1.1 without `Host` (RFC 9112 3.2).
    MissingHost,
    /// Request target longer than `limits.max_uri_bytes`.
    UriTooLong,
    /// More header fields than `limits.max_headers`.
    TooManyHeaders,
    /// Request line and fields larger than `limits.max_header_bytes`.
    HeaderTooLarge,
    /// Both `Content-Length` and `Transfer-Encoding`.
    ConflictingFraming,
    /// `Content-Length` not one non-negative integer (or several different ones).
    BadContentLength,
    /// A transfer coding other than a final `chunked`.
    BadTransferEncoding,
    /// A body larger than `limits.max_body_bytes`.
    BodyTooLarge,
    /// The body did not arrive within `limits.body_timeout` between reads.
    BodyTimeout,
    /// The request already passed this node (RFC 8586 `CDN-Loop`, or `Via`): a forwarding loop.
    Loop,
    /// A malformed request line: a control byte or a space in the target (RFC 9112 3.2), which
    /// Pingora's parser rewrote ([`super::request_line`]). The requests that parser refuses
    /// itself are counted with the same reason ([`super::connections`]).
    Malformed,
}

impl Rejection {
    /// The status answered.
    pub fn status(self) -> u16 {
        match self {
            Rejection::UriTooLong => 414,
            Rejection::TooManyHeaders | Rejection::HeaderTooLarge => 431,
            Rejection::BodyTooLarge => 413,
            Rejection::BodyTimeout => 408,
            Rejection::Loop => 508,
            Rejection::BadTransferEncoding => 501,
            Rejection::MissingHost
            | Rejection::ConflictingFraming
            | Rejection::BadContentLength
            | Rejection::Malformed => 400,
        }
    }

    /// The metrics label and log reason.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::MissingHost => "missing_host",
            Rejection::UriTooLong => "uri_too_long",
            Rejection::TooManyHeaders => "too_many_headers",
            Rejection::HeaderTooLarge => "header_too_large",
            Rejection::ConflictingFraming => "conflicting_framing",
            Rejection::BadContentLength => "bad_content_length",
            Rejection::BadTransferEncoding => "bad_transfer_encoding",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::Loop => "loop",
            Rejection::Malformed => "malformed",
        }
    }

    /// The response body.
    pub fn message(self) -> &'static str {
        match self {
            Rejection::MissingHost => "400 Bad Request: missing Host header\n",
            Rejection::UriTooLong => "414 URI Too Long\n",
            Rejection::TooManyHeaders => "431 Request Header Fields Too Large: too many fields\n",
            Rejection::HeaderTooLarge => "431 Request Header Fields Too Large\n",
            Rejection::ConflictingFraming => {
                "400 Bad Request: both Content-Length and Transfer-Encoding\n"
            }
            Rejection::BadContentLength => "400 Bad Request: invalid Content-Length\n",
            Rejection::BadTransferEncoding => {
                "501 Not Implemented: unsupported Transfer-Encoding\n"
            }
            Rejection::BodyTooLarge => "413 Content Too Large\n",
            Rejection::BodyTimeout => "408 Request Timeout: the request body stalled\n",
            Rejection::Loop => {
                "508 Loop Detected: this request already passed this node (CDN-Loop or Via); \
                 node names must be unique along a chain of nodes\n"
            }
            Rejection::Malformed => {
                "400 Bad Request: a control character or a space in the request target\n"
            }
        }
    }

    /// Every reason, for metrics registered up front.
    pub const ALL: [Rejection; 11] = [
        Rejection::MissingHost,
        Rejection::UriTooLong,
        Rejection::TooManyHeaders,
        Rejection::HeaderTooLarge,
        Rejection::ConflictingFraming,
        Rejection::BadContentLength,
        Rejection::BadTransferEncoding,
        Rejection::BodyTooLarge,
        Rejection::BodyTimeout,
        Rejection::Loop,
        Rejection::Malformed,
    ];
}

/// The body length `Content-Length` announces: `Ok(None)` without one, an error if it is not
/// one non-negative integer (repeated identical values are allowed, RFC 9110 8.6).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Rejection> {
    let mut found: Option<u64> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        let text = v.to_str().map_err(|_| Rejection::BadContentLength)?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Rejection::BadContentLength);
            }
            let n: u64 = part.parse().map_err(|_| Rejection::BadContentLength)?;
            if found.is_some_and(|f| f != n) {
                return Err(Rejection::BadContentLength);
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Whether a raw request header has a `Content-Length` field line.
fn raw_has_content_length(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n')
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// Check a request header against `limits` and for ambiguous framing. `raw` is the header as
/// received, when it carries `Transfer-Encoding` (Pingora drops a `Content-Length` sent with
/// it, as RFC 9112 6.3 allows; we refuse such requests, as 6.1 also allows).
pub fn check_request(
    limits: &LimitsConfig,
    req: &RequestHeader,
    raw: Option<&[u8]>,
) -> Result<(), Rejection> {
    let uri_len = req.raw_path().len() as u64;
    if uri_len > limits.max_uri_bytes {
        return Err(Rejection::UriTooLong);
    }
    if req.headers.len() > limits.max_headers {
        return Err(Rejection::TooManyHeaders);
    }
    let fields: u64 = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64)
        .sum();
    if uri_len + fields + 16 > limits.max_header_bytes {
        return Err(Rejection::HeaderTooLarge);
    }
    let length = content_length(&req.headers)?;
    let mut codings = req
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .peekable();
    if codings.peek().is_some() {
        if length.is_some() || raw.is_some_and(raw_has_content_length) {
            return Err(Rejection::ConflictingFraming);
        }
        // only `chunked`, once, last (RFC 9112 6.1): anything else cannot be framed safely
        let all: Vec<String> = codings
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty())
            .collect();
        if all != ["chunked"] {
            return Err(Rejection::BadTransferEncoding);
        }
    }
    if length.is_some_and(|n| n > limits.max_body_bytes) {
        return Err(Rejection::BodyTooLarge);
    }
    Ok(())
}

/// Fields that describe one connection (RFC 9110 7.6.1), never stored nor passed on as they
/// came, besides those `Connection` names.
pub static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// The fields the `Connection` header of `headers` names.
pub fn connection_named(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
}

/// The hop-by-hop fields of a message about to be forwarded: the standard ones and those listed
/// in `Connection` (`Connection` itself and `Upgrade` stay for Pingora, which manages the
/// connection).
pub fn hop_by_hop(headers: &HeaderMap) -> Vec<HeaderName> {
    let managed = |n: &str| matches!(n, "connection" | "upgrade");
    connection_named(headers)
        .filter(|n| {
            !matches!(n.as_str(), "close" | "keep-alive" | "host")
                && !managed(n.as_str())
                && headers.contains_key(n)
        })
        .chain(
            HOP_BY_HOP
                .iter()
                .filter(|n| !managed(n.as_str()) && headers.contains_key(*n))
                .cloned(),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> LimitsConfig {
        LimitsConfig {
            max_connections: 10,
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            max_header_bytes: 1024,
            max_headers: 10,
            max_uri_bytes: 100,
            max_body_bytes: 1000,
        }
    }

    fn check_request_(l: &LimitsConfig, r: &RequestHeader) -> Result<(), Rejection> {
        check_request(l, r, None)
    }

    fn req(uri: &str, fields: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", uri.as_bytes(), None).expect("request");
        for (k, v) in fields {
            r.append_header(k.to_string(), *v).expect("field");
        }
        r
    }

    #[test]
    fn sizes_are_limited() {
        let l = limits();
        assert_eq!(check_request_(&l, &req("/ok", &[("Host", "a")])), Ok(()));
        let long = format!("/{}", "a".repeat(100));
        assert_eq!(
            check_request_(&l, &req(&long, &[])),
            Err(Rejection::UriTooLong)
        );
        let many: Vec<(String, &str)> = (0..11).map(|i| (format!("x-{i}"), "v")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            check_request_(&l, &req("/", &many)),
            Err(Rejection::TooManyHeaders)
        );
        let big = "v".repeat(1000);
        assert_eq!(
            check_request_(&l, &req("/", &[("x-big", &big)])),
            Err(Rejection::HeaderTooLarge)
        );
        assert_eq!(
            check_request_(&l, &req("/", &[("Content-Length", "1001")])),
            Err(Rejection::BodyTooLarge)
        );
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let l = limits();
        type Case<'a> = (&'a [(&'a str, &'a str)], Result<(), Rejection>);
        let cases: [Case; 9] = [
            (
                &[("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
                Err(Rejection::ConflictingFraming),
            ),
            (
                &[("Content-Length", "5"), ("Content-Length", "6")],
                Err(Rejection::BadContentLength),
            ),
            (
                &[("Content-Length", "5, 6")],
                Err(Rejection::BadContentLength),
            ),
            (&[("Content-Length", "5, 5")], Ok(())),
            (
                &[("Content-Length", "-1")],
                Err(Rejection::BadContentLength),
            ),
            (
                &[("Content-Length", "+5")],
                Err(Rejection::BadContentLength),
            ),
            (
                &[("Transfer-Encoding", "gzip, chunked")],
                Err(Rejection::BadTransferEncoding),
            ),
            (
                &[
                    ("Transfer-Encoding", "chunked"),
                    ("Transfer-Encoding", "chunked"),
                ],
                Err(Rejection::BadTransferEncoding),
            ),
            (&[("Transfer-Encoding", "Chunked")], Ok(())),
        ];
        for (fields, want) in cases {
            assert_eq!(check_request_(&l, &req("/", fields)), want, "{fields:?}");
        }
        // Pingora removed the Content-Length it received with Transfer-Encoding
        let te = req("/", &[("Transfer-Encoding", "chunked")]);
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            check_request(&l, &te, Some(raw)),
            Err(Rejection::ConflictingFraming)
        );
    }

    #[test]
    fn hop_by_hop_fields_and_those_named_in_connection_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ] {
            h.append(k, v.parse().expect("value"));
        }
        let gone: Vec<String> = hop_by_hop(&h).iter().map(|n| n.to_string()).collect();
        assert_eq!(gone, ["x-secret", "keep-alive", "proxy-connection", "te"]);
    }
}
