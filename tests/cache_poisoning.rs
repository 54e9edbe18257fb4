//! Cache poisoning through unkeyed request fields: forwarding fields a client writes itself
//! (`X-Forwarded-Host`, `Forwarded`, `X-Original-URL`, ...) are not part of the cache key, so
//! the node removes them unless the client is a trusted proxy, and sends its own
//! `X-Forwarded-For`/`-Proto`/`-Host`: what it saw. Trusted proxies' fields pass (the peer
//! appended to `X-Forwarded-For`), as everyone's do with `pass_forwarding_fields = "all"`, and
//! an edge -> shield chain gives the origin the real client, host and scheme.
mod common;

use common::tls::client as tls_client;
use common::*;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Fields an origin may build a response from that are not in the cache key, each with the
/// value an attacker sends.
const POISON: &[(&str, &str)] = &[
    ("X-Forwarded-Host", "evil.test"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Scheme", "gopher"),
    ("Forwarded", "for=198.51.100.1;host=evil.test;proto=https"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-Forwarded-For", "198.51.100.1"),
];

/// A second loopback address: a client connecting from it is not `127.0.0.1/32`.
const OTHER_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A page built from every [`POISON`] field of `req`, as frameworks build absolute URLs from
/// `X-Forwarded-Host`: one line `name=value` per field ("" when absent).
fn page(req: &Recorded) -> String {
    POISON
        .iter()
        .map(|(name, _)| format!("{name}={}\n", req.header(name).unwrap_or_default()))
        .collect()
}

/// Serve [`page`] at `path`, cacheable.
fn echo_fields(origin: &TestOrigin, path: &str) {
    origin.set_handler(path, |req, _| {
        Reply::ok(page(req)).header("Cache-Control", "max-age=60")
    });
}

/// The origin got every [`POISON`] field as sent, the peer 127.0.0.1 appended to
/// `X-Forwarded-For`.
fn assert_passed(got: &Recorded, what: &str) {
    for (name, value) in POISON {
        let expected = if name.eq_ignore_ascii_case("x-forwarded-for") {
            format!("{value}, 127.0.0.1")
        } else {
            value.to_string()
        };
        assert_eq!(got.header_all(name), [expected], "{what}: {name}");
    }
}

/// The origin got the node's own `X-Forwarded-*` fields for a plain HTTP request for
/// `www.test` from `client`.
fn assert_nodes_fields(got: &Recorded, client: &str, what: &str) {
    assert_eq!(got.header_all("x-forwarded-for"), [client], "{what}");
    assert_eq!(got.header_all("x-forwarded-proto"), ["http"], "{what}");
    assert_eq!(got.header_all("x-forwarded-host"), ["www.test"], "{what}");
}

/// GET `url` with `host` ("": the URL's, as HTTP/2 requires) and extra fields, from `client`.
fn get_from(
    client: &reqwest::blocking::Client,
    url: &str,
    host: &str,
    fields: &[(&str, &str)],
) -> Fetched {
    let mut rb = client.get(url);
    if !host.is_empty() {
        rb = rb.header("host", host);
    }
    for (k, v) in fields {
        rb = rb.header(*k, *v);
    }
    fetch(rb.send().unwrap_or_else(|e| panic!("GET {url}: {e}")))
}

/// A plain client (no redirects) connecting from `local`.
fn client_from(local: IpAddr) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(local)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// An origin answering every path uncacheably, and a node in front of it with `extra` config.
fn uncached(extra: &str) -> (TestOrigin, Node) {
    let origin = TestOrigin::start();
    origin.set("*", Reply::ok("x").header("Cache-Control", "no-store"));
    let node = NodeConfig::new(&origin.url()).extra(extra).start();
    (origin, node)
}

/// `cfg` with an HTTPS listener serving a certificate for `www.test` from `ca`.
fn with_tls(cfg: NodeConfig, ca: &TestCa) -> NodeConfig {
    let cfg = cfg.https();
    let leaf = ca.leaf(&["www.test"], Validity::Current);
    let (cert, key) = leaf.write(cfg.dir(), "c");
    cfg.certificate(&cert, &key, "")
}

/// What the origin received for the request `i` to `path`.
fn seen(origin: &TestOrigin, path: &str, i: usize) -> Recorded {
    let all = origin.requests(path);
    all.get(i)
        .cloned()
        .unwrap_or_else(|| panic!("the origin got {} request(s) for {path}", all.len()))
}

#[test]
fn forwarding_fields_from_a_client_are_replaced_by_what_the_node_saw() {
    let (origin, node) = uncached("");
    let client = node.client();

    for (i, (name, value)) in POISON.iter().enumerate() {
        let path = format!("/f{i}");
        let r = get_from(&client, &node.url(&path), "www.test", &[(name, value)]);
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let got = seen(&origin, &path, 0);
        for (other, v) in &got.headers {
            assert!(
                !v.contains(value),
                "a client's {name}: {value} reached the origin as {other}: {v}"
            );
        }
        assert_nodes_fields(&got, "127.0.0.1", name);
        for gone in [
            "forwarded",
            "x-forwarded-scheme",
            "x-original-url",
            "x-rewrite-url",
            "x-http-method-override",
        ] {
            assert_eq!(got.header(gone), None, "{name}: {gone} reached the origin");
        }
    }

    // the host the node saw, as the cache key has it (no port, lower case)
    let r = get_from(&client, &node.url("/h"), "WWW.Test:8080", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        seen(&origin, "/h", 0).header("x-forwarded-host").as_deref(),
        Some("www.test")
    );

    // naming the node's fields in Connection does not remove them on the way (or the request
    // is refused outright)
    for name in ["X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-For"] {
        let path = format!("/c-{name}");
        let r = get_from(
            &client,
            &node.url(&path),
            "www.test",
            &[("Connection", name)],
        );
        if r.status == 400 {
            assert_eq!(origin.hits(&path), 0, "{name}");
            continue;
        }
        assert_eq!(r.status, 200, "{name}");
        assert_nodes_fields(&seen(&origin, &path, 0), "127.0.0.1", name);
    }

    // a method override on a request the cache never answers is how some clients send PUT or
    // DELETE: it passes there
    let r = fetch(
        client
            .post(node.url("/m"))
            .header("X-HTTP-Method-Override", "PUT")
            .body("b")
            .send()
            .expect("POST"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        seen(&origin, "/m", 0)
            .header("x-http-method-override")
            .as_deref(),
        Some("PUT")
    );
}

#[test]
fn a_poisoned_request_does_not_change_what_the_next_client_gets_from_cache() {
    let origin = TestOrigin::start();
    echo_fields(&origin, "*");
    let node = NodeConfig::new(&origin.url()).start();
    let client = node.client();

    // what a clean client gets
    let clean = get_from(&client, &node.url("/control"), "www.test", &[]);
    assert_eq!(clean.status, 200);
    assert!(
        clean.text().contains("X-Forwarded-Host=www.test\n"),
        "{}",
        clean.text()
    );

    for (i, (name, value)) in POISON.iter().enumerate() {
        let path = format!("/page{i}");
        let first = get_from(&client, &node.url(&path), "www.test", &[(name, value)]);
        assert_stored_miss(&first, &format!("{name}: the attacker's request"));
        let next = get_from(&client, &node.url(&path), "www.test", &[]);
        assert_hit(&next, &format!("{name}: the next client"));
        assert_eq!(
            next.text(),
            clean.text(),
            "{name}: {value} changed the stored response"
        );
    }
    // every field at once
    let all: Vec<(&str, &str)> = POISON.to_vec();
    let first = get_from(&client, &node.url("/all"), "www.test", &all);
    assert_stored_miss(&first, "every field");
    let next = get_from(&client, &node.url("/all"), "www.test", &[]);
    assert_hit(&next, "every field: the next client");
    assert_eq!(next.text(), clean.text());
}

#[test]
fn a_background_refresh_started_by_a_poisoned_request_stores_the_clean_page() {
    let origin = TestOrigin::start();
    origin.set_handler("/swr", |req, n| {
        let reply = Reply::ok(format!("#{n}\n{}", page(req)));
        if n == 1 {
            // stale on arrival, within its stale-while-revalidate window
            reply
                .header("Cache-Control", "max-age=10, stale-while-revalidate=300")
                .header("Age", "100")
        } else {
            reply.header("Cache-Control", "max-age=60")
        }
    });
    let node = NodeConfig::new(&origin.url()).start();
    let client = node.client();
    let first = get_from(&client, &node.url("/swr"), "www.test", &[]);
    assert_stored_miss(&first, "fill");

    // the attacker gets the stale page; the refresh it starts goes to the origin without its
    // fields
    let r = get_from(&client, &node.url("/swr"), "www.test", POISON);
    assert!(r.text().starts_with("#1\n"), "{}", r.text());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while origin.hits("/swr") < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let refresh = seen(&origin, "/swr", 1);
    for (name, value) in POISON {
        for (field, v) in &refresh.headers {
            assert!(
                !v.contains(value),
                "{name}: {value} reached the origin as {field}: {v}"
            );
        }
    }
    assert_eq!(refresh.header_all("x-forwarded-host"), ["www.test"]);
    assert_eq!(refresh.header_all("x-forwarded-for"), ["127.0.0.1"]);

    // what the next client gets is the clean page
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let next = loop {
        let r = get_from(&client, &node.url("/swr"), "www.test", &[]);
        if r.text().starts_with("#2\n") || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let clean_body = first.text().replacen("#1\n", "#2\n", 1);
    assert_eq!(next.text(), clean_body);
}

#[test]
fn the_proto_is_the_listeners_and_an_origin_varying_on_it_gets_one_variant_per_scheme() {
    let origin = TestOrigin::start();
    origin.set_handler("/v", |req, _| {
        let proto = req.header("x-forwarded-proto").unwrap_or_default();
        Reply::ok(format!("links to {proto}://"))
            .header("Cache-Control", "max-age=60")
            .header("Vary", "X-Forwarded-Proto")
    });
    let ca = TestCa::new();
    let node = with_tls(NodeConfig::new(&origin.url()), &ca).start();
    let https = tls_client(&ca, "www.test", node.https_addr(), Some(true));
    let plain = node.client();

    let r = get_from(&plain, &node.url("/v"), "www.test", &[]);
    assert_eq!(r.text(), "links to http://");
    // an attacker on plain HTTP claiming HTTPS gets (and stores) the http variant
    let r = get_from(
        &plain,
        &node.url("/v"),
        "www.test",
        &[("X-Forwarded-Proto", "https")],
    );
    assert_hit(&r, "plain HTTP again");
    assert_eq!(r.text(), "links to http://");
    // a client over TLS: its own variant, fetched once
    let r = get_from(&https, &node.https_url("www.test", "/v"), "", &[]);
    assert_stored_miss(&r, "the first HTTPS request");
    assert_eq!(r.text(), "links to https://");
    let r = get_from(
        &https,
        &node.https_url("www.test", "/v"),
        "",
        &[("X-Forwarded-Proto", "http")],
    );
    assert_hit(&r, "HTTPS again");
    assert_eq!(r.text(), "links to https://");
    // HTTP/1.1 over TLS is HTTPS too
    let h1 = tls_client(&ca, "www.test", node.https_addr(), Some(false));
    let r = get_from(&h1, &node.https_url("www.test", "/v"), "", &[]);
    assert_hit(&r, "HTTPS over HTTP/1.1");
    assert_eq!(r.text(), "links to https://");
    assert_eq!(origin.hits("/v"), 2);
}

#[test]
fn a_trusted_proxies_forwarding_fields_pass_with_the_peer_appended() {
    let (origin, node) = uncached("[client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]");
    let proxy = client_from(IpAddr::V4(Ipv4Addr::LOCALHOST));

    let r = get_from(&proxy, &node.url("/t"), "www.test", POISON);
    assert_eq!(r.status, 200);
    assert_passed(&seen(&origin, "/t", 0), "a trusted proxy");
    let r = get_from(&proxy, &node.url("/t2"), "www.test", &[]);
    assert_eq!(r.status, 200);
    let got = seen(&origin, "/t2", 0);
    assert_nodes_fields(
        &got,
        "127.0.0.1",
        "a trusted proxy naming no host or scheme",
    );

    // the same node, a client that is not a trusted proxy
    let other = client_from(OTHER_CLIENT);
    let r = get_from(&other, &node.url("/u"), "www.test", POISON);
    assert_eq!(r.status, 200);
    let got = seen(&origin, "/u", 0);
    assert_nodes_fields(&got, "127.0.0.2", "a client that is not a trusted proxy");
    assert_eq!(got.header("forwarded"), None);
    assert_eq!(got.header("x-original-url"), None);
}

#[test]
fn pass_forwarding_fields_all_passes_every_clients_fields() {
    let (origin, node) = uncached("[client_ip]\npass_forwarding_fields = \"all\"");
    let r = get_from(&node.client(), &node.url("/p"), "www.test", POISON);
    assert_eq!(r.status, 200);
    assert_passed(&seen(&origin, "/p", 0), "any client");
    let r = get_from(&node.client(), &node.url("/p2"), "www.test", &[]);
    assert_eq!(r.status, 200);
    assert_nodes_fields(&seen(&origin, "/p2", 0), "127.0.0.1", "a clean request");
}

#[test]
fn through_an_edge_and_a_shield_the_origin_sees_the_real_client_host_and_scheme() {
    let origin = TestOrigin::start();
    echo_fields(&origin, "/chain");
    let shield = NodeConfig::new(&origin.url())
        .node("name = \"shield\"")
        .extra("[shield]\ntrusted_edges = [\"127.0.0.1/32\"]");
    let ca = TestCa::new();
    let edge = NodeConfig::new(&origin.url())
        .node("name = \"edge\"")
        .extra(&format!(
            "[[origins]]\nname = \"shields\"\nservers = [\"http://{}\"]\n\n[shield]\norigin = \"shields\"",
            shield.http_addr()
        ));
    let edge = with_tls(edge, &ca);
    let (_shield, edge) = (shield.start(), edge.start());

    // the client connects from 127.0.0.2 over TLS, claiming to be someone else somewhere else
    let client = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca.root())
        .resolve("www.test", edge.https_addr())
        .local_address(OTHER_CLIENT)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let r = get_from(&client, &edge.https_url("www.test", "/chain"), "", POISON);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), edge.log());
    assert!(
        r.cache_status().starts_with("shield; fwd=uri-miss"),
        "through the shield: {}",
        r.cache_status()
    );
    let got = seen(&origin, "/chain", 0);
    assert_eq!(
        got.header_all("x-forwarded-for"),
        ["127.0.0.2, 127.0.0.1"],
        "the client, then the edge"
    );
    assert_eq!(got.header_all("x-forwarded-host"), ["www.test"]);
    assert_eq!(got.header_all("x-forwarded-proto"), ["https"]);
    for gone in [
        "forwarded",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-scheme",
    ] {
        assert_eq!(got.header(gone), None, "{gone} reached the origin");
    }
    assert_eq!(got.header("x-http-method-override"), None);
}

#[test]
fn a_bad_pass_forwarding_fields_value_is_an_error_naming_the_key() {
    let toml = NodeConfig::new("http://127.0.0.1:9")
        .extra("[client_ip]\npass_forwarding_fields = \"everyone\"")
        .config_text();
    let out = run_check(&toml);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted");
    assert!(
        err.contains("client_ip.pass_forwarding_fields") && err.contains("\"trusted\""),
        "{err}"
    );
}
