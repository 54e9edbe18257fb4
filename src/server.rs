//! Start-up: check the environment, build the node, wire Pingora services, run.

use crate::admin::{AdminApp, MetricsApp};
use crate::cache::DiskTier;
use crate::config::{Config, Overrides};
use crate::node::Node;
use crate::policy::connections::{Guarded, OpenConnections};
use crate::proxy::OutpostProxy;
use crate::tls::reload::CertificateWatcher;
use anyhow::{bail, Context};
use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Fail early with a clear message when an address cannot be bound (Pingora would panic).
fn check_bindable(what: &str, addr: SocketAddr) -> anyhow::Result<()> {
    TcpListener::bind(addr)
        .map(drop)
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// The end of a graceful stop (SIGTERM) or upgrade (SIGQUIT, once the listening sockets were
/// handed over): waits for the client connections in flight to finish, lets queued disk
/// writes land, then exits the process (status 0), all within `grace`.
///
/// Pingora itself would sleep its whole `grace_period_seconds` and then drop whatever is still
/// running; this ends the process as soon as the work is done, and Pingora's grace period
/// (set to `grace`) is only the upper bound.
struct DrainOnShutdown {
    connections: OpenConnections,
    disk: Option<Arc<DiskTier>>,
    grace: Duration,
}

#[async_trait]
impl BackgroundService for DrainOnShutdown {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // the watch starts at false; SIGTERM and SIGQUIT turn it true (SIGINT does not: fast)
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let started = std::time::Instant::now();
        let open = self.connections.get();
        tracing::info!(
            open_connections = open,
            grace = ?self.grace,
            "shutting down: no new connections; waiting for requests in flight"
        );
        if !self.connections.wait_closed(self.grace).await {
            tracing::warn!(
                open_connections = self.connections.get(),
                "shutdown: connections still open at the end of node.shutdown_grace"
            );
        }
        if let Some(disk) = self.disk.clone() {
            let within = self.grace.saturating_sub(started.elapsed());
            let flushed = tokio::task::spawn_blocking(move || disk.shutdown(within))
                .await
                .unwrap_or(false);
            if !flushed {
                tracing::warn!("shutdown: some queued disk cache writes did not land in time");
            }
        }
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            "shutdown complete"
        );
        std::process::exit(0);
    }
}

/// How long idle keep-alive connections stay open once a shutdown or upgrade began (see
/// [`Guarded::with_shutdown_linger`]): a second, at most half of `node.shutdown_grace`.
fn shutdown_linger(grace: Duration) -> Duration {
    (grace / 2).min(Duration::from_secs(1))
}

/// Reloads the configuration on SIGHUP (as `POST /config/reload` does).
struct ReloadOnHangup {
    node: Arc<Node>,
}

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: reload through the admin API");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    let node = self.node.clone();
                    match tokio::task::spawn_blocking(move || node.reload()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed"),
                    }
                }
            }
        }
    }
}

/// Applies purges to stored objects in the background and retires them
/// ([`crate::purge::lurker`]).
struct PurgeLurker {
    node: Arc<Node>,
}

#[async_trait]
impl BackgroundService for PurgeLurker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let node = &self.node;
        let mut tick = tokio::time::interval(node.config.purge.lurker_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let started = std::time::Instant::now();
            match crate::purge::lurker::pass(&node.bans, node.storage).await {
                Ok(None) => {}
                Ok(Some(done)) => {
                    let m = &node.metrics.purge;
                    m.swept
                        .with_label_values(&["removed"])
                        .inc_by(done.sweep.removed);
                    m.swept
                        .with_label_values(&["expired"])
                        .inc_by(done.sweep.expired);
                    m.retired.inc_by(done.retired as u64);
                    tracing::info!(
                        visited = done.sweep.visited,
                        removed = done.sweep.removed,
                        expired = done.sweep.expired,
                        unreadable = done.sweep.unreadable,
                        retired = done.retired,
                        in_force = node.bans.len(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "purge pass"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purge pass: changes not durable, purges kept")
                }
            }
        }
    }
}

/// Exports the spans still pending when the node stops.
struct FlushSpans {
    node: Arc<Node>,
}

#[async_trait]
impl BackgroundService for FlushSpans {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        let node = self.node.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(tracing) = &node.tracing {
                tracing.shutdown();
            }
        })
        .await;
    }
}

/// Runs the active health checks of every pool in force (pools swapped in by a reload
/// included), each at its own interval.
struct HealthChecks {
    node: Arc<Node>,
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let routing = self.node.routing.load_full();
            for i in 0..routing.origins.len() {
                let routing = routing.clone();
                // each pool's round runs on its own; a pool's checks are never run twice at once
                tokio::spawn(async move { routing.origins[i].run_health_checks().await });
            }
        }
    }
}

/// How `outpost run` starts its listeners.
#[derive(Debug, Clone, Copy, Default)]
pub enum Start {
    /// Bind every listen address (they must be free).
    #[default]
    Fresh,
    /// Take the listening sockets over from the running node (a graceful upgrade): wait on
    /// `node.upgrade_sock` until that node, sent SIGQUIT, hands them over (Pingora gives it
    /// about 5 s), then serve on them while it finishes its requests in flight and exits.
    Upgrade,
}

