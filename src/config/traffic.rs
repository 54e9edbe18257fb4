//! Traffic policy sections: `[client_ip]`, `[rate_limit]`, header rules (`[headers]`,
//! `[rules.headers]`), request hardening (`[limits]`) and `[compression]`, typed and validated.

use super::error::Errors;
use super::file::{
    ClientIpSection, CompressionSection, HeaderRulesSection, HeadersSection, LimitsSection,
    RateLimitSection,
};
use super::rule::match_config;
use super::validate::{duration, size, BYTES, TIMEOUT};
use super::MatchConfig;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use std::time::Duration;

/// Default bound on the distinct rate-limit keys tracked (clients, API keys...).
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Which request header names the client when the peer is a trusted proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// Whose forwarding fields (`X-Forwarded-*`, `Forwarded`, `X-Original-URL`...) go upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassForwarding {
    /// Trusted proxies' (and trusted edges'); every other client's are removed.
    Trusted,
    /// Every client's, as sent (nginx's and Varnish's behaviour).
    All,
}

/// How the client's address is found (nginx's `set_real_ip_from` + `real_ip_header`), and whose
/// forwarding fields are believed.
#[derive(Debug, Clone)]
pub struct ClientIpConfig {
    /// Peers whose forwarding header is believed; the client is the rightmost address in it
    /// that is not itself a trusted proxy.
    pub trusted_proxies: Vec<IpNet>,
    /// The forwarding header read.
    pub header: ForwardedHeader,
    /// Whose forwarding fields are passed to the origin.
    pub pass_forwarding_fields: PassForwarding,
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client address.
    Ip,
    /// The client address and the request path.
    IpPath,
    /// A request header (an API key); requests without it are counted by client address.
    Header(HeaderName),
}

/// One rate limit.
#[derive(Debug, Clone)]
pub struct LimitRule {
    /// Name: metrics label and `RateLimit-Policy` name.
    pub name: String,
    /// Which requests it applies to.
    pub matcher: MatchConfig,
    /// Requests allowed per `per`.
    pub count: u32,
    /// The period of `count`.
    pub per: Duration,
    /// Requests allowed at once beyond the steady rate.
    pub burst: u32,
    /// What requests are counted by.
    pub key: LimitKey,
    /// Count (and refuse) only requests that would go to the origin: hits are never limited.
    pub only_misses: bool,
}

/// Request rate limits.
#[derive(Debug, Clone, Default)]
pub struct RateLimitConfig {
    /// Clients never limited.
    pub allow: Vec<IpNet>,
    /// Most distinct keys tracked at once (least recently seen forgotten first).
    pub max_keys: usize,
    /// The limits; every one that matches a request applies.
    pub rules: Vec<LimitRule>,
}

/// Changes to one side's header fields: removals, then fields set (replacing).
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    /// Fields removed.
    pub remove: Vec<HeaderName>,
    /// Fields set, replacing any of the same name.
    pub set: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderRules {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }
}

/// Header rules for requests to the origin and responses to clients.
#[derive(Debug, Clone, Default)]
pub struct HeaderPolicy {
    /// Applied to the request sent to the origin.
    pub request: HeaderRules,
    /// Applied to every response sent to the client (hits included).
    pub response: HeaderRules,
}

/// Fields a header rule may not touch: message framing, connection management, and the
/// origin's Host (`origins[].host` sets it).
const RESERVED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "host",
];

fn header_rules(
    errs: &mut Errors,
    key: &str,
    s: Option<&HeaderRulesSection>,
    node_name: &str,
) -> HeaderRules {
    let mut rules = HeaderRules::default();
    let Some(s) = s else {
        return rules;
    };
    let name_at = |errs: &mut Errors, at: String, text: &str| -> Option<HeaderName> {
        match HeaderName::from_bytes(text.as_bytes()) {
            Ok(n) if RESERVED.contains(&n.as_str()) => {
                errs.push(at, format!("{text:?} cannot be changed by a header rule"));
                None
            }
            Ok(n) => Some(n),
            Err(_) => {
                errs.push(at, format!("{text:?} is not a header field name"));
                None
            }
        }
    };
    for (i, text) in s.remove.iter().flatten().enumerate() {
        if let Some(n) = name_at(errs, format!("{key}.remove[{i}]"), text) {
            rules.remove.push(n);
        }
    }
    for (name, value) in s.set.iter().flatten() {
        let at = format!("{key}.set.{name}");
        let Some(n) = name_at(errs, at.clone(), name) else {
            continue;
        };
        let value = value.replace("{node}", node_name);
        match HeaderValue::from_str(&value) {
            Ok(v) => rules.set.push((n, v)),
            Err(_) => errs.push(at, format!("{value:?} is not a valid header field value")),
        }
    }
    rules
}

