//! The node: all shared state, built once at start-up and shared as `Arc<Node>`.
//!
//! Pingora wants `&'static` storage, lock and predictor: they are leaked here, exactly once.

use crate::cache::partial::{PARTIAL, RANGE_ANSWER};
use crate::cache::{DiskTier, MemoryTier, TieredStorage};
use crate::cluster::Cluster;
use crate::config::{ClientIpConfig, Config, HeaderPolicy, Overrides, ShieldConfig};
use crate::metrics::Metrics;
use crate::observe::access_log::AccessLog;
use crate::observe::otel::Tracing;
use crate::observe::TopKeys;
use crate::policy::ratelimit::{Buckets, Limits};
use crate::purge::{Ban, BanList, BanTarget};
use crate::rules::RuleSet;
use crate::tls::reload::Tls;
use crate::upstream::{Pool, Tier};
use anyhow::Context;
use arc_swap::ArcSwap;
use pingora_cache::key::CacheKey;
use pingora_cache::lock::{
    CacheKeyLock, CacheKeyLockImpl, CacheLock, LockStatus, Locked, ReadLock, WritePermit,
};
use pingora_cache::predictor::Predictor;
use pingora_cache::trace::Span;
use std::sync::Arc;

/// What a configuration reload replaces, swapped as one: the rules and the origins they refer to.
pub struct Routing {
    /// Compiled cache rules.
    pub rules: RuleSet,
    /// Origin pools, in config order (rules refer to them by index); the shield tier is one
    /// of them (`[shield] origin`).
    pub origins: Vec<Pool>,
    /// The shield tier: `origin` indexes `origins`.
    pub shield: ShieldConfig,
    /// Compiled rate limits.
    pub limits: Limits,
    /// How the client's address is found behind proxies.
    pub client_ip: ClientIpConfig,
    /// Header rules for every request and response (before the matching rule's).
    pub headers: HeaderPolicy,
}

impl Routing {
    fn new(config: &Config, metrics: &Metrics) -> anyhow::Result<Routing> {
        let mut origins = Vec::with_capacity(config.origins.len());
        for (i, o) in config.origins.iter().enumerate() {
            let tier = if config.shield.origin == Some(i) {
                Tier::Shield
            } else {
                Tier::Origin
            };
            let name = o.name.clone();
            origins.push(
                Pool::new(o.clone(), tier, metrics).with_context(|| {
                    format!("{}: origins[{i}] ({name})", config.source.display())
                })?,
            );
        }
        Ok(Routing {
            rules: RuleSet::new(config).context("compiling cache rules")?,
            origins,
            shield: config.shield.clone(),
            limits: Limits::new(&config.rate_limit).context("compiling rate limits")?,
            client_ip: config.client_ip.clone(),
            headers: config.headers.clone(),
        })
    }
}

/// What a reload did.
#[derive(Debug)]
pub struct Reloaded {
    /// Rules now in force.
    pub rules: usize,
    /// Origins now in force.
    pub origins: usize,
    /// Sections that changed but apply only after a restart.
    pub restart_required: Vec<&'static str>,
}

/// Shared state of one Outpost node.
pub struct Node {
    /// The configuration this node started with (listeners, tiers, admin: not reloadable).
    pub config: Arc<Config>,
    /// Rules and origins; each request takes one snapshot, a reload swaps them atomically.
    pub routing: ArcSwap<Routing>,
    /// Where the configuration came from, for reloads.
    source: Option<(std::path::PathBuf, Overrides)>,
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
    /// Rate-limit buckets (kept across reloads).
    pub buckets: Buckets,
    /// The fleet purge bus, when `[cluster]` is configured.
    pub cluster: Option<Cluster>,
    /// The access log.
    pub access_log: AccessLog,
    /// OpenTelemetry tracing, when `[tracing]` enables it.
    pub tracing: Option<Tracing>,
    /// When the node started.
    pub started: std::time::Instant,
    /// Certificates of the HTTPS listeners; `None` without any.
    pub tls: Option<Arc<Tls>>,
    /// The heaviest `host + path` keys of the recent traffic (`GET /top`).
    pub top_keys: TopKeys,
}

/// Pingora's cache lock, except that a fill abandoned for a reason of its own request (a
/// range request's 206 or 416, credentials, the request's no-store) lets the next waiting
/// request fetch and store the object (Pingora's default for custom reasons sends every waiter
/// to the origin uncached).
struct FillLock(CacheLock);

