//! File format -> typed [`Config`], collecting every error with its key path.

use super::cluster::cluster;
use super::error::{ConfigError, Errors};
use super::file::{self, FileConfig, SizeValue};
use super::observe::{access_log, tracing_config};
use super::rule::rule;
use super::traffic;
use super::units::{duration_within, size_within};
use super::upstream;
use super::*;
use std::ops::RangeInclusive;

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with the NUL).
const MAX_UNIX_SOCKET_PATH: usize = 107;

/// Apply command-line overrides to the parsed file, before validation.
pub(super) fn apply_overrides(file: &mut FileConfig, o: &Overrides) {
    if let Some(origin) = &o.origin {
        if file.origins.is_empty() {
            file.origins.push(file::OriginSection {
                name: Some("origin".into()),
                ..Default::default()
            });
        }
        file.origins[0].url = Some(origin.clone());
    }
    if let Some(listen) = &o.listen {
        file.listen.http = Some(vec![listen.clone()]);
    }
    if let Some(admin) = &o.admin {
        file.admin.listen = Some(admin.clone());
    }
    if let Some(metrics) = &o.metrics {
        file.metrics.listen = Some(metrics.clone());
    }
    if let Some(dir) = &o.cache_dir {
        file.cache.dir = Some(dir.clone());
    }
}

const MS: Duration = Duration::from_millis(1);
const DAY: Duration = Duration::from_secs(86_400);

/// A timeout, or the interval of work that must happen: more than 0, at most a day (every one
/// feeds a timer; tokio's reach about two years, and `Instant` arithmetic panics on overflow).
pub(super) const TIMEOUT: RangeInclusive<Duration> = MS..=DAY;
/// A wait or a period that "0s" turns off: at most a day.
pub(super) const WAIT: RangeInclusive<Duration> = Duration::ZERO..=DAY;
/// A freshness lifetime or a stale window: at most ten years.
pub(super) const LIFETIME: RangeInclusive<Duration> =
    Duration::ZERO..=Duration::from_secs(3650 * 86_400);
/// A size on disk or on the wire: at most 1EiB.
pub(super) const BYTES: RangeInclusive<u64> = 0..=1 << 60;
/// A memory tier: at least 1MiB, at most 1PiB (more than a machine addresses).
const MEMORY_TIER: RangeInclusive<u64> = 1 << 20..=1 << 50;
/// A disk tier: at least 1MiB, at most 1EiB.
const DISK_TIER: RangeInclusive<u64> = 1 << 20..=1 << 60;

/// The duration at `key` (`default` when unset), which must lie in `range`.
pub(super) fn duration(
    errs: &mut Errors,
    key: &str,
    value: Option<&String>,
    default: Duration,
    range: RangeInclusive<Duration>,
) -> Duration {
    opt_duration(errs, key, value, range).unwrap_or(default)
}

/// The duration at `key`, if set, which must lie in `range`.
pub(super) fn opt_duration(
    errs: &mut Errors,
    key: &str,
    value: Option<&String>,
    range: RangeInclusive<Duration>,
) -> Option<Duration> {
    value.and_then(|text| match duration_within(text, &range) {
        Ok(d) => Some(d),
        Err(e) => {
            errs.push(key, e);
            None
        }
    })
}

/// The size at `key` (`default` when unset), which must lie in `range`.
pub(super) fn size(
    errs: &mut Errors,
    key: &str,
    value: Option<&SizeValue>,
    default: u64,
    range: RangeInclusive<u64>,
) -> u64 {
    match value {
        None => default,
        Some(v) => size_within(v, &range).unwrap_or_else(|e| {
            errs.push(key, e);
            default
        }),
    }
}