/// Validate a `headers` table at key path `key` (`{node}` in values is the node's name).
pub(super) fn header_policy(
    errs: &mut Errors,
    key: &str,
    s: &HeadersSection,
    node_name: &str,
) -> HeaderPolicy {
    HeaderPolicy {
        request: header_rules(
            errs,
            &format!("{key}.request"),
            s.request.as_ref(),
            node_name,
        ),
        response: header_rules(
            errs,
            &format!("{key}.response"),
            s.response.as_ref(),
            node_name,
        ),
    }
}

/// Request hardening: what a client may send and how slowly (nginx's `client_*` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Concurrent client connections at most; new ones beyond are closed at once.
    pub max_connections: usize,
    /// Time from waiting for a request (idle keep-alive included) until its header is complete;
    /// slower clients are disconnected (slowloris).
    pub header_timeout: Duration,
    /// Time allowed between reads of a request body (408 when it passes).
    pub body_timeout: Duration,
    /// Request line plus header fields, bytes at most (431).
    pub max_header_bytes: u64,
    /// Header fields at most (431).
    pub max_headers: usize,
    /// Request target, bytes at most (414).
    pub max_uri_bytes: u64,
    /// Request body, bytes at most (413).
    pub max_body_bytes: u64,
}

fn count(errs: &mut Errors, key: &str, v: Option<i64>, default: u64, max: u64) -> u64 {
    match v {
        None => default,
        Some(n) if n >= 1 && (n as u64) <= max => n as u64,
        Some(n) => {
            errs.push(key, format!("{n} is out of range: use 1 to {max}"));
            default
        }
    }
}

/// Validate `[limits]`.
pub(super) fn limits(errs: &mut Errors, s: &LimitsSection) -> LimitsConfig {
    // Pingora reads a request header of at most 1MiB
    let max_header_bytes = size(
        errs,
        "limits.max_header_bytes",
        s.max_header_bytes.as_ref(),
        32 << 10,
        1 << 10..=1 << 20,
    );
    let max_uri_bytes = size(
        errs,
        "limits.max_uri_bytes",
        s.max_uri_bytes.as_ref(),
        8 << 10,
        1..=1 << 20,
    );
    let max_body_bytes = size(
        errs,
        "limits.max_body_bytes",
        s.max_body_bytes.as_ref(),
        16 << 20,
        BYTES,
    );
    let header_timeout = duration(
        errs,
        "limits.header_timeout",
        s.header_timeout.as_ref(),
        Duration::from_secs(30),
        TIMEOUT,
    );
    let body_timeout = duration(
        errs,
        "limits.body_timeout",
        s.body_timeout.as_ref(),
        Duration::from_secs(60),
        TIMEOUT,
    );
    LimitsConfig {
        max_connections: count(
            errs,
            "limits.max_connections",
            s.max_connections,
            10_000,
            10_000_000,
        ) as usize,
        header_timeout,
        body_timeout,
        max_header_bytes,
        max_headers: count(errs, "limits.max_headers", s.max_headers, 100, 10_000) as usize,
        max_uri_bytes,
        max_body_bytes,
    }
}

/// A content coding this node produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `br` (RFC 7932).
    Brotli,
    /// `zstd` (RFC 8878).
    Zstd,
    /// `gzip`.
    Gzip,
    /// No coding.
    Identity,
}

impl Encoding {
    /// The `Content-Encoding` / `Accept-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
            Encoding::Identity => "identity",
        }
    }
}

