//! Upstream sections: `[[origins]]` (pools of servers with TLS, balancing, health checks) and
//! `[shield]` (the parent tier), typed and validated.

use super::error::Errors;
use super::file::{HealthCheckSection, OriginSection, ServerEntry, ShieldSection};
use super::traffic::cidrs;
use super::validate::{duration, opt_duration, TIMEOUT, WAIT};
use ipnet::IpNet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// How a pool picks a server for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Servers take turns, equally.
    RoundRobin,
    /// Servers take turns in proportion to their weights.
    Weighted,
    /// Consistent hashing (ketama) of the cache key: each object lives on one server, and
    /// adding or removing a server moves only its share of the keys.
    Ketama,
}

impl Balance {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::Weighted => "weighted",
            Balance::Ketama => "ketama",
        }
    }
}

/// One server of an origin pool.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The URL as written.
    pub url: String,
    /// The host part of the URL (default SNI name).
    pub host: String,
    /// Resolved address.
    pub addr: SocketAddr,
    /// Relative share of requests (`weighted`, `ketama`).
    pub weight: u16,
}

/// TLS to an origin's servers.
#[derive(Debug, Clone)]
pub struct OriginTls {
    /// SNI sent, and the name the server's certificate must carry (default: the URL's host).
    pub sni: Option<String>,
    /// Verify the server's certificate (chain and name). Off only with `insecure = true`.
    pub verify: bool,
    /// CAs trusted for this origin, instead of the system's.
    pub ca_file: Option<PathBuf>,
}

/// Active health checks of an origin's servers.
#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    /// Path requested (GET).
    pub path: String,
    /// Host header sent (default: the origin's `host`, else the server URL's host).
    pub host: Option<String>,
    /// Port checked instead of each server's own.
    pub port: Option<u16>,
    /// Time between checks.
    pub interval: Duration,
    /// Time allowed for connecting and for the response header.
    pub timeout: Duration,
    /// Statuses that count as healthy.
    pub expect_status: Vec<u16>,
    /// Successful checks in a row that bring an unhealthy server back.
    pub healthy_threshold: usize,
    /// Failed checks in a row that take a healthy server out of rotation.
    pub unhealthy_threshold: usize,
}

/// An `[[origins]]` entry: a pool of one or more servers.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// Name rules refer to.
    pub name: String,
    /// The servers; never empty.
    pub servers: Vec<ServerConfig>,
    /// How a server is picked.
    pub balance: Balance,
    /// Host header to send; `None` forwards the client's.
    pub host: Option<String>,
    /// TLS settings; `None`: plain HTTP.
    pub tls: Option<OriginTls>,
    /// Offer HTTP/2 by ALPN (TLS only), falling back to HTTP/1.1.
    pub h2: bool,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle time allowed between reads of the response (and before its header).
    pub read_timeout: Duration,
    /// Longest a whole fetch (header and body) may take; `None`: no limit beyond the others.
    pub total_timeout: Option<Duration>,
    /// After a failed fetch (unreachable, timeout, 500/502/503/504), requests for stale
    /// objects within their stale-if-error window are answered stale without asking this
    /// origin for this long, so an outage does not pile requests onto it.
    pub failure_backoff: Duration,
    /// How long an idle connection stays in the pool for reuse.
    pub keepalive_timeout: Duration,
    /// How often a request that failed to connect (any method) or failed before the response
    /// header (idempotent methods) is retried on another server.
    pub retries: usize,
    /// Connect failures or timeouts in a row that take a server out of rotation (passive
    /// health, nginx's `max_fails`).
    pub max_fails: u32,
    /// How long such a server stays out before it is tried again (nginx's `fail_timeout`).
    pub fail_timeout: Duration,
    /// Active health checks; `None`: passive health only.
    pub health_check: Option<HealthCheckConfig>,
}

/// `[shield]`: the parent tier of this node, and what it accepts from child nodes.
#[derive(Debug, Clone, Default)]
pub struct ShieldConfig {
    /// Index into [`super::Config::origins`] of the pool of shield nodes; `None`: this node
    /// fetches from origins directly.
    pub origin: Option<usize>,
    /// When no shield can be reached, fetch from the rule's origin directly (else 503).
    pub direct_when_down: bool,
    /// Child nodes (edges) whose `Outpost-Cache-Key` field is used as this node's cache key.
    pub trusted_edges: Vec<IpNet>,
}

fn count(errs: &mut Errors, key: &str, value: Option<i64>, default: i64, range: (i64, i64)) -> i64 {
    match value {
        None => default,
        Some(n) if (range.0..=range.1).contains(&n) => n,
        Some(n) => {
            errs.push(
                key,
                format!("{n} is out of range {}..={}", range.0, range.1),
            );
            default
        }
    }
}

