//! The admin and metrics listeners: never on the data path.
//!
//! Admin: `GET /healthz` and `GET /readyz` are open (for probes); every other route needs
//! `Authorization: Bearer <token>` (compared in constant time): `POST /purge` ([`purge`]),
//! `POST /config/reload`, `GET /status` and `GET /top` (the heaviest keys of the recent
//! traffic, [`crate::observe::topkeys`]). Metrics: `GET /metrics` in the Prometheus text format.

pub mod client;
pub mod purge;

/// The admin API's OpenAPI 3 document (`GET /openapi.json`; kept true by tests/admin_api.rs).
pub const OPENAPI: &str = include_str!("openapi.json");

use crate::node::Node;
use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::Arc;
use subtle::ConstantTimeEq;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    let len = resp.body().len();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, len.into());
    resp
}

fn json_error(status: StatusCode, message: &str) -> Response<Vec<u8>> {
    let body = serde_json::json!({ "error": message }).to_string();
    respond(status, "application/json", body)
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Vec<u8>> {
    respond(status, "application/json", value.to_string())
}

/// The request body, at most [`purge::MAX_BODY`] bytes; `Err` is the response to send.
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body over {} bytes", purge::MAX_BODY),
        )
    };
    let announced = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > purge::MAX_BODY) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > purge::MAX_BODY {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("could not read the request body: {e}"),
                ))
            }
        }
    }
}

/// The `n` of `GET /top?n=...`: default 20, at most the table's capacity.
fn top_count(query: Option<&str>) -> Result<usize, String> {
    const DEFAULT: usize = 20;
    let max = crate::observe::topkeys::CAPACITY;
    let Some(value) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("n="))
    else {
        return Ok(DEFAULT);
    };
    match value.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("n must be a number from 1 to {max}, not {value:?}")),
    }
}

/// Serves `/metrics`.
pub struct MetricsApp {
    node: Arc<Node>,
}

impl MetricsApp {
    /// The metrics endpoint of `node`.
    pub fn new(node: Arc<Node>) -> Self {
        MetricsApp { node }
    }
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        match (&req.method, req.uri.path()) {
            (&Method::GET, "/metrics") => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.node.render_metrics(),
            ),
            (_, "/metrics") => respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n"),
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /metrics\n",
            ),
        }
    }
}

/// Serves the admin API.
pub struct AdminApp {
    node: Arc<Node>,
}

