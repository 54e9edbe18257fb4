//! The Prometheus text exposition format as a client reads it: samples with their labels, sums
//! over label subsets, and quantiles of histogram buckets (as PromQL's `histogram_quantile`).

use std::collections::BTreeMap;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, with its `_bucket` / `_sum` / `_count` suffix for histograms.
    pub name: String,
    /// Label pairs in the order written.
    pub labels: Vec<(String, String)>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn matches(&self, filter: &[(&str, &str)]) -> bool {
        filter.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// Every sample of one scrape of `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: Vec<Sample>,
}

/// The label pairs of `{...}` (without the braces); `None` if malformed.
fn parse_labels(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if s.is_empty() {
            return Some(labels);
        }
        let (name, rest) = s.split_once('=')?;
        let mut chars = rest.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name.trim().to_string(), value));
        s = &rest[end + 2..];
    }
}

/// One sample line, or `None` for comments, blank and malformed lines.
fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(i) if line[i..].starts_with('{') => {
            // the closing brace is the last one: label values may hold '}'
            let close = line.rfind('}')?;
            let labels = parse_labels(&line[i + 1..close])?;
            (&line[..i], labels, &line[close + 1..])
        }
        Some(i) => (&line[..i], Vec::new(), &line[i..]),
        None => return None,
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

impl Scrape {
    /// Parse an exposition; lines that are not samples are skipped.
    pub fn parse(text: &str) -> Scrape {
        Scrape {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// Every sample, in exposition order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Whether any sample of metric `name` is exposed.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// Sum of the samples of `name` carrying every label pair of `filter`.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.matches(filter))
            .map(|s| s.value)
            .sum()
    }

    /// Sums of the samples of `name` matching `filter`, by the value of label `by`.
    pub fn sum_by(&self, name: &str, by: &str, filter: &[(&str, &str)]) -> BTreeMap<String, f64> {
        let mut sums = BTreeMap::new();
        for s in self
            .samples
            .iter()
            .filter(|s| s.name == name && s.matches(filter))
        {
            *sums
                .entry(s.label(by).unwrap_or_default().to_string())
                .or_insert(0.0) += s.value;
        }
        sums
    }

    /// The cumulative buckets of histogram `family` matching `filter`, summed over its other
    /// labels: `(upper bound, count)` by increasing bound.
    pub fn buckets(&self, family: &str, filter: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let name = format!("{family}_bucket");
        let mut by_bound: Vec<(f64, f64)> = Vec::new();
        for s in self
            .samples
            .iter()
            .filter(|s| s.name == name && s.matches(filter))
        {
            let Some(le) = s.label("le").and_then(|le| le.parse::<f64>().ok()) else {
                continue;
            };
            match by_bound.iter_mut().find(|(b, _)| *b == le) {
                Some((_, count)) => *count += s.value,
                None => by_bound.push((le, s.value)),
            }
        }
        by_bound.sort_by(|a, b| a.0.total_cmp(&b.0));
        by_bound
    }
}

/// What a counter grew by from `before` to `after`; after a reset (the node restarted) the
/// whole of `after`, as PromQL's `increase`.
pub fn increase(before: f64, after: f64) -> f64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

/// Bucket counts `after - before` per bound (both as [`Scrape::buckets`] returns them).
pub fn bucket_increase(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, n)| {
            let was = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, increase(was, *n))
        })
        .collect()
}

/// The `q` quantile (0..=1) of cumulative histogram buckets, interpolated linearly within the
/// bucket it falls in, as PromQL's `histogram_quantile`; `None` without observations. A
/// quantile in the `+Inf` bucket is the largest finite bound.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            if inside <= 0.0 {
                return Some(le);
            }
            return Some(lower + (le - lower) * (rank - below) / inside);
        }
        lower = le;
        below = count;
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP outpost_requests_total Client requests
# TYPE outpost_requests_total counter
outpost_requests_total{cache_status="hit",status_class="2xx"} 30
outpost_requests_total{cache_status="miss",status_class="2xx"} 5
outpost_requests_total{cache_status="miss",status_class="5xx"} 1
outpost_upstream_healthy{tier="origin",pool="a,b",server="x\"y}"} 1
outpost_cluster_lag_seconds 0.5
h_bucket{s="hit",le="0.1"} 1
h_bucket{s="hit",le="1"} 3
h_bucket{s="hit",le="+Inf"} 4
h_bucket{s="miss",le="0.1"} 0
h_bucket{s="miss",le="1"} 0
h_bucket{s="miss",le="+Inf"} 0
"#;

    #[test]
    fn parses_samples_labels_and_escapes() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.samples().len(), 11);
        assert_eq!(s.sum("outpost_requests_total", &[]), 36.0);
        assert_eq!(
            s.sum("outpost_requests_total", &[("cache_status", "miss")]),
            6.0
        );
        let by = s.sum_by("outpost_requests_total", "cache_status", &[]);
        assert_eq!(by["hit"], 30.0);
        let healthy = &s
            .samples()
            .iter()
            .find(|x| x.name == "outpost_upstream_healthy")
            .unwrap();
        assert_eq!(healthy.label("server"), Some("x\"y}"));
        assert_eq!(healthy.label("pool"), Some("a,b"));
        assert_eq!(s.sum("outpost_cluster_lag_seconds", &[]), 0.5);
        assert!(s.has("h_bucket") && !s.has("h"));
    }

    #[test]
    fn buckets_sum_over_other_labels_in_bound_order() {
        let s = Scrape::parse(TEXT);
        let b = s.buckets("h", &[]);
        assert_eq!(b, vec![(0.1, 1.0), (1.0, 3.0), (f64::INFINITY, 4.0)]);
        assert_eq!(
            s.buckets("h", &[("s", "miss")]).last(),
            Some(&(f64::INFINITY, 0.0))
        );
    }

    #[test]
    fn quantiles_interpolate_like_histogram_quantile() {
        let b = [(0.1, 1.0), (1.0, 3.0), (f64::INFINITY, 4.0)];
        // rank 2 of 4: half-way through the (0.1, 1] bucket
        assert!((quantile(0.5, &b).unwrap() - 0.55).abs() < 1e-9);
        assert!((quantile(0.25, &b).unwrap() - 0.1).abs() < 1e-9);
        // in the +Inf bucket: the largest finite bound
        assert_eq!(quantile(0.99, &b), Some(1.0));
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
    }

    #[test]
    fn increases_survive_a_counter_reset() {
        assert_eq!(increase(10.0, 15.0), 5.0);
        assert_eq!(increase(10.0, 3.0), 3.0);
        let before = [(0.1, 2.0), (f64::INFINITY, 4.0)];
        let after = [(0.1, 3.0), (f64::INFINITY, 7.0)];
        assert_eq!(
            bucket_increase(&before, &after),
            vec![(0.1, 1.0), (f64::INFINITY, 3.0)]
        );
    }
}