/// Parse one server URL; `Err` is the message.
fn server(text: &str, weight: u16) -> Result<ServerConfig, String> {
    let url = url::Url::parse(text).map_err(|e| format!("invalid URL {text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "unsupported scheme {:?} in {text:?}: use http:// or https://",
            url.scheme()
        ));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(format!("{text:?}: an origin URL has no path or query"));
    }
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let addr = match (host.as_str(), port)
        .to_socket_addrs()
        .map(|mut a| a.next())
    {
        Ok(Some(a)) => a,
        _ => return Err(format!("cannot resolve origin host {host:?}")),
    };
    Ok(ServerConfig {
        url: text.to_string(),
        host,
        addr,
        weight,
    })
}

/// Validate one `[[origins]]` entry.
pub(super) fn origin(errs: &mut Errors, i: usize, o: &OriginSection) -> Option<OriginConfig> {
    let key = |k: &str| format!("origins[{i}].{k}");
    let name = o.name.clone().unwrap_or_else(|| format!("origin{i}"));
    let connect_timeout = duration(
        errs,
        &key("connect_timeout"),
        o.connect_timeout.as_ref(),
        Duration::from_secs(2),
        TIMEOUT,
    );
    let read_timeout = duration(
        errs,
        &key("read_timeout"),
        o.read_timeout.as_ref(),
        Duration::from_secs(30),
        TIMEOUT,
    );
    // unset: no limit
    let total_timeout = opt_duration(
        errs,
        &key("total_timeout"),
        o.total_timeout.as_ref(),
        TIMEOUT,
    );
    let failure_backoff = duration(
        errs,
        &key("failure_backoff"),
        o.failure_backoff.as_ref(),
        Duration::from_secs(2),
        WAIT,
    );
    let keepalive_timeout = duration(
        errs,
        &key("keepalive_timeout"),
        o.keepalive_timeout.as_ref(),
        Duration::from_secs(60),
        WAIT,
    );
    let fail_timeout = duration(
        errs,
        &key("fail_timeout"),
        o.fail_timeout.as_ref(),
        Duration::from_secs(10),
        WAIT,
    );
    if let Some(host) = &o.host {
        if host.is_empty() || http::HeaderValue::from_str(host).is_err() {
            errs.push(key("host"), format!("invalid Host header value {host:?}"));
        }
    }
    let balance = match o.balance.as_deref() {
        None | Some("round_robin") => Balance::RoundRobin,
        Some("weighted") => Balance::Weighted,
        Some("ketama") => Balance::Ketama,
        Some(other) => {
            errs.push(
                key("balance"),
                format!(
                    "unknown balance {other:?}: use \"round_robin\", \"weighted\" or \"ketama\""
                ),
            );
            Balance::RoundRobin
        }
    };
    let entries: Vec<(String, String, Option<i64>)> = match (&o.url, &o.servers) {
        (Some(_), Some(_)) => {
            errs.push(key("servers"), "set either `url` or `servers`, not both");
            return None;
        }
        (None, None) => {
            errs.push(
                key("url"),
                "missing: the origin URL, e.g. \"http://127.0.0.1:8000\" (or `servers`)",
            );
            return None;
        }
        (Some(url), None) => vec![(key("url"), url.clone(), None)],
        (None, Some(list)) if list.is_empty() => {
            errs.push(key("servers"), "at least one server is required");
            return None;
        }
        (None, Some(list)) => list
            .iter()
            .enumerate()
            .map(|(j, e)| match e {
                ServerEntry::Url(u) => (key(&format!("servers[{j}]")), u.clone(), None),
                ServerEntry::Table(t) => {
                    (key(&format!("servers[{j}].url")), t.url.clone(), t.weight)
                }
            })
            .collect(),
    };
    let mut servers: Vec<ServerConfig> = Vec::new();
    let mut https = None;
    for (k, url, weight) in entries {
        if weight.is_some() && balance == Balance::RoundRobin {
            errs.push(
                k.replace(".url", ".weight"),
                "weights need balance = \"weighted\" or \"ketama\"",
            );
        }
        let weight = match weight {
            None => 1,
            Some(w) if (1..=1000).contains(&w) => w as u16,
            Some(w) => {
                errs.push(
                    k.replace(".url", ".weight"),
                    format!("weight {w} is out of range 1..=1000"),
                );
                1
            }
        };
        match server(&url, weight) {
            Ok(s) => {
                let is_https = url.starts_with("https:");
                if *https.get_or_insert(is_https) != is_https {
                    errs.push(&k, "all servers of one origin use the same scheme");
                }
                if servers.iter().any(|x| x.addr == s.addr) {
                    errs.push(&k, format!("{} is listed twice", s.addr));
                }
                servers.push(s);
            }
            Err(e) => errs.push(&k, e),
        }
    }
    if servers.is_empty() {
        return None;
    }
    let https = https.unwrap_or(false);
    let tls = match o.tls {
        Some(false) if https => {
            errs.push(key("tls"), "tls = false contradicts the https:// URL");
            false
        }
        Some(t) => t,
        None => https,
    };
    let insecure = o.insecure.unwrap_or(false);
    if !tls {
        for (k, set) in [
            ("sni", o.sni.is_some()),
            ("ca_file", o.ca_file.is_some()),
            ("insecure", o.insecure.is_some()),
            ("h2", o.h2 == Some(true)),
        ] {
            if set {
                errs.push(
                    key(k),
                    "applies to TLS origins only (https:// or tls = true)",
                );
            }
        }
    }
    if insecure && o.ca_file.is_some() {
        errs.push(
            key("insecure"),
            "insecure = true ignores ca_file: set one of them",
        );
    }
    if let Some(path) = &o.ca_file {
        let mut store = pingora_core::tls::RootCertStore::empty();
        match pingora_core::tls::load_ca_file_into_store(path, &mut store) {
            Ok(()) if !store.is_empty() => {}
            Ok(()) => errs.push(key("ca_file"), format!("{path}: no certificate found")),
            Err(e) => errs.push(key("ca_file"), format!("{path}: {e}")),
        }
    }
    if let Some(sni) = &o.sni {
        if sni.is_empty() {
            errs.push(
                key("sni"),
                "must not be empty (an empty SNI disables verification)",
            );
        }
    }
    let tls = tls.then(|| OriginTls {
        sni: o.sni.clone(),
        verify: !insecure,
        ca_file: o.ca_file.as_ref().map(PathBuf::from),
    });
    let retries = count(errs, &key("retries"), o.retries, 1, (0, 10)) as usize;
    let max_fails = count(errs, &key("max_fails"), o.max_fails, 1, (0, 1000)) as u32;
    let health_check = o
        .health_check
        .as_ref()
        .map(|h| health_check(errs, &key("health_check"), h));
    Some(OriginConfig {
        name,
        servers,
        balance,
        host: o.host.clone(),
        tls,
        h2: o.h2.unwrap_or(false),
        connect_timeout,
        read_timeout,
        total_timeout,
        failure_backoff,
        keepalive_timeout,
        retries,
        max_fails,
        fail_timeout,
        health_check,
    })
}

