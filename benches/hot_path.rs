//! Micro-benchmarks of the per-request hot path: rule matching, host normalisation, cache key
//! building and hashing, RFC 9111 decisions, `Vary`, `Cache-Status`, memory-tier hits and disk-tier
//! reads.
//!
//! `cargo bench --bench hot_path` measures; `cargo test --all-targets` runs each bench once.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use outpost::cache::freshness::{build_meta, decide};
use outpost::cache::status::{CacheStatus, Forward};
use outpost::cache::vary::variance;
use outpost::cache::MemoryTier;
use outpost::config::{Config, KeyConfig, Overrides, QueryMode, RuleConfig};
use outpost::rules::{key::build_primary, normalize_host, RuleSet};
use pingora_cache::key::CacheHashKey;
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_http::{HMap, RequestHeader, ResponseHeader};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Ten rules in the shapes real configs use: prefixes, host globs, extension globs, key options.
const CONFIG: &str = r#"
[[origins]]
name = "web"
url = "http://127.0.0.1:8000"

[[origins]]
name = "api"
url = "http://127.0.0.1:8001"

[[rules]]
name = "private-api"
action = "bypass"
[rules.match]
path_prefix = ["/api/private/", "/account/"]

[[rules]]
name = "admin"
action = "bypass"
[rules.match]
hosts = ["admin.example.com", "*.internal.example.com"]

[[rules]]
name = "images"
[rules.match]
hosts = ["img.example.com", "*.img.example.com"]
path_prefix = ["/i/", "/thumbs/"]
methods = ["GET", "HEAD"]
[rules.ttl]
default = "1d"
[rules.key]
query = "keep"
query_keep = ["w", "h", "q", "fmt"]

[[rules]]
name = "static-assets"
[rules.match]
paths = ["/static/**", "/**/*.{css,js,png,jpg,svg,woff2}"]
methods = ["GET", "HEAD"]
[rules.ttl]
default = "1h"
[rules.key]
query = "ignore"

[[rules]]
name = "fonts"
[rules.match]
path_prefix = ["/fonts/"]
paths = ["/**/*.{ttf,otf,woff}"]
[rules.ttl]
override = "7d"

[[rules]]
name = "downloads"
[rules.match]
hosts = ["dl.example.com", "mirror?.example.com"]
paths = ["/releases/**/*.tar.gz", "/releases/**/*.zip"]
[rules.ttl]
default = "1d"

[[rules]]
name = "public-api"
origin = "api"
[rules.match]
hosts = ["api.example.com"]
path_prefix = ["/v1/", "/v2/"]
methods = ["GET"]
[rules.key]
query = "sorted"
headers = ["Accept-Language"]

[[rules]]
name = "html"
[rules.match]
hosts = ["example.com", "www.example.com"]
paths = ["/**/*.html", "/"]
[rules.ttl]
default = "5m"

[[rules]]
name = "mobile"
[rules.match]
hosts = ["m.example.com"]
[rules.key]
headers = ["X-Device"]

[[rules]]
name = "shop"
[rules.match]
hosts = ["*.example.org"]
path_prefix = ["/cart/", "/catalog/"]
[rules.ttl]
default = "30s"
"#;

fn config() -> Config {
    Config::from_str(CONFIG, Path::new("bench.toml"), &Overrides::default())
        .expect("the bench config is valid")
}

