//! RFC 9111 conformance: invalidation by unsafe methods (Section 4.4) and `HEAD` (Section 4,
//! RFC 9110 9.3.2), black-box against the real binary and the scripted test origin.
mod common;

use common::*;

fn assert_not_hit(f: &Fetched, what: &str) {
    let cs = f.cache_status();
    assert!(
        !cs_has(&cs, "hit") && cs_get(&cs, "fwd").is_some(),
        "{what}: expected the origin to be asked, Cache-Status: {cs:?}"
    );
}

/// GETs are cacheable (`get#<n>`, max-age=60); any other method gets `status` (and `location` /
/// `content-location` headers when given).
fn resource(
    origin: &TestOrigin,
    path: &str,
    status: u16,
    location: Option<String>,
    content_location: Option<String>,
) {
    origin.set_handler(path, move |req, n| {
        if req.method == "GET" || req.method == "HEAD" {
            Reply::ok(format!("get#{n}")).header("Cache-Control", "max-age=60")
        } else {
            let mut r = Reply::new(status).body(format!("{}#{n}", req.method));
            if let Some(l) = &location {
                r = r.header("Location", l);
            }
            if let Some(l) = &content_location {
                r = r.header("Content-Location", l);
            }
            r
        }
    });
}

fn gets(origin: &TestOrigin, path: &str) -> usize {
    origin
        .requests(path)
        .iter()
        .filter(|r| r.method == "GET")
        .count()
}

/// Fills `path` (on `host`, or the node's address) and checks the second GET is a hit.
fn fill(node: &Node, path: &str, host: Option<&str>) -> Fetched {
    let headers: Vec<(&str, &str)> = host.map(|h| ("Host", h)).into_iter().collect();
    get_with(node, path, &headers);
    let r = get_with(node, path, &headers);
    assert_hit(&r, &format!("{path} (host {host:?}) filled"));
    r
}

/// RFC 9111 4.4: unsafe methods are forwarded (Cache-Status `fwd=method`, RFC 9211 2.2), and a
/// non-error (2xx/3xx) response invalidates the stored response for the target URI.
#[test]
fn unsafe_methods_pass_through_and_invalidate_the_target_uri() {
    let origin = TestOrigin::start();
    let cases = [
        ("POST", 201),
        ("PUT", 200),
        ("DELETE", 204),
        ("PATCH", 200),
        ("POST", 303),
    ];
    for (i, (_, status)) in cases.iter().enumerate() {
        resource(&origin, &format!("/res{i}"), *status, None, None);
    }
    let node = NodeConfig::new(&origin.url()).start();

    for (i, (method, status)) in cases.iter().enumerate() {
        let path = format!("/res{i}");
        let what = format!("{method} {path} answered {status}");
        let before = fill(&node, &path, None);
        assert_eq!(before.text(), "get#1");

        let r = request_with(&node, method, &path, &[]);
        assert_eq!(r.status, *status, "{what}");
        let cs = r.cache_status();
        assert_eq!(
            cs_get(&cs, "fwd").as_deref(),
            Some("method"),
            "{what}: {cs}"
        );
        assert_eq!(
            cs_get(&cs, "fwd-status"),
            Some(status.to_string()),
            "{what}: {cs}"
        );
        assert!(!cs_has(&cs, "stored"), "{what}: {cs}");
        let last = origin.requests(&path).pop().unwrap();
        assert_eq!(last.method, *method, "{what}: not forwarded as such");

        let r = get(&node, &path);
        assert_not_hit(&r, &format!("GET after {what}"));
        assert_eq!(r.text(), "get#3", "GET after {what}");
        assert_eq!(gets(&origin, &path), 2, "{what}");
        // and it is cached again
        assert_hit(&get(&node, &path), &format!("second GET after {what}"));
    }
}

/// RFC 9111 4.4: only non-error responses invalidate: a 500 (or a 404) to the POST leaves the
/// stored response in place.
#[test]
fn error_response_to_unsafe_method_does_not_invalidate() {
    let origin = TestOrigin::start();
    resource(&origin, "/e500", 500, None, None);
    resource(&origin, "/e404", 404, None, None);
    let node = NodeConfig::new(&origin.url()).start();

    for (path, status) in [("/e500", 500), ("/e404", 404)] {
        fill(&node, path, None);
        let r = request_with(&node, "POST", path, &[]);
        assert_eq!(r.status, status);
        assert_eq!(cs_get(&r.cache_status(), "fwd").as_deref(), Some("method"));
        let r = get(&node, path);
        assert_hit(&r, &format!("GET after a {status} to POST {path}"));
        assert_eq!(r.text(), "get#1");
        assert_eq!(gets(&origin, path), 1, "{path}");
    }
}

