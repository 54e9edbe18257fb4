//! The Grafana dashboard and the Prometheus alert rules in deploy/ are kept true: both parse,
//! have the shape Grafana and Prometheus expect, and every metric they name is one a real node
//! exposes (after a miss, a hit, a bypass, a purge, a rate-limited request and an HTTPS
//! listener, so that labelled series exist). `promtool` checks the PromQL when installed.
mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Metrics not named `outpost_*` the files may use: Prometheus' own scrape health (the
/// process collector's `process_*` families are allowed by prefix).
const FOREIGN: &[&str] = &["up"];

/// PromQL functions and aggregation operators these files may call.
const FUNCTIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "topk",
    "bottomk",
    "quantile",
    "rate",
    "irate",
    "increase",
    "delta",
    "deriv",
    "histogram_quantile",
    "abs",
    "absent",
    "clamp_min",
    "clamp_max",
    "max_over_time",
    "min_over_time",
    "avg_over_time",
    "changes",
    "time",
    "vector",
    "label_values",
];

/// PromQL keywords that are not metric names.
const KEYWORDS: &[&str] = &["and", "or", "unless", "offset", "bool", "inf", "nan"];

/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `expr` with string literals emptied, `{...}` matchers and `[...]` ranges dropped, and
/// Grafana variables (`$instance`, `${datasource}`, `$__rate_interval`) removed.
fn strip(expr: &str) -> String {
    let mut out = String::new();
    let mut chars = expr.chars().peekable();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                // a string: skip to its closing quote
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            '$' => {
                if chars.peek() == Some(&'{') {
                    for d in chars.by_ref() {
                        if d == '}' {
                            break;
                        }
                    }
                } else {
                    while chars
                        .peek()
                        .is_some_and(|d| d.is_ascii_alphanumeric() || *d == '_')
                    {
                        chars.next();
                    }
                }
            }
            '{' => {
                depth_brace += 1;
                if depth_brace == 1 {
                    out.push_str("{}");
                }
            }
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => out.push(c),
        }
    }
    out
}

/// The metric names a PromQL expression selects: identifiers that are not functions (followed
/// by `(`), keywords, label lists (`by (...)`) or numbers. Panics on a call of an unknown
/// function, so that a typo is not taken for a metric.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let text = strip(expr);
    let chars: Vec<char> = text.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_list = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // a number or a duration: 0.8, 14, 1e3, 1d, 5m
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            if c == '(' && skip_list {
                // the label list of by/without/on/ignoring/group_*
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                skip_list = false;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let rest: String = chars[i..].iter().collect();
        let rest = rest.trim_start();
        let next = rest.chars().next();
        // an aggregation with its clause first: `sum by (le) (...)`
        let clause = ["by", "without"].iter().any(|k| {
            rest.strip_prefix(k)
                .is_some_and(|r| r.trim_start().starts_with('('))
        });
        if LABEL_LISTS.contains(&word.as_str()) {
            skip_list = true;
        } else if KEYWORDS.contains(&word.as_str()) {
        } else if next == Some('(') || clause {
            assert!(
                FUNCTIONS.contains(&word.as_str()),
                "unknown PromQL function {word:?} in {expr}"
            );
        } else {
            names.insert(word);
        }
    }
    names
}

/// The metric family of a sample name: without `_bucket`, `_sum` or `_count`.
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

#[test]
fn metric_names_are_extracted_from_promql() {
    let e = r#"histogram_quantile(0.99, sum by (le, cache_status) (rate(outpost_request_duration_seconds_bucket{instance=~"$instance", a="x{y}"}[$__rate_interval])))
        / on (instance) group_left (pool) max without (server) (up{job="outpost"} offset 1d) * 14 * 86400 > bool 0.5
        and sum(rate(b_total[5m] offset 1h)) unless c:ratio"#;
    let names: Vec<String> = metric_names(e).into_iter().collect();
    assert_eq!(
        names,
        [
            "b_total",
            "c:ratio",
            "outpost_request_duration_seconds_bucket",
            "up"
        ]
    );
    assert_eq!(family("outpost_x_seconds_bucket"), "outpost_x_seconds");
    assert_eq!(family("outpost_requests_total"), "outpost_requests_total");
}

