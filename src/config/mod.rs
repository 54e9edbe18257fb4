//! Configuration: the TOML file ([`mod@file`]) is parsed, overridden from the command line and
//! validated into the typed, immutable [`Config`] the rest of Outpost uses.

mod cluster;
mod describe;
mod error;
pub mod file;
mod observe;
mod rule;
pub mod tls;
pub mod traffic;
mod units;
pub mod upstream;
mod validate;

pub use error::{ConfigError, FieldError};
pub use tls::{CertificateConfig, TlsConfig};
pub use traffic::{
    ClientIpConfig, CompressionConfig, Encoding, ForwardedHeader, HeaderPolicy, HeaderRules,
    LimitKey, LimitRule, LimitsConfig, PassForwarding, RateLimitConfig,
};
pub use units::{parse_duration, parse_size};
pub use upstream::{
    Balance, HealthCheckConfig, OriginConfig, OriginTls, ServerConfig, ShieldConfig,
};

use http::{HeaderName, Method};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The validated configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from (for messages).
    pub source: PathBuf,
    /// Identity and process settings.
    pub node: NodeConfig,
    /// Public listeners.
    pub listen: ListenConfig,
    /// Admin API.
    pub admin: AdminConfig,
    /// Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Storage tiers and coalescing.
    pub cache: CacheConfig,
    /// Upstream origins; never empty, the first is the default.
    pub origins: Vec<OriginConfig>,
    /// Ordered cache rules; first match wins.
    pub rules: Vec<RuleConfig>,
    /// Purge tags.
    pub purge: PurgeConfig,
    /// How the client's address is found behind proxies.
    pub client_ip: ClientIpConfig,
    /// Request rate limits.
    pub rate_limit: RateLimitConfig,
    /// Header rules for every request to the origin and response to a client (before the
    /// matching rule's own).
    pub headers: HeaderPolicy,
    /// Request hardening.
    pub limits: LimitsConfig,
    /// Response compression.
    pub compression: CompressionConfig,
    /// The parent (shield) tier.
    pub shield: ShieldConfig,
    /// The fleet purge bus; `None`: purges stay on this node.
    pub cluster: Option<ClusterConfig>,
    /// The access log.
    pub access_log: AccessLogConfig,
    /// OpenTelemetry tracing.
    pub tracing: TracingConfig,
    /// Certificates of the HTTPS listeners.
    pub tls: TlsConfig,
}

/// `[tracing]`: OpenTelemetry spans of requests, exported over OTLP/HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// Export spans (off: no span is made and `traceparent` passes through untouched).
    pub enabled: bool,
    /// The collector's OTLP/HTTP traces endpoint.
    pub endpoint: String,
    /// Protobuf (`http/protobuf`, the OTLP default) or JSON (`http/json`) bodies.
    pub json: bool,
    /// Fraction of traces this node starts that are sampled (a request carrying a
    /// `traceparent` follows its sampled flag).
    pub sample: f64,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Timeout of one export request.
    pub timeout: Duration,
}

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// The NCSA combined format (Apache / nginx `combined`) plus cache status, source, request
    /// id and times.
    Combined,
}

/// `[access_log]`: one line per request, written off the request path.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    /// Write access log lines at all.
    pub enabled: bool,
    /// The file appended to; `None`: standard output.
    pub path: Option<PathBuf>,
    /// Line format.
    pub format: AccessLogFormat,
    /// Fraction of requests logged; responses with a 5xx status or none are always logged.
    pub sample: f64,
    /// Lines waiting for the writer at most; beyond, lines are dropped and counted.
    pub buffer: usize,
    /// Request header carrying a request id (kept when a client sends a sane one, else made
    /// here), passed to the origin and returned to the client; `None`: no request ids.
    pub request_id_header: Option<HeaderName>,
}

