//! Start-up: check the environment, build the node, wire Pingora services, run.

use crate::admin::{AdminApp, MetricsApp};
use crate::config::Config;
use crate::node::Node;
use crate::proxy::OutpostProxy;
use anyhow::{bail, Context};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::listening::Service;
use std::net::{SocketAddr, TcpListener};

/// Fail early with a clear message when an address cannot be bound (Pingora would panic).
fn check_bindable(what: &str, addr: SocketAddr) -> anyhow::Result<()> {
    TcpListener::bind(addr)
        .map(drop)
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Run a node with `config` until it is told to stop (SIGTERM: graceful, SIGINT: fast).
pub fn run(config: Config) -> anyhow::Result<()> {
    let mut seen = Vec::new();
    for (what, addr) in config
        .listen
        .http
        .iter()
        .map(|a| ("listen.http", *a))
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
    std::fs::create_dir_all(&config.cache.dir).with_context(|| {
        format!(
            "cannot create cache directory {}",
            config.cache.dir.display()
        )
    })?;

    let grace = config.node.shutdown_grace.as_secs().max(1);
    let conf = ServerConf {
        threads: config.node.threads,
        work_stealing: config.node.work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(grace),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let node = Node::new(config)?;
    let cfg = node.config.clone();

    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        OutpostProxy::new(node.clone()),
        "outpost proxy",
    );
    for addr in &cfg.listen.http {
        proxy.add_tcp(&addr.to_string());
    }

    let mut metrics = Service::new("outpost metrics".into(), MetricsApp::new(node.clone()));
    metrics.add_tcp(&cfg.metrics.listen.to_string());
    metrics.threads = Some(1);

    let mut admin = Service::new("outpost admin".into(), AdminApp::new(node.clone()));
    admin.add_tcp(&cfg.admin.listen.to_string());
    admin.threads = Some(1);

    server.add_service(proxy);
    server.add_service(metrics);
    server.add_service(admin);
    tracing::info!(
        node = %cfg.node.name,
        listen = ?cfg.listen.http,
        admin = %cfg.admin.listen,
        metrics = %cfg.metrics.listen,
        origins = cfg.origins.len(),
        rules = cfg.rules.len(),
        memory_bytes = cfg.cache.memory_size,
        threads = cfg.node.threads,
        "outpost starting"
    );
    server.run_forever()
}
