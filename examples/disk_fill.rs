//! Fills a disk tier directory with synthetic objects: measures the fill rate, the space an
//! object takes on disk and the directory's memory per object, and leaves a cache to time a
//! node's restart on.
//!
//! `cargo run --release --example disk_fill -- DIR [OBJECTS] [BODY_BYTES] [HOST] [PREFIX]
//! [DISK_SIZE] [crash]` writes OBJECTS (default 1,000,000) objects of BODY_BYTES (default 512)
//! under DIR, through the disk tier's own writer, stored under the cache keys of
//! `http://HOST<PREFIX><n>` for n in 0..OBJECTS (default host `127.0.0.1`, prefix `/r/`; a rule
//! with the default key spec), fresh for a day, in a tier of DISK_SIZE bytes (default 64 GiB:
//! the node must be configured with the same `disk_size`, or it drops the segments). The heads
//! are those of an nginx static file. With `crash`, it exits without the graceful stop's
//! checkpoint, as after a SIGKILL: the node then replays the log written since the last
//! periodic checkpoint.
//!
//! Prints one line per 10% and a summary: objects/s (the put calls, then until written),
//! dropped writes, bytes of log per object, RSS per object (the directory, after the writes
//! landed), checkpoint time (see `benches/load/README.md`).

use bytes::Bytes;
use http::HeaderMap;
use outpost::cache::disk::{DiskObject, DiskTier};
use outpost::cache::entry::encode_head;
use outpost::cache::memory::hash;
use outpost::config::{KeyConfig, QueryMode};
use outpost::metrics::Metrics;
use outpost::rules::key::cache_key;
use pingora_cache::CacheMeta;
use pingora_http::ResponseHeader;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: disk_fill DIR [OBJECTS] [BODY_BYTES] [HOST] [PREFIX] [DISK_SIZE] [crash]";
    let dir = PathBuf::from(args.first().ok_or_else(|| anyhow::anyhow!(usage))?);
    let arg = |i: usize| args.get(i).filter(|a| a.as_str() != "-");
    let n: u64 = arg(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let body_len: usize = arg(2).and_then(|a| a.parse().ok()).unwrap_or(512);
    let host = arg(3).cloned().unwrap_or_else(|| "127.0.0.1".into());
    let prefix = arg(4).cloned().unwrap_or_else(|| "/r/".into());
    let disk_size: u64 = arg(5).and_then(|a| a.parse().ok()).unwrap_or(64 << 30);
    let crash = args.iter().any(|a| a == "crash");
    let metrics = Metrics::new(1 << 20, disk_size)?;
    let rss0 = outpost::metrics::rss_bytes().unwrap_or(0);
    let disk = DiskTier::open(&dir, disk_size, 1 << 20, metrics.storage.clone());
    let now = SystemTime::now();
    let mut header = ResponseHeader::build(200, None)?;
    for (k, v) in [
        ("server", "nginx/1.22.1"),
        ("date", httpdate::fmt_http_date(now).as_str()),
        ("content-type", "application/octet-stream"),
        ("content-length", body_len.to_string().as_str()),
        ("last-modified", "Tue, 01 Apr 2025 10:00:00 GMT"),
        ("etag", "\"67ebb9a0-200\""),
        ("cache-control", "public, max-age=86400"),
        ("accept-ranges", "bytes"),
    ] {
        header.append_header(k.to_string(), v)?;
    }
    let meta = CacheMeta::new(now + Duration::from_secs(86_400), now, 0, 0, header);
    let body = Bytes::from(vec![b'x'; body_len]);
    let spec = KeyConfig {
        query: QueryMode::Full,
        headers: Vec::new(),
    };
    let no_headers = HeaderMap::new();
    let started = Instant::now();
    let mut waited = Duration::ZERO;
    for i in 0..n {
        let path = format!("{prefix}{i}");
        let cache_key = cache_key(&spec, &host, &path, None, &no_headers);
        let key = hash(&cache_key);
        let object = DiskObject {
            head: Bytes::from(encode_head(&meta, cache_key.primary_key())?),
            body: body.clone(),
        };
        while !disk.put(key, object.clone()) {
            // the queue is full (the disk is slower than this loop): wait for it, and say so
            let t = Instant::now();
            disk.flush(Duration::from_secs(5));
            waited += t.elapsed();
        }
        if n >= 10 && i % (n / 10) == 0 && i > 0 {
            eprintln!(
                "{i} objects after {:.1} s ({:.0}/s)",
                started.elapsed().as_secs_f64(),
                i as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let queued = started.elapsed();
    disk.flush(Duration::from_secs(600));
    let landed = started.elapsed();
    let rss1 = outpost::metrics::rss_bytes().unwrap_or(0);
    let per_object = |b: u64| b as f64 / n.max(1) as f64;
    let dropped = metrics.storage.disk_writes_dropped.get();
    println!(
        "wrote {n} objects of {body_len} bytes for http://{host}{prefix}<n>: put {:.0}/s, written {:.0}/s \
         ({:.1} s; waited for the disk {:.1} s, {dropped} puts refused and retried); \
         {:.0} bytes of log per object; RSS +{:.1} bytes per object; write errors: {}",
        n as f64 / queued.as_secs_f64(),
        n as f64 / landed.as_secs_f64(),
        landed.as_secs_f64(),
        waited.as_secs_f64(),
        per_object(disk.appended_bytes()),
        per_object(rss1.saturating_sub(rss0)),
        metrics.storage.disk_write_errors.get()
    );
    if crash {
        println!("exiting without a checkpoint (as a crash would)");
        std::process::exit(0);
    }
    let t = Instant::now();
    let ok = disk.shutdown(Duration::from_secs(600));
    println!(
        "graceful stop (checkpoint of {} objects) in {:.2} s{}",
        disk.objects(),
        t.elapsed().as_secs_f64(),
        if ok { "" } else { " (timed out)" }
    );
    Ok(())
}
