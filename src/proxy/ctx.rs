//! The state one request carries from hook to hook.

use super::*;

/// Per-request state carried between hooks.
pub struct RequestCtx {
    pub(super) start: Instant,
    /// Rules and origins as they were when the request started (a reload swaps them).
    pub(super) routing: Arc<Routing>,
    pub(super) rule: Option<usize>,
    pub(super) host: String,
    pub(super) directives: RequestDirectives,
    /// Why the request goes forward, when decided before lookup (bypass, method, request).
    pub(super) forward: Option<Forward>,
    /// The stored response was stale when looked up.
    pub(super) was_stale: bool,
    /// A stored response exists and the origin is asked to validate or replace it.
    pub(super) revalidating: bool,
    /// Why a stale response was served, and the origin's error status for stale-if-error.
    pub(super) stale: Option<(StaleReason, Option<u16>)>,
    /// `cache_vary_filter` found a Vary'd response during lookup.
    pub(super) vary_seen: bool,
    /// Set by `cache_miss`: uri-miss or vary-miss.
    pub(super) miss: Option<Forward>,
    /// Why the response was not stored.
    pub(super) not_stored: Option<&'static str>,
    pub(super) upstream_status: Option<u16>,
    /// Header fields of an origin 304, merged into the stored header on revalidation.
    pub(super) not_modified: Option<http::HeaderMap>,
    pub(super) origin_start: Option<Instant>,
    pub(super) cache_status: Option<CacheStatus>,
    /// Verdicts of the rate limits that counted this request.
    pub(super) limits: Vec<Outcome>,
    /// Answered by traffic policy (a 429, a refused request) without the cache.
    pub(super) refused: bool,
    /// Request body bytes received so far.
    pub(super) body_bytes: u64,
    /// The encoding negotiated for this client (compression on), once asked for.
    pub(super) encoding: Option<Encoding>,
    /// This response is one the node compresses (by type and size): it varies on
    /// `Accept-Encoding` whatever this client got.
    pub(super) compressible: bool,
    /// The node encoded this response body: (encoding, the origin's Content-Length if known).
    pub(super) compressing: Option<(Encoding, Option<u64>)>,
    /// The origin's `Content-Encoding` header was present.
    pub(super) origin_encoded: bool,
    /// The server this attempt goes to: (index into `routing.origins`, server index).
    pub(super) upstream: Option<(usize, usize)>,
    /// Servers already tried for this request (failed to connect or before the response).
    pub(super) tried: Vec<(usize, usize)>,
    /// No shield could be reached: this request goes to its origin directly.
    pub(super) shield_down: bool,
    /// No shield could be reached and `direct_when_down` is off: this request fails.
    pub(super) no_shield: bool,
    /// The current attempt's failure was counted (passive health, error metric).
    pub(super) failure_counted: bool,
    /// `fail_to_proxy` logged this request's failure.
    pub(super) failure_logged: bool,
    /// The request body was read to its end.
    pub(super) request_body_ended: bool,
    /// The hash this request is placed by (ketama), once computed.
    pub(super) placement: Option<[u8; 16]>,
    /// When the response header went out (set in `response_filter`).
    pub(super) first_byte: Option<Duration>,
    /// The storage tier a hit was read from.
    pub(super) hit_source: Option<Source>,
    /// This request's id (`access_log.request_id_header`).
    pub(super) request_id: Option<String>,
    /// When the upstream response header arrived.
    pub(super) origin_header: Option<Instant>,
    /// The request's trace, when tracing is on.
    pub(super) trace: Option<RequestTrace>,
    /// The targeted cache-control field (RFC 9213) that decided how the response is stored.
    pub(super) decided_by: Option<&'static str>,
    /// The cache key a trusted edge sent (this node is its shield), decoded once.
    pub(super) edge_key: Option<String>,
    /// A range request on the partial path (parts of 206 responses).
    pub(super) partial: Option<partial::Partial>,
    /// Answered from held parts: their remaining freshness in seconds.
    pub(super) from_parts: Option<i64>,
}

impl RequestCtx {
    /// The state of a request starting now, under `routing`.
    pub(super) fn new(routing: Arc<Routing>) -> Self {
        RequestCtx {
            start: Instant::now(),
            routing,
            rule: None,
            host: String::new(),
            directives: RequestDirectives::default(),
            forward: None,
            was_stale: false,
            revalidating: false,
            stale: None,
            vary_seen: false,
            miss: None,
            not_stored: None,
            upstream_status: None,
            not_modified: None,
            origin_start: None,
            cache_status: None,
            limits: Vec::new(),
            refused: false,
            body_bytes: 0,
            encoding: None,
            compressible: false,
            compressing: None,
            origin_encoded: false,
            upstream: None,
            tried: Vec::new(),
            shield_down: false,
            no_shield: false,
            failure_counted: false,
            failure_logged: false,
            request_body_ended: false,
            placement: None,
            first_byte: None,
            hit_source: None,
            request_id: None,
            origin_header: None,
            trace: None,
            decided_by: None,
            edge_key: None,
            partial: None,
            from_parts: None,
        }
    }

    pub(super) fn rule(&self) -> &Rule {
        self.routing.rules.get(self.rule)
    }

    /// The origin this request's rule fetches from.
    pub(super) fn origin(&self) -> Option<&Pool> {
        self.routing.origins.get(self.rule().config.origin)
    }

    /// The pool of the server the current attempt goes to (origin or shield).
    pub(super) fn upstream_pool(&self) -> Option<&Pool> {
        self.upstream.and_then(|(p, _)| self.routing.origins.get(p))
    }

    /// Whether the current attempt goes to a shield node.
    pub(super) fn via_shield(&self) -> bool {
        self.upstream_pool().is_some_and(|p| p.tier == Tier::Shield)
    }

    /// Servers of pool `pool` already tried.
    pub(super) fn tried_in(&self, pool: usize) -> Vec<usize> {
        self.tried
            .iter()
            .filter(|(p, _)| *p == pool)
            .map(|(_, m)| *m)
            .collect()
    }

    /// The current attempt failed at its server (connect, timeout, reset): count it for
    /// passive health once, and remember the server as tried.
    pub(super) fn server_failed(&mut self, kind: &str) {
        if let Some((p, m)) = self.upstream {
            if !self.failure_counted {
                self.failure_counted = true;
                if let Some(pool) = self.routing.origins.get(p) {
                    pool.server_failed(m, kind);
                }
            }
            if !self.tried.contains(&(p, m)) {
                self.tried.push((p, m));
            }
        }
    }
}
