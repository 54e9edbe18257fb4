//! Fleet purge: purges issued on any node reach every node through a NATS JetStream stream.
//!
//! A node publishes each admin purge to the stream (through a durable outbox: a purge issued
//! while NATS is unreachable waits, on disk with a disk tier, and is published when NATS
//! returns; a record a crash damaged costs that purge only, see [`crate::journal`]) and
//! consumes the stream with a durable consumer named after itself, so purges it missed while
//! down or partitioned are replayed when it comes back. Until it has caught up, objects it
//! stored before it started (or, after a long partition, before it last caught up) are
//! revalidated with the origin before they are served: a purge it has not seen yet cannot let
//! it serve what the fleet purged.
//!
//! The bus itself ([`bus`]) runs as a background service.

pub mod bus;

use crate::config::ClusterConfig;
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::purge::BanTarget;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

/// A purge as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetPurge {
    /// The node it was issued on (which applied it already).
    pub node: String,
    /// Its id on that node.
    pub id: u64,
    /// Mark stale instead of removing.
    pub soft: bool,
    /// What it covers.
    pub target: BanTarget,
    /// For a URL purge: host, path, query (to free the stored entry at once).
    pub url: Option<(String, String, Option<String>)>,
    /// When it was issued, milliseconds since the Unix epoch (the issuing node's clock).
    pub issued_ms: u64,
}

/// What became of a purge handed to [`Cluster::publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// Queued for the stream (the bus publishes it within moments while NATS is reachable).
    Queued,
    /// Queued, but it could not be written to the outbox file: lost if the node stops first.
    QueuedInMemory,
}

impl Handed {
    /// The admin API's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Handed::Queued => "queued",
            Handed::QueuedInMemory => "queued-in-memory",
        }
    }
}

fn now_ms() -> u64 {
    crate::cache::entry::to_ms(SystemTime::now())
}

/// The cluster side of a node: the outbox, and how far it has caught up with the stream.
pub struct Cluster {
    /// The validated `[cluster]` section.
    pub config: ClusterConfig,
    /// This node's name (its durable consumer, and the publisher field of its purges).
    pub node: String,
    outbox: Mutex<VecDeque<FleetPurge>>,
    outbox_file: Option<Journal>,
    /// Wakes the publisher.
    pub(crate) wake: Notify,
    /// When the process started (ms since the epoch).
    started_ms: u64,
    /// Caught up with the stream at least once since start.
    synced: AtomicBool,
    /// The last time the node knew it had every purge of the stream (ms since the epoch).
    last_sync_ms: AtomicU64,
    /// Connected to NATS.
    connected: AtomicBool,
    metrics: crate::metrics::ClusterMetrics,
}

impl Cluster {
    /// The cluster state of node `node`; `outbox_file` keeps unpublished purges across
    /// restarts (a disk tier's directory), read back here.
    pub fn new(
        config: ClusterConfig,
        node: &str,
        outbox_file: Option<PathBuf>,
        metrics: &Metrics,
    ) -> Cluster {
        let mut outbox = VecDeque::new();
        let outbox_file = outbox_file.and_then(|path| match Journal::open(&path) {
            Ok((journal, queued)) => {
                outbox.extend(queued);
                Some(journal)
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "cluster outbox unreadable: purges queued before the restart are not published, new ones are kept in memory only"
                );
                None
            }
        });
        let metrics = metrics.cluster.clone();
        metrics.outbox.set(outbox.len() as i64);
        if !outbox.is_empty() {
            tracing::info!(
                queued = outbox.len(),
                "cluster outbox: purges from before the restart will be published"
            );
        }
        let started_ms = now_ms();
        Cluster {
            config,
            node: node.to_string(),
            outbox: Mutex::new(outbox),
            outbox_file,
            wake: Notify::new(),
            started_ms,
            synced: AtomicBool::new(false),
            last_sync_ms: AtomicU64::new(started_ms),
            connected: AtomicBool::new(false),
            metrics,
        }
    }

    /// Queue a purge applied on this node for the rest of the fleet.
    pub fn publish(&self, purge: FleetPurge) -> Handed {
        let mut outbox = self.outbox.lock();
        let written = match &self.outbox_file {
            None => false,
            Some(journal) => journal
                .append(&purge)
                .map_err(|e| tracing::error!(error = %e, "cluster outbox: cannot record purge"))
                .is_ok(),
        };
        outbox.push_back(purge);
        self.metrics.outbox.set(outbox.len() as i64);
        drop(outbox);
        self.wake.notify_one();
        if written {
            Handed::Queued
        } else {
            Handed::QueuedInMemory
        }
    }

    /// The oldest purge waiting to be published.
    pub(crate) fn next_queued(&self) -> Option<FleetPurge> {
        self.outbox.lock().front().cloned()
    }

    /// The purge `next_queued` gave is in the stream: drop it from the outbox.
    pub(crate) fn published(&self, purge: &FleetPurge) {
        let mut outbox = self.outbox.lock();
        if outbox.front() == Some(purge) {
            outbox.pop_front();
        }
        self.metrics.outbox.set(outbox.len() as i64);
        self.metrics.published.inc();
        if let Some(journal) = &self.outbox_file {
            if let Err(e) = journal.rewrite(outbox.iter()) {
                tracing::warn!(error = %e, "cluster outbox: cannot rewrite (a purge may be published twice after a restart)");
            }
        }
    }

    /// Purges waiting to be published.
    pub fn queued(&self) -> usize {
        self.outbox.lock().len()
    }

    /// The bus knows the node has every purge of the stream (now).
    pub(crate) fn caught_up(&self) {
        let now = now_ms();
        self.last_sync_ms.store(now, Ordering::Relaxed);
        if !self.synced.swap(true, Ordering::Relaxed) {
            tracing::info!(
                after_ms = now.saturating_sub(self.started_ms),
                "cluster: caught up with the purge stream"
            );
        }
        self.metrics.synced.set(1);
    }

    /// The connection to NATS came up or went down.
    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        self.metrics.connected.set(i64::from(up));
    }

    /// Count one purge received from another node and applied here, `delay` after it was
    /// published.
    pub(crate) fn applied(&self, delay: Duration) {
        self.metrics.applied.inc();
        self.metrics.delay.observe(delay.as_secs_f64());
    }

    /// Whether the node has caught up with the stream since it started.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Whether the node is connected to NATS.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Whether a stored object confirmed by the origin at `confirmed` must be revalidated
    /// before it is served, because a purge this node has not received yet may cover it: it
    /// predates the start while the node has not caught up, or predates the last catch-up
    /// while the node has been out of touch for longer than `max_lag`.
    pub fn must_revalidate(&self, confirmed: SystemTime) -> bool {
        let confirmed = crate::cache::entry::to_ms(confirmed);
        if !self.synced() {
            return self.config.revalidate_until_synced && confirmed < self.started_ms;
        }
        let max_lag = self.config.max_lag;
        if max_lag.is_zero() {
            return false;
        }
        let last = self.last_sync_ms.load(Ordering::Relaxed);
        let lag = now_ms().saturating_sub(last);
        lag > max_lag.as_millis() as u64 && confirmed < last
    }

    /// Seconds since the node last knew it had every purge (scrape time).
    pub fn refresh_gauges(&self) {
        let lag = now_ms().saturating_sub(self.last_sync_ms.load(Ordering::Relaxed));
        self.metrics.lag.set(lag as f64 / 1000.0);
    }
}

