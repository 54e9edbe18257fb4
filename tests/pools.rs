//! Origin pools: several servers per `[[origins]]` entry, round robin / weighted / ketama
//! selection, passive ejection and retries, active health checks, and what happens when every
//! server is down.
mod common;

use common::*;
use std::collections::HashMap;
use std::time::Duration;

/// Every response of `origins` says which server answered (uncached: `no-store`).
fn tag_servers(origins: &[&TestOrigin], path: &str) {
    for (i, o) in origins.iter().enumerate() {
        o.set(
            path,
            Reply::ok(format!("server{i}")).header("Cache-Control", "no-store"),
        );
    }
}

fn servers_list(origins: &[&TestOrigin], weights: Option<&[u32]>) -> String {
    let items: Vec<String> = origins
        .iter()
        .enumerate()
        .map(|(i, o)| match weights {
            Some(w) => format!("{{ url = \"{}\", weight = {} }}", o.url(), w[i]),
            None => format!("\"{}\"", o.url()),
        })
        .collect();
    format!("servers = [{}]", items.join(", "))
}

/// Which server answered each of `n` GETs of `path`.
fn tally(node: &Node, path: &str, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = get(node, path);
        assert_eq!(r.status, 200, "{}", r.text());
        *seen.entry(r.text()).or_insert(0) += 1;
    }
    seen
}

#[test]
fn round_robin_shares_requests_equally() {
    let (a, b) = (TestOrigin::start(), TestOrigin::start());
    tag_servers(&[&a, &b], "/rr");
    let node = NodeConfig::new(&a.url())
        .origin(&servers_list(&[&a, &b], None))
        .start();
    let seen = tally(&node, "/rr", 20);
    assert_eq!(seen.get("server0"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("server1"), Some(&10), "{seen:?}");

    // per server: requests, latency, health, and the kept-alive connections
    let m = node.metrics();
    for o in [&a, &b] {
        let server = o.addr().to_string();
        let l = [
            ("tier", "origin"),
            ("pool", "origin"),
            ("server", server.as_str()),
        ];
        assert_eq!(
            metric_sum(&m, "outpost_upstream_requests_total", &l),
            10.0,
            "{m}"
        );
        assert_eq!(
            metric_sum(&m, "outpost_upstream_request_duration_seconds_count", &l),
            10.0
        );
        assert_eq!(metric_sum(&m, "outpost_upstream_healthy", &l), 1.0);
        assert!(
            metric_sum(&m, "outpost_upstream_open_connections", &l) >= 1.0,
            "{m}"
        );
        assert_eq!(metric_sum(&m, "outpost_upstream_errors_total", &l), 0.0);
    }
}

#[test]
fn weighted_round_robin_follows_weights() {
    let (a, b) = (TestOrigin::start(), TestOrigin::start());
    tag_servers(&[&a, &b], "/w");
    let node = NodeConfig::new(&a.url())
        .origin(&servers_list(&[&a, &b], Some(&[3, 1])))
        .origin("balance = \"weighted\"")
        .start();
    let seen = tally(&node, "/w", 40);
    assert_eq!(seen.get("server0"), Some(&30), "{seen:?}");
    assert_eq!(seen.get("server1"), Some(&10), "{seen:?}");
}

#[test]
fn killed_server_fails_over_with_no_error_and_returns_after_fail_timeout() {
    let a = TestOrigin::start();
    let b = TestOrigin::start();
    let b_addr = b.addr();
    tag_servers(&[&a, &b], "/f");
    let node = NodeConfig::new(&a.url())
        .origin(&servers_list(&[&a, &b], None))
        .origin("fail_timeout = \"1s\"\nmax_fails = 1")
        .start();
    assert_eq!(tally(&node, "/f", 4).len(), 2);

    drop(b); // killed: connections refused
    let seen = tally(&node, "/f", 10);
    assert_eq!(seen.get("server0"), Some(&10), "{seen:?}");
    let m = node.metrics();
    assert!(
        metric_sum(
            &m,
            "outpost_upstream_errors_total",
            &[("server", &b_addr.to_string())]
        ) >= 1.0,
        "{m}"
    );
    assert!(metric_sum(&m, "outpost_upstream_retries_total", &[]) >= 1.0);
    assert!(metric_sum(&m, "outpost_upstream_ejections_total", &[]) >= 1.0);

    // back on the same address: after fail_timeout it takes requests again
    let b = TestOrigin::start_on(b_addr);
    tag_servers(&[&a, &b], "/f");
    std::thread::sleep(Duration::from_millis(1200));
    wait_until(
        "the returned server to get requests",
        Duration::from_secs(5),
        || {
            get(&node, "/f");
            b.hits("/f") > 0
        },
    );
}

#[test]
fn slow_server_is_retried_for_get_but_not_for_post() {
    let (a, b) = (TestOrigin::start(), TestOrigin::start());
    for (i, o) in [&a, &b].iter().enumerate() {
        let mut reply = Reply::ok(format!("server{i}")).header("Cache-Control", "no-store");
        if i == 0 {
            reply = reply.delay(Duration::from_millis(1500));
        }
        o.set("/slow", reply);
    }
    let node = NodeConfig::new(&a.url())
        .origin(&servers_list(&[&a, &b], None))
        .origin("read_timeout = \"300ms\"\nmax_fails = 0")
        .start();
    // whichever server a GET starts on, it ends on the quick one
    for _ in 0..4 {
        let r = get(&node, "/slow");
        assert_eq!((r.status, r.text().as_str()), (200, "server1"));
    }
    // a POST that timed out may have had effects: not repeated elsewhere
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = try_fetch(node.client().post(node.url("/slow")).body("x").send()).unwrap();
        statuses.push(r.status);
    }
    assert!(statuses.contains(&504), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        a.requests("/slow")
            .iter()
            .filter(|r| r.method == "POST")
            .count()
            >= 1
    );
}

