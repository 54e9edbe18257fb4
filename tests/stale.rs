//! Serving stale (RFC 5861, RFC 9111 4.2.4) and negative caching, black-box against the real
//! binary and a test origin that changes behaviour at runtime.
//!
//! Stale objects are made without sleeping: the origin sends `Age: 100` with `max-age=10`, so a
//! response is 90 s stale on arrival (RFC 9111 4.2.3); its stale windows decide the rest.
mod common;

use std::time::Duration;

use common::*;

const STALE_SERVED: &str = "outpost_cache_stale_served_total";
const REVALIDATIONS: &str = "outpost_cache_revalidations_total";
const NEGATIVE_HITS: &str = "outpost_cache_negative_hits_total";
const WAIT: Duration = Duration::from_secs(10);

/// A response 90 s stale on arrival with the extra `Cache-Control` directives `cc`.
fn stale_on_arrival(body: &str, cc: &str) -> Reply {
    let cc = if cc.is_empty() {
        "max-age=10".to_string()
    } else {
        format!("max-age=10, {cc}")
    };
    Reply::ok(body.to_string())
        .header("Cache-Control", &cc)
        .header("Age", "100")
        .header("ETag", "\"v1\"")
}

fn metric(node: &Node, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(&node.metrics(), name, labels)
}

/// A stale response served at once while the origin is asked in the background.
fn assert_swr_hit(f: &Fetched, what: &str) {
    let cs = f.cache_status();
    assert!(
        cs_has(&cs, "hit")
            && cs_get(&cs, "fwd").as_deref() == Some("stale")
            && cs_get(&cs, "detail").as_deref() == Some("stale-while-revalidate")
            && cs_ttl(&cs).is_some_and(|t| t < 0),
        "{what}: expected a stale-while-revalidate hit, Cache-Status: {cs:?}"
    );
}

/// A stale response served because the origin failed (`fwd-status` when it answered one).
fn assert_stale_on_error(f: &Fetched, fwd_status: Option<&str>, what: &str) {
    let cs = f.cache_status();
    assert!(
        !cs_has(&cs, "hit")
            && cs_get(&cs, "fwd").as_deref() == Some("stale")
            && cs_get(&cs, "detail").as_deref() == Some("stale-if-error")
            && cs_get(&cs, "fwd-status").as_deref() == fwd_status
            && cs_ttl(&cs).is_some_and(|t| t < 0),
        "{what}: expected stale-if-error with fwd-status {fwd_status:?}, Cache-Status: {cs:?}"
    );
    // the node closes the connection after such a response: it must say so
    assert_eq!(f.header("connection").as_deref(), Some("close"), "{what}");
}

/// Refreshes answer `fresh#<n>` after `delay`, fresh for a minute.
fn refreshed(n: usize, delay: Duration) -> Reply {
    Reply::ok(format!("fresh#{n}"))
        .header("Cache-Control", "max-age=60")
        .header("ETag", "\"v2\"")
        .delay(delay)
}

#[test]
fn stale_while_revalidate_answers_at_once_while_one_background_refresh_runs() {
    let origin = TestOrigin::start();
    origin.set_handler("/swr", |_, n| {
        if n == 1 {
            stale_on_arrival("old", "stale-while-revalidate=300")
        } else {
            // slow enough that a request waiting for it could not get "old"
            refreshed(n, Duration::from_millis(1500))
        }
    });
    let node = NodeConfig::new(&origin.url()).start();
    assert_stored_miss(&get(&node, "/swr"), "fill");

    std::thread::scope(|s| {
        let clients: Vec<_> = (0..8).map(|_| s.spawn(|| get(&node, "/swr"))).collect();
        for c in clients {
            let r = c.join().expect("client");
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), "old", "a client waited for the refresh");
            assert_swr_hit(&r, "stale within its stale-while-revalidate window");
        }
    });
    // exactly one refresh reaches the origin, and its result is served fresh afterwards
    let deadline = std::time::Instant::now() + WAIT;
    let mut stale_served = 8;
    let fresh = loop {
        let r = get(&node, "/swr");
        if r.text() != "old" || std::time::Instant::now() > deadline {
            break r;
        }
        assert_swr_hit(&r, "while the refresh runs");
        stale_served += 1;
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        fresh.text(),
        "fresh#2",
        "the background refresh was not stored"
    );
    assert_hit(&fresh, "after the refresh");
    assert_eq!(origin.hits("/swr"), 2, "more than one background refresh");
    assert_eq!(
        metric(&node, STALE_SERVED, &[("reason", "while-revalidate")]),
        f64::from(stale_served)
    );
    let refresh = &origin.requests("/swr")[1];
    assert_eq!(
        refresh.header("if-none-match").as_deref(),
        Some("\"v1\""),
        "the background refresh was not conditional"
    );
}

