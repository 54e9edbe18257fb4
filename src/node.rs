//! The node: all shared state, built once at start-up and shared as `Arc<Node>`.
//!
//! Pingora wants `&'static` storage, lock and predictor: they are leaked here, exactly once.

use crate::cache::{DiskTier, MemoryTier, TieredStorage};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::purge::BanList;
use crate::rules::RuleSet;
use crate::upstream::Origin;
use anyhow::Context;
use arc_swap::ArcSwap;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::predictor::Predictor;
use std::sync::Arc;

/// Shared state of one Outpost node.
pub struct Node {
    /// The configuration this node runs.
    pub config: Arc<Config>,
    /// Compiled cache rules (swappable on reload).
    pub rules: ArcSwap<RuleSet>,
    /// Origins, in config order (rules refer to them by index).
    pub origins: Vec<Origin>,
    /// The storage tiers (memory over disk).
    pub storage: &'static TieredStorage,
    /// Request coalescing lock.
    pub cache_lock: &'static CacheKeyLockImpl,
    /// Remembers keys whose responses were uncacheable, so they skip lookup and lock.
    pub predictor: &'static Predictor<16>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Purges in force (durable when a disk tier runs).
    pub bans: BanList,
    /// When the node started.
    pub started: std::time::Instant,
}

/// Request-specific reasons a response was not stored; the key may still be cacheable for
/// other requests, so the predictor must not remember them.
fn request_specific(reason: &'static str) -> bool {
    matches!(reason, "authorization" | "request-no-store")
}

impl Node {
    /// Build the node for `config`. Call once per process: it leaks the storage.
    pub fn new(config: Config) -> anyhow::Result<Arc<Node>> {
        let rules = RuleSet::new(&config).context("compiling cache rules")?;
        let origins: Vec<Origin> = config.origins.iter().cloned().map(Origin::new).collect();
        let names: Vec<String> = config.origins.iter().map(|o| o.name.clone()).collect();
        let cache = &config.cache;
        let metrics = Metrics::new(&names, cache.memory_size, cache.disk_size)
            .context("registering metrics")?;
        let memory: Option<&'static MemoryTier> = cache.tiers.memory().then(|| {
            &*Box::leak(Box::new(MemoryTier::with_eviction_counter(
                cache.memory_size,
                cache.max_object_size,
                cache.stream_fills,
                Some(metrics.storage.memory.evictions.clone()),
            )))
        });
        let disk = cache.tiers.disk().then(|| {
            DiskTier::open(
                &cache.dir,
                cache.disk_size,
                cache.disk_max_object_size,
                metrics.storage.clone(),
            )
        });
        let storage: &'static TieredStorage = Box::leak(Box::new(TieredStorage::new(
            memory,
            disk,
            metrics.storage.clone(),
        )));
        let cache_lock: &'static CacheKeyLockImpl =
            Box::leak(CacheLock::new_boxed(config.cache.lock_age_timeout));
        let predictor: &'static Predictor<16> =
            Box::leak(Box::new(Predictor::new(4096, Some(request_specific))));
        let bans = if cache.tiers.disk() {
            let path = cache.dir.join("bans.jsonl");
            BanList::open(&path).unwrap_or_else(|e| {
                tracing::error!(
                    file = %path.display(),
                    error = %e,
                    "cannot read or write the purge record: purges are kept in memory only"
                );
                BanList::in_memory()
            })
        } else {
            BanList::in_memory()
        };
        Ok(Arc::new(Node {
            bans,
            started: std::time::Instant::now(),
            config: Arc::new(config),
            rules: ArcSwap::from_pointee(rules),
            origins,
            storage,
            cache_lock,
            predictor,
            metrics,
        }))
    }

    /// Refresh scrape-time gauges and render the metrics text.
    pub fn render_metrics(&self) -> Vec<u8> {
        self.metrics.purge.bans.set(self.bans.len() as i64);
        if let Some(memory) = self.storage.memory() {
            self.metrics.memory_objects.set(memory.objects() as i64);
            self.metrics.memory_bytes.set(memory.bytes() as i64);
        }
        if let Some(disk) = self.storage.disk() {
            self.metrics.disk_objects.set(disk.objects() as i64);
            self.metrics.disk_bytes.set(disk.bytes() as i64);
        }
        self.metrics.render()
    }
}
