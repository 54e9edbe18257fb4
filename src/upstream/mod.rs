//! Upstreams: the pools of servers Outpost fetches from (origins, and shields of the parent
//! tier), server selection, passive and active health, and connection settings (TLS, h2,
//! keep-alive).
//!
//! Selection and active health checks are Pingora's load balancer (`pingora-load-balancing`):
//! weighted round robin or ketama consistent hashing over a static server list, health checked
//! by its `HttpHealthCheck`. Passive health (nginx's `max_fails` / `fail_timeout`) and the
//! per-request "already tried" set are applied on top, through `select_with`.

pub mod health;
pub mod sockets;
pub mod tier;

use crate::config::{Balance, OriginConfig};
use crate::metrics::{Metrics, ServerMetrics};
use futures::FutureExt;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{parse_x509, WrappedX509};
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::selection::{Consistent, RoundRobin};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which tier a pool's servers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Origin servers.
    Origin,
    /// Other Outpost nodes of the parent (shield) tier.
    Shield,
}

impl Tier {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Origin => "origin",
            Tier::Shield => "shield",
        }
    }
}

/// Milliseconds since `epoch`, saturating.
fn millis(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// One server of a pool.
pub struct Member {
    /// Its address.
    pub addr: SocketAddr,
    /// Its address as a metrics label.
    pub label: String,
    peer: HttpPeer,
    /// Its entry in the load balancer (health state is keyed by it).
    backend: Backend,
    /// Consecutive connect failures / timeouts.
    fails: AtomicU32,
    /// Milliseconds after the pool's epoch until which the server is out of rotation.
    ejected_until: AtomicU64,
    /// Its metrics.
    pub metrics: ServerMetrics,
}

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Ketama(LoadBalancer<Consistent>),
}

impl Selector {
    fn backends(&self) -> &Backends {
        match self {
            Selector::RoundRobin(lb) => lb.backends(),
            Selector::Ketama(lb) => lb.backends(),
        }
    }
}

/// Why a pool could not give a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoServer {
    /// Every server is down (health checks or passive ejection).
    AllDown,
    /// Every available server was already tried for this request.
    Exhausted,
}

/// A pool of servers: an `[[origins]]` entry, or the shield tier.
pub struct Pool {
    /// The validated config entry.
    pub config: OriginConfig,
    /// Origins or shields.
    pub tier: Tier,
    members: Vec<Member>,
    selector: Selector,
    /// Bound on the selection walk (enough to see every server once).
    max_iterations: usize,
    /// Reference point of the millisecond timestamps.
    epoch: Instant,
    /// Milliseconds after `epoch` until which the origin counts as failing (0: never failed).
    failing_until: AtomicU64,
    /// Retries counter of this pool.
    retries: prometheus::IntCounter,
    /// Milliseconds after `epoch` when the next active health check is due.
    next_check: AtomicU64,
}

/// Load the PEM CA bundle at `path` in the form Pingora's per-peer CA option takes.
fn load_ca(path: &std::path::Path) -> anyhow::Result<Arc<[WrappedX509]>> {
    use anyhow::Context;
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let der = cert.with_context(|| format!("parsing {}", path.display()))?;
        // parse_x509 panics on DER it cannot read: check first
        x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| anyhow::anyhow!("{}: invalid certificate: {e}", path.display()))?;
        out.push(WrappedX509::new(der.to_vec(), parse_x509));
    }
    anyhow::ensure!(!out.is_empty(), "{}: no certificate found", path.display());
    Ok(out.into())
}

