//! The TOML file format: plain serde structs, `deny_unknown_fields`, no semantics.
//!
//! Values that need parsing with a good error (durations, sizes, addresses, globs) stay strings
//! here; `config::validate` turns this into the typed [`super::Config`], reporting every problem
//! with its key path at once.

use serde::Deserialize;

/// A whole configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[node]`: identity and process settings.
    #[serde(default)]
    pub node: NodeSection,
    /// `[listen]`: public listeners.
    #[serde(default)]
    pub listen: ListenSection,
    /// `[admin]`: admin API listener and token.
    #[serde(default)]
    pub admin: AdminSection,
    /// `[metrics]`: Prometheus listener.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[cache]`: storage tiers and coalescing.
    #[serde(default)]
    pub cache: CacheSection,
    /// `[[origins]]`: upstream servers.
    #[serde(default)]
    pub origins: Vec<OriginSection>,
    /// `[[rules]]`: ordered cache rules.
    #[serde(default)]
    pub rules: Vec<RuleSection>,
    /// `[purge]`: purge tags.
    #[serde(default)]
    pub purge: PurgeSection,
    /// `[client_ip]`: which proxies' forwarding headers name the client.
    #[serde(default)]
    pub client_ip: ClientIpSection,
    /// `[rate_limit]`: request rate limits.
    #[serde(default)]
    pub rate_limit: RateLimitSection,
    /// `[headers]`: header rules for every request and response.
    #[serde(default)]
    pub headers: HeadersSection,
    /// `[limits]`: request hardening.
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[compression]`: response compression.
    #[serde(default)]
    pub compression: CompressionSection,
    /// `[shield]`: the parent tier.
    #[serde(default)]
    pub shield: ShieldSection,
    /// `[cluster]`: the fleet purge bus (optional).
    pub cluster: Option<ClusterSection>,
    /// `[access_log]`: one line per request.
    #[serde(default)]
    pub access_log: AccessLogSection,
    /// `[tracing]`: OpenTelemetry export of request spans.
    #[serde(default)]
    pub tracing: TracingSection,
    /// `[tls]`: certificates of the HTTPS listeners.
    #[serde(default)]
    pub tls: TlsSection,
}

/// `[tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Offer HTTP/2 through ALPN.
    pub h2: Option<bool>,
    /// How often the certificate and key files are checked for changes.
    pub reload_check: Option<String>,
    /// `[[tls.certificates]]`.
    #[serde(default)]
    pub certificates: Vec<CertificateSection>,
}

/// One `[[tls.certificates]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    /// PEM certificate chain file.
    pub cert: Option<String>,
    /// PEM private key file.
    pub key: Option<String>,
    /// SNI names served (default: the certificate's DNS names).
    pub names: Option<Vec<String>>,
    /// Served when SNI is absent or matches no certificate.
    pub default: Option<bool>,
}

/// `[compression]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionSection {
    /// Compress at all.
    pub enabled: Option<bool>,
    /// Encodings produced, in preference order ("br", "zstd", "gzip").
    pub encodings: Option<Vec<String>>,
    /// Media types compressed ("text/*", "application/json").
    pub types: Option<Vec<String>>,
    /// Smallest body compressed, when its length is known.
    pub min_size: Option<SizeValue>,
    /// Brotli quality, 0-11.
    pub brotli_level: Option<i64>,
    /// gzip level, 1-9.
    pub gzip_level: Option<i64>,
    /// zstd level, 1-19.
    pub zstd_level: Option<i64>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Concurrent client connections at most.
    pub max_connections: Option<i64>,
    /// Time allowed to receive a request header (idle keep-alive included).
    pub header_timeout: Option<String>,
    /// Time allowed between reads of a request body.
    pub body_timeout: Option<String>,
    /// Request line and header fields, bytes at most.
    pub max_header_bytes: Option<SizeValue>,
    /// Header fields at most.
    pub max_headers: Option<i64>,
    /// Request target, bytes at most.
    pub max_uri_bytes: Option<SizeValue>,
    /// Request body, bytes at most.
    pub max_body_bytes: Option<SizeValue>,
}

