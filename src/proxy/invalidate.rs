//! Invalidation after unsafe methods (RFC 9111 4.4).

use super::*;

/// Whether `method` is safe (RFC 9110 9.2.1): it does not invalidate stored responses.
pub(super) fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

impl OutpostProxy {
    /// RFC 9111 4.4: after a non-error response to an unsafe method, invalidate the target URI
    /// and the same-host `Location` / `Content-Location` URIs (all Vary variants: removing the
    /// primary slot invalidates its variants).
    pub(super) async fn invalidate_after_unsafe(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &RequestCtx,
    ) {
        let req = session.req_header();
        let mut targets: Vec<(String, Option<String>)> = vec![(
            req.uri.path().to_string(),
            req.uri.query().map(str::to_string),
        )];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(value) = resp.headers.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let Ok(uri) = value.parse::<http::Uri>() else {
                continue;
            };
            let same_host = uri
                .host()
                .is_none_or(|h| normalize_host(h) == ctx.host.as_str());
            if same_host && uri.path().starts_with('/') {
                targets.push((uri.path().to_string(), uri.query().map(str::to_string)));
            }
        }
        let span = pingora_cache::trace::Span::inactive().handle();
        for (path, query) in targets {
            let rule =
                ctx.routing
                    .rules
                    .get(ctx.routing.rules.matching(&Method::GET, &ctx.host, &path));
            if !rule.caches() {
                continue;
            }
            let key = cache_key_for(rule, &ctx.host, req, &path, query.as_deref());
            let compact = key.to_compact();
            match pingora_cache::storage::Storage::purge(
                self.node.storage,
                PurgeTarget::Active(&compact),
                PurgeType::Invalidation,
                &span,
            )
            .await
            {
                Ok(pingora_cache::storage::PurgeOutcome::NotFound) => {}
                Ok(_) => self.node.metrics.invalidations.inc(),
                Err(e) => {
                    tracing::warn!(error = %e, path, "invalidation after unsafe method failed")
                }
            }
        }
    }
}
