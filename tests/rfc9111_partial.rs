//! RFC 9111 3.3 and 3.4 (and RFC 9110 14): partial content. A range request that misses goes
//! to the origin as a range; its 206 is stored as a part; later ranges inside the parts are
//! answered from cache; a range partly held asks the origin only for what is missing (under
//! `If-Range`, so a changed representation is never stitched to old bytes); parts that cover
//! the whole become a complete object. Black-box against the real binary and a test origin
//! that honours `Range` and `If-Range` as RFC 9110 14.2 and 13.1.5 say.
mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Length of the test object.
const LEN: usize = 10_000;

/// A test origin serving `path` by range, and the node in front of it.
fn setup(path: &str, etag: &str, cache_control: &str) -> (TestOrigin, Node) {
    let origin = TestOrigin::start();
    serve(&origin, path, generated_body(0, LEN), etag, cache_control);
    let node = NodeConfig::new(&origin.url()).start();
    (origin, node)
}

fn serve(origin: &TestOrigin, path: &str, body: Vec<u8>, etag: &str, cache_control: &str) {
    let (etag, cc) = (etag.to_string(), cache_control.to_string());
    origin.set_handler(path, move |req, _| range_reply(req, &body, &etag, &cc));
}

fn get_range(node: &Node, path: &str, range: &str) -> Fetched {
    get_with(node, path, &[("Range", range)])
}

/// Assert `f` is the 206 of bytes `first..=last` of the generated object.
fn assert_part(f: &Fetched, first: usize, last: usize, what: &str) {
    assert_eq!(f.status, 206, "{what}: status ({})", f.cache_status());
    assert_eq!(
        f.header("content-range").as_deref(),
        Some(format!("bytes {first}-{last}/{LEN}").as_str()),
        "{what}: Content-Range"
    );
    assert_eq!(
        f.header("content-length").as_deref(),
        Some((last - first + 1).to_string().as_str()),
        "{what}: Content-Length"
    );
    assert!(
        f.body == generated_body(first, last + 1),
        "{what}: wrong bytes ({} received)",
        f.body.len()
    );
}

/// The `Range` (and `If-Range`) of the origin's last request for `path`.
fn last_asked(origin: &TestOrigin, path: &str) -> (Option<String>, Option<String>) {
    let reqs = origin.requests(path);
    let last = reqs.last().expect("the origin was asked");
    (last.header("Range"), last.header("If-Range"))
}

/// `path`'s parts are gone: bytes 0-9 are fetched again, without If-Range (nothing held).
fn assert_parts_gone(node: &Node, origin: &TestOrigin, path: &str) {
    let r = get_range(node, path, "bytes=0-9");
    assert_part(&r, 0, 9, path);
    assert!(
        !cs_has(&r.cache_status(), "hit"),
        "{path}: a purged part was served"
    );
    assert_eq!(last_asked(origin, path), (Some("bytes=0-9".into()), None));
}

/// After a range of `path` was forwarded and not kept as a part, the whole object (`len`
/// bytes) is fetched in the background (the origin sees one request without Range) and stored:
/// ranges are then hits.
fn assert_whole_fetched_in_background(node: &Node, origin: &TestOrigin, path: &str, len: usize) {
    let r = wait_for_range_hit(node, path, &format!("bytes={}-", len - 10));
    assert!(
        r.body == generated_body(len - 10, len),
        "{path}: range of the whole"
    );
    let whole = origin
        .requests(path)
        .iter()
        .filter(|q| q.header("Range").is_none())
        .count();
    assert_eq!(whole, 1, "{path}: fetches of the whole object");
    let hits = origin.hits(path);
    let r = get_range(node, path, "bytes=100-199");
    assert_hit(&r, path);
    assert!(r.body == generated_body(100, 200), "{path}: second range");
    assert_eq!(origin.hits(path), hits);
}