fn addr(errs: &mut Errors, key: &str, value: Option<&String>, default: &str) -> SocketAddr {
    let text = value.map(String::as_str).unwrap_or(default);
    text.parse().unwrap_or_else(|_| {
        errs.push(
            key,
            format!("invalid listen address {text:?}; expected IP:PORT, e.g. \"127.0.0.1:8080\""),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

/// Validate the whole file into a [`Config`] or report every problem found.
pub(super) fn validate(f: FileConfig, path: &Path) -> Result<Config, ConfigError> {
    let mut errs = Errors::default();

    let name = f.node.name.clone().unwrap_or_else(|| "outpost".into());
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        errs.push(
            "node.name",
            format!("invalid node name {name:?}: use letters, digits, '-', '_' or '.'"),
        );
    }
    let threads = match f.node.threads {
        None | Some(0) => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        Some(n) if (1..=1024).contains(&n) => n as usize,
        Some(n) => {
            errs.push(
                "node.threads",
                format!("invalid thread count {n}: use 0 (one per core) to 1024"),
            );
            1
        }
    };
    let mut node = NodeConfig {
        name,
        threads,
        shutdown_grace: duration(
            &mut errs,
            "node.shutdown_grace",
            f.node.shutdown_grace.as_ref(),
            Duration::from_secs(5),
            WAIT,
        ),
        work_stealing: f.node.work_stealing.unwrap_or(true),
        via: f.node.via.unwrap_or(true),
        lean_hits: f.node.lean_hits.unwrap_or(true),
        upstream_keepalive_pool: match f.node.upstream_keepalive_pool {
            None => 128,
            Some(n) if (0..=100_000).contains(&n) => n as usize,
            Some(n) => {
                errs.push(
                    "node.upstream_keepalive_pool",
                    format!("{n} is out of range 0..=100000"),
                );
                128
            }
        },
        // resolved below, once cache.dir (its default's directory) is known
        upgrade_sock: PathBuf::new(),
    };

    let http_addrs = f
        .listen
        .http
        .clone()
        .unwrap_or_else(|| vec!["127.0.0.1:8080".into()]);
    if http_addrs.is_empty() {
        errs.push("listen.http", "at least one listen address is required");
    }
    let listen = ListenConfig {
        http: http_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| addr(&mut errs, &format!("listen.http[{i}]"), Some(a), ""))
            .collect(),
        https: f
            .listen
            .https
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, a)| addr(&mut errs, &format!("listen.https[{i}]"), Some(a), ""))
            .collect(),
    };
    let tls = super::tls::tls(&mut errs, &f.tls, path);
    if !listen.https.is_empty() && f.tls.certificates.is_empty() {
        errs.push(
            "tls.certificates",
            "listen.https needs at least one [[tls.certificates]] entry (cert and key files)",
        );
    }

    let token = match (&f.admin.token_env, &f.admin.token) {
        (Some(var), inline) => std::env::var(var)
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| inline.clone()),
        (None, inline) => inline.clone(),
    };
    if token.as_deref() == Some("") {
        errs.push("admin.token", "the admin token must not be empty");
    }
    let admin = AdminConfig {
        listen: addr(
            &mut errs,
            "admin.listen",
            f.admin.listen.as_ref(),
            "127.0.0.1:9091",
        ),
        token: token.filter(|t| !t.is_empty()).map(Secret::new),
        ready_during_disk_scan: f.admin.ready_during_disk_scan.unwrap_or(false),
    };
    let metrics = MetricsConfig {
        listen: addr(
            &mut errs,
            "metrics.listen",
            f.metrics.listen.as_ref(),
            "127.0.0.1:9090",
        ),
    };

    let c = &f.cache;
    let mut cache = CacheConfig {
        dir: PathBuf::from(c.dir.clone().unwrap_or_else(|| "var/cache".into())),
        tiers: match c.tiers.as_deref().unwrap_or("memory+disk") {
            "memory+disk" => Tiers::MemoryAndDisk,
            "memory" => Tiers::Memory,
            "disk" => Tiers::Disk,
            other => {
                errs.push(
                    "cache.tiers",
                    format!("unknown tiers {other:?}: use \"memory+disk\", \"memory\" or \"disk\""),
                );
                Tiers::MemoryAndDisk
            }
        },
        disk_size: size(
            &mut errs,
            "cache.disk_size",
            c.disk_size.as_ref(),
            1 << 30,
            DISK_TIER,
        ),
        disk_max_object_size: size(
            &mut errs,
            "cache.disk_max_object_size",
            c.disk_max_object_size.as_ref(),
            1 << 30,
            1..=*DISK_TIER.end(),
        ),
        memory_size: size(
            &mut errs,
            "cache.memory_size",
            c.memory_size.as_ref(),
            256 << 20,
            MEMORY_TIER,
        ),
        max_object_size: size(
            &mut errs,
            "cache.max_object_size",
            c.max_object_size.as_ref(),
            8 << 20,
            1..=1 << 32,
        ),
        lock_wait_timeout: duration(
            &mut errs,
            "cache.lock_wait_timeout",
            c.lock_wait_timeout.as_ref(),
            Duration::from_secs(10),
            TIMEOUT,
        ),
        lock_age_timeout: duration(
            &mut errs,
            "cache.lock_age_timeout",
            c.lock_age_timeout.as_ref(),
            Duration::from_secs(30),
            TIMEOUT,
        ),
        heuristic_max_ttl: duration(
            &mut errs,
            "cache.heuristic_max_ttl",
            c.heuristic_max_ttl.as_ref(),
            DAY,
            LIFETIME,
        ),
        stream_fills: c.stream_fills.unwrap_or(false),
        partial_size: size(
            &mut errs,
            "cache.partial_size",
            c.partial_size.as_ref(),
            64 << 20,
            0..=*MEMORY_TIER.end(),
        ),
        targeted_fields: header_names(
            &mut errs,
            "cache.targeted_fields",
            c.targeted_fields.as_ref(),
            &["Outpost-Cache-Control", "CDN-Cache-Control"],
        ),
        strip_targeted: header_names(
            &mut errs,
            "cache.strip_targeted",
            c.strip_targeted.as_ref(),
            &["Outpost-Cache-Control"],
        ),
    };
    if cache
        .targeted_fields
        .iter()
        .any(|n| matches!(n.as_str(), "cache-control" | "expires" | "pragma"))
    {
        errs.push(
            "cache.targeted_fields",
            "lists targeted fields (RFC 9213) such as \"CDN-Cache-Control\", not Cache-Control itself",
        );
    }
    if cache.dir.as_os_str().is_empty() {
        errs.push("cache.dir", "the cache directory must not be empty");
    }
    node.upgrade_sock = match &f.node.upgrade_sock {
        Some(path) => PathBuf::from(path),
        None => cache.dir.join("upgrade.sock"),
    };
    let sock_len = node.upgrade_sock.as_os_str().len();
    if sock_len == 0 || sock_len > MAX_UNIX_SOCKET_PATH {
        let whose = if f.node.upgrade_sock.is_some() {
            ""
        } else {
            " (the default, <cache.dir>/upgrade.sock)"
        };
        errs.push(
            "node.upgrade_sock",
            format!(
                "{:?}{whose} is {sock_len} bytes: a Unix socket path must be 1 to \
                 {MAX_UNIX_SOCKET_PATH} bytes; set a shorter node.upgrade_sock",
                node.upgrade_sock
            ),
        );
    }
    if cache.max_object_size > cache.memory_size {
        errs.push("cache.max_object_size", "must not exceed cache.memory_size");
    }
    if c.disk_max_object_size.is_none() {
        // the default follows a small disk_size down (one object must not flush the tier)
        cache.disk_max_object_size = cache.disk_max_object_size.min(cache.disk_size / 4);
    }
    if cache.disk_max_object_size > cache.disk_size {
        errs.push(
            "cache.disk_max_object_size",
            "must not exceed cache.disk_size",
        );
    }

    if f.origins.is_empty() {
        errs.push(
            "origins",
            "at least one [[origins]] entry is required (or pass --origin URL)",
        );
    }
    let mut origins = Vec::new();
    for (i, o) in f.origins.iter().enumerate() {
        if let Some(origin) = upstream::origin(&mut errs, i, o) {
            if origins.iter().any(|x: &OriginConfig| x.name == origin.name) {
                errs.push(
                    format!("origins[{i}].name"),
                    format!("duplicate origin name {:?}", origin.name),
                );
            }
            origins.push(origin);
        }
    }

    let shield = upstream::shield(&mut errs, &f.shield, &origins);
    let cluster = f.cluster.as_ref().map(|c| cluster(&mut errs, c));
    let access_log = access_log(&mut errs, &f.access_log);
    let tracing = tracing_config(&mut errs, &f.tracing, &node.name);
    // rules without `origin` use the first origin that is not the shield tier
    let default_origin = origins
        .iter()
        .position(|o| Some(o.name.as_str()) != shield.origin.map(|i| origins[i].name.as_str()))
        .unwrap_or(0);
    if shield.origin.is_some() && origins.len() < 2 {
        errs.push(
            "shield.origin",
            "the shield tier needs an [[origins]] entry of its own besides the origin(s) it shields",
        );
    }
    let mut rules = Vec::new();
    for (i, r) in f.rules.iter().enumerate() {
        let rule = rule(
            &mut errs,
            i,
            r,
            &f.origins,
            &node.name,
            default_origin,
            &cache.targeted_fields,
        );
        if shield.origin == Some(rule.origin) && r.origin.is_some() {
            errs.push(
                format!("rules[{i}].origin"),
                "this origin is the shield tier ([shield] origin): rules name the origin behind it",
            );
        }
        if rule.redirect_https && listen.https.is_empty() {
            errs.push(
                format!("rules[{i}].redirect_https"),
                "there is no HTTPS listener to redirect to: add listen.https and [[tls.certificates]]",
            );
        }
        if rules.iter().any(|x: &RuleConfig| x.name == rule.name) {
            errs.push(
                format!("rules[{i}].name"),
                format!("duplicate rule name {:?}", rule.name),
            );
        }
        rules.push(rule);
    }

    let tag_headers = header_names(
        &mut errs,
        "purge.tag_headers",
        f.purge.tag_headers.as_ref(),
        &["Surrogate-Key", "Cache-Tag"],
    );
    let lurker_interval = duration(
        &mut errs,
        "purge.lurker_interval",
        f.purge.lurker_interval.as_ref(),
        Duration::from_secs(10),
        TIMEOUT,
    );
    let client_ip = traffic::client_ip(&mut errs, &f.client_ip);
    let limits = traffic::limits(&mut errs, &f.limits);
    let compression = traffic::compression(&mut errs, &f.compression);
    let headers = traffic::header_policy(&mut errs, "headers", &f.headers, &node.name);
    let rate_limit = traffic::rate_limit(&mut errs, &f.rate_limit);
    let purge = PurgeConfig {
        tag_headers,
        strip_tag_headers: f.purge.strip_tag_headers.unwrap_or(true),
        lurker_interval,
    };
    if !errs.0.is_empty() {
        return Err(ConfigError::Invalid {
            file: path.to_path_buf(),
            errors: errs.0,
        });
    }
    Ok(Config {
        tls,
        compression,
        limits,
        headers,
        client_ip,
        rate_limit,
        source: path.to_path_buf(),
        node,
        listen,
        admin,
        metrics,
        cache,
        origins,
        rules,
        purge,
        shield,
        cluster,
        access_log,
        tracing,
    })
}

/// A list of header field names (`default` when unset), each checked.
fn header_names(
    errs: &mut Errors,
    key: &str,
    list: Option<&Vec<String>>,
    default: &[&str],
) -> Vec<HeaderName> {
    let names: Vec<String> = match list {
        Some(l) => l.clone(),
        None => default.iter().map(|s| s.to_string()).collect(),
    };
    names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                errs.push(
                    format!("{key}[{i}]"),
                    format!("{n:?} is not a header field name"),
                );
                None
            }
        })
        .collect()
}
