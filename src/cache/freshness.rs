//! RFC 9111 storage and freshness decisions for a shared cache, with rule overrides.
//!
//! Pure functions over headers and a clock: unit-testable, no I/O. The proxy calls
//! [`decide`] in `response_cache_filter`; the result is what Pingora stores.

use crate::config::RuleConfig;
use crate::policy::hardening::{connection_named, HOP_BY_HOP};
use http::{header, HeaderMap, StatusCode};
use pingora_cache::cache_control::CacheControl;
use pingora_cache::CacheMeta;
use pingora_http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime};

/// Why a response is not stored (also the Cache-Status `detail`).
pub type NotStored = &'static str;

/// RFC 9110 15.1: status codes that are heuristically cacheable (minus 206, which we don't store).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

fn http_date(headers: &HeaderMap, name: header::HeaderName) -> Option<Result<SystemTime, ()>> {
    headers.get(name).map(|v| {
        v.to_str()
            .ok()
            .and_then(|s| lenient_date(s.trim()))
            .ok_or(())
    })
}

/// Day and month names as HTTP dates spell them.
const DATE_WORDS: [&str; 27] = [
    "Mon",
    "Tue",
    "Wed",
    "Thu",
    "Fri",
    "Sat",
    "Sun",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
    "GMT",
];

/// An HTTP date in any of the three forms RFC 9110 5.6.7 asks recipients to accept
/// (IMF-fixdate, the obsolete RFC 850 and asctime forms), and, as the most-used caches do,
/// with day names, month names and `GMT` in any letter case.
pub fn lenient_date(s: &str) -> Option<SystemTime> {
    if let Ok(t) = httpdate::parse_http_date(s) {
        return Some(t);
    }
    let mut fixed = String::with_capacity(s.len());
    let mut word = String::new();
    let canonical = |word: &str| {
        DATE_WORDS
            .iter()
            .find(|w| w.eq_ignore_ascii_case(word))
            .map_or_else(|| word.to_string(), |w| w.to_string())
    };
    for c in s.chars() {
        if c.is_ascii_alphabetic() {
            word.push(c);
            continue;
        }
        fixed.push_str(&canonical(&word));
        word.clear();
        fixed.push(c);
    }
    fixed.push_str(&canonical(&word));
    httpdate::parse_http_date(&fixed).ok()
}

/// Where the freshness lifetime came from (for `outpost check`, logs and Cache-Status detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeSource {
    /// The rule's `ttl.override`.
    Override,
    /// `s-maxage`.
    SMaxAge,
    /// `max-age`.
    MaxAge,
    /// `Expires` minus `Date`.
    Expires,
    /// Response `no-cache`: stored, but every use is validated.
    NoCache,
    /// The rule's `ttl.not_found` / `ttl.server_error` (negative caching).
    Negative,
    /// The rule's `ttl.default`.
    RuleDefault,
    /// 10% of the time since `Last-Modified`.
    Heuristic,
}

/// The decision for one response.
#[derive(Debug)]
pub struct Decision {
    /// Freshness lifetime.
    pub lifetime: Duration,
    /// Where it came from.
    pub source: LifetimeSource,
    /// Age the response already had when received (RFC 9111 4.2.3 corrected initial age).
    pub initial_age: Duration,
    /// Seconds past expiry it may be served while one request revalidates it (RFC 5861).
    pub stale_while_revalidate: u32,
    /// Seconds past expiry it may be served when the origin fails (RFC 5861).
    pub stale_if_error: u32,
    /// The targeted field (RFC 9213) that decided, instead of `Cache-Control`.
    pub targeted: Option<http::HeaderName>,
    /// It may be served stale when the origin cannot be reached (RFC 9111 4.2.4).
    pub disconnected: bool,
}

/// RFC 9110 15: the status codes whose semantics (caching ones included) this node knows;
/// a `must-understand` response with another code is not stored (RFC 9111 5.2.2.3).
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=205 | 300..=305 | 307 | 308 | 400..=418 | 421 | 422 | 426 | 500..=505
    )
}

/// The `stale_if_error` a stored response carries when it may be served stale however stale
/// it is once the origin cannot be reached (RFC 9111 4.2.4): Pingora then always asks
/// `should_serve_stale`, which holds 5xx answers and timeouts to [`within_stale_if_error`].
pub const DISCONNECTED: u32 = u32::MAX;

