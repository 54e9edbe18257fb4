//! Shield tiering: edges fetch through shield nodes (other Outpost processes) chosen by
//! consistent hashing of the cache key, so many edges cost the origin one fetch; loops are
//! refused (RFC 8586 CDN-Loop, Via); an edge whose shields are down goes to the origin.
mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;

/// A shield node in front of `origin`, trusting loopback edges' cache keys.
fn shield(name: &str, origin: &TestOrigin) -> NodeConfig {
    NodeConfig::new(&origin.url())
        .node(&format!("name = \"{name}\""))
        .extra("[shield]\ntrusted_edges = [\"127.0.0.1/32\"]")
}

/// An edge in front of `origin` whose parent tier is `shields`.
fn edge(name: &str, origin: &TestOrigin, shields: &[&NodeConfig]) -> NodeConfig {
    edge_with(name, origin, shields, "")
}

/// [`edge`] with more `[shield]` settings.
fn edge_with(name: &str, origin: &TestOrigin, shields: &[&NodeConfig], more: &str) -> NodeConfig {
    let urls: Vec<String> = shields
        .iter()
        .map(|s| format!("\"http://{}\"", s.http_addr()))
        .collect();
    NodeConfig::new(&origin.url())
        .node(&format!("name = \"{name}\""))
        .extra(&format!(
            "[[origins]]\nname = \"shields\"\nbalance = \"ketama\"\nservers = [{}]\n\n[shield]\norigin = \"shields\"\n{more}",
            urls.join(", ")
        ))
}

fn get_host(node: &Node, path: &str, host: &str) -> Fetched {
    fetch(
        node.client()
            .get(node.url(path))
            .header("host", host)
            .send()
            .expect("request"),
    )
}

#[test]
fn two_edges_and_a_shield_cost_the_origin_one_fetch() {
    let origin = TestOrigin::start();
    origin.set(
        "/obj",
        Reply::ok("object").header("Cache-Control", "max-age=60"),
    );
    let s = shield("shield", &origin);
    let (a, b) = (
        edge("edge-a", &origin, &[&s]),
        edge("edge-b", &origin, &[&s]),
    );
    let (s, a, b) = (s.start(), a.start(), b.start());

    let r = get_host(&a, "/obj", "www.test");
    assert_eq!((r.status, r.text().as_str()), (200, "object"));
    // RFC 9211: one entry per cache, the one nearest the origin first
    assert_eq!(
        r.cache_status(),
        "shield; fwd=uri-miss; fwd-status=200; stored, edge-a; fwd=uri-miss; fwd-status=200; stored"
    );
    let r = get_host(&b, "/obj", "www.test");
    assert_eq!(r.text(), "object");
    let status = r.cache_status();
    assert!(status.starts_with("shield; hit"), "{status}");
    assert!(
        status.ends_with("edge-b; fwd=uri-miss; fwd-status=200; stored"),
        "{status}"
    );
    let r = get_host(&b, "/obj", "www.test");
    assert!(
        r.cache_status().contains("edge-b; hit"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/obj"), 1);

    // what the origin saw: both nodes in CDN-Loop and Via, no cache-key hint
    let seen = &origin.requests("/obj")[0];
    assert_eq!(seen.header("cdn-loop").as_deref(), Some("edge-a, shield"));
    let via = seen.header("via").unwrap_or_default();
    assert!(via.contains("edge-a") && via.contains("shield"), "{via}");
    assert_eq!(seen.header("outpost-cache-key"), None);
    assert_eq!(seen.header("host").as_deref(), Some("www.test"));

    // concurrent misses on both edges: still one origin fetch (the shield coalesces)
    origin.set(
        "/slow",
        Reply::ok("slow")
            .header("Cache-Control", "max-age=60")
            .delay(Duration::from_millis(400)),
    );
    let (a, b) = (Arc::new(a), Arc::new(b));
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let node = if i % 2 == 0 { a.clone() } else { b.clone() };
            std::thread::spawn(move || get_host(&node, "/slow", "www.test").text())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), "slow");
    }
    assert_eq!(origin.hits("/slow"), 1);
    drop(s);
}

