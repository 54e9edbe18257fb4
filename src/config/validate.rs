//! File format -> typed [`Config`], collecting every error with its key path.

use super::error::{ConfigError, Errors};
use super::file::{self, FileConfig, SizeValue};
use super::traffic;
use super::units::{parse_duration, parse_size};
use super::upstream;
use super::*;

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

pub(super) fn duration(
    errs: &mut Errors,
    key: &str,
    value: Option<&String>,
    default: Duration,
) -> Duration {
    match value {
        None => default,
        Some(text) => parse_duration(text).unwrap_or_else(|e| {
            errs.push(key, e);
            default
        }),
    }
}

fn opt_duration(errs: &mut Errors, key: &str, value: Option<&String>) -> Option<Duration> {
    value.and_then(|text| match parse_duration(text) {
        Ok(d) => Some(d),
        Err(e) => {
            errs.push(key, e);
            None
        }
    })
}

pub(super) fn size(errs: &mut Errors, key: &str, value: Option<&SizeValue>, default: u64) -> u64 {
    match value {
        None => default,
        Some(v) => parse_size(v).unwrap_or_else(|e| {
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
        ),
        work_stealing: f.node.work_stealing.unwrap_or(true),
        via: f.node.via.unwrap_or(true),
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
        disk_size: size(&mut errs, "cache.disk_size", c.disk_size.as_ref(), 1 << 30),
        disk_max_object_size: size(
            &mut errs,
            "cache.disk_max_object_size",
            c.disk_max_object_size.as_ref(),
            1 << 30,
        ),
        memory_size: size(
            &mut errs,
            "cache.memory_size",
            c.memory_size.as_ref(),
            256 << 20,
        ),
        max_object_size: size(
            &mut errs,
            "cache.max_object_size",
            c.max_object_size.as_ref(),
            8 << 20,
        ),
        lock_wait_timeout: duration(
            &mut errs,
            "cache.lock_wait_timeout",
            c.lock_wait_timeout.as_ref(),
            Duration::from_secs(10),
        ),
        lock_age_timeout: duration(
            &mut errs,
            "cache.lock_age_timeout",
            c.lock_age_timeout.as_ref(),
            Duration::from_secs(30),
        ),
        heuristic_max_ttl: duration(
            &mut errs,
            "cache.heuristic_max_ttl",
            c.heuristic_max_ttl.as_ref(),
            Duration::from_secs(86_400),
        ),
        stream_fills: c.stream_fills.unwrap_or(false),
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
    if cache.memory_size < 1 << 20 {
        errs.push(
            "cache.memory_size",
            format!(
                "{} bytes is too small: use at least 1MiB",
                cache.memory_size
            ),
        );
    }
    if cache.max_object_size == 0 || cache.max_object_size > u32::MAX as u64 {
        errs.push("cache.max_object_size", "must be between 1 byte and 4GiB");
    } else if cache.max_object_size > cache.memory_size {
        errs.push("cache.max_object_size", "must not exceed cache.memory_size");
    }
    if c.disk_max_object_size.is_none() {
        // the default follows a small disk_size down (one object must not flush the tier)
        cache.disk_max_object_size = cache.disk_max_object_size.min(cache.disk_size / 4);
    }
    if cache.disk_size < 1 << 20 {
        errs.push(
            "cache.disk_size",
            format!("{} bytes is too small: use at least 1MiB", cache.disk_size),
        );
    }
    if cache.disk_max_object_size == 0 {
        errs.push("cache.disk_max_object_size", "must be at least 1 byte");
    } else if cache.disk_max_object_size > cache.disk_size {
        errs.push(
            "cache.disk_max_object_size",
            "must not exceed cache.disk_size",
        );
    }
    if cache.lock_wait_timeout.is_zero() || cache.lock_age_timeout.is_zero() {
        errs.push(
            "cache.lock_wait_timeout",
            "coalescing timeouts must be greater than zero",
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
    );
    if lurker_interval.is_zero() {
        errs.push("purge.lurker_interval", "must be more than 0");
    }
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

fn rule(
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
        override_ttl: opt_duration(errs, &key("ttl.override"), r.ttl.override_ttl.as_ref()),
        default: opt_duration(errs, &key("ttl.default"), r.ttl.default.as_ref()),
        heuristic: r.ttl.heuristic.unwrap_or(true),
        not_found: Some(duration(
            errs,
            &key("ttl.not_found"),
            r.ttl.not_found.as_ref(),
            DEFAULT_NOT_FOUND_TTL,
        ))
        .filter(|d| !d.is_zero()),
        server_error: opt_duration(errs, &key("ttl.server_error"), r.ttl.server_error.as_ref())
            .filter(|d| !d.is_zero()),
        targeted: if r.ttl.targeted.unwrap_or(true) {
            targeted_fields.to_vec()
        } else {
            Vec::new()
        },
    };
    let stale = StaleConfig {
        while_revalidate: duration(
            errs,
            &key("stale.while_revalidate"),
            r.stale.while_revalidate.as_ref(),
            Duration::ZERO,
        ),
        if_error: duration(
            errs,
            &key("stale.if_error"),
            r.stale.if_error.as_ref(),
            Duration::ZERO,
        ),
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

/// Validate `[cluster]`.
fn cluster(errs: &mut Errors, c: &file::ClusterSection) -> ClusterConfig {
    let nats_url = match &c.nats_url {
        None => {
            errs.push(
                "cluster.nats_url",
                "missing: the NATS server, e.g. \"nats://127.0.0.1:4222\" (or remove [cluster])",
            );
            String::new()
        }
        Some(u) => {
            match url::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "nats" | "tls") && url.host_str().is_some() => {}
                _ => errs.push(
                    "cluster.nats_url",
                    format!("{u:?} is not a NATS URL like \"nats://127.0.0.1:4222\""),
                ),
            }
            u.clone()
        }
    };
    let stream = c.stream.clone().unwrap_or_else(|| "OUTPOST_PURGES".into());
    if stream.is_empty()
        || !stream
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
    {
        errs.push(
            "cluster.stream",
            format!("invalid stream name {stream:?}: use letters, digits, '_' or '-'"),
        );
    }
    if let Some(var) = &c.token_env {
        if var.is_empty() {
            errs.push("cluster.token_env", "must name an environment variable");
        }
    }
    let retention = duration(
        errs,
        "cluster.retention",
        c.retention.as_ref(),
        Duration::from_secs(7 * 86400),
    );
    if retention < Duration::from_secs(60) {
        errs.push("cluster.retention", "must be at least 1m");
    }
    let revalidate_until_synced = match c.until_synced.as_deref() {
        None | Some("revalidate") => true,
        Some("serve") => false,
        Some(other) => {
            errs.push(
                "cluster.until_synced",
                format!("unknown value {other:?}: use \"revalidate\" or \"serve\""),
            );
            true
        }
    };
    ClusterConfig {
        nats_url,
        stream,
        token_env: c.token_env.clone(),
        retention,
        max_lag: duration(
            errs,
            "cluster.max_lag",
            c.max_lag.as_ref(),
            Duration::from_secs(30),
        ),
        revalidate_until_synced,
    }
}

/// Validate `[access_log]`.
fn access_log(errs: &mut Errors, a: &file::AccessLogSection) -> AccessLogConfig {
    let path = match a.path.as_deref() {
        None | Some("-") => None,
        Some("") => {
            errs.push(
                "access_log.path",
                "must be a file path, or \"-\" for standard output",
            );
            None
        }
        Some(p) => Some(PathBuf::from(p)),
    };
    let format = match a.format.as_deref() {
        None | Some("json") => AccessLogFormat::Json,
        Some("combined") => AccessLogFormat::Combined,
        Some(other) => {
            errs.push(
                "access_log.format",
                format!("unknown format {other:?}: use \"json\" or \"combined\""),
            );
            AccessLogFormat::Json
        }
    };
    let sample = a.sample.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample) {
        errs.push(
            "access_log.sample",
            format!("{sample} is not a fraction between 0 and 1"),
        );
    }
    let buffer = match a.buffer {
        None => 8192,
        Some(n) if (1..=1_000_000).contains(&n) => n as usize,
        Some(n) => {
            errs.push(
                "access_log.buffer",
                format!("{n} is out of range 1..=1000000"),
            );
            8192
        }
    };
    let request_id_header = match a.request_id_header.as_deref() {
        None => Some(HeaderName::from_static("x-request-id")),
        Some("") => None,
        Some(name) => match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                errs.push(
                    "access_log.request_id_header",
                    format!("{name:?} is not a header field name"),
                );
                None
            }
        },
    };
    AccessLogConfig {
        enabled: a.enabled.unwrap_or(true),
        path,
        format,
        sample: sample.clamp(0.0, 1.0),
        buffer,
        request_id_header,
    }
}

