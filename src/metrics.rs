//! Every Prometheus metric of Outpost, defined in one place, in one registry per node.
//!
//! Hot-path counters are resolved to concrete children at start-up so recording a request is
//! a few atomic adds, never a label lookup.

use crate::cache::status::LABELS;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets suited to a cache: 100 us to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

const STATUS_CLASSES: &[&str] = &["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Request method label values: the common methods, anything else as `other` (bounded).
pub const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];

/// Index of `method` in [`METHODS`].
pub fn method_index(method: &http::Method) -> usize {
    METHODS
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(METHODS.len() - 1)
}

/// Where the bytes of a response came from (label `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The memory tier.
    Memory,
    /// The disk tier.
    Disk,
    /// The origin (or a shield), passed through or while being stored.
    Upstream,
    /// The node itself (redirects, refusals, errors, 304s to conditional requests).
    Node,
}

impl Source {
    const ALL: [Source; 4] = [Source::Memory, Source::Disk, Source::Upstream, Source::Node];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Memory => "memory",
            Source::Disk => "disk",
            Source::Upstream => "origin",
            Source::Node => "node",
        }
    }
}

/// Where an exchange stood when its client went away (label `phase` of
/// `outpost_client_disconnects_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectPhase {
    /// An HTTP/2 connection closed before its preface (an unused preconnect).
    H2Preface,
    /// Part of a request header sent, then the connection closed.
    RequestHeader,
    /// While its request body was being read.
    RequestBody,
    /// Request received, response header not sent yet (waiting for the origin).
    ResponseHeader,
    /// While the response body was being sent.
    ResponseBody,
}

impl DisconnectPhase {
    const ALL: [DisconnectPhase; 5] = [
        DisconnectPhase::H2Preface,
        DisconnectPhase::RequestHeader,
        DisconnectPhase::RequestBody,
        DisconnectPhase::ResponseHeader,
        DisconnectPhase::ResponseBody,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectPhase::H2Preface => "h2_preface",
            DisconnectPhase::RequestHeader => "request_header",
            DisconnectPhase::RequestBody => "request_body",
            DisconnectPhase::ResponseHeader => "response_header",
            DisconnectPhase::ResponseBody => "response_body",
        }
    }
}

/// Clients that went away mid-exchange, by phase (routine: counted, logged at debug only).
#[derive(Clone)]
pub struct Disconnects {
    /// By [`DisconnectPhase`], in the order of `DisconnectPhase::ALL`.
    by_phase: Vec<IntCounter>,
}

impl Disconnects {
    /// Count one client gone in `phase`.
    pub fn count(&self, phase: DisconnectPhase) {
        if let Some(c) = self.by_phase.get(phase as usize) {
            c.inc();
        }
    }
}

/// Why an upstream fetch failed (label `kind` of `outpost_upstream_errors_total`).
pub const ERROR_KINDS: &[&str] = &["connect", "timeout", "tls", "reset", "protocol", "other"];

/// The `kind` of an upstream error type.
pub fn error_kind(e: &pingora_error::ErrorType) -> &'static str {
    use pingora_error::ErrorType::*;
    match e {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => "timeout",
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | BindError
        | SocketError => "connect",
        TLSHandshakeFailure | TLSWantX509Lookup | InvalidCert | HandshakeError => "tls",
        ConnectionClosed | ReadError | WriteError => "reset",
        InvalidHTTPHeader | H1Error | H2Error | H2Downgrade | InvalidH2 => "protocol",
        _ => "other",
    }
}

