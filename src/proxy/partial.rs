//! Partial content on the request path (RFC 9111 3.3 and 3.4, RFC 9110 14). A GET with one
//! byte range that the cache cannot answer from a complete object:
//!
//! 1. is answered from held parts (`cache::partial`) when they are fresh and cover it
//!    ([`OutpostProxy::answer_from_parts`], before the cache lookup, so it waits for no fill);
//! 2. else goes to the origin as a range: the client's own, or with parts held, only the span
//!    they lack, with `If-Range` naming their validator so that a changed representation comes
//!    back whole (a 200, stored as any other) and never gets stitched to older bytes;
//! 3. the origin's 206 goes to the client with the held bytes around it
//!    (`Content-Range` of the client's range), and is kept as a part when the complete response
//!    would be storable and has a strong validator; parts that cover the whole are stored as a
//!    complete object in the tiers.
//!
//! Requests with credentials or other preconditions, several ranges, HEAD, and rules that do
//! not cache go Pingora's whole-object way (the Range is dropped, the whole fetched and stored).

use super::*;
use crate::cache::partial::{concat, ContentRange, Parts, RangeSpec, Validator};
use crate::cache::tiered::Arriving;
use http::HeaderValue;
use pingora_cache::storage::Storage;

pub(super) use crate::cache::partial::{PARTIAL, RANGE_ANSWER};

/// What a request does about parts, decided before the upstream request.
pub(super) enum Plan {
    /// Nothing usable held: the client's range goes to the origin as asked.
    Forward {
        range: HeaderValue,
        if_range: Option<HeaderValue>,
    },
    /// Held parts have some of `range` (inclusive): the origin is asked for `fetch` only.
    Splice {
        parts: Arc<Parts>,
        range: (u64, u64),
        fetch: (u64, u64),
    },
}

/// Parts a request may use ([`OutpostProxy::held_parts`]).
struct Held {
    parts: Arc<Parts>,
    /// The complete response's meta, as they stand.
    meta: CacheMeta,
    /// Fresh, not under a purge, and not refused by the request's directives: usable without
    /// the origin.
    fresh: bool,
}

/// Marks the subrequest that fetches a whole object in the background.
struct WholeFetch;

/// A request on the partial path.
pub(super) struct Partial {
    /// The key its parts are held (and the complete object stored) under.
    key: CacheKey,
    plan: Plan,
    /// The held parts were stale (or the request asked for validation).
    stale: bool,
    /// The origin's 206, once it arrives.
    taking: Option<Taking>,
}

/// The origin's 206 as it passes: spliced with held bytes, kept as a part.
pub(super) struct Taking {
    span: ContentRange,
    validator: Option<Validator>,
    /// Body bytes received.
    got: u64,
    /// Them, while the part is to be kept.
    chunks: Vec<Bytes>,
    /// The complete response's meta, when response_cache_filter found the part storable.
    meta: Option<CacheMeta>,
    /// Held bytes sent before the origin's.
    before: Option<Bytes>,
    /// Held bytes sent after them.
    after: Option<Vec<Bytes>>,
    /// Held bytes were spliced in.
    spliced: bool,
    /// Counts the part as arriving (a ban lurker pass must not retire bans it may escape).
    arriving: Option<Arriving>,
}

impl Partial {
    /// Why this request went forward when it spliced held bytes around the origin's: parts
    /// were missing (RFC 9211 `partial`) or stale (`stale`: the origin's 206 validated them).
    pub(super) fn spliced(&self) -> Option<Forward> {
        let spliced = self.taking.as_ref().is_some_and(|t| t.spliced);
        spliced.then_some(match self.stale {
            true => Forward::Stale,
            false => Forward::Partial,
        })
    }

    /// Whether the origin's 206 is being kept as a part.
    pub(super) fn keeping(&self) -> bool {
        self.taking.as_ref().is_some_and(|t| t.meta.is_some())
    }