/// Run a node with `config` until it is told to stop (SIGTERM: graceful, SIGINT: fast,
/// SIGQUIT: hand the listening sockets to a process started with [`Start::Upgrade`], then
/// stop gracefully). `source` (the file and command-line overrides) is what SIGHUP and
/// `POST /config/reload` read again.
pub fn run(
    config: Config,
    source: Option<(PathBuf, Overrides)>,
    start: Start,
) -> anyhow::Result<()> {
    let mut seen = Vec::new();
    for (what, addr) in config
        .listen
        .http
        .iter()
        .map(|a| ("listen.http", *a))
        .chain(config.listen.https.iter().map(|a| ("listen.https", *a)))
        .chain([
            ("admin.listen", config.admin.listen),
            ("metrics.listen", config.metrics.listen),
        ])
    {
        if seen.contains(&addr) {
            bail!(
                "{}: address {addr} is used twice ({what})",
                config.source.display()
            );
        }
        seen.push(addr);
        // on an upgrade the running node holds them: they come over the upgrade socket
        if matches!(start, Start::Fresh) {
            check_bindable(what, addr)?;
        }
    }
    let sock = &config.node.upgrade_sock;
    let sock_str = sock
        .to_str()
        .with_context(|| format!("node.upgrade_sock: {} is not UTF-8", sock.display()))?
        .to_string();
    if matches!(start, Start::Upgrade) {
        // Pingora binds the socket here and panics if it cannot: say why first
        if let Some(dir) = sock.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "node.upgrade_sock: cannot create the directory {}",
                    dir.display()
                )
            })?;
        }
    }
    // Pingora waits `grace_period_seconds` before dropping what still runs; DrainOnShutdown
    // ends the process sooner, as soon as the requests in flight are done
    let grace = config.node.shutdown_grace.as_secs().max(1);
    let conf = ServerConf {
        threads: config.node.threads,
        work_stealing: config.node.work_stealing,
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(grace),
        upstream_keepalive_pool_size: config.node.upstream_keepalive_pool,
        upgrade_sock: sock_str,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: matches!(start, Start::Upgrade),
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);

    // the node is built first so that, on an upgrade, it is ready to serve the moment the
    // sockets arrive (the old node stops accepting 5 s after it sent them)
    let node = Node::with_source(config, source)?;
    let cfg = node.config.clone();
    if matches!(start, Start::Upgrade) {
        tracing::info!(
            upgrade_sock = %cfg.node.upgrade_sock.display(),
            "upgrade: waiting for the running node's listening sockets (send it SIGQUIT)"
        );
    }
    // takes the sockets over on an upgrade (exits the process with an error if none come)
    server.bootstrap();
    if matches!(start, Start::Upgrade) {
        tracing::info!("upgrade: listening sockets taken over");
    }

    let mut app = pingora_proxy::HttpProxy::new(
        OutpostProxy::new(node.clone()),
        server.configuration.clone(),
    );
    app.handle_init_modules();
    let limits = &cfg.limits;
    // an HTTP/2 connection (HTTPS listeners) with no request in flight is closed after the
    // header deadline, as an idle HTTP/1 keep-alive connection is (Guarded's PerRequest)
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(limits.header_timeout);
    app.server_options = Some(options);
    let guarded = Guarded::new(
        app,
        limits,
        node.metrics.policy.rejected.clone(),
        node.metrics.policy.idle_closed.clone(),
        node.metrics.disconnects.clone(),
    )
    .with_shutdown_linger(shutdown_linger(cfg.node.shutdown_grace))
    .with_lean_hits(Arc::new(crate::lean::LeanHits::new(node.clone())));
    let connections = guarded.open_connections();
    let mut proxy = Service::new("outpost proxy".into(), guarded);
    for addr in &cfg.listen.http {
        proxy.add_tcp(&addr.to_string());
    }
    if let Some(tls) = &node.tls {
        for addr in &cfg.listen.https {
            let settings = tls
                .listener_settings()
                .map_err(|e| anyhow::anyhow!("TLS listener {addr}: {e}"))?;
            proxy.add_tls_with_settings(&addr.to_string(), None, settings);
        }
        server.add_service(background_service(
            "tls certificate watcher",
            CertificateWatcher { tls: tls.clone() },
        ));
    }

    let mut metrics = Service::new("outpost metrics".into(), MetricsApp::new(node.clone()));
    metrics.add_tcp(&cfg.metrics.listen.to_string());
    metrics.threads = Some(1);

    let mut admin = Service::new("outpost admin".into(), AdminApp::new(node.clone()));
    admin.add_tcp(&cfg.admin.listen.to_string());
    admin.threads = Some(1);

    server.add_service(background_service(
        "drain on shutdown",
        DrainOnShutdown {
            connections,
            disk: node.storage.disk().cloned(),
            grace: cfg.node.shutdown_grace,
        },
    ));
    server.add_service(background_service(
        "purge lurker",
        PurgeLurker { node: node.clone() },
    ));
    if node.cluster.is_some() {
        server.add_service(background_service(
            "fleet purge bus",
            crate::cluster::bus::PurgeBus { node: node.clone() },
        ));
    }
    if node.tracing.is_some() {
        server.add_service(background_service(
            "tracing export",
            FlushSpans { node: node.clone() },
        ));
    }
    server.add_service(background_service(
        "health checks",
        HealthChecks { node: node.clone() },
    ));
    server.add_service(background_service(
        "config reload",
        ReloadOnHangup { node: node.clone() },
    ));
    server.add_service(proxy);
    server.add_service(metrics);
    server.add_service(admin);
    tracing::info!(
        node = %cfg.node.name,
        listen = ?cfg.listen.http,
        listen_https = ?cfg.listen.https,
        admin = %cfg.admin.listen,
        metrics = %cfg.metrics.listen,
        origins = cfg.origins.len(),
        rules = cfg.rules.len(),
        tiers = cfg.cache.tiers.as_str(),
        memory_bytes = cfg.cache.memory_size,
        disk_bytes = cfg.cache.disk_size,
        threads = cfg.node.threads,
        config = %cfg.source.display(),
        "outpost starting"
    );
    server.run_forever()
}
