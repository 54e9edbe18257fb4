//! Request rate limits: GCRA (the token bucket as one timestamp per key), memory-bounded.
//!
//! Each limit allows `count` requests per `per` on average and `burst` more at once: a key's
//! state is its *theoretical arrival time* (TAT). A request at `now` is allowed when
//! `TAT - now <= burst * interval`, and moves TAT one interval on. Keys live in a bounded
//! table (`rate_limit.max_keys`, least recently seen forgotten first): a forgotten key starts
//! again with a full bucket, which is what an idle key has anyway.
//!
//! Answers carry the IETF `RateLimit-Policy` / `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers): `"<name>";q=<count>;w=<seconds>` and
//! `"<name>";r=<remaining>;t=<seconds until full>`, and refusals `Retry-After`.

use crate::config::{LimitKey, LimitRule, RateLimitConfig};
use crate::rules::{Matcher, RuleError};
use http::{HeaderMap, Method};
use ipnet::IpNet;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::Xxh3;

/// Which limits a check applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Limits on every request (checked before the cache).
    Every,
    /// Limits on requests going to the origin (`only_misses`).
    Misses,
}

/// One limit's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Index of the limit.
    pub rule: usize,
    /// Requests still allowed at once after this one.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset: u64,
    /// Refused: seconds until a request would be allowed.
    pub retry_after: Option<u64>,
}

/// The limits of one configuration, compiled (reloadable with the rules).
#[derive(Debug)]
pub struct Limits {
    rules: Vec<(Matcher, LimitRule)>,
    allow: Vec<IpNet>,
}

/// The buckets of every limited key, shared across reloads (a limit keeps its state while
/// its name stays).
pub struct Buckets {
    table: quick_cache::sync::Cache<u64, u64>,
    base: Instant,
}