#[test]
#[should_panic(expected = "unknown PromQL function")]
fn a_misspelt_function_is_not_taken_for_a_metric() {
    metric_names("histogram_quantil(0.5, x)");
}

fn dashboard() -> serde_json::Value {
    let path = deploy("grafana/outpost-dashboard.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn alerts() -> serde_yaml::Value {
    let path = deploy("prometheus/outpost-alerts.yml");
    serde_yaml::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dash: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Every PromQL expression of the dashboard: (panel title, expression).
fn dashboard_exprs(dash: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("a target without expr");
            out.push((p["title"].as_str().unwrap_or("?").to_string(), expr.into()));
        }
    }
    out
}

/// Every alert rule: (name, rule).
fn alert_rules(doc: &serde_yaml::Value) -> Vec<(String, &serde_yaml::Value)> {
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        assert!(group["name"].as_str().is_some(), "a group without name");
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("an alert rule without alert");
            out.push((name.to_string(), rule));
        }
    }
    out
}

#[test]
fn dashboard_has_the_variables_and_panels_grafana_expects() {
    let dash = dashboard();
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("instance")["type"], "query");
    let mut ids = BTreeSet::new();
    for p in panels(&dash) {
        let title = p["title"].as_str().expect("a panel without title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: id"
        );
        let grid = &p["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{title}: gridPos beyond 24 columns");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                expr.contains("$instance") || !expr.contains('{'),
                "{title}: a selector without the instance variable: {expr}"
            );
        }
    }
    let titles: Vec<&str> = panels(&dash)
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for wanted in [
        "Hit ratio, overall and by tier",
        "Requests/s by cache status",
        "Latency p50 / p99 by cache status",
        "Time to first byte p99 by cache status",
        "Bytes served/s by source",
        "Upstream errors and 5xx/s",
        "Upstream servers healthy",
        "Evictions and promotions/s",
        "Disk tier errors/s",
        "Purges/s by type and mode",
        "Fleet purge bus",
        "Rate-limited and refused requests/s",
        "Memory tier: bytes vs capacity",
        "Disk tier: bytes vs capacity",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted:?}: {titles:?}");
    }
}

#[test]
fn alert_rules_have_for_severity_and_annotations() {
    let doc = alerts();
    let rules = alert_rules(&doc);
    let names: Vec<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    for wanted in [
        "OutpostNodeDown",
        "OutpostUpstreamErrorRateHigh",
        "OutpostHitRatioDropped",
        "OutpostDiskTierErrors",
        "OutpostDiskTierCorruption",
        "OutpostUpstreamPoolDown",
        "OutpostFleetPurgeBusDisconnected",
        "OutpostFleetPurgeLagging",
        "OutpostCertificateExpiringSoon",
    ] {
        assert!(names.contains(&wanted), "no alert {wanted}: {names:?}");
    }
    for (name, rule) in &rules {
        let expr = rule["expr"].as_str().expect("expr");
        assert!(
            expr.contains("job=\"outpost\""),
            "{name}: not the outpost job"
        );
        assert!(rule["for"].as_str().is_some(), "{name}: no for");
        assert!(
            matches!(
                rule["labels"]["severity"].as_str(),
                Some("warning" | "critical")
            ),
            "{name}: severity"
        );
        for a in ["summary", "description"] {
            assert!(
                rule["annotations"][a]
                    .as_str()
                    .is_some_and(|s| s.len() > 10),
                "{name}: no {a}"
            );
        }
    }
    // the scrape example names the job the rules select and loads the rules
    let prom: serde_yaml::Value =
        serde_yaml::from_str(&read(&deploy("prometheus/prometheus.yml"))).expect("prometheus.yml");
    assert_eq!(prom["scrape_configs"][0]["job_name"], "outpost");
    assert_eq!(prom["rule_files"][0], "outpost-alerts.yml");
}