impl CacheKeyLock for FillLock {
    fn lock(&self, key: &CacheKey, stale_writer: bool) -> Locked {
        self.0.lock(key, stale_writer)
    }

    fn release(&self, key: &CacheKey, permit: WritePermit, reason: LockStatus) {
        self.0.release(key, permit, reason)
    }

    fn trace_lock_wait(&self, span: &mut Span, read_lock: &ReadLock, status: LockStatus) {
        self.0.trace_lock_wait(span, read_lock, status)
    }

    fn custom_lock_status(&self, reason: &'static str) -> LockStatus {
        if request_specific(reason) {
            LockStatus::TransientError
        } else {
            self.0.custom_lock_status(reason)
        }
    }
}

/// Request-specific reasons a response was not stored; the key may still be cacheable for
/// other requests, so the predictor must not remember them.
fn request_specific(reason: &'static str) -> bool {
    matches!(
        reason,
        "authorization" | "request-no-store" | PARTIAL | RANGE_ANSWER
    )
}

impl Node {
    /// Build the node for `config`. Call once per process: it leaks the storage.
    pub fn new(config: Config) -> anyhow::Result<Arc<Node>> {
        Self::with_source(config, None)
    }

    /// [`Node::new`], remembering the file and command-line overrides it came from so that
    /// [`Node::reload`] can read it again.
    pub fn with_source(
        config: Config,
        source: Option<(std::path::PathBuf, Overrides)>,
    ) -> anyhow::Result<Arc<Node>> {
        let cache = &config.cache;
        let metrics =
            Metrics::new(cache.memory_size, cache.disk_size).context("registering metrics")?;
        let routing = Routing::new(&config, &metrics)?;
        for rule in &config.rate_limit.rules {
            metrics.rate_limit_declared(&rule.name);
        }
        let memory: Option<&'static MemoryTier> = cache.tiers.memory().then(|| {
            &*Box::leak(Box::new(MemoryTier::with_metrics(
                cache.memory_size,
                cache.max_object_size,
                cache.stream_fills,
                Some(metrics.storage.memory.clone()),
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
        let storage: &'static TieredStorage = Box::leak(Box::new(
            TieredStorage::new(memory, disk, metrics.storage.clone())
                .with_parts(cache.partial_size),
        ));
        let cache_lock: &'static CacheKeyLockImpl = Box::leak(Box::new(FillLock(CacheLock::new(
            config.cache.lock_age_timeout,
        ))));
        let predictor: &'static Predictor<16> =
            Box::leak(Box::new(Predictor::new(4096, Some(request_specific))));
        let tls = match config.listen.https.is_empty() {
            true => None,
            false => Some(Arc::new(
                Tls::new(&config.tls, metrics.tls.clone()).context("loading TLS certificates")?,
            )),
        };
        let bans = if cache.tiers.disk() {
            let path = cache.dir.join("bans.jsonl");
            BanList::open(&path, config.purge.tag_headers.clone()).unwrap_or_else(|e| {
                tracing::error!(
                    file = %path.display(),
                    error = %e,
                    "cannot read or write the purge record: purges are kept in memory only"
                );
                BanList::in_memory(config.purge.tag_headers.clone())
            })
        } else {
            BanList::in_memory(config.purge.tag_headers.clone())
        };
        let cluster = config.cluster.as_ref().map(|c| {
            let outbox = cache
                .tiers
                .disk()
                .then(|| cache.dir.join("cluster-outbox.jsonl"));
            Cluster::new(c.clone(), &config.node.name, outbox, &metrics)
        });
        let access_log = AccessLog::start(&config.access_log, metrics.access_log_dropped.clone())
            .with_context(|| format!("{}", config.source.display()))?;
        let tracing = Tracing::start(&config.tracing)?;
        Ok(Arc::new(Node {
            tracing,
            access_log,
            cluster,
            tls,
            buckets: Buckets::new(config.rate_limit.max_keys),
            bans,
            started: std::time::Instant::now(),
            config: Arc::new(config),
            routing: ArcSwap::from_pointee(routing),
            source,
            storage,
            cache_lock,
            predictor,
            metrics,
            top_keys: TopKeys::default(),
        }))
    }

    /// Read the configuration file again and swap in its rules and origins, atomically:
    /// requests in flight finish with the rules they started with, and reload the TLS
    /// certificates (new handshakes get them). An invalid file changes nothing (the error
    /// names the file and key). Changes to other sections are reported as needing a restart.
    pub fn reload(&self) -> Result<Reloaded, String> {
        let Some((path, overrides)) = &self.source else {
            return Err("this node was not started from a configuration file".into());
        };
        let next = Config::load(path, overrides).map_err(|e| e.to_string())?;
        let routing = Routing::new(&next, &self.metrics).map_err(|e| format!("{e:#}"))?;
        let now = &self.config;
        let mut restart_required = Vec::new();
        for (section, changed) in [
            (
                "node",
                format!("{:?}", now.node) != format!("{:?}", next.node),
            ),
            (
                "listen",
                format!("{:?}", now.listen) != format!("{:?}", next.listen),
            ),
            (
                "admin",
                format!("{:?}", now.admin) != format!("{:?}", next.admin),
            ),
            (
                "metrics",
                format!("{:?}", now.metrics) != format!("{:?}", next.metrics),
            ),
            (
                "cache",
                format!("{:?}", now.cache) != format!("{:?}", next.cache),
            ),
            ("limits", now.limits != next.limits),
            ("access_log", now.access_log != next.access_log),
            ("tracing", now.tracing != next.tracing),
            (
                "cluster",
                format!("{:?}", now.cluster) != format!("{:?}", next.cluster),
            ),
            ("tls.h2", now.tls.h2 != next.tls.h2),
            (
                "tls.reload_check",
                now.tls.reload_check != next.tls.reload_check,
            ),
            (
                "rate_limit.max_keys",
                now.rate_limit.max_keys != next.rate_limit.max_keys,
            ),
        ] {
            if changed {
                restart_required.push(section);
            }
        }
        if let Some(tls) = &self.tls {
            // certificates reload with the configuration (their list may have changed)
            tls.reload(&next.tls.certificates, "configuration reloaded")
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let reloaded = Reloaded {
            rules: next.rules.len(),
            origins: routing.origins.len(),
            restart_required,
        };
        self.routing.store(Arc::new(routing));
        // after a log rotation, SIGHUP / reload makes the access log reopen its file
        self.access_log.reopen();
        tracing::info!(
            file = %path.display(),
            rules = reloaded.rules,
            origins = reloaded.origins,
            restart_required = ?reloaded.restart_required,
            "configuration reloaded"
        );
        Ok(reloaded)
    }

    /// Apply a purge on this node: record it (durably with a disk tier) and, for a hard URL
    /// purge (`url`: host, path, query), free the stored entry at once (its variants stay
    /// until looked up: the ban covers them).
    pub async fn apply_purge(
        &self,
        target: BanTarget,
        soft: bool,
        url: Option<&(String, String, Option<String>)>,
    ) -> (Ban, std::io::Result<()>) {
        let (ban, persisted) = self.bans.add(target, soft);
        if let (Some((host, path, query)), false) = (url, soft) {
            let routing = self.routing.load();
            let rules = &routing.rules;
            let rule = rules.get(rules.matching(&http::Method::GET, host, path));
            let key = crate::rules::key::cache_key(
                &rule.config.key,
                host,
                path,
                query.as_deref(),
                &http::HeaderMap::new(),
            );
            let span = pingora_cache::trace::Span::inactive().handle();
            let _ = pingora_cache::storage::Storage::purge(
                self.storage,
                pingora_cache::storage::PurgeTarget::Active(&key.to_compact()),
                pingora_cache::storage::PurgeType::Invalidation,
                &span,
            )
            .await;
        }
        (ban, persisted)
    }

    /// Refresh scrape-time gauges and render the metrics text.
    pub fn render_metrics(&self) -> Vec<u8> {
        self.metrics.purge.bans.set(self.bans.len() as i64);
        if let Some(memory) = self.storage.memory() {
            self.metrics.memory_objects.set(memory.objects() as i64);
            self.metrics.memory_bytes.set(memory.bytes() as i64);
        }
        if let Some(parts) = self.storage.parts() {
            self.metrics.partial_objects.set(parts.len() as i64);
            self.metrics.partial_bytes.set(parts.weight() as i64);
        }
        if let Some(cluster) = &self.cluster {
            cluster.refresh_gauges();
        }
        let open = crate::upstream::sockets::established_by_remote();
        for pool in &self.routing.load().origins {
            pool.refresh_gauges(&open);
        }
        if let Some(disk) = self.storage.disk() {
            self.metrics.disk_objects.set(disk.objects() as i64);
            self.metrics.disk_bytes.set(disk.bytes() as i64);
            self.metrics
                .disk_queued_bytes
                .set(i64::try_from(disk.queued_bytes()).unwrap_or(i64::MAX));
        }
        self.metrics.render()
    }
}