#[test]
fn rule_default_stale_while_revalidate_applies_unless_the_origin_forbids_it() {
    let origin = TestOrigin::start();
    origin.set_handler("/plain", |_, n| {
        if n == 1 {
            stale_on_arrival("old", "")
        } else {
            refreshed(n, Duration::from_millis(300))
        }
    });
    origin.set_handler("/must", |_, n| {
        if n == 1 {
            stale_on_arrival("old", "must-revalidate")
        } else {
            refreshed(n, Duration::ZERO)
        }
    });
    let node = NodeConfig::new(&origin.url())
        .rules(
            r#"
[[rules]]
name = "swr"
action = "cache"
[rules.stale]
while_revalidate = "5m"
"#,
        )
        .start();
    for path in ["/plain", "/must"] {
        assert_stored_miss(&get(&node, path), path);
    }
    let r = get(&node, "/plain");
    assert_eq!(r.text(), "old");
    assert_swr_hit(&r, "rule default window");
    // must-revalidate: the stale response is never used, the client waits for the origin
    let r = get(&node, "/must");
    assert_eq!(
        r.text(),
        "fresh#2",
        "a must-revalidate response was served stale"
    );
    assert!(!cs_has(&r.cache_status(), "hit"), "{}", r.cache_status());
}

#[test]
fn stale_if_error_covers_an_unreachable_origin_within_its_window_only() {
    let origin = TestOrigin::start();
    // 90 s stale: inside a 300 s window, outside a 60 s one
    origin.set("/inside", stale_on_arrival("kept", "stale-if-error=300"));
    origin.set("/outside", stale_on_arrival("gone", "stale-if-error=60"));
    // "0s": no serving stale when disconnected either, so only the windows count
    let node = NodeConfig::new(&origin.url())
        .rules(
            "[[rules]]\nname = \"windows\"\naction = \"cache\"\n[rules.stale]\nif_error = \"0s\"",
        )
        .start();
    for path in ["/inside", "/outside"] {
        assert_stored_miss(&get(&node, path), path);
    }
    drop(origin);

    let r = get(&node, "/inside");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "kept");
    assert_stale_on_error(&r, None, "origin down, within stale-if-error");

    let r = get(&node, "/outside");
    assert_eq!(
        r.status,
        502,
        "past the window the error goes through: {}",
        r.text()
    );
    // counted when each request is logged, just after its response is sent
    let limit = Duration::from_secs(5);
    let labels = [("reason", "if-error")];
    wait_metric(
        &node,
        STALE_SERVED,
        &labels,
        |v| v == 1.0,
        limit,
        "stale served",
    );
    let labels = [("outcome", "error")];
    wait_metric(
        &node,
        REVALIDATIONS,
        &labels,
        |v| v == 2.0,
        limit,
        "revalidations",
    );
}

#[test]
fn stale_if_error_covers_5xx_answers_but_not_others() {
    let origin = TestOrigin::start();
    for (path, status) in [
        ("/500", 500),
        ("/502", 502),
        ("/503", 503),
        ("/504", 504),
        ("/501", 501),
    ] {
        origin.set_handler(path, move |_, n| {
            if n == 1 {
                stale_on_arrival("kept", "stale-if-error=300")
            } else {
                Reply::new(status).body("origin error")
            }
        });
    }
    // no backoff: every request asks the origin, so each status is seen
    let node = NodeConfig::new(&origin.url())
        .origin("failure_backoff = \"0s\"")
        .start();
    for path in ["/500", "/502", "/503", "/504", "/501"] {
        assert_stored_miss(&get(&node, path), path);
    }
    for code in ["500", "502", "503", "504"] {
        let r = get(&node, &format!("/{code}"));
        assert_eq!(r.status, 200, "/{code}");
        assert_eq!(r.text(), "kept", "/{code}");
        assert_stale_on_error(&r, Some(code), &format!("origin answered {code}"));
    }
    // RFC 5861 4: only 500, 502, 503 and 504 count as errors
    let r = get(&node, "/501");
    assert_eq!(r.status, 501);
}