/// Response compression: which responses, which encodings, how hard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionConfig {
    /// Compress at all.
    pub enabled: bool,
    /// Encodings produced, in preference order (ties of the client's q-values).
    pub encodings: Vec<Encoding>,
    /// Media types compressed: `type/subtype` or `type/*`, lowercase.
    pub types: Vec<String>,
    /// Bodies shorter than this (when their length is known) are not compressed.
    pub min_size: u64,
    /// Brotli quality (0-11).
    pub brotli_level: u32,
    /// gzip level (1-9).
    pub gzip_level: u32,
    /// zstd level (1-19).
    pub zstd_level: u32,
}

/// The media types compressed unless `compression.types` says otherwise.
pub const DEFAULT_COMPRESSIBLE: &[&str] = &[
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/manifest+json",
    "application/ld+json",
    "application/wasm",
    "image/svg+xml",
    "image/x-icon",
    "font/ttf",
    "font/otf",
];

/// Validate `[compression]`.
pub(super) fn compression(errs: &mut Errors, s: &CompressionSection) -> CompressionConfig {
    let mut encodings = Vec::new();
    for (i, e) in s
        .encodings
        .clone()
        .unwrap_or_else(|| vec!["br".into(), "zstd".into(), "gzip".into()])
        .iter()
        .enumerate()
    {
        match e.to_ascii_lowercase().as_str() {
            "br" => encodings.push(Encoding::Brotli),
            "zstd" => encodings.push(Encoding::Zstd),
            "gzip" => encodings.push(Encoding::Gzip),
            _ => errs.push(
                format!("compression.encodings[{i}]"),
                format!("unknown encoding {e:?}: use \"br\", \"zstd\" or \"gzip\""),
            ),
        }
    }
    let mut types = Vec::new();
    match &s.types {
        None => types.extend(DEFAULT_COMPRESSIBLE.iter().map(|t| t.to_string())),
        Some(list) => {
            for (i, t) in list.iter().enumerate() {
                let t = t.trim().to_ascii_lowercase();
                let valid = t
                    .split_once('/')
                    .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !a.contains('*'));
                if valid {
                    types.push(t);
                } else {
                    errs.push(
                        format!("compression.types[{i}]"),
                        format!("{t:?} is not a media type like \"text/html\" or \"text/*\""),
                    );
                }
            }
        }
    }
    let level = |errs: &mut Errors, key: &str, v: Option<i64>, default: u32, max: i64| match v {
        None => default,
        Some(n) if (0..=max).contains(&n) => n as u32,
        Some(n) => {
            errs.push(key, format!("{n} is out of range: use 0 to {max}"));
            default
        }
    };
    CompressionConfig {
        enabled: s.enabled.unwrap_or(true),
        encodings,
        types,
        min_size: size(
            errs,
            "compression.min_size",
            s.min_size.as_ref(),
            1024,
            BYTES,
        ),
        brotli_level: level(errs, "compression.brotli_level", s.brotli_level, 5, 11),
        gzip_level: level(errs, "compression.gzip_level", s.gzip_level, 6, 9).max(1),
        zstd_level: level(errs, "compression.zstd_level", s.zstd_level, 3, 19).max(1),
    }
}

pub(super) fn cidrs(errs: &mut Errors, key: &str, list: Option<&Vec<String>>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, text) in list.into_iter().flatten().enumerate() {
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => out.push(net.trunc()),
            Err(_) => errs.push(
                format!("{key}[{i}]"),
                format!("{text:?} is not an IP address or CIDR block (e.g. \"10.0.0.0/8\")"),
            ),
        }
    }
    out
}

/// Validate `[client_ip]`.
pub(super) fn client_ip(errs: &mut Errors, s: &ClientIpSection) -> ClientIpConfig {
    let header = match s.header.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("x-forwarded-for") => ForwardedHeader::XForwardedFor,
        Some("forwarded") => ForwardedHeader::Forwarded,
        Some(_) => {
            errs.push(
                "client_ip.header",
                "use \"X-Forwarded-For\" or \"Forwarded\"",
            );
            ForwardedHeader::XForwardedFor
        }
    };
    let pass_forwarding_fields = match s.pass_forwarding_fields.as_deref() {
        None | Some("trusted") => PassForwarding::Trusted,
        Some("all") => PassForwarding::All,
        Some(other) => {
            errs.push(
                "client_ip.pass_forwarding_fields",
                format!("{other:?}: use \"trusted\" (trusted proxies' only) or \"all\" (every client's)"),
            );
            PassForwarding::Trusted
        }
    };
    ClientIpConfig {
        trusted_proxies: cidrs(
            errs,
            "client_ip.trusted_proxies",
            s.trusted_proxies.as_ref(),
        ),
        header,
        pass_forwarding_fields,
    }
}

