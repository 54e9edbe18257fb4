//! One frame of `outpost top`: the rates between two snapshots of a node, laid out as text.

use super::Snapshot;
use crate::observe::exposition::{bucket_increase, increase, quantile};
use std::fmt::Write;

/// How a frame is laid out.
pub struct Layout {
    /// Columns available: longer lines are cut.
    pub width: usize,
    /// Rows of the top keys table.
    pub key_rows: usize,
    /// Bold section titles (a terminal); off for `--once` and pipes.
    pub ansi: bool,
}

/// The interval between two snapshots.
struct Interval<'a> {
    prev: &'a Snapshot,
    cur: &'a Snapshot,
    seconds: f64,
}

impl Interval<'_> {
    /// Increase of the samples of `name` matching `filter` over the interval.
    fn delta(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        increase(
            self.prev.metrics.sum(name, filter),
            self.cur.metrics.sum(name, filter),
        )
    }

    fn rate(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.delta(name, filter) / self.seconds
    }

    /// Per-second rates of `name` by label `by`, largest first, zeros left out.
    fn rates_by(&self, name: &str, by: &str) -> Vec<(String, f64)> {
        let before = self.prev.metrics.sum_by(name, by, &[]);
        let mut rates: Vec<(String, f64)> = self
            .cur
            .metrics
            .sum_by(name, by, &[])
            .into_iter()
            .map(|(k, v)| {
                let was = before.get(&k).copied().unwrap_or(0.0);
                (k, increase(was, v) / self.seconds)
            })
            .filter(|(_, r)| *r > 0.0)
            .collect();
        rates.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rates
    }

    /// Quantile `q` of histogram `family` (matching `filter`) over the interval.
    fn quantile(&self, family: &str, filter: &[(&str, &str)], q: f64) -> Option<f64> {
        let before = self.prev.metrics.buckets(family, filter);
        let after = self.cur.metrics.buckets(family, filter);
        quantile(q, &bucket_increase(&before, &after))
    }
}

/// `n` per second, e.g. `152.0/s`.
fn per_second(n: f64) -> String {
    format!("{n:.1}/s")
}

/// A byte count with a binary unit, e.g. `1.2 MiB`.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A latency, e.g. `0.42 ms`, `12.3 ms`, `1.50 s`; `-` without observations.
fn latency(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s < 0.001 => format!("{:.2} ms", s * 1000.0),
        Some(s) if s < 1.0 => format!("{:.1} ms", s * 1000.0),
        Some(s) => format!("{s:.2} s"),
    }
}

fn percent(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{:.1}%", 100.0 * part / whole)
    } else {
        "-".into()
    }
}

