//! Zero-downtime upgrade and graceful stop: a process started with `outpost run --upgrade`
//! takes the listening sockets (proxy, admin, metrics) over from the running node, which,
//! sent SIGQUIT, finishes its requests in flight and exits 0; no client request fails on the
//! way. A graceful stop (SIGTERM) lets requests in flight finish and ends as soon as they have.
//! (Reload under load: tests/reload.rs.)
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Sends `GET path` on an open connection and reads one response: (status, body).
fn get_on(conn: &mut TcpStream, path: &str) -> std::io::Result<(u16, String)> {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = status_of(&head).unwrap_or(0);
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return Ok((status, body));
            }
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// GETs `/a` in a loop until `stop`, counting requests and failures (anything but a 200 with
/// body "a"); `reuse`: one keep-alive client, else a new connection per request.
fn load(
    url: &str,
    reuse: bool,
    stop: &AtomicBool,
    done: &AtomicUsize,
    failed: &AtomicUsize,
    errors: &std::sync::Mutex<Vec<String>>,
) {
    let mut builder = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10));
    if !reuse {
        builder = builder.pool_max_idle_per_host(0);
    }
    let client = builder.build().expect("client");
    while !stop.load(Ordering::Relaxed) {
        match try_fetch(client.get(url).send()) {
            Ok(f) if f.status == 200 && f.text() == "a" => {}
            other => {
                failed.fetch_add(1, Ordering::Relaxed);
                let what = match other {
                    Ok(f) => format!("status {} body {:?}", f.status, f.text()),
                    Err(e) => format!("{e:?}"),
                };
                let mut errors = errors.lock().unwrap();
                if errors.len() < 20 {
                    errors.push(what);
                }
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn upgrade_under_load_hands_the_sockets_over_without_failing_a_request() {
    let origin = TestOrigin::start();
    origin.set("/a", Reply::ok("a").header("Cache-Control", "max-age=600"));
    origin.set(
        "/slow",
        Reply::ok("slow")
            .header("Cache-Control", "no-store")
            .delay(Duration::from_secs(3)),
    );
    // (the harness's 3 s origin read_timeout would race the 3 s slow answer)
    let cfg = NodeConfig::new(&origin.url())
        .node("shutdown_grace = \"10s\"")
        .origin("read_timeout = \"10s\"");
    let old = cfg.start();
    get(&old, "/a");
    // a connection the old process accepted: it must finish a request in flight at its exit
    let mut old_conn = TcpStream::connect(old.addr()).expect("connect");
    old_conn
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    assert_eq!(get_on(&mut old_conn, "/a").expect("GET /a").0, 200);

    let stop = AtomicBool::new(false);
    let (done, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let errors = std::sync::Mutex::new(Vec::new());
    let url = old.url("/a");
    let new = std::thread::scope(|s| {
        for reuse in [true, true, false, false] {
            let (url, stop, done, failed, errors) = (&url, &stop, &done, &failed, &errors);
            s.spawn(move || load(url, reuse, stop, done, failed, errors));
        }
        let _stop_load = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(300));

        let new = cfg.start_upgrade();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cfg.upgrade_sock().exists() {
            if let Some(status) = new.try_wait() {
                panic!("the new process exited ({status})\n{}", new.log());
            }
            assert!(
                Instant::now() < deadline,
                "the new process never listened on {:?}\n{}",
                cfg.upgrade_sock(),
                new.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let before = done.load(Ordering::Relaxed);
        old.signal(libc::SIGQUIT);
        let quit_at = Instant::now();

        // Pingora: the old process accepts for 5 s more, then stops; a request in flight then
        // must still be answered
        std::thread::sleep(Duration::from_millis(3500));
        let slow = get_on(&mut old_conn, "/slow");
        assert!(
            matches!(&slow, Ok((200, body)) if body == "slow"),
            "the request in flight at the old process's exit: {slow:?}\n--- old ---\n{}",
            old.log_tail(40)
        );
        let status = old.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| {
            panic!(
                "the old process did not exit after SIGQUIT\n{}",
                old.log_tail(40)
            )
        });
        assert!(
            status.success(),
            "old process exit: {status}\n{}",
            old.log_tail(40)
        );
        let exited_after = quit_at.elapsed();
        assert!(
            exited_after < Duration::from_secs(9),
            "the old process took {exited_after:?} to exit: it should end once its last \
             request is done (about 6.5 s)\n{}",
            old.log_tail(40)
        );
        let at_exit = done.load(Ordering::Relaxed);
        // the new process alone serves for a while
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        assert!(
            done.load(Ordering::Relaxed) > at_exit + 10,
            "no requests were served after the old process exited"
        );
        assert!(
            at_exit > before + 20,
            "the load did not run during the upgrade"
        );
        new
    });
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the upgrade: {:?}\n--- old ---\n{}\n--- new ---\n{}",
        errors.lock().unwrap(),
        old.log_tail(40),
        new.log_tail(40)
    );
    assert!(new.try_wait().is_none(), "the new process exited");
    assert!(new.log().contains("listening sockets taken over"));

    // every listener moved: the public one (above), metrics and admin answer from the new
    // process, whose counters and uptime started at the upgrade
    let served = metric_sum(&new.metrics(), "outpost_requests_total", &[]);
    assert!(served > 10.0, "the new process served {served} requests");
    let c = new.client();
    assert_eq!(
        c.get(new.admin_url("/healthz"))
            .send()
            .expect("healthz")
            .status()
            .as_u16(),
        200
    );
    let status: serde_json::Value = c
        .get(new.admin_url("/status"))
        .header("Authorization", "Bearer test-token")
        .send()
        .expect("status")
        .json()
        .expect("status JSON");
    assert!(
        status["uptime_seconds"].as_u64().is_some_and(|u| u < 15),
        "{status}"
    );
    assert_hit(
        &get(&new, "/a"),
        "the new process, from the shared disk tier",
    );
    stop_ok(new, "the new process");
}

#[test]
fn graceful_stop_finishes_requests_in_flight_then_exits_at_once() {
    let origin = TestOrigin::start();
    origin.set(
        "/slow",
        Reply::ok("slow")
            .header("Cache-Control", "no-store")
            .delay(Duration::from_millis(1500)),
    );
    let cfg = NodeConfig::new(&origin.url()).node("shutdown_grace = \"10s\"");
    let node = cfg.start();
    let mut conn = TcpStream::connect(node.addr()).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let stopped = std::thread::scope(|s| {
        let slow = s.spawn(|| get_on(&mut conn, "/slow"));
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        node.signal(libc::SIGTERM);
        let status = node
            .wait_exit(Duration::from_secs(15))
            .expect("no exit after SIGTERM");
        assert!(status.success(), "exit: {status}\n{}", node.log_tail(30));
        let slow = slow.join().expect("client thread");
        assert!(
            matches!(&slow, Ok((200, body)) if body == "slow"),
            "the request in flight at SIGTERM: {slow:?}\n{}",
            node.log_tail(30)
        );
        started.elapsed()
    });
    // the request needed about 1.2 s more; the grace (10 s) is only an upper bound
    assert!(
        stopped < Duration::from_secs(4),
        "stopping took {stopped:?}\n{}",
        node.log_tail(30)
    );
    assert!(node.log().contains("shutdown complete"), "{}", node.log());
}
