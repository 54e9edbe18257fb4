//! Start-up: check the environment, build the node, wire Pingora services, run.

use crate::admin::{AdminApp, MetricsApp};
use crate::cache::DiskTier;
use crate::config::{Config, Overrides};
use crate::node::Node;
use crate::policy::connections::Guarded;
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

/// Lets queued disk writes land before a graceful exit (SIGTERM), within the shutdown grace.
struct FlushOnShutdown {
    disk: Arc<DiskTier>,
    within: Duration,
}

#[async_trait]
impl BackgroundService for FlushOnShutdown {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        let disk = self.disk.clone();
        let within = self.within;
        let flushed = tokio::task::spawn_blocking(move || disk.flush(within))
            .await
            .unwrap_or(false);
        if !flushed {
            tracing::warn!("shutdown: some queued disk cache writes did not land in time");
        }
    }
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

/// Run a node with `config` until it is told to stop (SIGTERM: graceful, SIGINT: fast).
/// `source` (the file and command-line overrides) is what SIGHUP and `POST /config/reload`
/// read again.
pub fn run(config: Config, source: Option<(PathBuf, Overrides)>) -> anyhow::Result<()> {
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
        check_bindable(what, addr)?;
    }
    let grace = config.node.shutdown_grace.as_secs().max(1);
    let conf = ServerConf {
        threads: config.node.threads,
        work_stealing: config.node.work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(grace),
        upstream_keepalive_pool_size: config.node.upstream_keepalive_pool,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let node = Node::with_source(config, source)?;
    let cfg = node.config.clone();

    let mut app = pingora_proxy::HttpProxy::new(
        OutpostProxy::new(node.clone()),
        server.configuration.clone(),
    );
    app.handle_init_modules();
    let limits = &cfg.limits;
    // an HTTP/2 connection (HTTPS listeners) with no request in flight is closed after the
    // header deadline, as an idle HTTP/1 keep-alive connection is (Guarded leaves h2 alone)
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(limits.header_timeout);
    app.server_options = Some(options);
    let mut proxy = Service::new(
        "outpost proxy".into(),
        Guarded::new(
            app,
            limits.max_connections,
            limits.header_timeout,
            node.metrics.policy.rejected.clone(),
        ),
    );
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

    if let Some(disk) = node.storage.disk() {
        server.add_service(background_service(
            "disk flush",
            FlushOnShutdown {
                disk: disk.clone(),
                within: cfg.node.shutdown_grace,
            },
        ));
    }
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
        "outpost starting"
    );
    server.run_forever()
}
