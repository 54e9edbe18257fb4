//! Unit tests of the RFC 9111 decisions, one per rule of the RFC.

use super::*;
use crate::config::{
    Action, CacheableConfig, KeyConfig, MatchConfig, QueryMode, TtlConfig, DEFAULT_CACHEABLE_STATUS,
};

fn rule(ttl: TtlConfig) -> RuleConfig {
    RuleConfig {
        name: "t".into(),
        origin: 0,
        action: Action::Cache,
        matcher: MatchConfig::default(),
        ttl,
        key: KeyConfig {
            query: QueryMode::Full,
            headers: vec![],
        },
        cacheable: CacheableConfig {
            status: DEFAULT_CACHEABLE_STATUS.to_vec(),
            restrict_status: false,
            set_cookie: false,
            authorized: false,
        },
        stale: Default::default(),
        headers: Default::default(),
        shield: true,
        redirect_https: false,
    }
}

fn heuristic() -> RuleConfig {
    rule(TtlConfig {
        override_ttl: None,
        default: None,
        heuristic: true,
        ..Default::default()
    })
}

fn req(h: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/", None).unwrap();
    for (k, v) in h {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

fn resp(status: u16, h: &[(&str, &str)]) -> ResponseHeader {
    let mut r = ResponseHeader::build(status, None).unwrap();
    for (k, v) in h {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

const DAY: Duration = Duration::from_secs(86_400);

fn at(now: SystemTime) -> String {
    httpdate::fmt_http_date(now)
}

#[test]
fn s_maxage_beats_max_age_beats_expires() {
    let now = SystemTime::now();
    let exp = at(now + Duration::from_secs(500));
    let d = decide(
        &req(&[]),
        &resp(
            200,
            &[
                ("cache-control", "max-age=10, s-maxage=20"),
                ("expires", &exp),
            ],
        ),
        &heuristic(),
        DAY,
        now,
    )
    .unwrap();
    assert_eq!(
        (d.lifetime.as_secs(), d.source),
        (20, LifetimeSource::SMaxAge)
    );
    let d = decide(
        &req(&[]),
        &resp(200, &[("cache-control", "max-age=10"), ("expires", &exp)]),
        &heuristic(),
        DAY,
        now,
    )
    .unwrap();
    assert_eq!(
        (d.lifetime.as_secs(), d.source),
        (10, LifetimeSource::MaxAge)
    );
    let date = at(now);
    let d = decide(
        &req(&[]),
        &resp(200, &[("expires", &exp), ("date", &date)]),
        &heuristic(),
        DAY,
        now,
    )
    .unwrap();
    assert_eq!(d.source, LifetimeSource::Expires);
    assert!((499..=500).contains(&d.lifetime.as_secs()));
}

#[test]
fn invalid_expires_means_already_expired() {
    let now = SystemTime::now();
    let r = resp(200, &[("expires", "0")]);
    assert_eq!(
        decide(&req(&[]), &r, &heuristic(), DAY, now).unwrap_err(),
        "stale-without-validator"
    );
    let r = resp(200, &[("expires", "0"), ("etag", "\"a\"")]);
    assert_eq!(
        decide(&req(&[]), &r, &heuristic(), DAY, now)
            .unwrap()
            .lifetime,
        Duration::ZERO
    );
}

#[test]
fn heuristic_is_ten_percent_of_last_modified_age_capped() {
    let now = SystemTime::now();
    let lm = at(now - Duration::from_secs(1000));
    let d = decide(
        &req(&[]),
        &resp(200, &[("last-modified", &lm)]),
        &heuristic(),
        DAY,
        now,
    )
    .unwrap();
    assert_eq!(d.source, LifetimeSource::Heuristic);
    assert!((99..=100).contains(&d.lifetime.as_secs()));
    let old = at(now - 100 * DAY);
    let d = decide(
        &req(&[]),
        &resp(200, &[("last-modified", &old)]),
        &heuristic(),
        DAY,
        now,
    )
    .unwrap();
    assert_eq!(d.lifetime, DAY);
}

#[test]
fn heuristic_only_for_heuristically_cacheable_statuses() {
    let now = SystemTime::now();
    let lm = at(now - Duration::from_secs(1000));
    assert_eq!(
        decide(
            &req(&[]),
            &resp(302, &[("last-modified", &lm)]),
            &heuristic(),
            DAY,
            now
        )
        .unwrap_err(),
        "no-explicit-freshness"
    );
    assert!(decide(
        &req(&[]),
        &resp(302, &[("cache-control", "max-age=5")]),
        &heuristic(),
        DAY,
        now
    )
    .is_ok());
    assert_eq!(
        decide(
            &req(&[]),
            &resp(599, &[("last-modified", &lm)]),
            &heuristic(),
            DAY,
            now
        )
        .unwrap_err(),
        "no-explicit-freshness",
        "without explicit freshness: only the codes stored without it"
    );
}

#[test]
fn any_final_status_with_explicit_freshness_is_stored_unless_the_rule_lists_codes() {
    let now = SystemTime::now();
    let mut r = heuristic();
    r.ttl.override_ttl = Some(Duration::from_secs(3600));
    let expires = at(now + Duration::from_secs(60));
    for status in [299, 303, 400, 499, 500, 502, 503, 504, 599] {
        for field in [
            ("cache-control", "max-age=5"),
            ("expires", expires.as_str()),
        ] {
            let d = decide(&req(&[]), &resp(status, &[field]), &r, DAY, now)
                .unwrap_or_else(|e| panic!("{status} {field:?}: {e}"));
            assert!(d.lifetime.as_secs() <= 60, "{status}: no override");
            assert!(!d.disconnected, "{status}: no stale beyond the origin's");
        }
    }
    for status in [100, 206, 304] {
        assert!(decide(
            &req(&[]),
            &resp(status, &[("cache-control", "max-age=5")]),
            &r,
            DAY,
            now
        )
        .is_err());
    }
    r.cacheable.restrict_status = true;
    assert_eq!(
        decide(
            &req(&[]),
            &resp(500, &[("cache-control", "max-age=5")]),
            &r,
            DAY,
            now
        )
        .unwrap_err(),
        "status-not-cacheable",
        "a rule's own status list restricts storage"
    );
}

#[test]
fn must_understand_stores_known_statuses_despite_no_store_and_never_unknown_ones() {
    let now = SystemTime::now();
    let cc = [("cache-control", "max-age=60, must-understand, no-store")];
    assert!(decide(&req(&[]), &resp(200, &cc), &heuristic(), DAY, now).is_ok());
    assert_eq!(
        decide(&req(&[]), &resp(599, &cc), &heuristic(), DAY, now).unwrap_err(),
        "must-understand"
    );
    assert_eq!(
        decide(
            &req(&[]),
            &resp(200, &[("cache-control", "max-age=60, no-store")]),
            &heuristic(),
            DAY,
            now
        )
        .unwrap_err(),
        "no-store"
    );
}

#[test]
fn no_store_private_set_cookie_and_vary_star_are_not_stored() {
    let now = SystemTime::now();
    let h = heuristic();
    let cases = [
        (vec![("cache-control", "max-age=60, no-store")], "no-store"),
        (vec![("cache-control", "max-age=60, private")], "private"),
        (
            vec![("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            "set-cookie",
        ),
        (
            vec![("cache-control", "max-age=60"), ("vary", "accept, *")],
            "vary-star",
        ),
    ];
    for (headers, reason) in cases {
        assert_eq!(
            decide(&req(&[]), &resp(200, &headers), &h, DAY, now).unwrap_err(),
            reason
        );
    }
    let no_store_req = req(&[("cache-control", "no-store")]);
    assert_eq!(
        decide(
            &no_store_req,
            &resp(200, &[("cache-control", "max-age=60")]),
            &h,
            DAY,
            now
        )
        .unwrap_err(),
        "request-no-store"
    );
}

#[test]
fn authorization_needs_public_s_maxage_or_must_revalidate() {
    let now = SystemTime::now();
    let auth = req(&[("authorization", "Bearer x")]);
    let h = heuristic();
    assert_eq!(
        decide(
            &auth,
            &resp(200, &[("cache-control", "max-age=60")]),
            &h,
            DAY,
            now
        )
        .unwrap_err(),
        "authorization"
    );
    for cc in [
        "public, max-age=60",
        "s-maxage=60",
        "max-age=60, must-revalidate",
    ] {
        assert!(
            decide(&auth, &resp(200, &[("cache-control", cc)]), &h, DAY, now).is_ok(),
            "{cc}"
        );
    }
}

#[test]
fn rule_override_and_default_ttls() {
    let now = SystemTime::now();
    let over = rule(TtlConfig {
        override_ttl: Some(Duration::from_secs(3600)),
        default: None,
        heuristic: true,
        ..Default::default()
    });
    let d = decide(
        &req(&[]),
        &resp(200, &[("cache-control", "max-age=5")]),
        &over,
        DAY,
        now,
    )
    .unwrap();
    assert_eq!(
        (d.lifetime.as_secs(), d.source),
        (3600, LifetimeSource::Override)
    );
    let def = rule(TtlConfig {
        override_ttl: None,
        default: Some(Duration::from_secs(60)),
        heuristic: true,
        ..Default::default()
    });
    let d = decide(&req(&[]), &resp(200, &[]), &def, DAY, now).unwrap();
    assert_eq!(
        (d.lifetime.as_secs(), d.source),
        (60, LifetimeSource::RuleDefault)
    );
    assert_eq!(
        decide(&req(&[]), &resp(200, &[]), &heuristic(), DAY, now).unwrap_err(),
        "no-freshness-info"
    );
}

#[test]
fn age_header_and_date_make_the_initial_age() {
    let now = SystemTime::now();
    let d = decide(
        &req(&[]),
        &resp(200, &[("cache-control", "max-age=100"), ("age", "30")]),
        &heuristic(),
        DAY,
        now,
    )
    .unwrap();
    assert_eq!(d.initial_age.as_secs(), 30);
    let meta = build_meta(
        &resp(200, &[("cache-control", "max-age=100"), ("age", "30")]),
        &d,
        now,
    );
    assert!((29..=31).contains(&meta.age().as_secs()));
    assert!(meta.headers().get("age").is_none());
    assert_eq!(
        meta.headers().get("date").map(|d| d.as_bytes()),
        Some(httpdate::fmt_http_date(now).as_bytes()),
        "the Date a response lacks is added when it is stored"
    );
    let fresh_for = meta.fresh_until().duration_since(now).unwrap().as_secs();
    assert!((69..=70).contains(&fresh_for));
}

#[test]
fn must_revalidate_disables_stale_serving_and_hop_by_hop_is_stripped() {
    let now = SystemTime::now();
    let r = resp(
        200,
        &[
            (
                "cache-control",
                "max-age=10, must-revalidate, stale-if-error=60",
            ),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
        ],
    );
    let d = decide(&req(&[]), &r, &heuristic(), DAY, now).unwrap();
    let meta = build_meta(&r, &d, now);
    assert_eq!(meta.stale_if_error_sec(), 0);
    assert!(meta.headers().get("x-hop").is_none());
    assert!(meta.headers().get("keep-alive").is_none());
    let r = resp(200, &[("cache-control", "max-age=10, stale-if-error=60")]);
    let meta = build_meta(
        &r,
        &decide(&req(&[]), &r, &heuristic(), DAY, now).unwrap(),
        now,
    );
    assert_eq!(meta.stale_if_error_sec(), 60);
}

#[test]
fn response_no_cache_is_stored_but_always_stale() {
    let now = SystemTime::now();
    let r = resp(
        200,
        &[
            ("cache-control", "no-cache, max-age=600"),
            ("etag", "\"v1\""),
        ],
    );
    let d = decide(&req(&[]), &r, &heuristic(), DAY, now).unwrap();
    assert_eq!(
        (d.lifetime, d.source),
        (Duration::ZERO, LifetimeSource::NoCache)
    );
    assert!(forbids_stale(&r.headers, &[]));
}

#[test]
fn not_modified_fields_replace_stored_ones_except_length_and_hop_by_hop() {
    let stored = resp(
        200,
        &[
            ("cache-control", "max-age=10"),
            ("x-version", "1"),
            ("content-length", "5"),
            ("date", "Mon, 23 Nov 2026 10:00:00 GMT"),
        ],
    );
    let nm = resp(
        304,
        &[
            ("cache-control", "max-age=60"),
            ("x-version", "2"),
            ("content-length", "0"),
            ("connection", "close"),
            ("date", "Mon, 23 Nov 2026 11:00:00 GMT"),
        ],
    );
    let merged = merge_not_modified(&stored, &nm.headers);
    let get = |n: &str| {
        merged
            .headers
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(get("cache-control").as_deref(), Some("max-age=60"));
    assert_eq!(get("x-version").as_deref(), Some("2"));
    assert_eq!(get("content-length").as_deref(), Some("5"));
    assert_eq!(
        get("date").as_deref(),
        Some("Mon, 23 Nov 2026 11:00:00 GMT")
    );
    assert!(merged.headers.get("connection").is_none());
    assert_eq!(merged.status, 200);
}

#[test]
fn stale_windows_come_from_the_response_then_the_rule_and_never_where_forbidden() {
    let now = SystemTime::now();
    let mut r = heuristic();
    r.stale = crate::config::StaleConfig {
        while_revalidate: Duration::from_secs(30),
        if_error: Duration::from_secs(600),
        disconnected: true,
    };
    let windows_under = |r: &RuleConfig, cc: &str| {
        let d =
            decide(&req(&[]), &resp(200, &[("cache-control", cc)]), r, DAY, now).expect("storable");
        (d.stale_while_revalidate, d.stale_if_error, d.disconnected)
    };
    let windows = |cc: &str| windows_under(&r, cc);
    assert_eq!(windows("max-age=60"), (30, 600, true), "rule defaults");
    assert_eq!(
        windows("max-age=60, stale-while-revalidate=5, stale-if-error=7"),
        (5, 7, true),
        "the response's own windows win"
    );
    for forbidding in [
        "max-age=60, must-revalidate, stale-if-error=7",
        "max-age=60, proxy-revalidate",
        "no-cache, stale-while-revalidate=5",
    ] {
        let v = decide(
            &req(&[]),
            &resp(200, &[("cache-control", forbidding), ("etag", "\"e\"")]),
            &r,
            DAY,
            now,
        )
        .expect("storable");
        assert_eq!(
            (v.stale_while_revalidate, v.stale_if_error, v.disconnected),
            (0, 0, false),
            "{forbidding}"
        );
    }
    assert_eq!(
        windows("s-maxage=60"),
        (0, 0, false),
        "s-maxage keeps rule defaults out"
    );
    assert_eq!(windows("s-maxage=60, stale-if-error=9"), (0, 9, false));
    let mut off = r.clone();
    off.stale.disconnected = false;
    assert_eq!(
        windows_under(&off, "max-age=60"),
        (30, 600, false),
        "if_error = \"0s\""
    );
}

#[test]
fn negative_lifetimes_apply_without_explicit_freshness() {
    let now = SystemTime::now();
    let mut r = heuristic();
    r.ttl.not_found = Some(Duration::from_secs(10));
    let d = decide(&req(&[]), &resp(404, &[]), &r, DAY, now).expect("404 stored");
    assert_eq!(
        (d.lifetime.as_secs(), d.source),
        (10, LifetimeSource::Negative)
    );
    let d = decide(
        &req(&[]),
        &resp(410, &[("cache-control", "max-age=99")]),
        &r,
        DAY,
        now,
    )
    .expect("410 stored");
    assert_eq!(d.lifetime.as_secs(), 99, "explicit freshness wins");
    assert_eq!(
        decide(&req(&[]), &resp(503, &[]), &r, DAY, now).err(),
        Some("no-explicit-freshness"),
        "5xx without explicit freshness are not stored by default"
    );
    r.ttl.server_error = Some(Duration::from_secs(5));
    let d = decide(&req(&[]), &resp(503, &[]), &r, DAY, now).expect("503 stored");
    assert_eq!(
        (d.lifetime.as_secs(), d.source),
        (5, LifetimeSource::Negative)
    );
}

#[test]
fn dates_in_every_form_and_any_letter_case_are_read() {
    let want = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
    for s in [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "sun, 06 nov 1994 08:49:37 gmt",
        "SUNDAY, 06-NOV-94 08:49:37 GMT",
        "sun NOV  6 08:49:37 1994",
    ] {
        assert_eq!(super::lenient_date(s), Some(want), "{s}");
    }
    for s in [
        "0",
        "",
        "Sun, 06 Nov 1994",
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "tomorrow",
        "Sün",
    ] {
        assert_eq!(super::lenient_date(s), None, "{s}");
    }
}

/// RFC 5861 4: `stale-if-error=N` allows a response stale for up to N seconds, not N plus the
/// fraction of a second whole seconds drop; a stored error (no window) is never within one.
#[test]
fn stale_if_error_windows_end_on_the_dot() {
    let now = SystemTime::now();
    let r = rule(TtlConfig::default());
    let stored = |status: u16, cc: &str, stale_ms: u64| {
        let fresh_until = now - Duration::from_millis(stale_ms);
        let header = resp(status, &[("cache-control", cc)]);
        CacheMeta::new(
            fresh_until,
            fresh_until - Duration::from_secs(1),
            0,
            0,
            header,
        )
    };
    let within = |m: &CacheMeta| within_stale_if_error(m, &r, now);
    assert!(within(&stored(200, "max-age=1, stale-if-error=1", 500)));
    assert!(within(&stored(200, "max-age=1, stale-if-error=1", 1000)));
    assert!(!within(&stored(200, "max-age=1, stale-if-error=1", 1500)));
    assert!(
        !within(&stored(503, "max-age=1", 500)),
        "an error 0.5 s stale"
    );
    let fresh = CacheMeta::new(
        now + Duration::from_secs(1),
        now,
        0,
        0,
        resp(503, &[("cache-control", "max-age=2")]),
    );
    assert!(within(&fresh), "not stale yet");
}