#[test]
fn active_health_check_takes_a_server_out_and_brings_it_back() {
    let (a, b) = (TestOrigin::start(), TestOrigin::start());
    tag_servers(&[&a, &b], "/h");
    a.set("/health", Reply::ok("ok"));
    b.set("/health", Reply::new(503));
    let node = NodeConfig::new(&a.url())
        .origin(&servers_list(&[&a, &b], None))
        .origin(
            "[origins.health_check]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1",
        )
        .start();
    wait_until("b's health check to fail", Duration::from_secs(5), || {
        node.metrics().lines().any(|l| {
            l.starts_with("outpost_upstream_healthy")
                && l.contains(&b.addr().to_string())
                && l.ends_with(" 0")
        })
    });
    let seen = tally(&node, "/h", 10);
    assert_eq!(seen.get("server0"), Some(&10), "{seen:?}");
    // the admin status shows it too
    let status: serde_json::Value = node
        .client()
        .get(node.admin_url("/status"))
        .bearer_auth("test-token")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let servers = &status["upstreams"][0]["servers"];
    assert_eq!(servers[1]["address"], b.addr().to_string(), "{status}");
    assert_eq!(servers[1]["healthy"], false, "{status}");
    assert_eq!(servers[0]["available"], true, "{status}");
    let checks = b.hits("/health");
    assert!(checks >= 1);
    assert_eq!(
        b.requests("/health")[0].header("user-agent").as_deref(),
        Some("outpost-health-check")
    );

    b.set("/health", Reply::ok("ok"));
    wait_until("b to be healthy again", Duration::from_secs(5), || {
        tally(&node, "/h", 2).contains_key("server1")
    });
}

#[test]
fn all_servers_down_gives_503_or_stale_if_error() {
    let (a, b) = (TestOrigin::start(), TestOrigin::start());
    for o in [&a, &b] {
        o.set(
            "/doc",
            Reply::ok("stored").header("Cache-Control", "max-age=1, stale-if-error=600"),
        );
        o.set("/health", Reply::ok("ok"));
    }
    let node = NodeConfig::new(&a.url())
        .origin(&servers_list(&[&a, &b], None))
        .origin("[origins.health_check]\npath = \"/health\"\ninterval = \"200ms\"\nunhealthy_threshold = 1")
        .start();
    assert_eq!(get(&node, "/doc").status, 200);
    for o in [&a, &b] {
        o.set("/health", Reply::new(500));
    }
    wait_until("both servers to be down", Duration::from_secs(5), || {
        node.metrics()
            .lines()
            .filter(|l| l.starts_with("outpost_upstream_healthy") && l.ends_with(" 0"))
            .count()
            == 2
    });
    std::thread::sleep(Duration::from_millis(1100));
    // stored and within stale-if-error: served stale, no origin asked
    let before = a.total_hits() + b.total_hits();
    let r = get(&node, "/doc");
    assert_eq!((r.status, r.text().as_str()), (200, "stored"));
    assert!(
        r.cache_status().contains("stale-if-error"),
        "{}",
        r.cache_status()
    );
    let health_only = |o: &TestOrigin| o.hits("/doc");
    assert_eq!(health_only(&a) + health_only(&b), 1, "{before}");
    // nothing stored: a clear 503
    let r = get(&node, "/never");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("no origin server is available"),
        "{}",
        r.text()
    );
    assert!(
        r.cache_status().contains("no-healthy-origin"),
        "{}",
        r.cache_status()
    );
}

