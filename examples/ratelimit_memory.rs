//! Measures the rate limiter's resident bytes per tracked key, and that the table stays bounded.
//!
//! `cargo run --release --example ratelimit_memory [KEYS] [MAX_KEYS]` sends KEYS requests
//! (default 1,000,000) from distinct client addresses through one per-address limit whose table
//! tracks at most MAX_KEYS keys (default 1,000,000, the `rate_limit.max_keys` default), then twice
//! as many again from other addresses, and prints the RSS growth and the keys tracked after each
//! round: the later rounds must not grow the table.

use http::{HeaderMap, Method};
use outpost::config::{LimitKey, LimitRule, MatchConfig, RateLimitConfig};
use outpost::policy::ratelimit::{Buckets, Limits, Phase};
use std::net::IpAddr;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_bytes() -> u64 {
    outpost::metrics::rss_bytes().unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let keys: u32 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let max_keys: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let config = RateLimitConfig {
        allow: Vec::new(),
        max_keys,
        rules: vec![LimitRule {
            name: "per-ip".into(),
            matcher: MatchConfig::default(),
            count: 10,
            per: Duration::from_secs(1),
            burst: 20,
            key: LimitKey::Ip,
            only_misses: false,
        }],
    };
    let limits = Limits::new(&config)?;
    let before = rss_bytes();
    let buckets = Buckets::new(max_keys);
    let headers = HeaderMap::new();
    let mut out = Vec::new();
    for round in 0..3u32 {
        let started = std::time::Instant::now();
        for i in 0..keys {
            // 10.0.0.0/8 and then 11.0.0.0/8 addresses: every one distinct
            let ip = IpAddr::from((((10 + round) << 24) | (i & 0x00ff_ffff)).to_be_bytes());
            out.clear();
            let _ = limits.check(
                &buckets,
                Phase::Every,
                (&Method::GET, "example.com", "/"),
                ip,
                &headers,
                &mut out,
            );
        }
        let grown = rss_bytes().saturating_sub(before);
        println!(
            "round {}: {keys} distinct clients in {:?} ({:.0} ns each); keys tracked {} (max {max_keys}); RSS +{:.1} MiB = {:.0} bytes per tracked key",
            round + 1,
            started.elapsed(),
            started.elapsed().as_nanos() as f64 / f64::from(keys),
            buckets.len(),
            grown as f64 / (1 << 20) as f64,
            grown as f64 / buckets.len().max(1) as f64,
        );
    }
    Ok(())
}