    /// Whether the origin answered with a 206 this path takes.
    pub(super) fn taken(&self) -> bool {
        self.taking.is_some()
    }
}

/// Request fields that make a range request go the whole-object way.
const NOT_FOR_PARTS: [header::HeaderName; 5] = [
    header::AUTHORIZATION,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
];

impl OutpostProxy {
    /// The range of a request that may use parts: a GET under a caching rule with one byte
    /// range and no credentials or other preconditions, on a node that keeps parts.
    fn partial_candidate(&self, session: &Session, ctx: &RequestCtx) -> Option<RangeSpec> {
        let req = session.req_header();
        // first what every request without a Range skips on
        let range = req.headers.get(header::RANGE)?;
        self.node.storage.parts()?;
        if req.method != Method::GET
            || !ctx.rule().caches()
            || NOT_FOR_PARTS.iter().any(|h| req.headers.contains_key(h))
        {
            return None;
        }
        RangeSpec::parse(range.as_bytes())
    }

    /// The parts held for `key` that this request may use (its variant, not purged).
    fn held_parts(&self, session: &Session, ctx: &mut RequestCtx, key: &CacheKey) -> Option<Held> {
        let store = self.node.storage.parts()?;
        let parts = store.get(key)?;
        let req = session.req_header();
        let encoding = self.negotiated(req, ctx);
        let variance = vary::variance(&parts.header().headers, req, encoding.map(Encoding::token));
        if variance != parts.variance() {
            return None;
        }
        let meta = parts.meta();
        let now = SystemTime::now();
        let is_fresh = meta.is_fresh(now);
        let fresh = match self.purged(key.primary_key_str().unwrap_or_default(), &meta) {
            Some(Purged::Banned(Verdict::Gone)) => {
                store.remove(key);
                return None;
            }
            Some(_) => false,
            None => {
                let fresh_for = seconds_between(meta.fresh_until(), now);
                is_fresh
                    && !ctx
                        .directives
                        .forces_validation(meta.age(), is_fresh, fresh_for)
            }
        };
        Some(Held { parts, meta, fresh })
    }

    /// Answer the request from held parts when they are fresh and cover its range; whether
    /// it was answered.
    pub(super) async fn answer_from_parts(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let Some(spec) = self.partial_candidate(session, ctx) else {
            return Ok(false);
        };
        let key = self.lookup_key(session, ctx);
        ctx.directives = RequestDirectives::parse(session.req_header());
        let Some(Held {
            parts,
            meta,
            fresh: true,
        }) = self.held_parts(session, ctx, &key)
        else {
            return Ok(false);
        };
        if let Some(if_range) = session.req_header().headers.get(header::IF_RANGE) {
            if !ranges::if_range_allows(if_range, parts.header()) {
                return Ok(false);
            }
        }
        let Some((first, last)) = spec.resolve(parts.len()) else {
            return Ok(false);
        };
        let Some(body) = parts.read(first, last) else {
            return Ok(false);
        };
        let span = ContentRange {
            first,
            last,
            complete: parts.len(),
        };
        let mut resp = parts.header().clone();
        resp.set_status(StatusCode::PARTIAL_CONTENT)?;
        resp.insert_header(header::CONTENT_RANGE, span.render())?;
        resp.insert_header(header::CONTENT_LENGTH, span.len().to_string())?;
        resp.insert_header(header::AGE, meta.age().as_secs().to_string())?;
        ctx.from_parts = Some(seconds_between(meta.fresh_until(), SystemTime::now()));
        ctx.hit_source = Some(Source::Memory);
        self.response_filter(session, &mut resp, ctx).await?;
        session.write_response_header(Box::new(resp), false).await?;
        let n = body.len();
        for (i, piece) in body.into_iter().enumerate() {
            session.write_response_body(Some(piece), i + 1 == n).await?;
        }
        Ok(true)
    }

