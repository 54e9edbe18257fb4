//! RFC 9110 section 14 range requests answered from the cache: single, open-ended, suffix and
//! clamped ranges, 416, invalid `Range` fields, multipart/byteranges, ranged misses, `HEAD`,
//! `If-Range`, and the same answers from the disk tier (disk-only, and after a restart).
//!
//! Every object is 10,000 bytes of 5-byte records `<tag><3 hex digits>\n`, each record distinct
//! within an object and the tag distinct across objects, so that any wrong offset or any mix-up
//! of objects changes the bytes compared.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use common::disk::{assert_segments, only_record_for, records, Kind};
use common::*;

/// Length of every test object.
const LEN: usize = 10_000;

/// Deadline for background work (disk writes) to show up in the metrics.
const WAIT: Duration = Duration::from_secs(10);

const TIER_HITS: &str = "outpost_cache_tier_hits_total";
const MEMORY: &[(&str, &str)] = &[("tier", "memory")];
const DISK: &[(&str, &str)] = &[("tier", "disk")];

/// The 10,000-byte body of the object tagged `tag`.
fn body_of(tag: char) -> Vec<u8> {
    let out: Vec<u8> = (0..LEN / 5)
        .flat_map(|k| format!("{tag}{k:03x}\n").into_bytes())
        .collect();
    assert_eq!(out.len(), LEN);
    out
}

/// A cacheable 200 with an explicit Content-Length (the origin always sends one).
fn cacheable(body: Vec<u8>) -> Reply {
    Reply::ok(body)
        .header("Cache-Control", "max-age=600")
        .header("Content-Type", "application/octet-stream")
}

/// GET `path` with a `Range` header and read the whole response; transport errors panic with
/// the node's log tail.
fn get_range(node: &Node, path: &str, range: &str) -> Fetched {
    try_fetch(
        node.client()
            .get(node.url(path))
            .header("Range", range)
            .send(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "GET {path} Range: {range}: {e}\n--- log (tail) ---\n{}",
            node.log_tail(60)
        )
    })
}

/// GET `path` with extra headers; transport errors panic with the node's log tail.
fn get_headers(node: &Node, path: &str, headers: &[(&str, &str)]) -> Fetched {
    let mut rb = node.client().get(node.url(path));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    try_fetch(rb.send()).unwrap_or_else(|e| {
        panic!(
            "GET {path} {headers:?}: {e}\n--- log (tail) ---\n{}",
            node.log_tail(60)
        )
    })
}

/// Where two byte strings first differ, for failure messages.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "first difference at offset {i}: got {:?}, expected {:?}",
            String::from_utf8_lossy(&a[i..(i + 12).min(a.len())]),
            String::from_utf8_lossy(&b[i..(i + 12).min(b.len())])
        ),
        None => format!("lengths differ: got {}, expected {}", a.len(), b.len()),
    }
}

/// A 206 carrying exactly bytes `first..=last` of `full`.
fn assert_partial(f: &Fetched, full: &[u8], first: usize, last: usize, what: &str) {
    assert_eq!(
        f.status,
        206,
        "{what}: status (Cache-Status {:?}, Content-Range {:?})",
        f.cache_status(),
        f.header("content-range")
    );
    assert_eq!(
        f.header("content-range").as_deref(),
        Some(format!("bytes {first}-{last}/{}", full.len()).as_str()),
        "{what}: Content-Range"
    );
    let want = &full[first..=last];
    assert_eq!(
        f.header("content-length").as_deref(),
        Some(want.len().to_string().as_str()),
        "{what}: Content-Length"
    );
    assert!(
        f.body == want,
        "{what}: body is not bytes {first}..={last}: {}",
        first_difference(&f.body, want)
    );
    assert!(
        f.header("transfer-encoding").is_none(),
        "{what}: Transfer-Encoding {:?} beside Content-Length",
        f.header("transfer-encoding")
    );
}

