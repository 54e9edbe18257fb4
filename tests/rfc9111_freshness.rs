//! RFC 9111 conformance: freshness (Section 4.2) and `Expires` (Section 5.3), black-box against
//! the real binary and the scripted test origin.
//!
//! `ttl=` in Cache-Status and `Age` are whole seconds and the origin's `Date` has one-second
//! resolution, so every bound below allows a couple of seconds of slack.
mod common;

use std::time::{Duration, SystemTime};

use common::*;

/// Not served from cache as fresh: the origin was contacted.
fn assert_forwarded(f: &Fetched, what: &str) {
    let cs = f.cache_status();
    assert!(
        !cs_has(&cs, "hit") && cs_get(&cs, "fwd").is_some() && cs_get(&cs, "fwd-status").is_some(),
        "{what}: expected the origin to be contacted, Cache-Status: {cs:?}"
    );
}

fn ttl_of(f: &Fetched, what: &str) -> i64 {
    let cs = f.cache_status();
    cs_ttl(&cs).unwrap_or_else(|| panic!("{what}: no numeric ttl in Cache-Status {cs:?}"))
}

fn ago(secs: u64) -> String {
    http_date(SystemTime::now() - Duration::from_secs(secs))
}

fn from_now(secs: u64) -> String {
    http_date(SystemTime::now() + Duration::from_secs(secs))
}

/// RFC 9111 4.2.1: a shared cache uses `s-maxage` first, then `max-age`, then `Expires - Date`.
#[test]
fn freshness_lifetime_precedence_s_maxage_max_age_expires() {
    let origin = TestOrigin::start();
    // s-maxage (100) beats max-age (10) and Expires (+10 s)
    origin.set_handler("/smax", |_, n| {
        Reply::ok(format!("smax#{n}"))
            .header("Cache-Control", "max-age=10, s-maxage=100")
            .header("Expires", &from_now(10))
    });
    // a short s-maxage beats a long max-age too
    origin.set_handler("/smax-short", |_, n| {
        Reply::ok(format!("smax-short#{n}"))
            .header("Cache-Control", "s-maxage=20, max-age=3600")
            .header("Expires", &from_now(3600))
    });
    // max-age (100) beats Expires (+10 s)
    origin.set_handler("/maxage", |_, n| {
        Reply::ok(format!("maxage#{n}"))
            .header("Cache-Control", "max-age=100")
            .header("Expires", &from_now(10))
    });
    // max-age beats an Expires in the past
    origin.set_handler("/maxage-past-expires", |_, n| {
        Reply::ok(format!("mpe#{n}"))
            .header("Cache-Control", "max-age=100")
            .header("Expires", "Thu, 01 Jan 1970 00:00:00 GMT")
    });
    // Expires alone: lifetime = Expires - Date
    origin.set_handler("/expires", |_, n| {
        Reply::ok(format!("expires#{n}")).header("Expires", &from_now(50))
    });
    let node = NodeConfig::new(&origin.url()).start();

    let cases: [(&str, i64); 5] = [
        ("/smax", 100),
        ("/smax-short", 20),
        ("/maxage", 100),
        ("/maxage-past-expires", 100),
        ("/expires", 50),
    ];
    for (path, lifetime) in cases {
        assert_stored_miss(&get(&node, path), path);
        let r = get(&node, path);
        assert_hit(&r, path);
        let ttl = ttl_of(&r, path);
        assert!(
            (lifetime - 4..=lifetime).contains(&ttl),
            "{path}: expected a freshness lifetime of {lifetime}s, hit has ttl={ttl} ({})",
            r.cache_status()
        );
        assert_eq!(origin.hits(path), 1, "{path}");
    }
}

