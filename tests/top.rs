//! Watching a node: the admin API's `GET /top` (the heaviest keys of the recent traffic) and
//! `outpost top`, the live view, against a real node and origin.
mod common;

use common::*;
use std::process::{Command, Output};

/// `outpost top` with these arguments (token from the environment, as an operator would).
fn outpost_top(args: &[&str]) -> Output {
    Command::new(outpost_bin())
        .arg("top")
        .args(args)
        .env("OUTPOST_ADMIN_TOKEN", "test-token")
        .output()
        .expect("spawn outpost top")
}

fn top(node: &Node, query: &str) -> serde_json::Value {
    let r = node
        .client()
        .get(node.admin_url(&format!("/top{query}")))
        .bearer_auth("test-token")
        .send()
        .expect("GET /top");
    assert_eq!(r.status().as_u16(), 200);
    r.json().expect("JSON")
}

/// 30 requests to /hot and one to each of 50 other paths (with query strings, which are not
/// part of the key).
fn drive_mix(node: &Node, origin: &TestOrigin) {
    origin.set(
        "/hot",
        Reply::ok(payload(1000)).header("Cache-Control", "max-age=60"),
    );
    for _ in 0..30 {
        assert_eq!(get(node, "/hot?v=1").status, 200);
    }
    for i in 0..50 {
        get(node, &format!("/cold/{i}?x={i}"));
    }
}

/// The top keys are recorded as each request is logged, just after its response: wait until
/// all `n` requests are counted.
fn wait_counted(node: &Node, n: u64) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(
        "requests counted in /top",
        std::time::Duration::from_secs(5),
        || {
            last = top(node, "?n=100");
            last["requests"].as_u64() == Some(n)
        },
    );
    last
}