    /// Decide what a range request that missed does about parts (`ctx.partial`).
    pub(super) fn plan_partial(&self, session: &Session, ctx: &mut RequestCtx) {
        if session.cache.phase() != CachePhase::Miss {
            return;
        }
        let Some(spec) = self.partial_candidate(session, ctx) else {
            return;
        };
        let Some(key) = session.cache.maybe_cache_key().cloned() else {
            return;
        };
        let req = session.req_header();
        let client_if_range = req.headers.get(header::IF_RANGE).cloned();
        let Some(range) = req.headers.get(header::RANGE).cloned() else {
            return;
        };
        let mut stale = false;
        let plan = match self.held_parts(session, ctx, &key) {
            Some(Held { parts, fresh, .. }) => {
                stale = !fresh;
                if let Some(if_range) = &client_if_range {
                    // the client holds another version: it gets the whole, fetched as usual
                    if !ranges::if_range_allows(if_range, parts.header()) {
                        return;
                    }
                }
                match spec.resolve(parts.len()) {
                    Some(range) => {
                        // Only what is missing is asked for, under If-Range: the origin's 206
                        // confirms the held bytes too (the same strong validator: RFC 9111 3.4),
                        // which validates stale parts. All held (stale parts, or a request
                        // that asks for validation): one byte is asked for, to validate them.
                        let fetch = parts
                            .missing(range.0, range.1)
                            .unwrap_or((range.0, range.0));
                        Plan::Splice {
                            parts,
                            range,
                            fetch,
                        }
                    }
                    None => Plan::Forward {
                        range,
                        if_range: client_if_range,
                    },
                }
            }
            None => Plan::Forward {
                range,
                if_range: client_if_range,
            },
        };
        ctx.partial = Some(Partial {
            key,
            plan,
            stale,
            taking: None,
        });
    }

    /// The upstream request of a planned range request asks for its range.
    pub(super) fn partial_request(ctx: &RequestCtx, upstream: &mut RequestHeader) -> Result<()> {
        let Some(p) = &ctx.partial else {
            return Ok(());
        };
        match &p.plan {
            Plan::Forward { range, if_range } => {
                upstream.insert_header(header::RANGE, range.clone())?;
                if let Some(if_range) = if_range {
                    upstream.insert_header(header::IF_RANGE, if_range.clone())?;
                }
            }
            Plan::Splice { parts, fetch, .. } => {
                upstream.insert_header(header::RANGE, format!("bytes={}-{}", fetch.0, fetch.1))?;
                upstream.insert_header(header::IF_RANGE, parts.validator().if_range().clone())?;
            }
        }
        Ok(())
    }