/// Status class index of a status code.
fn class(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

/// Metrics of one upstream server (an origin server or a shield), labelled by tier, pool
/// and server address.
#[derive(Clone)]
pub struct ServerMetrics {
    requests: Vec<IntCounter>,
    /// Time to the server's response header.
    pub latency: Histogram,
    /// Failed fetches, by kind (indexes of [`ERROR_KINDS`]).
    errors: Vec<IntCounter>,
    /// Times it was taken out of rotation after failures (passive health).
    pub ejections: IntCounter,
    /// 1 while it takes requests (health check passing, not ejected), else 0 (set at scrape).
    pub healthy: IntGauge,
    /// Open connections to it (set at scrape).
    pub connections: IntGauge,
}

impl ServerMetrics {
    /// Count one failed fetch of `kind` (one of [`ERROR_KINDS`]).
    pub fn error(&self, kind: &str) {
        let i = ERROR_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(ERROR_KINDS.len() - 1);
        self.errors[i].inc();
    }

    /// Count one response.
    pub fn record(&self, status: u16, seconds: f64) {
        self.requests[class(status)].inc();
        self.latency.observe(seconds);
    }
}

/// The labelled families [`ServerMetrics`] are taken from.
struct UpstreamFamilies {
    requests: IntCounterVec,
    latency: HistogramVec,
    errors: IntCounterVec,
    ejections: IntCounterVec,
    healthy: IntGaugeVec,
    connections: IntGaugeVec,
    retries: IntCounterVec,
}

/// Per-tier counters, one per tier.
#[derive(Clone)]
pub struct TierMetrics {
    /// Lookups this tier answered.
    pub hits: IntCounter,
    /// Lookups this tier could not answer.
    pub misses: IntCounter,
    /// Objects this tier dropped to stay within its capacity.
    pub evictions: IntCounter,
    /// Objects this tier did not take: larger than its objects may be, or (disk) the
    /// write-behind queue full.
    pub rejected: IntCounter,
}

/// Counters the storage tiers record into (clones of registered metrics).
#[derive(Clone)]
pub struct StorageMetrics {
    /// The memory tier's counters.
    pub memory: TierMetrics,
    /// The disk tier's counters.
    pub disk: TierMetrics,
    /// Disk hits copied into the memory tier.
    pub promotions: IntCounter,
    /// Failed disk writes (disk full, permissions, directory gone).
    pub disk_write_errors: IntCounter,
    /// Failed disk reads other than "not there".
    pub disk_read_errors: IntCounter,
    /// Disk entries found corrupt or truncated on read, dropped and refetched.
    pub disk_corrupt: IntCounter,
    /// Disk writes skipped because the write-behind queue was full.
    pub disk_writes_dropped: IntCounter,
}

/// Why a stale response was served (label `reason` of `outpost_cache_stale_served_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// Within its stale-while-revalidate window, while one request revalidates it.
    WhileRevalidate,
    /// The origin failed (stale-if-error).
    IfError,
    /// The client's `max-stale` accepted it.
    MaxStale,
    /// The origin could not be reached and nothing forbade stale use (RFC 9111 4.2.4).
    Disconnected,
}

/// How a revalidation with the origin ended (label `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevalidationOutcome {
    /// 304: the stored response was freshened, its body kept.
    NotModified,
    /// A full response replaced (or removed) the stored one.
    Replaced,
    /// The origin failed or answered 5xx.
    Error,
}

/// Revalidation, stale and negative-cache counters.
pub struct StaleMetrics {
    stale: [IntCounter; 4],
    revalidations: [IntCounter; 3],
    /// Hits on stored 404/410/5xx responses.
    pub negative_hits: IntCounter,
}

impl StaleMetrics {
    /// Count a stale response served.
    pub fn stale_served(&self, reason: StaleReason) {
        self.stale[reason as usize].inc();
    }

    /// Count a finished revalidation.
    pub fn revalidated(&self, outcome: RevalidationOutcome) {
        self.revalidations[outcome as usize].inc();
    }
}

/// Purge counters.
pub struct PurgeMetrics {
    /// Purges accepted, by target type and mode.
    pub purges: IntCounterVec,
    /// Time to record and apply a purge (admin request handling).
    pub duration: Histogram,
    /// Bans in force (set at scrape).
    pub bans: IntGauge,
    /// Lookups that found a stored object purged (hard: refetched) or soft-purged (revalidated).
    pub purged_lookups: IntCounter,
    /// Admin calls refused for a missing or wrong token.
    pub unauthorized: IntCounter,
    /// Stored objects the background purge pass removed or made stale, by action.
    pub swept: IntCounterVec,
    /// Purges (bans) retired after a pass applied them to every stored object.
    pub retired: IntCounter,
}