/// A 200 carrying exactly `full`, and no Content-Range.
fn assert_full(f: &Fetched, full: &[u8], what: &str) {
    assert_eq!(
        f.status,
        200,
        "{what}: status (Cache-Status {:?}, Content-Range {:?})",
        f.cache_status(),
        f.header("content-range")
    );
    assert!(
        f.body == full,
        "{what}: body is not the whole object: {}",
        first_difference(&f.body, full)
    );
    assert_eq!(
        f.header("content-length").as_deref(),
        Some(full.len().to_string().as_str()),
        "{what}: Content-Length"
    );
    assert!(
        f.header("content-range").is_none(),
        "{what}: Content-Range {:?} on a 200",
        f.header("content-range")
    );
}

/// A 416 for an object of `len` bytes: `Content-Range: bytes */len`, no object bytes.
fn assert_unsatisfiable(f: &Fetched, len: usize, what: &str) {
    assert_eq!(
        f.status,
        416,
        "{what}: status (Cache-Status {:?}, Content-Range {:?})",
        f.cache_status(),
        f.header("content-range")
    );
    assert_eq!(
        f.header("content-range").as_deref(),
        Some(format!("bytes */{len}").as_str()),
        "{what}: Content-Range of a 416"
    );
    assert_eq!(
        f.header("content-length").as_deref(),
        Some(f.body.len().to_string().as_str()),
        "{what}: Content-Length does not match the body sent"
    );
    assert!(
        f.body.is_empty(),
        "{what}: the 416 carries {} body bytes: {:?}",
        f.body.len(),
        f.text()
    );
}

/// One part of a `multipart/byteranges` body.
struct Part {
    /// Header fields, names lowercased.
    headers: Vec<(String, String)>,
    data: Vec<u8>,
}

/// The parts of a `multipart/byteranges` body.
fn multipart_parts(body: &[u8], boundary: &str) -> Vec<Part> {
    let delim = format!("--{boundary}").into_bytes();
    let find = |from: usize| {
        body[from..]
            .windows(delim.len())
            .position(|w| w == delim.as_slice())
            .map(|i| i + from)
    };
    let mut parts = Vec::new();
    let mut at = find(0).expect("no boundary delimiter in the multipart body");
    loop {
        let after = at + delim.len();
        if body[after..].starts_with(b"--") {
            break; // close delimiter
        }
        assert!(
            body[after..].starts_with(b"\r\n"),
            "no CRLF after a boundary delimiter"
        );
        let start = after + 2;
        let next = find(start).expect("multipart body without a close delimiter");
        // The CRLF before the next delimiter belongs to the delimiter (RFC 2046 5.1.1).
        let part = &body[start..next];
        let part = part
            .strip_suffix(b"\r\n")
            .expect("no CRLF before a delimiter");
        let split = part
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("part without a blank line after its headers");
        let headers = String::from_utf8_lossy(&part[..split])
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        parts.push(Part {
            headers,
            data: part[split + 4..].to_vec(),
        });
        at = next;
    }
    parts
}

