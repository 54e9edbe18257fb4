//! Upstream origins: the peers Outpost fetches from.
//!
//! One origin per `[[origins]]` entry for now; pools, health checks and shields build on
//! [`Origin`] later.

use crate::config::OriginConfig;
use pingora_core::upstreams::peer::HttpPeer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// An origin server with its connection settings prepared.
pub struct Origin {
    /// The validated config entry.
    pub config: OriginConfig,
    peer: HttpPeer,
    /// Reference point of `failing_until`.
    epoch: Instant,
    /// Milliseconds after `epoch` until which the origin counts as failing (0: never failed).
    failing_until: AtomicU64,
}

impl Origin {
    /// Prepare the peer template for `config`.
    pub fn new(config: OriginConfig) -> Self {
        let mut peer = HttpPeer::new(config.addr, false, String::new());
        peer.options.connection_timeout = Some(config.connect_timeout);
        peer.options.total_connection_timeout = Some(config.connect_timeout);
        peer.options.read_timeout = Some(config.read_timeout);
        peer.options.write_timeout = Some(config.read_timeout);
        Origin {
            config,
            peer,
            epoch: Instant::now(),
            failing_until: AtomicU64::new(0),
        }
    }

    /// A peer for one request (a clone of the template; connections are pooled by Pingora).
    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// A fetch failed (unreachable, timed out, or 500/502/503/504): the origin counts as
    /// failing for `failure_backoff`.
    pub fn record_failure(&self) {
        let until = self.millis(Instant::now() + self.config.failure_backoff);
        self.failing_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether a fetch failed within the last `failure_backoff`.
    pub fn is_failing(&self) -> bool {
        self.millis(Instant::now()) < self.failing_until.load(Ordering::Relaxed)
    }

    /// Whether a fetch started at `start` has run past `total_timeout`.
    pub fn past_total_timeout(&self, start: Instant) -> bool {
        self.config
            .total_timeout
            .is_some_and(|t| start.elapsed() > t.max(Duration::from_millis(1)))
    }
}