#[test]
fn stale_if_error_covers_an_origin_timeout_and_a_rule_default_grace() {
    let origin = TestOrigin::start();
    origin.set_handler("/slow", |_, n| {
        if n == 1 {
            stale_on_arrival("kept", "")
        } else {
            Reply::ok("too late").delay(Duration::from_secs(3))
        }
    });
    let node = NodeConfig::new(&origin.url())
        .origin("read_timeout = \"500ms\"")
        .rules(
            r#"
[[rules]]
name = "grace"
action = "cache"
[rules.stale]
if_error = "10m"
"#,
        )
        .start();
    assert_stored_miss(&get(&node, "/slow"), "fill");
    let r = get(&node, "/slow");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "kept");
    assert_stale_on_error(&r, None, "origin timed out, rule grace");
}

#[test]
fn must_revalidate_and_no_cache_forbid_stale_if_error() {
    let origin = TestOrigin::start();
    for (path, cc) in [
        ("/must", "must-revalidate, stale-if-error=300"),
        ("/proxy", "proxy-revalidate, stale-if-error=300"),
    ] {
        let cc = cc.to_string();
        origin.set_handler(path, move |_, n| {
            if n == 1 {
                stale_on_arrival("kept", &cc)
            } else {
                Reply::new(503).body("origin error")
            }
        });
    }
    let node = NodeConfig::new(&origin.url())
        .rules("[[rules]]\nname = \"grace\"\naction = \"cache\"\n[rules.stale]\nif_error = \"1h\"")
        .start();
    for path in ["/must", "/proxy"] {
        assert_stored_miss(&get(&node, path), path);
        let r = get(&node, path);
        assert_eq!(
            r.status, 503,
            "{path}: served stale despite the origin forbidding it"
        );
    }
}

#[test]
fn s_maxage_keeps_rule_defaults_out_but_honours_explicit_windows() {
    let origin = TestOrigin::start();
    origin.set_handler("/default", |_, n| {
        if n == 1 {
            Reply::ok("kept")
                .header("Cache-Control", "s-maxage=10")
                .header("Age", "100")
        } else {
            Reply::new(503)
        }
    });
    origin.set_handler("/explicit", |_, n| {
        if n == 1 {
            Reply::ok("kept")
                .header("Cache-Control", "s-maxage=10, stale-if-error=300")
                .header("Age", "100")
        } else {
            Reply::new(503)
        }
    });
    let node = NodeConfig::new(&origin.url())
        .origin("failure_backoff = \"0s\"")
        .rules("[[rules]]\nname = \"grace\"\naction = \"cache\"\n[rules.stale]\nif_error = \"1h\"")
        .start();
    for path in ["/default", "/explicit"] {
        assert_stored_miss(&get(&node, path), path);
    }
    assert_eq!(get(&node, "/default").status, 503);
    let r = get(&node, "/explicit");
    assert_eq!(r.text(), "kept");
    assert_stale_on_error(&r, Some("503"), "explicit stale-if-error beside s-maxage");
}

