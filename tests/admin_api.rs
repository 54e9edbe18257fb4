//! The OpenAPI document of the admin API is kept true: it is what `GET /openapi.json` serves,
//! every documented route answers with a documented status (with and without the token), other
//! methods on it get 405, and routes it does not list do not exist.
mod common;

use common::*;

const DOC: &str = include_str!("../src/admin/openapi.json");

fn documented(doc: &serde_json::Value, path: &str, method: &str) -> Vec<u16> {
    doc["paths"][path][method]["responses"]
        .as_object()
        .map(|r| r.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default()
}

#[test]
fn openapi_document_matches_the_live_admin_api() {
    let origin = TestOrigin::start();
    let node = NodeConfig::new(&origin.url()).start();
    let c = node.client();
    let served = c
        .get(node.admin_url("/openapi.json"))
        .send()
        .expect("GET /openapi.json");
    assert_eq!(served.status().as_u16(), 200);
    let served: serde_json::Value = served.json().expect("JSON");
    let doc: serde_json::Value = serde_json::from_str(DOC).expect("the document parses");
    assert_eq!(served, doc, "served document differs from the repository's");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));

    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 5, "{:?}", paths.keys());
    for (path, ops) in paths {
        let ops = ops.as_object().expect("operations");
        for (method, op) in ops {
            let secured = op["security"].as_array().is_none_or(|s| !s.is_empty());
            let send = |token: bool| {
                let m =
                    reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
                let mut rb = c.request(m, node.admin_url(path));
                if token {
                    rb = rb.header("Authorization", "Bearer test-token");
                }
                if method == "post" {
                    rb = rb.body(r#"{"tags": ["openapi-doc-test"]}"#);
                }
                rb.send().expect("call").status().as_u16()
            };
            let allowed = documented(&doc, path, method);
            let status = send(true);
            assert!(
                allowed.contains(&status),
                "{method} {path}: {status} not in {allowed:?}"
            );
            assert!((200..300).contains(&status), "{method} {path}: {status}");
            if secured {
                let status = send(false);
                assert_eq!(status, 401, "{method} {path} without the token");
                assert!(allowed.contains(&401), "{method} {path}: 401 undocumented");
            }
            // the other methods on a documented route: 405, not 404
            for other in ["get", "post", "put", "delete"] {
                if ops.contains_key(other) {
                    continue;
                }
                let m = reqwest::Method::from_bytes(other.to_uppercase().as_bytes()).expect("m");
                let status = c
                    .request(m, node.admin_url(path))
                    .header("Authorization", "Bearer test-token")
                    .send()
                    .expect("call")
                    .status()
                    .as_u16();
                assert_eq!(status, 405, "{other} {path}");
            }
        }
    }
    // the purge errors it lists happen as listed
    let allowed = documented(&doc, "/purge", "post");
    for (body, expected) in [
        ("{bad json".to_string(), 400),
        (format!(r#"{{"tags": ["{}"]}}"#, "x".repeat(70_000)), 413),
    ] {
        let status = c
            .post(node.admin_url("/purge"))
            .header("Authorization", "Bearer test-token")
            .body(body)
            .send()
            .expect("purge")
            .status()
            .as_u16();
        assert_eq!(status, expected);
        assert!(allowed.contains(&status));
    }
    // routes it does not list do not exist
    for path in ["/purges", "/config", "/metrics", "/"] {
        let status = c
            .get(node.admin_url(path))
            .header("Authorization", "Bearer test-token")
            .send()
            .expect("call")
            .status()
            .as_u16();
        assert_eq!(status, 404, "undocumented {path}");
    }
}