impl Pool {
    /// Build the pool for `config` (no I/O beyond reading its CA file).
    pub fn new(config: OriginConfig, tier: Tier, metrics: &Metrics) -> anyhow::Result<Pool> {
        let ca = match config.tls.as_ref().and_then(|t| t.ca_file.as_deref()) {
            Some(path) => Some(load_ca(path)?),
            None => None,
        };
        if config.tls.as_ref().is_some_and(|t| !t.verify) {
            tracing::warn!(
                origin = %config.name,
                "TLS certificate verification is OFF for this origin (insecure = true): \
                 anyone on the path can impersonate it"
            );
        }
        let mut set = BTreeSet::new();
        let mut members = Vec::with_capacity(config.servers.len());
        for (i, server) in config.servers.iter().enumerate() {
            let tls = config.tls.as_ref();
            let sni = tls.map_or(String::new(), |t| {
                t.sni.clone().unwrap_or_else(|| server.host.clone())
            });
            let mut peer = HttpPeer::new(server.addr, tls.is_some(), sni);
            let o = &mut peer.options;
            o.connection_timeout = Some(config.connect_timeout);
            o.total_connection_timeout = Some(config.connect_timeout);
            o.read_timeout = Some(config.read_timeout);
            o.write_timeout = Some(config.read_timeout);
            o.idle_timeout = Some(config.keepalive_timeout);
            if let Some(t) = tls {
                o.verify_cert = t.verify;
                o.verify_hostname = t.verify;
                o.ca = ca.clone();
                o.alpn = if config.h2 { ALPN::H2H1 } else { ALPN::H1 };
                o.max_h2_streams = 100;
            }
            let label = server.addr.to_string();
            let mut backend = Backend::new_with_weight(&label, usize::from(server.weight))
                .map_err(|e| anyhow::anyhow!("server {label}: {e}"))?;
            backend.ext.insert(i);
            set.insert(backend.clone());
            members.push(Member {
                addr: server.addr,
                metrics: metrics.server(tier.as_str(), &config.name, &label),
                label,
                peer,
                backend,
                fails: AtomicU32::new(0),
                ejected_until: AtomicU64::new(0),
            });
        }
        let mut backends = Backends::new(Static::new(set));
        if let Some(hc) = &config.health_check {
            backends.set_health_check(health::check(&config, hc, ca.clone()));
        }
        let selector = match config.balance {
            Balance::RoundRobin | Balance::Weighted => {
                Selector::RoundRobin(LoadBalancer::from_backends(backends))
            }
            Balance::Ketama => Selector::Ketama(LoadBalancer::from_backends(backends)),
        };
        let updated = match &selector {
            Selector::RoundRobin(lb) => lb.update().now_or_never(),
            Selector::Ketama(lb) => lb.update().now_or_never(),
        };
        match updated {
            Some(Ok(())) => {}
            Some(Err(e)) => anyhow::bail!("origin {}: {e}", config.name),
            None => anyhow::bail!("origin {}: static server list did not load", config.name),
        }
        let total_weight: usize = config.servers.iter().map(|s| usize::from(s.weight)).sum();
        Ok(Pool {
            retries: metrics.upstream_retries(tier.as_str(), &config.name),
            max_iterations: (total_weight + members.len()).max(members.len() * 256),
            tier,
            members,
            selector,
            epoch: Instant::now(),
            failing_until: AtomicU64::new(0),
            next_check: AtomicU64::new(0),
            config,
        })
    }

    /// The pool's name (its `[[origins]]` name).
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Its servers.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The server at `index`.
    pub fn member(&self, index: usize) -> Option<&Member> {
        self.members.get(index)
    }

    /// Whether the active health check currently passes for `index` (true without checks).
    pub fn healthy(&self, index: usize) -> bool {
        self.members
            .get(index)
            .is_none_or(|m| self.selector.backends().ready(&m.backend))
    }

    /// Whether `index` is out of rotation after failures (passive health). A pool of one
    /// server never ejects it (as nginx): there is nowhere else to go.
    fn ejected(&self, index: usize, now: u64) -> bool {
        self.members.len() > 1
            && self
                .members
                .get(index)
                .is_some_and(|m| m.ejected_until.load(Ordering::Relaxed) > now)
    }

    /// Whether the server at `index` may take requests now (health check and passive health).
    pub fn available(&self, index: usize) -> bool {
        self.healthy(index) && !self.ejected(index, millis(self.epoch, Instant::now()))
    }

    /// Pick a server for a request with hash `key` (ketama; ignored by round robin), skipping
    /// unhealthy, ejected and already `tried` servers.
    pub fn select(&self, key: &[u8], tried: &[usize]) -> Result<usize, NoServer> {
        if self.members.len() == 1 {
            // one server: no balancing to do (and it is never ejected)
            return match (self.healthy(0), tried.contains(&0)) {
                (false, _) => Err(NoServer::AllDown),
                (true, true) => Err(NoServer::Exhausted),
                (true, false) => Ok(0),
            };
        }
        let now = millis(self.epoch, Instant::now());
        let mut any_up = false;
        let accept = |b: &Backend, healthy: bool| {
            let Some(&i) = b.ext.get::<usize>() else {
                return false;
            };
            let up = healthy && !self.ejected(i, now);
            if !up {
                return false;
            }
            if tried.contains(&i) {
                return false;
            }
            true
        };
        let found = match &self.selector {
            Selector::RoundRobin(lb) => lb.select_with(key, self.max_iterations, accept),
            Selector::Ketama(lb) => lb.select_with(key, self.max_iterations, accept),
        };
        if let Some(i) = found.and_then(|b| b.ext.get::<usize>().copied()) {
            return Ok(i);
        }
        for i in 0..self.members.len() {
            any_up |= self.healthy(i) && !self.ejected(i, now);
        }
        Err(if any_up {
            NoServer::Exhausted
        } else {
            NoServer::AllDown
        })
    }

