//! Watching a node: the node's own log and its rate-limited lines ([`logging`]), the access
//! log ([`access_log`]), OpenTelemetry tracing ([`otel`]), the heaviest keys of the recent
//! traffic ([`topkeys`], kept by the node, served on the admin API's `GET /top`), the
//! Prometheus text format as the CLI reads it ([`exposition`]), and `outpost top`, a live
//! view of a node for a person ([`top`]).

pub mod access_log;
pub mod exposition;
pub mod logging;
pub mod otel;
pub mod top;
pub mod topkeys;

pub use topkeys::TopKeys;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// 64-bit ids unique within this process and unlike another's (request ids, trace and span
/// ids): a counter from a random per-process seed through splitmix64's finalizer, a bijection,
/// so distinct counters give distinct ids (and two processes' streams overlap only if their
/// seeds fall within as many ids of each other).
pub struct Ids {
    seed: u64,
    next: AtomicU64,
}

/// splitmix64's finalizer: a bijection on u64 that spreads nearby inputs far apart.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Ids {
    /// A generator seeded from the clock and the process id.
    pub fn new() -> Ids {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ids {
            seed: mix(now ^ u64::from(std::process::id()).rotate_left(32)),
            next: AtomicU64::new(0),
        }
    }

    /// The next id.
    pub fn next(&self) -> u64 {
        mix(self
            .seed
            .wrapping_add(self.next.fetch_add(1, Ordering::Relaxed)))
    }
}

impl Default for Ids {
    fn default() -> Self {
        Ids::new()
    }
}

/// Whether the `n`th event (0-based) is among a `fraction` of events spread evenly: with
/// 0.25, every fourth. Used by access log and trace sampling.
pub fn evenly_sampled(n: u64, fraction: f64) -> bool {
    fraction >= 1.0 || ((n + 1) as f64 * fraction).floor() > (n as f64 * fraction).floor()
}

/// The request id: the client's (or a proxy's) if it sent a sane one, else a new one.
pub fn request_id(sent: Option<&[u8]>, ids: &Ids) -> String {
    match sent.and_then(|v| std::str::from_utf8(v).ok()) {
        Some(v)
            if !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
        {
            v.to_string()
        }
        // 16 hex digits
        _ => format!("{:016x}", ids.next()),
    }
}

/// Seconds as milliseconds rounded to the microsecond (log lines without float noise).
pub fn millis(seconds: f64) -> f64 {
    (seconds * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(raw: u64) -> Ids {
        Ids {
            seed: mix(raw),
            next: AtomicU64::new(0),
        }
    }

    #[test]
    fn ids_are_distinct_and_differ_between_generators() {
        let a = Ids::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100_000 {
            assert!(seen.insert(a.next()), "an id repeated");
        }
        // raw seeds one apart (clock readings close together) still give unrelated streams
        let (x, y) = (seeded(1_000_000), seeded(1_000_001));
        let xs: std::collections::HashSet<u64> = (0..10_000).map(|_| x.next()).collect();
        assert!((0..10_000).all(|_| !xs.contains(&y.next())));
    }
}