#[test]
fn the_shield_stores_under_the_edge_key_and_ignores_untrusted_hints() {
    let origin = TestOrigin::start();
    origin.set_handler("/page", |req, _| {
        let device = req.header("x-device").unwrap_or_default();
        Reply::ok(format!("for {device}")).header("Cache-Control", "max-age=60")
    });
    // the edge keys /page by X-Device, the shield's own rules do not
    let s = shield("shield", &origin);
    let a = edge("edge-a", &origin, &[&s])
        .rules("[[rules]]\nname = \"by-device\"\n[rules.key]\nheaders = [\"X-Device\"]");
    let (s, a) = (s.start(), a.start());
    for device in ["phone", "desktop", "phone"] {
        let r = fetch(
            a.client()
                .get(a.url("/page"))
                .header("x-device", device)
                .send()
                .unwrap(),
        );
        assert_eq!(r.text(), format!("for {device}"));
    }
    assert_eq!(origin.hits("/page"), 2, "one fetch per device");

    // a client talking to a shield that does not trust it cannot choose the key
    let strict = NodeConfig::new(&origin.url())
        .node("name = \"strict\"")
        .extra("[shield]\ntrusted_edges = [\"10.0.0.0/8\"]")
        .start();
    origin.set("/a", Reply::ok("a").header("Cache-Control", "max-age=60"));
    origin.set("/b", Reply::ok("b").header("Cache-Control", "max-age=60"));
    let poisoned = fetch(
        strict
            .client()
            .get(strict.url("/a"))
            .header("host", "www.test")
            .header("outpost-cache-key", "www.test%0A/b%0A")
            .send()
            .unwrap(),
    );
    assert_eq!(poisoned.text(), "a");
    assert_eq!(get_host(&strict, "/b", "www.test").text(), "b");
    drop(s);
}

#[test]
fn loops_are_refused_with_508() {
    let origin = TestOrigin::start();
    origin.set("/x", Reply::ok("x"));
    // a node whose shield is itself
    let config = NodeConfig::new(&origin.url()).node("name = \"looper\"");
    let me = format!("http://{}", config.http_addr());
    let node = config
        .extra(&format!(
            "[[origins]]\nname = \"self\"\nurl = \"{me}\"\n\n[shield]\norigin = \"self\"\ndirect_when_down = false"
        ))
        .start();
    let r = get(&node, "/x");
    assert_eq!(r.status, 508, "{}", r.text());
    assert!(r.text().contains("Loop Detected"), "{}", r.text());
    assert_eq!(origin.hits("/x"), 0);

    // requests that already passed this node, by CDN-Loop or Via
    let plain = NodeConfig::new(&origin.url())
        .node("name = \"edge-a\"")
        .start();
    for (field, value) in [
        ("cdn-loop", "other-cdn, edge-a; v=1"),
        ("via", "1.1 edge-a"),
    ] {
        let r = fetch(
            plain
                .client()
                .get(plain.url("/x"))
                .header(field, value)
                .send()
                .unwrap(),
        );
        assert_eq!(r.status, 508, "{field}: {value}");
    }
    // other CDNs in the chain are fine
    let r = fetch(
        plain
            .client()
            .get(plain.url("/x"))
            .header("cdn-loop", "other-cdn")
            .send()
            .unwrap(),
    );
    assert_eq!(r.status, 200);
    assert!(
        metric_sum(
            &plain.metrics(),
            "outpost_rejected_requests_total",
            &[("reason", "loop")]
        ) >= 2.0
    );
}

#[test]
fn edges_go_to_the_origin_when_shields_are_down() {
    let origin = TestOrigin::start();
    origin.set(
        "/d",
        Reply::ok("direct").header("Cache-Control", "max-age=60"),
    );
    let dead = NodeConfig::new(&origin.url()); // configured, never started
    let a = edge("edge-a", &origin, &[&dead]).start();
    let r = get(&a, "/d");
    assert_eq!((r.status, r.text().as_str()), (200, "direct"));
    assert_eq!(
        r.cache_status(),
        "edge-a; fwd=uri-miss; fwd-status=200; stored"
    );
    assert_eq!(origin.hits("/d"), 1);
    let m = a.metrics();
    assert!(
        metric_sum(&m, "outpost_shield_bypassed_total", &[]) >= 1.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "outpost_upstream_errors_total", &[("tier", "shield")]) >= 1.0,
        "{m}"
    );

    // told not to: a clear 503
    let strict = edge_with("edge-b", &origin, &[&dead], "direct_when_down = false").start();
    let r = get(&strict, "/d2");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().contains("shield tier could not be reached"),
        "{}",
        r.text()
    );
    assert_eq!(origin.hits("/d2"), 0);
}