/// Time since a purge was published (`published_ms`: the stream's timestamp, ms since the epoch).
pub(crate) fn delay_since(published_ms: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(published_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_lag: u64) -> ClusterConfig {
        ClusterConfig {
            nats_url: "nats://127.0.0.1:4222".into(),
            stream: "T".into(),
            token_env: None,
            retention: Duration::from_secs(3600),
            max_lag: Duration::from_millis(max_lag),
            revalidate_until_synced: true,
        }
    }

    fn purge(id: u64) -> FleetPurge {
        FleetPurge {
            node: "a".into(),
            id,
            soft: false,
            target: BanTarget::All,
            url: None,
            issued_ms: 1,
        }
    }

    #[test]
    fn outbox_survives_a_restart_and_drains() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let metrics = Metrics::new(1, 1).unwrap();
        let c = Cluster::new(config(0), "a", Some(path.clone()), &metrics);
        assert_eq!(c.publish(purge(1)), Handed::Queued);
        assert_eq!(c.publish(purge(2)), Handed::Queued);
        drop(c);
        let c = Cluster::new(config(0), "a", Some(path.clone()), &metrics);
        assert_eq!(c.queued(), 2);
        let first = c.next_queued().unwrap();
        assert_eq!(first.id, 1);
        c.published(&first);
        drop(c);
        let c = Cluster::new(config(0), "a", Some(path.clone()), &metrics);
        assert_eq!(c.next_queued().map(|p| p.id), Some(2));
        c.published(&purge(2));
        assert_eq!(c.queued(), 0);
        assert!(!path.exists());
    }

    #[test]
    fn a_torn_outbox_line_costs_that_purge_only() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new(1, 1).unwrap();
        let mut torn = serde_json::to_vec(&FleetPurge {
            target: BanTarget::Tags {
                tags: vec!["café".into()],
            },
            ..purge(2)
        })
        .unwrap();
        torn.push(b'\n');
        let e_acute = torn.iter().position(|b| *b == 0xC3).unwrap();
        let garbage = [0u8; 64];
        // inside the two bytes of é, mid-JSON, a NUL run left by a crash
        for tail in [&torn[..=e_acute], &torn[..e_acute - 3], &garbage[..]] {
            let path = dir.path().join("outbox.jsonl");
            let c = Cluster::new(config(0), "a", Some(path.clone()), &metrics);
            assert_eq!(c.publish(purge(1)), Handed::Queued);
            drop(c);
            let mut text = std::fs::read(&path).unwrap();
            text.extend_from_slice(tail);
            std::fs::write(&path, text).unwrap();

            let c = Cluster::new(config(0), "a", Some(path.clone()), &metrics);
            assert_eq!(c.queued(), 1, "the purge before the torn line is kept");
            assert_eq!(c.publish(purge(3)), Handed::Queued);
            drop(c);
            let c = Cluster::new(config(0), "a", Some(path.clone()), &metrics);
            assert_eq!(c.next_queued().map(|p| p.id), Some(1));
            c.published(&purge(1));
            assert_eq!(c.next_queued().map(|p| p.id), Some(3), "the purge after");
            c.published(&purge(3));
            assert!(!path.exists());
        }
    }

    #[test]
    fn objects_from_before_the_start_are_revalidated_until_caught_up() {
        let metrics = Metrics::new(1, 1).unwrap();
        let c = Cluster::new(config(50), "a", None, &metrics);
        let before = SystemTime::now() - Duration::from_secs(60);
        assert!(c.must_revalidate(before));
        assert!(!c.must_revalidate(SystemTime::now() + Duration::from_secs(1)));
        c.caught_up();
        assert!(!c.must_revalidate(before));
        // out of touch for longer than max_lag: older than the last catch-up is suspect
        std::thread::sleep(Duration::from_millis(80));
        assert!(c.must_revalidate(before));
        assert!(!c.must_revalidate(SystemTime::now()));
        c.caught_up();
        assert!(!c.must_revalidate(before));
    }
}