/// A node with a bypass rule, a rate limit and an HTTPS listener, after a miss, a hit, a
/// bypass, a purge and a 429: its `/metrics`.
fn scrape_after_traffic() -> String {
    let origin = TestOrigin::start();
    origin.set("/a", Reply::ok("a").header("Cache-Control", "max-age=60"));
    origin.set("/api/b", Reply::ok("b"));
    let ca = TestCa::new();
    let leaf = ca.leaf(&["a.test"], Validity::Current);
    let mut cfg = NodeConfig::new(&origin.url())
        .rules(RULES_BYPASS_API_ELSE_HEURISTIC)
        .extra(
            r#"
[[rate_limit.rules]]
name = "limited"
limit = "1/min"
[rate_limit.rules.match]
path_prefix = ["/limited/"]
"#,
        )
        .https();
    let (cert, key) = leaf.write(cfg.dir(), "leaf");
    cfg = cfg.certificate(&cert, &key, "");
    let node = cfg.start();
    assert_stored_miss(&get(&node, "/a"), "first GET /a");
    assert_hit(&get(&node, "/a"), "second GET /a");
    assert_eq!(get(&node, "/api/b").status, 200);
    assert_eq!(get(&node, "/limited/x").status, 404);
    assert_eq!(get(&node, "/limited/x").status, 429);
    let purge = node
        .client()
        .post(node.admin_url("/purge"))
        .bearer_auth("test-token")
        .body(r#"{"tags": ["dashboard-test"]}"#)
        .send()
        .expect("purge");
    assert_eq!(purge.status().as_u16(), 200);
    wait_metric(
        &node,
        "outpost_requests_total",
        &[],
        |n| n >= 5.0,
        std::time::Duration::from_secs(5),
        "five requests counted",
    );
    node.metrics()
}

#[test]
fn every_metric_the_dashboard_and_alerts_use_is_exposed_by_a_node() {
    let mut used: Vec<(String, String)> = Vec::new(); // (where, metric)
    let dash = dashboard();
    for (title, expr) in dashboard_exprs(&dash) {
        for name in metric_names(&expr) {
            used.push((format!("dashboard panel {title:?}"), name));
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(<metric>, <label>)
            let args = q
                .strip_prefix("label_values(")
                .and_then(|a| a.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable query {q}"));
            let metric = args.split(',').next().unwrap_or_default().trim();
            used.push((format!("variable {}", v["name"]), metric.to_string()));
        }
    }
    let doc = alerts();
    for (name, rule) in alert_rules(&doc) {
        for metric in metric_names(rule["expr"].as_str().unwrap()) {
            used.push((format!("alert {name}"), metric));
        }
    }
    assert!(used.len() > 50, "{used:?}");

    let exposition = scrape_after_traffic();
    let exposed: BTreeSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(family)
        .collect();
    let mut missing = Vec::new();
    for (place, name) in &used {
        let family = family(name);
        let known = exposed.contains(family) || FOREIGN.contains(&family);
        if !known {
            missing.push(format!("{place}: {name}"));
        }
        assert!(
            family.starts_with("outpost_")
                || family.starts_with("process_")
                || FOREIGN.contains(&family),
            "{place}: {name} is not an Outpost metric"
        );
    }
    assert!(
        missing.is_empty(),
        "metrics the node does not expose:\n{}\n--- exposition ---\n{exposition}",
        missing.join("\n")
    );
}

/// `promtool check rules` on the alert rules, and on the dashboard's queries written as
/// recording rules (Grafana's variables replaced), when promtool is installed (Debian:
/// `apt-get install prometheus`).
#[test]
fn promtool_accepts_the_rules_and_the_dashboard_queries() {
    let Ok(version) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        eprintln!("promtool is not installed (apt-get install prometheus): check skipped");
        return;
    };
    assert!(version.status.success());
    let check = |path: &Path| {
        let out = std::process::Command::new("promtool")
            .args(["check", "rules"])
            .arg(path)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool check rules {}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    check(&deploy("prometheus/outpost-alerts.yml"));

    let rules: Vec<serde_yaml::Value> = dashboard_exprs(&dashboard())
        .into_iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*");
            serde_yaml::to_value(std::collections::BTreeMap::from([
                ("record", format!("dashboard:query_{i}")),
                ("expr", expr),
            ]))
            .unwrap()
        })
        .collect();
    let doc = serde_yaml::to_value(std::collections::BTreeMap::from([(
        "groups",
        vec![serde_yaml::to_value(std::collections::BTreeMap::from([
            ("name", serde_yaml::Value::from("dashboard")),
            ("rules", serde_yaml::Value::Sequence(rules)),
        ]))
        .unwrap()],
    )]))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
    check(&path);
}