/// RFC 9111 5.3: an `Expires` in the past (relative to `Date`) or an invalid one such as "0"
/// means the response is already stale: it must not be served from cache without validation,
/// even when the rule has a `ttl.default` (which only applies without explicit freshness).
#[test]
fn past_or_invalid_expires_means_stale() {
    let origin = TestOrigin::start();
    origin.set_handler("/past", |_, n| {
        Reply::ok(format!("past#{n}")).header("Expires", &ago(3600))
    });
    origin.set_handler("/zero", |_, n| {
        Reply::ok(format!("zero#{n}")).header("Expires", "0")
    });
    origin.set_handler("/garbage", |_, n| {
        Reply::ok(format!("garbage#{n}")).header("Expires", "next tuesday")
    });
    // with a validator it may be stored, but every use is a revalidation
    origin.set_handler("/zero-etag", |_, n| {
        Reply::ok(format!("zero-etag#{n}"))
            .header("Expires", "0")
            .header("ETag", "\"z1\"")
    });
    let node = NodeConfig::new(&origin.url())
        .rules(
            r#"
[[rules]]
name = "with-default"
action = "cache"
[rules.ttl]
default = "1h"
"#,
        )
        .start();

    for path in ["/past", "/zero", "/garbage", "/zero-etag"] {
        for i in 1..=3 {
            let r = get(&node, path);
            assert_eq!(r.status, 200, "{path} request {i}");
            assert_forwarded(&r, &format!("{path} request {i}"));
        }
        assert_eq!(
            origin.hits(path),
            3,
            "{path}: an already-expired response was served from cache"
        );
    }
}

/// RFC 9111 4.2.2: without explicit freshness, a heuristic lifetime of 10% of the time since
/// `Last-Modified` (measured at `Date`) is used; the response becomes stale afterwards.
#[test]
fn heuristic_freshness_is_ten_percent_of_last_modified_age() {
    let origin = TestOrigin::start();
    // Last-Modified 100 s before Date -> fresh for ~10 s
    origin.set_handler("/lm100", |_, n| {
        Reply::ok(format!("lm100#{n}")).header("Last-Modified", &ago(100))
    });
    // Last-Modified 30 s before Date -> fresh for ~3 s
    origin.set_handler("/lm30", |_, n| {
        Reply::ok(format!("lm30#{n}")).header("Last-Modified", &ago(30))
    });
    let node = NodeConfig::new(&origin.url()).start();

    assert_stored_miss(&get(&node, "/lm100"), "/lm100 first");
    let r = get(&node, "/lm100");
    assert_hit(&r, "/lm100 second");
    assert_eq!(r.text(), "lm100#1");
    let ttl = ttl_of(&r, "/lm100");
    assert!(
        (6..=10).contains(&ttl),
        "Last-Modified 100 s ago: expected a heuristic lifetime of ~10 s, got ttl={ttl}"
    );

    assert_stored_miss(&get(&node, "/lm30"), "/lm30 first");
    let r = get(&node, "/lm30");
    assert_hit(&r, "/lm30 immediately after");
    assert!(ttl_of(&r, "/lm30") <= 3, "{}", r.cache_status());
    std::thread::sleep(Duration::from_millis(4000));
    let r = get(&node, "/lm30");
    assert_forwarded(&r, "/lm30 after its ~3 s heuristic lifetime");
    assert_eq!(
        cs_get(&r.cache_status(), "fwd").as_deref(),
        Some("stale"),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.text(), "lm30#2");
    assert_eq!(origin.hits("/lm30"), 2);
    assert_eq!(origin.hits("/lm100"), 1);
}

/// RFC 9111 4.2.2 leaves the heuristic's upper bound to the cache; `cache.heuristic_max_ttl`
/// caps it.
#[test]
fn heuristic_freshness_is_capped_by_heuristic_max_ttl() {
    let origin = TestOrigin::start();
    // Last-Modified 1000 s ago: 100 s uncapped
    origin.set_handler("/old", |_, n| {
        Reply::ok(format!("old#{n}")).header("Last-Modified", &ago(1000))
    });
    let node = NodeConfig::new(&origin.url())
        .cache("heuristic_max_ttl = \"2s\"")
        .start();

    assert_stored_miss(&get(&node, "/old"), "/old first");
    let r = get(&node, "/old");
    if cs_has(&r.cache_status(), "hit") {
        let ttl = ttl_of(&r, "/old");
        assert!(
            ttl <= 2,
            "heuristic lifetime not capped at 2 s: ttl={ttl} ({})",
            r.cache_status()
        );
    }
    std::thread::sleep(Duration::from_millis(3500));
    let r = get(&node, "/old");
    assert_forwarded(&r, "/old after the 2 s cap");
    assert_eq!(r.text(), "old#2");
}

