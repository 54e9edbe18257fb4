//! The disk tier's log-structured store under faults: SIGKILL during a fill storm, damage at
//! random offsets of the segment files and of the directory checkpoint, a purge and writes
//! after the last checkpoint surviving a SIGKILL, a disk that fills up. The rule throughout:
//! every response is byte-for-byte what the origin sent (a hit or a refetch), never a crash;
//! what reached the disk before the fault is still a hit after the restart.
mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::disk::{flip_bits, segment_files, truncate, SmallDisk};
use common::*;

const WAIT: Duration = Duration::from_secs(20);
const DISK_OBJECTS: &str = "outpost_cache_disk_objects";
const CORRUPT: &str = "outpost_cache_disk_corrupt_total";
const TIER_HITS: &str = "outpost_cache_tier_hits_total";

/// A body unique to `path`, of `len` bytes (so that a byte of another object, or a shifted one,
/// never passes for it).
fn body_of(path: &str, len: usize) -> Vec<u8> {
    let seed = path
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(0x100_0000_01B3) ^ u64::from(b));
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn cacheable(body: Vec<u8>) -> Reply {
    Reply::ok(body)
        .header("Cache-Control", "max-age=3600")
        .header("Content-Type", "application/octet-stream")
}

/// The sizes the objects cycle through: small ones (one buffered record each), one over the
/// buffers' limit (written on its own) and one of several verified blocks (streamed).
fn size_of(i: usize) -> usize {
    match i % 50 {
        0 => 700_000,
        25 => 2_500_000,
        k => 200 + k * 97,
    }
}

/// `n` cacheable objects `<prefix>/<i>` set on `origin`: their paths and bodies.
fn served(origin: &TestOrigin, prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let p = format!("{prefix}/{i}");
            let b = body_of(&p, size_of(i));
            origin.set(&p, cacheable(b.clone()));
            (p, b)
        })
        .collect()
}

/// GET `path` and require exactly `want`; whether it was a hit. A streamed object (over
/// 1 MiB) whose damage is found mid-response is cut short (the client sees an incomplete body,
/// never a complete wrong one): then the next request must be right.
fn check(node: &Node, path: &str, want: &[u8], what: &str) -> bool {
    let r = match try_fetch(node.client().get(node.url(path)).send()) {
        Ok(r) => r,
        Err(e) if want.len() > 1 << 20 => {
            eprintln!("{what}: {path} cut short ({e}): asked again");
            get(node, path)
        }
        Err(e) => panic!("{what}: {path}: {e}\n{}", node.log_tail(30)),
    };
    assert_eq!(
        r.status,
        200,
        "{what}: {path} status\n{}",
        node.log_tail(30)
    );
    assert!(
        r.body == want,
        "{what}: {path} served {} bytes that differ from the origin's {} (first difference at {:?})",
        r.body.len(),
        want.len(),
        r.body.iter().zip(want).position(|(a, b)| a != b)
    );
    cs_has(&r.cache_status(), "hit")
}

fn metric(node: &Node, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(&node.metrics(), name, labels)
}

/// The part of a segment file that holds records (before the zeros of its preallocation).
fn written_len(path: &Path) -> u64 {
    let data = fs::read(path).expect("read segment");
    data.iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// A small deterministic generator (tests must be reproducible from their seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn sigkill_during_a_fill_storm_then_every_object_is_served_byte_for_byte() {
    const N: usize = 600;
    let origin = TestOrigin::start();
    let objects = served(&origin, "/storm", N);
    let cfg =
        NodeConfig::new(&origin.url()).cache("memory_size = \"8MiB\"\nmax_object_size = \"1MiB\"");
    let node = cfg.start();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                let c = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("client");
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed) % N;
                    // the node dies under the load: errors are expected then
                    let _ = c
                        .get(node.url(&objects[i].0))
                        .send()
                        .and_then(|r| r.bytes());
                }
            });
        }
        let _stop = StopOnDrop(&stop);
        // kill once part of the objects reached the disk, with fills still in flight
        let start = Instant::now();
        while metric(&node, DISK_OBJECTS, &[]) < (N / 3) as f64 && start.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(5));
        }
        node.kill();
        stop.store(true, Ordering::Relaxed);
    });
    let node = cfg.start();
    let mut hits = 0;
    for (p, b) in &objects {
        hits += usize::from(check(&node, p, b, "after SIGKILL in a fill storm"));
    }
    assert!(
        hits >= N / 4,
        "only {hits} of {N} objects were disk hits after the restart (at least {} were on disk \
         at the kill)\n{}",
        N / 3,
        node.log_tail(20)
    );
    // and again, now that every object was stored once more
    for (p, b) in &objects {
        check(&node, p, b, "second pass after the restart");
    }
    stop_ok(node, "after the storm");
}