#[test]
fn two_shields_split_objects_by_consistent_hashing() {
    let origin = TestOrigin::start();
    origin.set_handler("*", |_, _| {
        Reply::ok("obj").header("Cache-Control", "max-age=60")
    });
    let (s1, s2) = (shield("shield-1", &origin), shield("shield-2", &origin));
    let a = edge("edge-a", &origin, &[&s1, &s2]);
    let b = edge("edge-b", &origin, &[&s2, &s1]);
    let (_s1, _s2, a, b) = (s1.start(), s2.start(), a.start(), b.start());
    let n = 30;
    for i in 0..n {
        assert_eq!(get_host(&a, &format!("/o/{i}"), "www.test").status, 200);
    }
    for i in 0..n {
        let r = get_host(&b, &format!("/o/{i}"), "www.test");
        assert!(r.cache_status().contains("; hit"), "{}", r.cache_status());
    }
    let mut by_shield = std::collections::HashMap::new();
    for i in 0..n {
        let path = format!("/o/{i}");
        let seen = origin.requests(&path);
        assert_eq!(seen.len(), 1, "{path} fetched {} times", seen.len());
        let via = seen[0].header("via").unwrap_or_default();
        let shield = if via.contains("shield-1") {
            "shield-1"
        } else {
            "shield-2"
        };
        *by_shield.entry(shield).or_insert(0) += 1;
    }
    assert_eq!(by_shield.len(), 2, "{by_shield:?}");
}

#[test]
fn shield_settings_are_validated() {
    assert_refused("[shield]\norigin = \"nope\"", "shield.origin");
    assert_refused(
        "[[origins]]\nname = \"s\"\nservers = [\"http://127.0.0.1:2\", \"http://127.0.0.1:3\"]\n\n[shield]\norigin = \"s\"",
        "shield.origin",
    );
    assert_refused(
        "[shield]\ntrusted_edges = [\"nonsense\"]",
        "shield.trusted_edges[0]",
    );
    assert_refused(
        "[[origins]]\nname = \"s\"\nurl = \"http://127.0.0.1:2\"\n\n[shield]\norigin = \"s\"\n\n[[rules]]\nname = \"r\"\norigin = \"s\"",
        "rules[1].origin",
    );
}

#[test]
fn purge_tags_reach_the_edge_copy_but_not_clients() {
    let origin = TestOrigin::start();
    origin.set(
        "/tagged",
        Reply::ok("t")
            .header("Cache-Control", "max-age=60")
            .header("Surrogate-Key", "k1 k2"),
    );
    let s = shield("shield", &origin);
    let a = edge("edge-a", &origin, &[&s]);
    let (_s, a) = (s.start(), a.start());
    let r = get_host(&a, "/tagged", "www.test");
    assert_eq!(r.header("surrogate-key"), None, "tags leaked to a client");
    assert!(get_host(&a, "/tagged", "www.test")
        .cache_status()
        .contains("edge-a; hit"));
    // the edge's copy carries the tags the shield passed down: a tag purge on the edge covers it
    let r = a
        .client()
        .post(a.admin_url("/purge"))
        .bearer_auth("test-token")
        .body(r#"{"tags": ["k2"]}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = get_host(&a, "/tagged", "www.test");
    assert!(
        r.cache_status().starts_with("shield; hit") && !r.cache_status().contains("edge-a; hit"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/tagged"), 1);
}

/// Partial content through the tiers: an edge's range miss goes to the shield as a range, the
/// shield's to the origin; both keep the 206 as a part, and a range partly held at both asks
/// each tier above for the missing span only.
#[test]
fn ranges_go_up_the_tiers_as_ranges_and_are_kept_at_each() {
    const LEN: usize = 10_000;
    let origin = TestOrigin::start();
    let body = generated_body(0, LEN);
    origin.set_handler("/v.bin", move |req, _| {
        range_reply(req, &body, "\"t\"", "max-age=600")
    });
    let s = shield("shield", &origin);
    let sn = s.start();
    let e = edge("edge", &origin, &[&s]).start();
    let range = |r: &str| get_with(&e, "/v.bin", &[("Range", r)]);

    let r = range("bytes=0-999");
    assert_eq!(r.status, 206);
    assert!(r.body == generated_body(0, 1000));
    let cs = r.cache_status();
    assert!(
        cs.starts_with("shield; fwd=uri-miss; fwd-status=206; stored; detail=partial, edge;"),
        "{cs}"
    );
    assert_eq!(
        origin.requests("/v.bin")[0].header("range").as_deref(),
        Some("bytes=0-999")
    );

    let r = range("bytes=10-19");
    assert!(r.body == generated_body(10, 20));
    assert!(
        r.cache_status().contains("edge; hit"),
        "{}",
        r.cache_status()
    );

    let r = range("bytes=500-1499");
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 500-1499/10000")
    );
    assert!(r.body == generated_body(500, 1500));
    let asked = origin.requests("/v.bin");
    assert_eq!(asked.len(), 2, "the origin was asked twice in all");
    assert_eq!(asked[1].header("range").as_deref(), Some("bytes=1000-1499"));
    assert_eq!(asked[1].header("if-range").as_deref(), Some("\"t\""));
    drop(sn);
}
