//! `POST /purge`: the request body, checked field by field, turned into a [`BanTarget`].
//!
//! ```json
//! {"url": "https://example.com/a/b?x=1"}                  one URL, every variant
//! {"prefix": "/static/", "host": "example.com"}           a path prefix (any host without "host")
//! {"tags": ["product-42", "home"]}                        Surrogate-Key / Cache-Tag values
//! {"all": true, "confirm": true}                          everything
//! ```
//! Each may add `"soft": true`: mark stale (revalidate) instead of removing.

use crate::purge::BanTarget;
use crate::rules::{key, normalize_host, RuleSet};
use http::{HeaderMap, Method};
use serde::Deserialize;

/// Largest request body accepted (413 above).
pub const MAX_BODY: usize = 64 * 1024;

/// A purge request as sent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    url: Option<String>,
    prefix: Option<String>,
    host: Option<String>,
    tags: Option<Vec<String>>,
    all: Option<bool>,
    confirm: Option<bool>,
    soft: Option<bool>,
}

/// Why a purge request was refused: the field at fault and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct BadRequest {
    /// The JSON field (or `body`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> BadRequest {
    BadRequest {
        field: field.to_string(),
        message: message.into(),
    }
}

/// A checked purge request.
#[derive(Debug, PartialEq, Eq)]
pub struct Purge {
    /// What it removes.
    pub target: BanTarget,
    /// Mark stale instead of removing.
    pub soft: bool,
    /// For a URL purge: the request host, path and query, to remove its stored entry at once.
    pub url: Option<(String, String, Option<String>)>,
}

