//! What forwarding fields go upstream. Fields that tell an origin where a request came from or
//! what it "really" asked for (`X-Forwarded-Host`, `Forwarded`, `X-Original-URL`...) are not
//! part of the cache key: an origin building its response from one client's value would have
//! it stored for everyone (cache poisoning, README). So they are believed only from trusted
//! proxies (`client_ip.trusted_proxies`, and `shield.trusted_edges`: edges already name this
//! node's cache key) and removed from every other client, unless `client_ip.
//! pass_forwarding_fields = "all"`; the node then says what it saw: `X-Forwarded-Proto` (the
//! listener's scheme) and `X-Forwarded-Host` (the host the cache key has) when no believed
//! proxy said it, and `X-Forwarded-For` with the peer appended.
//!
//! Two steps. [`settle`] (`request_filter`) rewrites the request as received, so the cache key's
//! fields and `Vary` see the values the origin will see; it is idempotent, as a background
//! refresh runs it again on a copy of the request. [`forward`] (`upstream_request_filter`)
//! appends the peer to `X-Forwarded-For` on the request sent. (A request naming
//! `X-Forwarded-For`, `-Host` or `-Proto` in `Connection` is refused by Pingora with a 400.)

use crate::config::{ClientIpConfig, PassForwarding};
use crate::node::Routing;
use crate::policy::client_ip::{canonical, trusted};
use crate::tls::redirect;
use http::header::FORWARDED;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::net::IpAddr;

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Fields removed from the requests of clients whose forwarding fields are not believed: how
/// proxies name the client, scheme, host, port and path prefix, and the URL and method
/// rewrites of IIS, Symfony and Zend.
const FORWARDING: [HeaderName; 15] = [
    FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
];

/// Method overrides: removed from the GET and HEAD requests of clients not believed (what the
/// cache answers); on other methods they are how some clients send PUT or DELETE, and pass.
const METHOD_OVERRIDE: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Whether `name` (any case) is a field this module settles or removes before the cache key
/// and `Vary` read the request.
pub fn is_forwarding_field(name: &str) -> bool {
    FORWARDING
        .iter()
        .chain(&METHOD_OVERRIDE)
        .any(|f| f.as_str().eq_ignore_ascii_case(name))
}

/// Whether the forwarding fields of a request from `peer` are believed.
pub fn believed(cfg: &ClientIpConfig, trusted_edges: &[IpNet], peer: Option<IpAddr>) -> bool {
    if cfg.pass_forwarding_fields == PassForwarding::All {
        return true;
    }
    peer.map(canonical)
        .is_some_and(|ip| trusted(cfg, ip) || trusted_edges.iter().any(|net| net.contains(&ip)))
}

/// The peer of `session` (none for a listener without IP addresses).
fn peer(session: &Session) -> Option<IpAddr> {
    session.client_addr()?.as_inet().map(|a| canonical(a.ip()))
}

/// Settle the forwarding fields of the request of `session` for `host` (as the cache key has
/// it; "" for none), under `routing`'s trust.
pub fn settle(session: &mut Session, routing: &Routing, host: &str) -> Result<()> {
    let believed = believed(
        &routing.client_ip,
        &routing.shield.trusted_edges,
        peer(session),
    );
    let scheme = if redirect::on_tls(session) {
        "https"
    } else {
        "http"
    };
    settle_fields(session.req_header_mut(), believed, scheme, host)
}

/// [`settle`] on `req`, received over `scheme`: a client not `believed` loses its forwarding
/// fields; a missing `X-Forwarded-Proto` is `scheme`, a missing `X-Forwarded-Host` is `host`.
fn settle_fields(
    req: &mut RequestHeader,
    believed: bool,
    scheme: &'static str,
    host: &str,
) -> Result<()> {
    // most requests carry none of them: one pass over the fields instead of 18 removals
    if !believed
        && req
            .headers
            .keys()
            .any(|name| FORWARDING.contains(name) || METHOD_OVERRIDE.contains(name))
    {
        for name in &FORWARDING {
            req.remove_header(name);
        }
        if matches!(req.method, Method::GET | Method::HEAD) {
            for name in &METHOD_OVERRIDE {
                req.remove_header(name);
            }
        }
    }
    if !req.headers.contains_key(X_FORWARDED_PROTO) {
        req.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static(scheme))?;
    }
    if !host.is_empty() && !req.headers.contains_key(X_FORWARDED_HOST) {
        req.insert_header(X_FORWARDED_HOST, host)?;
    }
    Ok(())
}

/// Append the peer of `session` to the `X-Forwarded-For` of `upstream` (its settled request's).
pub fn forward(session: &Session, upstream: &mut RequestHeader) -> Result<()> {
    forward_fields(&session.req_header().headers, peer(session), upstream)
}

/// [`forward`] from the fields `received`, the connection's peer being `peer`: `X-Forwarded-For`
/// as received (its fields joined) with `peer` appended.
fn forward_fields(
    received: &HeaderMap,
    peer: Option<IpAddr>,
    upstream: &mut RequestHeader,
) -> Result<()> {
    let values = received.get_all(X_FORWARDED_FOR);
    set_chain(upstream, chain(values.iter().map(|v| v.as_bytes()), peer))
}

