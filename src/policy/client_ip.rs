//! The client's address: the peer, or — when the peer is a trusted proxy — the address its
//! forwarding header names (nginx's `real_ip_recursive`: the rightmost address that is not
//! itself a trusted proxy). Addresses a client wrote into the header itself are never believed
//! unless every proxy after it is trusted.

use crate::config::{ClientIpConfig, ForwardedHeader};
use http::HeaderMap;
use std::net::{IpAddr, SocketAddr};

/// Whether `ip` is one of `cfg`'s trusted proxies.
pub fn trusted(cfg: &ClientIpConfig, ip: IpAddr) -> bool {
    let ip = canonical(ip);
    cfg.trusted_proxies.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 addresses as IPv4 (a dual-stack listener reports them).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One address as forwarding headers write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]:80`, optionally quoted.
fn parse_node(text: &str) -> Option<IpAddr> {
    let t = text.trim().trim_matches('"');
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = t.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    t.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|v6| v6.parse().ok())
}

/// The `for=` addresses of RFC 7239 `Forwarded` fields, in order.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, v)| parse_node(v))
        })
        .collect()
}

/// The addresses of `X-Forwarded-For` fields, in order.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(parse_node)
        .collect()
}

/// Whether `peer` is a trusted proxy, so that the client's address comes from the
/// forwarding fields it sent ([`client_ip`] reads them).
pub fn behind_trusted_proxy(cfg: &ClientIpConfig, peer: IpAddr) -> bool {
    !cfg.trusted_proxies.is_empty() && trusted(cfg, canonical(peer))
}

/// The client's address for a request from `peer` with header fields `headers`.
pub fn client_ip(cfg: &ClientIpConfig, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let peer = canonical(peer);
    if cfg.trusted_proxies.is_empty() || !trusted(cfg, peer) {
        return peer;
    }
    let chain = match cfg.header {
        ForwardedHeader::XForwardedFor => x_forwarded_for(headers),
        ForwardedHeader::Forwarded => forwarded_for(headers),
    };
    let mut client = peer;
    for hop in chain.into_iter().rev() {
        // an entry that is not an address ends the walk at the last proxy vouched for
        let Some(ip) = hop.map(canonical) else {
            return client;
        };
        client = ip;
        if !trusted(cfg, ip) {
            return ip;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PassForwarding;

    fn cfg(trusted: &[&str], header: ForwardedHeader) -> ClientIpConfig {
        ClientIpConfig {
            trusted_proxies: trusted.iter().map(|t| t.parse().expect("cidr")).collect(),
            header,
            pass_forwarding_fields: PassForwarding::Trusted,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("value"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_peers() {
        let c = cfg(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(client_ip(&c, ip("192.0.2.1"), &h), ip("192.0.2.1"));
        assert_eq!(client_ip(&c, ip("10.1.2.3"), &h), ip("203.0.113.7"));
        assert_eq!(
            client_ip(&c, ip("::ffff:10.1.2.3"), &h),
            ip("203.0.113.7"),
            "IPv4-mapped peer"
        );
        let none = cfg(&[], ForwardedHeader::XForwardedFor);
        assert_eq!(client_ip(&none, ip("10.1.2.3"), &h), ip("10.1.2.3"));
    }

    #[test]
    fn the_rightmost_untrusted_address_wins_and_spoofed_entries_are_ignored() {
        let c = cfg(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        // the client wrote "1.1.1.1"; the first proxy appended the real client address
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7, 10.0.0.2")]);
        assert_eq!(client_ip(&c, ip("10.0.0.1"), &h), ip("203.0.113.7"));
        // split over two fields
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.9:5555"),
        ]);
        assert_eq!(client_ip(&c, ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // garbage ends the walk at the last trusted hop
        let h = headers(&[("x-forwarded-for", "203.0.113.7, garbage, 10.0.0.9")]);
        assert_eq!(client_ip(&c, ip("10.0.0.1"), &h), ip("10.0.0.9"));
        // no header: the peer
        assert_eq!(
            client_ip(&c, ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn rfc7239_forwarded_for_with_quotes_ports_and_ipv6() {
        let c = cfg(&["127.0.0.1/32"], ForwardedHeader::Forwarded);
        let h = headers(&[(
            "forwarded",
            "for=1.1.1.1, for=\"[2001:db8:cafe::17]:4711\";proto=https, For=127.0.0.1",
        )]);
        assert_eq!(client_ip(&c, ip("127.0.0.1"), &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", "proto=http;for=192.0.2.60;by=203.0.113.43")]);
        assert_eq!(client_ip(&c, ip("127.0.0.1"), &h), ip("192.0.2.60"));
        // X-Forwarded-For is not read when Forwarded is configured
        let h = headers(&[("x-forwarded-for", "192.0.2.99")]);
        assert_eq!(client_ip(&c, ip("127.0.0.1"), &h), ip("127.0.0.1"));
    }
}