/// `[cluster]`: purges issued on any node reach every node through a NATS JetStream stream.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The NATS server (`nats://host:port`).
    pub nats_url: String,
    /// The JetStream stream of purges (created if missing); its subject is `<stream>.purge`.
    pub stream: String,
    /// Environment variable holding the NATS token, if the server wants one.
    pub token_env: Option<String>,
    /// How long the stream keeps purges: a node away longer misses older ones.
    pub retention: Duration,
    /// While this node has not caught up with the stream for longer than this (NATS
    /// unreachable), objects it confirmed before it last caught up are revalidated before
    /// they are served. Zero: never.
    pub max_lag: Duration,
    /// Until the node has caught up after a start, objects stored before the start are
    /// revalidated (`true`) or served as they are (`false`).
    pub revalidate_until_synced: bool,
}

impl ClusterConfig {
    /// The subject purges are published on.
    pub fn subject(&self) -> String {
        format!("{}.purge", self.stream)
    }
}

/// How stored objects are tagged for purges.
#[derive(Debug, Clone)]
pub struct PurgeConfig {
    /// Response header fields whose values (separated by spaces or commas) are an object's tags.
    pub tag_headers: Vec<HeaderName>,
    /// Remove those fields from client responses (they stay in the stored copy).
    pub strip_tag_headers: bool,
    /// How often the background pass that applies purges to stored objects (removing or
    /// marking them stale) and then retires them runs, while purges are in force.
    pub lurker_interval: Duration,
}

/// `[node]`.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Cache name in `Cache-Status` and pseudonym in `Via`.
    pub name: String,
    /// Proxy worker threads (resolved: never 0).
    pub threads: usize,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// One work-stealing runtime for all workers (`true`) or one single-threaded runtime per
    /// worker, each connection staying on its thread like an nginx worker (`false`).
    pub work_stealing: bool,
    /// Add `Via: <version> <name>` to requests sent to origins and responses sent to clients
    /// (RFC 9110 7.6.3).
    pub via: bool,
    /// Answer the common fresh hit (HTTP/1.1 GET or HEAD without range or
    /// conditional fields) from the connection layer, below Pingora's proxy session
    /// (`crate::lean`); everything else, and every request when false, takes the full path.
    pub lean_hits: bool,
    /// Idle upstream connections kept for reuse, across all origins (Pingora's
    /// `upstream_keepalive_pool_size`).
    pub upstream_keepalive_pool: usize,
    /// The Unix socket a new process started with `outpost run --upgrade` listens on for the
    /// running process's listening sockets (Pingora's `upgrade_sock`); default
    /// `<cache.dir>/upgrade.sock`. Both processes must agree on it.
    pub upgrade_sock: PathBuf,
}

/// `[listen]`.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// Plain HTTP listen addresses.
    pub http: Vec<SocketAddr>,
    /// HTTPS listen addresses (TLS 1.2 and 1.3, certificates from [`Config::tls`]).
    pub https: Vec<SocketAddr>,
}

impl ListenConfig {
    /// The port an HTTP -> HTTPS redirect points to: the first HTTPS listener's.
    pub fn https_port(&self) -> Option<u16> {
        self.https.first().map(|a| a.port())
    }
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Admin listen address.
    pub listen: SocketAddr,
    /// Bearer token; `None` means admin calls other than health checks are refused.
    pub token: Option<Secret>,
    /// `GET /readyz` answers ready while the disk tier's directory is still being recovered
    /// (the node serves meanwhile: disk lookups wait for their part of it, up to 1 s). Default
    /// false: ready once the listeners are up and the disk tier's directory is recovered.
    pub ready_during_disk_scan: bool,
}

/// A secret string that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    /// The secret value, for comparison only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `[metrics]`.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Prometheus listen address.
    pub listen: SocketAddr,
}

