//! RFC 9111 conformance: `Vary` and secondary keys (Section 4.1), black-box against the real
//! binary and the scripted test origin.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// Answers with a body naming the request's values of `fields` and the hit number, with
/// `Vary: <vary>` and `max-age=60`.
fn varying(origin: &TestOrigin, path: &str, vary: &'static str, fields: &'static [&'static str]) {
    origin.set_handler(path, move |req, n| {
        let values: Vec<String> = fields
            .iter()
            .map(|f| req.header(f).unwrap_or_else(|| "-".to_string()))
            .collect();
        Reply::ok(format!("{}#{n}", values.join("|")))
            .header("Cache-Control", "max-age=60")
            .header("Vary", vary)
    });
}

/// A GET written byte for byte (header-name case preserved on the wire): (head, body).
fn raw_get(node: &Node, path: &str, header_lines: &[&str]) -> (String, String) {
    let mut sock = TcpStream::connect(node.addr()).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", node.addr());
    for l in header_lines {
        req.push_str(l);
        req.push_str("\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    sock.read_to_end(&mut out).expect("read response");
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("response head");
    (head.to_string(), body.to_string())
}

fn raw_cache_status(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("cache-status")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

fn lang(node: &Node, path: &str, value: &str) -> Fetched {
    get_with(node, path, &[("Accept-Language", value)])
}

/// RFC 9111 4.1: with `Vary: Accept-Language`, a stored response is only reused for requests
/// with the same `Accept-Language`; each value gets its own stored variant, and the second
/// value's first request is a `vary-miss` (RFC 9211 2.2).
#[test]
fn vary_stores_one_variant_per_request_value() {
    let origin = TestOrigin::start();
    varying(&origin, "/v", "Accept-Language", &["accept-language"]);
    let node = NodeConfig::new(&origin.url()).start();

    let en = lang(&node, "/v", "en");
    assert_eq!(en.text(), "en#1");
    let cs = en.cache_status();
    assert_eq!(cs_get(&cs, "fwd").as_deref(), Some("uri-miss"), "{cs}");
    assert!(cs_has(&cs, "stored"), "{cs}");

    let de = lang(&node, "/v", "de");
    assert_eq!(
        de.text(),
        "de#2",
        "the en variant was served to a de request ({})",
        de.cache_status()
    );
    let cs = de.cache_status();
    assert_eq!(cs_get(&cs, "fwd").as_deref(), Some("vary-miss"), "{cs}");
    assert!(cs_has(&cs, "stored"), "{cs}");

    for round in 0..2 {
        let r = lang(&node, "/v", "en");
        assert_hit(&r, &format!("en again ({round})"));
        assert_eq!(r.text(), "en#1");
        let r = lang(&node, "/v", "de");
        assert_hit(&r, &format!("de again ({round})"));
        assert_eq!(r.text(), "de#2");
    }
    assert_eq!(origin.hits("/v"), 2);

    // a request without the field is a variant of its own
    let none = get(&node, "/v");
    assert_eq!(none.text(), "-#3");
    assert_eq!(
        cs_get(&none.cache_status(), "fwd").as_deref(),
        Some("vary-miss")
    );
    let none = get(&node, "/v");
    assert_hit(&none, "no Accept-Language again");
    assert_eq!(none.text(), "-#3");
    // and the others are still there
    assert_eq!(lang(&node, "/v", "en").text(), "en#1");
    assert_eq!(lang(&node, "/v", "de").text(), "de#2");
    assert_eq!(origin.hits("/v"), 3);
}

/// RFC 9111 4.1: `Vary: *` always fails to match: such a response is never served from cache.
#[test]
fn vary_star_is_never_served_from_cache() {
    let origin = TestOrigin::start();
    origin.set(
        "/star",
        Reply::ok("star")
            .header("Cache-Control", "max-age=60")
            .header("Vary", "*")
            .body_counter(),
    );
    origin.set(
        "/star-in-list",
        Reply::ok("star-in-list")
            .header("Cache-Control", "max-age=60")
            .header("Vary", "Accept-Language, *")
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();
    for path in ["/star", "/star-in-list"] {
        for i in 1..=3 {
            let r = lang(&node, path, "en");
            assert_eq!(r.text(), format!("{}#{i}", &path[1..]));
            assert!(
                !cs_has(&r.cache_status(), "hit"),
                "{path} request {i}: Vary: * served from cache: {}",
                r.cache_status()
            );
        }
        assert_eq!(origin.hits(path), 3, "{path}");
    }
}

/// RFC 9111 4.1: with several fields (in one `Vary` or spread over several `Vary` lines) every
/// one of them must match.
#[test]
fn vary_with_multiple_fields_matches_all_of_them() {
    let origin = TestOrigin::start();
    varying(
        &origin,
        "/multi",
        "Accept-Language, X-Device",
        &["accept-language", "x-device"],
    );
    // the same fields as two Vary field lines
    origin.set_handler("/multi-lines", |req, n| {
        let l = req.header("accept-language").unwrap_or_default();
        let d = req.header("x-device").unwrap_or_default();
        Reply::ok(format!("{l}|{d}#{n}"))
            .header("Cache-Control", "max-age=60")
            .header("Vary", "Accept-Language")
            .header("Vary", "X-Device")
    });
    let node = NodeConfig::new(&origin.url()).start();

    for path in ["/multi", "/multi-lines"] {
        let combos = [("en", "mobile"), ("en", "desktop"), ("de", "mobile")];
        let mut bodies = Vec::new();
        for (l, d) in combos {
            let r = get_with(&node, path, &[("Accept-Language", l), ("X-Device", d)]);
            assert_eq!(
                r.text(),
                format!("{l}|{d}#{}", bodies.len() + 1),
                "{path} {l}/{d}: served another variant ({})",
                r.cache_status()
            );
            bodies.push(r.text());
        }
        for (i, (l, d)) in combos.iter().enumerate() {
            let r = get_with(&node, path, &[("Accept-Language", l), ("X-Device", d)]);
            assert_hit(&r, &format!("{path} {l}/{d} again"));
            assert_eq!(r.text(), bodies[i], "{path} {l}/{d}");
        }
        // other headers do not matter
        let r = get_with(
            &node,
            path,
            &[
                ("Accept-Language", "en"),
                ("X-Device", "mobile"),
                ("X-Other", "1"),
            ],
        );
        assert_hit(&r, &format!("{path} with an unrelated header"));
        assert_eq!(r.text(), bodies[0]);
        assert_eq!(origin.hits(path), 3, "{path}");
    }
}

/// RFC 9111 4.1 / RFC 9110 5.1: field names are case-insensitive, in `Vary` and in the request.
#[test]
fn vary_field_names_are_case_insensitive() {
    let origin = TestOrigin::start();
    varying(&origin, "/case", "ACCEPT-language", &["accept-language"]);
    origin.set_handler("/case-dup", |req, n| {
        Reply::ok(format!(
            "{}#{n}",
            req.header("accept-language").unwrap_or_default()
        ))
        .header("Cache-Control", "max-age=60")
        .header("Vary", "Accept-Language, accept-LANGUAGE")
    });
    let node = NodeConfig::new(&origin.url()).start();

    for path in ["/case", "/case-dup"] {
        let en = lang(&node, path, "en");
        let de = lang(&node, path, "de");
        assert!(en.text().starts_with("en#"), "{path}: {}", en.text());
        assert!(
            de.text().starts_with("de#"),
            "{path}: en variant served to de: {}",
            de.text()
        );
        // the request field name spelled differently on the wire is still the same field
        for line in [
            "accept-language: en",
            "ACCEPT-LANGUAGE: en",
            "Accept-Language: en",
        ] {
            let (head, body) = raw_get(&node, path, &[line]);
            let cs = raw_cache_status(&head);
            assert!(
                cs_has(&cs, "hit") && cs_get(&cs, "fwd").is_none(),
                "{path} with `{line}`: expected a hit, Cache-Status {cs:?}"
            );
            assert_eq!(body, en.text(), "{path} with `{line}`");
        }
        let r = get_with(&node, path, &[("Accept-Language", "de")]);
        assert_hit(&r, &format!("{path} de again"));
        assert_eq!(r.text(), de.text());
        assert_eq!(origin.hits(path), 2, "{path}");
    }
}

/// RFC 9111 4.1 (normalisation): request values that differ only in whitespace, in the case of
/// tokens (where case carries no meaning) or in the order of list members (where order carries
/// none) select the same stored variant; anything else still gets its own.
#[test]
fn vary_values_are_normalised_where_the_field_allows() {
    let origin = TestOrigin::start();
    varying(&origin, "/lang", "Accept-Language", &["accept-language"]);
    varying(&origin, "/accept", "Accept", &["accept"]);
    varying(&origin, "/custom", "X-Device", &["x-device"]);
    let node = NodeConfig::new(&origin.url()).start();
    let ask = |path: &str, field: &str, value: &str| {
        let r = get_with(&node, path, &[(field, value)]);
        assert_eq!(r.status, 200, "{path} {value:?}");
        r.text()
    };
    // (path, field, first value, values that must share its variant, one that must not)
    let cases: [(&str, &str, &str, &[&str], &str); 3] = [
        (
            "/lang",
            "Accept-Language",
            "en, fr;q=0.5",
            &["en,fr;q=0.5", "  EN ,  FR ; q=0.5 ", "en,,fr;q=0.5"],
            "fr;q=0.5, en",
        ),
        (
            "/accept",
            "Accept",
            "text/html, application/json;q=0.9",
            &[
                "application/json;q=0.9,text/html",
                "Application/JSON ; q=0.9, TEXT/HTML",
            ],
            "text/html",
        ),
        (
            "/custom",
            "X-Device",
            "mobile",
            &[" mobile ", "mobile,"],
            "Mobile",
        ),
    ];
    for (path, field, first, same, other) in cases {
        let stored = ask(path, field, first);
        assert!(stored.ends_with("#1"), "{path}: {stored}");
        for value in same {
            assert_eq!(
                ask(path, field, value),
                stored,
                "{path}: {value:?} ~ {first:?}"
            );
        }
        assert!(
            ask(path, field, other).ends_with("#2"),
            "{path}: {other:?} is another variant than {first:?}"
        );
        assert_eq!(origin.hits(path), 2, "{path}");
    }
}