/// The `X-Forwarded-For` sent upstream: the `received` field values joined, with `peer`
/// appended.
pub fn chain<'a>(received: impl Iterator<Item = &'a [u8]>, peer: Option<IpAddr>) -> Vec<u8> {
    use std::io::Write as _;
    let mut chain = Vec::new();
    for value in received {
        if !chain.is_empty() {
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(value);
    }
    if let Some(ip) = peer {
        if !chain.is_empty() {
            chain.extend_from_slice(b", ");
        }
        let _ = write!(chain, "{ip}");
    }
    chain
}

/// Make `chain` the `X-Forwarded-For` of `upstream` (none if empty).
fn set_chain(upstream: &mut RequestHeader, chain: Vec<u8>) -> Result<()> {
    upstream.remove_header(&X_FORWARDED_FOR);
    if !chain.is_empty() {
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(chain)).map_err(|e| {
            pingora_error::Error::because(
                pingora_error::ErrorType::InternalError,
                "X-Forwarded-For value",
                e,
            )
        })?;
        upstream.insert_header(X_FORWARDED_FOR, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ForwardedHeader;

    fn cfg(trusted: &[&str], pass: PassForwarding) -> ClientIpConfig {
        ClientIpConfig {
            trusted_proxies: trusted.iter().map(|t| t.parse().expect("cidr")).collect(),
            header: ForwardedHeader::XForwardedFor,
            pass_forwarding_fields: pass,
        }
    }

    fn req(method: &str, fields: &[(&'static str, &'static str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/", None).expect("request");
        for (k, v) in fields {
            r.append_header(*k, *v).expect("field");
        }
        r
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_string())
            .collect()
    }

    const CLIENT: &[(&str, &str)] = &[
        ("x-forwarded-for", "198.51.100.1"),
        ("x-forwarded-host", "evil.test"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=198.51.100.1"),
        ("x-original-url", "/admin"),
        ("x-http-method-override", "DELETE"),
    ];

    #[test]
    fn trusted_proxies_and_edges_are_believed_others_only_with_all() {
        let edges: Vec<IpNet> = vec!["10.9.0.0/16".parse().expect("cidr")];
        let c = cfg(&["10.0.0.0/24"], PassForwarding::Trusted);
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        assert!(believed(&c, &edges, ip("10.0.0.7")));
        assert!(believed(&c, &edges, ip("::ffff:10.0.0.7")), "IPv4-mapped");
        assert!(believed(&c, &edges, ip("10.9.1.1")), "a trusted edge");
        assert!(!believed(&c, &edges, ip("192.0.2.1")));
        assert!(!believed(&c, &edges, None));
        let all = cfg(&[], PassForwarding::All);
        assert!(believed(&all, &[], ip("192.0.2.1")));
        assert!(believed(&all, &[], None));
    }

    #[test]
    fn a_client_not_believed_loses_its_fields_and_gets_the_nodes() {
        let mut r = req("GET", CLIENT);
        settle_fields(&mut r, false, "https", "www.test").expect("settle");
        for (name, _) in CLIENT {
            if !name.starts_with("x-forwarded-") || name.ends_with("-for") {
                assert!(!r.headers.contains_key(*name), "{name} kept");
            }
        }
        assert_eq!(values(&r.headers, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&r.headers, "x-forwarded-host"), ["www.test"]);
        // settling again (a background refresh) changes nothing
        let before = r.headers.clone();
        settle_fields(&mut r, false, "https", "www.test").expect("again");
        assert_eq!(r.headers, before);
        // no host (HTTP/1.0): no X-Forwarded-Host
        let mut r = req("GET", &[]);
        settle_fields(&mut r, false, "http", "").expect("settle");
        assert!(!r.headers.contains_key("x-forwarded-host"));
    }

    #[test]
    fn method_overrides_are_removed_only_where_the_cache_answers() {
        for (method, kept) in [("GET", false), ("HEAD", false), ("POST", true)] {
            let mut r = req(method, &[("x-http-method-override", "PUT")]);
            settle_fields(&mut r, false, "http", "h").expect("settle");
            assert_eq!(
                r.headers.contains_key("x-http-method-override"),
                kept,
                "{method}"
            );
        }
    }

    #[test]
    fn a_believed_clients_fields_pass_and_missing_ones_are_the_nodes() {
        let mut r = req("GET", CLIENT);
        settle_fields(&mut r, true, "http", "www.test").expect("settle");
        for (name, value) in CLIENT {
            assert_eq!(values(&r.headers, name), [*value], "{name}");
        }
        let mut r = req("GET", &[("x-forwarded-for", "198.51.100.1")]);
        settle_fields(&mut r, true, "http", "www.test").expect("settle");
        assert_eq!(values(&r.headers, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&r.headers, "x-forwarded-host"), ["www.test"]);
    }

    #[test]
    fn forwarding_appends_the_peer_to_every_x_forwarded_for_field() {
        let received = req(
            "GET",
            &[
                ("x-forwarded-for", "198.51.100.1"),
                ("x-forwarded-for", "203.0.113.5"),
            ],
        );
        let mut up = received.clone();
        let peer = "::ffff:10.0.0.1".parse::<IpAddr>().map(canonical).ok();
        forward_fields(&received.headers, peer, &mut up).expect("forward");
        assert_eq!(
            values(&up.headers, "x-forwarded-for"),
            ["198.51.100.1, 203.0.113.5, 10.0.0.1"]
        );
        // nothing received, no peer address: no X-Forwarded-For
        let received = req("GET", &[]);
        let mut up = received.clone();
        forward_fields(&received.headers, None, &mut up).expect("forward");
        assert!(!up.headers.contains_key("x-forwarded-for"));
        forward_fields(&received.headers, peer, &mut up).expect("forward");
        assert_eq!(values(&up.headers, "x-forwarded-for"), ["10.0.0.1"]);
    }
}