impl AdminApp {
    /// The admin API of `node`.
    pub fn new(node: Arc<Node>) -> Self {
        AdminApp { node }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.node.config.admin.token else {
            return false;
        };
        let Some(given) = session
            .req_header()
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        bool::from(given.trim().as_bytes().ct_eq(token.expose().as_bytes()))
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let method = req.method.clone();
        match path.as_str() {
            "/openapi.json" if method == Method::GET => {
                respond(StatusCode::OK, "application/json", OPENAPI)
            }
            "/healthz" if method == Method::GET => {
                respond(StatusCode::OK, "application/json", r#"{"status":"ok"}"#)
            }
            // Ready once the listeners are up and the disk tier's directory is recovered (the
            // node serves meanwhile: a lookup in a part not yet recovered waits up to 1 s, then
            // misses).
            "/readyz" if method == Method::GET => {
                let scanning = self
                    .node
                    .storage
                    .disk()
                    .is_some_and(|d| !d.index_complete());
                let ready = !scanning || self.node.config.admin.ready_during_disk_scan;
                json(
                    if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    },
                    &serde_json::json!({
                        "status": if ready { "ok" } else { "starting" },
                        "disk_index": self.node.storage.disk().map(|_| {
                            if scanning { "scanning" } else { "complete" }
                        }),
                    }),
                )
            }
            "/healthz" | "/readyz" | "/openapi.json" => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
            }
            _ if !self.authorized(session) => {
                tracing::info!(path, "admin call refused: missing or wrong bearer token");
                self.node.metrics.purge.unauthorized.inc();
                let mut resp =
                    json_error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                resp
            }
            "/purge" if method == Method::POST => self.purge(session).await,
            "/config/reload" if method == Method::POST => self.reload().await,
            "/config/reload" => json_error(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
            "/status" if method == Method::GET => self.status(),
            "/top" if method == Method::GET => self.top(req.uri.query()),
            "/top" => json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
            "/purge" => json_error(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
            "/status" => json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
            _ => json_error(StatusCode::NOT_FOUND, "unknown admin route"),
        }
    }
}

impl AdminApp {
    async fn purge(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let started = std::time::Instant::now();
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let routing = self.node.routing.load();
        let rules = &routing.rules;
        let request = match purge::parse(&body, rules) {
            Ok(r) => r,
            Err(bad) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({ "error": bad.message, "field": bad.field }),
                )
            }
        };
        let (ban, persisted) = self
            .node
            .apply_purge(request.target, request.soft, request.url.as_ref())
            .await;
        let fleet = self.node.cluster.as_ref().map(|cluster| {
            cluster.publish(crate::cluster::FleetPurge {
                node: self.node.config.node.name.clone(),
                id: ban.id,
                soft: ban.soft,
                target: ban.target.clone(),
                url: request.url.clone(),
                issued_ms: ban.at_ms,
            })
        });
        let metrics = &self.node.metrics.purge;
        let kind = match &ban.target {
            crate::purge::BanTarget::Url { .. } => "url",
            crate::purge::BanTarget::Prefix { .. } => "prefix",
            crate::purge::BanTarget::Tags { .. } => "tags",
            crate::purge::BanTarget::All => "all",
        };
        metrics
            .purges
            .with_label_values(&[kind, if ban.soft { "soft" } else { "hard" }])
            .inc();
        metrics.duration.observe(started.elapsed().as_secs_f64());
        tracing::info!(id = ban.id, soft = ban.soft, target = ?ban.target, "purge");
        let mut answer = serde_json::json!({
            "id": ban.id,
            "soft": ban.soft,
            "target": ban.target,
            "durable": persisted.is_ok(),
        });
        if let Some(fleet) = fleet {
            // "published": in the stream; "queued": kept (on disk) until NATS takes it
            answer["fleet"] = serde_json::Value::String(fleet.as_str().into());
        }
        match persisted {
            Ok(()) => json(StatusCode::OK, &answer),
            Err(e) => {
                tracing::error!(error = %e, "purge applied but not recorded on disk");
                answer["error"] = serde_json::Value::String(format!(
                    "purge applied, but it could not be recorded ({e}): it will not survive a restart"
                ));
                json(StatusCode::INTERNAL_SERVER_ERROR, &answer)
            }
        }
    }

    async fn reload(&self) -> Response<Vec<u8>> {
        let node = self.node.clone();
        match tokio::task::spawn_blocking(move || node.reload()).await {
            Ok(Ok(r)) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "reloaded": true,
                    "rules": r.rules,
                    "origins": r.origins,
                    "restart_required": r.restart_required,
                }),
            ),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "configuration not reloaded");
                json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({ "reloaded": false, "error": e }),
                )
            }
            Err(e) => json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("reload failed: {e}"),
            ),
        }
    }

    /// `GET /top?n=20`: the `n` (1 to the table's capacity, default 20) most requested keys.
    fn top(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let n = match top_count(query) {
            Ok(n) => n,
            Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
        };
        match serde_json::to_value(self.node.top_keys.top(n)) {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    fn status(&self) -> Response<Vec<u8>> {
        let node = &self.node;
        let storage = node.storage;
        json(
            StatusCode::OK,
            &serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "node": node.config.node.name,
                "uptime_seconds": node.started.elapsed().as_secs(),
                "purges_in_force": node.bans.len(),
                "memory": storage.memory().map(|m| serde_json::json!({
                    "objects": m.objects(), "bytes": m.bytes(),
                })),
                "disk": storage.disk().map(|d| serde_json::json!({
                    "objects": d.objects(), "bytes": d.bytes(),
                    "index": if d.index_complete() { "complete" } else { "scanning" },
                })),
                "cluster": node.cluster.as_ref().map(|c| serde_json::json!({
                    "connected": c.connected(),
                    "synced": c.synced(),
                    "outbox": c.queued(),
                })),
                "upstreams": node.routing.load().origins.iter().map(|pool| serde_json::json!({
                    "name": pool.name(),
                    "tier": pool.tier.as_str(),
                    "balance": pool.config.balance.as_str(),
                    "servers": pool.members().iter().enumerate().map(|(i, m)| serde_json::json!({
                        "address": m.label,
                        "healthy": pool.healthy(i),
                        "available": pool.available(i),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }),
        )
    }
}
