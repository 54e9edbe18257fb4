//! Request coalescing: concurrent misses for one key share one origin fetch.
mod common;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::*;

/// A `200` read to the end carries exactly `want`: a cut-short body must never pass as whole.
fn assert_whole_body(i: usize, f: &Fetched, want: &[u8]) {
    assert_eq!(
        f.body.len(),
        want.len(),
        "request {i}: incomplete body presented as complete (Cache-Status {})",
        f.cache_status()
    );
    assert!(f.body == want, "request {i}: wrong body");
}

/// Runs `n` concurrent GETs of `path` (released together by a barrier); returns the results in
/// completion order and the wall time from release to the last completion.
fn concurrent_gets(
    node: &Node,
    path: &str,
    n: usize,
) -> (Vec<Result<Fetched, reqwest::Error>>, Duration) {
    let client = node.client();
    let url = node.url(path);
    let barrier = Barrier::new(n + 1);
    let mut results = Vec::with_capacity(n);
    let mut elapsed = Duration::ZERO;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let client = client.clone();
                let url = url.clone();
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    try_fetch(client.get(&url).send())
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            results.push(h.join().expect("request thread panicked"));
        }
        elapsed = start.elapsed();
    });
    (results, elapsed)
}

#[test]
fn concurrent_misses_make_one_origin_request() {
    let origin = TestOrigin::start();
    let body = payload(64 * 1024);
    origin.set(
        "/slow",
        Reply::ok(body.clone())
            .header("Cache-Control", "max-age=60")
            .delay(Duration::from_millis(300))
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();

    let (results, _) = concurrent_gets(&node, "/slow", 200);
    let mut want = body.clone();
    want.extend_from_slice(b"#1");
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for (i, r) in results.into_iter().enumerate() {
        let r = r.unwrap_or_else(|e| panic!("request {i} failed: {e}\n{}", node.log()));
        assert_eq!(
            r.status,
            200,
            "request {i}: Cache-Status {}",
            r.cache_status()
        );
        assert_eq!(r.body.len(), want.len(), "request {i}: body length");
        assert!(r.body == want, "request {i}: wrong body");
        *statuses.entry(r.cache_status()).or_default() += 1;
    }
    assert_eq!(
        origin.hits("/slow"),
        1,
        "200 concurrent misses were not coalesced; Cache-Status values: {statuses:?}"
    );
    // and the object is now cached
    let r = get(&node, "/slow");
    assert!(cs_has(&r.cache_status(), "hit"), "{}", r.cache_status());
    assert_eq!(origin.hits("/slow"), 1);
}

#[test]
fn uncacheable_concurrent_requests_are_not_serialised() {
    let origin = TestOrigin::start();
    let delay = Duration::from_millis(300);
    origin.set(
        "/nostore",
        Reply::ok("private data")
            .header("Cache-Control", "no-store")
            .delay(delay),
    );
    let node = NodeConfig::new(&origin.url()).start();

    let (results, elapsed) = concurrent_gets(&node, "/nostore", 20);
    for (i, r) in results.into_iter().enumerate() {
        let r = r.unwrap_or_else(|e| panic!("request {i} failed: {e}\n{}", node.log()));
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "private data");
        assert!(
            !cs_has(&r.cache_status(), "hit"),
            "no-store response served as a hit: {}",
            r.cache_status()
        );
    }
    assert_eq!(
        origin.hits("/nostore"),
        20,
        "each request must reach the origin"
    );
    // the one coarse timing check: 20 requests serialised behind a lock would take 20 * delay
    assert!(
        elapsed < delay * 10,
        "20 uncacheable requests took {elapsed:?}: serialised behind the cache lock?"
    );
}