    /// The origin's answer to a planned range request: a 206 with one known span is taken
    /// (spliced with held bytes when it is the span asked for, of the same representation).
    pub(super) fn partial_response(resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        let Some(p) = ctx.partial.as_mut() else {
            return Ok(());
        };
        p.taking = None;
        if resp.status != StatusCode::PARTIAL_CONTENT {
            return Ok(());
        }
        let Some(span) = resp
            .headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| ContentRange::parse(v.as_bytes()))
        else {
            return Ok(());
        };
        let mut taking = Taking {
            span,
            validator: Validator::of(&resp.headers),
            got: 0,
            chunks: Vec::new(),
            meta: None,
            before: None,
            after: None,
            spliced: false,
            arriving: None,
        };
        if let Plan::Splice {
            parts,
            range,
            fetch,
        } = &p.plan
        {
            let same = taking
                .validator
                .as_ref()
                .is_some_and(|v| parts.same_representation(v, span.complete))
                && (span.first, span.last) == *fetch;
            // held bytes before and after the fetched span (None: not held after all)
            let before = match fetch.0 > range.0 {
                true => parts.read(range.0, fetch.0 - 1).map(Some),
                false => Some(None),
            };
            let after = match range.1 > fetch.1 {
                true => parts.read(fetch.1 + 1, range.1).map(Some),
                false => Some(None),
            };
            if let (true, Some(before), Some(after)) = (same, before, after) {
                let whole = ContentRange {
                    first: range.0,
                    last: range.1,
                    complete: span.complete,
                };
                resp.insert_header(header::CONTENT_RANGE, whole.render())?;
                resp.insert_header(header::CONTENT_LENGTH, whole.len().to_string())?;
                resp.remove_header(&header::TRANSFER_ENCODING);
                taking.spliced = before.is_some() || after.is_some();
                taking.before = before.map(|b| concat(&b));
                taking.after = after;
            }
        }
        p.taking = Some(taking);
        Ok(())
    }

    /// The storage decision for a response to a planned range request, when it is not
    /// Pingora's usual one: a taken 206 is kept as a part (when the complete response would be
    /// stored and has a strong validator), never as the URL's object; a 416 or another 206 is
    /// not stored. A 200 (the origin sent the whole) is stored as usual and replaces parts.
    pub(super) fn partial_storage(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Option<RespCacheable> {
        let p = ctx.partial.as_mut()?;
        let uncacheable = |reason| Some(RespCacheable::Uncacheable(NoCacheReason::Custom(reason)));
        match resp.status {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::RANGE_NOT_SATISFIABLE => return uncacheable(RANGE_ANSWER),
            // stored as usual, and then replaces the parts (response_cache_filter)
            StatusCode::OK => return None,
            _ => return None,
        }
        let Some(mut taking) = p.taking.take() else {
            return uncacheable(RANGE_ANSWER);
        };
        let key = p.key.clone();
        let store = self.node.storage.parts()?;
        // the head the complete response would be stored with
        let mut whole = resp.clone();
        whole.set_status(StatusCode::OK).ok()?;
        whole.remove_header(&header::CONTENT_RANGE);
        whole.remove_header(&header::TRANSFER_ENCODING);
        whole
            .insert_header(header::CONTENT_LENGTH, taking.span.complete.to_string())
            .ok()?;
        let now = SystemTime::now();
        ctx.not_stored = match freshness::decide(
            session.req_header(),
            &whole,
            &ctx.rule().config,
            self.node.config.cache.heuristic_max_ttl,
            now,
        ) {
            Err(reason) => Some(reason),
            Ok(_) if taking.span.complete > self.node.config.cache.largest_object() => {
                // no tier would keep it whole either: ranges keep going to the origin
                Some("larger-than-largest-object")
            }
            Ok(_) if taking.validator.is_none() || taking.span.complete > store.capacity() => {
                // parts would not do (they cannot be combined, or not held): the whole object
                // is fetched in the background and stored in the tiers, as it would be
                self.fetch_whole_in_background(session, &key);
                Some(match taking.validator {
                    None => "no-strong-validator",
                    Some(_) => "larger-than-partial-size",
                })
            }
            Ok(decision) => {
                ctx.decided_by = decision.targeted.as_ref().map(targeted::detail);
                let mut meta = freshness::build_meta(&whole, &decision, now);
                if let Some(v) = self.cache_vary_filter(&meta, ctx, session.req_header()) {
                    meta.set_variance(v);
                }
                let confirmed = entry::confirmed_at(&meta);
                taking.arriving = Some(self.node.storage.arriving(confirmed));
                taking.meta = Some(meta);
                None
            }
        };
        if let Some(p) = ctx.partial.as_mut() {
            p.taking = Some(taking);
        }
        uncacheable(PARTIAL)
    }

    /// Fetch the whole object of this request's URL in the background (a subrequest without
    /// `Range`, through the whole request path: stored as any complete response), unless one
    /// was started for it moments ago.
    fn fetch_whole_in_background(&self, session: &Session, key: &CacheKey) {
        let (Some(store), Some(spawner)) = (
            self.node.storage.parts(),
            session.subrequest_spawner.as_ref(),
        ) else {
            return;
        };
        if !store.begin_whole_fetch(key, self.node.config.cache.lock_age_timeout) {
            return;
        }
        let whole = pingora_proxy::subrequest::Ctx::builder()
            .user_ctx(Box::new(WholeFetch))
            .build();
        let (fetch, handle) = spawner.create_subrequest(session.as_ref(), whole);
        handle.drain_tasks();
        tokio::spawn(fetch.run());
    }

    /// A background whole-object fetch asks for the whole: its copy of the client's request
    /// loses `Range` and `If-Range` (called first thing in `request_filter`).
    pub(super) fn whole_fetch_request(session: &mut Session) {
        let whole = session
            .subrequest_ctx
            .as_ref()
            .and_then(|c| c.user_ctx())
            .is_some_and(|u| u.is::<WholeFetch>());
        if whole {
            let req = session.req_header_mut();
            req.remove_header(&header::RANGE);
            req.remove_header(&header::IF_RANGE);
        }
    }

    /// Drop the parts held for the URL of `session` (a complete response is being stored).
    pub(super) fn drop_parts(&self, session: &Session) {
        let (Some(store), Some(key)) = (self.node.storage.parts(), session.cache.maybe_cache_key())
        else {
            return;
        };
        store.remove(key);
    }

    /// A body chunk of a taken 206: held bytes go around it, and it is kept for the part.
    pub(super) fn partial_body(&self, body: &mut Option<Bytes>, ctx: &mut RequestCtx) {
        let Some(p) = ctx.partial.as_mut() else {
            return;
        };
        let Some(t) = p.taking.as_mut() else {
            return;
        };
        let data = body.take();
        let n = data.as_ref().map_or(0, |d| d.len() as u64);
        t.got += n;
        if let (Some(d), Some(_)) = (&data, &t.meta) {
            if !d.is_empty() {
                t.chunks.push(d.clone());
            }
        }
        let mut out = Vec::new();
        out.extend(t.before.take());
        out.extend(data);
        let done = t.got >= t.span.len();
        if done {
            out.extend(t.after.take().into_iter().flatten());
        }
        *body = match out.as_slice() {
            [] => None,
            _ => Some(concat(&out)),
        };
        if done && t.got == t.span.len() {
            if let Some(meta) = t.meta.take() {
                let data = concat(&std::mem::take(&mut t.chunks));
                let (span, validator) = (t.span, t.validator.clone());
                let arriving = t.arriving.take();
                self.keep_part(&p.key, span, validator, meta, data, arriving);
            }
        }
    }

    /// Keep a part: joined to the held parts of the same representation (or replacing
    /// others); stored as a complete object once they cover it.
    fn keep_part(
        &self,
        key: &CacheKey,
        span: ContentRange,
        validator: Option<Validator>,
        meta: CacheMeta,
        data: Bytes,
        arriving: Option<Arriving>,
    ) {
        let (Some(store), Some(validator)) = (self.node.storage.parts(), validator) else {
            return;
        };
        let base = match store.get(key) {
            Some(held)
                if held.same_representation(&validator, span.complete)
                    && held.variance() == meta.variance() =>
            {
                held.refreshed(key.clone(), &meta)
            }
            _ => Parts::new(key.clone(), &meta, validator, span.complete),
        };
        let parts = Arc::new(base.with(span.first, data));
        if !store.put(parts.clone()) || !parts.complete() {
            return;
        }
        // complete: stored as the URL's object; the parts answer ranges until it is
        let storage = self.node.storage;
        tokio::spawn(async move {
            let Some(body) = parts.body() else {
                return;
            };
            let meta = parts.meta();
            let key = parts.key();
            let trace = pingora_cache::trace::Span::inactive().handle();
            let stored = async {
                let mut miss = storage.get_miss_handler(&key, &meta, &trace).await?;
                miss.write_body(body, true).await?;
                miss.finish().await
            }
            .await;
            if let Err(e) = stored {
                tracing::warn!(error = %e, "could not store an object completed from parts");
            }
            if let Some(store) = storage.parts() {
                store.remove_same(&parts);
            }
            drop(arriving);
        });
    }
}