/// Parse "<n>/s", "<n>/min" or "<n>/h" (also "second", "minute", "hour").
fn rate(text: &str) -> Option<(u32, Duration)> {
    let (n, unit) = text.split_once('/')?;
    let n: u32 = n.trim().parse().ok().filter(|&n| n > 0)?;
    let per = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return None,
    };
    Some((n, per))
}

/// Validate `[rate_limit]`.
pub(super) fn rate_limit(errs: &mut Errors, s: &RateLimitSection) -> RateLimitConfig {
    let max_keys = match s.max_keys {
        None => DEFAULT_MAX_KEYS,
        Some(n) if (1..=1 << 32).contains(&n) => n as usize,
        Some(n) => {
            errs.push(
                "rate_limit.max_keys",
                format!("{n} is out of range: use 1 to 4294967296"),
            );
            DEFAULT_MAX_KEYS
        }
    };
    let mut rules: Vec<LimitRule> = Vec::new();
    for (i, r) in s.rules.iter().enumerate() {
        let key = |k: &str| format!("rate_limit.rules[{i}].{k}");
        let name = r.name.clone().unwrap_or_else(|| format!("limit{i}"));
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            errs.push(
                key("name"),
                format!("invalid name {name:?}: use letters, digits, '-', '_' or '.'"),
            );
        } else if rules.iter().any(|o| o.name == name) {
            errs.push(key("name"), format!("duplicate rate limit name {name:?}"));
        }
        let (count, per) = match r.limit.as_deref() {
            None => {
                errs.push(key("limit"), "required, e.g. \"100/s\" or \"600/min\"");
                (1, Duration::from_secs(1))
            }
            Some(text) => rate(text).unwrap_or_else(|| {
                errs.push(
                    key("limit"),
                    format!("invalid limit {text:?}: use \"<n>/s\", \"<n>/min\" or \"<n>/h\" with n > 0"),
                );
                (1, Duration::from_secs(1))
            }),
        };
        let burst = match r.burst {
            None => 0,
            Some(b) if (0..=1_000_000).contains(&b) => b as u32,
            Some(b) => {
                errs.push(
                    key("burst"),
                    format!("{b} is out of range: use 0 to 1000000"),
                );
                0
            }
        };
        let limit_key = match r.key.as_deref() {
            None | Some("ip") => LimitKey::Ip,
            Some("ip_path") => LimitKey::IpPath,
            Some(other) => {
                match other.strip_prefix("header:") {
                    Some(h) => match HeaderName::from_bytes(h.trim().as_bytes()) {
                        Ok(h) => LimitKey::Header(h),
                        Err(_) => {
                            errs.push(key("key"), format!("{h:?} is not a header field name"));
                            LimitKey::Ip
                        }
                    },
                    None => {
                        errs.push(
                        key("key"),
                        format!("unknown key {other:?}: use \"ip\", \"ip_path\" or \"header:<name>\""),
                    );
                        LimitKey::Ip
                    }
                }
            }
        };
        rules.push(LimitRule {
            matcher: match_config(errs, &key("match"), &r.matcher),
            name,
            count,
            per,
            burst,
            key: limit_key,
            only_misses: r.only_misses.unwrap_or(false),
        });
    }
    RateLimitConfig {
        allow: cidrs(errs, "rate_limit.allow", s.allow.as_ref()),
        max_keys,
        rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_their_units() {
        assert_eq!(rate("100/s"), Some((100, Duration::from_secs(1))));
        assert_eq!(rate("600 / min"), Some((600, Duration::from_secs(60))));
        assert_eq!(rate("5/hour"), Some((5, Duration::from_secs(3600))));
        for bad in ["0/s", "-1/s", "10", "10/day", "x/s", "/s"] {
            assert_eq!(rate(bad), None, "{bad}");
        }
    }
}
