//! Fills a disk tier directory with synthetic objects, to measure start-up on a large cache.
//!
//! `cargo run --release --example disk_fill -- DIR [OBJECTS] [BODY_BYTES] [HOST] [PREFIX]`
//! writes OBJECTS (default 1,000,000) objects of BODY_BYTES (default 512) under DIR/objects,
//! through the disk tier's own writer, stored under the cache keys of `http://HOST<PREFIX><n>`
//! for n in 0..OBJECTS (default host `127.0.0.1`, prefix `/r/`; a rule with the default key
//! spec), fresh for a day. Then start a node on DIR and time its first hit on one of them (see
//! `benches/load/README.md`).

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

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or_else(|| {
        anyhow::anyhow!("usage: disk_fill DIR [OBJECTS] [BODY_BYTES] [HOST] [PREFIX]")
    })?);
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let body_len: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(512);
    let host = args.next().unwrap_or_else(|| "127.0.0.1".into());
    let prefix = args.next().unwrap_or_else(|| "/r/".into());
    let metrics = Metrics::new(1 << 20, 1 << 50)?;
    let disk = DiskTier::open(&dir, 1 << 50, 1 << 20, metrics.storage.clone());
    let now = SystemTime::now();
    let mut header = ResponseHeader::build(200, None)?;
    header.append_header("content-type", "application/octet-stream")?;
    header.append_header("content-length", body_len.to_string())?;
    header.append_header("cache-control", "public, max-age=86400")?;
    let meta = CacheMeta::new(now + Duration::from_secs(86_400), now, 0, 0, header);
    let body = Bytes::from(vec![b'x'; body_len]);
    let spec = KeyConfig {
        query: QueryMode::Full,
        headers: Vec::new(),
    };
    let no_headers = HeaderMap::new();
    let started = Instant::now();
    for i in 0..n {
        let path = format!("{prefix}{i}");
        let cache_key = cache_key(&spec, &host, &path, None, &no_headers);
        let key = hash(&cache_key);
        let object = DiskObject {
            head: Bytes::from(encode_head(&meta, cache_key.primary_key())?),
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
        "wrote {n} objects of {body_len} bytes for http://{host}{prefix}<n> in {:?}; write errors: {}",
        started.elapsed(),
        metrics.storage.disk_write_errors.get()
    );
    Ok(())
}