#[test]
fn leader_failure_never_hangs_or_truncates_waiters() {
    let origin = TestOrigin::start();
    let body = payload(100 * 1024);
    let full = body.clone();
    origin.set_handler("/flaky", move |_, n| {
        let r = Reply::ok(full.clone()).header("Cache-Control", "max-age=60");
        if n == 1 {
            // the leader's fetch: slow, then the origin resets mid-body
            r.delay(Duration::from_millis(300)).truncate_after(1000)
        } else {
            r.delay(Duration::from_millis(100))
        }
    });
    let node = NodeConfig::new(&origin.url()).start();

    let (results, _) = concurrent_gets(&node, "/flaky", 20);
    let mut ok = 0;
    let mut errors = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(f) if f.status == 200 => {
                assert_whole_body(i, &f, &body);
                ok += 1;
            }
            Ok(f) => {
                assert!(
                    f.status >= 500,
                    "request {i}: unexpected status {} ({})",
                    f.status,
                    f.cache_status()
                );
                errors.push(format!("status {}", f.status));
            }
            Err(e) => {
                assert!(
                    !e.is_timeout(),
                    "request {i} hung until the client timeout: {e}\n{}",
                    node.log()
                );
                errors.push(format!("{e}"));
            }
        }
    }
    eprintln!("leader failure: {ok} complete, errors: {errors:?}");

    // nothing partial was cached: the next request gets the full body
    let r = get(&node, "/flaky");
    assert_eq!(r.status, 200, "Cache-Status {}", r.cache_status());
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body);
}

/// Like `concurrent_gets`, but a failure keeps what arrived: the status and `Cache-Status` of a
/// response whose body broke off, or the transport error. `Err(true, ..)`: client timeout.
fn concurrent_gets_detailed(
    node: &Node,
    path: &str,
    n: usize,
) -> Vec<Result<Fetched, (bool, String)>> {
    let client = node.client();
    let url = node.url(path);
    let barrier = Barrier::new(n + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let client = client.clone();
                let url = url.clone();
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let r = client
                        .get(&url)
                        .send()
                        .map_err(|e| (e.is_timeout(), format!("no response: {e}")))?;
                    let status = r.status().as_u16();
                    let headers = r.headers().clone();
                    let cs = headers
                        .get("cache-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    match r.bytes() {
                        Ok(b) => Ok(Fetched {
                            status,
                            headers,
                            body: b.to_vec(),
                        }),
                        Err(e) => Err((
                            e.is_timeout(),
                            format!("status {status}, Cache-Status {cs:?}, then body error: {e}"),
                        )),
                    }
                })
            })
            .collect();
        barrier.wait();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread panicked"))
            .collect()
    })
}

/// Checks that every result is a 200 with exactly `want`, except at most `allowed_failures`
/// transport errors / 5xx (never a short body presented as complete). Returns the failures.
fn check_all_complete(
    node: &Node,
    results: Vec<Result<Fetched, (bool, String)>>,
    want: &[u8],
    allowed_failures: usize,
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(f) if f.status == 200 => {
                assert_whole_body(i, &f, want);
                *statuses.entry(f.cache_status()).or_default() += 1;
            }
            Ok(f) => failures.push(format!(
                "request {i}: status {} ({})",
                f.status,
                f.cache_status()
            )),
            Err((timeout, e)) => {
                assert!(
                    !timeout,
                    "request {i} hung until the client timeout: {e}\n{}",
                    node.log()
                );
                failures.push(format!("request {i}: {e}"));
            }
        }
    }
    assert!(
        failures.len() <= allowed_failures,
        "{} failed requests (at most {allowed_failures} allowed):\n  {}\nsuccessful Cache-Status values: {statuses:?}",
        failures.len(),
        failures.join("\n  ")
    );
    failures
}