/// Server (by index) that `n` distinct uncached paths go to.
fn placement(node: &Node, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let r = get(node, &format!("/k/{i}"));
            assert_eq!(r.status, 200);
            r.text()
        })
        .collect()
}

#[test]
fn ketama_keeps_keys_in_place_when_a_server_is_added() {
    let origins: Vec<TestOrigin> = (0..4).map(|_| TestOrigin::start()).collect();
    for (i, o) in origins.iter().enumerate() {
        o.set_handler("*", move |_, _| {
            Reply::ok(format!("server{i}")).header("Cache-Control", "no-store")
        });
    }
    let three: Vec<&TestOrigin> = origins.iter().take(3).collect();
    let four: Vec<&TestOrigin> = origins.iter().collect();
    let config = NodeConfig::new(&origins[0].url())
        .origin(&servers_list(&three, None))
        .origin("balance = \"ketama\"");
    let node = config.start();
    let n = 400;
    let before = placement(&node, n);
    // the same key always goes to the same server
    assert_eq!(placement(&node, 50), before[..50].to_vec());
    let mut per_server = HashMap::new();
    for s in &before {
        *per_server.entry(s.clone()).or_insert(0) += 1;
    }
    assert_eq!(per_server.len(), 3, "{per_server:?}");

    // add a fourth server by reloading the configuration
    let text = std::fs::read_to_string(config.config_path()).unwrap();
    let text = text.replace(&servers_list(&three, None), &servers_list(&four, None));
    std::fs::write(config.config_path(), text).unwrap();
    assert_eq!(admin_reload(&node), 200);
    let after = placement(&node, n);
    let moved: Vec<usize> = (0..n).filter(|&i| before[i] != after[i]).collect();
    // only keys that now belong to the new server move: about 1/4 of them
    assert!(
        moved.iter().all(|&i| after[i] == "server3"),
        "a key moved between old servers"
    );
    let share = moved.len() as f64 / n as f64;
    assert!(
        (0.1..0.4).contains(&share),
        "{} of {n} keys moved",
        moved.len()
    );
}

#[test]
fn invalid_pool_settings_are_refused_with_their_key() {
    assert_refused(
        "[[origins]]\nname = \"p\"\nurl = \"http://127.0.0.1:1\"\nservers = [\"http://127.0.0.1:2\"]",
        "origins[1].servers",
    );
    assert_refused(
        "[[origins]]\nname = \"p\"\nservers = [{ url = \"http://127.0.0.1:2\", weight = 2 }]",
        "origins[1].servers[0].weight",
    );
    assert_refused(
        "[[origins]]\nname = \"p\"\nbalance = \"random\"\nurl = \"http://127.0.0.1:2\"",
        "origins[1].balance",
    );
    assert_refused(
        "[[origins]]\nname = \"p\"\nservers = [\"http://127.0.0.1:2\", \"https://127.0.0.1:3\"]",
        "origins[1].servers[1]",
    );
    assert_refused(
        "[[origins]]\nname = \"p\"\nurl = \"http://127.0.0.1:2\"\nsni = \"x.test\"",
        "origins[1].sni",
    );
    assert_refused(
        "[[origins]]\nname = \"p\"\nurl = \"https://127.0.0.1:2\"\nca_file = \"/nonexistent/ca.pem\"",
        "origins[1].ca_file",
    );
    assert_refused(
        "[[origins]]\nname = \"p\"\nurl = \"http://127.0.0.1:2\"\n[origins.health_check]\nexpect_status = [99]",
        "origins[1].health_check.expect_status[0]",
    );
    assert_refused(
        "[[origins]]\nname = \"p\"\nurl = \"http://127.0.0.1:2\"\nretries = 11",
        "origins[1].retries",
    );
}

#[test]
fn retries_past_a_dead_server_keep_the_rotation_even() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }; // closed: connections are refused
    let (a, b) = (TestOrigin::start(), TestOrigin::start());
    tag_servers(&[&a, &b], "/even");
    let node = NodeConfig::new(&a.url())
        .origin(&format!(
            "servers = [\"{dead}\", \"{}\", \"{}\"]\nretries = 2\nmax_fails = 1000",
            a.url(),
            b.url()
        ))
        .start();
    // the dead server's turns are retried on the next server in the rotation; a retry must
    // not also use up a turn of its own (both live servers get their share)
    let seen = tally(&node, "/even", 40);
    let (s0, s1) = (seen.get("server0").copied(), seen.get("server1").copied());
    assert_eq!((s0, s1), (Some(20), Some(20)), "{seen:?}");
}