/// `[headers]` or `[rules.headers]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersSection {
    /// Changes to the request sent to the origin.
    pub request: Option<HeaderRulesSection>,
    /// Changes to the response sent to the client.
    pub response: Option<HeaderRulesSection>,
}

/// `[headers.request]`, `[headers.response]` (and the same under `[rules.headers]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesSection {
    /// Fields set (replacing any of the same name).
    pub set: Option<std::collections::BTreeMap<String, String>>,
    /// Fields removed.
    pub remove: Option<Vec<String>>,
}

/// `[client_ip]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIpSection {
    /// Peers (CIDRs) whose forwarding header is believed.
    pub trusted_proxies: Option<Vec<String>>,
    /// "X-Forwarded-For" or "Forwarded".
    pub header: Option<String>,
    /// Whose forwarding fields go upstream: "trusted" or "all".
    pub pass_forwarding_fields: Option<String>,
}

/// `[rate_limit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Clients (CIDRs) never limited.
    pub allow: Option<Vec<String>>,
    /// Most distinct keys tracked.
    pub max_keys: Option<i64>,
    /// `[[rate_limit.rules]]`.
    #[serde(default)]
    pub rules: Vec<RateLimitRuleSection>,
}

/// `[[rate_limit.rules]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRuleSection {
    /// Name (metrics label, RateLimit-Policy name).
    pub name: Option<String>,
    /// `"<n>/s"`, `"<n>/min"` or `"<n>/h"`.
    pub limit: Option<String>,
    /// Requests allowed at once beyond the steady rate.
    pub burst: Option<i64>,
    /// `"ip"`, `"ip_path"` or `"header:<name>"`.
    pub key: Option<String>,
    /// Count only requests that go to the origin.
    pub only_misses: Option<bool>,
    /// `[rate_limit.rules.match]`.
    #[serde(default, rename = "match")]
    pub matcher: MatchSection,
}

/// `[purge]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeSection {
    /// Response header fields whose values tag an object.
    pub tag_headers: Option<Vec<String>>,
    /// Remove those fields from client responses.
    pub strip_tag_headers: Option<bool>,
    /// How often the background pass applying and retiring purges runs.
    pub lurker_interval: Option<String>,
}

/// A size: an integer number of bytes or a string with a unit ("256MiB").
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    /// Plain bytes.
    Bytes(i64),
    /// A human-readable size.
    Text(String),
}

/// `[node]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Node name (Cache-Status, Via).
    pub name: Option<String>,
    /// Worker threads; 0 = one per core.
    pub threads: Option<i64>,
    /// Graceful shutdown wait.
    pub shutdown_grace: Option<String>,
    /// Share tasks between worker threads.
    pub work_stealing: Option<bool>,
    /// Add `Via` to forwarded requests and responses.
    pub via: Option<bool>,
    /// Answer plain fresh memory hits below Pingora's session.
    pub lean_hits: Option<bool>,
    /// Idle upstream connections kept for reuse, in all.
    pub upstream_keepalive_pool: Option<i64>,
    /// Unix socket over which a graceful upgrade hands the listening sockets over.
    pub upgrade_sock: Option<String>,
}

/// `[listen]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    /// Plain HTTP listen addresses.
    pub http: Option<Vec<String>>,
    /// HTTPS listen addresses.
    pub https: Option<Vec<String>>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Admin listen address.
    pub listen: Option<String>,
    /// Bearer token, inline.
    pub token: Option<String>,
    /// Name of an environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// Report ready before the disk tier's directory is recovered.
    pub ready_during_disk_scan: Option<bool>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Metrics listen address.
    pub listen: Option<String>,
}

