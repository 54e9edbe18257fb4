//! Compression, black-box: negotiation from `Accept-Encoding` with q-values, each encoding made
//! once and stored as its own variant (hits never recompress: counted), `Vary` and weak
//! `ETag`s, origin-encoded bodies passed through or decoded for identity-only clients, types
//! and sizes not compressed, ranges and HEAD on encoded variants, configuration errors.
mod common;

use common::*;
use std::io::{Read, Write};

/// A compressible page: 20 KiB of repetitive HTML.
fn page() -> Vec<u8> {
    let mut body = Vec::new();
    for i in 0..400 {
        body.extend_from_slice(
            format!("<p>paragraph {i} of a very compressible page</p>\n").as_bytes(),
        );
    }
    body.truncate(20 * 1024);
    body
}

fn html(body: Vec<u8>) -> Reply {
    Reply::ok(body)
        .header("Content-Type", "text/html; charset=utf-8")
        .header("Cache-Control", "max-age=600")
        .header("ETag", "\"page-1\"")
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

fn unbrotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(b, 4096)
        .read_to_end(&mut out)
        .expect("valid brotli");
    out
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).expect("gzip");
    e.finish().expect("gzip")
}

fn compressed(node: &Node, encoding: &str) -> f64 {
    metric_sum(
        &node.metrics(),
        "outpost_compressed_responses_total",
        &[("encoding", encoding)],
    )
}

fn get_ae(node: &Node, path: &str, ae: &str) -> Fetched {
    get_with(node, path, &[("Accept-Encoding", ae)])
}

#[test]
fn negotiation_picks_by_q_value_and_each_encoding_is_made_once() {
    let origin = TestOrigin::start();
    let body = page();
    origin.set("/page", html(body.clone()));
    let node = NodeConfig::new(&origin.url()).start();
    for (ae, want) in [
        ("gzip, deflate, br", "br"),
        ("gzip;q=1.0, br;q=0.5", "gzip"),
        ("br;q=0, gzip;q=0", "identity"),
        ("identity", "identity"),
        ("*", "br"),
        ("*;q=0.2, br;q=0, zstd;q=0", "gzip"),
        ("gzip, zstd", "zstd"),
    ] {
        for round in ["first", "again"] {
            let r = get_ae(&node, "/page", ae);
            assert_eq!(r.status, 200, "{ae}");
            let ce = r.header("content-encoding");
            let decoded = match want {
                "br" => unbrotli(&r.body),
                "gzip" => gunzip(&r.body),
                "zstd" => zstd::decode_all(&r.body[..]).expect("valid zstd"),
                _ => r.body.clone(),
            };
            assert_eq!(
                ce.as_deref(),
                (want != "identity").then_some(want),
                "{ae} ({round})"
            );
            assert_eq!(decoded, body, "{ae} ({round}): body differs once decoded");
            let vary = r.header("vary").unwrap_or_default().to_ascii_lowercase();
            assert!(vary.contains("accept-encoding"), "{ae}: Vary {vary:?}");
            if want == "identity" {
                assert_eq!(r.header("etag").as_deref(), Some("\"page-1\""));
            } else {
                assert_eq!(
                    r.header("etag").as_deref(),
                    Some("W/\"page-1\""),
                    "{ae}: transformed, so weak"
                );
                assert!(
                    r.body.len() < body.len() / 3,
                    "{ae}: {} bytes",
                    r.body.len()
                );
            }
        }
    }
    // one origin fetch per variant (br, gzip, identity, zstd), one compression per encoding
    assert_eq!(origin.hits("/page"), 4);
    assert_eq!(compressed(&node, "br"), 1.0);
    assert_eq!(compressed(&node, "gzip"), 1.0);
    assert_eq!(compressed(&node, "zstd"), 1.0);
    let hit = get_ae(&node, "/page", "br, gzip");
    assert_hit(&hit, "a br hit");
    assert_eq!(
        hit.header("content-length")
            .map(|l| l.parse::<usize>().unwrap_or(0)),
        Some(hit.body.len()),
        "a stored variant has its length"
    );
    assert_eq!(compressed(&node, "br"), 1.0, "a hit recompressed");
    let m = node.metrics();
    let saved_in = metric_sum(
        &m,
        "outpost_compression_bytes_in_total",
        &[("encoding", "br")],
    );
    let saved_out = metric_sum(
        &m,
        "outpost_compression_bytes_out_total",
        &[("encoding", "br")],
    );
    assert_eq!(saved_in, body.len() as f64);
    assert!(
        saved_out > 0.0 && saved_out < saved_in / 3.0,
        "{saved_out} of {saved_in}"
    );
}