#[test]
fn damage_at_random_offsets_of_segments_and_checkpoint_is_never_served() {
    const N: usize = 150;
    let origin = TestOrigin::start();
    let objects = served(&origin, "/dmg", N);
    let cfg =
        NodeConfig::new(&origin.url()).cache("memory_size = \"8MiB\"\nmax_object_size = \"1MiB\"");
    let cache = cfg.dir().join("cache");
    let node = cfg.start();
    for (p, b) in &objects {
        check(&node, p, b, "fill");
    }
    wait_disk_objects(&node, N, WAIT, "all objects on disk");
    stop_ok(node, "after the fill");
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    for round in 0..3 {
        // damage: bytes flipped at random in the written part of each segment, and in the
        // checkpoint (a damaged checkpoint is ignored: the whole log is replayed instead)
        for seg in segment_files(&cache) {
            let len = written_len(&seg);
            for _ in 0..20 {
                if len > 64 {
                    flip_bits(&seg, 64 + rng.below(len - 64), 1 << rng.below(8));
                }
            }
        }
        let checkpoint = cache.join("directory");
        if round > 0 && checkpoint.exists() {
            let len = fs::metadata(&checkpoint).expect("stat").len();
            flip_bits(&checkpoint, rng.below(len), 0x10);
        }
        let node = cfg.start();
        let mut hits = 0;
        for (p, b) in &objects {
            hits += usize::from(check(&node, p, b, &format!("round {round}")));
        }
        assert!(
            hits > N / 3,
            "round {round}: only {hits} of {N} objects were hits after 20 flips per segment"
        );
        assert!(
            hits < N,
            "round {round}: every object was a hit though bytes were flipped in them"
        );
        assert!(
            metric(&node, CORRUPT, &[]) >= 1.0,
            "round {round}: damage found but not counted"
        );
        // the refetched objects are stored again
        wait_until("refetched objects written", WAIT, || {
            metric(&node, DISK_OBJECTS, &[]) >= N as f64
        });
        stop_ok(node, &format!("round {round}"));
    }
    // a segment cut short, then no checkpoint at all
    for seg in segment_files(&cache) {
        truncate(&seg, written_len(&seg) / 2);
    }
    fs::remove_file(cache.join("directory")).expect("remove the checkpoint");
    let node = cfg.start();
    let mut hits = 0;
    for (p, b) in &objects {
        hits += usize::from(check(&node, p, b, "after truncation"));
    }
    assert!(
        hits > 0 && hits < N,
        "{hits} hits of {N} after cutting every segment in half"
    );
    drop(node);
}