/// The stale windows of a response: its own `stale-while-revalidate` / `stale-if-error`
/// directives, else the rule's defaults; none where the response forbids stale use
/// (`must-revalidate`, `proxy-revalidate`, `no-cache`), and no defaults under `s-maxage`
/// (RFC 9111 5.2.2.10: it implies `proxy-revalidate`; explicit stale directives beside it are
/// the origin's own permission, as CDNs read them) or for a status stored only for its
/// explicit freshness (`defaults` false). The third value: whether it may be served stale
/// when disconnected.
fn stale_windows(cc: Option<&CacheControl>, rule: &RuleConfig, defaults: bool) -> (u32, u32, bool) {
    if cc.is_some_and(|c| c.must_revalidate() || c.proxy_revalidate() || c.no_cache()) {
        return (0, 0, false);
    }
    let defaults_apply = defaults && !cc.is_some_and(|c| c.has_key("s-maxage"));
    let window = |explicit: Option<u32>, default: Duration| {
        explicit.unwrap_or(if defaults_apply {
            u32::try_from(default.as_secs()).unwrap_or(u32::MAX)
        } else {
            0
        })
    };
    (
        window(
            cc.and_then(|c| c.stale_while_revalidate().ok().flatten()),
            rule.stale.while_revalidate,
        ),
        window(
            cc.and_then(|c| c.stale_if_error().ok().flatten()),
            rule.stale.if_error,
        ),
        defaults_apply && rule.stale.disconnected,
    )
}

/// Whether the stored response `meta` is, at `now`, within the time past expiry it may be
/// served when the origin fails (times out, answers 500/502/503/504), as `rule` and the
/// response say; serving it when the origin cannot be reached at all is [`DISCONNECTED`]'s
/// concern.
pub fn within_stale_if_error(meta: &CacheMeta, rule: &RuleConfig, now: SystemTime) -> bool {
    let (cc, _) = super::targeted::directives(meta.headers(), &rule.ttl.targeted);
    let defaults = admitted_without_freshness(meta.response_header().status, rule);
    let window = stale_windows(cc.as_ref(), rule, defaults).1;
    // a response 0.9 s stale is past a window of 0 s (whole seconds would round it down)
    now.duration_since(meta.fresh_until())
        .map_or(true, |stale| {
            stale <= Duration::from_secs(u64::from(window))
        })
}

/// Whether `rule` stores responses with `status` without explicit freshness: listed in
/// `cacheable.status`, or a 5xx that `ttl.server_error` opts in.
fn admitted_without_freshness(status: StatusCode, rule: &RuleConfig) -> bool {
    let code = status.as_u16();
    rule.cacheable.status.binary_search(&code).is_ok()
        || (rule.ttl.server_error.is_some() && matches!(code, 500 | 502 | 503 | 504))
}

