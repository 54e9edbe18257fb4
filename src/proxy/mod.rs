//! The request path: Outpost's `ProxyHttp` implementation, hook by hook in the order Pingora
//! calls them. Each hook delegates policy to `rules`, `cache::*` or `upstream`. Beside it:
//! the request's state (`ctx`), the node's own answers (`answers`), the `Cache-Status`
//! decision (`status`), what a finished request records (`access`), invalidation after
//! unsafe methods (`invalidate`) and the errors the path raises (`errors`).

use crate::cache::request::RequestDirectives;
use crate::cache::status::{CacheStatus, Forward};
use crate::cache::vary;
use crate::cache::{entry, freshness, ranges, targeted};
use crate::config::{Balance, Encoding};
use crate::metrics::{
    error_kind, label_index, method_index, DisconnectPhase, Finished, RevalidationOutcome, Source,
    StaleReason,
};
use crate::node::Node;
use crate::node::Routing;
use crate::observe::logging::{LogLimit, LOG_INTERVAL};
use crate::observe::otel::RequestTrace;
use crate::observe::Ids;
use crate::policy::client_ip::client_ip;
use crate::policy::compression;
use crate::policy::connections;
use crate::policy::forwarding;
use crate::policy::hardening::{self, Rejection};
use crate::policy::headers::{self, Via};
use crate::policy::ratelimit::{Outcome, Phase};
use crate::policy::request_line;
use crate::purge::Verdict;
use crate::rules::{key, normalize_host, Rule};
use crate::tls::redirect;
use crate::upstream::{tier, NoServer, Pool, Tier};
use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Method, StatusCode};
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::storage::{PurgeTarget, PurgeType};
use pingora_cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, HitHandler,
    NoCacheReason, RespCacheable,
};
use pingora_core::protocols::http::compression::Algorithm;
use pingora_core::protocols::http::server::Session as ServerSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result, RetryType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{range_header_filter, FailToProxy, ProxyHttp, RangeType, Session};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Most ranges one request may ask for (Pingora's default); more are answered with the whole.
const MAX_RANGES: usize = 200;

/// The most body bytes Pingora reads from an origin at once (its HTTP/1 body buffer).
const ONE_READ: u64 = 64 << 10;

/// What purges say of a stored response ([`OutpostProxy::purged`]).
enum Purged {
    /// A ban of this node covers it.
    Banned(Verdict),
    /// A fleet purge may cover it: validate before use.
    Unconfirmed,
}

/// The Outpost proxy: one per node, shared by every request.
pub struct OutpostProxy {
    node: Arc<Node>,
    via: Via,
    /// Request ids made here.
    ids: Ids,
    /// The warning of a stored response that could not be sent: one line per interval.
    hit_failures: LogLimit,
}

impl OutpostProxy {
    /// A proxy serving `node`.
    pub fn new(node: Arc<Node>) -> Self {
        OutpostProxy {
            via: Via::new(&node.config.node.name),
            ids: Ids::new(),
            hit_failures: LogLimit::new(LOG_INTERVAL),
            node,
        }
    }
}

mod access;
mod answers;
mod ctx;
mod errors;
mod invalidate;
mod partial;
mod status;

use answers::plain_response;
pub use ctx::RequestCtx;
use errors::{client_went_away, no_server_error, total_timeout_error, unreachable, NO_SERVER};
pub use errors::{failure_detail, failure_text};
use invalidate::is_safe;
use status::seconds_between;

fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
        .filter(|h| !h.is_empty())
}

fn cache_key_for(
    rule: &Rule,
    host: &str,
    req: &RequestHeader,
    path: &str,
    query: Option<&str>,
) -> CacheKey {
    key::cache_key(&rule.config.key, host, path, query, &req.headers)
}

impl OutpostProxy {
    /// Whether a request whose current attempt failed may try another server: a shield
    /// failure always may (the next shield, or the origin when shields are down), an origin
    /// failure while the pool's `retries` last.
    fn may_retry(&self, ctx: &RequestCtx) -> bool {
        let Some((p, _)) = ctx.upstream else {
            return false;
        };
        let Some(pool) = ctx.routing.origins.get(p) else {
            return false;
        };
        let tried = ctx.tried_in(p);
        // (not `select`: that would use up a round robin turn, and upstream_peer selects again)
        let another = tried.len() <= pool.config.retries && pool.has_untried(&tried);
        match pool.tier {
            Tier::Shield => another || ctx.routing.shield.direct_when_down,
            Tier::Origin => another,
        }
    }

