//! RFC 9111 conformance: validation (Section 4.3) and request/response directives that force or
//! relax it (Section 5.2), black-box against the real binary and the scripted test origin.
//!
//! Already-stale objects are produced without sleeping where possible: the origin sends
//! `Age: 100` with `max-age=10`, which makes the response 90 s stale on arrival (4.2.3).
mod common;

use std::time::Duration;

use common::*;

/// The origin was contacted, for reason `fwd`.
fn assert_fwd(f: &Fetched, fwd: &str, what: &str) {
    let cs = f.cache_status();
    assert!(
        !cs_has(&cs, "hit") && cs_get(&cs, "fwd").as_deref() == Some(fwd),
        "{what}: expected fwd={fwd}, Cache-Status: {cs:?}"
    );
}

/// Served stale from cache without contacting the origin (`hit; ttl=<negative>; fwd=stale`).
fn assert_stale_hit(f: &Fetched, what: &str) {
    let cs = f.cache_status();
    assert!(
        cs_has(&cs, "hit")
            && cs_get(&cs, "fwd").as_deref() == Some("stale")
            && cs_ttl(&cs).is_some_and(|t| t < 0),
        "{what}: expected a stale hit with a negative ttl, Cache-Status: {cs:?}"
    );
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// RFC 9111 4.3.1 / 4.3.3 / 4.3.4: a stale entry with an `ETag` is revalidated with
/// `If-None-Match`; the origin's 304 makes the cache serve the stored body as a 200 and refreshes
/// the entry with the 304's freshness (`max-age=60`).
#[test]
fn stale_entry_revalidated_with_if_none_match() {
    let origin = TestOrigin::start();
    origin.set_handler("/etag", |req, n| {
        if req.header("if-none-match").is_some() {
            Reply::new(304)
                .header("ETag", "\"e1\"")
                .header("Cache-Control", "max-age=60")
        } else {
            Reply::ok(format!("etag-body#{n}"))
                .header("ETag", "\"e1\"")
                .header("Cache-Control", "max-age=1")
        }
    });
    let node = NodeConfig::new(&origin.url()).start();

    assert_stored_miss(&get(&node, "/etag"), "first");
    sleep_ms(2200);

    let r = get(&node, "/etag");
    assert_eq!(r.status, 200, "a 304 to the cache's own validation leaked");
    assert_eq!(r.text(), "etag-body#1", "stored body not served after 304");
    assert_fwd(&r, "stale", "revalidation");
    assert_eq!(
        cs_get(&r.cache_status(), "fwd-status").as_deref(),
        Some("304"),
        "{}",
        r.cache_status()
    );
    let reqs = origin.requests("/etag");
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].header("if-none-match").as_deref(),
        Some("\"e1\""),
        "revalidation without the stored ETag: {:?}",
        reqs[1].headers
    );

    let r = get(&node, "/etag");
    assert_hit(&r, "after revalidation (new max-age=60)");
    assert_eq!(r.text(), "etag-body#1");
    let ttl = cs_ttl(&r.cache_status()).unwrap();
    assert!(
        (50..=60).contains(&ttl),
        "304's max-age=60 not applied: ttl={ttl}"
    );
    assert_eq!(origin.hits("/etag"), 2);
}

/// RFC 9111 4.3.1: without an entity tag, `Last-Modified` is sent as `If-Modified-Since`;
/// a 304 refreshes the entry (4.3.4).
#[test]
fn stale_entry_revalidated_with_if_modified_since() {
    const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    let origin = TestOrigin::start();
    origin.set_handler("/lm", |req, n| {
        if req.header("if-modified-since").is_some() {
            Reply::new(304)
                .header("Last-Modified", LM)
                .header("Cache-Control", "max-age=60")
        } else {
            Reply::ok(format!("lm-body#{n}"))
                .header("Last-Modified", LM)
                .header("Cache-Control", "max-age=1")
        }
    });
    let node = NodeConfig::new(&origin.url()).start();

    assert_stored_miss(&get(&node, "/lm"), "first");
    sleep_ms(2200);
    let r = get(&node, "/lm");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "lm-body#1");
    assert_fwd(&r, "stale", "revalidation");
    assert_eq!(
        cs_get(&r.cache_status(), "fwd-status").as_deref(),
        Some("304")
    );
    let reqs = origin.requests("/lm");
    assert_eq!(
        reqs[1].header("if-modified-since").as_deref(),
        Some(LM),
        "revalidation without If-Modified-Since: {:?}",
        reqs[1].headers
    );

    let r = get(&node, "/lm");
    assert_hit(&r, "after revalidation");
    assert_eq!(r.text(), "lm-body#1");
    assert_eq!(origin.hits("/lm"), 2);
}

