//! The node's own log (standard error, through `tracing`; the access log is
//! [`super::access_log`]), kept readable under real traffic: a warning that can repeat with
//! the traffic (a disk fault, a full connection table) is logged at most once per interval
//! ([`LogLimit`]), its line saying how many of its kind were left out since the previous one
//! (`suppressed`).
//!
//! `OUTPOST_LOG` sets the filter (default [`DEFAULT_FILTER`]); `OUTPOST_LOG_FORMAT=json`
//! writes JSON lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

/// The usual interval of a [`LogLimit`]: one line of a kind per 10 seconds at most.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The filter without `OUTPOST_LOG`: Outpost at info, Pingora's crates at warn.
pub const DEFAULT_FILTER: &str = "info,pingora_core=warn,pingora_proxy=warn,pingora_cache=warn";

/// Install the process's log subscriber (stderr), as `OUTPOST_LOG` and `OUTPOST_LOG_FORMAT`
/// say. Records of the `log` crate (Pingora's, rustls's) go through it too.
pub fn init() {
    let filter =
        EnvFilter::try_from_env("OUTPOST_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = std::env::var("OUTPOST_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// At most one line of a kind per interval. Shared by every thread logging that kind; lock
/// free.
#[derive(Debug)]
pub struct LogLimit {
    interval_ms: u64,
    epoch: Instant,
    /// When the last line was let through: ms since `epoch`, plus `interval_ms` (so 0 means
    /// none yet).
    last: AtomicU64,
    /// Lines left out since the last one let through.
    suppressed: AtomicU64,
}

impl LogLimit {
    /// One line per `interval` at most.
    pub fn new(interval: Duration) -> LogLimit {
        LogLimit {
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether to log a line now: `Some(n)` to log it, saying `n` lines of its kind were left
    /// out since the previous one; `None` to leave it out (it is counted for the next).
    pub fn admit(&self) -> Option<u64> {
        let elapsed = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let now = elapsed.saturating_add(self.interval_ms);
        let last = self.last.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= self.interval_ms
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_lets_the_first_line_through_then_counts_the_rest() {
        let limit = LogLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.admit(), Some(0));
        assert_eq!(limit.admit(), None);
        assert_eq!(limit.admit(), None);
        // the next interval's line says how many were left out
        limit.last.store(0, Ordering::Relaxed);
        assert_eq!(limit.admit(), Some(2));
        assert_eq!(limit.admit(), None);
    }

    #[test]
    fn a_zero_interval_lets_every_line_through() {
        let limit = LogLimit::new(Duration::ZERO);
        assert!((0..5).all(|_| limit.admit() == Some(0)));
    }
}