/// Decide whether `resp` (to `req`) may be stored under `rule`, and for how long.
pub fn decide(
    req: &RequestHeader,
    resp: &ResponseHeader,
    rule: &RuleConfig,
    heuristic_max: Duration,
    now: SystemTime,
) -> Result<Decision, NotStored> {
    let status = resp.status;
    // final statuses only; partial content is not stored
    if status.as_u16() < 200 || matches!(status.as_u16(), 206 | 304) {
        return Err("status-not-cacheable");
    }
    if let Some(req_cc) = CacheControl::from_req_headers(req) {
        if req_cc.no_store() {
            return Err("request-no-store");
        }
    }
    // RFC 9213: a targeted field present and valid replaces Cache-Control (and Expires)
    let (cc, targeted) = super::targeted::directives(&resp.headers, &rule.ttl.targeted);
    let cc = cc.as_ref();
    let explicit = cc.is_some_and(|c| c.has_key("s-maxage") || c.has_key("max-age"))
        || (targeted.is_none() && resp.headers.contains_key(header::EXPIRES));
    // RFC 9111 3: any final status with explicit freshness, unless the rule lists the codes
    let by_freshness_only = !admitted_without_freshness(status, rule);
    if by_freshness_only && rule.cacheable.restrict_status {
        return Err("status-not-cacheable");
    }
    if by_freshness_only && !explicit {
        return Err("no-explicit-freshness");
    }
    let must_understand = cc.is_some_and(|c| c.has_key("must-understand"));
    if must_understand && !understood(status) {
        return Err("must-understand");
    }
    // RFC 9111 5.2.2.3: must-understand with a known status overrides no-store
    if cc.is_some_and(|c| c.no_store()) && !must_understand {
        return Err("no-store");
    }
    let negative = match status.as_u16() {
        404 | 410 => rule.ttl.not_found,
        500 | 502 | 503 | 504 => rule.ttl.server_error,
        _ => None,
    };
    if cc.is_some_and(|c| c.private() && c.private_field_names().is_none()) {
        return Err("private");
    }
    if req.headers.contains_key(header::AUTHORIZATION)
        && !rule.cacheable.authorized
        && !cc.is_some_and(|c| {
            c.public() || c.must_revalidate() || matches!(c.s_maxage(), Ok(Some(_)))
        })
    {
        return Err("authorization");
    }
    // `private="Set-Cookie"` in Cache-Control: stored without the cookie (`build_meta`)
    let cookie_kept = !CacheControl::from_resp_headers(resp).is_some_and(|c| {
        c.private_field_names()
            .is_some_and(|mut names| names.any(|n| n.eq_ignore_ascii_case(b"set-cookie")))
    });
    if resp.headers.contains_key(header::SET_COOKIE) && !rule.cacheable.set_cookie && cookie_kept {
        return Err("set-cookie");
    }
    if resp.headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .map_or(true, |s| s.split(',').any(|f| f.trim() == "*"))
    }) {
        return Err("vary-star");
    }

    let date = match http_date(&resp.headers, header::DATE) {
        Some(Ok(d)) => d,
        _ => now,
    };
    let has_validator =
        resp.headers.contains_key(header::ETAG) || resp.headers.contains_key(header::LAST_MODIFIED);

    // an override never stretches a code stored only for the origin's own freshness
    let override_ttl = rule.ttl.override_ttl.filter(|_| !by_freshness_only);
    let (lifetime, source) = if let Some(ttl) = override_ttl {
        (ttl, LifetimeSource::Override)
    } else if cc.is_some_and(|c| c.no_cache()) {
        (Duration::ZERO, LifetimeSource::NoCache)
    } else if let Some(c) = cc.filter(|c| c.has_key("s-maxage")) {
        // An invalid value makes the response stale (RFC 9111 4.2.1 encourages this).
        let secs = c.s_maxage().ok().flatten().unwrap_or(0);
        (Duration::from_secs(secs.into()), LifetimeSource::SMaxAge)
    } else if let Some(c) = cc.filter(|c| c.has_key("max-age")) {
        let secs = c.max_age().ok().flatten().unwrap_or(0);
        (Duration::from_secs(secs.into()), LifetimeSource::MaxAge)
    } else if let Some(expires) =
        http_date(&resp.headers, header::EXPIRES).filter(|_| targeted.is_none())
    {
        // An invalid Expires (e.g. "0") means already expired (RFC 9111 5.3).
        let lifetime = expires
            .ok()
            .and_then(|e| e.duration_since(date).ok())
            .unwrap_or(Duration::ZERO);
        (lifetime, LifetimeSource::Expires)
    } else if let Some(ttl) = negative {
        (ttl, LifetimeSource::Negative)
    } else if !heuristically_cacheable(status) && !cc.is_some_and(|c| c.public()) {
        return Err("no-explicit-freshness");
    } else if let Some(ttl) = rule.ttl.default {
        (ttl, LifetimeSource::RuleDefault)
    } else if let Some(Ok(lm)) = rule
        .ttl
        .heuristic
        .then(|| http_date(&resp.headers, header::LAST_MODIFIED))
        .flatten()
    {
        let since = date.duration_since(lm).unwrap_or(Duration::ZERO);
        ((since / 10).min(heuristic_max), LifetimeSource::Heuristic)
    } else {
        return Err("no-freshness-info");
    };

    if lifetime.is_zero() && !has_validator {
        // Stale on arrival and impossible to revalidate cheaply: storing it gains nothing.
        return Err("stale-without-validator");
    }

    let age_value = age_value(&resp.headers);
    let apparent_age = now.duration_since(date).unwrap_or(Duration::ZERO);
    let initial_age = age_value.max(apparent_age);

    let (stale_while_revalidate, stale_if_error, disconnected) =
        stale_windows(cc, rule, !by_freshness_only);
    Ok(Decision {
        targeted: targeted.cloned(),
        lifetime,
        source,
        initial_age,
        stale_while_revalidate,
        stale_if_error,
        disconnected,
    })
}

/// The `Age` an origin or upstream cache sent (RFC 9111 5.1): the first member of the first
/// field line (`Age: 7200, 0` and two lines are lists: the rest is discarded), ignored (0)
/// unless it is delta-seconds; past 2^31 s it counts as 2^31 (1.2.2).
fn age_value(headers: &http::HeaderMap) -> Duration {
    let first = headers
        .get(header::AGE)
        .map(|v| v.as_bytes())
        .and_then(|v| v.split(|&b| b == b',').next())
        .map(<[u8]>::trim_ascii);
    match first {
        Some(d) if !d.is_empty() && d.iter().all(u8::is_ascii_digit) => {
            let secs = std::str::from_utf8(d)
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            Duration::from_secs(secs.min(1 << 31))
        }
        _ => Duration::ZERO,
    }
}

