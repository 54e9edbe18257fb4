//! TLS and HTTP/2 to origins: certificates verified by default (custom CA file, SNI name),
//! expired or mismatched certificates refused, `insecure` only by explicit flag, h2 by ALPN,
//! and connections reused.
mod common;

use common::tls::{TestCa, Validity};
use common::*;

/// A TLS test origin presenting a leaf for `names` with `validity`, serving `/t`.
fn tls_origin(ca: &TestCa, names: &[&str], validity: Validity, h2: bool) -> TestOrigin {
    let leaf = ca.leaf(names, validity);
    let origin = TestOrigin::start_tls(&leaf.cert_pem, &leaf.key_pem, h2);
    origin.set(
        "/t",
        Reply::ok("secret").header("Cache-Control", "no-store"),
    );
    origin
}

/// A node in front of `origin` over https, trusting `ca`, with more origin settings.
fn node_for(origin: &TestOrigin, ca: &TestCa, more: &str) -> Node {
    let config = NodeConfig::new(&format!("https://127.0.0.1:{}", origin.addr().port()));
    let ca_path = ca.write(config.dir());
    config
        .origin(&format!(
            "ca_file = \"{}\"\nsni = \"origin.test\"\n{more}",
            ca_path.display()
        ))
        .start()
}

#[test]
fn https_origin_verified_against_the_ca_file_with_reused_connections() {
    let ca = TestCa::new();
    let origin = tls_origin(&ca, &["origin.test"], Validity::Current, false);
    let node = node_for(&origin, &ca, "");
    for _ in 0..5 {
        let r = get(&node, "/t");
        assert_eq!((r.status, r.text().as_str()), (200, "secret"));
    }
    let seen = origin.requests("/t");
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|r| r.version == "HTTP/1.1"));
    // one kept-alive connection served them all
    let m = node.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "outpost_upstream_open_connections",
            &[("pool", "origin")]
        ),
        1.0,
        "{m}"
    );
}

#[test]
fn h2_to_the_origin_by_alpn() {
    let ca = TestCa::new();
    let origin = tls_origin(&ca, &["origin.test"], Validity::Current, true);
    let node = node_for(&origin, &ca, "h2 = true");
    for _ in 0..3 {
        assert_eq!(get(&node, "/t").status, 200);
    }
    let seen = origin.requests("/t");
    assert!(seen.iter().all(|r| r.version == "HTTP/2.0"), "{seen:?}");

    // without h2 = true the node speaks HTTP/1.1 to the same origin
    let node = node_for(&origin, &ca, "");
    assert_eq!(get(&node, "/t").status, 200);
    assert_eq!(origin.requests("/t").last().unwrap().version, "HTTP/1.1");
}

#[test]
fn expired_mismatched_or_untrusted_certificates_are_refused() {
    let ca = TestCa::new();
    for (what, origin) in [
        (
            "expired",
            tls_origin(&ca, &["origin.test"], Validity::Expired, false),
        ),
        (
            "other name",
            tls_origin(&ca, &["other.test"], Validity::Current, false),
        ),
    ] {
        let node = node_for(&origin, &ca, "");
        let r = get(&node, "/t");
        assert_eq!(r.status, 502, "{what}: {}", r.text());
        assert_eq!(origin.hits("/t"), 0, "{what}: the request was sent");
        assert!(
            r.cache_status().contains("origin-unreachable"),
            "{what}: {}",
            r.cache_status()
        );
    }
    // a CA the node was not told to trust (system roots only)
    let origin = tls_origin(&ca, &["origin.test"], Validity::Current, false);
    let node = NodeConfig::new(&format!("https://127.0.0.1:{}", origin.addr().port()))
        .origin("sni = \"origin.test\"")
        .start();
    assert_eq!(get(&node, "/t").status, 502);
    assert_eq!(origin.hits("/t"), 0);
}

#[test]
fn insecure_skips_verification_only_when_asked_and_says_so() {
    let ca = TestCa::new();
    let origin = tls_origin(&ca, &["other.test"], Validity::Expired, false);
    let node = NodeConfig::new(&format!("https://127.0.0.1:{}", origin.addr().port()))
        .origin("insecure = true")
        .start();
    let r = get(&node, "/t");
    assert_eq!((r.status, r.text().as_str()), (200, "secret"));
    assert!(
        node.log().contains("TLS certificate verification is OFF"),
        "{}",
        node.log_tail(20)
    );
}
