//! Configuration reload (`POST /config/reload` and SIGHUP): rules and origins swap atomically
//! under load with no failed request, an invalid file changes nothing and says why, and changes
//! that need a restart are reported.
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

fn reload(node: &Node) -> (u16, serde_json::Value) {
    let r = node
        .client()
        .post(node.admin_url("/config/reload"))
        .header("Authorization", "Bearer test-token")
        .send()
        .expect("POST /config/reload");
    let status = r.status().as_u16();
    (status, r.json().expect("JSON answer"))
}

const BYPASS_A: &str =
    "[[rules]]\nname = \"no-a\"\naction = \"bypass\"\n[rules.match]\npath_prefix = [\"/a\"]\n\n";

#[test]
fn reload_swaps_rules_under_load_and_an_invalid_file_changes_nothing() {
    let origin = TestOrigin::start();
    origin.set("/a", Reply::ok("a").header("Cache-Control", "max-age=600"));
    let cfg = NodeConfig::new(&origin.url());
    let node = cfg.start();
    let original = std::fs::read_to_string(cfg.config_path()).expect("config");
    let with_bypass = original.replacen("[[rules]]", &format!("{BYPASS_A}[[rules]]"), 1);
    assert_ne!(with_bypass, original);
    assert_hit(
        &{
            get(&node, "/a");
            get(&node, "/a")
        },
        "before the reload",
    );

    let stop = AtomicBool::new(false);
    let (done, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match try_fetch(node.client().get(node.url("/a")).send()) {
                        Ok(f) if f.status == 200 && f.text() == "a" => {}
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let _stop_load = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(200));

        // a valid file: the new rule applies to the next requests
        std::fs::write(cfg.config_path(), &with_bypass).expect("write");
        let (status, answer) = reload(&node);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["reloaded"], true);
        assert_eq!(answer["restart_required"], serde_json::json!([]));
        let r = get(&node, "/a");
        assert_eq!(
            cs_get(&r.cache_status(), "fwd").as_deref(),
            Some("bypass"),
            "{}",
            r.cache_status()
        );

        // an invalid file: refused with the file and key, the running rules stay
        let broken = with_bypass.replacen("action = \"bypass\"", "action = \"bypasss\"", 1);
        std::fs::write(cfg.config_path(), &broken).expect("write");
        let (status, answer) = reload(&node);
        assert_eq!(status, 400, "{answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("outpost.toml") && error.contains("rules[0].action"),
            "{error}"
        );
        let r = get(&node, "/a");
        assert_eq!(cs_get(&r.cache_status(), "fwd").as_deref(), Some("bypass"));

        // SIGHUP reloads too: back to the original rules, /a is cached again
        std::fs::write(cfg.config_path(), &original).expect("write");
        // SAFETY: kill(2) on the node's own pid with a valid signal number
        let sent = unsafe { libc::kill(node.pid() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(sent, 0, "kill -HUP failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = get(&node, "/a");
            if cs_has(&r.cache_status(), "hit") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "SIGHUP did not reload: {}",
                r.cache_status()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
    });
    assert!(done.load(Ordering::Relaxed) > 20, "the load did not run");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(node.log().contains("configuration reloaded"));
}

#[test]
fn reload_reports_sections_that_need_a_restart() {
    let origin = TestOrigin::start();
    let cfg = NodeConfig::new(&origin.url());
    let node = cfg.start();
    let text = std::fs::read_to_string(cfg.config_path()).expect("config");
    let changed = text.replacen("memory_size = \"64MiB\"", "memory_size = \"128MiB\"", 1);
    assert_ne!(changed, text);
    std::fs::write(cfg.config_path(), changed).expect("write");
    let (status, answer) = reload(&node);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["restart_required"], serde_json::json!(["cache"]));
    // unauthorised and wrong method
    let c = node.client();
    assert_eq!(
        c.post(node.admin_url("/config/reload"))
            .send()
            .expect("post")
            .status()
            .as_u16(),
        401
    );
    let r = c
        .get(node.admin_url("/config/reload"))
        .header("Authorization", "Bearer test-token")
        .send()
        .expect("get");
    assert_eq!(r.status().as_u16(), 405);
}