#[test]
fn a_purge_is_never_undone_by_a_sigkill_and_restart() {
    let origin = TestOrigin::start();
    let objects = served(&origin, "/p", 20);
    let cfg = NodeConfig::new(&origin.url());
    let node = cfg.start();
    for (p, b) in &objects {
        check(&node, p, b, "fill");
    }
    wait_disk_objects(&node, objects.len(), WAIT, "all on disk");
    // a graceful stop writes the checkpoint: it holds every object
    stop_ok(node, "checkpoint");
    let node = cfg.start();
    let purged = &objects[3].0;
    let big = &objects[0].0; // 700 KB: a record of its own
    for target in [purged, big] {
        purged_ok(
            &node,
            &format!(r#"{{"url": "http://{}{target}"}}"#, cfg.http_addr()),
        );
    }
    node.kill();
    let node = cfg.start();
    for (p, b) in &objects {
        let hit = check(&node, p, b, "after purge + SIGKILL");
        if p == purged || p == big {
            assert!(
                !hit,
                "{p} was purged, then served from disk after a SIGKILL"
            );
            assert_eq!(origin.hits(p), 2, "{p} refetched once");
        } else {
            assert!(hit, "{p} lost by the restart");
            assert_eq!(origin.hits(p), 1, "{p}");
        }
    }
}

#[test]
fn writes_after_the_last_checkpoint_survive_a_sigkill() {
    let origin = TestOrigin::start();
    let first = served(&origin, "/before", 30);
    let second = served(&origin, "/after", 30);
    let cfg = NodeConfig::new(&origin.url());
    let node = cfg.start();
    for (p, b) in &first {
        check(&node, p, b, "first fill");
    }
    stop_ok(node, "checkpoint");
    let checkpointed = fs::read(cfg.dir().join("cache/directory")).expect("checkpoint written");
    let node = cfg.start();
    for (p, b) in &second {
        check(&node, p, b, "second fill");
    }
    wait_disk_objects(
        &node,
        first.len() + second.len(),
        WAIT,
        "second fill on disk",
    );
    node.kill();
    assert_eq!(
        fs::read(cfg.dir().join("cache/directory")).expect("checkpoint"),
        checkpointed,
        "the second node wrote a checkpoint (killed too late for this test to mean anything)"
    );
    let node = cfg.start();
    for (p, b) in first.iter().chain(&second) {
        assert!(
            check(&node, p, b, "after SIGKILL"),
            "{p} not a hit after the SIGKILL\n{}",
            node.log_tail(20)
        );
    }
    assert!(metric(&node, TIER_HITS, &[("tier", "disk")]) >= 60.0);
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("disk tier directory recovered"))
        .expect("recovery logged");
    assert!(
        line.contains("replayed=") && !line.contains("replayed=0"),
        "the log after the checkpoint was replayed: {line}"
    );
    drop(node);
}

#[test]
fn a_full_disk_is_counted_and_served_around_never_wrong() {
    let origin = TestOrigin::start();
    let objects = served(&origin, "/full", 200);
    // segments of 1 MiB (disk_size 8 MiB), on a file system of 3 MiB: the third segment does
    // not fit
    let cfg = NodeConfig::new(&origin.url())
        .cache("disk_size = \"8MiB\"\ndisk_max_object_size = \"3MiB\"");
    let cache = cfg.dir().join("cache");
    fs::create_dir_all(&cache).expect("create the cache dir");
    let _disk = match SmallDisk::new(&cache, 3 << 20) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs here: {why}");
            return;
        }
    };
    let node = cfg.start();
    for (p, b) in &objects {
        check(&node, p, b, "filling a small disk");
    }
    wait_until("write errors counted", WAIT, || {
        metric(&node, "outpost_cache_disk_write_errors_total", &[]) >= 1.0
    });
    assert!(node.try_wait().is_none(), "the node exited on a full disk");
    assert!(
        node.log().contains("disk tier write failed"),
        "the full disk is logged"
    );
    for (p, b) in &objects {
        check(&node, p, b, "with the disk full");
    }
    stop_ok(node, "full disk");
    let node = cfg.start();
    let mut hits = 0;
    for (p, b) in &objects {
        hits += usize::from(check(&node, p, b, "after a restart on the full disk"));
    }
    assert!(hits > 0, "nothing written before the disk filled survived");
    drop(node);
}

