//! Header rules and `Via`, black-box: global and per-rule set/remove on the request to the origin
//! and on responses (hits included), `{node}` in values, `Via` per RFC 9110 7.6.3 both ways,
//! and configuration errors by key.
mod common;

use common::*;

const HEADERS: &str = r#"
[headers.response]
remove = ["X-Powered-By"]
set = { "X-Served-By" = "{node}" }
[headers.request]
set = { "X-Edge" = "1" }
"#;

const STATIC_RULE: &str = r#"
[[rules]]
name = "static"
[rules.match]
path_prefix = ["/static/"]
[rules.headers.request]
remove = ["Cookie"]
[rules.headers.response]
remove = ["Server"]
set = { "Strict-Transport-Security" = "max-age=31536000", "X-Served-By" = "static@{node}" }

[[rules]]
name = "default"
"#;

fn origin_reply() -> Reply {
    Reply::ok("v")
        .header("Cache-Control", "max-age=600")
        .header("Server", "origin/1.0")
        .header("X-Powered-By", "php")
        .header("Via", "1.1 origin-lb")
}

#[test]
fn global_then_rule_header_rules_apply_to_origin_requests_and_every_response() {
    let origin = TestOrigin::start();
    origin.set("/static/a.css", origin_reply());
    origin.set("/page", origin_reply());
    let node = NodeConfig::new(&origin.url())
        .rules(STATIC_RULE)
        .extra(HEADERS)
        .start();
    for round in ["miss", "hit"] {
        let r = get_with(&node, "/static/a.css", &[("Cookie", "session=1")]);
        assert_eq!(r.status, 200);
        assert!(
            r.header("x-powered-by").is_none(),
            "{round}: global removal"
        );
        assert!(r.header("server").is_none(), "{round}: rule removal");
        assert_eq!(
            r.header("strict-transport-security").as_deref(),
            Some("max-age=31536000"),
            "{round}"
        );
        assert_eq!(
            r.header("x-served-by").as_deref(),
            Some("static@outpost"),
            "{round}: the rule's value replaces the global one"
        );
        assert_eq!(
            r.header("via").as_deref(),
            Some("1.1 origin-lb, 1.1 outpost"),
            "{round}: the origin's Via then ours"
        );
    }
    assert_hit(&get(&node, "/static/a.css"), "stored");
    let seen = origin.requests("/static/a.css");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-edge").as_deref(), Some("1"));
    assert!(
        seen[0].header("cookie").is_none(),
        "the rule removes Cookie"
    );
    assert_eq!(seen[0].header("via").as_deref(), Some("1.1 outpost"));

    // another rule: only the global rules
    let r = get_with(
        &node,
        "/page",
        &[("Cookie", "session=1"), ("Via", "1.0 client-proxy")],
    );
    assert_eq!(r.header("server").as_deref(), Some("origin/1.0"));
    assert_eq!(r.header("x-served-by").as_deref(), Some("outpost"));
    assert!(r.header("strict-transport-security").is_none());
    let seen = origin.requests("/page");
    assert_eq!(seen[0].header("cookie").as_deref(), Some("session=1"));
    assert_eq!(
        seen[0].header("via").as_deref(),
        Some("1.0 client-proxy, 1.1 outpost"),
        "the client's Via then ours"
    );
}

#[test]
fn via_can_be_turned_off() {
    let origin = TestOrigin::start();
    origin.set("/p", Reply::ok("v").header("Cache-Control", "max-age=60"));
    let node = NodeConfig::new(&origin.url()).node("via = false").start();
    assert!(get(&node, "/p").header("via").is_none());
    assert!(origin.requests("/p")[0].header("via").is_none());
}

#[test]
fn bad_header_rules_are_errors_naming_the_key() {
    for (extra, key) in [
        (
            "[headers.response]\nremove = [\"bad header\"]",
            "headers.response.remove[0]",
        ),
        (
            "[headers.response]\nset = { \"Content-Length\" = \"5\" }",
            "headers.response.set.Content-Length",
        ),
        (
            "[headers.request]\nset = { \"Host\" = \"x\" }",
            "headers.request.set.Host",
        ),
        (
            "[headers.request]\nset = { \"X-A\" = \"line\\nbreak\" }",
            "headers.request.set.X-A",
        ),
        ("[headers.reponse]\nset = { \"X-A\" = \"1\" }", "reponse"),
        (
            "[[rules]]\nname = \"r\"\n[rules.headers.response]\nremove = [\"Transfer-Encoding\"]",
            "rules[0].headers.response.remove[0]",
        ),
    ] {
        let text = if extra.contains("[[rules]]") {
            NodeConfig::new("http://127.0.0.1:9")
                .rules(extra)
                .config_text()
        } else {
            NodeConfig::new("http://127.0.0.1:9")
                .extra(extra)
                .config_text()
        };
        assert_refused_text(&text, extra, key);
    }
}