/// RFC 9111 4.3.4: on a 304 the cache MUST replace the stored header fields with those of the
/// 304 (other than the few of 3.2) and use the updated response: a changed custom field shows in
/// the response to the revalidating request and in later hits, and the 304's `Date` restarts the
/// age (the 200 carried a `Date` 30 s in the past, the 304 a current one, so with the 304's
/// `max-age=60` the entry must be fresh for ~60 s, not ~30 s).
#[test]
fn revalidation_304_updates_stored_header_fields() {
    let origin = TestOrigin::start();
    // the 304's Date: after the stored response's, a little before it is sent
    let date_304 = http_date(std::time::SystemTime::now() - Duration::from_secs(1));
    let sent_304 = date_304.clone();
    origin.set_handler("/upd", move |req, n| {
        if req.header("if-none-match").is_some() {
            Reply::new(304)
                .header("Date", &sent_304)
                .header("ETag", "\"u1\"")
                .header("Cache-Control", "max-age=60")
                .header("X-Version", "2")
        } else {
            let date = std::time::SystemTime::now() - Duration::from_secs(30);
            Reply::ok(format!("upd#{n}"))
                .header("Date", &http_date(date))
                .header("ETag", "\"u1\"")
                .header("Cache-Control", "max-age=31")
                .header("X-Version", "1")
        }
    });
    let node = NodeConfig::new(&origin.url()).start();

    let r = get(&node, "/upd");
    assert_eq!(r.header("x-version").as_deref(), Some("1"));
    sleep_ms(2200);
    let r = get(&node, "/upd");
    assert_eq!(
        cs_get(&r.cache_status(), "fwd-status").as_deref(),
        Some("304"),
        "test setup: expected a revalidation, Cache-Status {}",
        r.cache_status()
    );
    assert_eq!(r.text(), "upd#1");
    let served_after_304 = r.header("x-version");
    let date_after_304 = r.header("date");

    let r = get(&node, "/upd");
    assert_hit(&r, "after revalidation");
    assert_eq!(r.text(), "upd#1");
    let ttl = cs_ttl(&r.cache_status()).unwrap();
    let age = r.age();
    let hit_version = r.header("x-version");
    let mut problems = Vec::new();
    if served_after_304.as_deref() != Some("2") {
        problems.push(format!(
            "response to the revalidating request has X-Version {served_after_304:?}, the 304 said 2"
        ));
    }
    if hit_version.as_deref() != Some("2") {
        problems.push(format!(
            "later hit has X-Version {hit_version:?}, the 304 said 2"
        ));
    }
    // RFC 9111 4.3.4: Date too comes from the 304
    for (when, date) in [
        ("after the 304", date_after_304),
        ("on the later hit", r.header("date")),
    ] {
        if date.as_deref() != Some(date_304.as_str()) {
            problems.push(format!(
                "Date {when} is {date:?}, the 304 said {date_304:?}"
            ));
        }
    }
    if ttl < 50 || age.is_none_or(|a| a > 10) {
        problems.push(format!(
            "the 304's Date was not applied: hit has ttl={ttl}, Age {age:?} (expected ~60 and ~0)"
        ));
    }
    assert!(
        problems.is_empty(),
        "stored headers not updated from the 304:\n  {}",
        problems.join("\n  ")
    );
    assert_eq!(origin.hits("/upd"), 2);
}