impl Buckets {
    /// A table tracking at most `max_keys` keys.
    pub fn new(max_keys: usize) -> Buckets {
        Buckets {
            table: quick_cache::sync::Cache::new(max_keys.max(1)),
            base: Instant::now(),
        }
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// One request for `key` under a limit of one request per `interval` with `tolerance`
    /// (burst x interval) of slack: whether it is allowed, and how far (ns) the key's TAT is
    /// ahead of now afterwards.
    fn take(&self, key: u64, interval: u64, tolerance: u64) -> (bool, u64) {
        use quick_cache::sync::{EntryAction, EntryResult};
        let now = self.now();
        let decide = |stored: u64| -> (bool, u64) {
            let tat = stored.max(now);
            if tat - now > tolerance {
                (false, tat)
            } else {
                (true, tat + interval)
            }
        };
        let (allowed, tat) = match self.table.entry(&key, None, |_, tat| {
            let (allowed, next) = decide(*tat);
            *tat = next;
            EntryAction::Retain((allowed, next))
        }) {
            EntryResult::Retained(r) => r,
            EntryResult::Vacant(guard) => {
                let (allowed, next) = decide(now);
                let _ = guard.insert(next);
                (allowed, next)
            }
            // not returned without a timeout or a removing callback
            _ => (true, now + interval),
        };
        (allowed, tat.saturating_sub(now))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

impl Limits {
    /// Compile `config`'s limits.
    pub fn new(config: &RateLimitConfig) -> Result<Limits, RuleError> {
        let rules = config
            .rules
            .iter()
            .map(|r| {
                Matcher::compile(r.matcher.clone())
                    .map(|m| (m, r.clone()))
                    .map_err(|source| RuleError {
                        rule: r.name.clone(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Limits {
            rules,
            allow: config.allow.clone(),
        })
    }

    /// Whether there are no limits.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The request field a limit of `phase` is keyed on, if any is (the first).
    pub fn keyed_field(&self, phase: Phase) -> Option<&http::HeaderName> {
        self.rules
            .iter()
            .filter(|(_, r)| r.only_misses == (phase == Phase::Misses))
            .find_map(|(_, r)| match &r.key {
                LimitKey::Header(name) => Some(name),
                _ => None,
            })
    }

    /// Whether any limit counts only misses.
    pub fn has_miss_limits(&self) -> bool {
        self.rules.iter().any(|(_, r)| r.only_misses)
    }

    /// The limit at `index`.
    pub fn rule(&self, index: usize) -> &LimitRule {
        &self.rules[index].1
    }

    /// Count a request against every limit of `phase` that matches it, recording each verdict
    /// in `out`. Returns the first refusal. Clients on the allow-list are never counted.
    pub fn check(
        &self,
        buckets: &Buckets,
        phase: Phase,
        req: (&Method, &str, &str),
        client: IpAddr,
        headers: &HeaderMap,
        out: &mut Vec<Outcome>,
    ) -> Option<Outcome> {
        let (method, host, path) = req;
        if self.allow.iter().any(|net| net.contains(&client)) {
            return None;
        }
        let mut refused = None;
        for (i, (matcher, rule)) in self.rules.iter().enumerate() {
            if rule.only_misses != (phase == Phase::Misses) || !matcher.matches(method, host, path)
            {
                continue;
            }
            let key = key_of(rule, client, path, headers);
            let interval = nanos(rule.per) / u64::from(rule.count);
            let tolerance = interval.saturating_mul(u64::from(rule.burst));
            let (allowed, ahead) = buckets.take(key, interval, tolerance);
            let outcome = Outcome {
                rule: i,
                remaining: if allowed {
                    (tolerance + interval).saturating_sub(ahead) / interval.max(1)
                } else {
                    0
                },
                reset: ceil_secs(ahead),
                retry_after: (!allowed).then(|| ceil_secs(ahead - tolerance).max(1)),
            };
            out.push(outcome);
            if !allowed && refused.is_none() {
                refused = Some(outcome);
            }
        }
        refused
    }

    /// Count `refused` (a request from `client` refused) in `counter` and log it; the 429's
    /// body and its `Retry-After` seconds, as every path answers them.
    pub fn refuse(
        &self,
        counter: &prometheus::IntCounterVec,
        refused: &Outcome,
        client: IpAddr,
    ) -> (String, u64) {
        let name = &self.rule(refused.rule).name;
        counter.with_label_values(&[name]).inc();
        let retry = refused.retry_after.unwrap_or(1);
        tracing::debug!(%client, limit = %name, retry_after = retry, "rate limited");
        let text = format!("429 Too Many Requests: rate limit {name:?}; retry after {retry} s\n");
        (text, retry)
    }

    /// `RateLimit-Policy` for `outcomes`.
    pub fn policy_field(&self, outcomes: &[Outcome]) -> String {
        let mut s = String::new();
        for o in outcomes {
            let r = self.rule(o.rule);
            if !s.is_empty() {
                s.push_str(", ");
            }
            s.push_str(&format!(
                "\"{}\";q={};w={}",
                r.name,
                r.count,
                r.per.as_secs()
            ));
        }
        s
    }

    /// `RateLimit` for `outcomes`.
    pub fn state_field(&self, outcomes: &[Outcome]) -> String {
        let mut s = String::new();
        for o in outcomes {
            if !s.is_empty() {
                s.push_str(", ");
            }
            s.push_str(&format!(
                "\"{}\";r={};t={}",
                self.rule(o.rule).name,
                o.remaining,
                o.reset
            ));
        }
        s
    }
}

/// The bucket key of a request under `rule`: the rule's name and what it counts by.
fn key_of(rule: &LimitRule, client: IpAddr, path: &str, headers: &HeaderMap) -> u64 {
    let mut h = Xxh3::new();
    h.update(rule.name.as_bytes());
    h.update(&[0xff]);
    let ip = |h: &mut Xxh3| match client {
        IpAddr::V4(v4) => h.update(&v4.octets()),
        IpAddr::V6(v6) => h.update(&v6.octets()),
    };
    match &rule.key {
        LimitKey::Ip => ip(&mut h),
        LimitKey::IpPath => {
            ip(&mut h);
            h.update(&[0]);
            h.update(path.as_bytes());
        }
        LimitKey::Header(name) => match headers.get(name) {
            Some(v) => {
                h.update(b"h");
                h.update(v.as_bytes());
            }
            None => {
                h.update(b"i");
                ip(&mut h);
            }
        },
    }
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MatchConfig;

    fn limits(count: u32, per: Duration, burst: u32, key: LimitKey) -> Limits {
        Limits::new(&RateLimitConfig {
            allow: vec!["192.0.2.0/24".parse().expect("cidr")],
            max_keys: 1000,
            rules: vec![LimitRule {
                name: "l".into(),
                matcher: MatchConfig::default(),
                count,
                per,
                burst,
                key,
                only_misses: false,
            }],
        })
        .expect("compile")
    }

    fn check(l: &Limits, b: &Buckets, ip: &str, headers: &HeaderMap) -> Option<Outcome> {
        let mut out = Vec::new();
        let r = l.check(
            b,
            Phase::Every,
            (&Method::GET, "h", "/p"),
            ip.parse().expect("ip"),
            headers,
            &mut out,
        );
        assert!(!out.is_empty() || ip.starts_with("192.0.2."));
        r
    }

    #[test]
    fn burst_plus_one_at_once_then_refused_with_retry_after() {
        let l = limits(10, Duration::from_secs(60), 4, LimitKey::Ip);
        let b = Buckets::new(100);
        let h = HeaderMap::new();
        for i in 0..5 {
            assert_eq!(check(&l, &b, "10.0.0.1", &h), None, "request {i}");
        }
        let refused = check(&l, &b, "10.0.0.1", &h).expect("sixth refused");
        // one request per 6 s: the next is allowed 6 s after the first
        assert!((5..=6).contains(&refused.retry_after.expect("retry")));
        assert_eq!(refused.remaining, 0);
        // other clients have their own buckets; allow-listed ones none
        assert_eq!(check(&l, &b, "10.0.0.2", &h), None);
        for _ in 0..20 {
            assert_eq!(check(&l, &b, "192.0.2.9", &h), None);
        }
    }

    #[test]
    fn remaining_counts_down_and_header_keys_fall_back_to_the_address() {
        let l = limits(
            1,
            Duration::from_secs(3600),
            2,
            LimitKey::Header("x-api-key".parse().expect("name")),
        );
        let b = Buckets::new(100);
        let mut with_key = HeaderMap::new();
        with_key.insert("x-api-key", "k1".parse().expect("v"));
        let mut out = Vec::new();
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let req = (&Method::GET, "h", "/p");
        let mut remaining = Vec::new();
        for _ in 0..3 {
            out.clear();
            assert!(l
                .check(&b, Phase::Every, req, ip, &with_key, &mut out)
                .is_none());
            remaining.push(out[0].remaining);
        }
        assert_eq!(remaining, [2, 1, 0]);
        assert!(l
            .check(&b, Phase::Every, req, ip, &with_key, &mut out)
            .is_some());
        // the same address without the key is another bucket
        out.clear();
        assert!(l
            .check(&b, Phase::Every, req, ip, &HeaderMap::new(), &mut out)
            .is_none());
        assert_eq!(l.state_field(&out[..1]), "\"l\";r=2;t=3600");
        assert_eq!(l.policy_field(&out[..1]), "\"l\";q=1;w=3600");
    }

    #[test]
    fn the_table_is_bounded() {
        let l = limits(1, Duration::from_secs(1), 0, LimitKey::Ip);
        let b = Buckets::new(1000);
        for i in 0..20_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            let mut out = Vec::new();
            let _ = l.check(
                &b,
                Phase::Every,
                (&Method::GET, "h", "/"),
                ip,
                &HeaderMap::new(),
                &mut out,
            );
        }
        assert!(b.len() <= 1100, "{} keys tracked", b.len());
    }
}
