use super::*;

fn spec(s: &str) -> Option<RangeSpec> {
    RangeSpec::parse(s.as_bytes())
}

#[test]
fn single_ranges_parse_and_resolve() {
    assert_eq!(
        spec("bytes=0-99"),
        Some(RangeSpec::From {
            first: 0,
            last: Some(99)
        })
    );
    assert_eq!(
        spec(" Bytes = 100- "),
        Some(RangeSpec::From {
            first: 100,
            last: None
        })
    );
    assert_eq!(spec("bytes=-5"), Some(RangeSpec::Suffix(5)));
    for bad in [
        "bytes=0-1,5-9",
        "items=0-1",
        "bytes=5-1",
        "bytes=-0",
        "bytes=-",
        "bytes=a-b",
        "bytes=+1-2",
        "bytes 0-1",
        "bytes=99999999999999999999999-",
    ] {
        assert_eq!(spec(bad), None, "{bad}");
    }
    let r = |s: &str, len| spec(s).and_then(|r| r.resolve(len));
    assert_eq!(r("bytes=0-99", 50), Some((0, 49)));
    assert_eq!(r("bytes=10-", 50), Some((10, 49)));
    assert_eq!(r("bytes=50-", 50), None);
    assert_eq!(r("bytes=-5", 50), Some((45, 49)));
    assert_eq!(r("bytes=-500", 50), Some((0, 49)));
    assert_eq!(r("bytes=-5", 0), None);
}

#[test]
fn content_ranges_parse() {
    let cr = |s: &str| ContentRange::parse(s.as_bytes());
    let r = cr("bytes 10-19/100").expect("valid");
    assert_eq!((r.first, r.last, r.complete, r.len()), (10, 19, 100, 10));
    assert_eq!(r.render(), "bytes 10-19/100");
    assert_eq!(cr("BYTES 0-0/1").map(|r| r.len()), Some(1));
    for bad in [
        "bytes 10-19/*",
        "bytes */100",
        "bytes 19-10/100",
        "bytes 10-100/100",
        "items 0-1/2",
        "bytes 0-1",
    ] {
        assert_eq!(cr(bad), None, "{bad}");
    }
}

#[test]
fn validators_are_strong_only() {
    let headers = |pairs: &[(&str, &str)]| {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    };
    let v = |pairs: &[(&str, &str)]| Validator::of(&headers(pairs)).map(|v| v.if_range().clone());
    assert_eq!(
        v(&[("etag", "\"a\"")]),
        Some(HeaderValue::from_static("\"a\""))
    );
    assert_eq!(v(&[("etag", "W/\"a\"")]), None);
    let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    assert_eq!(
        v(&[
            ("last-modified", lm),
            ("date", "Sun, 06 Nov 1994 08:50:00 GMT")
        ]),
        Some(HeaderValue::from_static(lm))
    );
    // as new as its Date: weak (RFC 9110 8.8.2.2)
    assert_eq!(v(&[("last-modified", lm), ("date", lm)]), None);
    assert_eq!(v(&[("last-modified", lm)]), None);
    // a weak ETag wins over a strong Last-Modified
    assert_eq!(
        v(&[
            ("etag", "W/\"a\""),
            ("last-modified", lm),
            ("date", "Sun, 06 Nov 1994 09:00:00 GMT")
        ]),
        None
    );
}

fn parts(len: u64) -> Parts {
    let mut header = ResponseHeader::build(200, None).expect("header");
    header
        .insert_header("content-length", len.to_string())
        .expect("field");
    let now = SystemTime::now();
    let meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
    Parts::new(
        CacheKey::new("/video", ""),
        &meta,
        Validator(HeaderValue::from_static("\"v\"")),
        len,
    )
}

/// `len` bytes whose value is their offset (mod 251).
fn bytes(first: u64, last: u64) -> Bytes {
    (first..=last)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

fn read(p: &Parts, first: u64, last: u64) -> Option<Bytes> {
    p.read(first, last).map(|b| concat(&b))
}

#[test]
fn pieces_combine_and_answer_what_they_cover() {
    let p = parts(100).with(10, bytes(10, 29)).with(50, bytes(50, 59));
    assert_eq!(p.stored(), 30);
    assert_eq!(read(&p, 12, 20), Some(bytes(12, 20)));
    assert_eq!(read(&p, 10, 29), Some(bytes(10, 29)));
    assert_eq!(read(&p, 10, 30), None);
    assert_eq!(read(&p, 0, 10), None);
    assert_eq!(p.gaps(0, 99), vec![(0, 9), (30, 49), (60, 99)]);
    assert_eq!(p.missing(15, 55), Some((30, 49)));
    assert_eq!(p.missing(12, 25), None);
    assert_eq!(p.missing(20, 99), Some((30, 99)));
    // overlapping additions keep what is held and fill only the gaps
    let p = p.with(0, bytes(0, 69));
    assert_eq!(p.stored(), 70);
    assert_eq!(read(&p, 0, 69), Some(bytes(0, 69)));
    assert_eq!(p.missing(0, 99), Some((70, 99)));
    assert!(!p.complete());
    // past the end is ignored
    let p = p.with(70, bytes(70, 120));
    assert!(p.complete());
    assert_eq!(p.body(), Some(bytes(0, 99)));
}

#[test]
fn many_small_pieces_are_joined() {
    let mut p = parts(1000);
    for i in (0..1000).step_by(10) {
        p = p.with(i, bytes(i, i + 9));
    }
    assert!(p.complete());
    assert!(p.pieces.len() <= MAX_PIECES);
    assert_eq!(p.body(), Some(bytes(0, 999)));
    assert_eq!(read(&p, 333, 777), Some(bytes(333, 777)));
}

#[test]
fn the_store_is_bounded_and_keyed_by_url() {
    let store = PartialStore::new(4096);
    let p = parts(100).with(0, bytes(0, 49));
    assert!(store.put(Arc::new(p.clone())));
    let mut other = CacheKey::new("/video", "");
    other.set_variance_key([1; 16]);
    assert_eq!(store.get(&other).map(|p| p.stored()), Some(50));
    assert!(store.remove(&CacheKey::new("/video", "")));
    assert!(store.get(&other).is_none());
    // larger than the whole store: not held
    let big = parts(10_000).with(0, bytes(0, 9_999));
    assert!(!store.put(Arc::new(big)));
}