/// RFC 9111 4.3.3: a full (200) response to the validation request replaces the stored one.
#[test]
fn full_response_on_revalidation_replaces_the_stored_body() {
    let origin = TestOrigin::start();
    origin.set_handler("/replace", |_, n| {
        if n == 1 {
            Reply::ok("old")
                .header("ETag", "\"v1\"")
                .header("Cache-Control", "max-age=1")
        } else {
            Reply::ok(format!("new#{n}"))
                .header("ETag", "\"v2\"")
                .header("Cache-Control", "max-age=60")
        }
    });
    let node = NodeConfig::new(&origin.url()).start();

    assert_stored_miss(&get(&node, "/replace"), "first");
    sleep_ms(2200);
    let r = get(&node, "/replace");
    assert_eq!(r.text(), "new#2");
    assert_fwd(&r, "stale", "revalidation answered 200");
    let cs = r.cache_status();
    assert_eq!(cs_get(&cs, "fwd-status").as_deref(), Some("200"), "{cs}");
    assert!(cs_has(&cs, "stored"), "{cs}");
    assert_eq!(
        origin.requests("/replace")[1]
            .header("if-none-match")
            .as_deref(),
        Some("\"v1\"")
    );

    let r = get(&node, "/replace");
    assert_hit(&r, "after replacement");
    assert_eq!(r.text(), "new#2");
    assert_eq!(r.header("etag").as_deref(), Some("\"v2\""));
    assert_eq!(origin.hits("/replace"), 2);
}