/// `[cache]`.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Disk tier directory (created at start).
    pub dir: PathBuf,
    /// Which storage tiers run.
    pub tiers: Tiers,
    /// Memory tier capacity in bytes.
    pub memory_size: u64,
    /// Largest object the memory tier stores, in bytes.
    pub max_object_size: u64,
    /// Disk tier capacity in bytes (files' sizes).
    pub disk_size: u64,
    /// Largest object the disk tier stores, in bytes.
    pub disk_max_object_size: u64,
    /// Longest wait behind another request's fill of the same key.
    pub lock_wait_timeout: Duration,
    /// Longest time a fill may hold the coalescing lock.
    pub lock_age_timeout: Duration,
    /// Cap for heuristic freshness.
    pub heuristic_max_ttl: Duration,
    /// Targeted cache-control fields (RFC 9213) obeyed instead of `Cache-Control` and
    /// `Expires`, first present and valid one first.
    pub targeted_fields: Vec<HeaderName>,
    /// Targeted fields removed from responses to clients (kept for trusted edges below a
    /// shield); the others are forwarded, as RFC 9213 expects.
    pub strip_targeted: Vec<HeaderName>,
    /// Coalesced waiters stream a fill while it is written (Varnish-like) instead of waiting
    /// for the complete object (nginx-like).
    pub stream_fills: bool,
    /// Memory for parts of objects stored from 206 answers to range requests (0: range
    /// misses fetch and store the whole object instead).
    pub partial_size: u64,
}

/// The storage tiers a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiers {
    /// Memory over disk (default).
    MemoryAndDisk,
    /// Memory only: nothing persists across restarts.
    Memory,
    /// Disk only (the page cache is the memory tier).
    Disk,
}

impl Tiers {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Tiers::MemoryAndDisk => "memory+disk",
            Tiers::Memory => "memory",
            Tiers::Disk => "disk",
        }
    }

    /// Whether the memory tier runs.
    pub fn memory(self) -> bool {
        self != Tiers::Disk
    }

    /// Whether the disk tier runs.
    pub fn disk(self) -> bool {
        self != Tiers::Memory
    }
}

impl CacheConfig {
    /// The largest object any running tier stores: the limit a fill is abandoned at.
    pub fn largest_object(&self) -> u64 {
        match self.tiers {
            Tiers::Memory => self.max_object_size,
            Tiers::Disk => self.disk_max_object_size,
            Tiers::MemoryAndDisk => self.max_object_size.max(self.disk_max_object_size),
        }
    }
}

/// What a rule does with matching requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Cache per RFC 9111 and this rule's overrides.
    Cache,
    /// Never look up or store; always go to the origin.
    Bypass,
}

/// One cache rule.
#[derive(Debug, Clone)]
pub struct RuleConfig {
    /// Rule name.
    pub name: String,
    /// Index into [`Config::origins`].
    pub origin: usize,
    /// Cache or bypass.
    pub action: Action,
    /// Which requests this rule applies to.
    pub matcher: MatchConfig,
    /// Freshness policy.
    pub ttl: TtlConfig,
    /// Cache key composition.
    pub key: KeyConfig,
    /// What may be stored.
    pub cacheable: CacheableConfig,
    /// Stale serving defaults.
    pub stale: StaleConfig,
    /// Header rules of this rule (after the global ones).
    pub headers: HeaderPolicy,
    /// Fetch through the shield tier when one is configured (`[shield]`).
    pub shield: bool,
    /// Matching requests that arrive on a plain HTTP listener are redirected to HTTPS.
    pub redirect_https: bool,
}

/// How long a rule lets stale responses be served when the origin's directives do not say
/// (RFC 5861); never where the origin forbids it (`must-revalidate`, `proxy-revalidate`,
/// `no-cache`, `s-maxage` without explicit stale directives).
#[derive(Debug, Clone, Copy, Default)]
pub struct StaleConfig {
    /// Serve stale this long past expiry while one background request revalidates.
    pub while_revalidate: Duration,
    /// Serve stale this long past expiry when the origin fails (unreachable, timeout,
    /// 500/502/503/504).
    pub if_error: Duration,
    /// Serve a stale response, however stale, when the origin cannot be reached or closes the
    /// connection without a response (RFC 9111 4.2.4 "disconnected"); off with
    /// `if_error = "0s"`.
    pub disconnected: bool,
}

