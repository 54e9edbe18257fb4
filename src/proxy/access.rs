//! Request ids, and what a finished request leaves behind: its metrics, access log line and
//! trace span.

use super::*;

impl OutpostProxy {
    /// The request id field (`access_log.request_id_header`) and this request's id, sent to the
    /// origin and back to the client.
    pub(super) fn request_id_field<'a>(
        &'a self,
        ctx: &'a RequestCtx,
    ) -> Option<(&'a http::HeaderName, &'a str)> {
        let name = self.node.config.access_log.request_id_header.as_ref()?;
        Some((name, ctx.request_id.as_deref()?))
    }

    /// Queue this request's access log line.
    pub(super) fn write_access_log(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        cache: &str,
        status: u16,
        source: Source,
        seconds: f64,
    ) {
        let req = session.req_header();
        let header = |name: header::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
        let client = match session.client_addr().and_then(|a| a.as_inet()) {
            Some(peer) => client_ip(&ctx.routing.client_ip, peer.ip(), &req.headers).to_string(),
            None => "-".to_string(),
        };
        let upstream = ctx
            .upstream
            .and_then(|(p, m)| ctx.routing.origins.get(p)?.member(m))
            .map(|m| m.label.clone());
        let record = crate::observe::access_log::Record {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            client,
            method: req.method.as_str(),
            host: &ctx.host,
            uri: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            proto: match req.version {
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2.0",
                http::Version::HTTP_09 => "HTTP/0.9",
                _ => "HTTP/1.1",
            },
            status,
            bytes: session.body_bytes_sent() as u64,
            cache,
            source: source.as_str(),
            upstream,
            origin_ms: ctx
                .origin_start
                .filter(|_| ctx.upstream_status.is_some())
                .zip(ctx.origin_header)
                .map(|(start, at)| {
                    crate::observe::millis(at.saturating_duration_since(start).as_secs_f64())
                }),
            ms: crate::observe::millis(seconds),
            id: ctx.request_id.as_deref(),
            ua: header(header::USER_AGENT),
            referer: header(header::REFERER),
        };
        self.node.access_log.write(&record);
    }

    /// Record a finished request: metrics, the access log line, the trace span, top keys.
    pub(super) fn record_finished(&self, session: &Session, ctx: &RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let label = match &ctx.cache_status {
            _ if ctx.refused => "refused",
            Some(status) => status.label(),
            None => "error",
        };
        let metrics = &self.node.metrics;
        let seconds = ctx.start.elapsed().as_secs_f64();
        let served_from_cache = ctx.from_parts.is_some()
            || matches!(
                session.cache.phase(),
                CachePhase::Hit | CachePhase::Stale | CachePhase::StaleUpdating
            );
        let source = match (served_from_cache, ctx.hit_source) {
            (true, Some(tier)) => tier,
            _ if ctx.origin_start.is_some() && ctx.upstream_status.is_some() => Source::Upstream,
            _ => Source::Node,
        };
        metrics.record_request(&Finished {
            label: label_index(label),
            method: method_index(&session.req_header().method),
            status,
            seconds,
            first_byte_seconds: ctx.first_byte.map_or(seconds, |d| d.as_secs_f64()),
            body_bytes: session.body_bytes_sent() as u64,
            source,
        });
        let log = &self.node.access_log;
        if log.wanted(status) {
            self.write_access_log(session, ctx, label, status, source, seconds);
        }
        if let (Some(tracing), Some(trace)) = (&self.node.tracing, &ctx.trace) {
            let req = session.req_header();
            let since = |at: Instant| at.saturating_duration_since(ctx.start);
            let fetch = ctx
                .origin_start
                .zip(ctx.upstream_pool())
                .map(|(start, pool)| {
                    let server = ctx
                        .upstream
                        .and_then(|(_, m)| pool.member(m))
                        .map_or_else(|| pool.name().to_string(), |m| m.label.clone());
                    let end = ctx.origin_header.unwrap_or_else(Instant::now);
                    (
                        server,
                        pool.tier.as_str(),
                        since(start),
                        since(end),
                        ctx.upstream_status,
                    )
                });
            tracing.finish(
                trace,
                &crate::observe::otel::Finished {
                    method: req.method.as_str(),
                    host: &ctx.host,
                    path: req.uri.path(),
                    status,
                    cache: label,
                    bytes: session.body_bytes_sent() as u64,
                    request_id: ctx.request_id.as_deref(),
                    fetch,
                    total: ctx.start.elapsed(),
                },
            );
        }
        if let Some(waited) = session.cache.lock_duration() {
            metrics.lock_wait.observe(waited.as_secs_f64());
        }
        if matches!(
            session.cache.phase(),
            CachePhase::Disabled(NoCacheReason::CacheLockTimeout)
        ) {
            metrics.lock_timeouts.inc();
        }
        if let Some((reason, _)) = ctx.stale {
            metrics.stale.stale_served(reason);
        }
        if ctx.revalidating && ctx.origin_start.is_some() {
            metrics.stale.revalidated(match ctx.upstream_status {
                Some(304) => RevalidationOutcome::NotModified,
                Some(s) if s < 500 && ctx.stale.is_none() => RevalidationOutcome::Replaced,
                _ => RevalidationOutcome::Error,
            });
        }
        if matches!(ctx.cache_status, Some(CacheStatus::Hit { .. }))
            && matches!(status, 404 | 410 | 500..=599)
        {
            metrics.stale.negative_hits.inc();
        }
        let (path, sent) = (session.req_header().uri.path(), session.body_bytes_sent());
        self.node.top_keys.record(&ctx.host, path, sent as u64);
    }
}