/// Fleet purge bus metrics.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// Purges waiting to be published (NATS unreachable).
    pub outbox: IntGauge,
    /// Purges this node published to the stream.
    pub published: IntCounter,
    /// Purges from other nodes applied here.
    pub applied: IntCounter,
    /// Time from a purge's publication to its application here.
    pub delay: Histogram,
    /// 1 once the node caught up with the stream after its start.
    pub synced: IntGauge,
    /// 1 while connected to NATS.
    pub connected: IntGauge,
    /// Seconds since the node last knew it had every purge (set at scrape).
    pub lag: prometheus::Gauge,
}

impl ClusterMetrics {
    fn new(registry: &Registry) -> prometheus::Result<ClusterMetrics> {
        let m = ClusterMetrics {
            outbox: IntGauge::new(
                "outpost_cluster_outbox_purges",
                "Purges issued here waiting to be published to the fleet (NATS unreachable)",
            )?,
            published: IntCounter::new(
                "outpost_cluster_purges_published_total",
                "Purges issued here and published to the fleet's stream",
            )?,
            applied: IntCounter::new(
                "outpost_cluster_purges_applied_total",
                "Purges issued on other nodes and applied here",
            )?,
            delay: Histogram::with_opts(
                HistogramOpts::new(
                    "outpost_cluster_purge_delay_seconds",
                    "Time from a purge's publication (on another node) to its application here",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            synced: IntGauge::new(
                "outpost_cluster_synced",
                "1 once this node has caught up with the purge stream since it started",
            )?,
            connected: IntGauge::new("outpost_cluster_connected", "1 while connected to NATS")?,
            lag: prometheus::Gauge::new(
                "outpost_cluster_lag_seconds",
                "Seconds since this node last knew it had every purge of the stream",
            )?,
        };
        registry.register(Box::new(m.outbox.clone()))?;
        registry.register(Box::new(m.published.clone()))?;
        registry.register(Box::new(m.applied.clone()))?;
        registry.register(Box::new(m.delay.clone()))?;
        registry.register(Box::new(m.synced.clone()))?;
        registry.register(Box::new(m.connected.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        Ok(m)
    }
}

/// Traffic policy counters.
pub struct PolicyMetrics {
    /// Requests refused by a rate limit, by limit name.
    pub rate_limited: IntCounterVec,
    /// Requests and connections refused by the hardening limits, by reason.
    pub rejected: IntCounterVec,
    /// Idle keep-alive client connections the node closed, by reason (`header_timeout`, or
    /// `max_connections`: to admit a new connection).
    pub idle_closed: IntCounterVec,
    /// Responses this node compressed (each once, before storing), by encoding.
    pub compressed: IntCounterVec,
    /// Bytes of those responses as the origin sent them (when it said), by encoding.
    pub compression_in: IntCounterVec,
    /// Bytes of those responses once encoded, by encoding.
    pub compression_out: IntCounterVec,
}

impl PolicyMetrics {
    /// Count a response compressed into `encoding`.
    pub fn compressed(&self, encoding: &str) {
        self.compressed.with_label_values(&[encoding]).inc();
    }

    /// Count `out` encoded bytes of a response compressed into `encoding`; at its end, the
    /// origin's length `origin_len` if it was known.
    pub fn compression_bytes(&self, encoding: &str, out: u64, origin_len: Option<u64>) {
        self.compression_out
            .with_label_values(&[encoding])
            .inc_by(out);
        if let Some(n) = origin_len {
            self.compression_in.with_label_values(&[encoding]).inc_by(n);
        }
    }
}

/// TLS certificate metrics.
#[derive(Clone)]
pub struct TlsMetrics {
    /// Certificate reloads (files changed, configuration reloaded), by outcome (`ok`, `error`).
    pub reloads: IntCounterVec,
    /// Seconds until each served certificate's notAfter (negative once expired), by name;
    /// set whenever the certificates are loaded.
    pub expiry: IntGaugeVec,
}

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    /// By cache status, method and status class (see `request_index`).
    requests: Vec<IntCounter>,
    latency: Vec<Histogram>,
    first_byte: Vec<Histogram>,
    bytes: Vec<IntCounter>,
    /// Requests that waited behind another request's fill of the same key (coalescing).
    pub lock_wait: Histogram,
    /// Requests that gave up waiting (lock_wait_timeout) and went to the origin uncached.
    pub lock_timeouts: IntCounter,
    /// Access log lines dropped because the writer was behind.
    pub access_log_dropped: IntCounter,
    upstream: UpstreamFamilies,
    /// Requests sent to the origin directly because no shield could be reached.
    pub shield_bypassed: IntCounter,
    /// Hits answered by the lean hit path (`crate::lean`), a part of the hits counted.
    pub lean_hits: IntCounter,
    /// Requests forwarded by the lean pass path (`crate::lean`), a part of those counted.
    pub lean_passes: IntCounter,
    /// Memory tier objects (set at scrape).
    pub memory_objects: IntGauge,
    /// Memory tier weighted bytes (set at scrape).
    pub memory_bytes: IntGauge,
    /// Memory tier capacity.
    pub memory_capacity: IntGauge,
    /// Objects with parts held from 206 responses (set at scrape).
    pub partial_objects: IntGauge,
    /// Bytes of those parts, as counted against `cache.partial_size` (set at scrape).
    pub partial_bytes: IntGauge,
    /// Unsafe-method invalidations performed.
    pub invalidations: IntCounter,
    /// Disk tier objects (set at scrape).
    pub disk_objects: IntGauge,
    /// Disk tier bytes: the disk its files take (set at scrape).
    pub disk_bytes: IntGauge,
    /// Bytes of objects queued for the disk writer (set at scrape).
    pub disk_queued_bytes: IntGauge,
    /// Disk tier capacity.
    pub disk_capacity: IntGauge,
    /// Counters the storage tiers record into.
    pub storage: StorageMetrics,
    /// Revalidations, stale responses served, negative-cache hits.
    pub stale: StaleMetrics,
    /// Purges.
    pub purge: PurgeMetrics,
    /// Traffic policy.
    pub policy: PolicyMetrics,
    /// The fleet purge bus (registered for every node; zero without `[cluster]`).
    pub cluster: ClusterMetrics,
    /// TLS certificates.
    pub tls: TlsMetrics,
    /// Clients that went away mid-exchange.
    pub disconnects: Disconnects,
}

impl Metrics {
    /// Register every metric for a node with these tier capacities.
    pub fn new(
        memory_capacity_bytes: u64,
        disk_capacity_bytes: u64,
    ) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests_vec = IntCounterVec::new(
            Opts::new(
                "outpost_requests_total",
                "Client requests by cache status, method and response status class",
            ),
            &["cache_status", "method", "status_class"],
        )?;
        let first_byte_vec = HistogramVec::new(
            HistogramOpts::new(
                "outpost_response_first_byte_seconds",
                "Time from request start to the response header being sent, by cache status",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["cache_status"],
        )?;
        let bytes_vec = IntCounterVec::new(
            Opts::new(
                "outpost_response_bytes_total",
                "Response body bytes sent to clients, by source (memory, disk, origin, node)",
            ),
            &["source"],
        )?;
        let lock_wait = Histogram::with_opts(
            HistogramOpts::new(
                "outpost_cache_lock_wait_seconds",
                "Time requests waited behind another request's fill of the same key",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let lock_timeouts = IntCounter::new(
            "outpost_cache_lock_timeouts_total",
            "Requests that stopped waiting for a fill (cache.lock_wait_timeout) and went to the origin uncached",
        )?;
        let latency_vec = HistogramVec::new(
            HistogramOpts::new(
                "outpost_request_duration_seconds",
                "Time from request start to the end of the response, by cache status",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["cache_status"],
        )?;
        let labels = &["tier", "pool", "server"];
        let upstream = UpstreamFamilies {
            requests: IntCounterVec::new(
                Opts::new(
                    "outpost_upstream_requests_total",
                    "Upstream responses by tier (origin, shield), pool, server and status class",
                ),
                &["tier", "pool", "server", "status_class"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "outpost_upstream_request_duration_seconds",
                    "Time to the upstream server's response header",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "outpost_upstream_errors_total",
                    "Upstream fetches that failed, by kind (connect, timeout, tls, reset, protocol, other)",
                ),
                &["tier", "pool", "server", "kind"],
            )?,
            ejections: IntCounterVec::new(
                Opts::new(
                    "outpost_upstream_ejections_total",
                    "Times a server was taken out of rotation after failures (max_fails)",
                ),
                labels,
            )?,
            healthy: IntGaugeVec::new(
                Opts::new(
                    "outpost_upstream_healthy",
                    "1 while the server takes requests (health check passing, not ejected)",
                ),
                labels,
            )?,
            connections: IntGaugeVec::new(
                Opts::new(
                    "outpost_upstream_open_connections",
                    "Open TCP connections to the server",
                ),
                labels,
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "outpost_upstream_retries_total",
                    "Requests retried on another server of the pool",
                ),
                &["tier", "pool"],
            )?,
        };
        let lean_hits = IntCounter::new(
            "outpost_lean_hits_total",
            "Hits answered by the lean hit path below Pingora's session (a part of the hits in outpost_requests_total)",
        )?;
        let lean_passes = IntCounter::new(
            "outpost_lean_passes_total",
            "Requests predicted uncacheable forwarded by the lean path below Pingora's session (a part of outpost_requests_total)",
        )?;
        let shield_bypassed = IntCounter::new(
            "outpost_shield_bypassed_total",
            "Requests sent to the origin directly because no shield could be reached",
        )?;
        let memory_objects =
            IntGauge::new("outpost_cache_memory_objects", "Objects in the memory tier")?;
        let memory_bytes = IntGauge::new(
            "outpost_cache_memory_bytes",
            "Bytes used by the memory tier (bodies, headers, overhead)",
        )?;
        let memory_capacity = IntGauge::new(
            "outpost_cache_memory_capacity_bytes",
            "Configured memory tier capacity",
        )?;
        let partial_objects = IntGauge::new(
            "outpost_cache_partial_objects",
            "Objects with parts held from 206 responses (partial content)",
        )?;
        let partial_bytes = IntGauge::new(
            "outpost_cache_partial_bytes",
            "Bytes of parts held from 206 responses, as counted against cache.partial_size",
        )?;
        let invalidations = IntCounter::new(
            "outpost_cache_invalidations_total",
            "Stored responses invalidated by unsafe requests (RFC 9111 4.4)",
        )?;
        let tier_hits = IntCounterVec::new(
            Opts::new("outpost_cache_tier_hits_total", "Lookups answered, by tier"),
            &["tier"],
        )?;
        let tier_misses = IntCounterVec::new(
            Opts::new(
                "outpost_cache_tier_misses_total",
                "Lookups a tier could not answer, by tier",
            ),
            &["tier"],
        )?;
        let evictions = IntCounterVec::new(
            Opts::new(
                "outpost_cache_evictions_total",
                "Objects dropped to stay within capacity, by tier",
            ),
            &["tier"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "outpost_cache_admissions_rejected_total",
                "Objects a tier did not store: too large for it, or (disk) its write queue full",
            ),
            &["tier"],
        )?;
        registry.register(Box::new(rejected.clone()))?;
        let promotions = IntCounter::new(
            "outpost_cache_promotions_total",
            "Disk hits copied into the memory tier",
        )?;
        let disk_write_errors = IntCounter::new(
            "outpost_cache_disk_write_errors_total",
            "Disk tier writes that failed (disk full, permissions, directory gone)",
        )?;
        let disk_read_errors = IntCounter::new(
            "outpost_cache_disk_read_errors_total",
            "Disk tier reads that failed for a reason other than a missing entry",
        )?;
        let disk_corrupt = IntCounter::new(
            "outpost_cache_disk_corrupt_total",
            "Disk entries found corrupt or truncated on read: dropped and refetched",
        )?;
        let disk_writes_dropped = IntCounter::new(
            "outpost_cache_disk_writes_dropped_total",
            "Disk writes skipped because the write-behind queue was full",
        )?;
        let disk_objects = IntGauge::new("outpost_cache_disk_objects", "Objects in the disk tier")?;
        let disk_bytes = IntGauge::new(
            "outpost_cache_disk_bytes",
            "Bytes of disk the disk tier's files (heads and bodies) take, in whole filesystem blocks",
        )?;
        let disk_queued_bytes = IntGauge::new(
            "outpost_cache_disk_write_queue_bytes",
            "Bytes of objects queued to be written to the disk tier",
        )?;
        let disk_capacity = IntGauge::new(
            "outpost_cache_disk_capacity_bytes",
            "Configured disk tier capacity",
        )?;
        let stale_served = IntCounterVec::new(
            Opts::new(
                "outpost_cache_stale_served_total",
                "Stale responses served, by reason (while-revalidate, if-error, max-stale, disconnected)",
            ),
            &["reason"],
        )?;
        let revalidations = IntCounterVec::new(
            Opts::new(
                "outpost_cache_revalidations_total",
                "Revalidations of stored responses with the origin, by outcome \
                 (not-modified, replaced, error)",
            ),
            &["outcome"],
        )?;
        let negative_hits = IntCounter::new(
            "outpost_cache_negative_hits_total",
            "Hits on stored 404, 410 and 5xx responses",
        )?;
        let stale = StaleMetrics {
            stale: ["while-revalidate", "if-error", "max-stale", "disconnected"]
                .map(|r| stale_served.with_label_values(&[r])),
            revalidations: ["not-modified", "replaced", "error"]
                .map(|o| revalidations.with_label_values(&[o])),
            negative_hits: negative_hits.clone(),
        };
        let purge = PurgeMetrics {
            purges: IntCounterVec::new(
                Opts::new(
                    "outpost_purges_total",
                    "Purges accepted, by target type and mode",
                ),
                &["type", "mode"],
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "outpost_purge_duration_seconds",
                    "Time to record (synced to disk) and apply a purge",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            bans: IntGauge::new("outpost_purge_bans", "Purges (bans) in force")?,
            purged_lookups: IntCounter::new(
                "outpost_purge_matched_lookups_total",
                "Lookups that found a stored object covered by a purge",
            )?,
            unauthorized: IntCounter::new(
                "outpost_admin_unauthorized_total",
                "Admin calls refused for a missing or wrong bearer token",
            )?,
            swept: IntCounterVec::new(
                Opts::new(
                    "outpost_purge_swept_objects_total",
                    "Stored objects the background purge pass removed or made stale",
                ),
                &["action"],
            )?,
            retired: IntCounter::new(
                "outpost_purge_bans_retired_total",
                "Purges retired after the background pass applied them to every stored object",
            )?,
        };
        for kind in ["url", "prefix", "tags", "all"] {
            for mode in ["hard", "soft"] {
                purge.purges.with_label_values(&[kind, mode]);
            }
        }
        for c in [
            Box::new(purge.purges.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(purge.duration.clone()),
            Box::new(purge.bans.clone()),
            Box::new(purge.purged_lookups.clone()),
            Box::new(purge.unauthorized.clone()),
            Box::new(purge.swept.clone()),
            Box::new(purge.retired.clone()),
            Box::new(stale_served),
            Box::new(revalidations),
            Box::new(negative_hits),
            Box::new(tier_hits.clone()),
            Box::new(tier_misses.clone()),
            Box::new(evictions.clone()),
            Box::new(promotions.clone()),
            Box::new(disk_write_errors.clone()),
            Box::new(disk_read_errors.clone()),
            Box::new(disk_corrupt.clone()),
            Box::new(disk_writes_dropped.clone()),
            Box::new(disk_objects.clone()),
            Box::new(disk_bytes.clone()),
            Box::new(disk_queued_bytes.clone()),
            Box::new(disk_capacity.clone()),
        ] {
            registry.register(c)?;
        }
        disk_capacity.set(i64::try_from(disk_capacity_bytes).unwrap_or(i64::MAX));
        let tier = |name: &str| TierMetrics {
            hits: tier_hits.with_label_values(&[name]),
            misses: tier_misses.with_label_values(&[name]),
            evictions: evictions.with_label_values(&[name]),
            rejected: rejected.with_label_values(&[name]),
        };
        let storage = StorageMetrics {
            memory: tier("memory"),
            disk: tier("disk"),
            promotions,
            disk_write_errors,
            disk_read_errors,
            disk_corrupt,
            disk_writes_dropped,
        };
        registry.register(Box::new(requests_vec.clone()))?;
        registry.register(Box::new(latency_vec.clone()))?;
        registry.register(Box::new(first_byte_vec.clone()))?;
        registry.register(Box::new(bytes_vec.clone()))?;
        registry.register(Box::new(lock_wait.clone()))?;
        registry.register(Box::new(lock_timeouts.clone()))?;
        let access_log_dropped = IntCounter::new(
            "outpost_access_log_dropped_total",
            "Access log lines dropped because the writer (disk, pipe) was behind",
        )?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        registry.register(Box::new(upstream.requests.clone()))?;
        registry.register(Box::new(upstream.latency.clone()))?;
        registry.register(Box::new(upstream.errors.clone()))?;
        registry.register(Box::new(upstream.ejections.clone()))?;
        registry.register(Box::new(upstream.healthy.clone()))?;
        registry.register(Box::new(upstream.connections.clone()))?;
        registry.register(Box::new(upstream.retries.clone()))?;
        registry.register(Box::new(shield_bypassed.clone()))?;
        registry.register(Box::new(lean_hits.clone()))?;
        registry.register(Box::new(lean_passes.clone()))?;
        registry.register(Box::new(memory_objects.clone()))?;
        registry.register(Box::new(memory_bytes.clone()))?;
        registry.register(Box::new(memory_capacity.clone()))?;
        registry.register(Box::new(partial_objects.clone()))?;
        registry.register(Box::new(partial_bytes.clone()))?;
        registry.register(Box::new(invalidations.clone()))?;
        memory_capacity.set(i64::try_from(memory_capacity_bytes).unwrap_or(i64::MAX));
        let mut requests = Vec::new();
        let mut latency = Vec::new();
        let mut first_byte = Vec::new();
        for label in LABELS {
            for m in METHODS {
                for c in STATUS_CLASSES {
                    requests.push(requests_vec.with_label_values(&[label, m, c]));
                }
            }
            latency.push(latency_vec.with_label_values(&[label]));
            first_byte.push(first_byte_vec.with_label_values(&[label]));
        }
        let bytes = Source::ALL
            .iter()
            .map(|s| bytes_vec.with_label_values(&[s.as_str()]))
            .collect();

        let policy = PolicyMetrics {
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "outpost_rate_limited_total",
                    "Requests refused (429) by a rate limit, by limit name",
                ),
                &["limit"],
            )?,
            compressed: IntCounterVec::new(
                Opts::new(
                    "outpost_compressed_responses_total",
                    "Responses this node compressed before storing them (hits are never recompressed), by encoding",
                ),
                &["encoding"],
            )?,
            compression_in: IntCounterVec::new(
                Opts::new(
                    "outpost_compression_bytes_in_total",
                    "Bytes of compressed responses as the origin sent them (when it gave a length), by encoding",
                ),
                &["encoding"],
            )?,
            compression_out: IntCounterVec::new(
                Opts::new(
                    "outpost_compression_bytes_out_total",
                    "Bytes of compressed responses once encoded, by encoding",
                ),
                &["encoding"],
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "outpost_rejected_requests_total",
                    "Requests (and connections) refused as malformed, oversized or too slow, by reason",
                ),
                &["reason"],
            )?,
            idle_closed: IntCounterVec::new(
                Opts::new(
                    "outpost_idle_connections_closed_total",
                    "Idle keep-alive client connections closed, by reason (header_timeout, or max_connections to admit a new one)",
                ),
                &["reason"],
            )?,
        };
        registry.register(Box::new(policy.rate_limited.clone()))?;
        for reason in ["header_timeout", "max_connections"] {
            policy.idle_closed.with_label_values(&[reason]);
        }
        registry.register(Box::new(policy.idle_closed.clone()))?;
        for reason in crate::policy::hardening::Rejection::ALL
            .iter()
            .map(|r| r.reason())
            .chain(["header_timeout", "max_connections"])
        {
            policy.rejected.with_label_values(&[reason]);
        }
        registry.register(Box::new(policy.rejected.clone()))?;
        for c in [
            &policy.compressed,
            &policy.compression_in,
            &policy.compression_out,
        ] {
            for encoding in ["br", "zstd", "gzip"] {
                c.with_label_values(&[encoding]);
            }
            registry.register(Box::new(c.clone()))?;
        }
        let tls = TlsMetrics {
            reloads: IntCounterVec::new(
                Opts::new(
                    "outpost_tls_reloads_total",
                    "TLS certificate reloads (files changed, configuration reloaded), by outcome; \
                     on error the previous certificates stay in service",
                ),
                &["outcome"],
            )?,
            expiry: IntGaugeVec::new(
                Opts::new(
                    "outpost_tls_certificate_expiry_seconds",
                    "Seconds until a served certificate's notAfter (negative once expired), \
                     by its first name; set when certificates are loaded",
                ),
                &["name"],
            )?,
        };
        for outcome in ["ok", "error"] {
            tls.reloads.with_label_values(&[outcome]);
        }
        registry.register(Box::new(tls.reloads.clone()))?;
        registry.register(Box::new(tls.expiry.clone()))?;
        let disconnects_vec = IntCounterVec::new(
            Opts::new(
                "outpost_client_disconnects_total",
                "Clients that closed the connection (or reset the HTTP/2 stream) mid-exchange, \
                 by phase (h2_preface, request_header, request_body, response_header, response_body)",
            ),
            &["phase"],
        )?;
        let disconnects = Disconnects {
            by_phase: DisconnectPhase::ALL
                .iter()
                .map(|p| disconnects_vec.with_label_values(&[p.as_str()]))
                .collect(),
        };
        registry.register(Box::new(disconnects_vec))?;
        let cluster = ClusterMetrics::new(&registry)?;
        Ok(Metrics {
            disconnects,
            first_byte,
            bytes,
            lock_wait,
            lock_timeouts,
            access_log_dropped,
            cluster,
            tls,
            policy,
            registry,
            requests,
            latency,
            upstream,
            shield_bypassed,
            lean_hits,
            lean_passes,
            memory_objects,
            memory_bytes,
            memory_capacity,
            partial_objects,
            partial_bytes,
            invalidations,
            disk_objects,
            disk_queued_bytes,
            disk_bytes,
            disk_capacity,
            storage,
            stale,
            purge,
        })
    }

    /// The metrics of server `server` of pool `pool` in `tier` (created on first use: pools
    /// added by a reload get theirs at once).
    pub fn server(&self, tier: &str, pool: &str, server: &str) -> ServerMetrics {
        let u = &self.upstream;
        let l = [tier, pool, server];
        ServerMetrics {
            requests: STATUS_CLASSES
                .iter()
                .map(|c| u.requests.with_label_values(&[tier, pool, server, c]))
                .collect(),
            latency: u.latency.with_label_values(&l),
            errors: ERROR_KINDS
                .iter()
                .map(|k| u.errors.with_label_values(&[tier, pool, server, k]))
                .collect(),
            ejections: u.ejections.with_label_values(&l),
            healthy: u.healthy.with_label_values(&l),
            connections: u.connections.with_label_values(&l),
        }
    }

    /// Create the series of rate limit `name` (so it is exposed at zero before it refuses).
    pub fn rate_limit_declared(&self, name: &str) {
        self.policy.rate_limited.with_label_values(&[name]);
    }

    /// The retry counter of pool `pool` in `tier`.
    pub fn upstream_retries(&self, tier: &str, pool: &str) -> IntCounter {
        self.upstream.retries.with_label_values(&[tier, pool])
    }

    /// Record one finished client request.
    pub fn record_request(&self, r: &Finished) {
        if let Some(h) = self.latency.get(r.label) {
            h.observe(r.seconds);
        }
        if let Some(h) = self.first_byte.get(r.label) {
            h.observe(r.first_byte_seconds);
        }
        let i = (r.label * METHODS.len() + r.method) * STATUS_CLASSES.len() + class(r.status);
        if let Some(c) = self.requests.get(i) {
            c.inc();
        }
        if r.body_bytes > 0 {
            if let Some(c) = self.bytes.get(r.source as usize) {
                c.inc_by(r.body_bytes);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// One finished client request, as [`Metrics::record_request`] counts it.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// Index of its cache status label ([`label_index`]).
    pub label: usize,
    /// Index of its method ([`method_index`]).
    pub method: usize,
    /// The response status (0: none sent).
    pub status: u16,
    /// Seconds from the start to the end of the response.
    pub seconds: f64,
    /// Seconds from the start to the response header.
    pub first_byte_seconds: f64,
    /// Body bytes sent.
    pub body_bytes: u64,
    /// Where they came from.
    pub source: Source,
}

/// Index of a cache status label in [`LABELS`].
pub fn label_index(label: &str) -> usize {
    LABELS.iter().position(|l| *l == label).unwrap_or(0)
}

/// This process's resident set size in bytes (`VmRSS`), if the platform reports it.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}