/// Request matching of a rule; empty lists match everything.
#[derive(Debug, Clone, Default)]
pub struct MatchConfig {
    /// Host globs (validated).
    pub hosts: Vec<String>,
    /// Path prefixes.
    pub path_prefix: Vec<String>,
    /// Path globs (validated).
    pub paths: Vec<String>,
    /// Methods.
    pub methods: Vec<Method>,
}

/// Freshness policy of a rule.
#[derive(Debug, Clone, Default)]
pub struct TtlConfig {
    /// Forced lifetime, ignoring origin freshness headers.
    pub override_ttl: Option<Duration>,
    /// Lifetime when the origin sends no explicit freshness.
    pub default: Option<Duration>,
    /// Use Last-Modified heuristic freshness (after `default`).
    pub heuristic: bool,
    /// Lifetime of 404/410 responses without explicit freshness (negative caching).
    pub not_found: Option<Duration>,
    /// Lifetime of 500/502/503/504 responses without explicit freshness; `None`: not stored.
    pub server_error: Option<Duration>,
    /// The targeted cache-control fields (RFC 9213) this rule obeys, in precedence order:
    /// `cache.targeted_fields`, or none with `ttl.targeted = false`.
    pub targeted: Vec<HeaderName>,
}

/// How the query string enters the cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryMode {
    /// Exactly as sent.
    Full,
    /// Not at all.
    Ignore,
    /// All parameters, sorted, so order does not split entries.
    Sorted,
    /// Only these parameters (sorted).
    Keep(Vec<String>),
}

/// Cache key composition of a rule.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    /// Query string handling.
    pub query: QueryMode,
    /// Request headers whose values are part of the key.
    pub headers: Vec<HeaderName>,
}

/// What a rule allows to be stored.
#[derive(Debug, Clone)]
pub struct CacheableConfig {
    /// Status codes stored without explicit freshness (heuristic and negative caching); with
    /// `restrict_status`, the only codes stored at all.
    pub status: Vec<u16>,
    /// The rule set `cacheable.status`: responses with other codes are never stored, even with
    /// explicit freshness (RFC 9111 3 lets any final status with it be stored otherwise).
    pub restrict_status: bool,
    /// Store responses that carry `Set-Cookie`.
    pub set_cookie: bool,
    /// Store responses to requests with `Authorization` regardless of response directives.
    pub authorized: bool,
}

/// Lifetime of 404/410 responses without explicit freshness, unless a rule says otherwise.
pub const DEFAULT_NOT_FOUND_TTL: Duration = Duration::from_secs(10);

/// Status codes stored without explicit freshness by default: RFC 9110 15.1's heuristically
/// cacheable codes (minus 206, partial content is not stored). Any other final status is
/// stored when it has explicit freshness (`max-age`, `s-maxage`, `Expires`).
pub const DEFAULT_CACHEABLE_STATUS: &[u16] =
    &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Command-line overrides of `outpost run`; each replaces the matching config value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--origin URL`: the first origin's URL.
    pub origin: Option<String>,
    /// `--listen ADDR`: the public HTTP listeners.
    pub listen: Option<String>,
    /// `--admin ADDR`: the admin listener.
    pub admin: Option<String>,
    /// `--metrics ADDR`: the metrics listener.
    pub metrics: Option<String>,
    /// `--cache-dir DIR`: the disk tier directory.
    pub cache_dir: Option<String>,
}

impl Config {
    /// Read, parse, override and validate `path`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::from_str(&text, path, overrides)
    }

    /// Parse, override and validate `text`, naming `path` in errors.
    pub fn from_str(text: &str, path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut file = parse(text, path)?;
        validate::apply_overrides(&mut file, overrides);
        validate::validate(file, path)
    }

    /// The effective configuration as TOML, defaults filled in (secrets redacted).
    pub fn describe(&self) -> String {
        describe::describe(self)
    }
}

fn parse(text: &str, path: &Path) -> Result<file::FileConfig, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let key = err.path().to_string();
        let inner = err.into_inner();
        let line = inner
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        ConfigError::Parse {
            file: path.to_path_buf(),
            key: if key == "." { String::new() } else { key },
            line,
            message: inner.message().trim().to_string(),
        }
    })
}
