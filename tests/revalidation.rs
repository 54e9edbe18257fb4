//! Revalidation details beyond tests/rfc9111_validation.rs: weak entity tags (RFC 9110 13.1.2:
//! `If-None-Match` uses the weak comparison) and a 304 on the disk tier, which rewrites the
//! stored head but never the body file.
mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use std::time::Duration;

use common::*;

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
    let body_file = object_files(&cache, "body").pop().expect("body file");
    let head_file = object_files(&cache, "head").pop().expect("head file");
    let (body_before, head_before) = (
        fs::metadata(&body_file).expect("body meta"),
        fs::metadata(&head_file).expect("head meta"),
    );
    std::thread::sleep(Duration::from_millis(1100));

    let r = get(&node, "/doc");
    assert_eq!(r.status, 200);
    assert!(r.body == body, "stored body not served after the 304");
    assert_eq!(r.header("x-revalidated").as_deref(), Some("yes"));
    // the head is rewritten behind the response
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fs::metadata(&head_file).map(|m| m.ino()).unwrap_or(0) == head_before.ino() {
        assert!(
            std::time::Instant::now() < deadline,
            "head file never rewritten"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let body_after = fs::metadata(&body_file).expect("body meta");
    assert_eq!(
        body_after.ino(),
        body_before.ino(),
        "the body file was replaced"
    );
    assert_eq!(
        body_after.mtime_nsec(),
        body_before.mtime_nsec(),
        "the body file was rewritten"
    );
    assert_eq!(
        body_after.mtime(),
        body_before.mtime(),
        "the body file was rewritten"
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