    /// Whether a server that is up (healthy, not ejected) and not in `tried` exists: what a
    /// retry needs, asked without [`Pool::select`]'s side effect (a round robin turn used up).
    pub fn has_untried(&self, tried: &[usize]) -> bool {
        (0..self.members.len()).any(|i| !tried.contains(&i) && self.available(i))
    }

    /// A peer for one request to server `index` (a clone of its template; connections are
    /// pooled by Pingora).
    pub fn peer(&self, index: usize) -> Option<Box<HttpPeer>> {
        self.members.get(index).map(|m| Box::new(m.peer.clone()))
    }

    /// Connecting to or reading from server `index` failed (refused, reset, timed out: `kind`,
    /// one of [`crate::metrics::ERROR_KINDS`]): after
    /// `max_fails` in a row it leaves rotation for `fail_timeout`.
    pub fn server_failed(&self, index: usize, kind: &str) {
        let Some(m) = self.members.get(index) else {
            return;
        };
        m.metrics.error(kind);
        let max = self.config.max_fails;
        let fails = m.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if max > 0 && fails >= max && self.members.len() > 1 {
            let until = millis(self.epoch, Instant::now() + self.config.fail_timeout);
            let before = m.ejected_until.swap(until, Ordering::Relaxed);
            m.fails.store(0, Ordering::Relaxed);
            if before < millis(self.epoch, Instant::now()) {
                m.metrics.ejections.inc();
                tracing::warn!(
                    tier = self.tier.as_str(),
                    pool = %self.config.name,
                    server = %m.label,
                    fails,
                    for_ms = self.config.fail_timeout.as_millis() as u64,
                    "server taken out of rotation after failures"
                );
            }
        }
    }

    /// Server `index` answered: its failure streak ends.
    pub fn server_answered(&self, index: usize, status: u16, seconds: f64) {
        if let Some(m) = self.members.get(index) {
            m.fails.store(0, Ordering::Relaxed);
            m.metrics.record(status, seconds);
        }
    }

    /// Count one retry on another server.
    pub fn count_retry(&self) {
        self.retries.inc();
    }

    /// A fetch failed (unreachable, timed out, or 500/502/503/504): the origin counts as
    /// failing for `failure_backoff`.
    pub fn record_failure(&self) {
        let until = millis(self.epoch, Instant::now() + self.config.failure_backoff);
        self.failing_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether a fetch failed within the last `failure_backoff`, or no server is available.
    pub fn is_failing(&self) -> bool {
        let now = millis(self.epoch, Instant::now());
        now < self.failing_until.load(Ordering::Relaxed)
            || (0..self.members.len()).all(|i| !self.healthy(i) || self.ejected(i, now))
    }

    /// Whether a fetch started at `start` has run past `total_timeout`.
    pub fn past_total_timeout(&self, start: Instant) -> bool {
        self.config
            .total_timeout
            .is_some_and(|t| start.elapsed() > t.max(Duration::from_millis(1)))
    }

    /// Run the active health checks (all servers in parallel) if configured and due: at
    /// most one round per `interval`, whoever asks.
    pub async fn run_health_checks(&self) {
        let Some(hc) = &self.config.health_check else {
            return;
        };
        let now = millis(self.epoch, Instant::now());
        let due = self.next_check.load(Ordering::Relaxed);
        let next = millis(self.epoch, Instant::now() + hc.interval);
        if now < due
            || self
                .next_check
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.selector.backends().run_health_check(true).await;
    }

    /// Refresh the scrape-time gauges (health, open connections from `open`).
    pub fn refresh_gauges(&self, open: &std::collections::HashMap<SocketAddr, u64>) {
        let now = millis(self.epoch, Instant::now());
        for (i, m) in self.members.iter().enumerate() {
            let up = self.healthy(i) && !self.ejected(i, now);
            m.metrics.healthy.set(i64::from(up));
            m.metrics
                .connections
                .set(open.get(&m.addr).copied().unwrap_or(0) as i64);
        }
    }
}
