//! A simulated three-region CDN with real latency between regions: the origin and edge "eu" in
//! one region, the shield, NATS and edge "us" in another, edge "ap" in a third; every
//! cross-region connection goes through a relay delaying each direction (30, 40 and 80 ms one
//! way, see `common::link` for why not `tc netem`). It shows what issue 8 asks: a region's first
//! request after another region fetched an object is served from the shield (the origin is not
//! asked again), a hit at the local edge costs no cross-region round trip, a purge on one edge
//! is applied on every node, and a partitioned edge catches up after the partition heals.
//! Skipped (with a message) where `nats-server` is not installed.
mod common;

use common::link::Link;
use common::nats::Nats;
use common::*;
use std::time::{Duration, Instant};

const EU_US: Duration = Duration::from_millis(30);
const US_AP: Duration = Duration::from_millis(40);
const EU_AP: Duration = Duration::from_millis(80);

fn applied(node: &Node) -> f64 {
    metric_sum(&node.metrics(), "outpost_cluster_purges_applied_total", &[])
}

/// GET `path` with the site's Host; the response and how long it took.
fn timed_get(node: &Node, path: &str) -> (Fetched, Duration) {
    let start = Instant::now();
    let r = fetch(
        node.client()
            .get(node.url(path))
            .header("host", "www.example.test")
            .send()
            .expect("request"),
    );
    (r, start.elapsed())
}

/// An edge: origin at `origin_url`, its shield at `shield_url`, NATS at `nats_url`.
fn edge(name: &str, origin_url: &str, shield_url: &str, nats_url: &str) -> NodeConfig {
    NodeConfig::new(origin_url)
        .node(&format!("name = \"{name}\""))
        .extra(&format!(
            "[[origins]]\nname = \"shields\"\nurl = \"{shield_url}\"\nread_timeout = \"5s\"\n\n\
             [shield]\norigin = \"shields\"\n\n\
             [cluster]\nnats_url = \"{nats_url}\"\nstream = \"PURGES\""
        ))
}

#[test]
fn three_regions_one_origin_fetch_local_hits_fleet_purge_and_partition_catch_up() {
    let Some(nats) = Nats::start() else { return };
    let origin = TestOrigin::start();
    origin.set_handler("*", |_, hit| {
        Reply::ok(format!("object v{hit}"))
            .header("Cache-Control", "max-age=600")
            .header("Surrogate-Key", "site")
    });
    let nats_addr: std::net::SocketAddr = nats.url().trim_start_matches("nats://").parse().unwrap();

    // us: the shield (its origin is in eu), NATS, edge-us
    let shield_to_origin = Link::new(origin.addr(), EU_US);
    let shield_config = NodeConfig::new(&shield_to_origin.url())
        .node("name = \"shield-us\"")
        .extra(&format!(
            "[shield]\ntrusted_edges = [\"127.0.0.1/32\"]\n\n[cluster]\nnats_url = \"{}\"\nstream = \"PURGES\"",
            nats.url()
        ));
    let shield_addr = shield_config.http_addr();
    let us_to_origin = Link::new(origin.addr(), EU_US);
    let edge_us = edge(
        "edge-us",
        &us_to_origin.url(),
        &format!("http://{shield_addr}"),
        &nats.url(),
    );
    // eu: the origin and edge-eu
    let eu_to_shield = Link::new(shield_addr, EU_US);
    let eu_to_nats = Link::new(nats_addr, EU_US);
    let edge_eu = edge(
        "edge-eu",
        &origin.url(),
        &eu_to_shield.url(),
        &eu_to_nats.nats_url(),
    );
    // ap: edge-ap only
    let ap_to_shield = Link::new(shield_addr, US_AP);
    let ap_to_nats = Link::new(nats_addr, US_AP);
    let ap_to_origin = Link::new(origin.addr(), EU_AP);
    let edge_ap = edge(
        "edge-ap",
        &ap_to_origin.url(),
        &ap_to_shield.url(),
        &ap_to_nats.nats_url(),
    );

    let shield = shield_config.start();
    let (eu, us, ap) = (edge_eu.start(), edge_us.start(), edge_ap.start());
    let all = [&shield, &eu, &us, &ap];
    for n in all {
        wait_until(
            "every node to join the purge stream",
            Duration::from_secs(15),
            || admin_status(n)["cluster"]["synced"] == true,
        );
    }

    // eu fetches first: through the shield, one origin fetch
    let (r, eu_miss) = timed_get(&eu, "/obj");
    assert_eq!(r.text(), "object v1");
    assert_eq!(origin.hits("/obj"), 1);
    // ap next: its edge misses, the shield has it, the origin is not asked
    let (r, ap_miss) = timed_get(&ap, "/obj");
    assert_eq!(r.text(), "object v1");
    assert!(
        r.cache_status().starts_with("shield-us; hit"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/obj"), 1);
    // and a hit at the local edge does not cross a region
    let (r, ap_hit) = timed_get(&ap, "/obj");
    assert!(
        r.cache_status().contains("edge-ap; hit"),
        "{}",
        r.cache_status()
    );
    println!("eu miss {eu_miss:?}, ap miss (shield hit) {ap_miss:?}, ap local hit {ap_hit:?}");
    assert!(
        ap_miss >= US_AP * 2,
        "the ap miss crossed to the shield: {ap_miss:?}"
    );
    assert!(
        ap_hit < ap_miss / 2,
        "local hit {ap_hit:?} vs miss {ap_miss:?}"
    );
    assert_eq!(timed_get(&us, "/obj").0.text(), "object v1");
    assert_eq!(origin.hits("/obj"), 1);

    // a purge on edge-eu is applied on every node
    let before: Vec<f64> = all.iter().map(|n| applied(n)).collect();
    let purge = |node: &Node, body: &str| {
        let r = node
            .client()
            .post(node.admin_url("/purge"))
            .bearer_auth("test-token")
            .body(body.to_string())
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    purge(&eu, r#"{"url": "http://www.example.test/obj"}"#);
    for (i, n) in all
        .iter()
        .enumerate()
        .filter(|(_, n)| !std::ptr::eq(**n, &eu))
    {
        wait_until("the purge everywhere", Duration::from_secs(10), || {
            applied(n) > before[i]
        });
    }
    let (r, _) = timed_get(&ap, "/obj");
    assert_eq!(r.text(), "object v2", "{}", r.cache_status());
    assert_eq!(origin.hits("/obj"), 2, "one refetch, through the shield");
    assert_eq!(timed_get(&us, "/obj").0.text(), "object v2");
    assert_eq!(origin.hits("/obj"), 2);

    // ap is cut off from NATS; a purge meanwhile reaches it when the partition heals
    ap_to_nats.partition();
    wait_until(
        "ap to notice the partition",
        Duration::from_secs(15),
        || admin_status(&ap)["cluster"]["connected"] == false,
    );
    let ap_before = applied(&ap);
    purge(&us, r#"{"tags": ["site"]}"#);
    wait_until("the purge on eu", Duration::from_secs(10), || {
        applied(&eu) > before[1]
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        applied(&ap),
        ap_before,
        "ap received a purge while partitioned"
    );
    ap_to_nats.heal();
    wait_until("ap to catch up", Duration::from_secs(20), || {
        applied(&ap) > ap_before
    });
    let (r, _) = timed_get(&ap, "/obj");
    assert_eq!(r.text(), "object v3", "{}", r.cache_status());
}
