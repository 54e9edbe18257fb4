//! One `[[rules]]` entry (and a rule's `match`), validated.

use super::error::Errors;
use super::file;
use super::validate::{duration, opt_duration, LIFETIME};
use super::*;

/// Validate `rules[i]`: its `origin` names one of `origins` (else `default_origin`), its
/// freshness follows the cache's `targeted_fields` unless its `ttl.targeted` is false.
pub(super) fn rule(
    errs: &mut Errors,
    i: usize,
    r: &file::RuleSection,
    origins: &[file::OriginSection],
    node_name: &str,
    default_origin: usize,
    targeted_fields: &[HeaderName],
) -> RuleConfig {
    let key = |k: &str| format!("rules[{i}].{k}");
    let name = r.name.clone().unwrap_or_else(|| format!("rule{i}"));
    let origin = match &r.origin {
        None => default_origin,
        Some(n) => origins
            .iter()
            .enumerate()
            .find(|(j, o)| o.name.clone().unwrap_or_else(|| format!("origin{j}")) == *n)
            .map(|(j, _)| j)
            .unwrap_or_else(|| {
                errs.push(
                    key("origin"),
                    format!("no [[origins]] entry is named {n:?}"),
                );
                0
            }),
    };
    let action = match r.action.as_deref() {
        None | Some("cache") => Action::Cache,
        Some("bypass") => Action::Bypass,
        Some(other) => {
            errs.push(
                key("action"),
                format!("unknown action {other:?}: use \"cache\" or \"bypass\""),
            );
            Action::Cache
        }
    };

    let matcher = match_config(errs, &format!("rules[{i}].match"), &r.matcher);

    let ttl = TtlConfig {
        override_ttl: opt_duration(
            errs,
            &key("ttl.override"),
            r.ttl.override_ttl.as_ref(),
            LIFETIME,
        ),
        default: opt_duration(errs, &key("ttl.default"), r.ttl.default.as_ref(), LIFETIME),
        heuristic: r.ttl.heuristic.unwrap_or(true),
        not_found: Some(duration(
            errs,
            &key("ttl.not_found"),
            r.ttl.not_found.as_ref(),
            DEFAULT_NOT_FOUND_TTL,
            LIFETIME,
        ))
        .filter(|d| !d.is_zero()),
        server_error: opt_duration(
            errs,
            &key("ttl.server_error"),
            r.ttl.server_error.as_ref(),
            LIFETIME,
        )
        .filter(|d| !d.is_zero()),
        targeted: if r.ttl.targeted.unwrap_or(true) {
            targeted_fields.to_vec()
        } else {
            Vec::new()
        },
    };
    let while_revalidate = duration(
        errs,
        &key("stale.while_revalidate"),
        r.stale.while_revalidate.as_ref(),
        Duration::ZERO,
        LIFETIME,
    );
    let if_error = duration(
        errs,
        &key("stale.if_error"),
        r.stale.if_error.as_ref(),
        Duration::ZERO,
        LIFETIME,
    );
    let stale = StaleConfig {
        while_revalidate,
        if_error,
        // "0s" said in so many words also turns off serving stale when disconnected
        disconnected: r.stale.if_error.is_none() || !if_error.is_zero(),
    };
    for (name, d) in [
        ("stale.while_revalidate", stale.while_revalidate),
        ("stale.if_error", stale.if_error),
    ] {
        if d.as_secs() > u64::from(u32::MAX) {
            errs.push(key(name), "must be at most 136 years");
        }
    }

    let query = match r.key.query.as_deref().unwrap_or("full") {
        "full" => QueryMode::Full,
        "ignore" => QueryMode::Ignore,
        "sorted" => QueryMode::Sorted,
        "keep" => match &r.key.query_keep {
            Some(keep) if !keep.is_empty() => {
                let mut keep = keep.clone();
                keep.sort();
                keep.dedup();
                QueryMode::Keep(keep)
            }
            _ => {
                errs.push(
                    key("key.query_keep"),
                    "query = \"keep\" needs a non-empty query_keep list",
                );
                QueryMode::Full
            }
        },
        other => {
            errs.push(key("key.query"), format!("unknown query mode {other:?}: use \"full\", \"ignore\", \"sorted\" or \"keep\""));
            QueryMode::Full
        }
    };
    if r.key.query_keep.is_some() && r.key.query.as_deref() != Some("keep") {
        errs.push(
            key("key.query_keep"),
            "query_keep only applies with query = \"keep\"",
        );
    }
    let headers = r
        .key
        .headers
        .clone()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(j, h)| match HeaderName::from_bytes(h.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                errs.push(
                    format!("rules[{i}].key.headers[{j}]"),
                    format!("invalid header name {h:?}"),
                );
                None
            }
        })
        .collect();

    let mut status = Vec::new();
    for (j, s) in r
        .cacheable
        .status
        .clone()
        .unwrap_or_else(|| DEFAULT_CACHEABLE_STATUS.iter().map(|&s| s as i64).collect())
        .iter()
        .enumerate()
    {
        if (200..=599).contains(s) && *s != 206 && *s != 304 {
            status.push(*s as u16);
        } else {
            errs.push(
                format!("rules[{i}].cacheable.status[{j}]"),
                format!(
                    "status {s} cannot be cached: use final statuses 200-599 except 206 and 304"
                ),
            );
        }
    }
    status.sort_unstable();
    status.dedup();

    RuleConfig {
        name,
        origin,
        action,
        matcher,
        ttl,
        key: KeyConfig { query, headers },
        cacheable: CacheableConfig {
            status,
            restrict_status: r.cacheable.status.is_some(),
            set_cookie: r.cacheable.set_cookie.unwrap_or(false),
            authorized: r.cacheable.authorized.unwrap_or(false),
        },
        stale,
        headers: traffic::header_policy(errs, &key("headers"), &r.headers, node_name),
        shield: r.shield.unwrap_or(true),
        redirect_https: r.redirect_https.unwrap_or(false),
    }
}

/// Validate a `match` table found at key path `prefix`.
pub(super) fn match_config(errs: &mut Errors, prefix: &str, m: &file::MatchSection) -> MatchConfig {
    let mut globs = |field: &str, list: &Option<Vec<String>>| -> Vec<String> {
        let list = list.clone().unwrap_or_default();
        for (j, g) in list.iter().enumerate() {
            if let Err(e) = globset::Glob::new(g) {
                errs.push(
                    format!("{prefix}.{field}[{j}]"),
                    format!("invalid glob {g:?}: {}", e.kind()),
                );
            }
        }
        list
    };
    let hosts = globs("hosts", &m.hosts)
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let paths = globs("paths", &m.paths);
    for (j, p) in paths.iter().enumerate() {
        if !p.starts_with('/') && !p.starts_with('*') {
            errs.push(
                format!("{prefix}.paths[{j}]"),
                format!("path glob {p:?} must start with '/'"),
            );
        }
    }
    let path_prefix = m.path_prefix.clone().unwrap_or_default();
    for (j, p) in path_prefix.iter().enumerate() {
        if !p.starts_with('/') {
            errs.push(
                format!("{prefix}.path_prefix[{j}]"),
                format!("path prefix {p:?} must start with '/'"),
            );
        }
    }
    let methods = m
        .methods
        .clone()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(
            |(j, s)| match Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    errs.push(
                        format!("{prefix}.methods[{j}]"),
                        format!("invalid method {s:?}"),
                    );
                    None
                }
            },
        )
        .collect();

    MatchConfig {
        hosts,
        path_prefix,
        paths,
        methods,
    }
}