/// Parse and check a `POST /purge` body; URL targets are keyed as `rules` key that URL.
pub fn parse(body: &[u8], rules: &RuleSet) -> Result<Purge, BadRequest> {
    let req: PurgeBody = serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        // serde names the unknown field in its message
        let field = msg
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
            .unwrap_or("body");
        bad(field, format!("invalid purge request: {msg}"))
    })?;
    let given = [
        req.url.is_some(),
        req.prefix.is_some(),
        req.tags.is_some(),
        req.all.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(bad(
            "body",
            "give exactly one target: \"url\", \"prefix\" (with optional \"host\"), \"tags\" or \"all\"",
        ));
    }
    if req.host.is_some() && req.prefix.is_none() {
        return Err(bad("host", "\"host\" goes with \"prefix\""));
    }
    if req.confirm.is_some() && req.all.is_none() {
        return Err(bad("confirm", "\"confirm\" goes with \"all\""));
    }
    let soft = req.soft.unwrap_or(false);
    if let Some(text) = req.url {
        let url = url::Url::parse(&text)
            .map_err(|e| bad("url", format!("{text:?} is not an absolute URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(
                "url",
                format!("{text:?}: only http and https URLs are cached"),
            ));
        }
        let host_port = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(bad("url", format!("{text:?} has no host"))),
        };
        let host = normalize_host(&host_port).into_owned();
        let path = url.path().to_string();
        let query = url.query().map(str::to_string);
        let rule = rules.get(rules.matching(&Method::GET, &host, &path));
        let cache_key = key::cache_key(
            &rule.config.key,
            &host,
            &path,
            query.as_deref(),
            &HeaderMap::new(),
        );
        let primary = cache_key.primary_key_str().unwrap_or_default();
        let keyed_path = primary.split('\n').nth(1).unwrap_or_default().to_string();
        return Ok(Purge {
            target: BanTarget::Url {
                host: host.clone(),
                path: keyed_path,
            },
            soft,
            url: Some((host, path, query)),
        });
    }
    if let Some(prefix) = req.prefix {
        if !prefix.starts_with('/') {
            return Err(bad("prefix", format!("{prefix:?} must start with \"/\"")));
        }
        let host = match req.host {
            Some(h) if h.trim().is_empty() || h.contains(['/', ' ']) => {
                return Err(bad("host", format!("{h:?} is not a host name")))
            }
            Some(h) => Some(normalize_host(h.trim()).into_owned()),
            None => None,
        };
        return Ok(Purge {
            target: BanTarget::Prefix { host, prefix },
            soft,
            url: None,
        });
    }
    if let Some(tags) = req.tags {
        if tags.is_empty() {
            return Err(bad("tags", "give at least one tag"));
        }
        if let Some(t) = tags
            .iter()
            .find(|t| t.is_empty() || t.contains(|c: char| c.is_whitespace() || c == ','))
        {
            return Err(bad(
                "tags",
                format!("{t:?}: a tag is non-empty, without spaces or commas"),
            ));
        }
        return Ok(Purge {
            target: BanTarget::Tags { tags },
            soft,
            url: None,
        });
    }
    match (req.all, req.confirm) {
        (Some(true), Some(true)) => Ok(Purge {
            target: BanTarget::All,
            soft,
            url: None,
        }),
        (Some(true), _) => Err(bad("confirm", "purging everything needs \"confirm\": true")),
        _ => Err(bad("all", "\"all\" must be true")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn rules() -> RuleSet {
        let text = include_str!("../../conf/outpost.toml");
        let config = Config::from_str(
            text,
            std::path::Path::new("outpost.toml"),
            &Default::default(),
        )
        .expect("example config is valid");
        RuleSet::new(&config).expect("rules")
    }

    fn field_of(body: &str) -> String {
        parse(body.as_bytes(), &rules()).expect_err(body).field
    }

    #[test]
    fn each_target_parses() {
        let r = rules();
        let p = parse(br#"{"url": "https://Example.com:8443/a/b?x=1"}"#, &r).expect("url");
        assert_eq!(
            p.target,
            BanTarget::Url {
                host: "example.com".into(),
                path: "/a/b?x=1".into()
            }
        );
        // the static rule ignores the query: so does the purge
        let p = parse(br#"{"url": "http://example.com/static/app.css?v=3"}"#, &r).expect("static");
        assert_eq!(
            p.target,
            BanTarget::Url {
                host: "example.com".into(),
                path: "/static/app.css".into()
            }
        );
        let p =
            parse(br#"{"prefix": "/img/", "host": "A.com", "soft": true}"#, &r).expect("prefix");
        assert_eq!(
            p.target,
            BanTarget::Prefix {
                host: Some("a.com".into()),
                prefix: "/img/".into()
            }
        );
        assert!(p.soft);
        let p = parse(br#"{"tags": ["a", "b"]}"#, &r).expect("tags");
        assert_eq!(
            p.target,
            BanTarget::Tags {
                tags: vec!["a".into(), "b".into()]
            }
        );
        let p = parse(br#"{"all": true, "confirm": true}"#, &r).expect("all");
        assert_eq!(p.target, BanTarget::All);
    }

    #[test]
    fn bad_requests_name_the_field_at_fault() {
        assert_eq!(field_of("not json"), "body");
        assert_eq!(field_of("{}"), "body");
        assert_eq!(field_of(r#"{"url": "x", "tags": ["a"]}"#), "body");
        assert_eq!(field_of(r#"{"ulr": "http://a/"}"#), "ulr");
        assert_eq!(field_of(r#"{"url": "/relative"}"#), "url");
        assert_eq!(field_of(r#"{"url": "ftp://a/b"}"#), "url");
        assert_eq!(field_of(r#"{"url": 5}"#), "body");
        assert_eq!(field_of(r#"{"prefix": "static/"}"#), "prefix");
        assert_eq!(field_of(r#"{"prefix": "/s/", "host": "a b"}"#), "host");
        assert_eq!(field_of(r#"{"url": "http://a/", "host": "a"}"#), "host");
        assert_eq!(field_of(r#"{"tags": []}"#), "tags");
        assert_eq!(field_of(r#"{"tags": ["a b"]}"#), "tags");
        assert_eq!(field_of(r#"{"all": true}"#), "confirm");
        assert_eq!(field_of(r#"{"all": false, "confirm": true}"#), "all");
        assert_eq!(field_of(r#"{"tags": ["a"], "confirm": true}"#), "confirm");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // a small deterministic fuzz of the parser: truncations and byte flips of valid bodies
        let r = rules();
        let seeds: [&[u8]; 4] = [
            br#"{"url": "https://example.com/a?b=c", "soft": true}"#,
            br#"{"prefix": "/x/", "host": "h"}"#,
            br#"{"tags": ["t1", "t2"]}"#,
            br#"{"all": true, "confirm": true}"#,
        ];
        for seed in seeds {
            for cut in 0..=seed.len() {
                let _ = parse(&seed[..cut], &r);
            }
            for i in 0..seed.len() {
                for flip in [0x01u8, 0x20, 0x80] {
                    let mut b = seed.to_vec();
                    b[i] ^= flip;
                    let _ = parse(&b, &r);
                }
            }
        }
    }
}