/// `[cache]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Disk tier directory.
    pub dir: Option<String>,
    /// Memory tier capacity.
    pub memory_size: Option<SizeValue>,
    /// Largest cacheable object.
    pub max_object_size: Option<SizeValue>,
    /// Longest wait behind a coalescing lock.
    pub lock_wait_timeout: Option<String>,
    /// Longest time a fill may hold the lock.
    pub lock_age_timeout: Option<String>,
    /// Cap for heuristic freshness.
    pub heuristic_max_ttl: Option<String>,
    /// Let coalesced waiters stream a fill while it is written.
    pub stream_fills: Option<bool>,
    /// Which tiers run: "memory+disk", "memory" or "disk".
    pub tiers: Option<String>,
    /// Disk tier capacity.
    pub disk_size: Option<SizeValue>,
    /// Targeted cache-control fields (RFC 9213) this node obeys, in precedence order.
    pub targeted_fields: Option<Vec<String>>,
    /// Targeted fields removed from client responses.
    pub strip_targeted: Option<Vec<String>>,
    /// Largest object the disk tier stores.
    pub disk_max_object_size: Option<SizeValue>,
    /// Memory for parts of objects stored from 206 responses.
    pub partial_size: Option<SizeValue>,
}

/// One `[[origins]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginSection {
    /// Name rules refer to.
    pub name: Option<String>,
    /// `http://host:port`.
    pub url: Option<String>,
    /// Host header to send.
    pub host: Option<String>,
    /// TCP connect timeout.
    pub connect_timeout: Option<String>,
    /// Read timeout.
    pub read_timeout: Option<String>,
    /// Longest a whole fetch may take.
    pub total_timeout: Option<String>,
    /// How long a failure marks the origin as failing.
    pub failure_backoff: Option<String>,
    /// Several servers (instead of `url`): URLs or `{ url, weight }` tables.
    pub servers: Option<Vec<ServerEntry>>,
    /// "round_robin", "weighted" or "ketama".
    pub balance: Option<String>,
    /// TLS to the servers (default: when the URLs are https://).
    pub tls: Option<bool>,
    /// SNI name and name the certificate must carry.
    pub sni: Option<String>,
    /// PEM file of the CAs trusted for this origin's certificates.
    pub ca_file: Option<String>,
    /// Skip certificate verification.
    pub insecure: Option<bool>,
    /// Offer HTTP/2 (TLS origins).
    pub h2: Option<bool>,
    /// How long an idle pooled connection is kept.
    pub keepalive_timeout: Option<String>,
    /// Retries of a failed request on another server.
    pub retries: Option<i64>,
    /// Failures in a row that take a server out of rotation.
    pub max_fails: Option<i64>,
    /// How long a server stays out of rotation.
    pub fail_timeout: Option<String>,
    /// `[origins.health_check]`.
    pub health_check: Option<HealthCheckSection>,
}

/// One entry of `origins[].servers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ServerEntry {
    /// Just the URL.
    Url(String),
    /// URL and weight.
    Table(ServerTable),
}

/// `{ url = "...", weight = 2 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTable {
    /// `http(s)://host:port`.
    pub url: String,
    /// Relative share of requests.
    pub weight: Option<i64>,
}

/// `[origins.health_check]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// Path requested.
    pub path: Option<String>,
    /// Host header sent.
    pub host: Option<String>,
    /// Port checked instead of the server's.
    pub port: Option<i64>,
    /// Time between checks.
    pub interval: Option<String>,
    /// Time allowed for one check.
    pub timeout: Option<String>,
    /// Statuses that count as healthy.
    pub expect_status: Option<Vec<i64>>,
    /// Successes in a row that bring a server back.
    pub healthy_threshold: Option<i64>,
    /// Failures in a row that take a server out.
    pub unhealthy_threshold: Option<i64>,
}

/// `[shield]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShieldSection {
    /// The `[[origins]]` entry whose servers are this node's shields.
    pub origin: Option<String>,
    /// Go to the origin directly when no shield can be reached.
    pub direct_when_down: Option<bool>,
    /// Child nodes (CIDRs) whose cache-key hint this node uses.
    pub trusted_edges: Option<Vec<String>>,
}