#[test]
fn not_found_is_cached_briefly_and_server_errors_only_when_configured() {
    let origin = TestOrigin::start();
    origin.set("/missing", Reply::new(404).body("no such thing"));
    origin.set("/broken", Reply::new(503).body("down for maintenance"));
    let node = NodeConfig::new(&origin.url()).start();
    for _ in 0..3 {
        assert_eq!(get(&node, "/missing").status, 404);
        assert_eq!(get(&node, "/broken").status, 503);
    }
    assert_eq!(
        origin.hits("/missing"),
        1,
        "a 404 was not negatively cached"
    );
    assert_eq!(origin.hits("/broken"), 3, "a 503 was cached by default");
    let r = get(&node, "/missing");
    assert_hit(&r, "cached 404");
    assert_eq!(r.text(), "no such thing");
    assert!(
        cs_ttl(&r.cache_status()).is_some_and(|t| (0..=10).contains(&t)),
        "404 ttl should be the 10 s default: {}",
        r.cache_status()
    );
    // counted when the request is logged, just after its response is sent
    wait_metric(
        &node,
        NEGATIVE_HITS,
        &[],
        |v| v == 3.0,
        Duration::from_secs(5),
        "negative hits counted",
    );

    let node2 = NodeConfig::new(&origin.url())
        .rules(
            r#"
[[rules]]
name = "negative"
action = "cache"
[rules.ttl]
not_found = "0s"
server_error = "30s"
"#,
        )
        .start();
    for _ in 0..3 {
        assert_eq!(get(&node2, "/missing").status, 404);
        assert_eq!(get(&node2, "/broken").status, 503);
    }
    assert_eq!(
        origin.hits("/missing"),
        4,
        "not_found = 0s still cached a 404"
    );
    assert_eq!(
        origin.hits("/broken"),
        4,
        "server_error = 30s did not cache the 503"
    );
}

#[test]
fn explicit_freshness_on_a_404_wins_over_the_negative_ttl() {
    let origin = TestOrigin::start();
    origin.set(
        "/gone",
        Reply::new(410)
            .header("Cache-Control", "max-age=300")
            .body("gone for good"),
    );
    origin.set(
        "/nostore",
        Reply::new(404).header("Cache-Control", "no-store"),
    );
    let node = NodeConfig::new(&origin.url()).start();
    get(&node, "/gone");
    get(&node, "/nostore");
    let r = get(&node, "/gone");
    assert_hit(&r, "410 with max-age");
    assert!(
        cs_ttl(&r.cache_status()).is_some_and(|t| t > 200),
        "{}",
        r.cache_status()
    );
    get(&node, "/nostore");
    assert_eq!(origin.hits("/nostore"), 2, "a no-store 404 was cached");
}

#[test]
fn revalidations_are_counted_by_outcome() {
    let origin = TestOrigin::start();
    origin.set_handler("/nm", |req, _| {
        if req.header("if-none-match").is_some() {
            Reply::new(304)
                .header("Cache-Control", "max-age=60")
                .header("ETag", "\"v1\"")
        } else {
            stale_on_arrival("body", "")
        }
    });
    origin.set_handler("/new", |_, n| {
        if n == 1 {
            stale_on_arrival("old", "")
        } else {
            refreshed(n, Duration::ZERO)
        }
    });
    let node = NodeConfig::new(&origin.url()).start();
    get(&node, "/nm");
    get(&node, "/new");
    let r = get(&node, "/nm");
    assert_eq!(r.text(), "body");
    let r = get(&node, "/new");
    assert_eq!(r.text(), "fresh#2");
    assert_eq!(
        metric(&node, REVALIDATIONS, &[("outcome", "not-modified")]),
        1.0
    );
    assert_eq!(
        metric(&node, REVALIDATIONS, &[("outcome", "replaced")]),
        1.0
    );
    assert_eq!(metric(&node, REVALIDATIONS, &[("outcome", "error")]), 0.0);
}

#[test]
fn concurrent_revalidations_of_one_key_make_one_origin_request() {
    let origin = TestOrigin::start();
    origin.set_handler("/reval", |req, _| {
        if req.header("if-none-match").is_some() {
            Reply::new(304)
                .header("Cache-Control", "max-age=60")
                .header("ETag", "\"v1\"")
                .delay(Duration::from_millis(500))
        } else {
            stale_on_arrival("body", "")
        }
    });
    let node = NodeConfig::new(&origin.url()).start();
    get(&node, "/reval");
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..10).map(|_| s.spawn(|| get(&node, "/reval"))).collect();
        for c in clients {
            let r = c.join().expect("client");
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), "body");
        }
    });
    assert_eq!(origin.hits("/reval"), 2, "revalidations were not collapsed");
}