/// Build the [`CacheMeta`] to store for an accepted response: hop-by-hop and
/// `private="..."`-named fields removed, `Age` dropped (it is regenerated on every hit), `Date`
/// added if the origin sent none (hits carry the stored one), freshness
/// measured from the corrected initial age, with the decision's stale windows.
pub fn build_meta(resp: &ResponseHeader, decision: &Decision, now: SystemTime) -> CacheMeta {
    let mut header = resp.clone();
    let cc = CacheControl::from_resp_headers(resp);
    // hop-by-hop fields are never stored (RFC 9110 7.6.1), `Connection`-listed ones included
    for name in connection_named(&resp.headers) {
        header.remove_header(&name);
    }
    for name in &HOP_BY_HOP {
        header.remove_header(name);
    }
    header.remove_header(&header::AGE);
    if !header.headers.contains_key(header::DATE) {
        // RFC 9110 6.6.1: a cache adds the Date a response lacks; hits then carry it
        let _ = header.insert_header(header::DATE, httpdate::fmt_http_date(now));
    }
    if let Some(names) = cc.as_ref().and_then(|c| c.private_field_names()) {
        let names: Vec<String> = names
            .map(|n| String::from_utf8_lossy(n).to_ascii_lowercase())
            .collect();
        for n in names {
            header.remove_header(n.as_str());
        }
    }

    let epoch = now.checked_sub(decision.initial_age).unwrap_or(now);
    let fresh_until = if decision.source == LifetimeSource::Override {
        now + decision.lifetime
    } else {
        epoch + decision.lifetime
    };
    let mut meta = CacheMeta::new(
        fresh_until,
        now,
        decision.stale_while_revalidate,
        if decision.disconnected {
            DISCONNECTED
        } else {
            decision.stale_if_error
        },
        header,
    );
    if !decision.initial_age.is_zero() {
        meta.set_epoch_override(epoch);
    }
    meta
}

/// The stored header updated with the fields of a 304 (RFC 9111 4.3.4 / 3.2): every field of
/// the 304 replaces the stored one, except `Content-Length` and fields never stored. A variant
/// this node encoded keeps its weak `ETag` (the origin's 304 names the strong tag of the
/// unencoded body) and its `Vary: Accept-Encoding`.
pub fn merge_not_modified(stored: &ResponseHeader, not_modified: &HeaderMap) -> ResponseHeader {
    let mut merged = stored.clone();
    let stored_etag = stored.headers.get(http::header::ETAG).cloned();
    let weakened = |strong: &http::HeaderValue| {
        stored_etag
            .as_ref()
            .is_some_and(|w| w.as_bytes().strip_prefix(b"W/") == Some(strong.as_bytes()))
    };
    let varies_on_encoding = |h: &HeaderMap| {
        super::vary::fields(h)
            .iter()
            .any(|f| f == "accept-encoding")
    };
    for name in not_modified.keys() {
        let n = name.as_str();
        if HOP_BY_HOP.contains(name)
            || matches!(n, "content-length" | "content-range" | "transfer-encoding")
        {
            continue;
        }
        if n == "etag" && not_modified.get(name).is_some_and(weakened) {
            continue;
        }
        if n == "vary" && varies_on_encoding(&stored.headers) && !varies_on_encoding(not_modified) {
            continue;
        }
        merged.remove_header(name);
        for value in not_modified.get_all(name) {
            // Names and values come from a parsed header map, so appending cannot fail.
            let _ = merged.append_header(name.clone(), value.clone());
        }
    }
    merged
}

/// Whether a stored response may be served to a request carrying `Authorization`
/// (RFC 9111 3.5: only with `public`, `s-maxage` or `must-revalidate`), as its governing
/// field (a targeted one of `targets`, else `Cache-Control`) says.
pub fn servable_to_authorized(stored: &HeaderMap, targets: &[http::HeaderName]) -> bool {
    super::targeted::directives(stored, targets)
        .0
        .is_some_and(|c| c.public() || c.must_revalidate() || c.has_key("s-maxage"))
}

/// Whether the stored response forbids serving it stale (must-revalidate and friends), as
/// its governing field says.
pub fn forbids_stale(stored: &HeaderMap, targets: &[http::HeaderName]) -> bool {
    super::targeted::directives(stored, targets)
        .0
        .is_some_and(|c| cc_forbids_stale(&c))
}

/// `must-revalidate`, `proxy-revalidate`, `s-maxage` (RFC 9111 5.2.2.10) and `no-cache` all
/// forbid a shared cache to use the response stale.
fn cc_forbids_stale(c: &CacheControl) -> bool {
    c.must_revalidate() || c.proxy_revalidate() || c.has_key("s-maxage") || c.no_cache()
}

#[cfg(test)]
mod tests;