#[test]
fn default_fills_waiters_refetch_when_the_leader_fails_mid_body() {
    // stream_fills = false (the default): requests coalesced behind a fill wait for the
    // complete object; when the leader's origin fetch dies mid-body, only the leader's own
    // client sees the failure, and every waiter refetches and gets the complete body.
    let origin = TestOrigin::start();
    let body = payload(100 * 1024);
    let full = body.clone();
    origin.set_handler("/dies", move |_, n| {
        let r = Reply::ok(full.clone()).header("Cache-Control", "max-age=60");
        if n == 1 {
            // slow head, a first part of the body, a pause, then a reset after 50 KB
            r.delay(Duration::from_millis(300))
                .stall_after(10 * 1024, Duration::from_millis(300))
                .truncate_after(50 * 1024)
        } else {
            r.delay(Duration::from_millis(50))
        }
    });
    let node = NodeConfig::new(&origin.url()).start();

    let results = concurrent_gets_detailed(&node, "/dies", 20);
    let failures = check_all_complete(&node, results, &body, 1);
    eprintln!(
        "leader failure (stream_fills = false): failures {failures:?}, origin requests {}",
        origin.hits("/dies")
    );
    assert!(origin.hits("/dies") >= 2, "nobody refetched");

    // the complete object is cached now
    let r = get(&node, "/dies");
    assert_eq!(r.status, 200);
    assert!(r.body == body);
    assert!(cs_has(&r.cache_status(), "hit"), "{}", r.cache_status());
}

#[test]
fn streaming_fills_serve_waiters_the_full_body_from_one_origin_request() {
    // stream_fills = true: waiters follow the fill while it is written. Some arrive before the
    // response head (delayed), others while the body is paused half-way; all get the complete
    // body, from exactly one origin request.
    let origin = TestOrigin::start();
    let body = payload(256 * 1024);
    origin.set(
        "/stream",
        Reply::ok(body.clone())
            .header("Cache-Control", "max-age=60")
            .delay(Duration::from_millis(300))
            .stall_after(64 * 1024, Duration::from_millis(800))
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url())
        .cache("stream_fills = true")
        .start();
    let mut want = body.clone();
    want.extend_from_slice(b"#1");

    let (early, late) = std::thread::scope(|s| {
        let early = s.spawn(|| concurrent_gets_detailed(&node, "/stream", 20));
        // wait until the fill has started, then join it during the body pause
        let deadline = Instant::now() + Duration::from_secs(5);
        while origin.hits("/stream") == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(500));
        let late = concurrent_gets_detailed(&node, "/stream", 10);
        (early.join().expect("early requests panicked"), late)
    });
    check_all_complete(&node, early, &want, 0);
    check_all_complete(&node, late, &want, 0);
    assert_eq!(
        origin.hits("/stream"),
        1,
        "streaming fill was not shared by its waiters"
    );
    let r = get(&node, "/stream");
    assert!(cs_has(&r.cache_status(), "hit"), "{}", r.cache_status());
    assert!(r.body == want);
}

/// A fill abandoned for a reason of its own request (here credentials: the response to an
/// `Authorization` request is not stored) hands the lock to the next waiting request, which
/// fetches and stores the object, instead of sending every waiter to the origin uncached.
#[test]
fn a_fill_abandoned_for_its_own_request_hands_over_to_a_waiter() {
    let origin = TestOrigin::start();
    origin.set(
        "/shared",
        Reply::ok("shared")
            .header("Cache-Control", "max-age=600")
            .delay(Duration::from_millis(600)),
    );
    let node = NodeConfig::new(&origin.url()).start();
    std::thread::scope(|s| {
        let first = s.spawn(|| get_with(&node, "/shared", &[("Authorization", "Bearer x")]));
        std::thread::sleep(Duration::from_millis(200));
        let waiter = get(&node, "/shared");
        assert_eq!(waiter.text(), "shared");
        assert_stored_miss(&waiter, "the waiter took over the fill");
        let first = first.join().expect("first request");
        assert!(
            !cs_has(&first.cache_status(), "stored"),
            "{}",
            first.cache_status()
        );
    });
    assert_hit(&get(&node, "/shared"), "stored by the waiter");
    assert_eq!(origin.hits("/shared"), 2);
}