fn bench_rules(c: &mut Criterion) {
    let cfg = config();
    assert_eq!(cfg.rules.len(), 10);
    let rules = RuleSet::new(&cfg).expect("rules compile");
    let cases: [(&str, &str, &str, Option<usize>); 3] = [
        ("first", "www.example.com", "/api/private/user/42", Some(0)),
        ("last", "shop.example.org", "/cart/checkout/step2", Some(9)),
        ("none", "www.example.net", "/products/123/reviews", None),
    ];
    let mut g = c.benchmark_group("rules/matching");
    for (name, host, path, expect) in cases {
        assert_eq!(rules.matching(&Method::GET, host, path), expect, "{name}");
        g.bench_function(name, |b| {
            b.iter(|| rules.matching(black_box(&Method::GET), black_box(host), black_box(path)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("rules/normalize_host");
    for (name, host) in [
        ("plain", "www.example.com"),
        ("port", "www.example.com:8080"),
        ("upper+port", "WWW.Example.COM:8080"),
    ] {
        g.bench_function(name, |b| b.iter(|| normalize_host(black_box(host)).len()));
    }
    g.finish();
}

fn key_spec(query: QueryMode, headers: &[&str]) -> KeyConfig {
    KeyConfig {
        query,
        headers: headers
            .iter()
            .map(|h| HeaderName::from_bytes(h.as_bytes()).expect("valid header name"))
            .collect(),
    }
}

fn bench_keys(c: &mut Criterion) {
    let host = "www.example.com";
    let path = "/products/shoes/running/model-x";
    let qs = "utm_source=newsletter&size=42&color=blue&utm_campaign=spring&v=3";
    let query = Some(qs);
    let mut headers = HeaderMap::new();
    headers.insert(
        "accept-language",
        HeaderValue::from_static("en-GB,en;q=0.9"),
    );
    headers.insert("user-agent", HeaderValue::from_static("Mozilla/5.0 bench"));
    headers.insert("accept-encoding", HeaderValue::from_static("gzip, br"));

    let specs = [
        ("full", key_spec(QueryMode::Full, &[])),
        ("sorted", key_spec(QueryMode::Sorted, &[])),
        (
            "keep",
            key_spec(
                QueryMode::Keep(vec!["color".into(), "size".into(), "v".into()]),
                &[],
            ),
        ),
        (
            "full+header",
            key_spec(QueryMode::Full, &["accept-language"]),
        ),
    ];

    // As the proxy does it: a fresh String per request.
    let mut g = c.benchmark_group("key/build_primary");
    for (name, spec) in &specs {
        g.bench_function(*name, |b| {
            b.iter(|| {
                let mut out = String::new();
                build_primary(
                    black_box(spec),
                    black_box(host),
                    black_box(path),
                    black_box(query),
                    black_box(&headers),
                    &mut out,
                );
                out
            })
        });
    }
    g.finish();

    // The whole per-request key cost: primary, CacheKey and Pingora's blake2b-128 hash.
    let mut g = c.benchmark_group("key/primary+CacheKey+combined_bin");
    for (name, spec) in &specs {
        g.bench_function(*name, |b| {
            b.iter(|| {
                let mut out = String::new();
                build_primary(
                    black_box(spec),
                    black_box(host),
                    black_box(path),
                    black_box(query),
                    black_box(&headers),
                    &mut out,
                );
                CacheKey::new(out, "").combined_bin()
            })
        });
    }
    g.finish();

    // Hashing once up front and pinning it with `set_primary_bin_override`: later calls to
    // `combined_bin` (predictor, lock, each storage call) then only copy the 16 bytes.
    let mut g = c.benchmark_group("key/primary+hash_once+override");
    let spec = &specs[0].1;
    g.bench_function("build", |b| {
        b.iter(|| {
            let mut out = String::new();
            build_primary(
                black_box(spec),
                black_box(host),
                black_box(path),
                black_box(query),
                black_box(&headers),
                &mut out,
            );
            let hash = pingora_cache::key::hash_key(&out);
            let mut key = CacheKey::new(out, "");
            key.set_primary_bin_override(hash);
            key
        })
    });
    g.finish();

    let mut pinned = CacheKey::new(format!("{host}\n{path}\n"), "");
    pinned.set_primary_bin_override(pingora_cache::key::hash_key(pinned.primary_key()));
    c.bench_function("key/combined_bin_with_override", |b| {
        b.iter(|| black_box(&pinned).combined_bin())
    });

    let key = CacheKey::new(format!("{host}\n{path}?{qs}\n"), "");
    c.bench_function("key/combined_bin_only", |b| {
        b.iter(|| black_box(&key).combined_bin())
    });
}

fn request() -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/static/app.3f9c2a.js", None).expect("request");
    for (k, v) in [
        ("host", "www.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-GB,en;q=0.9"),
    ] {
        r.append_header(k, v).expect("request header");
    }
    r
}

fn response(now: SystemTime) -> ResponseHeader {
    let date = httpdate::fmt_http_date(now);
    let mut r = ResponseHeader::build(200, None).expect("response");
    for (k, v) in [
        ("date", date.as_str()),
        ("content-type", "application/javascript; charset=utf-8"),
        ("content-length", "1024"),
        ("cache-control", "public, max-age=3600"),
        ("etag", "\"5f3c-1a2b3c4d\""),
        ("last-modified", "Tue, 01 Apr 2025 10:00:00 GMT"),
        ("vary", "Accept-Encoding"),
        ("server", "origin/1.0"),
    ] {
        r.append_header(k, v).expect("response header");
    }
    r
}

fn static_rule(cfg: &Config) -> RuleConfig {
    cfg.rules
        .iter()
        .find(|r| r.name == "static-assets")
        .expect("static rule")
        .clone()
}

fn bench_freshness(c: &mut Criterion) {
    let cfg = config();
    let rule = static_rule(&cfg);
    let now = SystemTime::now();
    let req = request();
    let resp = response(now);
    let heuristic_max = Duration::from_secs(86_400);
    let decision = decide(&req, &resp, &rule, heuristic_max, now).expect("storable");

    let mut g = c.benchmark_group("freshness");
    g.bench_function("decide", |b| {
        b.iter(|| {
            decide(
                black_box(&req),
                black_box(&resp),
                black_box(&rule),
                heuristic_max,
                now,
            )
        })
    });
    g.bench_function("build_meta", |b| {
        b.iter(|| build_meta(black_box(&resp), black_box(&decision), now))
    });
    g.bench_function("decide+build_meta", |b| {
        b.iter(|| {
            let d = decide(
                black_box(&req),
                black_box(&resp),
                black_box(&rule),
                heuristic_max,
                now,
            )
            .expect("storable");
            build_meta(black_box(&resp), &d, now)
        })
    });
    g.finish();

    let meta = build_meta(&resp, &decision, now);
    let (internal, header) = meta.serialize().expect("serialize");
    let mut g = c.benchmark_group("cache_meta");
    g.bench_function("serialize", |b| {
        b.iter(|| black_box(&meta).serialize().expect("serialize"))
    });
    g.bench_function("deserialize", |b| {
        b.iter(|| CacheMeta::deserialize(black_box(&internal), black_box(&header)).expect("de"))
    });
    // The alternative to deserializing on every hit: keep the decoded header and the freshness
    // fields in the entry and rebuild a CacheMeta from a clone of them.
    let decoded = meta.response_header().clone();
    let (fresh_until, created) = (meta.fresh_until(), meta.created());
    let (swr, sie) = (meta.stale_while_revalidate_sec(), meta.stale_if_error_sec());
    g.bench_function("rebuild_from_decoded", |b| {
        b.iter(|| CacheMeta::new(fresh_until, created, swr, sie, black_box(&decoded).clone()))
    });
    g.finish();
    println!(
        "cache_meta: serialized sizes internal={}B header={}B",
        internal.len(),
        header.len()
    );
}

fn bench_vary_and_status(c: &mut Criterion) {
    let req = request();
    let mut none = HMap::new();
    none.insert("content-type", HeaderValue::from_static("text/css"));
    let mut one = none.clone();
    one.insert(
        http::header::VARY,
        HeaderValue::from_static("Accept-Encoding"),
    );
    let mut two = none.clone();
    two.insert(
        http::header::VARY,
        HeaderValue::from_static("Accept-Encoding, Accept-Language"),
    );
    assert!(variance(&one, &req, None).is_some());

    let mut g = c.benchmark_group("vary/variance");
    for (name, stored) in [("no-vary", &none), ("1-field", &one), ("2-fields", &two)] {
        g.bench_function(name, |b| {
            b.iter(|| variance(black_box(stored), black_box(&req), None))
        });
    }
    g.finish();

    let hit = CacheStatus::Hit {
        detail: None,
        ttl: 3542,
        stale: false,
        collapsed: false,
    };
    let miss = CacheStatus::Forward {
        fwd: Forward::UriMiss,
        status: Some(200),
        stored: true,
        detail: None,
    };
    let mut g = c.benchmark_group("cache_status/render");
    g.bench_function("hit", |b| b.iter(|| black_box(&hit).render("outpost")));
    g.bench_function("miss-stored", |b| {
        b.iter(|| black_box(&miss).render("outpost"))
    });
    g.finish();
}

const OBJECTS: usize = 10_000;

fn object_key(i: usize) -> CacheKey {
    CacheKey::new(format!("www.example.com\n/static/obj/{i}.js\n"), "")
}

fn bench_memory_tier(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tier: &'static MemoryTier = Box::leak(Box::new(MemoryTier::new(
        256 * 1024 * 1024,
        1024 * 1024,
        false,
    )));
    let span = Span::inactive();
    let span = span.handle();
    let now = SystemTime::now();
    let body = Bytes::from(vec![b'x'; 1024]);
    let keys: Vec<CacheKey> = (0..OBJECTS).map(object_key).collect();

    // Meta as the proxy stores it: the typical response through build_meta.
    let cfg = config();
    let rule = static_rule(&cfg);
    let resp = response(now);
    let decision =
        decide(&request(), &resp, &rule, Duration::from_secs(86_400), now).expect("storable");

    rt.block_on(async {
        for key in &keys {
            let meta = build_meta(&resp, &decision, now);
            let mut miss = tier
                .get_miss_handler(key, &meta, &span)
                .await
                .expect("miss handler");
            miss.write_body(body.clone(), true).await.expect("write");
            miss.finish().await.expect("finish");
        }
    });
    assert_eq!(tier.objects(), OBJECTS as u64, "every object admitted");

    async fn hit(
        tier: &'static MemoryTier,
        key: &CacheKey,
        span: &pingora_cache::trace::SpanHandle,
    ) -> usize {
        let (meta, mut handler) = tier.lookup(key, span).await.expect("lookup").expect("hit");
        let mut n = 0;
        while let Some(chunk) = handler.read_body().await.expect("read") {
            n += chunk.len();
        }
        drop(meta);
        n
    }
    rt.block_on(async {
        assert_eq!(hit(tier, &keys[0], &span).await, 1024);
    });

    let mut g = c.benchmark_group("memory_tier");
    g.bench_function("hit_1KiB/same-key", |b| {
        b.iter(|| rt.block_on(hit(tier, black_box(&keys[0]), &span)))
    });
    let mut i = 0usize;
    g.bench_function("hit_1KiB/10k-keys", |b| {
        b.iter(|| {
            i = (i + 7919) % OBJECTS; // stride by a prime: not sequential in the hash table
            rt.block_on(hit(tier, black_box(&keys[i]), &span))
        })
    });
    let absent = object_key(OBJECTS + 1);
    g.bench_function("miss", |b| {
        b.iter(|| {
            rt.block_on(async {
                tier.lookup(black_box(&absent), &span)
                    .await
                    .expect("lookup")
                    .is_none()
            })
        })
    });
    // The fill path for scale: miss handler + one body chunk + finish (replaces an entry).
    let fill_meta = || build_meta(&resp, &decision, now);
    let mut j = 0usize;
    g.bench_function("fill_1KiB", |b| {
        b.iter_batched(
            fill_meta,
            |meta| {
                j = (j + 1) % OBJECTS;
                rt.block_on(async {
                    let mut miss = tier
                        .get_miss_handler(&keys[j], &meta, &span)
                        .await
                        .expect("miss handler");
                    miss.write_body(body.clone(), true).await.expect("write");
                    miss.finish().await.expect("finish")
                })
            },
            BatchSize::SmallInput,
        )
    });
    // Reference point: an empty block_on, to subtract the runtime's share from the above.
    g.bench_function("block_on_overhead", |b| {
        b.iter(|| rt.block_on(async { black_box(1) }))
    });
    g.finish();
}

/// Compression as the node does it on a miss (Pingora's encoders: brotli quality 5 with a
/// 19-bit window, gzip level 6), per KiB of a 100 KiB HTML-like body, and the negotiation done
/// on every request to a varying object.
fn bench_compression(c: &mut Criterion) {
    use outpost::config::Encoding;
    use outpost::policy::compression::negotiate;
    use std::io::Write;
    let mut body = Vec::new();
    let mut i = 0u32;
    while body.len() < 100 * 1024 {
        body.extend_from_slice(
            format!(
                "<li class=\"item\"><a href=\"/p/{i}\">product {i}</a> {}</li>\n",
                i * 7919 % 1000
            )
            .as_bytes(),
        );
        i += 1;
    }
    body.truncate(100 * 1024);
    let mut g = c.benchmark_group("compression_100KiB");
    g.throughput(criterion::Throughput::Bytes(body.len() as u64));
    for level in [1u32, 5, 9] {
        g.bench_function(format!("brotli_q{level}"), |b| {
            b.iter(|| {
                let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, level, 19);
                w.write_all(black_box(&body)).expect("brotli");
                w.flush().expect("brotli");
                w.into_inner().len()
            })
        });
    }
    for level in [1u32, 6, 9] {
        g.bench_function(format!("gzip_{level}"), |b| {
            b.iter(|| {
                let mut w =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
                w.write_all(black_box(&body)).expect("gzip");
                w.finish().expect("gzip").len()
            })
        });
    }
    g.finish();
    let ae: Vec<HeaderValue> = vec![HeaderValue::from_static("gzip, deflate, br, zstd")];
    let offered = [Encoding::Brotli, Encoding::Gzip];
    c.bench_function("negotiate_accept_encoding", |b| {
        b.iter(|| negotiate(black_box(&ae).iter(), &offered))
    });
}