/// An integer with thousands separators, e.g. `12,345`.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Uptime as `3d4h`, `2h03m`, `5m07s`.
fn uptime(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h) {
        (0, 0) => format!("{m}m{s:02}s"),
        (0, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// `s` cut to `width` characters (`~` marks a cut).
fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('~');
    out
}

/// Lines of one frame.
struct Frame {
    lines: Vec<String>,
    layout: Layout,
}

impl Frame {
    fn line(&mut self, text: String) {
        self.lines.push(cut(&text, self.layout.width));
    }

    fn title(&mut self, text: &str) {
        let text = cut(text, self.layout.width);
        self.lines.push(match self.layout.ansi {
            true => format!("\x1b[1m{text}\x1b[0m"),
            false => text,
        });
    }
}

const REQUESTS: &str = "outpost_requests_total";

/// The frame for the interval from `prev` to `cur`: `admin` and `every` name the source and
/// refresh interval in its first line.
pub fn render(prev: &Snapshot, cur: &Snapshot, admin: &str, every: &str, layout: Layout) -> String {
    let seconds = cur
        .at
        .saturating_duration_since(prev.at)
        .as_secs_f64()
        .max(0.001);
    let iv = Interval { prev, cur, seconds };
    let mut f = Frame {
        lines: Vec::new(),
        layout,
    };
    let status = &cur.status;
    f.title(&format!(
        "outpost top - node {} (v{}, up {})  {admin}  every {every}",
        status["node"].as_str().unwrap_or("?"),
        status["version"].as_str().unwrap_or("?"),
        uptime(status["uptime_seconds"].as_u64().unwrap_or(0)),
    ));
    traffic(&mut f, &iv);
    cache(&mut f, &iv);
    f.line(String::new());
    upstreams(&mut f, &iv);
    f.line(String::new());
    top_keys(&mut f, cur);
    let mut out = f.lines.join("\n");
    out.push('\n');
    out
}

/// Requests, hit ratios, bytes, latency, purges and rate limits.
fn traffic(f: &mut Frame, iv: &Interval) {
    let mut line = format!("requests   {:<10}", per_second(iv.rate(REQUESTS, &[])));
    for (status, rate) in iv.rates_by(REQUESTS, "cache_status") {
        let _ = write!(line, " {status} {rate:.1}");
    }
    f.line(line);
    let mut line = String::from("responses ");
    for (class, rate) in iv.rates_by(REQUESTS, "status_class") {
        let _ = write!(line, " {class} {rate:.1}/s");
    }
    f.line(line);

    let served = ["hit", "stale"]
        .iter()
        .map(|s| iv.delta(REQUESTS, &[("cache_status", s)]))
        .sum::<f64>();
    let lookups = iv.delta(REQUESTS, &[])
        - ["bypass", "refused"]
            .iter()
            .map(|s| iv.delta(REQUESTS, &[("cache_status", s)]))
            .sum::<f64>();
    let tier = |t: &str| {
        let hits = iv.delta("outpost_cache_tier_hits_total", &[("tier", t)]);
        let misses = iv.delta("outpost_cache_tier_misses_total", &[("tier", t)]);
        percent(hits, hits + misses)
    };
    f.line(format!(
        "hit ratio  {} of requests not bypassed   memory tier {}  disk tier {} of their lookups",
        percent(served, lookups),
        tier("memory"),
        tier("disk"),
    ));

    const BYTES: &str = "outpost_response_bytes_total";
    if iv.cur.metrics.has(BYTES) {
        let mut line = format!(
            "served     {:<10}",
            format!("{}/s", bytes(iv.rate(BYTES, &[])))
        );
        for (source, rate) in iv.rates_by(BYTES, "source") {
            let _ = write!(line, " {source} {}/s", bytes(rate));
        }
        f.line(line);
    } else {
        // a node without the byte counter: the top keys table's window totals
        let top = &iv.cur.top;
        f.line(format!(
            "served     {}/s (average of the last {:.0}s)",
            bytes(top.bytes as f64 / top.window_seconds.max(1.0)),
            top.window_seconds
        ));
    }

    const LATENCY: &str = "outpost_request_duration_seconds";
    let mut line = format!(
        "latency    p50 {}  p99 {}",
        latency(iv.quantile(LATENCY, &[], 0.5)),
        latency(iv.quantile(LATENCY, &[], 0.99)),
    );
    for status in ["hit", "miss"] {
        if let Some(p99) = iv.quantile(LATENCY, &[("cache_status", status)], 0.99) {
            let _ = write!(line, "   {status} p99 {}", latency(Some(p99)));
        }
    }
    f.line(line);

    f.line(format!(
        "purges     {:<10} rate-limited {}   refused {}",
        per_second(iv.rate("outpost_purges_total", &[])),
        per_second(iv.rate("outpost_rate_limited_total", &[])),
        per_second(iv.rate("outpost_rejected_requests_total", &[])),
    ));
}

/// Tier sizes against their capacities.
fn cache(f: &mut Frame, iv: &Interval) {
    let m = &iv.cur.metrics;
    let status = &iv.cur.status;
    let tier = |name: &str| {
        let objects = m.sum(&format!("outpost_cache_{name}_objects"), &[]);
        format!(
            "{name} {} of {} ({} objects)",
            bytes(m.sum(&format!("outpost_cache_{name}_bytes"), &[])),
            bytes(m.sum(&format!("outpost_cache_{name}_capacity_bytes"), &[])),
            count(objects as u64),
        )
    };
    let mut line = String::from("cache     ");
    if !status["memory"].is_null() {
        let _ = write!(line, " {}", tier("memory"));
    }
    if !status["disk"].is_null() {
        let _ = write!(line, "   {}", tier("disk"));
        if status["disk"]["index"] == "scanning" {
            line.push_str(", directory recovering");
        }
    }
    f.line(line);
}

/// Each upstream pool with its servers' health, requests/s and errors/s.
fn upstreams(f: &mut Frame, iv: &Interval) {
    let pools = iv.cur.status["upstreams"].as_array().cloned();
    let pools = pools.unwrap_or_default();
    f.title(&format!(
        "{:<40} {:>8} {:>9} {:>9}",
        "UPSTREAM POOL / SERVER", "HEALTH", "REQ/S", "ERRORS/S"
    ));
    if pools.is_empty() {
        f.line("(no upstream pools)".into());
    }
    for pool in &pools {
        let name = pool["name"].as_str().unwrap_or("?");
        let tier = pool["tier"].as_str().unwrap_or("origin");
        f.line(format!(
            "{name} ({tier}, {})",
            pool["balance"].as_str().unwrap_or("?")
        ));
        for server in pool["servers"].as_array().into_iter().flatten() {
            let address = server["address"].as_str().unwrap_or("?");
            let health = match (server["healthy"].as_bool(), server["available"].as_bool()) {
                (Some(true), Some(true)) => "up",
                (Some(true), _) => "ejected",
                _ => "DOWN",
            };
            let labels = [("tier", tier), ("pool", name), ("server", address)];
            f.line(format!(
                "  {:<38} {:>8} {:>9.1} {:>9.1}",
                cut(address, 38),
                health,
                iv.rate("outpost_upstream_requests_total", &labels),
                iv.rate("outpost_upstream_errors_total", &labels),
            ));
        }
    }
}

/// The heaviest keys of the node's recent window.
fn top_keys(f: &mut Frame, cur: &Snapshot) {
    let top = &cur.top;
    // as wide as the longest key (or the title), within the width
    let title = format!(
        "TOP KEYS (last {:.0}s: {} requests)",
        top.window_seconds,
        count(top.requests)
    );
    let longest = top
        .keys
        .iter()
        .take(f.layout.key_rows)
        .map(|k| k.key.chars().count())
        .chain([title.len()])
        .max()
        .unwrap_or(0);
    let key_width = longest.min(f.layout.width.saturating_sub(30).max(20));
    f.title(&format!(
        "{:<key_width$} {:>9} {:>6} {:>12}",
        title, "REQUESTS", "SHARE", "BYTES"
    ));
    if top.keys.is_empty() {
        f.line("(no requests in the window)".into());
    }
    for k in top.keys.iter().take(f.layout.key_rows) {
        let approx = if k.overcount > 0 { "~" } else { "" };
        f.line(format!(
            "{:<key_width$} {:>9} {:>6} {:>12}",
            cut(&k.key, key_width),
            format!("{approx}{}", count(k.requests)),
            percent(k.requests as f64, top.requests as f64),
            bytes(k.bytes as f64),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::exposition::Scrape;
    use crate::observe::topkeys::{KeyCount, TopSnapshot};
    use std::time::{Duration, Instant};

    fn snapshot(at: Instant, metrics: &str) -> Snapshot {
        Snapshot {
            at,
            metrics: Scrape::parse(metrics),
            status: serde_json::json!({
                "node": "edge-1", "version": "0.1.0", "uptime_seconds": 3725,
                "memory": {"objects": 1, "bytes": 10},
                "disk": null,
                "upstreams": [{"name": "web", "tier": "origin", "balance": "round_robin",
                    "servers": [{"address": "10.0.0.1:80", "healthy": true, "available": true},
                                {"address": "10.0.0.2:80", "healthy": false, "available": false}]}],
            }),
            top: TopSnapshot {
                window_seconds: 42.0,
                requests: 40,
                bytes: 4096,
                capacity: 1000,
                keys: vec![KeyCount {
                    key: "example.com/hot".into(),
                    requests: 30,
                    overcount: 0,
                    bytes: 3072,
                }],
            },
        }
    }

    const BEFORE: &str = r#"
outpost_requests_total{cache_status="hit",status_class="2xx"} 10
outpost_requests_total{cache_status="miss",status_class="2xx"} 10
outpost_request_duration_seconds_bucket{cache_status="hit",le="0.001"} 10
outpost_request_duration_seconds_bucket{cache_status="hit",le="+Inf"} 10
outpost_cache_tier_hits_total{tier="memory"} 10
outpost_cache_tier_misses_total{tier="memory"} 10
outpost_upstream_requests_total{tier="origin",pool="web",server="10.0.0.1:80",status_class="2xx"} 10
"#;
    const AFTER: &str = r#"
outpost_requests_total{cache_status="hit",status_class="2xx"} 40
outpost_requests_total{cache_status="miss",status_class="2xx"} 20
outpost_requests_total{cache_status="bypass",status_class="2xx"} 10
outpost_request_duration_seconds_bucket{cache_status="hit",le="0.001"} 40
outpost_request_duration_seconds_bucket{cache_status="hit",le="+Inf"} 40
outpost_cache_tier_hits_total{tier="memory"} 40
outpost_cache_tier_misses_total{tier="memory"} 20
outpost_cache_memory_capacity_bytes 67108864
outpost_upstream_requests_total{tier="origin",pool="web",server="10.0.0.1:80",status_class="2xx"} 30
"#;

    #[test]
    fn frame_shows_rates_ratios_upstreams_and_keys() {
        let t = Instant::now();
        let (a, b) = (
            snapshot(t, BEFORE),
            snapshot(t + Duration::from_secs(10), AFTER),
        );
        let layout = Layout {
            width: 200,
            key_rows: 5,
            ansi: false,
        };
        let out = render(&a, &b, "http://127.0.0.1:9091", "10s", layout);
        assert!(out.contains("node edge-1 (v0.1.0, up 1h02m)"), "{out}");
        // 50 requests in 10 s: 30 hits, 10 misses, 10 bypasses
        assert!(out.contains("requests   5.0/s"), "{out}");
        assert!(out.contains("hit 3.0 bypass 1.0 miss 1.0"), "{out}");
        assert!(out.contains("responses  2xx 5.0/s"), "{out}");
        // 30 hits of 40 cacheable requests; memory tier 30 of 40 lookups
        assert!(out.contains("hit ratio  75.0%"), "{out}");
        assert!(
            out.contains("75.0% of requests not bypassed   memory tier 75.0%  disk tier -"),
            "{out}"
        );
        assert!(out.contains("latency    p50 0.50 ms  p99 0.99 ms"), "{out}");
        assert!(out.contains("(average of the last 42s)"), "{out}");
        assert!(out.contains("of 64.0 MiB"), "{out}");
        let server = out.lines().find(|l| l.contains("10.0.0.1:80")).unwrap();
        assert!(
            server.contains(" up ") && server.contains("2.0"),
            "{server}"
        );
        let down = out.lines().find(|l| l.contains("10.0.0.2:80")).unwrap();
        assert!(down.contains("DOWN"), "{down}");
        let hot = out.lines().find(|l| l.contains("example.com/hot")).unwrap();
        assert!(hot.contains(" 30 ") && hot.contains("75.0%"), "{hot}");
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn lines_are_cut_to_the_width() {
        let t = Instant::now();
        let (a, b) = (
            snapshot(t, BEFORE),
            snapshot(t + Duration::from_secs(1), AFTER),
        );
        let layout = Layout {
            width: 40,
            key_rows: 5,
            ansi: true,
        };
        let out = render(&a, &b, "http://127.0.0.1:9091", "1s", layout);
        for line in out.lines() {
            let visible = line.replace("\x1b[1m", "").replace("\x1b[0m", "");
            assert!(visible.chars().count() <= 40, "{line:?}");
        }
        assert!(out.contains("\x1b[1m"));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(uptime(59), "0m59s");
        assert_eq!(uptime(90_000), "1d1h");
        assert_eq!(latency(Some(0.0123)), "12.3 ms");
        assert_eq!(latency(None), "-");
    }
}