/// RFC 9111 4.4: a cache MAY invalidate the URIs in `Location` and `Content-Location` (Outpost
/// does), but MUST NOT when their origin differs from the target URI's.
#[test]
fn location_and_content_location_invalidated_only_on_the_same_host() {
    let origin = TestOrigin::start();
    for p in ["/a", "/b", "/c", "/untouched"] {
        resource(&origin, p, 200, None, None);
    }
    let node = NodeConfig::new(&origin.url()).start();
    let here = format!("http://{}", node.addr());
    resource(
        &origin,
        "/submit",
        201,
        Some("/a".to_string()),
        Some(format!("{here}/b")),
    );
    resource(
        &origin,
        "/submit-other",
        201,
        Some("http://other.example/c".to_string()),
        Some("http://other.example/untouched".to_string()),
    );

    fill(&node, "/a", None);
    fill(&node, "/b", None);
    fill(&node, "/untouched", None);
    fill(&node, "/c", Some("other.example"));
    fill(&node, "/untouched", Some("other.example"));

    // same host: relative Location and absolute Content-Location
    let r = request_with(&node, "POST", "/submit", &[]);
    assert_eq!(r.status, 201);
    let r = get(&node, "/a");
    assert_not_hit(&r, "/a after POST with Location: /a");
    assert_eq!(r.text(), "get#2");
    let r = get(&node, "/b");
    assert_not_hit(&r, "/b after POST with Content-Location: <same host>/b");
    assert_eq!(r.text(), "get#2");
    assert_hit(&get(&node, "/untouched"), "/untouched (not named)");

    // another host named in Location / Content-Location: nothing invalidated there
    let r = request_with(&node, "POST", "/submit-other", &[]);
    assert_eq!(r.status, 201);
    let r = get_with(&node, "/c", &[("Host", "other.example")]);
    assert_hit(
        &r,
        "other.example/c after a POST to another host with Location: http://other.example/c",
    );
    let r = get_with(&node, "/untouched", &[("Host", "other.example")]);
    assert_hit(
        &r,
        "other.example/untouched after a POST to another host with Content-Location to it",
    );
    assert_eq!(gets(&origin, "/c"), 1);
}

/// RFC 9111 4.4 (with 4.1): invalidating a URI invalidates every stored `Vary` variant of it.
#[test]
fn invalidation_covers_all_vary_variants() {
    let origin = TestOrigin::start();
    origin.set_handler("/var", |req, n| {
        if req.method == "GET" {
            Reply::ok(format!(
                "{}#{n}",
                req.header("accept-language").unwrap_or_default()
            ))
            .header("Cache-Control", "max-age=60")
            .header("Vary", "Accept-Language")
        } else {
            Reply::new(204)
        }
    });
    let node = NodeConfig::new(&origin.url()).start();
    let lang = |l: &str| get_with(&node, "/var", &[("Accept-Language", l)]);

    assert_eq!(lang("en").text(), "en#1");
    assert_eq!(lang("de").text(), "de#2");
    assert_hit(&lang("en"), "en filled");
    assert_hit(&lang("de"), "de filled");

    let r = request_with(&node, "PUT", "/var", &[("Accept-Language", "en")]);
    assert_eq!(r.status, 204);

    let en = lang("en");
    assert_not_hit(&en, "en variant after PUT");
    let de = lang("de");
    assert_not_hit(&de, "de variant after PUT (not the request's variant)");
    assert_eq!(de.text(), "de#5", "stale de variant served after PUT");
    assert_eq!(gets(&origin, "/var"), 4);
}

/// RFC 9110 9.3.2 / RFC 9111 4: a `HEAD` can be answered from a stored `GET` response (no
/// origin request). A `HEAD` miss must not poison the cache: the next `GET` gets the full body.
#[test]
fn head_answered_from_cached_get_and_head_miss_does_not_poison() {
    let origin = TestOrigin::start();
    for p in ["/h1", "/h2"] {
        origin.set_handler(p, |_, n| {
            Reply::ok(format!("head-test-body#{n}"))
                .header("Cache-Control", "max-age=60")
                .header("X-Meta", "m")
        });
    }
    let node = NodeConfig::new(&origin.url()).start();

    // HEAD after a cached GET
    let g = get(&node, "/h1");
    assert_eq!(g.text(), "head-test-body#1");
    let h = request_with(&node, "HEAD", "/h1", &[]);
    assert_eq!(h.status, 200);
    assert_hit(&h, "HEAD of a cached GET");
    assert!(h.body.is_empty());
    assert_eq!(h.header("x-meta").as_deref(), Some("m"));
    if let Some(cl) = h.header("content-length") {
        assert_eq!(cl, g.body.len().to_string(), "HEAD Content-Length");
    }
    assert_eq!(origin.hits("/h1"), 1, "HEAD went to the origin");

    // HEAD first. Observed (and RFC-allowed): the miss is fetched from the origin as a GET
    // (like nginx's proxy_cache_convert_head), the client gets the headers only, and the full
    // GET response is stored, so the next GET is a hit with the complete body. What matters for
    // conformance is that a HEAD never leaves an empty body behind for later GETs.
    let h = request_with(&node, "HEAD", "/h2", &[]);
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty(), "HEAD response with a body");
    assert_eq!(h.header("x-meta").as_deref(), Some("m"));
    let head_cs = h.cache_status();
    let g = get(&node, "/h2");
    assert_eq!(g.status, 200);
    let methods: Vec<String> = origin
        .requests("/h2")
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(
        g.text(),
        "head-test-body#1",
        "GET after a HEAD miss: wrong or truncated body ({}; HEAD was {head_cs:?}; origin saw {methods:?})",
        g.cache_status()
    );
    assert!(
        cs_has(&head_cs, "stored"),
        "HEAD miss did not populate the cache: {head_cs:?}"
    );
    assert_hit(&g, "GET after a HEAD miss");
    assert_eq!(
        methods,
        ["GET"],
        "expected the HEAD miss to be fetched as one GET"
    );
    let h2 = request_with(&node, "HEAD", "/h2", &[]);
    assert_hit(&h2, "HEAD after the GET");
    assert_eq!(origin.hits("/h2"), 1);
}