/// Objects of each size stored for the disk-tier benchmark.
const DISK_OBJECTS: u64 = 64;

/// A disk-tier hit as the lean path reads it (`DiskTier::lookup_now`: the directory lookup, the
/// record's `pread`s from a segment in the page cache, the checksums), without the socket.
fn bench_disk_tier(c: &mut Criterion) {
    use outpost::cache::disk::{DiskObject, Now};
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = outpost::metrics::Metrics::new(1 << 20, 1 << 30).expect("metrics");
    let disk = outpost::cache::DiskTier::open(dir.path(), 1 << 30, 1 << 30, metrics.storage);
    let sizes = [1024usize, 100 * 1024];
    let key = |size: usize, n: u64| {
        outpost::cache::memory::hash(&CacheKey::new(format!("disk\n/{size}/{n}"), ""))
    };
    for size in sizes {
        for n in 0..DISK_OBJECTS {
            let object = DiskObject {
                head: Bytes::from(vec![b'h'; 300]),
                body: Bytes::from(vec![n as u8; size]),
            };
            assert!(disk.put(key(size, n), object), "stored");
        }
    }
    assert!(disk.flush(Duration::from_secs(30)), "written");
    let mut g = c.benchmark_group("disk_tier");
    for size in sizes {
        let mut n = 0;
        g.bench_function(format!("lookup_now_{}k", size / 1024), |b| {
            b.iter(|| {
                n = (n + 1) % DISK_OBJECTS;
                match disk.lookup_now(key(size, n), u64::MAX) {
                    Now::Ready(hit) => black_box(hit.object.body.len()),
                    _ => panic!("object {n} of {size} B not read"),
                }
            })
        });
    }
    g.finish();
    disk.shutdown(Duration::from_secs(10));
}

fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// Picking an upstream server per miss: weighted round robin and ketama over 8 servers, and
/// ketama skipping servers already tried (a retry).
fn bench_upstream_selection(c: &mut Criterion) {
    use outpost::metrics::Metrics;
    use outpost::upstream::{Pool, Tier};
    let metrics = Metrics::new(1 << 20, 1 << 20).expect("metrics");
    let servers: Vec<String> = (0..8)
        .map(|i| format!("\"http://127.0.0.1:{}\"", 9000 + i))
        .collect();
    let pool = |balance: &str| {
        let text = format!(
            "[[origins]]\nname = \"{balance}\"\nbalance = \"{balance}\"\nservers = [{}]\n",
            servers.join(", ")
        );
        let cfg = Config::from_str(&text, Path::new("bench.toml"), &Overrides::default())
            .expect("pool config");
        Pool::new(cfg.origins[0].clone(), Tier::Origin, &metrics).expect("pool")
    };
    let (rr, ketama) = (pool("round_robin"), pool("ketama"));
    let key = pingora_cache::key::hash_key("www.example.com\n/static/app.css\n");
    let mut g = c.benchmark_group("upstream");
    g.bench_function("select_round_robin_8", |b| {
        b.iter(|| rr.select(black_box(&key), &[]))
    });
    g.bench_function("select_ketama_8", |b| {
        b.iter(|| ketama.select(black_box(&key), &[]))
    });
    let first = ketama.select(&key, &[]).expect("a server");
    g.bench_function("select_ketama_8_retry", |b| {
        b.iter(|| ketama.select(black_box(&key), &[first]))
    });
    g.finish();
}

