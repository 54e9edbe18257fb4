//! The admin and metrics listeners: never on the data path.
//!
//! Admin: `GET /healthz` and `GET /readyz` are open (for probes); every other route needs
//! `Authorization: Bearer <token>` (compared in constant time). Purge and reload land here in
//! later issues. Metrics: `GET /metrics` in the Prometheus text format.

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
            "/healthz" | "/readyz" if method == Method::GET => {
                respond(StatusCode::OK, "application/json", r#"{"status":"ok"}"#)
            }
            "/healthz" | "/readyz" => json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
            _ if !self.authorized(session) => {
                tracing::info!(path, "admin call refused: missing or wrong bearer token");
                let mut resp =
                    json_error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                resp
            }
            _ => json_error(StatusCode::NOT_FOUND, "unknown admin route"),
        }
    }
}
