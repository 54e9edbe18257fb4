//! RFC 9111 conformance: what a shared cache may store (Section 3, 3.5, 5.2), black-box against
//! the real binary and the scripted test origin.
mod common;

use common::*;
use std::time::{Duration, SystemTime};

/// Forwarded to the origin and not stored.
fn assert_not_stored(f: &Fetched, what: &str) {
    let cs = f.cache_status();
    assert!(
        !cs_has(&cs, "hit") && !cs_has(&cs, "stored") && cs_get(&cs, "fwd-status").is_some(),
        "{what}: expected a forwarded, unstored response, Cache-Status: {cs:?}"
    );
}

/// RFC 9111 5.2.2.5: a response with `no-store` is not stored.
#[test]
fn response_no_store_is_not_stored() {
    let origin = TestOrigin::start();
    origin.set(
        "/ns",
        Reply::ok("ns")
            .header("Cache-Control", "no-store, max-age=3600")
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();
    for i in 1..=3 {
        let r = get(&node, "/ns");
        assert_eq!(r.text(), format!("ns#{i}"));
        assert_not_stored(&r, &format!("request {i}"));
        assert_eq!(
            cs_get(&r.cache_status(), "detail").as_deref(),
            Some("no-store")
        );
    }
    assert_eq!(origin.hits("/ns"), 3);
}

/// RFC 9111 5.2.1.5: `no-store` in the request: the response to it is not stored.
#[test]
fn request_no_store_prevents_storing_the_response() {
    let origin = TestOrigin::start();
    origin.set(
        "/rns",
        Reply::ok("rns")
            .header("Cache-Control", "max-age=3600")
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();

    let r = get_with(&node, "/rns", &[("Cache-Control", "no-store")]);
    assert_eq!(r.text(), "rns#1");
    assert_not_stored(&r, "request with no-store");

    // nothing was stored: the next plain request is a miss (and is stored)
    let r = get(&node, "/rns");
    assert_eq!(
        r.text(),
        "rns#2",
        "the no-store request's response was stored"
    );
    assert_stored_miss(&r, "plain request after the no-store one");
    let r = get(&node, "/rns");
    assert_hit(&r, "third request");
    assert_eq!(r.text(), "rns#2");
    assert_eq!(origin.hits("/rns"), 2);
}

/// RFC 9111 5.2.2.7: unqualified `private` is not stored by a shared cache; `private="X-Secret"`
/// may be stored, but without the named field.
#[test]
fn private_unqualified_not_stored_qualified_strips_field() {
    let origin = TestOrigin::start();
    origin.set(
        "/priv",
        Reply::ok("priv")
            .header("Cache-Control", "private, max-age=3600")
            .body_counter(),
    );
    origin.set(
        "/priv-field",
        Reply::ok("pf")
            .header("Cache-Control", "private=\"X-Secret\", max-age=3600")
            .header("X-Secret", "user-42-token")
            .header("X-Public", "shared")
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();

    for i in 1..=2 {
        let r = get(&node, "/priv");
        assert_eq!(r.text(), format!("priv#{i}"));
        assert_not_stored(&r, &format!("private, request {i}"));
    }
    assert_eq!(origin.hits("/priv"), 2);

    let r = get(&node, "/priv-field");
    assert_eq!(r.text(), "pf#1");
    assert_stored_miss(&r, "private=\"X-Secret\"");
    for i in 1..=2 {
        let r = get(&node, "/priv-field");
        assert_hit(&r, &format!("private=\"X-Secret\" hit {i}"));
        assert_eq!(r.text(), "pf#1");
        assert_eq!(
            r.header("x-secret"),
            None,
            "a field named in private=\"...\" was stored and served from cache"
        );
        assert_eq!(r.header("x-public").as_deref(), Some("shared"));
    }
    assert_eq!(origin.hits("/priv-field"), 1);
}

/// Set-Cookie (RFC 9111 3 allows storing it, RFC 6265 warns): not stored by default, stored when
/// the rule sets `cacheable.set_cookie = true`.
#[test]
fn set_cookie_not_stored_by_default_stored_when_rule_allows() {
    let origin = TestOrigin::start();
    for p in ["/default/c", "/cookies/c"] {
        origin.set(
            p,
            Reply::ok("c")
                .header("Cache-Control", "max-age=3600")
                .header("Set-Cookie", "session=abc; Path=/")
                .body_counter(),
        );
    }
    let node = NodeConfig::new(&origin.url())
        .rules(
            r#"
[[rules]]
name = "cookies"
action = "cache"
[rules.match]
path_prefix = ["/cookies/"]
[rules.cacheable]
set_cookie = true

[[rules]]
name = "default"
action = "cache"
"#,
        )
        .start();

    for i in 1..=2 {
        let r = get(&node, "/default/c");
        assert_eq!(r.text(), format!("c#{i}"));
        assert_not_stored(&r, &format!("Set-Cookie by default, request {i}"));
        assert!(r.header("set-cookie").is_some(), "Set-Cookie not forwarded");
    }
    assert_eq!(origin.hits("/default/c"), 2);

    assert_stored_miss(
        &get(&node, "/cookies/c"),
        "Set-Cookie with set_cookie = true",
    );
    let r = get(&node, "/cookies/c");
    assert_hit(&r, "Set-Cookie with set_cookie = true");
    assert_eq!(r.text(), "c#1");
    assert_eq!(origin.hits("/cookies/c"), 1);

    // the page stored, its cookie not (README): private="Set-Cookie" (RFC 9111 5.2.2.7)
    origin.set(
        "/cookies/private",
        Reply::ok("p")
            .header("Cache-Control", "max-age=3600, private=\"Set-Cookie\"")
            .header("Set-Cookie", "session=abc; Path=/"),
    );
    let r = get(&node, "/cookies/private");
    assert_stored_miss(&r, "private=\"Set-Cookie\"");
    assert!(
        r.header("set-cookie").is_some(),
        "the miss lost its Set-Cookie"
    );
    let r = get(&node, "/cookies/private");
    assert_hit(&r, "private=\"Set-Cookie\"");
    assert!(
        r.header("set-cookie").is_none(),
        "a cookie named in private=\"...\" was served from cache"
    );
    // the same needs no opt-in: what is stored carries no cookie
    origin.set(
        "/default/private",
        Reply::ok("d")
            .header("Cache-Control", "max-age=3600, private=\"set-cookie\"")
            .header("Set-Cookie", "session=abc; Path=/"),
    );
    let r = get(&node, "/default/private");
    assert_stored_miss(&r, "private=\"set-cookie\" by default");
    assert!(r.header("set-cookie").is_some());
    let r = get(&node, "/default/private");
    assert_hit(&r, "private=\"set-cookie\" by default");
    assert!(r.header("set-cookie").is_none());
}

/// RFC 9111 3.5: the response to a request with `Authorization` is stored only if it has
/// `public`, `s-maxage` or `must-revalidate`.
#[test]
fn authorization_request_response_stored_only_with_explicit_permission() {
    let origin = TestOrigin::start();
    let cases = [
        ("/auth/plain", "max-age=3600", false),
        ("/auth/public", "public, max-age=3600", true),
        ("/auth/smaxage", "s-maxage=3600", true),
        ("/auth/mustrev", "max-age=3600, must-revalidate", true),
    ];
    for (path, cc, _) in cases {
        origin.set(
            path,
            Reply::ok(path).header("Cache-Control", cc).body_counter(),
        );
    }
    let node = NodeConfig::new(&origin.url()).start();
    let auth = [("Authorization", "Bearer alice")];

    for (path, cc, storable) in cases {
        let r1 = get_with(&node, path, &auth);
        assert_eq!(r1.text(), format!("{path}#1"));
        let r2 = get_with(&node, path, &auth);
        if storable {
            assert_stored_miss(&r1, &format!("{path} ({cc}) with Authorization"));
            assert_hit(&r2, &format!("{path} ({cc}) with Authorization, again"));
            assert_eq!(r2.text(), format!("{path}#1"));
            assert_eq!(origin.hits(path), 1, "{path}");
        } else {
            assert_not_stored(&r1, &format!("{path} ({cc}) with Authorization"));
            assert_not_stored(&r2, &format!("{path} ({cc}) with Authorization, again"));
            assert_eq!(r2.text(), format!("{path}#2"));
            // and an anonymous request must not see the authorized response either
            let r3 = get(&node, path);
            assert_eq!(
                r3.text(),
                format!("{path}#3"),
                "a response to an authorized request leaked to an anonymous one ({})",
                r3.cache_status()
            );
        }
    }
}

/// RFC 9111 3.5: a stored response without `public` / `s-maxage` / `must-revalidate` is not used
/// for a request carrying `Authorization` (the origin is asked); a `public` one is.
#[test]
fn stored_response_served_to_authorized_request_only_if_public() {
    let origin = TestOrigin::start();
    origin.set(
        "/shared/plain",
        Reply::ok("plain")
            .header("Cache-Control", "max-age=3600")
            .body_counter(),
    );
    origin.set(
        "/shared/public",
        Reply::ok("public")
            .header("Cache-Control", "public, max-age=3600")
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url()).start();
    let auth = [("Authorization", "Basic Ym9iOnNlY3JldA==")];

    // stored by anonymous requests
    assert_stored_miss(&get(&node, "/shared/plain"), "/shared/plain anonymous");
    assert_stored_miss(&get(&node, "/shared/public"), "/shared/public anonymous");

    let r = get_with(&node, "/shared/plain", &auth);
    assert!(
        !cs_has(&r.cache_status(), "hit"),
        "non-public stored response served to an Authorization request: {}",
        r.cache_status()
    );
    assert_eq!(r.text(), "plain#2");
    assert_eq!(origin.hits("/shared/plain"), 2);
    assert_eq!(
        origin.requests("/shared/plain")[1]
            .header("authorization")
            .as_deref(),
        Some("Basic Ym9iOnNlY3JldA=="),
        "Authorization not forwarded to the origin"
    );
    // the authorized response did not replace the anonymous one
    let r = get(&node, "/shared/plain");
    assert_ne!(
        r.text(),
        "plain#2",
        "the authorized response was stored and served to an anonymous request ({})",
        r.cache_status()
    );

    let r = get_with(&node, "/shared/public", &auth);
    assert_hit(&r, "public stored response to an Authorization request");
    assert_eq!(r.text(), "public#1");
    assert_eq!(origin.hits("/shared/public"), 1);
}

/// RFC 9111 3, 4.2: any final status with explicit freshness is stored (299, 303, 4xx, 5xx and
/// codes the node does not know); without it, only the heuristically cacheable ones (404 here)
/// and no 500. A rule's own `cacheable.status` restricts storage to its codes.
#[test]
fn any_final_status_with_explicit_freshness_is_stored() {
    let origin = TestOrigin::start();
    let codes = [299, 303, 400, 404, 499, 500, 502, 503, 504, 599];
    for code in codes {
        for prefix in ["", "/strict"] {
            origin.set(
                &format!("{prefix}/explicit/{code}"),
                Reply::new(code)
                    .body("x")
                    .header("Cache-Control", "max-age=60")
                    .body_counter(),
            );
        }
    }
    origin.set(
        "/expires/503",
        Reply::new(503)
            .body("e")
            .header(
                "Expires",
                &http_date(SystemTime::now() + Duration::from_secs(60)),
            )
            .body_counter(),
    );
    // 404 is heuristically cacheable
    origin.set(
        "/missing-heuristic",
        Reply::new(404)
            .body("gone-h")
            .header("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")
            .body_counter(),
    );
    origin.set(
        "/broken",
        Reply::new(500)
            .body("err")
            .header("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")
            .body_counter(),
    );
    let node = NodeConfig::new(&origin.url())
        .rules(
            r#"
[[rules]]
name = "strict"
action = "cache"
[rules.match]
path_prefix = ["/strict/"]
[rules.cacheable]
status = [200]

[[rules]]
name = "default"
action = "cache"
"#,
        )
        .start();

    let mut stored: Vec<String> = codes.iter().map(|c| format!("/explicit/{c}")).collect();
    stored.extend(["/expires/503".to_string(), "/missing-heuristic".to_string()]);
    for path in &stored {
        let r = get(&node, path);
        assert_stored_miss(&r, path);
        let r = get(&node, path);
        assert_hit(&r, path);
        assert!(r.text().ends_with("#1"), "{path}: {}", r.text());
        assert_eq!(origin.hits(path), 1, "{path}");
    }
    let r = get(&node, "/explicit/599");
    assert_eq!(r.status, 599, "an unknown code is served as it came");

    for path in ["/broken", "/strict/explicit/503", "/strict/explicit/404"] {
        for i in 1..=2 {
            let r = get(&node, path);
            assert_eq!(
                r.text(),
                format!("{}#{i}", if path == "/broken" { "err" } else { "x" })
            );
            assert_not_stored(&r, &format!("{path}, request {i}"));
        }
        assert_eq!(origin.hits(path), 2, "{path}");
    }
}

/// RFC 9111 3: a response stored for its explicit freshness alone is, once stale, refetched,
/// never served stale: not past its max-age, not when the origin is gone.
#[test]
fn a_stored_error_is_never_served_stale() {
    let origin = TestOrigin::start();
    origin.set_handler("/flaky", |_, n| {
        if n == 1 {
            Reply::new(503)
                .body("busy")
                .header("Cache-Control", "max-age=2")
                .header("ETag", "\"b\"")
        } else {
            Reply::ok("back")
        }
    });
    origin.set_handler("/down", |_, _| {
        Reply::new(503)
            .body("busy")
            .header("Cache-Control", "max-age=2")
            .header("ETag", "\"b\"")
    });
    let node = NodeConfig::new(&origin.url()).start();
    for path in ["/flaky", "/down"] {
        let r = get(&node, path);
        assert_eq!(r.status, 503);
        assert_stored_miss(&r, path);
        assert_hit(&get(&node, path), path);
    }
    // 2 s of freshness counted from the origin's Date (whole seconds: up to 1 s already
    // gone when stored), so the hit above is fresh and this is past it
    std::thread::sleep(Duration::from_millis(3100));
    let r = get(&node, "/flaky");
    assert_eq!((r.status, r.text().as_str()), (200, "back"));
    drop(origin);
    let r = get(&node, "/down");
    assert_eq!(
        r.status,
        502,
        "the stale 503 was served: {}",
        r.cache_status()
    );
}

/// RFC 9111 5.2.2.3: `must-understand` stores a response whose status the cache knows, its
/// `no-store` notwithstanding, and never one whose status it does not know. RFC 9110 15.1:
/// heuristic freshness only for heuristically cacheable codes.
#[test]
fn must_understand_and_heuristics_follow_the_status() {
    let origin = TestOrigin::start();
    let mu = "max-age=60, must-understand, no-store";
    for (path, code) in [("/mu/200", 200), ("/mu/599", 599)] {
        origin.set(
            path,
            Reply::new(code)
                .body("m")
                .header("Cache-Control", mu)
                .body_counter(),
        );
    }
    for (path, code) in [("/h/302", 302), ("/h/599", 599)] {
        origin.set(
            path,
            Reply::new(code)
                .body("h")
                .header("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")
                .body_counter(),
        );
    }
    let node = NodeConfig::new(&origin.url()).start();
    assert_stored_miss(&get(&node, "/mu/200"), "must-understand, 200");
    let r = get(&node, "/mu/200");
    assert_hit(&r, "must-understand, 200");
    assert_eq!(r.text(), "m#1");
    for path in ["/mu/599", "/h/302", "/h/599"] {
        for i in 1..=2 {
            assert_not_stored(&get(&node, path), &format!("{path}, request {i}"));
        }
    }
    let r = get(&node, "/mu/599");
    assert_eq!(
        cs_get(&r.cache_status(), "detail").as_deref(),
        Some("must-understand")
    );
}
