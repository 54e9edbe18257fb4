//! Active health checks: Pingora's `HttpHealthCheck`, configured from `[origins.health_check]`
//! with the origin's own TLS settings, and a log line whenever a server changes state.

use crate::config::{HealthCheckConfig, OriginConfig};
use async_trait::async_trait;
use pingora_core::protocols::ALPN;
use pingora_core::utils::tls::WrappedX509;
use pingora_error::{Error, ErrorType};
use pingora_http::ResponseHeader;
use pingora_load_balancing::health_check::{HealthCheck, HealthObserve, HttpHealthCheck};
use pingora_load_balancing::Backend;
use std::sync::Arc;

/// Logs health changes of one pool's servers.
struct LogChanges {
    pool: String,
}

#[async_trait]
impl HealthObserve for LogChanges {
    async fn observe(&self, target: &Backend, healthy: bool) {
        if healthy {
            tracing::info!(pool = %self.pool, server = %target.addr, "health check: server is healthy again");
        } else {
            tracing::warn!(pool = %self.pool, server = %target.addr, "health check: server is unhealthy, out of rotation");
        }
    }
}

/// The health check of `origin` as configured by `hc`.
pub fn check(
    origin: &OriginConfig,
    hc: &HealthCheckConfig,
    ca: Option<Arc<[WrappedX509]>>,
) -> Box<dyn HealthCheck + Send + Sync> {
    let first = &origin.servers[0];
    let host = hc
        .host
        .clone()
        .or_else(|| origin.host.clone())
        .unwrap_or_else(|| match first.addr.port() {
            80 | 443 => first.host.clone(),
            port => format!("{}:{port}", first.host),
        });
    let tls = origin.tls.as_ref();
    let mut check = HttpHealthCheck::new(&host, tls.is_some());
    if let Ok(mut req) = pingora_http::RequestHeader::build("GET", hc.path.as_bytes(), None) {
        // the builder only fails on a path validation already rejected
        let _ = req.insert_header("host", host.as_str());
        let _ = req.insert_header("user-agent", "outpost-health-check");
        check.req = req;
    }
    let peer = &mut check.peer_template;
    peer.options.connection_timeout = Some(hc.timeout);
    peer.options.total_connection_timeout = Some(hc.timeout);
    peer.options.read_timeout = Some(hc.timeout);
    peer.options.write_timeout = Some(hc.timeout);
    if let Some(t) = tls {
        peer.sni = t.sni.clone().unwrap_or_else(|| first.host.clone());
        peer.options.verify_cert = t.verify;
        peer.options.verify_hostname = t.verify;
        peer.options.ca = ca;
        peer.options.alpn = ALPN::H1;
    }
    check.port_override = hc.port;
    check.consecutive_success = hc.healthy_threshold;
    check.consecutive_failure = hc.unhealthy_threshold;
    let expect = hc.expect_status.clone();
    check.validator = Some(Box::new(move |resp: &ResponseHeader| {
        let status = resp.status.as_u16();
        if expect.contains(&status) {
            Ok(())
        } else {
            Error::e_explain(
                ErrorType::CustomCode("unexpected health check status", status),
                format!("health check answered {status}"),
            )
        }
    }));
    check.health_changed_callback = Some(Box::new(LogChanges {
        pool: origin.name.clone(),
    }));
    Box::new(check)
}
