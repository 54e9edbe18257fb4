//! Cache rules: which rule governs a request (first match wins) and what it decides.
//!
//! Policy only: this module knows nothing about storage. [`RuleSet::matching`] is on the hot
//! path and allocates nothing.

pub mod key;

use crate::config::{Action, Config, MatchConfig, RuleConfig};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use http::Method;

/// A request matcher (`match` of a cache rule, a rate limit, a header rule) compiled.
#[derive(Debug)]
pub struct Matcher {
    config: MatchConfig,
    hosts: Option<GlobSet>,
    paths: Option<GlobSet>,
}

/// A rule with its matchers compiled.
#[derive(Debug)]
pub struct Rule {
    /// The validated rule.
    pub config: RuleConfig,
    matcher: Matcher,
}

/// The ordered rules of one configuration plus the built-in fallback.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    fallback: Rule,
}

/// A rule's matchers could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("rule {rule:?}: {source}")]
pub struct RuleError {
    /// The rule's name.
    pub rule: String,
    /// What was wrong.
    pub source: globset::Error,
}

fn glob_set(
    patterns: &[String],
    case_insensitive: bool,
) -> Result<Option<GlobSet>, globset::Error> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(
            GlobBuilder::new(p)
                .literal_separator(true)
                .case_insensitive(case_insensitive)
                .build()?,
        );
    }
    b.build().map(Some)
}

impl Matcher {
    /// Compile `config` (its globs were validated with the configuration).
    pub fn compile(config: MatchConfig) -> Result<Matcher, globset::Error> {
        Ok(Matcher {
            hosts: glob_set(&config.hosts, true)?,
            paths: glob_set(&config.paths, false)?,
            config,
        })
    }

    /// Whether a request matches. `host` is lowercase without port.
    pub fn matches(&self, method: &Method, host: &str, path: &str) -> bool {
        let m = &self.config;
        if !m.methods.is_empty() && !m.methods.iter().any(|x| x == method) {
            return false;
        }
        if let Some(hosts) = &self.hosts {
            if !hosts.is_match(host) {
                return false;
            }
        }
        let prefix_ok = m.path_prefix.iter().any(|p| path.starts_with(p.as_str()));
        match (&self.paths, m.path_prefix.is_empty()) {
            (None, true) => true,
            (None, false) => prefix_ok,
            (Some(globs), true) => globs.is_match(path),
            (Some(globs), false) => prefix_ok || globs.is_match(path),
        }
    }
}

impl Rule {
    fn compile(config: RuleConfig) -> Result<Rule, RuleError> {
        let matcher = Matcher::compile(config.matcher.clone()).map_err(|source| RuleError {
            rule: config.name.clone(),
            source,
        })?;
        Ok(Rule { config, matcher })
    }

    /// Whether this rule applies to a request. `host` is lowercase without port.
    pub fn matches(&self, method: &Method, host: &str, path: &str) -> bool {
        self.matcher.matches(method, host, path)
    }

    /// Whether matching requests are cached at all.
    pub fn caches(&self) -> bool {
        self.config.action == Action::Cache
    }
}

impl RuleSet {
    /// Compile the rules of `config`.
    pub fn new(config: &Config) -> Result<RuleSet, RuleError> {
        let rules = config
            .rules
            .iter()
            .cloned()
            .map(Rule::compile)
            .collect::<Result<Vec<_>, _>>()?;
        let fallback = Rule::compile(RuleConfig {
            name: "builtin-default".into(),
            // the first origin that is not the shield tier
            origin: (0..config.origins.len())
                .find(|i| Some(*i) != config.shield.origin)
                .unwrap_or(0),
            action: Action::Cache,
            matcher: Default::default(),
            ttl: crate::config::TtlConfig {
                override_ttl: None,
                default: None,
                heuristic: true,
                not_found: Some(crate::config::DEFAULT_NOT_FOUND_TTL),
                server_error: None,
                targeted: config.cache.targeted_fields.clone(),
            },
            key: crate::config::KeyConfig {
                query: crate::config::QueryMode::Full,
                headers: Vec::new(),
            },
            cacheable: crate::config::CacheableConfig {
                status: crate::config::DEFAULT_CACHEABLE_STATUS.to_vec(),
                restrict_status: false,
                set_cookie: false,
                authorized: false,
            },
            stale: crate::config::StaleConfig {
                disconnected: true,
                ..Default::default()
            },
            headers: Default::default(),
            shield: true,
            redirect_https: false,
        })?;
        Ok(RuleSet { rules, fallback })
    }

    /// Index of the first rule matching the request, or `None` for the built-in fallback.
    pub fn matching(&self, method: &Method, host: &str, path: &str) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| r.matches(method, host, path))
    }

    /// The rule at `index` as returned by [`Self::matching`].
    pub fn get(&self, index: Option<usize>) -> &Rule {
        index
            .and_then(|i| self.rules.get(i))
            .unwrap_or(&self.fallback)
    }
}

/// Normalise a Host header for matching and keys: lowercase, no port, no trailing dot.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    let h = without_port.trim_end_matches('.');
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};
    use std::path::Path;

    fn rules(toml: &str) -> RuleSet {
        let text = format!("[[origins]]\nurl = \"http://127.0.0.1:1\"\n{toml}");
        let cfg = Config::from_str(&text, Path::new("t.toml"), &Overrides::default()).unwrap();
        RuleSet::new(&cfg).unwrap()
    }

    #[test]
    fn first_matching_rule_wins() {
        let rs = rules(
            r#"
[[rules]]
name = "a"
[rules.match]
path_prefix = ["/a/"]
[[rules]]
name = "all"
"#,
        );
        assert_eq!(rs.matching(&Method::GET, "x", "/a/1"), Some(0));
        assert_eq!(rs.matching(&Method::GET, "x", "/b"), Some(1));
    }

    #[test]
    fn host_glob_is_case_insensitive_and_path_glob_respects_segments() {
        let rs = rules(
            r#"
[[rules]]
name = "static"
[rules.match]
hosts = ["*.example.com"]
paths = ["/static/*.css", "/deep/**"]
methods = ["get"]
"#,
        );
        assert_eq!(
            rs.matching(&Method::GET, "cdn.example.com", "/static/a.css"),
            Some(0)
        );
        assert_eq!(
            rs.matching(&Method::GET, "cdn.example.com", "/static/x/a.css"),
            None
        );
        assert_eq!(
            rs.matching(&Method::GET, "cdn.example.com", "/deep/x/y"),
            Some(0)
        );
        assert_eq!(
            rs.matching(&Method::GET, "example.org", "/static/a.css"),
            None
        );
        assert_eq!(
            rs.matching(&Method::POST, "cdn.example.com", "/static/a.css"),
            None
        );
        assert_eq!(rs.get(None).config.name, "builtin-default");
    }

    #[test]
    fn host_normalisation_drops_port_and_case() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }
}