/// A range GET that is a hit, waiting (bounded) for a background store to land.
fn wait_for_range_hit(node: &Node, path: &str, range: &str) -> Fetched {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get_range(node, path, range);
        if cs_has(&r.cache_status(), "hit") || Instant::now() > deadline {
            assert_hit(&r, range);
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// RFC 9111 3.3: a 206 is stored; a later range inside it is answered from cache (with Age),
/// a suffix range too when held; the origin saw the client's range, not a whole fetch.
#[test]
fn a_206_is_stored_and_ranges_inside_it_are_hits() {
    let (origin, node) = setup("/v.mp4", "\"v1\"", "max-age=600");
    let r = get_range(&node, "/v.mp4", "bytes=0-999");
    assert_part(&r, 0, 999, "first range");
    let cs = r.cache_status();
    assert!(
        cs_has(&cs, "stored") && cs_get(&cs, "fwd-status").as_deref() == Some("206"),
        "the 206 is stored: {cs}"
    );
    assert_eq!(cs_get(&cs, "detail").as_deref(), Some("partial"), "{cs}");
    assert_eq!(
        last_asked(&origin, "/v.mp4"),
        (Some("bytes=0-999".into()), None),
        "the origin is asked for the range, not the whole"
    );

    for (range, first, last) in [("bytes=100-199", 100, 199), ("bytes=0-999", 0, 999)] {
        let r = get_range(&node, "/v.mp4", range);
        assert_part(&r, first, last, range);
        assert_hit(&r, range);
        assert_eq!(
            cs_get(&r.cache_status(), "detail").as_deref(),
            Some("partial")
        );
        assert!(r.header("age").is_some(), "{range}: a hit carries Age");
        assert_eq!(r.header("etag").as_deref(), Some("\"v1\""));
    }
    assert_eq!(origin.hits("/v.mp4"), 1, "ranges inside the part are hits");

    // a suffix range beyond what is held: asked for exactly, under If-Range
    let r = get_range(&node, "/v.mp4", "bytes=-10");
    assert_part(&r, LEN - 10, LEN - 1, "suffix");
    assert_eq!(
        last_asked(&origin, "/v.mp4"),
        (
            Some(format!("bytes={}-{}", LEN - 10, LEN - 1)),
            Some("\"v1\"".into())
        )
    );
    let r = get_range(&node, "/v.mp4", "bytes=-5");
    assert_part(&r, LEN - 5, LEN - 1, "suffix inside the held tail");
    assert_hit(&r, "suffix inside the held tail");
    assert_eq!(origin.hits("/v.mp4"), 2);
    let m = node.metrics();
    assert_eq!(metric_sum(&m, "outpost_cache_partial_objects", &[]), 1.0);
    let held = metric_sum(&m, "outpost_cache_partial_bytes", &[]);
    assert!(held >= 1010.0, "parts of 1,010 bytes counted as {held}");
}

/// "Fetch only what is missing": a range partly held asks the origin for the missing span
/// only (with If-Range), and the answer has the client's range, held bytes around the
/// origin's (RFC 9211 fwd=partial).
#[test]
fn a_range_partly_held_fetches_only_what_is_missing() {
    let (origin, node) = setup("/p.bin", "\"p1\"", "max-age=600");
    get_range(&node, "/p.bin", "bytes=0-999");
    get_range(&node, "/p.bin", "bytes=2000-2999");
    assert_eq!(origin.hits("/p.bin"), 2);

    // held before: 500..=999; missing after: 1000..=1499
    let r = get_range(&node, "/p.bin", "bytes=500-1499");
    assert_part(&r, 500, 1499, "held prefix");
    assert_eq!(
        last_asked(&origin, "/p.bin"),
        (Some("bytes=1000-1499".into()), Some("\"p1\"".into()))
    );
    assert_eq!(cs_get(&r.cache_status(), "fwd").as_deref(), Some("partial"));

    // held on both sides of the gap 1500..=1999
    let r = get_range(&node, "/p.bin", "bytes=0-2999");
    assert_part(&r, 0, 2999, "held on both sides");
    assert_eq!(
        last_asked(&origin, "/p.bin"),
        (Some("bytes=1500-1999".into()), Some("\"p1\"".into()))
    );
    // now all of 0..=2999 is held
    let r = get_range(&node, "/p.bin", "bytes=0-2999");
    assert_part(&r, 0, 2999, "all held now");
    assert_hit(&r, "all held now");

    // "the rest" (`bytes=N-`) asks only for what follows the held bytes
    let r = get_range(&node, "/p.bin", "bytes=2500-");
    assert_part(&r, 2500, LEN - 1, "the rest");
    assert_eq!(
        last_asked(&origin, "/p.bin"),
        (
            Some(format!("bytes=3000-{}", LEN - 1)),
            Some("\"p1\"".into())
        )
    );
    assert_eq!(origin.hits("/p.bin"), 5);
}

/// Parts that cover the object become a complete stored object: a plain GET and any range
/// are then hits, with the whole body and its length.
#[test]
fn parts_covering_the_whole_complete_the_object() {
    let (origin, node) = setup("/w.bin", "\"w1\"", "max-age=600");
    assert_part(
        &get_range(&node, "/w.bin", "bytes=0-4999"),
        0,
        4999,
        "first half",
    );
    let r = get_range(&node, "/w.bin", "bytes=5000-");
    assert_part(&r, 5000, LEN - 1, "second half");
    assert_eq!(
        last_asked(&origin, "/w.bin"),
        (
            Some(format!("bytes=5000-{}", LEN - 1)),
            Some("\"w1\"".into())
        )
    );
    // until the complete object is stored, the complete parts answer ranges
    assert_hit(&get_range(&node, "/w.bin", "bytes=0-"), "complete parts");
    wait_metric(
        &node,
        "outpost_cache_partial_objects",
        &[],
        |v| v == 0.0,
        Duration::from_secs(10),
        "parts dropped once the object is stored",
    );
    let r = get(&node, "/w.bin");
    assert_hit(&r, "the completed object");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").as_deref(), Some("10000"));
    assert!(r.body == generated_body(0, LEN), "completed body differs");
    assert_eq!(r.header("etag").as_deref(), Some("\"w1\""));
    assert!(r.header("content-range").is_none());
    let r = get_range(&node, "/w.bin", "bytes=4990-5009");
    assert_part(&r, 4990, 5009, "range of the completed object");
    assert_hit(&r, "range of the completed object");
    assert_eq!(
        origin.hits("/w.bin"),
        2,
        "the object took two range fetches"
    );
}

/// RFC 9111 3.4: parts are combined only under the same strong validator. When the origin's
/// representation changed, If-Range brings back the whole new one (stored as the object),
/// never a stitch of old and new bytes.
#[test]
fn a_changed_representation_is_never_stitched() {
    let origin = TestOrigin::start();
    let old = generated_body(0, LEN);
    serve(&origin, "/c.bin", old.clone(), "\"c1\"", "max-age=600");
    let node = NodeConfig::new(&origin.url()).start();
    assert_part(
        &get_range(&node, "/c.bin", "bytes=0-999"),
        0,
        999,
        "old part",
    );

    let new: Vec<u8> = old.iter().map(|b| b ^ 0xff).collect();
    serve(&origin, "/c.bin", new.clone(), "\"c2\"", "max-age=600");
    let r = get_range(&node, "/c.bin", "bytes=500-1499");
    assert_eq!(
        last_asked(&origin, "/c.bin"),
        (Some("bytes=1000-1499".into()), Some("\"c1\"".into()))
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.header("etag").as_deref(), Some("\"c2\""));
    assert!(r.body == new[500..1500], "the answer mixes versions");
    // the whole new version was stored: held old parts no longer answer
    let r = get_range(&node, "/c.bin", "bytes=0-99");
    assert_hit(&r, "the new version");
    assert!(r.body == new[..100], "old part served after the change");
    let r = get(&node, "/c.bin");
    assert!(r.body == new, "whole object");
    assert_eq!(origin.hits("/c.bin"), 2);
}

/// What may not be combined or stored is not: a weak ETag (no strong validator), `no-store`,
/// and a 416 (with explicit freshness) is never stored as the URL's response.
#[test]
fn parts_need_a_strong_validator_and_a_storable_response() {
    let origin = TestOrigin::start();
    serve(
        &origin,
        "/weak",
        generated_body(0, LEN),
        "W/\"w\"",
        "max-age=600",
    );
    serve(
        &origin,
        "/nostore",
        generated_body(0, LEN),
        "\"n\"",
        "no-store",
    );
    let node = NodeConfig::new(&origin.url()).start();
    let r = get_range(&node, "/weak", "bytes=0-99");
    assert_part(&r, 0, 99, "weak");
    let cs = r.cache_status();
    assert!(!cs_has(&cs, "stored") && !cs_has(&cs, "hit"), "{cs}");
    assert_eq!(
        cs_get(&cs, "detail").as_deref(),
        Some("no-strong-validator")
    );
    assert_whole_fetched_in_background(&node, &origin, "/weak", LEN);
    for i in 1..=2 {
        let r = get_range(&node, "/nostore", "bytes=0-99");
        assert_part(&r, 0, 99, "no-store");
        assert_eq!(
            cs_get(&r.cache_status(), "detail").as_deref(),
            Some("no-store")
        );
        assert_eq!(origin.hits("/nostore"), i);
        assert_eq!(
            last_asked(&origin, "/nostore").0.as_deref(),
            Some("bytes=0-99")
        );
    }

    serve(
        &origin,
        "/short",
        generated_body(0, 100),
        "\"s\"",
        "max-age=600",
    );
    let r = get_range(&node, "/short", "bytes=500-");
    assert_eq!(r.status, 416);
    let r = get(&node, "/short");
    assert_eq!(r.status, 200, "a stored 416 answered a plain GET");
    assert!(r.body == generated_body(0, 100));
}

/// Parts follow freshness and purges. Stale parts are validated before use: one byte is asked
/// for under If-Range, and the origin's 206 of the same representation validates (and
/// refreshes) them; the client gets its range from them (`fwd=stale`), and they are fresh
/// again. A purged URL's parts are gone.
#[test]
fn parts_follow_freshness_and_purges() {
    let origin = TestOrigin::start();
    serve(
        &origin,
        "/f.bin",
        generated_body(0, LEN),
        "\"f1\"",
        "max-age=1",
    );
    let node = NodeConfig::new(&origin.url()).start();
    get_range(&node, "/f.bin", "bytes=0-999");
    assert_hit(&get_range(&node, "/f.bin", "bytes=0-9"), "fresh part");
    std::thread::sleep(Duration::from_millis(2100));
    let r = get_range(&node, "/f.bin", "bytes=0-9");
    assert_part(&r, 0, 9, "stale part");
    assert!(!cs_has(&r.cache_status(), "hit"), "a stale part was served");
    assert_eq!(
        last_asked(&origin, "/f.bin"),
        (Some("bytes=0-0".into()), Some("\"f1\"".into())),
        "stale parts are validated with one byte"
    );
    let cs = r.cache_status();
    assert_eq!(cs_get(&cs, "fwd").as_deref(), Some("stale"), "{cs}");
    assert_eq!(cs_get(&cs, "fwd-status").as_deref(), Some("206"), "{cs}");
    let r = get_range(&node, "/f.bin", "bytes=500-999");
    assert_part(&r, 500, 999, "validated parts");
    assert_hit(&r, "validated parts are fresh again");
    assert_eq!(origin.hits("/f.bin"), 2);

    serve(
        &origin,
        "/g.bin",
        generated_body(0, LEN),
        "\"g1\"",
        "max-age=600",
    );
    get_range(&node, "/g.bin", "bytes=0-999");
    assert_hit(&get_range(&node, "/g.bin", "bytes=0-9"), "before purge");
    let url = format!("http://{}/g.bin", node.addr());
    purged_ok(&node, &format!(r#"{{"url": "{url}"}}"#));
    assert_parts_gone(&node, &origin, "/g.bin");
}

/// A client's If-Range that does not match what is held gets the whole response (RFC 9110
/// 13.1.5), never a part of another version.
#[test]
fn a_client_if_range_for_another_version_gets_the_whole() {
    let (origin, node) = setup("/i.bin", "\"i1\"", "max-age=600");
    get_range(&node, "/i.bin", "bytes=0-999");
    let r = get_with(
        &node,
        "/i.bin",
        &[("Range", "bytes=0-99"), ("If-Range", "\"i0\"")],
    );
    assert_eq!(r.status, 200);
    assert!(r.body == generated_body(0, LEN));
    let r = get_with(
        &node,
        "/i.bin",
        &[("Range", "bytes=0-99"), ("If-Range", "\"i1\"")],
    );
    assert_part(&r, 0, 99, "matching If-Range");
    let _ = origin;
}

/// `cache.partial_size = "0"`: range misses fetch and store the whole object (the origin
/// sees no Range), as nginx and Varnish do.
#[test]
fn partial_size_zero_fetches_the_whole() {
    let origin = TestOrigin::start();
    serve(
        &origin,
        "/z.bin",
        generated_body(0, LEN),
        "\"z\"",
        "max-age=600",
    );
    let node = NodeConfig::new(&origin.url())
        .cache("partial_size = \"0\"")
        .start();
    let r = get_range(&node, "/z.bin", "bytes=0-99");
    assert_part(&r, 0, 99, "whole-object way");
    assert_eq!(last_asked(&origin, "/z.bin"), (None, None));
    assert_hit(&get(&node, "/z.bin"), "whole object stored");
}

/// Concurrent range requests for one object all get their bytes right while parts are
/// being combined.
#[test]
fn concurrent_ranges_are_all_right() {
    let (origin, node) = setup("/k.bin", "\"k1\"", "max-age=600");
    let node = Arc::new(node);
    let errors = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for t in 0..4 {
            let (node, errors) = (node.clone(), errors.clone());
            s.spawn(move || {
                for i in 0..20usize {
                    let first = (t * 2_311 + i * 997) % (LEN - 500);
                    let last = first + 499;
                    let r = get_range(&node, "/k.bin", &format!("bytes={first}-{last}"));
                    let ok = r.status == 206
                        && r.body == generated_body(first, last + 1)
                        && r.header("content-range").as_deref()
                            == Some(format!("bytes {first}-{last}/{LEN}").as_str());
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(errors.load(Ordering::Relaxed), 0, "wrong answers");
    assert!(
        origin.hits("/k.bin") < 80,
        "nothing was answered from parts"
    );
}

/// RFC 9111 3.3: a 206 is never stored as the URL's response, even one an origin sends to a
/// request that asked for no range (or on the whole-object way).
#[test]
fn a_206_to_a_whole_request_is_not_stored_as_the_response() {
    let origin = TestOrigin::start();
    origin.set(
        "/odd",
        Reply::new(206)
            .header("Cache-Control", "max-age=600")
            .header("ETag", "\"o\"")
            .header("Content-Range", "bytes 0-9/100")
            .body(generated_body(0, 10)),
    );
    let node = NodeConfig::new(&origin.url()).start();
    for i in 1..=2 {
        let r = get(&node, "/odd");
        assert_eq!(r.status, 206);
        let cs = r.cache_status();
        assert!(!cs_has(&cs, "stored") && !cs_has(&cs, "hit"), "{cs}");
        assert_eq!(origin.hits("/odd"), i);
    }
}

/// A tag purge covers held parts (their stored fields carry the tag), and once the ban lurker
/// has retired the purge, the parts it covered are gone too (the pass visits parts).
#[test]
fn tag_purges_reach_parts_and_outlive_their_retirement() {
    let origin = TestOrigin::start();
    let body = generated_body(0, LEN);
    origin.set_handler("/t.bin", move |req, _| {
        range_reply(req, &body, "\"t1\"", "max-age=600").header("Surrogate-Key", "red")
    });
    let node = NodeConfig::new(&origin.url())
        .extra("[purge]\nlurker_interval = \"200ms\"")
        .start();
    get_range(&node, "/t.bin", "bytes=0-999");
    assert_hit(&get_range(&node, "/t.bin", "bytes=0-9"), "held part");
    purged_ok(&node, r#"{"tags": ["red"]}"#);
    wait_metric(
        &node,
        "outpost_purge_bans_retired_total",
        &[],
        |v| v >= 1.0,
        Duration::from_secs(20),
        "purge retired",
    );
    assert_parts_gone(&node, &origin, "/t.bin");
}

/// RFC 9111 4.1: parts are held per variant: a request whose `Vary` values select another
/// variant is not answered from them.
#[test]
fn parts_answer_their_own_variant_only() {
    let origin = TestOrigin::start();
    let body = generated_body(0, LEN);
    origin.set_handler("/l.bin", move |req, _| {
        range_reply(req, &body, "\"l1\"", "max-age=600").header("Vary", "Accept-Language")
    });
    let node = NodeConfig::new(&origin.url()).start();
    let lang = |l: &str, range: &str| {
        get_with(&node, "/l.bin", &[("Range", range), ("Accept-Language", l)])
    };
    assert_part(&lang("en", "bytes=0-999"), 0, 999, "en part");
    let r = lang("en", "bytes=0-9");
    assert_part(&r, 0, 9, "en again");
    assert_hit(&r, "same variant");
    let r = lang("fr", "bytes=0-9");
    assert_part(&r, 0, 9, "fr");
    assert!(
        !cs_has(&r.cache_status(), "hit"),
        "another variant's part was served"
    );
    assert_eq!(origin.hits("/l.bin"), 2);
}

/// A bad origin answer is passed on as it is and never kept: a 206 cut short (the client's
/// response fails, nothing of it is held) and a 206 whose `Content-Range` cannot be read.
#[test]
fn broken_206_answers_are_never_kept() {
    let origin = TestOrigin::start();
    let body = generated_body(0, LEN);
    let b = body.clone();
    origin.set_handler("/cut.bin", move |req, n| {
        let reply = range_reply(req, &b, "\"x\"", "max-age=600");
        if n == 1 {
            reply.truncate_after(100)
        } else {
            reply
        }
    });
    origin.set(
        "/bad.bin",
        Reply::new(206)
            .header("Cache-Control", "max-age=600")
            .header("ETag", "\"b\"")
            .header("Content-Range", "bytes 0-9/*")
            .body(body[..10].to_vec()),
    );
    let node = NodeConfig::new(&origin.url()).start();
    let cut = try_fetch(
        node.client()
            .get(node.url("/cut.bin"))
            .header("Range", "bytes=0-999")
            .send(),
    );
    assert!(
        cut.as_ref().map_or(true, |r| r.body.len() < 1000),
        "a cut answer looked whole"
    );
    let r = get_range(&node, "/cut.bin", "bytes=0-9");
    assert_part(&r, 0, 9, "after the cut answer");
    assert!(!cs_has(&r.cache_status(), "hit"), "a cut part was kept");
    assert_eq!(
        last_asked(&origin, "/cut.bin"),
        (Some("bytes=0-9".into()), None)
    );

    for i in 1..=2 {
        let r = get_range(&node, "/bad.bin", "bytes=0-9");
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range").as_deref(), Some("bytes 0-9/*"));
        assert!(!cs_has(&r.cache_status(), "stored"), "{}", r.cache_status());
        assert_eq!(origin.hits("/bad.bin"), i);
    }
}

/// RFC 9111 4: the most recent stored response is the one used. A complete response stored
/// after parts were (a plain GET, here of a changed representation) replaces them.
#[test]
fn a_complete_response_stored_later_replaces_the_parts() {
    let origin = TestOrigin::start();
    let old = generated_body(0, LEN);
    serve(&origin, "/r.bin", old.clone(), "\"r1\"", "max-age=600");
    let node = NodeConfig::new(&origin.url()).start();
    assert_part(
        &get_range(&node, "/r.bin", "bytes=0-999"),
        0,
        999,
        "old part",
    );
    let new: Vec<u8> = old.iter().map(|b| b ^ 0x55).collect();
    serve(&origin, "/r.bin", new.clone(), "\"r2\"", "max-age=600");
    let r = get(&node, "/r.bin");
    assert!(r.body == new, "plain GET");
    let r = wait_for_range_hit(&node, "/r.bin", "bytes=0-99");
    assert_eq!(r.header("etag").as_deref(), Some("\"r2\""));
    assert!(
        r.body == new[..100],
        "an older part was used after a newer complete response"
    );
    assert_eq!(origin.hits("/r.bin"), 2);
}

/// An object larger than `cache.partial_size` (but one the tiers keep): its first range is
/// forwarded and not kept, the whole is fetched in the background and stored, then ranges hit.
#[test]
fn objects_larger_than_partial_size_are_fetched_whole_in_the_background() {
    const BIG: usize = 3 << 20;
    let origin = TestOrigin::start();
    serve(
        &origin,
        "/big.bin",
        generated_body(0, BIG),
        "\"b\"",
        "max-age=600",
    );
    let node = NodeConfig::new(&origin.url())
        .cache("partial_size = \"1MiB\"")
        .start();
    let r = get_range(&node, "/big.bin", "bytes=0-99");
    assert_eq!(r.status, 206);
    assert!(r.body == generated_body(0, 100));
    assert_eq!(
        cs_get(&r.cache_status(), "detail").as_deref(),
        Some("larger-than-partial-size")
    );
    // (the background fetch may already have gone out: the range was the first request)
    assert_eq!(
        origin.requests("/big.bin")[0].header("Range").as_deref(),
        Some("bytes=0-99")
    );
    assert_whole_fetched_in_background(&node, &origin, "/big.bin", BIG);
}

/// The whole-object way (`partial_size = "0"`) with a ranged miss of an object longer than
/// one origin read: without streaming fills the client gets the whole 200 (RFC 9110 14.2
/// allows ignoring Range), so that the fill is not cut short when the range is sent (Pingora
/// stops reading the origin then); the object is stored and later ranges are hits.
#[test]
fn a_long_ranged_miss_on_the_whole_object_way_is_stored() {
    const LONG: usize = 300 << 10;
    let origin = TestOrigin::start();
    serve(
        &origin,
        "/long.bin",
        generated_body(0, LONG),
        "\"l\"",
        "max-age=600",
    );
    let node = NodeConfig::new(&origin.url())
        .cache("partial_size = \"0\"")
        .start();
    let r = get_range(&node, "/long.bin", "bytes=100-199");
    assert_eq!(r.status, 200, "{}", r.cache_status());
    assert!(r.body == generated_body(0, LONG));
    let r = get_range(&node, "/long.bin", "bytes=100-199");
    assert_hit(&r, "range after the whole fill");
    assert!(r.body == generated_body(100, 200));
    assert_eq!(origin.hits("/long.bin"), 1);
}

/// That whole-200 answer is for fills only: a range of a long stored object revalidated by a
/// 304 is served from the stored body as a 206.
#[test]
fn a_range_of_a_long_revalidated_object_is_a_206() {
    const LONG: usize = 300 << 10;
    let origin = TestOrigin::start();
    origin.set(
        "/rv.bin",
        Reply::ok(generated_body(0, LONG))
            .header("Cache-Control", "max-age=1")
            .header("ETag", "\"rv\"")
            .conditional(),
    );
    let node = NodeConfig::new(&origin.url()).start();
    assert_eq!(get(&node, "/rv.bin").status, 200);
    std::thread::sleep(Duration::from_millis(2100));
    let r = get_range(&node, "/rv.bin", "bytes=100-199");
    assert_eq!(
        cs_get(&r.cache_status(), "fwd-status").as_deref(),
        Some("304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.status, 206, "{}", r.cache_status());
    assert!(r.body == generated_body(100, 200));
}

/// Many random single ranges (`a-b`, `a-`, `-n`, some with `Cache-Control: no-cache`) over
/// three objects, in a store too small for all their parts: every answer has exactly the bytes
/// and `Content-Range` asked for, whatever mix of held parts, origin spans and completed
/// objects produced it; with both tiers, the disk tier alone, and streaming fills.
#[test]
fn random_ranges_always_get_their_exact_bytes() {
    for cache in ["", "tiers = \"disk\"", "stream_fills = true"] {
        random_ranges(cache);
    }
}

fn random_ranges(cache: &str) {
    const OBJ: usize = 50_000;
    let origin = TestOrigin::start();
    let paths = ["/r0.bin", "/r1.bin", "/r2.bin"];
    for p in paths {
        serve(&origin, p, generated_body(0, OBJ), "\"r\"", "max-age=600");
    }
    let node = NodeConfig::new(&origin.url())
        .cache(&format!("partial_size = \"128KiB\"\n{cache}"))
        .start();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    for i in 0..300 {
        let path = paths[next(3)];
        let a = next(OBJ);
        let (range, first, last) = match next(4) {
            0 => {
                let n = 1 + next(5_000);
                (format!("bytes=-{n}"), OBJ - n.min(OBJ), OBJ - 1)
            }
            1 => (format!("bytes={a}-"), a, OBJ - 1),
            _ => {
                let b = (a + next(4_000)).min(OBJ - 1);
                (format!("bytes={a}-{b}"), a, b)
            }
        };
        let mut headers = vec![("Range", range.as_str())];
        if next(10) == 0 {
            headers.push(("Cache-Control", "no-cache"));
        }
        let r = get_with(&node, path, &headers);
        let what = format!(
            "[{cache}] request {i}: {path} {range} ({})",
            r.cache_status()
        );
        match r.status {
            206 => {
                assert_eq!(
                    r.header("content-range").as_deref(),
                    Some(format!("bytes {first}-{last}/{OBJ}").as_str()),
                    "{what}"
                );
                assert!(
                    r.body == generated_body(first, last + 1),
                    "{what}: wrong bytes"
                );
            }
            200 => assert!(r.body == generated_body(0, OBJ), "{what}: wrong whole body"),
            other => panic!("{what}: status {other}"),
        }
    }
}

/// A bad `cache.partial_size` is refused by `outpost check`, naming the key.
#[test]
fn a_bad_partial_size_is_refused_naming_the_key() {
    for bad in ["\"lots\"", "-1", "\"2PiB\""] {
        let toml = NodeConfig::new("http://127.0.0.1:9")
            .cache(&format!("partial_size = {bad}"))
            .config_text();
        assert_refused_text(&toml, bad, "cache.partial_size");
    }
}