/// Counting a request in the top keys table (`logging` hook): a key already tracked, and a
/// stream of new keys each taking the least-counted slot of a full table.
fn bench_top_keys(c: &mut Criterion) {
    use outpost::observe::topkeys::{TopKeys, CAPACITY};
    let top = TopKeys::default();
    let paths: Vec<String> = (0..CAPACITY)
        .map(|i| format!("/static/{i}/app.css"))
        .collect();
    for p in &paths {
        top.record("www.example.com", p, 1000);
    }
    let mut g = c.benchmark_group("top_keys");
    g.bench_function("record_tracked_key", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % paths.len();
            top.record(black_box("www.example.com"), black_box(&paths[i]), 1000)
        })
    });
    let fresh: Vec<String> = (0..100_000).map(|i| format!("/scan/{i}")).collect();
    g.bench_function("record_new_key_full_table", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % fresh.len();
            top.record(black_box("www.example.com"), black_box(&fresh[i]), 1000)
        })
    });
    g.bench_function("top_20_of_1000", |b| b.iter(|| top.top(black_box(20))));
    g.finish();
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = bench_rules, bench_keys, bench_freshness, bench_vary_and_status, bench_memory_tier,
        bench_disk_tier, bench_compression, bench_upstream_selection, bench_top_keys
}
criterion_main!(benches);