/// Validate `[tracing]`.
fn tracing_config(errs: &mut Errors, t: &file::TracingSection, node_name: &str) -> TracingConfig {
    let endpoint = t
        .endpoint
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:4318/v1/traces".into());
    match url::Url::parse(&endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        _ => errs.push(
            "tracing.endpoint",
            format!("{endpoint:?} is not an http(s) URL like \"http://127.0.0.1:4318/v1/traces\""),
        ),
    }
    let json = match t.protocol.as_deref() {
        None | Some("http/protobuf") => false,
        Some("http/json") => true,
        Some(other) => {
            errs.push(
                "tracing.protocol",
                format!("unknown protocol {other:?}: use \"http/protobuf\" or \"http/json\""),
            );
            false
        }
    };
    let sample = t.sample.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample) {
        errs.push(
            "tracing.sample",
            format!("{sample} is not a fraction between 0 and 1"),
        );
    }
    TracingConfig {
        enabled: t.enabled.unwrap_or(false),
        endpoint,
        json,
        sample: sample.clamp(0.0, 1.0),
        service_name: t
            .service_name
            .clone()
            .unwrap_or_else(|| format!("outpost {node_name}")),
        timeout: duration(
            errs,
            "tracing.timeout",
            t.timeout.as_ref(),
            Duration::from_secs(5),
        ),
    }
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
