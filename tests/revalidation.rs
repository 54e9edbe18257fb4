//! Revalidation details beyond tests/rfc9111_validation.rs: weak entity tags (RFC 9110 13.1.2:
//! `If-None-Match` uses the weak comparison) and a 304 on the disk tier, which stores the new
//! head with the body as it was (a new record in the log: the old one is never written over).
mod common;

use std::time::Duration;

use common::disk::{only_record_for, records_for, Record};
use common::*;

/// Whether a record's stored head has the `X-Revalidated` field the 304 adds (a field name the
/// head keeps as text, in the case it came in).
fn revalidated(record: &Record) -> bool {
    record
        .head
        .to_ascii_lowercase()
        .windows(13)
        .any(|w| w == b"x-revalidated")
}

#[test]
fn weak_etags_revalidate_and_client_if_none_match_compares_weakly() {
    let origin = TestOrigin::start();
    origin.set_handler("/weak", |req, _| match req.header("if-none-match") {
        Some(inm) if inm.contains("W/\"w1\"") => Reply::new(304)
            .header("ETag", "W/\"w1\"")
            .header("Cache-Control", "max-age=60"),
        _ => Reply::ok("weak body")
            .header("ETag", "W/\"w1\"")
            .header("Cache-Control", "max-age=10")
            .header("Age", "100"),
    });
    let node = NodeConfig::new(&origin.url()).start();
    assert_stored_miss(&get(&node, "/weak"), "fill");
    // stale on arrival: revalidated with the weak tag as stored
    let r = get(&node, "/weak");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "weak body");
    let reval = &origin.requests("/weak")[1];
    assert_eq!(reval.header("if-none-match").as_deref(), Some("W/\"w1\""));
    // fresh now; a client's If-None-Match matches weakly, in either form
    for inm in ["W/\"w1\"", "\"w1\"", "\"x\", W/\"w1\""] {
        let r = get_with(&node, "/weak", &[("If-None-Match", inm)]);
        assert_eq!(r.status, 304, "If-None-Match: {inm}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag").as_deref(), Some("W/\"w1\""));
    }
    let r = get_with(&node, "/weak", &[("If-None-Match", "W/\"w2\"")]);
    assert_eq!(r.status, 200);
    assert_eq!(origin.hits("/weak"), 2);
}

#[test]
fn a_304_on_the_disk_tier_rewrites_the_head_and_never_the_body() {
    let origin = TestOrigin::start();
    let body = payload(300_000);
    let served = body.clone();
    origin.set_handler("/doc", move |req, _| {
        if req.header("if-none-match").is_some() {
            Reply::new(304)
                .header("ETag", "\"d1\"")
                .header("Cache-Control", "max-age=600")
                .header("X-Revalidated", "yes")
        } else {
            Reply::ok(served.clone())
                .header("ETag", "\"d1\"")
                .header("Cache-Control", "max-age=10")
                .header("Age", "100")
        }
    });
    let cfg = NodeConfig::new(&origin.url()).cache("tiers = \"disk\"");
    let node = cfg.start();
    assert_stored_miss(&get(&node, "/doc"), "fill");
    let cache = cfg.dir().join("cache");
    wait_disk_objects(&node, 1, Duration::from_secs(10), "on disk");
    // the object's record: its head without the field the 304 adds, its body; all its bytes
    let old = only_record_for(&cache, "/doc");
    assert!(!revalidated(&old), "the stored head before the 304");
    assert!(old.body() == body, "the stored body");
    let old_bytes = old.read(0, old.span());

    let r = get(&node, "/doc");
    assert_eq!(r.status, 200);
    assert!(r.body == body, "stored body not served after the 304");
    assert_eq!(r.header("x-revalidated").as_deref(), Some("yes"));
    // the new head is appended behind the response: a new record of the object, the new head
    // with the same body, elsewhere in the log
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let new = loop {
        let mut found = records_for(&cache, "/doc");
        if found.len() >= 2 {
            assert_eq!(found.len(), 2, "records of /doc after one 304");
            break found.remove(1);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no record with the new head written"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(revalidated(&new), "the new record's head is not the 304's");
    assert!(
        new.body() == body,
        "the new record's body is not the stored body"
    );
    assert_eq!(new.key, old.key);
    assert!(
        new.gen > old.gen || (new.gen == old.gen && new.offset >= old.offset + old.span()),
        "the new record is not after the old one in the log: {new:?} / {old:?}"
    );
    // the old record is left as it was, byte for byte, until its segment is recycled
    assert!(
        old.read(0, old.span()) == old_bytes,
        "the old record was rewritten in place"
    );

    // after a restart the freshened head is what is served: a fresh hit, no origin request
    node.stop();
    let node = cfg.start();
    let r = get(&node, "/doc");
    assert_hit(&r, "after the restart");
    assert!(r.body == body);
    assert_eq!(r.header("x-revalidated").as_deref(), Some("yes"));
    assert_eq!(origin.hits("/doc"), 2);
}