fn part_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Reads one response head (up to and including the blank line) from `buf`+`s`; returns the
/// head's text and leaves whatever followed it in `buf`.
fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).to_string();
            buf.drain(..i + 4);
            return head;
        }
        let mut tmp = [0u8; 8192];
        let n = s.read(&mut tmp).expect("read response head");
        assert!(n > 0, "connection closed before a full response head");
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// The value of header `name` in a raw response head.
fn head_field(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Sends `HEAD path` with `Range: range` on a raw connection, then `GET path` on the same
/// connection. Returns the HEAD's head, and whatever the connection carried after it up to EOF
/// (which must be the GET's response and nothing else: a HEAD response has no body).
fn head_then_get(node: &Node, path: &str, range: &str) -> (String, Vec<u8>) {
    let host = node.addr().to_string();
    let mut s = TcpStream::connect(node.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "HEAD {path} HTTP/1.1\r\nHost: {host}\r\nRange: {range}\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut s, &mut buf);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s.read_to_end(&mut buf).expect("read to EOF");
    (head, buf)
}

/// The cache directory the harness configures: `<tempdir>/cache`.
fn cache_dir(cfg: &NodeConfig) -> PathBuf {
    cfg.dir().join("cache")
}

/// Fills `path` with a plain GET: a stored miss with the whole body.
fn fill(node: &Node, path: &str, full: &[u8]) {
    let r = get_headers(node, path, &[]);
    assert_full(&r, full, &format!("{path}: filling GET"));
    assert_stored_miss(&r, &format!("{path}: filling GET"));
}

// ---------------------------------------------------------------------------------------------
// Ranges of a cached object (memory tier)
// ---------------------------------------------------------------------------------------------

/// `(Range, first byte, last byte)` of the satisfiable single ranges checked on every tier.
const SINGLE_RANGES: &[(&str, usize, usize)] = &[
    ("bytes=0-99", 0, 99),
    ("bytes=100-199", 100, 199),
    ("bytes=9990-", 9990, 9999),
    ("bytes=-50", 9950, 9999),
    ("bytes=9990-20000", 9990, 9999),
];

#[test]
fn cached_object_serves_single_open_suffix_and_clamped_ranges_as_exact_206_slices() {
    let origin = TestOrigin::start();
    let full = body_of('a');
    origin.set("/obj", cacheable(full.clone()));
    let node = NodeConfig::new(&origin.url()).start();
    fill(&node, "/obj", &full);

    let edge_cases: &[(&str, usize, usize)] = &[
        ("bytes=0-0", 0, 0),
        ("bytes=9999-9999", 9999, 9999),
        ("bytes=9999-", 9999, 9999),
        ("bytes=-1", 9999, 9999),
        ("bytes=0-9999", 0, 9999),
        ("bytes=-10000", 0, 9999),
        ("bytes=-20000", 0, 9999),
        ("bytes=5000-5004", 5000, 5004),
    ];
    for &(range, first, last) in SINGLE_RANGES.iter().chain(edge_cases) {
        let r = get_range(&node, "/obj", range);
        let what = format!("cached /obj, Range: {range}");
        assert_partial(&r, &full, first, last, &what);
        assert_hit(&r, &what);
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/octet-stream"),
            "{what}: Content-Type of a single-part 206"
        );
    }
    assert_eq!(
        origin.hits("/obj"),
        1,
        "ranges of a cached object went to the origin"
    );
}

#[test]
fn unsatisfiable_range_on_cached_object_answers_416_with_star_content_range() {
    let origin = TestOrigin::start();
    let full = body_of('b');
    origin.set("/obj", cacheable(full.clone()));
    let node = NodeConfig::new(&origin.url()).start();
    fill(&node, "/obj", &full);

    for range in ["bytes=20000-30000", "bytes=10000-", "bytes=10000-10000"] {
        let r = get_range(&node, "/obj", range);
        let what = format!("cached /obj, Range: {range}");
        assert_unsatisfiable(&r, LEN, &what);
        assert_hit(&r, &what);
    }
    // The 416s did not disturb the stored object.
    let r = get_headers(&node, "/obj", &[]);
    assert_full(&r, &full, "plain GET after the 416s");
    assert_hit(&r, "plain GET after the 416s");
    assert_eq!(origin.hits("/obj"), 1, "416s went to the origin");
}

#[test]
fn invalid_or_unknown_unit_range_is_ignored_and_answered_with_the_full_200() {
    let origin = TestOrigin::start();
    let full = body_of('c');
    origin.set("/obj", cacheable(full.clone()));
    let node = NodeConfig::new(&origin.url()).start();
    fill(&node, "/obj", &full);

    for range in [
        "items=0-1",
        "bytes=abc",
        "bytes=0-abc",
        "bytes 0-99",
        "0-99",
        "bytes=1-2-3",
    ] {
        let r = get_range(&node, "/obj", range);
        let what = format!("cached /obj, Range: {range}");
        assert_full(&r, &full, &what);
        assert_hit(&r, &what);
    }
    assert_eq!(origin.hits("/obj"), 1);
}

#[test]
fn multi_range_on_cached_object_answers_multipart_byteranges_with_exact_parts() {
    let origin = TestOrigin::start();
    let full = body_of('d');
    origin.set("/obj", cacheable(full.clone()));
    let node = NodeConfig::new(&origin.url()).start();
    fill(&node, "/obj", &full);

    let cases: &[(&str, &[(usize, usize)])] = &[
        ("bytes=0-9,20-29", &[(0, 9), (20, 29)]),
        (
            "bytes=0-0,5000-5099,-10",
            &[(0, 0), (5000, 5099), (9990, 9999)],
        ),
        // An unsatisfiable range-spec among satisfiable ones is dropped.
        ("bytes=100-109,20000-30000,200-", &[(100, 109), (200, 9999)]),
    ];
    for &(range, want) in cases {
        let r = get_range(&node, "/obj", range);
        let what = format!("cached /obj, Range: {range}");
        assert_hit(&r, &what);
        assert_eq!(
            r.status,
            206,
            "{what}: status (Content-Type {:?})",
            r.header("content-type")
        );
        assert!(
            r.header("content-range").is_none(),
            "{what}: a multipart 206 must not carry a top-level Content-Range"
        );
        let ct = r.header("content-type").unwrap_or_default();
        let boundary = ct
            .strip_prefix("multipart/byteranges; boundary=")
            .unwrap_or_else(|| panic!("{what}: Content-Type {ct:?}"))
            .trim_matches('"')
            .to_string();
        assert_eq!(
            r.header("content-length").as_deref(),
            Some(r.body.len().to_string().as_str()),
            "{what}: Content-Length does not match the multipart body"
        );
        let parts = multipart_parts(&r.body, &boundary);
        assert_eq!(
            parts.len(),
            want.len(),
            "{what}: number of parts in:\n{}",
            String::from_utf8_lossy(&r.body)
        );
        for (Part { headers, data }, &(first, last)) in parts.iter().zip(want) {
            assert_eq!(
                part_header(headers, "content-range"),
                Some(format!("bytes {first}-{last}/{LEN}").as_str()),
                "{what}: part Content-Range"
            );
            assert_eq!(
                part_header(headers, "content-type"),
                Some("application/octet-stream"),
                "{what}: part Content-Type"
            );
            assert!(
                data.as_slice() == &full[first..=last],
                "{what}: part {first}-{last}: {}",
                first_difference(data, &full[first..=last])
            );
        }
    }
    assert_eq!(origin.hits("/obj"), 1);
}

#[test]
fn overlapping_or_descending_multi_range_is_answered_with_the_full_200() {
    let origin = TestOrigin::start();
    let full = body_of('e');
    origin.set("/obj", cacheable(full.clone()));
    let node = NodeConfig::new(&origin.url()).start();
    fill(&node, "/obj", &full);

    // RFC 9110 14.2 / 17.15: a server may ignore overlapping or out-of-order range sets. Outpost
    // (Pingora's range filter) does, and sends the whole object.
    for range in ["bytes=0-50,40-60", "bytes=500-599,0-9", "bytes=0-,-2"] {
        let r = get_range(&node, "/obj", range);
        let what = format!("cached /obj, Range: {range}");
        assert_full(&r, &full, &what);
        assert_hit(&r, &what);
    }
    assert_eq!(origin.hits("/obj"), 1);
}

// ---------------------------------------------------------------------------------------------
// Misses
// ---------------------------------------------------------------------------------------------

#[test]
fn range_request_on_a_miss_answers_the_range_and_caches_the_whole_object() {
    let origin = TestOrigin::start();
    let full = body_of('f');
    origin.set("/obj", cacheable(full.clone()));
    let node = NodeConfig::new(&origin.url()).start();

    let r = get_range(&node, "/obj", "bytes=100-199");
    assert_partial(&r, &full, 100, 199, "ranged miss");
    assert_stored_miss(&r, "ranged miss");
    let seen = origin.requests("/obj");
    assert_eq!(seen.len(), 1, "origin requests for the ranged miss");
    // forwarded as a range (partial content, tests/rfc9111_partial.rs); this origin
    // answers the whole, which is stored
    assert_eq!(seen[0].header("range").as_deref(), Some("bytes=100-199"));

    let r = get_headers(&node, "/obj", &[]);
    assert_full(&r, &full, "plain GET after a ranged miss");
    assert_hit(&r, "plain GET after a ranged miss");
    let r = get_range(&node, "/obj", "bytes=-50");
    assert_partial(&r, &full, 9950, 9999, "ranged GET after a ranged miss");
    assert_hit(&r, "ranged GET after a ranged miss");
    assert_eq!(origin.hits("/obj"), 1);
}

#[test]
fn unsatisfiable_range_on_a_miss_answers_416_and_caches_the_whole_object() {
    let origin = TestOrigin::start();
    let full = body_of('g');
    origin.set("/obj", cacheable(full.clone()));
    let node = NodeConfig::new(&origin.url()).start();

    let r = get_range(&node, "/obj", "bytes=20000-30000");
    assert_unsatisfiable(&r, LEN, "unsatisfiable ranged miss");
    let r = get_headers(&node, "/obj", &[]);
    assert_full(&r, &full, "plain GET after a 416 miss");
    assert_hit(&r, "plain GET after a 416 miss");
    assert_eq!(origin.hits("/obj"), 1);
}

#[test]
fn range_miss_on_a_range_capable_origin_still_caches_the_whole_object() {
    // An origin that honours Range: were the Range forwarded, it would answer 206. With
    // `partial_size = "0"` (the nginx / Varnish way) the Range is not forwarded.
    let origin = TestOrigin::start();
    let full = body_of('h');
    let served = full.clone();
    origin.set_handler("/obj", move |req, _| {
        let whole = cacheable(served.clone()).header("Accept-Ranges", "bytes");
        let Some(range) = req.header("range") else {
            return whole;
        };
        let Some((a, b)) = range
            .strip_prefix("bytes=")
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        else {
            return whole;
        };
        Reply::new(206)
            .header("Cache-Control", "max-age=600")
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", &format!("bytes {a}-{b}/{}", served.len()))
            .body(served[a..=b].to_vec())
    });
    let node = NodeConfig::new(&origin.url())
        .cache("partial_size = \"0\"")
        .start();

    let r = get_range(&node, "/obj", "bytes=300-399");
    assert_partial(&r, &full, 300, 399, "ranged miss");
    assert_eq!(origin.requests("/obj")[0].header("range"), None);
    let r = get_headers(&node, "/obj", &[]);
    assert_full(&r, &full, "plain GET after a ranged miss");
    assert_hit(&r, "plain GET after a ranged miss");
    assert_eq!(origin.hits("/obj"), 1);
}

/// Concurrent ranged misses on one key, while the origin is slow to answer: one origin request,
/// and every client gets exactly its bytes (a 206 slice, or the whole object in a 200 where the
/// range could not be applied, e.g. to a fill still streaming).
fn concurrent_ranged_misses(cache_toml: &str) {
    let origin = TestOrigin::start();
    let full = body_of('u');
    origin.set(
        "/obj",
        cacheable(full.clone()).delay(Duration::from_millis(500)),
    );
    let node = NodeConfig::new(&origin.url()).cache(cache_toml).start();
    let ranges: &[(&str, usize, usize)] = &[
        ("bytes=0-99", 0, 99),
        ("bytes=100-199", 100, 199),
        ("bytes=-50", 9950, 9999),
        ("bytes=9990-", 9990, 9999),
        ("bytes=5000-5999", 5000, 5999),
        ("bytes=0-", 0, 9999),
    ];
    let answers: Vec<Fetched> = std::thread::scope(|s| {
        let handles: Vec<_> = ranges
            .iter()
            .map(|&(range, _, _)| {
                let node = &node;
                s.spawn(move || get_range(node, "/obj", range))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (r, &(range, first, last)) in answers.iter().zip(ranges) {
        let what = format!("{cache_toml:?}: concurrent ranged miss, Range: {range}");
        match r.status {
            206 => assert_partial(r, &full, first, last, &what),
            _ => assert_full(r, &full, &what),
        }
    }
    assert_eq!(origin.hits("/obj"), 1, "{cache_toml:?}: origin requests");
    // Afterwards, ranges are hits with exact slices.
    for &(range, first, last) in ranges {
        let r = get_range(&node, "/obj", range);
        let what = format!("{cache_toml:?}: Range: {range} after the fill");
        assert_partial(&r, &full, first, last, &what);
        assert_hit(&r, &what);
    }
    assert_eq!(origin.hits("/obj"), 1);
}

#[test]
fn concurrent_ranged_misses_make_one_origin_request_and_each_get_their_bytes() {
    concurrent_ranged_misses("stream_fills = false");
}

#[test]
fn concurrent_ranged_misses_with_streaming_fills_each_get_their_bytes() {
    concurrent_ranged_misses("stream_fills = true");
}

// ---------------------------------------------------------------------------------------------
// HEAD
// ---------------------------------------------------------------------------------------------

/// `HEAD` with `Range` gets the head a `GET` with that `Range` would get (RFC 9110 9.3.2), as
/// nginx and Apache answer; RFC 9110 14.2 defines range handling for GET only, so a 200 head
/// would also be defensible, but a body never is.
#[test]
fn head_with_range_on_cached_object_answers_206_head_without_a_body() {
    let origin = TestOrigin::start();
    let full = body_of('i');
    origin.set("/obj", cacheable(full.clone()));
    let node = NodeConfig::new(&origin.url()).start();
    fill(&node, "/obj", &full);

    let (head, rest) = head_then_get(&node, "/obj", "bytes=0-99");
    let status_line = head.lines().next().unwrap_or("");
    assert!(
        status_line.starts_with("HTTP/1.1 206"),
        "HEAD with Range on a cached object: {status_line:?}\n{head}"
    );
    assert_eq!(
        head_field(&head, "content-range").as_deref(),
        Some("bytes 0-99/10000"),
        "HEAD with Range: Content-Range\n{head}"
    );
    assert_eq!(
        head_field(&head, "content-length").as_deref(),
        Some("100"),
        "HEAD with Range: Content-Length\n{head}"
    );
    let cs = head_field(&head, "cache-status").unwrap_or_default();
    assert!(cs_has(&cs, "hit"), "HEAD with Range: Cache-Status {cs:?}");
    // Nothing but the next response follows the HEAD's head on the connection.
    assert!(
        rest.starts_with(b"HTTP/1.1 200"),
        "after the HEAD's head the connection carried {:?}",
        String::from_utf8_lossy(&rest[..rest.len().min(80)])
    );
    assert!(
        rest.ends_with(&full),
        "the GET after the HEAD did not end with the whole object"
    );

    // An unsatisfiable Range on HEAD: the same 416 head as GET, no body either.
    let (head, rest) = head_then_get(&node, "/obj", "bytes=20000-");
    assert!(
        head.starts_with("HTTP/1.1 416"),
        "HEAD with an unsatisfiable Range: {head}"
    );
    assert_eq!(
        head_field(&head, "content-range").as_deref(),
        Some("bytes */10000")
    );
    assert!(rest.starts_with(b"HTTP/1.1 200"));
    assert_eq!(origin.hits("/obj"), 1);
}

// ---------------------------------------------------------------------------------------------
// If-Range
// ---------------------------------------------------------------------------------------------

#[test]
fn if_range_with_matching_etag_gives_206_and_with_another_etag_the_full_200() {
    let origin = TestOrigin::start();
    let full = body_of('j');
    origin.set("/obj", cacheable(full.clone()).header("ETag", "\"v1\""));
    let node = NodeConfig::new(&origin.url()).start();
    fill(&node, "/obj", &full);

    let r = get_headers(
        &node,
        "/obj",
        &[("Range", "bytes=0-99"), ("If-Range", "\"v1\"")],
    );
    assert_partial(&r, &full, 0, 99, "If-Range with the current ETag");
    assert_hit(&r, "If-Range with the current ETag");

    for other in ["\"v0\"", "\"v1-old\"", "W/\"v1\""] {
        let what = format!("If-Range: {other} (not the current strong ETag)");
        let r = get_headers(
            &node,
            "/obj",
            &[("Range", "bytes=0-99"), ("If-Range", other)],
        );
        assert_full(&r, &full, &what);
        assert_hit(&r, &what);
    }
    assert_eq!(origin.hits("/obj"), 1);
}

#[test]
fn if_range_with_matching_last_modified_gives_206_and_with_another_date_the_full_200() {
    let origin = TestOrigin::start();
    let full = body_of('k');
    let lm = "Tue, 01 Sep 2020 10:00:00 GMT";
    origin.set("/obj", cacheable(full.clone()).header("Last-Modified", lm));
    let node = NodeConfig::new(&origin.url()).start();
    fill(&node, "/obj", &full);

    let r = get_headers(&node, "/obj", &[("Range", "bytes=-10"), ("If-Range", lm)]);
    assert_partial(
        &r,
        &full,
        9990,
        9999,
        "If-Range with the Last-Modified date",
    );
    assert_hit(&r, "If-Range with the Last-Modified date");

    let r = get_headers(
        &node,
        "/obj",
        &[
            ("Range", "bytes=-10"),
            ("If-Range", "Mon, 31 Aug 2020 10:00:00 GMT"),
        ],
    );
    assert_full(&r, &full, "If-Range with an older date");
    assert_eq!(origin.hits("/obj"), 1);
}

#[test]
fn if_range_with_a_weak_etag_never_gives_206() {
    // RFC 9110 13.1.5: If-Range uses the strong comparison, which weak tags never pass.
    let origin = TestOrigin::start();
    let full = body_of('l');
    origin.set("/obj", cacheable(full.clone()).header("ETag", "W/\"v1\""));
    let node = NodeConfig::new(&origin.url()).start();
    fill(&node, "/obj", &full);

    let r = get_headers(
        &node,
        "/obj",
        &[("Range", "bytes=0-99"), ("If-Range", "W/\"v1\"")],
    );
    assert_full(
        &r,
        &full,
        "If-Range: W/\"v1\" against a stored weak ETag W/\"v1\"",
    );
    assert_eq!(origin.hits("/obj"), 1);
}

#[test]
fn range_on_cached_object_that_arrived_chunked_is_served_from_its_known_length() {
    let origin = TestOrigin::start();
    let full = body_of('s');
    origin.set(
        "/obj",
        Reply::ok(chunked(&full, 1000))
            .header("Cache-Control", "max-age=600")
            .header("Content-Type", "application/octet-stream")
            .header("Transfer-Encoding", "chunked"),
    );
    let node = NodeConfig::new(&origin.url()).start();
    let r = get_headers(&node, "/obj", &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.body == full,
        "chunked fill: {}",
        first_difference(&r.body, &full)
    );
    assert_stored_miss(&r, "chunked fill");

    // The stored body is complete, so its length is known: ranges are served (and the whole
    // object gets a Content-Length instead of chunked framing).
    for (range, first, last) in [("bytes=100-199", 100, 199), ("bytes=-50", 9950, 9999)] {
        let r = get_range(&node, "/obj", range);
        let what = format!("object that arrived chunked, Range: {range}");
        assert_eq!(r.status, 206, "{what}: status");
        assert_partial(&r, &full, first, last, &what);
        assert_hit(&r, &what);
    }
    let whole = get_headers(&node, "/obj", &[]);
    assert_eq!(whole.body, full);
    assert_eq!(whole.header("content-length").as_deref(), Some("10000"));
    assert_eq!(origin.hits("/obj"), 1);
}

#[test]
fn if_range_with_a_weak_last_modified_date_never_gives_206() {
    // Last-Modified equal to Date is a weak validator: the resource may have changed twice
    // within that second.
    let origin = TestOrigin::start();
    let full = body_of('t');
    let now = http_date(std::time::SystemTime::now());
    origin.set(
        "/obj",
        cacheable(full.clone())
            .header("Date", &now)
            .header("Last-Modified", &now),
    );
    let node = NodeConfig::new(&origin.url()).start();
    fill(&node, "/obj", &full);

    let r = get_headers(
        &node,
        "/obj",
        &[("Range", "bytes=0-99"), ("If-Range", &now)],
    );
    assert_full(
        &r,
        &full,
        "If-Range: <Last-Modified> where Last-Modified equals Date (a weak validator)",
    );
    assert_eq!(origin.hits("/obj"), 1);
}

// ---------------------------------------------------------------------------------------------
// The disk tier
// ---------------------------------------------------------------------------------------------

/// One disk-tier check, on its own object so that its first request comes from the disk tier.
struct DiskCase {
    path: String,
    /// The object's tag (see `body_of`).
    tag: char,
    range: &'static str,
    /// The bytes `(first, last)` of the 206, or `None` for a 416.
    want: Option<(usize, usize)>,
}

impl DiskCase {
    fn body(&self) -> Vec<u8> {
        body_of(self.tag)
    }

    /// Asserts `r` is this case's answer (206 slice or 416) and a hit.
    fn check(&self, r: &Fetched, what: &str) {
        match self.want {
            Some((first, last)) => assert_partial(r, &self.body(), first, last, what),
            None => assert_unsatisfiable(r, LEN, what),
        }
        assert_hit(r, what);
    }
}

/// The single ranges of `SINGLE_RANGES` and one unsatisfiable range.
fn disk_cases() -> Vec<DiskCase> {
    let mut cases: Vec<_> = SINGLE_RANGES
        .iter()
        .zip(['m', 'n', 'o', 'p', 'q'])
        .map(|(&(range, first, last), tag)| DiskCase {
            path: format!("/disk/{tag}"),
            tag,
            range,
            want: Some((first, last)),
        })
        .collect();
    cases.push(DiskCase {
        path: "/disk/r".to_string(),
        tag: 'r',
        range: "bytes=20000-30000",
        want: None,
    });
    cases
}

/// Checks every disk case with one request each: served from the disk tier (a disk-tier hit,
/// no memory-tier hit), the right 206 slice or 416, no origin request.
fn check_disk_cases(node: &Node, origin: &TestOrigin, when: &str) {
    for case in disk_cases() {
        let m0 = node.metrics();
        let r = get_range(node, &case.path, case.range);
        let m1 = node.metrics();
        let what = format!("{}, Range: {}, {when}", case.path, case.range);
        case.check(&r, &what);
        let disk = metric_sum(&m1, TIER_HITS, DISK) - metric_sum(&m0, TIER_HITS, DISK);
        let memory = metric_sum(&m1, TIER_HITS, MEMORY) - metric_sum(&m0, TIER_HITS, MEMORY);
        assert!(
            disk == 1.0 && memory == 0.0,
            "{what}: expected one disk-tier hit and no memory-tier hit, got disk +{disk}, \
             memory +{memory}"
        );
        assert_eq!(origin.hits(&case.path), 1, "{what}: went to the origin");
    }
}

/// An origin serving every disk case's object.
fn start_origin_with_disk_cases() -> TestOrigin {
    let origin = TestOrigin::start();
    for case in disk_cases() {
        origin.set(&case.path, cacheable(case.body()));
    }
    origin
}

/// Fills every disk case's object and waits until they are all on disk.
fn fill_disk_cases(node: &Node, cfg: &NodeConfig) {
    let cases = disk_cases();
    for case in &cases {
        fill(node, &case.path, &case.body());
    }
    wait_disk_objects(node, cases.len(), WAIT, "the fills written to disk");
    // in the segment files: one record per object, with its whole body
    let cache = cache_dir(cfg);
    assert_segments(&cache, 1 << 30, "after the fills");
    let objects = records(&cache)
        .iter()
        .filter(|r| r.kind == Kind::Object)
        .count();
    assert_eq!(objects, cases.len(), "object records in the segment files");
    for case in &cases {
        let record = only_record_for(&cache, &case.path);
        assert!(
            record.body() == case.body(),
            "{}: the body in the segment files",
            case.path
        );
    }
}

#[test]
fn disk_only_tier_serves_ranges_and_416_from_disk() {
    let origin = start_origin_with_disk_cases();
    let cfg = NodeConfig::new(&origin.url()).cache("tiers = \"disk\"");
    let node = cfg.start();
    fill_disk_cases(&node, &cfg);

    check_disk_cases(&node, &origin, "disk-only tier");
    // Again: still disk hits (there is no memory tier to promote into).
    check_disk_cases(&node, &origin, "disk-only tier, second round");
    // And from the files alone, with nothing left in the process.
    stop_ok(node, "disk-only node");
    let node = cfg.start();
    check_disk_cases(&node, &origin, "disk-only tier after a restart");
    assert_eq!(origin.total_hits(), disk_cases().len());
}

#[test]
fn ranges_after_a_restart_are_served_from_disk_without_origin_requests() {
    let origin = start_origin_with_disk_cases();
    let cfg = NodeConfig::new(&origin.url());
    let node = cfg.start();
    fill_disk_cases(&node, &cfg);
    stop_ok(node, "first node");

    let node = cfg.start();
    check_disk_cases(&node, &origin, "first request after a restart");

    // The same ranges again (the disk hits were copied into memory): the same answers.
    for case in disk_cases() {
        let r = get_range(&node, &case.path, case.range);
        let what = format!(
            "{}, Range: {}, second request after the restart",
            case.path, case.range
        );
        case.check(&r, &what);
    }
    assert_eq!(
        origin.total_hits(),
        disk_cases().len(),
        "requests after the restart went to the origin"
    );
}
