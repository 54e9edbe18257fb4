//! What the cache did for a request, as `Cache-Status` tells it (RFC 9211).

use super::*;

pub(super) fn seconds_between(later: SystemTime, earlier: SystemTime) -> i64 {
    match later.duration_since(earlier) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

impl OutpostProxy {
    /// What the cache did for this request, from the cache phase and what the hooks saw.
    pub(super) fn cache_status(&self, session: &Session, ctx: &RequestCtx) -> CacheStatus {
        let now = SystemTime::now();
        if let (
            Some((reason @ (StaleReason::IfError | StaleReason::Disconnected), status)),
            Some(meta),
            Some(_),
        ) = (
            ctx.stale,
            session.cache.maybe_cache_meta(),
            ctx.origin_start,
        ) {
            return CacheStatus::StaleOnError {
                ttl: seconds_between(meta.fresh_until(), now),
                status,
                disconnected: reason == StaleReason::Disconnected,
            };
        }
        let forward = |default: Forward| {
            ctx.forward
                .or(ctx.was_stale.then_some(Forward::Stale))
                .or(ctx.miss)
                .unwrap_or(default)
        };
        if let Some(ttl) = ctx.from_parts {
            return CacheStatus::Hit {
                ttl,
                stale: false,
                collapsed: false,
                detail: Some(partial::PARTIAL),
            };
        }
        if let Some(p) = ctx.partial.as_ref().filter(|p| p.taken()) {
            return CacheStatus::Forward {
                fwd: p.spliced().unwrap_or_else(|| forward(Forward::UriMiss)),
                status: ctx.upstream_status,
                stored: p.keeping(),
                detail: ctx.not_stored.or(Some(partial::PARTIAL)),
            };
        }
        match session.cache.phase() {
            CachePhase::Hit | CachePhase::Stale | CachePhase::StaleUpdating => {
                let meta = session.cache.cache_meta();
                let stale = !meta.is_fresh(now);
                CacheStatus::Hit {
                    ttl: seconds_between(meta.fresh_until(), now),
                    stale,
                    collapsed: session.cache.lock_duration().is_some(),
                    detail: match ctx.stale {
                        Some((StaleReason::WhileRevalidate, _)) if stale => {
                            Some("stale-while-revalidate")
                        }
                        Some((StaleReason::MaxStale, _)) if stale => Some("max-stale"),
                        // answered stale without asking an origin that just failed
                        Some((StaleReason::IfError, _)) if stale => Some("stale-if-error"),
                        // which targeted field (RFC 9213) governs the stored response
                        _ => targeted::governing(meta.headers(), &ctx.rule().config.ttl.targeted)
                            .map(targeted::detail),
                    },
                }
            }
            CachePhase::Miss | CachePhase::Expired => CacheStatus::Forward {
                fwd: forward(Forward::UriMiss),
                status: ctx.upstream_status,
                stored: ctx.not_stored.is_none(),
                detail: ctx.not_stored.or(ctx.decided_by),
            },
            CachePhase::Revalidated => CacheStatus::Forward {
                fwd: forward(Forward::Stale),
                status: ctx.upstream_status,
                stored: true,
                detail: ctx.decided_by,
            },
            CachePhase::RevalidatedNoCache(reason) => CacheStatus::Forward {
                fwd: forward(Forward::Stale),
                status: ctx.upstream_status,
                stored: false,
                detail: ctx.not_stored.or(Some(reason.as_str())),
            },
            CachePhase::Disabled(reason) => CacheStatus::Forward {
                fwd: forward(match reason {
                    NoCacheReason::NeverEnabled => Forward::Bypass,
                    _ => Forward::Miss,
                }),
                status: ctx.upstream_status,
                stored: false,
                detail: ctx.not_stored.or(match reason {
                    NoCacheReason::NeverEnabled | NoCacheReason::Custom(_) => None,
                    other => Some(other.as_str()),
                }),
            },
            CachePhase::Bypass => CacheStatus::Forward {
                fwd: forward(Forward::Miss),
                status: ctx.upstream_status,
                stored: false,
                detail: Some("predicted-uncacheable"),
            },
            CachePhase::Uninit | CachePhase::CacheKey => CacheStatus::Forward {
                fwd: forward(Forward::Bypass),
                status: ctx.upstream_status,
                stored: false,
                detail: None,
            },
        }
    }
}