#[test]
fn a_burst_for_a_stale_key_during_an_outage_does_not_pile_onto_the_origin() {
    let origin = TestOrigin::start();
    origin.set_handler("/outage", |_, n| {
        if n == 1 {
            stale_on_arrival("kept", "stale-if-error=300")
        } else {
            Reply::ok("too late").delay(Duration::from_secs(3))
        }
    });
    let node = NodeConfig::new(&origin.url())
        .origin("read_timeout = \"500ms\"")
        .start();
    assert_stored_miss(&get(&node, "/outage"), "fill");
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..10).map(|_| s.spawn(|| get(&node, "/outage"))).collect();
        for c in clients {
            let r = c.join().expect("client");
            assert_eq!(r.status, 200, "{}", r.cache_status());
            assert_eq!(r.text(), "kept");
            assert_eq!(
                cs_get(&r.cache_status(), "detail").as_deref(),
                Some("stale-if-error")
            );
        }
    });
    // one fetch timed out; the requests behind it were answered stale without another try
    assert_eq!(
        origin.hits("/outage"),
        2,
        "the burst piled onto the failing origin"
    );
}

#[test]
fn after_an_origin_failure_stale_objects_are_served_without_asking_it_until_the_backoff_ends() {
    let origin = TestOrigin::start();
    for path in ["/a", "/b"] {
        origin.set_handler(path, |_, n| {
            if n == 1 {
                stale_on_arrival("kept", "stale-if-error=300")
            } else {
                Reply::new(503).body("origin error")
            }
        });
    }
    origin.set(
        "/fresh-miss",
        Reply::ok("miss").header("Cache-Control", "max-age=60"),
    );
    let node = NodeConfig::new(&origin.url())
        .origin("failure_backoff = \"1500ms\"")
        .start();
    for path in ["/a", "/b"] {
        assert_stored_miss(&get(&node, path), path);
    }
    let r = get(&node, "/a");
    assert_stale_on_error(&r, Some("503"), "first failure");
    // /b is answered stale at once: the origin failed moments ago
    let r = get(&node, "/b");
    assert_eq!(r.text(), "kept");
    let cs = r.cache_status();
    assert!(
        cs_has(&cs, "hit") && cs_get(&cs, "detail").as_deref() == Some("stale-if-error"),
        "{cs}"
    );
    assert_eq!(origin.hits("/b"), 1, "the failing origin was asked again");
    // a miss still goes to the origin: there is nothing else to serve
    assert_eq!(get(&node, "/fresh-miss").text(), "miss");
    // after the backoff the origin is asked again
    std::thread::sleep(Duration::from_millis(1700));
    let r = get(&node, "/b");
    assert_stale_on_error(&r, Some("503"), "after the backoff");
    assert_eq!(origin.hits("/b"), 2);
}

#[test]
fn total_timeout_bounds_a_whole_origin_fetch() {
    let origin = TestOrigin::start();
    // the header comes after 1.5 s: within read_timeout, past total_timeout
    origin.set(
        "/late-header",
        Reply::ok("late")
            .header("Cache-Control", "max-age=60")
            .delay(Duration::from_millis(1500)),
    );
    // the header is quick, the body stalls for 1.5 s after its first 1,000 bytes
    origin.set(
        "/slow-body",
        Reply::ok(vec![b'x'; 20_000])
            .header("Cache-Control", "max-age=60")
            .stall_after(1000, Duration::from_millis(1500)),
    );
    let node = NodeConfig::new(&origin.url())
        .origin("read_timeout = \"3s\"\ntotal_timeout = \"1s\"")
        .start();
    let r = get(&node, "/late-header");
    assert_eq!(r.status, 504, "{}", r.text());
    // the body is cut short: never a complete-looking response, never stored
    let cut = try_fetch(node.client().get(node.url("/slow-body")).send());
    assert!(
        cut.as_ref().map_or(true, |f| f.body.len() < 20_000),
        "a fetch past total_timeout was served whole"
    );
    let again = try_fetch(node.client().get(node.url("/slow-body")).send());
    assert!(again.map_or(true, |f| !cs_has(&f.cache_status(), "hit")));
    assert_eq!(
        origin.hits("/slow-body"),
        2,
        "the cut-short body was stored"
    );
}