/// RFC 9111 5.2.2.4: a response with `no-cache` may be stored, but must be validated before
/// every reuse.
#[test]
fn response_no_cache_stored_but_revalidated_every_time() {
    let origin = TestOrigin::start();
    origin.set(
        "/nc",
        Reply::ok("nc")
            .header("Cache-Control", "no-cache, max-age=3600")
            .header("ETag", "\"nc1\"")
            .conditional()
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();

    let r = get(&node, "/nc");
    assert_eq!(r.text(), "nc#1");
    for i in 2..=4 {
        let r = get(&node, "/nc");
        assert_eq!(r.status, 200);
        assert!(
            !cs_has(&r.cache_status(), "hit"),
            "no-cache response reused without validation (request {i}): {}",
            r.cache_status()
        );
        assert_eq!(
            origin.hits("/nc"),
            i,
            "request {i} did not reach the origin"
        );
        let req = &origin.requests("/nc")[i - 1];
        assert_eq!(
            req.header("if-none-match").as_deref(),
            Some("\"nc1\""),
            "request {i}: not a validation of a stored response"
        );
        assert_eq!(
            cs_get(&r.cache_status(), "fwd-status").as_deref(),
            Some("304")
        );
        assert_eq!(r.text(), "nc#1", "stored body not served after 304");
    }
}

/// RFC 9111 5.2.2.2: once stale, a `must-revalidate` response is not served without successful
/// validation: it is revalidated, and when the origin cannot be reached the cache answers with
/// an error (504 is suggested) instead of the stale response.
#[test]
fn must_revalidate_stale_is_revalidated_and_never_served_when_origin_is_down() {
    let origin = TestOrigin::start();
    origin.set(
        "/mr",
        Reply::ok("mr")
            .header("Cache-Control", "max-age=1, must-revalidate")
            .header("ETag", "\"mr1\"")
            .conditional()
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();

    assert_stored_miss(&get(&node, "/mr"), "first");
    sleep_ms(2200);
    let r = get(&node, "/mr");
    assert_fwd(&r, "stale", "stale must-revalidate");
    assert_eq!(r.text(), "mr#1");
    assert_eq!(
        origin.requests("/mr")[1].header("if-none-match").as_deref(),
        Some("\"mr1\"")
    );
    assert_eq!(origin.hits("/mr"), 2);

    // the origin goes away; wait until the refreshed entry (max-age=1) is stale again
    drop(origin);
    sleep_ms(2200);
    let r = get(&node, "/mr");
    assert!(
        r.status >= 500,
        "stale must-revalidate response served while the origin is down: status {}, Cache-Status {}",
        r.status,
        r.cache_status()
    );
    assert_ne!(r.text(), "mr#1");
}

/// RFC 9111 5.2.1.4: request `no-cache` (and `Pragma: no-cache` without `Cache-Control`, 5.4)
/// forces validation of a fresh stored response.
#[test]
fn request_no_cache_forces_validation() {
    let origin = TestOrigin::start();
    origin.set(
        "/fresh",
        Reply::ok("fresh")
            .header("Cache-Control", "max-age=3600")
            .header("ETag", "\"f1\"")
            .conditional()
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();

    assert_stored_miss(&get(&node, "/fresh"), "first");
    assert_hit(&get(&node, "/fresh"), "second");
    let mut expected_hits = 1;
    for headers in [[("Cache-Control", "no-cache")], [("Pragma", "no-cache")]] {
        let what = format!("{}: {}", headers[0].0, headers[0].1);
        let r = get_with(&node, "/fresh", &headers);
        assert_eq!(r.status, 200, "{what}");
        assert_fwd(&r, "request", &what);
        expected_hits += 1;
        assert_eq!(
            origin.hits("/fresh"),
            expected_hits,
            "{what}: origin not asked"
        );
        assert_eq!(r.text(), "fresh#1", "{what}");
        // still usable afterwards
        assert_hit(
            &get(&node, "/fresh"),
            &format!("plain request after {what}"),
        );
    }
}

/// RFC 9111 5.2.1.1: request `max-age=0` accepts only a response of age 0, i.e. it forces
/// validation of a stored response (here one stored a moment ago, age < 1 s).
#[test]
fn request_max_age_zero_forces_validation() {
    let origin = TestOrigin::start();
    origin.set(
        "/fresh0",
        Reply::ok("fresh0")
            .header("Cache-Control", "max-age=3600")
            .header("ETag", "\"f0\"")
            .conditional()
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();

    assert_stored_miss(&get(&node, "/fresh0"), "first");
    let r = get_with(&node, "/fresh0", &[("Cache-Control", "max-age=0")]);
    assert_eq!(r.status, 200);
    assert_fwd(&r, "request", "Cache-Control: max-age=0");
    assert_eq!(origin.hits("/fresh0"), 2, "origin not asked");
    assert_eq!(r.text(), "fresh0#1");
    assert_hit(&get(&node, "/fresh0"), "plain request afterwards");
}

/// RFC 9111 5.2.1.1: request `max-age=N` refuses a stored response older than N seconds
/// (the origin's `Age: 5` makes the stored response at least 5 s old).
#[test]
fn request_max_age_older_than_stored_age_forces_validation() {
    let origin = TestOrigin::start();
    origin.set(
        "/old",
        Reply::ok("old")
            .header("Cache-Control", "max-age=3600")
            .header("Age", "5")
            .header("ETag", "\"o1\"")
            .conditional()
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();

    assert_stored_miss(&get(&node, "/old"), "first");
    let r = get_with(&node, "/old", &[("Cache-Control", "max-age=1000")]);
    assert_hit(&r, "max-age=1000 > age");
    assert_eq!(origin.hits("/old"), 1);

    let r = get_with(&node, "/old", &[("Cache-Control", "max-age=2")]);
    assert_fwd(&r, "request", "max-age=2 < age 5");
    assert_eq!(origin.hits("/old"), 2);
    assert_eq!(r.text(), "old#1");
}

/// RFC 9111 5.2.1.3: request `min-fresh=N` refuses a stored response fresh for less than N more
/// seconds.
#[test]
fn request_min_fresh_forces_validation_when_not_fresh_enough() {
    let origin = TestOrigin::start();
    origin.set(
        "/mf",
        Reply::ok("mf")
            .header("Cache-Control", "max-age=20")
            .header("ETag", "\"m1\"")
            .conditional()
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();

    assert_stored_miss(&get(&node, "/mf"), "first");
    let r = get_with(&node, "/mf", &[("Cache-Control", "min-fresh=5")]);
    assert_hit(&r, "min-fresh=5 with ~20 s left");
    assert_eq!(origin.hits("/mf"), 1);

    let r = get_with(&node, "/mf", &[("Cache-Control", "min-fresh=60")]);
    assert_fwd(&r, "request", "min-fresh=60 with ~20 s left");
    assert_eq!(origin.hits("/mf"), 2);
    assert_eq!(r.text(), "mf#1");
}

/// RFC 9111 5.2.1.2: request `max-stale` accepts a stale response (within the limit, if given)
/// without contacting the origin; 5.2.2.2: not when the response has `must-revalidate`.
#[test]
fn request_max_stale_serves_stale_unless_must_revalidate() {
    let origin = TestOrigin::start();
    // 90 s stale on arrival
    origin.set(
        "/stale",
        Reply::ok("stale")
            .header("Cache-Control", "max-age=10")
            .header("Age", "100")
            .header("ETag", "\"s1\"")
            .body_counter(),
    );
    origin.set(
        "/stale-mr",
        Reply::ok("stale-mr")
            .header("Cache-Control", "max-age=10, must-revalidate")
            .header("Age", "100")
            .header("ETag", "\"s2\"")
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();

    let r = get(&node, "/stale");
    assert_eq!(r.text(), "stale#1");
    assert!(
        cs_has(&r.cache_status(), "stored"),
        "an already-stale response with a validator should still be stored: {}",
        r.cache_status()
    );
    for cc in ["max-stale", "max-stale=1000"] {
        let r = get_with(&node, "/stale", &[("Cache-Control", cc)]);
        assert_eq!(r.status, 200, "{cc}");
        assert_stale_hit(&r, cc);
        assert_eq!(r.text(), "stale#1", "{cc}");
        let ttl = cs_ttl(&r.cache_status()).unwrap();
        assert!(
            (-95..=-85).contains(&ttl),
            "{cc}: stale by ~90 s, ttl={ttl}"
        );
        assert!(
            r.age().is_some_and(|a| a >= 100),
            "{cc}: Age {:?}",
            r.header("age")
        );
        assert_eq!(origin.hits("/stale"), 1, "{cc}: origin contacted");
    }
    // 90 s stale exceeds max-stale=30
    let r = get_with(&node, "/stale", &[("Cache-Control", "max-stale=30")]);
    assert!(
        !cs_has(&r.cache_status(), "hit"),
        "max-stale=30 accepted a response 90 s stale: {}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/stale"), 2);

    let r = get(&node, "/stale-mr");
    assert_eq!(r.text(), "stale-mr#1");
    let r = get_with(&node, "/stale-mr", &[("Cache-Control", "max-stale")]);
    assert!(
        !cs_has(&r.cache_status(), "hit"),
        "max-stale served a stale must-revalidate response: {}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/stale-mr"), 2);
    assert_eq!(r.text(), "stale-mr#2");
}

/// RFC 9111 5.2.1.7: `only-if-cached`: a stored response consistent with the request, or 504 and
/// never the origin.
#[test]
fn request_only_if_cached() {
    let origin = TestOrigin::start();
    origin.set(
        "/oic",
        Reply::ok("oic")
            .header("Cache-Control", "max-age=3600")
            .body_counter(),
    );
    origin.set(
        "/oic-stale",
        Reply::ok("oic-stale")
            .header("Cache-Control", "max-age=10")
            .header("Age", "100")
            .header("ETag", "\"st\"")
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();
    let oic = [("Cache-Control", "only-if-cached")];

    let r = get_with(&node, "/oic", &oic);
    assert_eq!(
        r.status,
        504,
        "only-if-cached miss: Cache-Status {}",
        r.cache_status()
    );
    assert_eq!(
        origin.hits("/oic"),
        0,
        "only-if-cached contacted the origin"
    );
    // the 504 was not stored: a normal request fills the cache
    let r = get(&node, "/oic");
    assert_eq!(r.status, 200);
    assert_stored_miss(&r, "normal request after the 504");

    let r = get_with(&node, "/oic", &oic);
    assert_eq!(r.status, 200);
    assert_hit(&r, "only-if-cached on a hit");
    assert_eq!(r.text(), "oic#1");
    assert_eq!(origin.hits("/oic"), 1);

    // a stale stored response is not "consistent with the other constraints" ...
    assert_eq!(get(&node, "/oic-stale").text(), "oic-stale#1");
    let r = get_with(&node, "/oic-stale", &oic);
    assert_eq!(
        r.status,
        504,
        "only-if-cached on a stale entry: Cache-Status {}",
        r.cache_status()
    );
    assert_eq!(
        origin.hits("/oic-stale"),
        1,
        "only-if-cached contacted the origin"
    );
    // ... unless the request accepts it
    let r = get_with(
        &node,
        "/oic-stale",
        &[("Cache-Control", "only-if-cached, max-stale")],
    );
    assert_eq!(r.status, 200);
    assert_stale_hit(&r, "only-if-cached, max-stale");
    assert_eq!(r.text(), "oic-stale#1");
    assert_eq!(origin.hits("/oic-stale"), 1);
}

/// RFC 9111 4.3.2 (with RFC 9110 13.1.2 / 13.1.3 / 13.2.2): a cache answers a client's
/// conditional request from a fresh stored response: a matching `If-None-Match` (weak
/// comparison) or an `If-Modified-Since` not older than `Last-Modified` gets a 304, without
/// contacting the origin.
#[test]
fn client_conditional_requests_answered_from_cache() {
    const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    let origin = TestOrigin::start();
    origin.set(
        "/cond",
        Reply::ok("cond-body")
            .header("Cache-Control", "max-age=3600")
            .header("ETag", "\"c1\"")
            .header("Last-Modified", LM),
    );
    let node = NodeConfig::new(&origin.url()).start();
    assert_stored_miss(&get(&node, "/cond"), "first");
    assert_eq!(origin.hits("/cond"), 1);

    let not_modified: [(&str, &str); 4] = [
        ("If-None-Match", "\"c1\""),
        ("If-None-Match", "\"zz\", \"c1\""),
        ("If-None-Match", "W/\"c1\""),
        ("If-Modified-Since", "Mon, 07 Nov 1994 08:49:37 GMT"),
    ];
    for (k, v) in not_modified {
        let r = get_with(&node, "/cond", &[(k, v)]);
        assert_eq!(
            r.status,
            304,
            "{k}: {v} should be answered 304 from cache, Cache-Status {}",
            r.cache_status()
        );
        assert!(r.body.is_empty(), "{k}: {v}: 304 with a body");
        assert_eq!(
            r.header("etag").as_deref(),
            Some("\"c1\""),
            "{k}: {v}: 304 without the ETag (RFC 9110 15.4.5)"
        );
        assert_eq!(origin.hits("/cond"), 1, "{k}: {v}: origin contacted");
    }

    let modified: [(&str, &str); 2] = [
        ("If-None-Match", "\"other\""),
        ("If-Modified-Since", "Sat, 05 Nov 1994 08:49:37 GMT"),
    ];
    for (k, v) in modified {
        let r = get_with(&node, "/cond", &[(k, v)]);
        assert_eq!(r.status, 200, "{k}: {v}");
        assert_eq!(r.text(), "cond-body", "{k}: {v}");
        assert_hit(&r, &format!("{k}: {v}"));
    }
    assert_eq!(origin.hits("/cond"), 1);

    // RFC 9110 13.1.2: `*` matches any current representation, one without an ETag too
    origin.set(
        "/no-etag",
        Reply::ok("plain").header("Cache-Control", "max-age=3600"),
    );
    assert_stored_miss(&get(&node, "/no-etag"), "no ETag");
    for path in ["/cond", "/no-etag"] {
        let r = get_with(&node, path, &[("If-None-Match", "*")]);
        assert_eq!(
            r.status,
            304,
            "{path}: If-None-Match: * ({})",
            r.cache_status()
        );
    }
    assert_eq!(origin.hits("/no-etag"), 1);
}
