//! RFC 9213 targeted cache control, black-box: `CDN-Cache-Control` (and the node-specific
//! `Outpost-Cache-Control`, first) governs this cache instead of `Cache-Control` and `Expires`,
//! in both directions; an invalid targeted field is ignored; clients still get `Cache-Control`
//! unchanged; forwarding / stripping per config; rules may ignore targeted fields; Cache-Status
//! names the field that decided.
mod common;

use common::*;

/// Two GETs of `path`: whether the second was a hit, and the origin's count.
fn second_is_hit(node: &Node, origin: &TestOrigin, path: &str) -> (bool, usize) {
    get(node, path);
    let r = get(node, path);
    (r.cache_status().contains("; hit"), origin.hits(path))
}

fn node(origin: &TestOrigin) -> Node {
    NodeConfig::new(&origin.url()).start()
}

#[test]
fn cdn_cache_control_overrides_cache_control_both_ways() {
    let origin = TestOrigin::start();
    // longer for the CDN than for browsers
    origin.set(
        "/longer",
        Reply::ok("l")
            .header("Cache-Control", "max-age=0, must-revalidate")
            .header("CDN-Cache-Control", "max-age=600"),
    );
    // shorter for the CDN
    origin.set(
        "/shorter",
        Reply::ok("s")
            .header("Cache-Control", "max-age=600")
            .header("CDN-Cache-Control", "max-age=0")
            .header("ETag", "\"s\""),
    );
    // no-store / private only for the CDN
    origin.set(
        "/no-store",
        Reply::ok("n")
            .header("Cache-Control", "public, max-age=600")
            .header("CDN-Cache-Control", "no-store"),
    );
    origin.set(
        "/private",
        Reply::ok("p")
            .header("Cache-Control", "max-age=600")
            .header("CDN-Cache-Control", "private"),
    );
    let node = node(&origin);
    assert_eq!(second_is_hit(&node, &origin, "/longer"), (true, 1));
    assert_eq!(second_is_hit(&node, &origin, "/shorter"), (false, 2));
    assert_eq!(second_is_hit(&node, &origin, "/no-store"), (false, 2));
    assert_eq!(second_is_hit(&node, &origin, "/private"), (false, 2));

    // clients get both fields as the origin sent them (CDN-Cache-Control is forwarded: caches
    // further down may use it)
    let r = get(&node, "/longer");
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("max-age=0, must-revalidate")
    );
    assert_eq!(
        r.header("cdn-cache-control").as_deref(),
        Some("max-age=600")
    );
    // Cache-Status says which field decided
    assert!(
        r.cache_status().contains("detail=cdn-cache-control"),
        "{}",
        r.cache_status()
    );
}

#[test]
fn a_targeted_field_replaces_expires_and_an_invalid_one_is_ignored() {
    let origin = TestOrigin::start();
    let future = http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(3600));
    origin.set(
        "/expires",
        Reply::ok("e")
            .header("Expires", &future)
            .header("CDN-Cache-Control", "max-age=0")
            .header("ETag", "\"e\""),
    );
    origin.set(
        "/invalid",
        Reply::ok("i")
            .header("Cache-Control", "max-age=600")
            .header("CDN-Cache-Control", "max-age=\"sixty"),
    );
    origin.set(
        "/empty",
        Reply::ok("x")
            .header("Cache-Control", "max-age=600")
            .header("CDN-Cache-Control", ""),
    );
    let node = node(&origin);
    assert_eq!(second_is_hit(&node, &origin, "/expires"), (false, 2));
    assert_eq!(second_is_hit(&node, &origin, "/invalid"), (true, 1));
    assert_eq!(second_is_hit(&node, &origin, "/empty"), (true, 1));
    let r = get(&node, "/invalid");
    assert!(
        !r.cache_status().contains("detail="),
        "{}",
        r.cache_status()
    );
}

#[test]
fn the_node_specific_field_comes_first_and_is_stripped_for_clients() {
    let origin = TestOrigin::start();
    origin.set(
        "/node",
        Reply::ok("o")
            .header("Cache-Control", "no-cache")
            .header("CDN-Cache-Control", "no-store")
            .header("Outpost-Cache-Control", "max-age=600"),
    );
    let node = node(&origin);
    assert_eq!(second_is_hit(&node, &origin, "/node"), (true, 1));
    let r = get(&node, "/node");
    assert_eq!(r.header("outpost-cache-control"), None);
    assert_eq!(r.header("cdn-cache-control").as_deref(), Some("no-store"));
    assert!(
        r.cache_status().contains("detail=outpost-cache-control"),
        "{}",
        r.cache_status()
    );

    // configured otherwise: only CDN-Cache-Control obeyed, nothing stripped
    let origin = TestOrigin::start();
    origin.set(
        "/node",
        Reply::ok("o")
            .header("CDN-Cache-Control", "no-store")
            .header("Outpost-Cache-Control", "max-age=600"),
    );
    let node = NodeConfig::new(&origin.url())
        .cache("targeted_fields = [\"CDN-Cache-Control\"]\nstrip_targeted = []")
        .start();
    assert_eq!(second_is_hit(&node, &origin, "/node"), (false, 2));
    assert_eq!(
        get(&node, "/node")
            .header("outpost-cache-control")
            .as_deref(),
        Some("max-age=600")
    );
}

#[test]
fn a_rule_can_ignore_targeted_fields() {
    let origin = TestOrigin::start();
    for p in ["/plain/a", "/cdn/a"] {
        origin.set(
            p,
            Reply::ok("r")
                .header("Cache-Control", "max-age=600")
                .header("CDN-Cache-Control", "no-store"),
        );
    }
    let config = NodeConfig::new(&origin.url())
        .rules("[[rules]]\nname = \"plain\"\n[rules.match]\npath_prefix = [\"/plain/\"]\n[rules.ttl]\ntargeted = false")
        .rules("[[rules]]\nname = \"default\"");
    let out = run_check(&config.config_text());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# freshness precedence: Cache-Control (targeted fields ignored"),
        "{text}"
    );
    assert!(
        text.contains("# freshness precedence: outpost-cache-control (RFC 9213) > cdn-cache-control (RFC 9213) > Cache-Control > Expires"),
        "{text}"
    );
    let node = config.start();
    assert_eq!(second_is_hit(&node, &origin, "/plain/a"), (true, 1));
    assert_eq!(second_is_hit(&node, &origin, "/cdn/a"), (false, 2));
}

#[test]
fn targeted_settings_are_validated() {
    for (cache, key) in [
        (
            "targeted_fields = [\"bad name\"]",
            "cache.targeted_fields[0]",
        ),
        (
            "targeted_fields = [\"Cache-Control\"]",
            "cache.targeted_fields",
        ),
        ("strip_targeted = [\"\"]", "cache.strip_targeted[0]"),
    ] {
        let toml = NodeConfig::new("http://127.0.0.1:9")
            .cache(cache)
            .config_text();
        assert_refused_text(&toml, cache, key);
    }
}