    /// The encoding negotiated for `req` when compression is on (once per request: kept in
    /// `ctx`).
    fn negotiated(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Option<Encoding> {
        let c = &self.node.config.compression;
        if c.enabled && ctx.encoding.is_none() {
            ctx.encoding = Some(compression::negotiate(
                req.headers.get_all(header::ACCEPT_ENCODING).iter(),
                &c.encodings,
            ));
        }
        ctx.encoding
    }

    /// The cache key an edge sent with this request, if it comes from a trusted edge.
    fn edge_key(session: &Session, ctx: &RequestCtx) -> Option<String> {
        let trusted = &ctx.routing.shield.trusted_edges;
        if trusted.is_empty() {
            return None;
        }
        let value = session.req_header().headers.get(tier::CACHE_KEY)?;
        let peer = session.client_addr()?.as_inet()?.ip();
        if !trusted.iter().any(|net| net.contains(&peer)) {
            return None;
        }
        tier::decode_key(value)
    }

    /// The key a request is looked up under: a trusted edge's, else its rule's.
    fn lookup_key(&self, session: &Session, ctx: &RequestCtx) -> CacheKey {
        if let Some(primary) = ctx.edge_key.clone() {
            // a trusted edge's key: both tiers store the object under one key
            let hash = pingora_cache::key::hash_key(&primary);
            let mut key = CacheKey::new(primary, String::new());
            key.set_primary_bin_override(hash);
            return key;
        }
        let req = session.req_header();
        cache_key_for(ctx.rule(), &ctx.host, req, req.uri.path(), req.uri.query())
    }

    /// What purges say of the stored response `meta` under primary key `primary`: a ban newer
    /// than it covers it (nothing to look at without bans), or, failing that, fleet purges this
    /// node may not have received yet (starting, or partitioned) may cover it.
    fn purged(&self, primary: &str, meta: &CacheMeta) -> Option<Purged> {
        let confirmed = entry::confirmed_at(meta);
        let bans = &self.node.bans;
        if !bans.is_empty() {
            if let Some(verdict) = bans.check(primary, confirmed, meta.headers()) {
                return Some(Purged::Banned(verdict));
            }
        }
        let cluster = self.node.cluster.as_ref();
        cluster
            .is_some_and(|c| c.must_revalidate(confirmed))
            .then_some(Purged::Unconfirmed)
    }

    /// The hash a request is placed by (ketama): its primary cache key (computed as its rule
    /// composes it when the cache is not involved: bypass rules, unsafe methods, keys
    /// predicted uncacheable), so one object always goes to one server.
    fn placement(session: &Session, ctx: &RequestCtx) -> [u8; 16] {
        if let Some(key) = session.cache.maybe_cache_key() {
            return key.primary_bin();
        }
        let req = session.req_header();
        cache_key_for(ctx.rule(), &ctx.host, req, req.uri.path(), req.uri.query()).primary_bin()
    }
}

#[async_trait]
impl ProxyHttp for OutpostProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.node.routing.load_full())
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        connections::header_received();
        if let ServerSession::H1(h1) = &mut *session.downstream_session {
            // HTTP/1.1 pipelining (RFC 9112 9.3.2), as nginx: requests sent ahead are answered
            // one after the other, in order (Pingora's default closes the connection instead)
            h1.set_pipelining_enabled(true);
        }
        Ok(())
    }

    /// Client requests may start one: the background fetch of a whole object whose range was
    /// not kept as a part (src/proxy/partial.rs).
    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &RequestCtx) -> bool {
        session.subrequest_ctx.is_none() && self.node.storage.parts().is_some()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if session.subrequest_ctx.is_some() {
            Self::whole_fetch_request(session);
        }
        if let Some(tracing) = &self.node.tracing {
            let parent = session.req_header().headers.get("traceparent");
            ctx.trace = Some(tracing.begin(parent.and_then(|v| v.to_str().ok())));
        }
        if session
            .as_http1()
            .is_some_and(request_line::target_rewritten)
        {
            self.reject(session, ctx, Rejection::Malformed).await?;
            return Ok(true);
        }
        let limits = &self.node.config.limits;
        let raw = session
            .req_header()
            .headers
            .contains_key(header::TRANSFER_ENCODING)
            .then(|| session.as_http1().map(|h1| h1.get_headers_raw_bytes()))
            .flatten();
        if let Err(rejection) =
            hardening::check_request(limits, session.req_header(), raw.as_deref())
        {
            self.reject(session, ctx, rejection).await?;
            return Ok(true);
        }
        // between reads of the request body (the header's deadline is the listener's)
        session.set_read_timeout(Some(limits.body_timeout));
        let req = session.req_header();
        let host = match request_host(req) {
            Some(host) => host,
            // HTTP/1.0 predates Host: such requests share the host-less key space.
            None if req.version <= http::Version::HTTP_10 => "",
            // RFC 9112 3.2: an HTTP/1.1 request without Host gets a 400.
            None => {
                self.reject(session, ctx, Rejection::MissingHost).await?;
                return Ok(true);
            }
        };
        ctx.host = normalize_host(host).into_owned();
        if let Some(name) = &self.node.config.access_log.request_id_header {
            ctx.request_id = Some(crate::observe::request_id(
                req.headers.get(name).map(|v| v.as_bytes()),
                &self.ids,
            ));
        }
        if tier::passed(&req.headers, &self.node.config.node.name) {
            self.reject(session, ctx, Rejection::Loop).await?;
            return Ok(true);
        }
        ctx.edge_key = Self::edge_key(session, ctx);
        // forwarding fields as the origin will see them, before the key and Vary read them
        forwarding::settle(session, &ctx.routing, &ctx.host)?;
        let req = session.req_header();
        ctx.rule = ctx
            .routing
            .rules
            .matching(&req.method, &ctx.host, req.uri.path());
        if redirect::wanted(session, ctx.rule().config.redirect_https, &ctx.host) {
            self.redirect_to_https(session, ctx).await?;
            return Ok(true);
        }
        if self.rate_limit(session, ctx, Phase::Every).await? {
            return Ok(true);
        }
        self.answer_from_parts(session, ctx).await
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let req = session.req_header();
        if !matches!(req.method, Method::GET | Method::HEAD) {
            ctx.forward = Some(Forward::Method);
            return Ok(());
        }
        if !ctx.rule().caches() {
            ctx.forward = Some(Forward::Bypass);
            return Ok(());
        }
        ctx.directives = RequestDirectives::parse(req);
        let cache = &self.node.config.cache;
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(cache.lock_wait_timeout);
        session.cache.enable(
            self.node.storage,
            None,
            Some(self.node.predictor),
            Some(self.node.cache_lock),
            Some(overrides),
        );
        session
            .cache
            .set_max_file_size_bytes(cache.largest_object() as usize);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        Ok(self.lookup_key(session, ctx))
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut RequestCtx) {
        ctx.miss = Some(if ctx.vary_seen {
            Forward::VaryMiss
        } else {
            Forward::UriMiss
        });
        session.cache.cache_miss();
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        ctx.hit_source = Some(if crate::cache::is_memory_hit(hit_handler) {
            Source::Memory
        } else {
            Source::Disk
        });
        let primary = session.cache.cache_key().primary_key_str();
        match self.purged(primary.unwrap_or_default(), meta) {
            Some(Purged::Banned(Verdict::Gone)) => {
                self.node.metrics.purge.purged_lookups.inc();
                ctx.not_stored = None;
                return Ok(Some(ForcedFreshness::ForceMiss));
            }
            Some(Purged::Banned(Verdict::Stale { since })) => {
                self.node.metrics.purge.purged_lookups.inc();
                ctx.was_stale = true;
                ctx.revalidating = true;
                return Ok(Some(ForcedFreshness::ForceExpiredServeStale {
                    expired_at: Some(since),
                }));
            }
            Some(Purged::Unconfirmed) => {
                ctx.was_stale = true;
                ctx.revalidating = true;
                return Ok(Some(ForcedFreshness::ForceExpired));
            }
            None => {}
        }
        let req = session.req_header();
        if req.headers.contains_key(header::AUTHORIZATION)
            && !ctx.rule().config.cacheable.authorized
            && !freshness::servable_to_authorized(meta.headers(), &ctx.rule().config.ttl.targeted)
        {
            ctx.forward = Some(Forward::Request);
            ctx.not_stored = Some("authorization");
            return Ok(Some(ForcedFreshness::ForceMiss));
        }
        let d = ctx.directives;
        let now = SystemTime::now();
        if d.forces_validation(
            meta.age(),
            is_fresh,
            seconds_between(meta.fresh_until(), now),
        ) {
            ctx.forward = Some(Forward::Request);
            ctx.revalidating = true;
            return Ok(Some(ForcedFreshness::ForceExpired));
        }
        if !is_fresh {
            if let Some(max_stale) = d.max_stale {
                let staleness = seconds_between(now, meta.fresh_until());
                if !freshness::forbids_stale(meta.headers(), &ctx.rule().config.ttl.targeted)
                    && max_stale.is_none_or(|m| staleness <= i64::from(m))
                {
                    ctx.stale = Some((StaleReason::MaxStale, None));
                    return Ok(Some(ForcedFreshness::ForceFresh));
                }
            }
            // The origin failed moments ago: within the stale-if-error window, answer stale
            // without asking it again, so an outage does not pile requests onto it.
            if freshness::within_stale_if_error(meta, &ctx.rule().config, now)
                && ctx.origin().is_some_and(Pool::is_failing)
            {
                ctx.stale = Some((StaleReason::IfError, None));
                return Ok(Some(ForcedFreshness::ForceFresh));
            }
            ctx.was_stale = true;
            ctx.revalidating = true;
        }
        Ok(None)
    }

    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> RangeType {
        let from_cache = matches!(
            session.cache.phase(),
            CachePhase::Hit | CachePhase::Stale | CachePhase::StaleUpdating
        );
        let filling = matches!(
            session.cache.phase(),
            CachePhase::Miss | CachePhase::Expired
        );
        if filling
            && session.cache.enabled()
            && !session
                .cache
                .support_streaming_partial_write()
                .unwrap_or(false)
            && ranges::announced_length(&resp.headers).is_none_or(|len| len > ONE_READ)
        {
            // A fill the client reads straight from the origin (no streaming fills): Pingora
            // stops reading the origin once the client's range is sent, and a fill longer than
            // one read would be lost. The client gets the whole response instead (RFC 9110
            // 14.2 allows it), and the object is stored.
            return RangeType::None;
        }
        if from_cache && !resp.headers.contains_key(header::CONTENT_LENGTH) {
            // stored complete from a chunked origin response: its length is known now
            if let Some(len) = ranges::stored_body_len(session.cache.hit_handler()) {
                resp.remove_header(&header::TRANSFER_ENCODING);
                if resp.insert_header(header::CONTENT_LENGTH, len).is_err() {
                    return RangeType::None;
                }
            }
        }
        let req = session.req_header();
        if let Some(if_range) = req.headers.get(header::IF_RANGE) {
            if !ranges::if_range_allows(if_range, resp) {
                return RangeType::None;
            }
        }
        range_header_filter(req, resp, Some(MAX_RANGES))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let encoding = self.negotiated(req, ctx);
        let variance = vary::variance(meta.headers(), req, encoding.map(Encoding::token));
        if variance.is_some() {
            ctx.vary_seen = true;
        }
        variance
    }

    /// RFC 5861 as Pingora asks it: `error` is `None` for stale-while-revalidate (the stored
    /// response's window, already checked, allows it: serve stale, one background request
    /// revalidates), else the failure for stale-if-error, which covers an unreachable or
    /// timed-out origin and 500/502/503/504 (RFC 5861 4), not other errors, within the
    /// response's window; past it, only an origin that cannot be reached at all, for a response
    /// that may be served stale when disconnected (RFC 9111 4.2.4, [`freshness::DISCONNECTED`])
    /// to a request that did not ask for validation.
    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        let Some(error) = error else {
            ctx.stale = Some((StaleReason::WhileRevalidate, None));
            return true;
        };
        let status = match error.etype() {
            ErrorType::HTTPStatus(code @ (500 | 502 | 503 | 504)) => Some(*code),
            ErrorType::HTTPStatus(_) => return false,
            _ if error.esource() == &ErrorSource::Upstream => None,
            _ => return false,
        };
        if let Some(pool) = ctx.upstream_pool().or(ctx.origin()) {
            pool.record_failure();
        }
        let Some(meta) = session.cache.maybe_cache_meta() else {
            return false;
        };
        let rule = &ctx.rule().config;
        let reason = if freshness::within_stale_if_error(meta, rule, SystemTime::now()) {
            StaleReason::IfError
        } else if status.is_none()
            && unreachable(error)
            && meta.stale_if_error_sec() == freshness::DISCONNECTED
            // a reload may have turned it off since the object was stored
            && rule.stale.disconnected
            // the client asked for validation (no-cache, max-age, min-fresh): 4.2.4
            && ctx.forward != Some(Forward::Request)
        {
            StaleReason::Disconnected
        } else {
            return false;
        };
        ctx.stale = Some((reason, status));
        true
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        if ctx.directives.only_if_cached && session.cache.enabled() {
            // RFC 9111 5.2.1.7: nothing usable stored -> 504, never the origin.
            let status = CacheStatus::Forward {
                fwd: ctx.miss.unwrap_or(Forward::UriMiss),
                status: None,
                stored: false,
                detail: Some("only-if-cached"),
            };
            let mut resp = ResponseHeader::build(StatusCode::GATEWAY_TIMEOUT, Some(3))?;
            resp.insert_header(header::CONTENT_LENGTH, "0")?;
            resp.insert_header("cache-status", status.render(&self.node.config.node.name))?;
            session
                .cache
                .disable(NoCacheReason::Custom("only-if-cached"));
            session.write_response_header(Box::new(resp), true).await?;
            ctx.cache_status = Some(status);
            return Ok(false);
        }
        if self.rate_limit(session, ctx, Phase::Misses).await? {
            session.cache.disable(NoCacheReason::Custom("rate-limited"));
            return Ok(false);
        }
        self.plan_partial(session, ctx);
        ctx.origin_start = Some(Instant::now());
        Ok(true)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        ctx.request_body_ended = end_of_stream;
        if ctx.body_bytes > self.node.config.limits.max_body_bytes {
            // a chunked body past the limit (a declared length was checked up front)
            self.count_rejection(session, ctx, Rejection::BodyTooLarge);
            session.set_keepalive(None);
            return Error::e_explain(
                ErrorType::HTTPStatus(413),
                "request body larger than limits.max_body_bytes",
            );
        }
        Ok(())
    }

    /// The shield chosen by consistent hashing of the cache key (the next one on the ring if
    /// it is down or failed), else the rule's origin pool, skipping servers already tried.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let routing = ctx.routing.clone();
        let key = match ctx.placement {
            Some(key) => key,
            None => {
                // only consistent hashing reads the key: round robin goes without hashing it
                let shield = routing.shield.origin.filter(|_| ctx.rule().config.shield);
                let hashed = shield
                    .into_iter()
                    .chain([ctx.rule().config.origin])
                    .filter_map(|i| routing.origins.get(i))
                    .any(|p| p.config.balance == Balance::Ketama);
                let key = if hashed {
                    Self::placement(session, ctx)
                } else {
                    [0; 16]
                };
                ctx.placement = Some(key);
                key
            }
        };
        ctx.failure_counted = false;
        if let Some(si) = routing
            .shield
            .origin
            .filter(|_| ctx.rule().config.shield && !ctx.shield_down)
        {
            let shields = &routing.origins[si];
            let tried = ctx.tried_in(si);
            let pick = if tried.len() > shields.config.retries {
                Err(NoServer::Exhausted)
            } else {
                shields.select(&key, &tried)
            };
            match pick {
                Ok(m) => {
                    ctx.upstream = Some((si, m));
                    if !tried.is_empty() {
                        shields.count_retry();
                    }
                    return shields.peer(m).ok_or_else(|| {
                        Error::explain(ErrorType::InternalError, "shield server missing")
                    });
                }
                Err(why) if routing.shield.direct_when_down => {
                    ctx.shield_down = true;
                    self.node.metrics.shield_bypassed.inc();
                    tracing::info!(host = %ctx.host, ?why, "no shield reachable: fetching from the origin directly");
                }
                Err(why) => {
                    ctx.upstream = None;
                    ctx.no_shield = true;
                    return Err(no_server_error(shields, why));
                }
            }
        }
        let oi = ctx.rule().config.origin;
        let Some(pool) = routing.origins.get(oi) else {
            return Error::e_explain(ErrorType::InternalError, "rule refers to a missing origin");
        };
        let tried = ctx.tried_in(oi);
        match pool.select(&key, &tried) {
            Ok(m) => {
                ctx.upstream = Some((oi, m));
                if !tried.is_empty() {
                    pool.count_retry();
                }
                pool.peer(m).ok_or_else(|| {
                    Error::explain(ErrorType::InternalError, "origin server missing")
                })
            }
            Err(why) => {
                ctx.upstream = None;
                Err(no_server_error(pool, why))
            }
        }
    }

    /// A connection could not be made: the server's failure counts for passive health, and
    /// the request (not sent yet, whatever its method) goes to another server if the pool
    /// has retries left (or, from a shield, to the next shield or the origin).
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.server_failed(error_kind(e.etype()));
        e.set_retry(self.may_retry(ctx));
        e
    }

    /// An error after connecting: retried on another server only for an idempotent request
    /// whose body can be replayed, and only before the response header arrived.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let before_response = ctx.upstream_status.is_none();
        let from_upstream = e.esource() == &ErrorSource::Upstream;
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        if from_upstream
            && before_response
            && client_reused
            && matches!(e.retry, RetryType::ReusedOnly)
        {
            // a pooled connection the server had already closed: not the server's failure;
            // a replayable request is sent again on a fresh connection
            e.set_retry(replayable);
            return e;
        }
        if from_upstream && before_response {
            ctx.server_failed(error_kind(e.etype()));
        }
        if !replayable || !before_response || !from_upstream {
            e.set_retry(false);
        } else {
            e.set_retry(self.may_retry(ctx));
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // first: a client must not be able to name our own fields for removal
        for name in hardening::hop_by_hop(&upstream.headers) {
            upstream.remove_header(&name);
        }
        // only this node says which key it stores under
        upstream.remove_header(tier::CACHE_KEY);
        if ctx.via_shield() {
            // the shield routes by the client's Host and stores under this node's key
            if let Some(key) = session.cache.maybe_cache_key() {
                if let Some(primary) = key.primary_key_str() {
                    upstream.insert_header(tier::CACHE_KEY, tier::encode_key(primary))?;
                }
            }
        } else if let Some(host) = ctx.upstream_pool().and_then(|o| o.config.host.as_ref()) {
            upstream.insert_header(header::HOST, host.as_str())?;
        }
        if let Some((name, id)) = self.request_id_field(ctx) {
            upstream.insert_header(name.clone(), id)?;
        }
        if let Some(trace) = &ctx.trace {
            // the origin's span continues this node's fetch span
            upstream.insert_header("traceparent", trace.upstream_traceparent())?;
        }
        let name = &self.node.config.node.name;
        let cdn_loop = tier::cdn_loop_value(&upstream.headers, name);
        upstream.insert_header(tier::CDN_LOOP, cdn_loop)?;
        forwarding::forward(session, upstream)?;
        if self.node.config.node.via {
            let via = self.via.value(
                session.req_header().version,
                upstream.headers.get_all(header::VIA),
            );
            upstream.insert_header(header::VIA, via)?;
        }
        headers::apply_request(&ctx.routing.headers.request, upstream)?;
        headers::apply_request(&ctx.rule().config.headers.request, upstream)?;
        Self::partial_request(ctx, upstream)?;
        if let Some(encoding) = self.negotiated(session.req_header(), ctx) {
            // the origin is asked for this client's variant only; what it cannot encode,
            // Pingora's upstream compression does before the body is stored
            upstream.insert_header(header::ACCEPT_ENCODING, encoding.token())?;
            let c = &self.node.config.compression;
            let module = &mut session.upstream_compression;
            module.adjust_algorithm_level(Algorithm::Brotli, c.brotli_level);
            module.adjust_algorithm_level(Algorithm::Gzip, c.gzip_level);
            module.adjust_algorithm_level(Algorithm::Zstd, c.zstd_level);
            module.adjust_decompression(true);
        }
        Ok(())
    }

    async fn adjust_upstream_modules(
        &self,
        session: &mut Session,
        resp: &ResponseHeader,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(encoding) = ctx.encoding else {
            return Ok(());
        };
        if resp.status.is_informational() {
            return Ok(());
        }
        let module = &mut session.upstream_compression;
        ctx.origin_encoded = resp.headers.contains_key(header::CONTENT_ENCODING);
        if resp.status != StatusCode::OK {
            // no transformation of partial, error or redirect bodies
            module.adjust_level(0);
            module.adjust_decompression(false);
            return Ok(());
        }
        ctx.compressible = compression::eligible(&self.node.config.compression, resp);
        if !ctx.compressible {
            // decoding for a client that cannot read the origin's encoding stays on
            module.adjust_level(0);
        } else if !ctx.origin_encoded && encoding != Encoding::Identity {
            ctx.compressing = Some((encoding, ranges::announced_length(&resp.headers)));
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        ctx.upstream_status = Some(status);
        ctx.origin_header = Some(Instant::now());
        // RFC 9110 2.5: we answer with our own HTTP version, whatever the origin spoke.
        resp.set_version(http::Version::HTTP_11);
        // fields about the origin's connection are neither stored nor passed on
        for name in hardening::hop_by_hop(&resp.headers) {
            resp.remove_header(&name);
        }
        if ctx.compressible || ctx.origin_encoded {
            // every variant of it (identity too) depends on what the client accepts
            vary::add(resp, "accept-encoding")?;
        }
        if let Some((encoding, _)) = ctx.compressing {
            let produced = resp.headers.get(header::CONTENT_ENCODING).is_some_and(|v| {
                v.as_bytes()
                    .eq_ignore_ascii_case(encoding.token().as_bytes())
            });
            if produced {
                self.node.metrics.policy.compressed(encoding.token());
            } else {
                ctx.compressing = None;
            }
        }
        if let Some(pool) = ctx.upstream_pool() {
            if matches!(status, 500 | 502 | 503 | 504) {
                pool.record_failure();
            }
            if ctx.origin_start.is_some_and(|s| pool.past_total_timeout(s)) {
                pool.record_failure();
                return Err(total_timeout_error());
            }
        }
        Self::partial_response(resp, ctx)?;
        if status == 304 {
            // Pingora merges only a few fields of a 304 into the stored header; keep them all
            // for response_cache_filter (RFC 9111 4.3.4).
            ctx.not_modified = Some(resp.headers.clone());
        }
        if let (Some(start), Some((p, m))) = (ctx.origin_start, ctx.upstream) {
            if let Some(pool) = ctx.routing.origins.get(p) {
                pool.server_answered(m, status, start.elapsed().as_secs_f64());
            }
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some((encoding, origin_len)) = ctx.compressing {
            if end_of_stream && encoding == Encoding::Brotli {
                // Pingora's brotli encoder ends with a flush, not a finished stream (strict
                // decoders refuse it); after a flush the stream is byte-aligned, and one empty
                // last meta-block (ISLAST, ISLASTEMPTY: 0x03) ends it properly
                let mut last = body.take().map(Vec::from).unwrap_or_default();
                last.push(0x03);
                *body = Some(Bytes::from(last));
            }
            let out = body.as_ref().map_or(0, |b| b.len() as u64);
            self.node.metrics.policy.compression_bytes(
                encoding.token(),
                out,
                end_of_stream.then_some(origin_len).flatten(),
            );
        }
        if let (Some(pool), Some(start)) = (ctx.upstream_pool(), ctx.origin_start) {
            if pool.past_total_timeout(start) {
                pool.record_failure();
                return Err(total_timeout_error());
            }
        }
        Ok(None)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        if let Some(decided) = self.partial_storage(session, resp, ctx) {
            return Ok(decided);
        }
        if resp.status == StatusCode::PARTIAL_CONTENT {
            // a part is never the URL's response (RFC 9111 3.3), whatever it was sent for
            ctx.not_stored = Some(partial::RANGE_ANSWER);
            return Ok(RespCacheable::Uncacheable(NoCacheReason::Custom(
                partial::RANGE_ANSWER,
            )));
        }
        let now = SystemTime::now();
        let heuristic_max = self.node.config.cache.heuristic_max_ttl;
        let merged = match ctx.not_modified.take() {
            Some(fields) if resp.status != StatusCode::NOT_MODIFIED => {
                Some(freshness::merge_not_modified(resp, &fields))
            }
            _ => None,
        };
        let resp = merged.as_ref().unwrap_or(resp);
        match freshness::decide(
            session.req_header(),
            resp,
            &ctx.rule().config,
            heuristic_max,
            now,
        ) {
            Ok(decision) => {
                ctx.not_stored = None;
                ctx.decided_by = decision.targeted.as_ref().map(targeted::detail);
                // the newest stored response is the one used (RFC 9111 4): parts of the URL
                // from before it go
                self.drop_parts(session);
                Ok(RespCacheable::Cacheable(freshness::build_meta(
                    resp, &decision, now,
                )))
            }
            Err(reason) => {
                ctx.not_stored = Some(reason);
                Ok(RespCacheable::Uncacheable(NoCacheReason::Custom(reason)))
            }
        }
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.first_byte = Some(ctx.start.elapsed());
        let status = self.cache_status(session, ctx);
        let ours = status.render(&self.node.config.node.name);
        let value = crate::cache::status::after_upstream(resp.headers.get("cache-status"), ours);
        resp.insert_header("cache-status", value)?;
        if let Some((name, id)) = self.request_id_field(ctx) {
            resp.insert_header(name.clone(), id)?;
        }
        if session.req_header().version == http::Version::HTTP_10
            && resp.headers.contains_key(header::TRANSFER_ENCODING)
        {
            // HTTP/1.0 has no chunked coding (RFC 9112 7.1): Pingora chunks a response without
            // a length for every client (and passes an origin's chunks on); this one gets the
            // body as it is, ended by closing the connection (RFC 9112 6.3)
            resp.remove_header(&header::TRANSFER_ENCODING);
            session.downstream_session.set_keepalive(None);
        }
        if matches!(status, CacheStatus::StaleOnError { .. }) {
            // Pingora drops the client connection after serving stale for a failed fetch; say
            // so, or the client reuses it and its next request dies on a reset
            session.downstream_session.set_keepalive(None);
        }
        if !ctx.limits.is_empty() {
            let limits = &ctx.routing.limits;
            resp.insert_header("ratelimit-policy", limits.policy_field(&ctx.limits))?;
            resp.insert_header("ratelimit", limits.state_field(&ctx.limits))?;
        }
        // purge tags are for this cache, not for clients (they stay in the stored copy); an
        // edge below this shield stores them too, so that tag purges reach its copy
        let purge = &self.node.config.purge;
        let to_client = ctx.edge_key.is_none();
        if purge.strip_tag_headers && to_client {
            for name in &purge.tag_headers {
                resp.remove_header(name);
            }
        }
        if to_client {
            // node-specific targeted fields (RFC 9213) are for this tier of caches only
            for name in &self.node.config.cache.strip_targeted {
                resp.remove_header(name);
            }
        }
        if self.node.config.node.via {
            let via = self
                .via
                .value(resp.version, resp.headers.get_all(header::VIA));
            resp.insert_header(header::VIA, via)?;
        }
        headers::apply_response(&ctx.routing.headers.response, resp)?;
        headers::apply_response(&ctx.rule().config.headers.response, resp)?;
        ctx.cache_status = Some(status);
        if !is_safe(&session.req_header().method)
            && (resp.status.is_success() || resp.status.is_redirection())
        {
            self.invalidate_after_unsafe(session, resp, ctx).await;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        self.partial_body(body, ctx);
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::Custom(NO_SERVER) => 503,
            // the client's body stalled past limits.body_timeout
            ErrorType::ReadTimedout if e.esource() == &ErrorSource::Downstream => {
                self.count_rejection(session, ctx, Rejection::BodyTimeout);
                408
            }
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                // No one left to answer.
                ErrorSource::Downstream if client_went_away(e) => 0,
                ErrorSource::Downstream => 400,
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if e.esource() == &ErrorSource::Upstream {
            if let Some((p, m)) = ctx.upstream {
                if !ctx.failure_counted {
                    if let Some(server) = ctx.routing.origins.get(p).and_then(|o| o.member(m)) {
                        server.metrics.error(error_kind(e.etype()));
                    }
                }
            }
            if let Some(pool) = ctx.upstream_pool().or(ctx.origin()) {
                pool.record_failure();
            }
        }
        let status = CacheStatus::Forward {
            fwd: ctx
                .forward
                .or(ctx.was_stale.then_some(Forward::Stale))
                .or(ctx.miss)
                .unwrap_or(Forward::Miss),
            status: None,
            stored: false,
            detail: Some(failure_detail(code)),
        };
        if code > 0 {
            let shield = ctx.via_shield() || ctx.no_shield;
            let body = failure_text(code, shield);
            let written = async {
                let mut resp = plain_response(code, body.len())?;
                resp.insert_header("cache-status", status.render(&self.node.config.node.name))?;
                session
                    .as_downstream_mut()
                    .write_error_response(resp, Bytes::from_static(body.as_bytes()))
                    .await
            }
            .await;
            if let Err(err) = written {
                tracing::debug!(error = %err, "could not send error response");
            }
        }
        // a client gone is counted and logged in `logging` (record_failure)
        if !client_went_away(e) {
            let path = session.req_header().uri.path();
            tracing::warn!(error = %e, status = code, host = %ctx.host, path, "request failed");
            ctx.failure_logged = true;
        }
        ctx.upstream_status = None;
        ctx.cache_status = Some(status);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Pingora pairs this with `fail_to_proxy`, which already logs every failure once (and
    /// client disconnects only at debug level): Pingora's own line would be a duplicate.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(e) = e {
            self.record_failure(session, e, ctx);
        }
        self.record_finished(session, ctx);
    }
}