#[test]
fn top_lists_the_hot_key_first_with_its_requests_and_bytes() {
    let origin = TestOrigin::start();
    let node = NodeConfig::new(&origin.url()).start();
    drive_mix(&node, &origin);
    let answer = wait_counted(&node, 80);
    let keys = answer["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 51, "{answer:#}");
    assert_eq!(keys[0]["key"], "127.0.0.1/hot", "{answer:#}");
    assert_eq!(keys[0]["requests"], 30);
    assert_eq!(keys[0]["overcount"], 0);
    assert_eq!(keys[0]["bytes"], 30 * 1000);
    assert!(keys[1..].iter().all(|k| k["requests"] == 1), "{answer:#}");
    assert!(keys.iter().any(|k| k["key"] == "127.0.0.1/cold/7"));
    assert_eq!(answer["capacity"], 1000);
    assert!(answer["window_seconds"].as_f64().is_some_and(|w| w < 60.0));

    // n bounds the list; out of range is refused
    assert_eq!(top(&node, "?n=3")["keys"].as_array().unwrap().len(), 3);
    assert_eq!(top(&node, "")["keys"].as_array().unwrap().len(), 20);
    for bad in ["?n=0", "?n=abc", "?n=5000"] {
        let r = node
            .client()
            .get(node.admin_url(&format!("/top{bad}")))
            .bearer_auth("test-token")
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }
}

#[test]
fn top_without_the_token_is_401() {
    let origin = TestOrigin::start();
    let node = NodeConfig::new(&origin.url()).start();
    let c = node.client();
    let r = c.get(node.admin_url("/top")).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c
        .get(node.admin_url("/top"))
        .bearer_auth("wrong")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[test]
fn outpost_top_once_shows_the_hot_key_hit_ratio_and_upstream_pool() {
    let origin = TestOrigin::start();
    let node = NodeConfig::new(&origin.url()).start();
    drive_mix(&node, &origin);
    wait_counted(&node, 80);
    let admin = format!("http://{}", node.admin_addr());
    let metrics = format!("http://{}", node.metrics_addr());
    // traffic while `top` reads twice, 1 s apart, so that the rates move
    let out = std::thread::scope(|s| {
        let run = s.spawn(|| {
            outpost_top(&[
                "--admin",
                &admin,
                "--metrics",
                &metrics,
                "--interval",
                "1s",
                "--once",
            ])
        });
        while !run.is_finished() {
            get(&node, "/hot");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        run.join().expect("outpost top")
    });
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {err}\n{text}", out.status);
    assert!(!text.contains('\x1b'), "--once prints plain text:\n{text}");
    assert!(text.contains("node outpost"), "{text}");
    let hot = text
        .lines()
        .find(|l| l.starts_with("127.0.0.1/hot"))
        .unwrap_or_else(|| panic!("no /hot row:\n{text}"));
    let first_key = text
        .lines()
        .skip_while(|l| !l.starts_with("TOP KEYS"))
        .nth(1);
    assert_eq!(first_key, Some(hot), "/hot is the first key:\n{text}");
    // every request in the interval was a hit of /hot
    let ratio = text
        .lines()
        .find(|l| l.starts_with("hit ratio"))
        .unwrap_or_else(|| panic!("no hit ratio:\n{text}"));
    assert!(ratio.contains("100.0% of requests"), "{ratio}");
    assert!(text.contains("hit "), "requests by cache status:\n{text}");
    // the pool and its server, healthy
    assert!(text.contains("origin (origin, round_robin)"), "{text}");
    let server = text
        .lines()
        .find(|l| l.trim_start().starts_with(&origin.addr().to_string()))
        .unwrap_or_else(|| panic!("no server row:\n{text}"));
    assert!(server.contains(" up "), "{server}");
}

#[test]
fn outpost_top_names_the_unreachable_admin_url_and_exits_non_zero() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = outpost_top(&["--admin", &dead, "--once", "--interval", "100ms"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("cannot reach the admin API") && err.contains(&dead),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn outpost_top_explains_a_wrong_token_and_a_wrong_metrics_url() {
    let origin = TestOrigin::start();
    let node = NodeConfig::new(&origin.url()).start();
    let admin = format!("http://{}", node.admin_addr());
    let metrics = format!("http://{}", node.metrics_addr());
    let out = Command::new(outpost_bin())
        .args(["top", "--once", "--admin", &admin, "--metrics", &metrics])
        .args(["--token", "wrong"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused the token (401)") && err.contains(&admin),
        "{err}"
    );

    // the admin listener given as the metrics listener
    let out = outpost_top(&["--once", "--admin", &admin, "--metrics", &admin]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{admin}/metrics")), "{err}");
    assert!(err.contains("metrics.listen"), "{err}");
}

/// `outpost top` on a terminal (a pseudo-terminal from util-linux's `script`, stdin kept open):
/// other keys leave it running, `q` ends it with status 0 after it has drawn frames.
#[test]
fn outpost_top_on_a_terminal_ignores_other_keys_and_quits_on_q() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let origin = TestOrigin::start();
    let node = NodeConfig::new(&origin.url()).start();
    let cmd = format!(
        "{} top --admin http://{} --metrics http://{} --interval 200ms",
        outpost_bin().display(),
        node.admin_addr(),
        node.metrics_addr()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-f", "-c", &cmd, "/dev/null"])
        .env("OUTPOST_ADMIN_TOKEN", "test-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn script (util-linux)");
    let screen = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().expect("stdout");
    let sink = screen.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    let frames = || {
        String::from_utf8_lossy(&screen.lock().unwrap())
            .matches("TOP KEYS")
            .count()
    };
    let mut stdin = child.stdin.take().expect("stdin");
    let deadline = Instant::now() + Duration::from_secs(15);
    while frames() < 2 {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!(
                "no frames drawn:\n{}",
                String::from_utf8_lossy(&screen.lock().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stdin.write_all(b"x").and_then(|()| stdin.flush()).unwrap();
    let drawn = frames();
    while frames() < drawn + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "x ended the view: only q, Esc, Ctrl-C and Ctrl-D do"
    );
    stdin.write_all(b"q").and_then(|()| stdin.flush()).unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("q did not end outpost top");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    assert!(status.success(), "outpost top after q: {status}");
}