/// RFC 9111 4.2.3 / 5.1: a response served from cache carries an `Age` that grows with the time
/// spent in the cache, and the remaining freshness shrinks accordingly.
#[test]
fn age_header_on_hits_grows_over_time() {
    let origin = TestOrigin::start();
    origin.set(
        "/aging",
        Reply::ok("aging")
            .header("Cache-Control", "max-age=60")
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();

    assert_stored_miss(&get(&node, "/aging"), "first");
    let r1 = get(&node, "/aging");
    assert_hit(&r1, "hit 1");
    let age1 = r1.age().expect("hit without a numeric Age header");
    let ttl1 = ttl_of(&r1, "hit 1");
    assert!(age1 <= 2, "fresh object with Age {age1}");
    assert!(
        (57..=61).contains(&(age1 as i64 + ttl1)),
        "Age {age1} + ttl {ttl1} should be ~max-age 60"
    );

    std::thread::sleep(Duration::from_millis(2200));
    let r2 = get(&node, "/aging");
    assert_hit(&r2, "hit 2");
    let age2 = r2.age().expect("hit without a numeric Age header");
    let ttl2 = ttl_of(&r2, "hit 2");
    assert!(
        age2 >= age1 + 2,
        "Age did not grow: {age1} then {age2} after 2.2 s"
    );
    assert!(
        ttl2 <= ttl1 - 2,
        "ttl did not shrink: {ttl1} then {ttl2} after 2.2 s"
    );
    assert_eq!(r2.text(), "aging#1");
    assert_eq!(origin.hits("/aging"), 1);
}

/// RFC 9111 4.2.3: the origin's (or an upstream cache's) `Age` counts towards the current age:
/// `Age: 8` with `max-age=10` leaves ~2 s of freshness, and hits report an `Age` of at least 8.
#[test]
fn origin_age_counts_towards_current_age() {
    let origin = TestOrigin::start();
    origin.set_handler("/aged", |_, n| {
        Reply::ok(format!("aged#{n}"))
            .header("Cache-Control", "max-age=10")
            .header("Age", "8")
    });
    let node = NodeConfig::new(&origin.url()).start();

    assert_stored_miss(&get(&node, "/aged"), "first");
    let r = get(&node, "/aged");
    if cs_has(&r.cache_status(), "hit") {
        let age = r.age().expect("hit without a numeric Age header");
        assert!(
            age >= 8,
            "origin sent Age: 8, the hit says Age: {age} ({})",
            r.cache_status()
        );
        let ttl = ttl_of(&r, "hit");
        assert!(
            ttl <= 2,
            "Age: 8 + max-age=10 leaves at most 2 s, hit has ttl={ttl}"
        );
    } else {
        // only acceptable if the 2 s already elapsed (a very slow machine)
        assert_eq!(
            cs_get(&r.cache_status(), "fwd").as_deref(),
            Some("stale"),
            "{}",
            r.cache_status()
        );
    }
    std::thread::sleep(Duration::from_millis(3000));
    let r = get(&node, "/aged");
    assert_forwarded(&r, "after max-age minus the origin's Age");
    assert_eq!(cs_get(&r.cache_status(), "fwd").as_deref(), Some("stale"));
    assert!(r.text().starts_with("aged#"), "{}", r.text());
    assert!(origin.hits("/aged") >= 2);
}

/// RFC 9111 5.1: `Age` is a list-based field for a recipient: the first member of its first
/// line counts, the rest is discarded; a value that is not delta-seconds is ignored.
/// `Age: 7200, 0` (or two lines) on `max-age=3600` is stale on arrival: never served as fresh.
#[test]
fn a_list_based_age_uses_its_first_member_and_junk_is_ignored() {
    let origin = TestOrigin::start();
    origin.set_handler("/list", |_, n| {
        Reply::ok(format!("list#{n}"))
            .header("Cache-Control", "max-age=3600")
            .header("ETag", "\"l\"")
            .header("Age", "7200, 0")
    });
    origin.set_handler("/lines", |_, n| {
        Reply::ok(format!("lines#{n}"))
            .header("Cache-Control", "max-age=3600")
            .header("ETag", "\"m\"")
            .header("Age", "7200")
            .header("Age", "0")
    });
    origin.set_handler("/junk", |_, n| {
        Reply::ok(format!("junk#{n}"))
            .header("Cache-Control", "max-age=3600")
            .header("Age", "-5, 7200")
    });
    let node = NodeConfig::new(&origin.url()).start();
    for path in ["/list", "/lines"] {
        get(&node, path);
        let r = get(&node, path);
        assert_forwarded(&r, &format!("{path}: Age 7200 on max-age=3600"));
        assert_eq!(origin.hits(path), 2, "{path}");
    }
    get(&node, "/junk");
    let r = get(&node, "/junk");
    assert!(
        cs_has(&r.cache_status(), "hit"),
        "an Age that is not delta-seconds is ignored: {}",
        r.cache_status()
    );
    assert!(ttl_of(&r, "junk") > 3500, "{}", r.cache_status());
    assert_eq!(origin.hits("/junk"), 1);
}

/// RFC 9110 5.6.7: dates in the obsolete RFC 850 and asctime forms are read, and (as the
/// most-used caches do) day names, month names and `GMT` in any letter case: an `Expires` or
/// `Last-Modified` written so gives the freshness it says, not "already expired".
#[test]
fn expires_and_last_modified_are_read_leniently() {
    let origin = TestOrigin::start();
    let lower_expires = from_now(600).to_ascii_lowercase();
    origin.set_handler("/lower-expires", move |_, n| {
        Reply::ok(format!("e#{n}")).header("Expires", &lower_expires)
    });
    // RFC 850: the full day name, a two-digit year (37: 2037, within 50 years)
    origin.set_handler("/rfc850", |_, n| {
        Reply::ok(format!("r#{n}")).header("Expires", "Thursday, 31-Dec-37 23:59:59 GMT")
    });
    let lower_lm = ago(20_000).to_uppercase();
    origin.set_handler("/lower-lm", move |_, n| {
        Reply::ok(format!("l#{n}")).header("Last-Modified", &lower_lm)
    });
    let node = NodeConfig::new(&origin.url()).start();
    for (path, at_least) in [
        ("/lower-expires", 500),
        ("/rfc850", 500),
        ("/lower-lm", 1_000),
    ] {
        get(&node, path);
        let r = get(&node, path);
        assert!(
            cs_has(&r.cache_status(), "hit"),
            "{path}: not a hit: {}",
            r.cache_status()
        );
        assert!(ttl_of(&r, path) >= at_least, "{path}: {}", r.cache_status());
        assert_eq!(origin.hits(path), 1, "{path}");
    }
}

/// RFC 9111 4.2.2 / RFC 9110 15.1: heuristic freshness only for heuristically cacheable status
/// codes. A 302 without explicit freshness is not stored (even when the rule lists 302 and the
/// response has a Last-Modified); a 302 with `max-age` is (3: explicit freshness).
#[test]
fn no_heuristic_freshness_for_non_heuristically_cacheable_status() {
    let origin = TestOrigin::start();
    origin.set_handler("/redir-plain", |_, n| {
        Reply::new(302)
            .header("Location", "/elsewhere")
            .header("Last-Modified", &ago(100_000))
            .body(format!("plain#{n}"))
    });
    origin.set_handler("/redir-maxage", |_, n| {
        Reply::new(302)
            .header("Location", "/elsewhere")
            .header("Cache-Control", "max-age=60")
            .body(format!("maxage#{n}"))
    });
    // control: the same headers on a 200 are heuristically fresh
    origin.set_handler("/ok-plain", |_, n| {
        Reply::ok(format!("ok#{n}")).header("Last-Modified", &ago(100_000))
    });
    let node = NodeConfig::new(&origin.url())
        .rules(
            r#"
[[rules]]
name = "with-302"
action = "cache"
[rules.ttl]
heuristic = true
[rules.cacheable]
status = [200, 302]
"#,
        )
        .start();

    for i in 1..=2 {
        let r = get(&node, "/redir-plain");
        assert_eq!(r.status, 302);
        assert_eq!(r.text(), format!("plain#{i}"));
        let cs = r.cache_status();
        assert!(
            !cs_has(&cs, "stored") && !cs_has(&cs, "hit"),
            "302 without explicit freshness, request {i}: {cs:?}"
        );
    }
    assert_eq!(origin.hits("/redir-plain"), 2);

    let r = get(&node, "/redir-maxage");
    assert_eq!(r.status, 302);
    assert_stored_miss(&r, "302 with max-age");
    let r = get(&node, "/redir-maxage");
    assert_eq!(r.status, 302);
    assert_hit(&r, "302 with max-age");
    assert_eq!(r.header("location").as_deref(), Some("/elsewhere"));
    assert_eq!(r.text(), "maxage#1");
    assert_eq!(origin.hits("/redir-maxage"), 1);

    get(&node, "/ok-plain");
    assert_hit(&get(&node, "/ok-plain"), "200 with Last-Modified");
    assert_eq!(origin.hits("/ok-plain"), 1);
}

/// Stored with `cc`, already 90 s stale on arrival (max-age 10, Age 100), with a validator.
fn stale_on_arrival(body: &str, cc: &str) -> Reply {
    Reply::ok(body.to_string())
        .header("Cache-Control", &format!("max-age=10{cc}"))
        .header("Age", "100")
        .header("ETag", "\"v1\"")
}

/// RFC 9111 4.2.4: with no rule saying otherwise, a stale response is served when the origin
/// cannot be reached or hangs up without a response ("disconnected"), and Cache-Status says
/// so; never when it has must-revalidate, proxy-revalidate, no-cache or s-maxage, nor when the
/// origin answered (a 503 goes through), nor under a rule's `stale.if_error = "0s"`.
#[test]
fn stale_is_served_when_disconnected_unless_forbidden() {
    let origin = TestOrigin::start();
    let cases = [
        ("/plain", "", true),
        ("/must", ", must-revalidate", false),
        ("/proxy", ", proxy-revalidate", false),
        ("/no-cache", ", no-cache", false),
        ("/s-maxage", ", s-maxage=10", false),
        ("/off/plain", "", false),
    ];
    for (path, cc, _) in cases {
        origin.set(path, stale_on_arrival("kept", cc));
    }
    origin.set_handler("/hangs-up", |_, n| {
        if n == 1 {
            stale_on_arrival("kept", "")
        } else {
            Reply::ok("").hang_up()
        }
    });
    origin.set_handler("/answers-503", |_, n| {
        if n == 1 {
            stale_on_arrival("kept", "")
        } else {
            Reply::new(503).body("busy")
        }
    });
    let node = NodeConfig::new(&origin.url())
        .rules(
            r#"
[[rules]]
name = "off"
action = "cache"
[rules.match]
path_prefix = ["/off/"]
[rules.stale]
if_error = "0s"

[[rules]]
name = "default"
action = "cache"
"#,
        )
        .start();
    for path in cases
        .iter()
        .map(|c| c.0)
        .chain(["/hangs-up", "/answers-503"])
    {
        assert_eq!(get(&node, path).status, 200, "{path}: fill");
    }

    let r = get(&node, "/hangs-up");
    assert_eq!((r.status, r.text().as_str()), (200, "kept"), "hung up");
    assert_eq!(
        cs_get(&r.cache_status(), "detail").as_deref(),
        Some("disconnected")
    );
    let r = get(&node, "/answers-503");
    assert_eq!(
        r.status,
        503,
        "an answer is not a disconnection: {}",
        r.cache_status()
    );

    drop(origin);
    for (path, _, served) in cases {
        let r = get(&node, path);
        let cs = r.cache_status();
        if served {
            assert_eq!((r.status, r.text().as_str()), (200, "kept"), "{path}: {cs}");
            assert!(cs_has(&cs, "fwd=stale") || cs_get(&cs, "fwd").as_deref() == Some("stale"));
            assert_eq!(
                cs_get(&cs, "detail").as_deref(),
                Some("disconnected"),
                "{path}"
            );
        } else {
            assert_eq!(r.status, 502, "{path} was served stale: {cs}");
        }
    }
    // a client that asks for validation (RFC 9111 5.2.1.4, 5.2.1.1) does not get it stale
    for cc in ["no-cache", "max-age=0"] {
        let r = get_with(&node, "/plain", &[("Cache-Control", cc)]);
        assert_eq!(r.status, 502, "request {cc}: {}", r.cache_status());
    }
    let served = metric_sum(
        &node.metrics(),
        "outpost_cache_stale_served_total",
        &[("reason", "disconnected")],
    );
    assert!(
        served >= 1.0,
        "stale served when disconnected is not counted"
    );
}

/// The shipped conf/outpost.toml serves nothing stale that the origin did not allow (beyond
/// "disconnected"): a `max-age=1` response is fetched again 2 s later, not served from cache.
#[test]
fn the_shipped_configuration_serves_nothing_stale_the_origin_did_not_allow() {
    use std::net::TcpStream;
    use std::process::{Command, Stdio};
    let origin = TestOrigin::start();
    origin.set(
        "/short",
        Reply::ok("s")
            .header("Cache-Control", "max-age=1")
            .body_counter(),
    );
    origin.set(
        "/static/app.css",
        Reply::ok("c")
            .header("Cache-Control", "max-age=1")
            .body_counter(),
    );
    let dir = tempfile::tempdir().unwrap();
    let [port, admin, metrics] = [free_port(), free_port(), free_port()];
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/outpost.toml");
    let mut child = Command::new(outpost_bin())
        .arg("run")
        .arg("--config")
        .arg(&conf)
        .args(["--origin", &origin.url()])
        .args(["--listen", &addr(port), "--admin", &addr(admin)])
        .args(["--metrics", &addr(metrics)])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn outpost run");
    wait_until("the node listens", Duration::from_secs(30), || {
        TcpStream::connect(addr(port)).is_ok()
    });
    let fetch = |path: &str| {
        let r = reqwest::blocking::get(format!("http://{}{path}", addr(port))).expect("GET");
        r.text().unwrap_or_default()
    };
    let mut seen = Vec::new();
    for path in ["/short", "/static/app.css"] {
        seen.push(fetch(path));
        seen.push(fetch(path));
    }
    std::thread::sleep(Duration::from_millis(2200));
    for path in ["/short", "/static/app.css"] {
        seen.push(fetch(path));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, ["s#1", "s#1", "c#1", "c#1", "s#2", "c#2"]);
}

/// RFC 9110 6.6.1 / RFC 9111 4: a response from cache carries the stored `Date` (when the origin
/// made it), with `Age` saying how old it is, on every path a hit takes (the lean path, HEAD, a
/// range answered from cache, a disk hit after a restart); a miss forwards the origin's.
#[test]
fn hits_carry_the_stored_date() {
    let origin = TestOrigin::start();
    let made = ago(100);
    origin.set(
        "/dated",
        Reply::ok("dated body")
            .header("Date", &made)
            .header("ETag", "\"d1\"")
            .header("Cache-Control", "max-age=3600")
            .body_counter(),
    );
    let cfg = NodeConfig::new(&origin.url());
    let node = cfg.start();
    let r = get(&node, "/dated");
    assert_stored_miss(&r, "fill");
    assert_eq!(r.header("date").as_deref(), Some(made.as_str()), "miss");
    std::thread::sleep(Duration::from_millis(1100));
    let check = |r: &Fetched, what: &str| {
        assert_eq!(
            r.header("date").as_deref(),
            Some(made.as_str()),
            "{what}: {:?}",
            r.cache_status()
        );
        assert!(
            r.age().is_some_and(|a| a >= 100),
            "{what}: Age {:?}",
            r.age()
        );
    };
    let r = get(&node, "/dated");
    assert_hit(&r, "hit");
    check(&r, "hit");
    let r = request_with(&node, "HEAD", "/dated", &[]);
    check(&r, "HEAD");
    let r = get_with(&node, "/dated", &[("Range", "bytes=0-4")]);
    assert_eq!(r.status, 206);
    check(&r, "range");
    let r = get_with(&node, "/dated", &[("If-None-Match", "\"d1\"")]);
    assert_eq!(r.status, 304);
    check(&r, "304 from cache");
    stop_ok(node, "restart");
    let node = cfg.start();
    let r = get(&node, "/dated");
    assert_hit(&r, "disk hit");
    check(&r, "disk hit");
    assert_eq!(origin.hits("/dated"), 1);
}
