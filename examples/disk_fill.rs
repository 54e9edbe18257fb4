//! Fills a disk tier directory with synthetic objects, to measure start-up on a large cache.
//!
//! `cargo run --release --example disk_fill -- DIR [OBJECTS] [BODY_BYTES]` writes OBJECTS
//! (default 1,000,000) objects of BODY_BYTES (default 512) under DIR/objects with random keys,
//! through the disk tier's own writer. Then start a node on DIR and time its first hit (see
//! `benches/load/README.md`).

use bytes::Bytes;
use outpost::cache::disk::{DiskObject, DiskTier};
use outpost::cache::entry::encode_head;
use outpost::metrics::Metrics;
use pingora_cache::CacheMeta;
use pingora_http::ResponseHeader;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: disk_fill DIR [OBJECTS] [BODY_BYTES]"))?,
    );
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let body_len: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(512);
    let metrics = Metrics::new(&[], 1 << 20, 1 << 50)?;
    let disk = DiskTier::open(&dir, 1 << 50, 1 << 20, metrics.storage.clone());
    let now = SystemTime::now();
    let mut header = ResponseHeader::build(200, None)?;
    header.append_header("content-type", "application/octet-stream")?;
    header.append_header("cache-control", "public, max-age=86400")?;
    let meta = CacheMeta::new(now + Duration::from_secs(86_400), now, 0, 0, header);
    let head = Bytes::from(encode_head(&meta)?);
    let body = Bytes::from(vec![b'x'; body_len]);
    let started = Instant::now();
    let mut key: u128 = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C834;
    for i in 0..n {
        key = key
            .wrapping_mul(0x2360_ED05_1FC6_5DA4_4385_DF64_9FCC_F645)
            .wrapping_add(1);
        let object = DiskObject {
            head: head.clone(),
            body: body.clone(),
        };
        while !disk.put(key, object.clone()) {
            disk.flush(Duration::from_secs(5));
        }
        if i % 100_000 == 0 {
            eprintln!("{i} objects queued after {:?}", started.elapsed());
        }
    }
    disk.flush(Duration::from_secs(600));
    println!(
        "wrote {n} objects of {body_len} bytes in {:?}; write errors: {}",
        started.elapsed(),
        metrics.storage.disk_write_errors.get()
    );
    Ok(())
}
