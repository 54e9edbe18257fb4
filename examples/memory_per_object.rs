//! Measures the memory tier's resident bytes per cached object, without the proxy around it.
//!
//! `cargo run --release --example memory_per_object [OBJECTS] [BODY_BYTES]` fills a tier with
//! OBJECTS objects (default 100,000) of BODY_BYTES (default 1024) carrying a typical origin
//! response header, reads each once, and prints the RSS growth per object next to the body and stored-head
//! sizes, so the tier's own overhead reads directly. `benches/load/run.sh` measures the same
//! through the whole proxy.

use bytes::Bytes;
use outpost::cache::MemoryTier;
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_http::ResponseHeader;
use std::time::{Duration, SystemTime};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_bytes() -> u64 {
    outpost::metrics::rss_bytes().unwrap_or(0)
}

/// The header nginx sends for a static file, as the load benchmark's origin does.
fn response(now: SystemTime, body: usize) -> ResponseHeader {
    let date = httpdate::fmt_http_date(now);
    let len = body.to_string();
    let mut r = ResponseHeader::build(200, None).expect("status");
    for (k, v) in [
        ("server", "nginx/1.22.1"),
        ("date", date.as_str()),
        ("content-type", "application/octet-stream"),
        ("content-length", len.as_str()),
        ("last-modified", "Tue, 01 Apr 2025 10:00:00 GMT"),
        ("etag", "\"67ebb9a0-400\""),
        ("cache-control", "public, max-age=3600"),
        ("accept-ranges", "bytes"),
    ] {
        r.append_header(k, v).expect("header");
    }
    r
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let body_len: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let tier: &'static MemoryTier = Box::leak(Box::new(MemoryTier::new(64 << 30, 64 << 20, false)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let span = Span::inactive();
    let span = span.handle();
    let now = SystemTime::now();
    let body = vec![b'x'; body_len];
    let before = rss_bytes();
    rt.block_on(async {
        for i in 0..n {
            let key = CacheKey::new(format!("127.0.0.1\n/m/{i}\n"), "");
            let meta = CacheMeta::new(
                now + Duration::from_secs(3600),
                now,
                0,
                0,
                response(now, body_len),
            );
            let mut miss = tier
                .get_miss_handler(&key, &meta, &span)
                .await
                .expect("miss handler");
            // a fresh buffer per object, as read from the network
            miss.write_body(Bytes::from(body.clone()), true)
                .await
                .expect("write");
            miss.finish().await.expect("finish");
        }
    });
    // read every object once: a first read may allocate per-object state (shared buffers)
    rt.block_on(async {
        for i in 0..n {
            let key = CacheKey::new(format!("127.0.0.1\n/m/{i}\n"), "");
            let (_meta, mut hit) = tier
                .lookup(&key, &span)
                .await
                .expect("lookup")
                .expect("stored");
            while hit.read_body().await.expect("read").is_some() {}
        }
    });
    // as the load bench, wait before reading RSS: the allocator returns the tables' former
    // (smaller) generations to the system a little after they are freed
    std::thread::sleep(Duration::from_secs(2));
    let per_object = (rss_bytes().saturating_sub(before)) as f64 / n as f64;
    let charged = tier.bytes() as f64 / tier.objects().max(1) as f64;
    let head = charged - body_len as f64 - outpost::cache::memory::ENTRY_OVERHEAD as f64;
    println!("objects stored:        {}", tier.objects());
    println!("RSS per object:        {per_object:.0} B");
    println!("  body:                {body_len} B");
    println!("  stored head:         {head:.0} B (freshness record + response header)");
    println!(
        "  bookkeeping + slack: {:.0} B (beyond key hash, body and head)",
        per_object - body_len as f64 - head
    );
}