#[test]
fn origin_encoded_bodies_pass_through_or_are_decoded_for_identity_clients() {
    let origin = TestOrigin::start();
    let body = page();
    let encoded = gzip(&body);
    origin.set(
        "/pre",
        html(encoded.clone()).header("Content-Encoding", "gzip"),
    );
    let node = NodeConfig::new(&origin.url()).start();
    let r = get_ae(&node, "/pre", "gzip");
    assert_eq!(r.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(
        r.body, encoded,
        "an origin-encoded body is passed through untouched"
    );
    let r = get_ae(&node, "/pre", "identity");
    assert!(r.header("content-encoding").is_none());
    assert_eq!(
        r.body, body,
        "decoded for a client that accepts no encoding"
    );
    let plain = get_with(&node, "/pre", &[]);
    assert_eq!(plain.body, body, "no Accept-Encoding: identity");
    assert_eq!(
        compressed(&node, "gzip"),
        0.0,
        "nothing was compressed by the node"
    );
}

#[test]
fn other_types_small_bodies_and_no_transform_are_left_alone() {
    let origin = TestOrigin::start();
    origin.set(
        "/img",
        Reply::ok(vec![7u8; 20_000])
            .header("Content-Type", "image/png")
            .header("Cache-Control", "max-age=600"),
    );
    origin.set("/small", html(b"<p>tiny</p>".to_vec()));
    origin.set(
        "/nt",
        html(page()).header("Cache-Control", "max-age=600, no-transform"),
    );
    let node = NodeConfig::new(&origin.url()).start();
    for p in ["/img", "/small", "/nt"] {
        let r = get_ae(&node, p, "br, gzip");
        assert_eq!(r.status, 200);
        assert!(r.header("content-encoding").is_none(), "{p} was compressed");
    }
    assert_eq!(compressed(&node, "br"), 0.0);
}

#[test]
fn ranges_and_head_apply_to_the_encoded_variant() {
    let origin = TestOrigin::start();
    origin.set("/page", html(page()));
    let node = NodeConfig::new(&origin.url()).start();
    let full = get_ae(&node, "/page", "br");
    assert_eq!(full.header("content-encoding").as_deref(), Some("br"));
    assert_hit(&get_ae(&node, "/page", "br"), "stored");
    let part = get_with(
        &node,
        "/page",
        &[("Accept-Encoding", "br"), ("Range", "bytes=10-19")],
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.body, full.body[10..20], "a range of the encoded bytes");
    let head = request_with(&node, "HEAD", "/page", &[("Accept-Encoding", "br")]);
    assert_eq!(head.header("content-encoding").as_deref(), Some("br"));
    assert!(head.body.is_empty());
}

#[test]
fn compression_can_be_configured_and_bad_settings_name_their_key() {
    let origin = TestOrigin::start();
    origin.set("/page", html(page()));
    origin.set(
        "/data",
        Reply::ok(vec![b'a'; 5000])
            .header("Content-Type", "application/x-custom")
            .header("Cache-Control", "max-age=600"),
    );
    let node = NodeConfig::new(&origin.url())
        .extra("[compression]\nencodings = [\"gzip\"]\ntypes = [\"application/x-custom\"]")
        .start();
    assert!(get_ae(&node, "/page", "br, gzip")
        .header("content-encoding")
        .is_none());
    let r = get_ae(&node, "/data", "br, gzip");
    assert_eq!(
        r.header("content-encoding").as_deref(),
        Some("gzip"),
        "br is not offered"
    );
    drop(node);
    let off = NodeConfig::new(&origin.url())
        .extra("[compression]\nenabled = false")
        .start();
    assert!(get_ae(&off, "/page", "br")
        .header("content-encoding")
        .is_none());

    for (extra, key) in [
        (
            "[compression]\nencodings = [\"lz4\"]",
            "compression.encodings[0]",
        ),
        ("[compression]\nzstd_level = 20", "compression.zstd_level"),
        ("[compression]\ntypes = [\"html\"]", "compression.types[0]"),
        (
            "[compression]\nbrotli_level = 12",
            "compression.brotli_level",
        ),
        ("[compression]\nmin_size = \"big\"", "compression.min_size"),
    ] {
        assert_refused(extra, key);
    }
}