fn health_check(errs: &mut Errors, prefix: &str, h: &HealthCheckSection) -> HealthCheckConfig {
    let key = |k: &str| format!("{prefix}.{k}");
    let path = h.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.parse::<http::Uri>().is_err() {
        errs.push(key("path"), format!("{path:?} is not a request path"));
    }
    if let Some(host) = &h.host {
        if host.is_empty() || http::HeaderValue::from_str(host).is_err() {
            errs.push(key("host"), format!("invalid Host header value {host:?}"));
        }
    }
    let interval = duration(
        errs,
        &key("interval"),
        h.interval.as_ref(),
        Duration::from_secs(5),
        TIMEOUT,
    );
    let timeout = duration(
        errs,
        &key("timeout"),
        h.timeout.as_ref(),
        Duration::from_secs(1),
        TIMEOUT,
    );
    let expect_status = match &h.expect_status {
        None => vec![200],
        Some(list) if list.is_empty() => {
            errs.push(key("expect_status"), "at least one status is required");
            vec![200]
        }
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(j, s)| match u16::try_from(*s) {
                Ok(s) if (100..=599).contains(&s) => Some(s),
                _ => {
                    errs.push(
                        format!("{}[{j}]", key("expect_status")),
                        format!("{s} is not an HTTP status"),
                    );
                    None
                }
            })
            .collect(),
    };
    HealthCheckConfig {
        path,
        host: h.host.clone(),
        port: h
            .port
            .map(|p| count(errs, &key("port"), Some(p), 1, (1, 65535)) as u16),
        interval,
        timeout,
        expect_status,
        healthy_threshold: count(
            errs,
            &key("healthy_threshold"),
            h.healthy_threshold,
            2,
            (1, 100),
        ) as usize,
        unhealthy_threshold: count(
            errs,
            &key("unhealthy_threshold"),
            h.unhealthy_threshold,
            3,
            (1, 100),
        ) as usize,
    }
}

/// Validate `[shield]` against the origins (by name).
pub(super) fn shield(
    errs: &mut Errors,
    s: &ShieldSection,
    origins: &[OriginConfig],
) -> ShieldConfig {
    let origin = s.origin.as_ref().and_then(|name| {
        let found = origins.iter().position(|o| &o.name == name);
        match found {
            None => errs.push(
                "shield.origin",
                format!("no [[origins]] entry is named {name:?}"),
            ),
            Some(i) if origins[i].balance != Balance::Ketama && origins[i].servers.len() > 1 => {
                errs.push(
                    "shield.origin",
                    format!(
                        "origin {name:?} (the shield tier) must use balance = \"ketama\": each object is fetched through one shield"
                    ),
                )
            }
            Some(_) => {}
        }
        found
    });
    ShieldConfig {
        origin,
        direct_when_down: s.direct_when_down.unwrap_or(true),
        trusted_edges: cidrs(errs, "shield.trusted_edges", s.trusted_edges.as_ref()),
    }
}