/// One `[[rules]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    /// Rule name.
    pub name: Option<String>,
    /// Origin name.
    pub origin: Option<String>,
    /// "cache" or "bypass".
    pub action: Option<String>,
    /// `[rules.match]`.
    #[serde(default, rename = "match")]
    pub matcher: MatchSection,
    /// `[rules.ttl]`.
    #[serde(default)]
    pub ttl: TtlSection,
    /// `[rules.key]`.
    #[serde(default)]
    pub key: KeySection,
    /// `[rules.cacheable]`.
    #[serde(default)]
    pub cacheable: CacheableSection,
    /// `[rules.stale]`.
    #[serde(default)]
    pub stale: StaleSection,
    /// `[rules.headers]`.
    #[serde(default)]
    pub headers: HeadersSection,
    /// Fetch through the shield tier (when one is configured).
    pub shield: Option<bool>,
    /// Redirect matching requests on plain HTTP to HTTPS.
    pub redirect_https: Option<bool>,
}

/// `[rules.stale]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaleSection {
    /// Default stale-while-revalidate window.
    pub while_revalidate: Option<String>,
    /// Default stale-if-error window.
    pub if_error: Option<String>,
}

/// `[rules.match]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSection {
    /// Host globs.
    pub hosts: Option<Vec<String>>,
    /// Path prefixes.
    pub path_prefix: Option<Vec<String>>,
    /// Path globs.
    pub paths: Option<Vec<String>>,
    /// Methods.
    pub methods: Option<Vec<String>>,
}

/// `[rules.ttl]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtlSection {
    /// Forced freshness lifetime.
    #[serde(rename = "override")]
    pub override_ttl: Option<String>,
    /// Freshness when the origin gives none.
    pub default: Option<String>,
    /// Use Last-Modified heuristic freshness.
    pub heuristic: Option<bool>,
    /// Lifetime of 404/410 responses without explicit freshness.
    pub not_found: Option<String>,
    /// Lifetime of 500/502/503/504 responses without explicit freshness.
    pub server_error: Option<String>,
    /// Obey targeted cache-control fields (RFC 9213) for this rule.
    pub targeted: Option<bool>,
}

/// `[rules.key]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySection {
    /// Query handling mode.
    pub query: Option<String>,
    /// Parameters kept with `query = "keep"`.
    pub query_keep: Option<Vec<String>>,
    /// Request headers added to the key.
    pub headers: Option<Vec<String>>,
}

/// `[rules.cacheable]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheableSection {
    /// Cacheable status codes.
    pub status: Option<Vec<i64>>,
    /// Cache responses with Set-Cookie.
    pub set_cookie: Option<bool>,
    /// Cache responses to requests with Authorization regardless of directives.
    pub authorized: Option<bool>,
}

/// `[cluster]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `nats://host:port` of a NATS server with JetStream.
    pub nats_url: Option<String>,
    /// JetStream stream of purges.
    pub stream: Option<String>,
    /// Environment variable holding the NATS token.
    pub token_env: Option<String>,
    /// How long purges are kept in the stream.
    pub retention: Option<String>,
    /// Lag beyond which objects older than the last sync are revalidated.
    pub max_lag: Option<String>,
    /// "revalidate" or "serve": objects from before start while not caught up.
    pub until_synced: Option<String>,
}

/// `[access_log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// Write access log lines at all.
    pub enabled: Option<bool>,
    /// File path, or "-" for standard output.
    pub path: Option<String>,
    /// "json" or "combined".
    pub format: Option<String>,
    /// Fraction of requests logged (errors always are).
    pub sample: Option<f64>,
    /// Lines buffered before new ones are dropped.
    pub buffer: Option<i64>,
    /// Request header carrying the request id ("" = none).
    pub request_id_header: Option<String>,
}

/// `[tracing]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSection {
    /// Export spans at all.
    pub enabled: Option<bool>,
    /// OTLP/HTTP traces endpoint.
    pub endpoint: Option<String>,
    /// "http/protobuf" or "http/json".
    pub protocol: Option<String>,
    /// Fraction of new traces sampled.
    pub sample: Option<f64>,
    /// `service.name` of the spans.
    pub service_name: Option<String>,
    /// Export request timeout.
    pub timeout: Option<String>,
}