#[test]
fn an_upgrade_keeps_every_object_stored_before_and_during_the_handover() {
    let origin = TestOrigin::start();
    let before = served(&origin, "/u/before", 60);
    let during = served(&origin, "/u/during", 60);
    let cfg = NodeConfig::new(&origin.url()).node("shutdown_grace = \"10s\"");
    let old = cfg.start();
    for (p, b) in &before {
        check(&old, p, b, "filled by the old process");
    }
    wait_disk_objects(
        &old,
        before.len(),
        WAIT,
        "the old process's objects on disk",
    );
    let new = cfg.start_upgrade();
    wait_until("the new process listens for the handover", WAIT, || {
        cfg.upgrade_sock().exists()
    });
    old.signal(libc::SIGQUIT);
    // while both run (the old one draining, the new one waiting for the disk tier): fills
    // through the shared listening socket, served by either
    for (p, b) in &during {
        check(&new, p, b, "during the handover");
    }
    let status = old
        .wait_exit(Duration::from_secs(20))
        .expect("the old process exits after SIGQUIT");
    assert!(
        status.success(),
        "old process: {status}\n{}",
        old.log_tail(30)
    );
    assert!(
        old.log().contains("shutdown complete"),
        "{}",
        old.log_tail(30)
    );
    wait_disk_objects(
        &new,
        before.len() + during.len(),
        WAIT,
        "every object on disk in the new process",
    );
    for (p, b) in before.iter().chain(&during) {
        assert!(
            check(&new, p, b, "after the handover"),
            "{p}: not a hit after the handover"
        );
        assert_eq!(origin.hits(p), 1, "{p} fetched again");
    }
    stop_ok(new, "the new process");
    let node = cfg.start();
    for (p, b) in before.iter().chain(&during) {
        assert!(
            check(&node, p, b, "after a restart"),
            "{p}: lost by the restart"
        );
    }
    assert_eq!(origin.total_hits(), before.len() + during.len());
}

/// A disk hit is sent from its segment file (`sendfile`) on the lean hit path; a body larger
/// than the socket's buffers, to a client that does not read for a while, goes out partly
/// that way and the rest from the verified copy: the client gets every byte, in order, and
/// the connection serves the next request.
#[test]
fn a_disk_hit_larger_than_the_socket_buffers_reaches_a_slow_reader_whole() {
    use std::io::{BufReader, Write};
    let origin = TestOrigin::start();
    // eight bodies of 300-900 KB, 6.6 MB together
    let objects: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            let p = format!("/slow/{i}");
            let b = body_of(&p, if i == 1 { 300_000 } else { 900_000 });
            origin.set(&p, cacheable(b.clone()));
            (p, b)
        })
        .collect();
    let cfg = NodeConfig::new(&origin.url()).node("lean_hits = true");
    let node = cfg.start();
    for (p, b) in &objects {
        check(&node, p, b, "fill");
    }
    wait_disk_objects(&node, objects.len(), WAIT, "objects on disk");
    stop_ok(node, "after the fill");
    // memory empty: the hits come from disk (once the directory is recovered: a lookup before
    // that waits on the full path)
    let node = cfg.start();
    wait_disk_objects(&node, objects.len(), WAIT, "directory recovered");
    let lean_before = metric(&node, "outpost_lean_hits_total", &[]);
    // a client with a small receive buffer: the node's side holds at most its send buffer
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(16 << 10).expect("SO_RCVBUF");
    sock.connect(&node.addr().into()).expect("connect");
    let mut s = std::net::TcpStream::from(sock);
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    // eight disk hits then a memory hit (promoted) pipelined, more than the socket's send
    // buffer takes (4 MiB at most): the node sends what it takes and waits for the client
    let order: Vec<&(String, Vec<u8>)> = objects.iter().cycle().take(9).collect();
    let mut asked = String::new();
    for (p, _) in &order {
        // the host the fill was asked for (it is part of the cache key)
        asked.push_str(&format!(
            "GET {p} HTTP/1.1\r\nHost: {}\r\n\r\n",
            node.addr()
        ));
    }
    s.write_all(asked.as_bytes()).expect("requests");
    std::thread::sleep(Duration::from_millis(500));
    for (i, (p, want)) in order.iter().enumerate() {
        let Response { status, body, .. } = read_response(&mut r, false);
        assert_eq!(status, 200, "response {i} {p}");
        assert!(
            body == *want,
            "response {i} {p}: {} bytes that differ from the origin's {} (first difference at {:?})",
            body.len(),
            want.len(),
            body.iter().zip(want).position(|(a, b)| a != b)
        );
    }
    assert!(
        metric(&node, TIER_HITS, &[("tier", "disk")]) >= 8.0,
        "the first hits came from disk: {}\n{}",
        metric(&node, TIER_HITS, &[("tier", "disk")]),
        node.log_tail(20)
    );
    assert_eq!(
        metric(&node, "outpost_lean_hits_total", &[]) - lean_before,
        9.0,
        "every hit answered on the lean path\n{}",
        node.log_tail(20)
    );
    drop(node);
}
