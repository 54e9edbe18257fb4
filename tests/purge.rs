//! `POST /purge` on the admin listener, black-box: each target (URL with all its variants,
//! prefix, tags, everything) on objects in both tiers, soft purge causing a conditional
//! revalidation, purges surviving a restart (and a record torn by a crash), tag headers kept
//! from clients, and the API's answers to unauthorised, malformed, oversized and misrouted calls.
mod common;

use std::time::Duration;

use common::disk::{assert_segments, only_record_for, records, records_for, Kind, Record};
use common::*;

const TOKEN: &str = ADMIN_AUTH;

/// A cacheable response counting its fetches in the body.
fn counted(cc: &str) -> Reply {
    Reply::ok("v").header("Cache-Control", cc).body_counter()
}

#[test]
fn url_purge_removes_every_variant_from_both_tiers() {
    let origin = TestOrigin::start();
    origin.set(
        "/page",
        counted("max-age=600").header("Vary", "Accept-Language"),
    );
    let cfg = NodeConfig::new(&origin.url());
    let node = cfg.start();
    for lang in ["en", "fr"] {
        get_with(&node, "/page?x=1", &[("Accept-Language", lang)]);
    }
    wait_disk_objects(&node, 2, Duration::from_secs(10), "objects written to disk");
    for lang in ["en", "fr"] {
        assert_hit(
            &get_with(&node, "/page?x=1", &[("Accept-Language", lang)]),
            lang,
        );
    }
    let url = format!("http://{}/page?x=1", node.addr());
    let answer = purged_ok(&node, &format!(r#"{{"url": "{url}"}}"#));
    assert_eq!(answer["target"]["type"], "url");
    for lang in ["en", "fr"] {
        let r = get_with(&node, "/page?x=1", &[("Accept-Language", lang)]);
        assert!(
            !cs_has(&r.cache_status(), "hit"),
            "{lang} variant survived: {}",
            r.cache_status()
        );
    }
    assert_eq!(origin.hits("/page"), 4);
    // a different query is a different URL: untouched
    get(&node, "/page?x=2");
    assert_hit(&get(&node, "/page?x=2"), "other URL");

    // and it stays purged after a restart (memory gone, disk files may remain)
    node.stop();
    let node = cfg.start();
    for lang in ["en", "fr"] {
        assert_hit(
            &get_with(&node, "/page?x=1", &[("Accept-Language", lang)]),
            "refetched after the purge",
        );
    }
}

#[test]
fn prefix_purge_covers_its_host_and_path_prefix_only() {
    let origin = TestOrigin::start();
    for p in ["/static/a.css", "/static/js/b.js", "/other"] {
        origin.set(p, counted("max-age=600"));
    }
    let node = NodeConfig::new(&origin.url()).start();
    for p in ["/static/a.css", "/static/js/b.js", "/other"] {
        get(&node, p);
    }
    purged_ok(
        &node,
        r#"{"prefix": "/static/", "host": "other-host.example"}"#,
    );
    assert_hit(&get(&node, "/static/a.css"), "another host's purge");
    purged_ok(&node, r#"{"prefix": "/static/", "host": "127.0.0.1"}"#);
    for p in ["/static/a.css", "/static/js/b.js"] {
        assert_eq!(get(&node, p).text(), "v#2", "{p} not purged");
    }
    assert_hit(&get(&node, "/other"), "outside the prefix");
}

#[test]
fn tag_purge_uses_surrogate_key_and_cache_tag_which_clients_never_see() {
    let origin = TestOrigin::start();
    origin.set(
        "/a",
        counted("max-age=600").header("Surrogate-Key", "product-1 home"),
    );
    origin.set(
        "/b",
        counted("max-age=600").header("Cache-Tag", "product-2,home"),
    );
    origin.set(
        "/c",
        counted("max-age=600").header("Surrogate-Key", "product-3"),
    );
    let node = NodeConfig::new(&origin.url()).start();
    for p in ["/a", "/b", "/c"] {
        let r = get(&node, p);
        assert!(
            r.header("surrogate-key").is_none() && r.header("cache-tag").is_none(),
            "{p}"
        );
    }
    wait_disk_objects(&node, 3, Duration::from_secs(10), "objects written to disk");
    purged_ok(&node, r#"{"tags": ["home"]}"#);
    assert_eq!(get(&node, "/a").text(), "v#2");
    assert_eq!(get(&node, "/b").text(), "v#2");
    assert_hit(&get(&node, "/c"), "untagged by home");
    purged_ok(&node, r#"{"tags": ["nothing", "product-3"]}"#);
    assert_eq!(get(&node, "/c").text(), "v#2");
    // the refetched objects are tagged again and purgeable again
    purged_ok(&node, r#"{"tags": ["product-1"]}"#);
    assert_eq!(get(&node, "/a").text(), "v#3");
    assert_hit(&get(&node, "/b"), "refetched after the first purge");
    let m = node.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "outpost_purges_total",
            &[("type", "tags"), ("mode", "hard")]
        ),
        3.0
    );
    assert_eq!(metric_sum(&m, "outpost_purge_bans", &[]), 3.0);
    assert_eq!(
        metric_sum(&m, "outpost_purge_matched_lookups_total", &[]),
        4.0
    );
    assert_eq!(
        metric_sum(&m, "outpost_purge_duration_seconds_count", &[]),
        3.0
    );
}

#[test]
fn purge_everything_needs_confirmation() {
    let origin = TestOrigin::start();
    origin.set("/x", counted("max-age=600"));
    origin.set("/y", counted("max-age=600"));
    let node = NodeConfig::new(&origin.url()).start();
    get(&node, "/x");
    get(&node, "/y");
    let (status, answer) = purge(&node, r#"{"all": true}"#);
    assert_eq!(status, 400);
    assert_eq!(answer["field"], "confirm");
    assert_hit(&get(&node, "/x"), "an unconfirmed purge removed something");
    purged_ok(&node, r#"{"all": true, "confirm": true}"#);
    assert_eq!(get(&node, "/x").text(), "v#2");
    assert_eq!(get(&node, "/y").text(), "v#2");
}

#[test]
fn soft_purge_makes_the_next_request_revalidate_and_stale_if_error_still_applies() {
    let origin = TestOrigin::start();
    origin.set_handler("/doc", |req, _| {
        if req.header("if-none-match").is_some() {
            Reply::new(304)
                .header("ETag", "\"d\"")
                .header("Cache-Control", "max-age=600")
        } else {
            Reply::ok("doc")
                .header("ETag", "\"d\"")
                .header("Cache-Control", "max-age=600")
        }
    });
    origin.set_handler("/kept", |_, n| {
        if n == 1 {
            Reply::ok("kept")
                .header("Cache-Control", "max-age=600, stale-if-error=600")
                .header("ETag", "\"k\"")
        } else {
            Reply::new(503)
        }
    });
    let node = NodeConfig::new(&origin.url()).start();
    get(&node, "/doc");
    get(&node, "/kept");
    let base = format!("http://{}", node.addr());
    let answer = purged_ok(&node, &format!(r#"{{"url": "{base}/doc", "soft": true}}"#));
    assert_eq!(answer["soft"], true);
    let r = get(&node, "/doc");
    assert_eq!(r.text(), "doc");
    let reval = origin.requests("/doc");
    assert_eq!(reval.len(), 2, "the soft-purged object was not revalidated");
    assert_eq!(reval[1].header("if-none-match").as_deref(), Some("\"d\""));
    assert_hit(&get(&node, "/doc"), "fresh again after the 304");
    assert_eq!(origin.hits("/doc"), 2);

    // soft purge + origin failing: the stale object saves the day
    purged_ok(&node, &format!(r#"{{"url": "{base}/kept", "soft": true}}"#));
    let r = get(&node, "/kept");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "kept");
    assert_eq!(
        cs_get(&r.cache_status(), "detail").as_deref(),
        Some("stale-if-error")
    );
}

#[test]
fn hard_purge_then_origin_down_is_an_error_not_the_purged_object() {
    let origin = TestOrigin::start();
    origin.set(
        "/gone",
        Reply::ok("old").header("Cache-Control", "max-age=600, stale-if-error=600"),
    );
    let node = NodeConfig::new(&origin.url()).start();
    get(&node, "/gone");
    purged_ok(&node, r#"{"tags": ["none"]}"#); // an unrelated ban changes nothing
    assert_hit(&get(&node, "/gone"), "unrelated purge");
    let url = format!("http://{}/gone", node.addr());
    purged_ok(&node, &format!(r#"{{"url": "{url}"}}"#));
    drop(origin);
    let r = get(&node, "/gone");
    assert_eq!(
        r.status,
        502,
        "a hard-purged object was served: {}",
        r.text()
    );
}

#[test]
fn admin_purge_answers_bad_calls_clearly() {
    let origin = TestOrigin::start();
    let node = NodeConfig::new(&origin.url()).start();
    let c = node.client();
    // unauthorised
    for auth in [None, Some("Bearer wrong")] {
        let mut rb = c.post(node.admin_url("/purge")).body(r#"{"tags": ["a"]}"#);
        if let Some(a) = auth {
            rb = rb.header("Authorization", a);
        }
        assert_eq!(rb.send().expect("send").status().as_u16(), 401, "{auth:?}");
    }
    assert_eq!(
        metric_sum(&node.metrics(), "outpost_admin_unauthorized_total", &[]),
        2.0
    );
    // malformed: 400 naming the field
    for (body, field) in [
        ("{not json", "body"),
        (r#"{"tagz": ["a"]}"#, "tagz"),
        (r#"{"url": "no-scheme/path"}"#, "url"),
        (r#"{"prefix": "x"}"#, "prefix"),
        (r#"{"tags": ["a b"]}"#, "tags"),
    ] {
        let (status, answer) = purge(&node, body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // wrong method, oversized body, unknown route
    let r = c
        .get(node.admin_url("/purge"))
        .header("Authorization", TOKEN)
        .send()
        .expect("GET /purge");
    assert_eq!(r.status().as_u16(), 405);
    let big = format!(r#"{{"tags": ["{}"]}}"#, "a".repeat(100_000));
    let r = c
        .post(node.admin_url("/purge"))
        .header("Authorization", TOKEN)
        .body(big)
        .send()
        .expect("big POST");
    assert_eq!(r.status().as_u16(), 413);
    let r = c
        .post(node.admin_url("/purgeall"))
        .header("Authorization", TOKEN)
        .send()
        .expect("unknown route");
    assert_eq!(r.status().as_u16(), 404);
    // nothing was recorded by the refused calls
    let status: serde_json::Value = c
        .get(node.admin_url("/status"))
        .header("Authorization", TOKEN)
        .send()
        .expect("status")
        .json()
        .expect("status JSON");
    assert_eq!(status["purges_in_force"], 0, "{status}");
    assert!(!node.log().contains("test-token"), "token in the log");
}

#[test]
fn status_reports_version_uptime_and_tiers() {
    let origin = TestOrigin::start();
    origin.set("/s", counted("max-age=600"));
    let node = NodeConfig::new(&origin.url()).start();
    get(&node, "/s");
    wait_disk_objects(&node, 1, Duration::from_secs(10), "objects written to disk");
    let status: serde_json::Value = node
        .client()
        .get(node.admin_url("/status"))
        .header("Authorization", TOKEN)
        .send()
        .expect("status")
        .json()
        .expect("status JSON");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].as_u64().is_some());
    assert_eq!(status["memory"]["objects"], 1, "{status}");
    assert_eq!(status["disk"]["objects"], 1, "{status}");
}

#[test]
fn purge_cli_sends_each_target_and_fails_clearly() {
    let origin = TestOrigin::start();
    origin.set("/t", counted("max-age=600").header("Surrogate-Key", "k1"));
    origin.set("/p/x", counted("max-age=600"));
    let node = NodeConfig::new(&origin.url()).start();
    get(&node, "/t");
    get(&node, "/p/x");
    let admin = node.admin_url("").trim_end_matches('/').to_string();
    let cli = |args: &[&str], token: Option<&str>| {
        let mut cmd = std::process::Command::new(outpost_bin());
        cmd.arg("purge").arg("--admin").arg(&admin).args(args);
        cmd.env_remove("OUTPOST_ADMIN_TOKEN");
        if let Some(t) = token {
            cmd.env("OUTPOST_ADMIN_TOKEN", t);
        }
        cmd.output().expect("run outpost purge")
    };
    let out = cli(&["--tag", "k1"], Some("test-token"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"tags\""));
    assert_eq!(get(&node, "/t").text(), "v#2");
    let out = cli(
        &["--prefix", "/p/", "--host", "127.0.0.1", "--soft"],
        Some("test-token"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        get(&node, "/p/x").text(),
        "v#2",
        "soft purge without a validator refetches"
    );
    // wrong token: exit 1 naming the refusal
    let out = cli(&["--tag", "k1"], Some("wrong"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    // no target, or --all without --yes: usage errors
    assert_eq!(cli(&[], Some("test-token")).status.code(), Some(2));
    assert_eq!(cli(&["--all"], Some("test-token")).status.code(), Some(2));
    // admin down: a clear error
    let out = std::process::Command::new(outpost_bin())
        .args([
            "purge",
            "--admin",
            &format!("http://127.0.0.1:{}", free_port()),
            "--token",
            "t",
            "--tag",
            "a",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[test]
fn tag_headers_are_configurable_and_can_reach_clients() {
    let origin = TestOrigin::start();
    origin.set(
        "/x",
        counted("max-age=600").header("X-Tags", "alpha,beta gamma"),
    );
    origin.set("/y", counted("max-age=600").header("Surrogate-Key", "beta"));
    let node = NodeConfig::new(&origin.url())
        .extra("[purge]\ntag_headers = [\"X-Tags\"]\nstrip_tag_headers = false")
        .start();
    let r = get(&node, "/x");
    assert_eq!(
        r.header("x-tags").as_deref(),
        Some("alpha,beta gamma"),
        "not stripped"
    );
    get(&node, "/y");
    purged_ok(&node, r#"{"tags": ["gamma"]}"#);
    assert_eq!(get(&node, "/x").text(), "v#2");
    // Surrogate-Key is not a tag header here
    purged_ok(&node, r#"{"tags": ["beta"]}"#);
    assert_eq!(get(&node, "/x").text(), "v#3");
    assert_hit(&get(&node, "/y"), "Surrogate-Key is not configured");
    let bad = run_check(
        &NodeConfig::new(&origin.url())
            .extra("[purge]\ntag_headers = [\"bad header\"]")
            .config_text(),
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("purge.tag_headers[0]"));
}

/// Lines of the purge record that are bans (not its id-sequence line).
fn recorded_bans(cfg: &NodeConfig) -> usize {
    std::fs::read_to_string(cfg.dir().join("cache/bans.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"target\""))
        .count()
}

#[test]
fn purges_are_applied_to_stored_objects_then_retired_for_good() {
    let origin = TestOrigin::start();
    for p in ["/t/a", "/t/b"] {
        origin.set(p, counted("max-age=600").header("Surrogate-Key", "red"));
    }
    origin.set("/keep", counted("max-age=600"));
    origin.set_handler("/soft", |req, n| {
        if req.header("if-none-match").is_some() {
            Reply::new(304)
                .header("ETag", "\"s\"")
                .header("Cache-Control", "max-age=600")
        } else {
            Reply::ok(format!("soft#{n}"))
                .header("ETag", "\"s\"")
                .header("Cache-Control", "max-age=600")
        }
    });
    // a small disk tier (8 segments of 128 KiB), so that its ring comes round in this test
    let cfg = NodeConfig::new(&origin.url())
        .cache("disk_size = \"1MiB\"")
        .extra("[purge]\nlurker_interval = \"200ms\"");
    let cache = cfg.dir().join("cache");
    let node = cfg.start();
    for p in ["/t/a", "/t/b", "/keep", "/soft"] {
        get(&node, p);
    }
    wait_disk_objects(&node, 4, Duration::from_secs(10), "objects written to disk");
    // the records of the objects the tag purge covers (body "v#1")
    let tagged: Vec<Record> = ["/t/a", "/t/b"]
        .iter()
        .map(|p| only_record_for(&cache, p))
        .collect();
    assert!(tagged.iter().all(|r| r.body() == b"v#1"));
    let keep_gen = only_record_for(&cache, "/keep").gen;
    purged_ok(&node, r#"{"tags": ["red"]}"#);
    let base = format!("http://{}", node.addr());
    purged_ok(&node, &format!(r#"{{"url": "{base}/soft", "soft": true}}"#));
    assert_eq!(recorded_bans(&cfg), 2);

    // a pass applies both purges to both tiers, then retires them from memory and the file
    wait_metric(
        &node,
        "outpost_purge_bans_retired_total",
        &[],
        |v| v >= 2.0,
        Duration::from_secs(20),
        "purges retired",
    );
    let m = node.metrics();
    assert_eq!(metric_sum(&m, "outpost_purge_bans", &[]), 0.0);
    assert_eq!(
        metric_sum(
            &m,
            "outpost_purge_swept_objects_total",
            &[("action", "removed")]
        ),
        4.0,
        "two tagged objects, each in memory and on disk"
    );
    assert_eq!(
        metric_sum(
            &m,
            "outpost_purge_swept_objects_total",
            &[("action", "expired")]
        ),
        2.0,
        "the soft-purged object, in memory and on disk"
    );
    assert_eq!(recorded_bans(&cfg), 0, "the record keeps retired purges");
    // the hard-purged objects are gone from the disk tier's directory (the soft-purged one
    // stays, expired), and a tombstone for each follows its record in the log, so that a
    // restart does not bring it back
    wait_metric(
        &node,
        "outpost_cache_disk_objects",
        &[],
        |v| v == 2.0,
        Duration::from_secs(10),
        "the two hard-purged objects removed from the disk tier",
    );
    let log = records(&cache);
    for r in &tagged {
        let at = log
            .iter()
            .position(|x| x.kind == Kind::Object && x.key == r.key)
            .expect("the purged object's record");
        assert!(
            log[at..]
                .iter()
                .any(|x| x.kind == Kind::Tombstone && x.key == r.key),
            "no tombstone after the purged object's record"
        );
    }

    // with the purges retired, what they did stays done, across a restart too
    stop_ok(node, "first run");
    let node = cfg.start();
    for p in ["/t/a", "/t/b"] {
        assert_eq!(get(&node, p).text(), "v#2", "hard-purged {p} came back");
    }
    let keep = get(&node, "/keep");
    assert_hit(&keep, "uncovered object");
    assert_eq!(keep.text(), "v#1");
    assert_eq!(get(&node, "/soft").text(), "soft#1");
    let soft = origin.requests("/soft");
    assert_eq!(soft.len(), 2, "the soft-purged object was not revalidated");
    assert_eq!(soft[1].header("if-none-match").as_deref(), Some("\"s\""));
    assert_hit(&get(&node, "/soft"), "fresh again after the 304");
    // ids are not reused after the purges holding the highest ones were retired
    let next = purged_ok(&node, r#"{"tags": ["blue"]}"#);
    assert_eq!(next["id"], 3, "{next}");

    // The purged objects' bytes stay in their segment until the ring comes round to it; then
    // they are not copied forward, as an object hit since it was written (/keep, a disk hit
    // after the restart) is, and their space is reused.
    let old = |p: &str| {
        records_for(&cache, p)
            .into_iter()
            .filter(|r| r.body() == b"v#1")
            .count()
    };
    assert_eq!(
        old("/t/a") + old("/t/b"),
        2,
        "the purged records before the ring comes round"
    );
    // 32 KiB objects until the ring has come round to the purged records' segment (about 8
    // segments of 3 objects; the copy of /keep made then is far from being recycled in turn)
    let mut filled = 0;
    while old("/t/a") + old("/t/b") > 0 {
        assert!(
            filled < 64,
            "the purged records still there after {filled} x 32 KiB"
        );
        let p = format!("/fill/{filled}");
        origin.set(
            &p,
            Reply::ok(vec![b'f'; 32 * 1024]).header("Cache-Control", "max-age=600"),
        );
        assert_eq!(get(&node, &p).status, 200, "{p}");
        filled += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_until("/keep copied forward", Duration::from_secs(5), || {
        let copies: Vec<Record> = records_for(&cache, "/keep");
        copies.len() == 1 && copies[0].gen > keep_gen && copies[0].body() == b"v#1"
    });
    assert_segments(&cache, 1 << 20, "after the ring came round");
    assert_eq!(
        old("/keep"),
        1,
        "the object hit since it was written was not kept"
    );
    assert_eq!(get(&node, "/keep").text(), "v#1");
    assert_eq!(origin.hits("/keep"), 1);
}

#[test]
fn a_purge_is_not_retired_before_a_fill_it_covers_has_landed() {
    let origin = TestOrigin::start();
    origin.set(
        "/slow",
        counted("max-age=600")
            .header("Surrogate-Key", "slow")
            .stall_after(0, Duration::from_secs(4)),
    );
    let cfg = NodeConfig::new(&origin.url())
        .origin("read_timeout = \"10s\"")
        .extra("[purge]\nlurker_interval = \"200ms\"");
    let node = cfg.start();
    let client = node.client();
    let url = node.url("/slow");
    let first = std::thread::spawn(move || client.get(url).send().and_then(|r| r.text()));
    // the response head has arrived (the fill is running) when the purge comes
    let start = std::time::Instant::now();
    while origin.hits("/slow") == 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "origin not asked");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    purged_ok(&node, r#"{"tags": ["slow"]}"#);
    // passes run every 200 ms meanwhile; the fill lands ~4 s after its head
    assert_eq!(
        first.join().expect("client thread").expect("first body"),
        "v#1"
    );
    let r = get(&node, "/slow");
    assert_eq!(
        r.text(),
        "v#2",
        "an object fetched before the purge was served after it: {}",
        r.cache_status()
    );
    wait_metric(
        &node,
        "outpost_purge_bans",
        &[],
        |v| v == 0.0,
        Duration::from_secs(20),
        "purge retired once nothing it covers can land",
    );
    assert_hit(&get(&node, "/slow"), "refetched after the purge");
}

/// What a crash while appending a tag purge of `café` to `bans.jsonl` can leave at its end:
/// the record cut inside `é` (two bytes in UTF-8), cut mid-JSON, a run of NUL bytes where the
/// file system had not written it yet, or whole but without its newline. Whether it is damaged.
fn torn_cafe_records() -> Vec<(&'static str, Vec<u8>, bool)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let record = format!(
        r#"{{"id":99,"at_ms":{now},"soft":false,"target":{{"type":"tags","tags":["café"]}}}}"#
    )
    .into_bytes();
    let e_acute = record.iter().position(|b| *b == 0xC3).expect("é");
    let soft = record
        .windows(6)
        .position(|w| w == b"\"soft\"")
        .expect("soft");
    vec![
        ("cut inside é", record[..=e_acute].to_vec(), true),
        ("cut mid-JSON", record[..soft + 3].to_vec(), true),
        ("a NUL run", vec![0; 4096], true),
        ("whole without its newline", record, false),
    ]
}

#[test]
fn a_purge_record_torn_by_a_crash_costs_that_record_only() {
    let origin = TestOrigin::start();
    let tails = torn_cafe_records();
    for i in 0..tails.len() {
        for p in ["now", "end"] {
            origin.set(
                &format!("/c{i}/{p}"),
                counted("max-age=600").header("Surrogate-Key", &format!("t{i}")),
            );
        }
    }
    // the purge pass runs at each start only (its first tick), not in the middle of a run
    let cfg = NodeConfig::new(&origin.url()).extra("[purge]\nlurker_interval = \"1h\"");
    let bans = cfg.dir().join("cache/bans.jsonl");
    let mut node = cfg.start();
    for (i, (what, tail, damaged)) in tails.iter().enumerate() {
        // stored, purged (after the restart on a torn record for i > 0), the node stopped (its
        // disk writes flushed), then the record torn as by a crash while appending a purge
        for p in ["now", "end"] {
            get(&node, &format!("/c{i}/{p}"));
        }
        purged_ok(&node, &format!(r#"{{"tags": ["t{i}"]}}"#));
        stop_ok(node, what);
        let mut text = std::fs::read(&bans).expect("purge record");
        text.extend_from_slice(tail);
        std::fs::write(&bans, text).expect("tear the record");

        node = cfg.start();
        assert_eq!(
            get(&node, &format!("/c{i}/now")).text(),
            "v#2",
            "{what}: the purge before the torn record was lost"
        );
        assert_journal_damage(&node, &bans, usize::from(*damaged), what);
    }
    // every purge survived: those made before a torn record and those made after it
    stop_ok(node, "last run");
    let node = cfg.start();
    assert_journal_damage(&node, &bans, 0, "torn tails were cut off");
    for i in 0..tails.len() {
        assert_eq!(get(&node, &format!("/c{i}/end")).text(), "v#2", "purge {i}");
    }
}
