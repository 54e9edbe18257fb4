//! The lean pass path: a request under a bypass rule, or whose key the cache predicts
//! uncacheable (the last response for it could not be stored: `no-store`, `private`, a status
//! not stored...), forwarded to the origin on the node's own keep-alive connections, below
//! Pingora's session, as the lean hit path answers hits.
//!
//! Through Pingora's session such a request builds its request and response header maps,
//! runs the cache state machine only to bypass it, and relays the body through a task and a
//! channel. Here the request is built once, written on a pooled connection, the response head
//! parsed in place, edited with the same functions the full path's hooks call, and the body
//! relayed in the connection's own task.
//!
//! Taken only where every step is the full path's: an origin pool over plain HTTP reached
//! directly (no shield), no rate limit, no compression other than `identity` negotiated, a
//! server available; otherwise the request goes to the full path before anything is sent.
//! Servers that fail before their response head are counted, retried and answered for as the
//! full path does (passive health, `retries`, 502/504). Differences, by design: a response
//! that turned storable clears the prediction and is passed on (the next request fills the
//! cache, where the full path stores this one: `detail=deferred`). HTTP/1.0 requests take
//! the full path (a chunked or close-delimited response reaches them close-delimited).

use super::{plain_fields, wire_name, written_as, Done, Kind, LeanHits, Passed, Response};
use crate::cache::partial::RANGE_ANSWER;
use crate::cache::status::{CacheStatus, Forward};
use crate::cache::{freshness, vary};
use crate::metrics::DisconnectPhase;
use crate::node::Routing;
use crate::policy::compression;
use crate::policy::hardening;
use crate::proxy::{failure_detail, failure_text};
use http::{header, StatusCode, Version};
use pingora_cache::predictor::CacheablePredictor;
use pingora_cache::CacheKey;
use pingora_http::{RequestHeader, ResponseHeader};
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Response header fields read at most (more: a protocol error, as Pingora's limit).
const MAX_FIELDS: usize = 100;
/// The longest response head read (Pingora's limit).
const MAX_HEAD: usize = 1 << 20;
/// Body bytes read from the origin at once.
const READ_SIZE: usize = 64 << 10;
/// Room made for a response head (with the start of its body).
const HEAD_READ: usize = 8 << 10;
/// The largest read buffer a client connection keeps between passes.
pub const KEPT_BUFFER: usize = 16 << 10;

/// A request the lean path forwards, as [`LeanHits`] planned it.
pub struct Pass {
    /// Bytes of the request (its header: it has no body).
    pub consumed: usize,
    /// The request sent upstream, serialized.
    pub(super) wire: Vec<u8>,
    pub(super) routing: Arc<Routing>,
    /// The matching rule.
    pub(super) rule: Option<usize>,
    /// The origin pool and its server chosen.
    pub(super) origin: usize,
    pub(super) member: usize,
    pub(super) primary_bin: [u8; 16],
    /// `identity` was negotiated (compression on): the full path's compression hooks run.
    pub(super) identity: bool,
    /// The client connection stays open after the response.
    pub(super) keep_alive: bool,
    /// Under a bypass rule: the cache is never involved (else predicted uncacheable).
    pub(super) bypass: bool,
    pub(super) done: Done,
}

/// Requests without fields, as `freshness::decide` reads the requests of lean passes.
pub(super) struct Bare {
    get: Option<RequestHeader>,
    head: Option<RequestHeader>,
}

impl Bare {
    pub(super) fn new() -> Bare {
        let bare = |method| RequestHeader::build(method, b"/", Some(0)).ok();
        Bare {
            get: bare(http::Method::GET),
            head: bare(http::Method::HEAD),
        }
    }
}

/// Idle keep-alive connections to origin servers, by address, newest last.
#[derive(Default)]
pub(super) struct IdleUpstreams {
    conns: parking_lot::Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    by_addr: HashMap<SocketAddr, Vec<(TcpStream, Instant)>>,
    /// Connections kept, all addresses.
    total: usize,
}

impl IdleUpstreams {
    /// The newest connection to `addr` idle for less than `max_idle` (older ones are closed).
    fn take(&self, addr: SocketAddr, max_idle: Duration) -> Option<TcpStream> {
        let mut idle = self.conns.lock();
        let list = idle.by_addr.get_mut(&addr)?;
        let (stream, since) = list.pop()?;
        let mut gone = 1;
        let found = if since.elapsed() < max_idle {
            Some(stream)
        } else {
            // the rest idled longer still
            gone += list.len();
            list.clear();
            None
        };
        idle.total -= gone;
        found
    }

    /// Keep `stream` for the next request to `addr`, while fewer than `max` are kept
    /// (`node.upstream_keepalive_pool`; else it is closed).
    fn put(&self, addr: SocketAddr, stream: TcpStream, max: usize) {
        let mut idle = self.conns.lock();
        if idle.total >= max {
            return;
        }
        idle.total += 1;
        idle.by_addr
            .entry(addr)
            .or_default()
            .push((stream, Instant::now()));
    }
}

/// How the exchange of a request for a response head failed.
enum Failed {
    /// Nothing came back (the request may not even have been written): on a pooled
    /// connection, the server had closed it.
    Nothing,
    /// The connection ended inside the head.
    Reset,
    Timeout,
    /// Not an HTTP/1 response head.
    Protocol,
}

/// A response head read from an origin.
struct Head {
    resp: ResponseHeader,
    /// Bytes of the read buffer after the head (the start of the body).
    len: usize,
    /// Where each field's name and value are in the read buffer, in the order sent.
    fields: Vec<(Range<usize>, Range<usize>)>,
}

/// How the origin frames the body of a response (RFC 9112 6.3).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the origin closes the connection.
    Close,
}

/// The framing of the response `resp` to a request `head_only` or not.
fn framing(resp: &ResponseHeader, head_only: bool) -> Option<Framing> {
    let status = resp.status.as_u16();
    if head_only || matches!(status, 100..=199 | 204 | 304) {
        return Some(Framing::None);
    }
    if let Some(te) = resp
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
    {
        let last = te
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .unwrap_or_default();
        return Some(if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    let mut lengths = resp.headers.get_all(header::CONTENT_LENGTH).iter();
    match lengths.next() {
        None => Some(Framing::Close),
        Some(v) => {
            let n = std::str::from_utf8(v.as_bytes())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            lengths.all(|w| w == v).then_some(Framing::Length(n))
        }
    }
}

/// Write `wire` on `stream` and read the final response head (1xx heads are skipped), under
/// `read_timeout` for each step.
async fn exchange(
    stream: &mut TcpStream,
    wire: &[u8],
    read_timeout: Duration,
    buf: &mut Vec<u8>,
) -> Result<Head, Failed> {
    match timeout(read_timeout, stream.write_all(wire)).await {
        Ok(Ok(())) => {}
        _ => return Err(Failed::Nothing),
    }
    let mut received = 0usize;
    loop {
        if buf.capacity() - buf.len() < 2048 {
            buf.reserve(HEAD_READ.max(buf.len()));
        }
        let n = match timeout(read_timeout, stream.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) if received == 0 => return Err(Failed::Nothing),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(Failed::Reset),
            Err(_) => return Err(Failed::Timeout),
            Ok(Ok(n)) => n,
        };
        received += n;
        loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
            let mut parsed = httparse::Response::new(&mut fields);
            match parsed.parse(buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let code = parsed.code.ok_or(Failed::Protocol)?;
                    if (100..200).contains(&code) {
                        // an interim response (103 Early Hints...): not relayed
                        buf.drain(..len);
                        continue;
                    }
                    let resp = response_header(&parsed).ok_or(Failed::Protocol)?;
                    let base = buf.as_ptr() as usize;
                    let at = |b: &[u8]| {
                        let start = b.as_ptr() as usize - base;
                        start..start + b.len()
                    };
                    let fields = parsed
                        .headers
                        .iter()
                        .map(|h| (at(h.name.as_bytes()), at(h.value)))
                        .collect();
                    return Ok(Head { resp, len, fields });
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => break,
                _ => return Err(Failed::Protocol),
            }
        }
    }
}

/// `parsed` as Pingora's HTTP/1 client builds a response header (for the decisions: names
/// lowercase).
fn response_header(parsed: &httparse::Response<'_, '_>) -> Option<ResponseHeader> {
    // (no case map: the fields sent are written from the head as received)
    let mut headers = http::HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = bytes::Bytes::copy_from_slice(h.value);
        headers.append(name, pingora_http::header_value_from_raw(value));
    }
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = StatusCode::from_u16(parsed.code?).ok()?;
    parts.version = match parsed.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return None,
    };
    parts.headers = headers;
    let mut resp = ResponseHeader::from(parts);
    resp.set_reason_phrase(parsed.reason).ok()?;
    if resp.headers.contains_key(header::TRANSFER_ENCODING) {
        // Transfer-Encoding overrides Content-Length (RFC 9112 6.3), as Pingora reads it
        resp.remove_header(&header::CONTENT_LENGTH);
    }
    Some(resp)
}

/// Where a chunked body ends, read as its bytes pass (RFC 9112 7.1).
#[derive(Default)]
struct Chunks {
    state: ChunkState,
    /// Bytes of chunk data seen.
    payload: u64,
}

#[derive(Default, Clone, Copy)]
enum ChunkState {
    /// A chunk size: its value so far, digits read, in an extension.
    #[default]
    Start,
    Size(u64, bool),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailer section: at the start of a line, or inside one.
    TrailerLine(bool),
    TrailerLf(bool),
    Done,
}

impl Chunks {
    /// Read `bytes`: `Ok(Some(n))` if the body ends after its first `n` bytes, `Ok(None)` if
    /// it goes on, `Err` for bytes that are not a chunked body.
    fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ()> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                Start => match hex(b) {
                    Some(d) => Size(u64::from(d), false),
                    None => return Err(()),
                },
                Size(v, false) if hex(b).is_some() => {
                    let d = u64::from(hex(b).unwrap_or(0));
                    Size(
                        v.checked_mul(16).ok_or(())?.checked_add(d).ok_or(())?,
                        false,
                    )
                }
                Size(v, _) if b == b'\r' => SizeLf(v),
                Size(v, false) if matches!(b, b';' | b' ' | b'\t') => Size(v, true),
                Size(v, true) if b != b'\n' => Size(v, true),
                Size(..) => return Err(()),
                SizeLf(0) if b == b'\n' => TrailerLine(true),
                SizeLf(v) if b == b'\n' => Data(v),
                SizeLf(_) => return Err(()),
                Data(n) => {
                    let take = n.min((bytes.len() - i) as u64);
                    self.payload += take;
                    i += take as usize;
                    self.state = if take == n { DataCr } else { Data(n - take) };
                    continue;
                }
                DataCr if b == b'\r' => DataLf,
                DataLf if b == b'\n' => Start,
                DataCr | DataLf => return Err(()),
                TrailerLine(at_start) if b == b'\r' => TrailerLf(at_start),
                TrailerLine(_) if b == b'\n' => return Err(()),
                TrailerLine(_) => TrailerLine(false),
                TrailerLf(true) if b == b'\n' => Done,
                TrailerLf(false) if b == b'\n' => TrailerLine(true),
                TrailerLf(_) => return Err(()),
                Done => return Ok(Some(i)),
            };
            i += 1;
            if matches!(self.state, Done) {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// How relaying a body ended.
enum Relayed {
    /// All of it: the origin connection may serve another request.
    Whole { reusable: bool },
    /// The client went away.
    ClientGone,
    /// The origin failed (reset, timed out, malformed chunks) after the head was sent.
    OriginFailed(&'static str),
}

impl LeanHits {
    /// Whether the cache predicts the key hashed `primary_bin` uncacheable (Pingora then
    /// bypasses the lookup: so does the lean path).
    pub(super) fn predicted_uncacheable(&self, primary_bin: [u8; 16]) -> bool {
        !self
            .node
            .predictor
            .cacheable_prediction(&hashed_key(primary_bin))
    }

    /// Forward `pass` to its origin server and relay the response to `client`.
    /// `buf` is the connection's read buffer for responses (kept between requests).
    pub async fn pass<C: AsyncWrite + Unpin>(
        &self,
        pass: Pass,
        client: &mut C,
        buf: &mut Vec<u8>,
    ) -> Passed {
        let node = &self.node;
        let Some(pool) = pass.routing.origins.get(pass.origin) else {
            return Passed::HandOver;
        };
        let cfg = &pool.config;
        let origin_start = Instant::now();
        let head_only = pass.done.method == http::Method::HEAD;
        // Cache-Status: `fwd=bypass` under a bypass rule, else `fwd=miss` (the cache bypassed)
        let fwd = if pass.bypass {
            Forward::Bypass
        } else {
            Forward::Miss
        };
        // as upstream_peer, fail_to_connect and error_while_proxy: a server that fails before
        // its response head counts the failure, and the request (idempotent, bodyless) goes to
        // another while the pool's retries last
        let mut index = pass.member;
        let mut tried = smallvec::SmallVec::<[usize; 4]>::new();
        let (mut upstream, head, upstream_framing, member) = loop {
            let Some(member) = pool.member(index) else {
                return Passed::HandOver;
            };
            tried.push(index);
            let attempt = self.attempt(member.addr, cfg, &pass.wire, buf).await;
            let failed = match attempt {
                Ok((stream, head)) => match framing(&head.resp, head_only) {
                    Some(framing) => break (stream, head, framing, member),
                    None => "protocol",
                },
                Err(kind) => kind,
            };
            pool.server_failed(index, failed);
            let next = if tried.len() <= cfg.retries && pool.has_untried(&tried) {
                pool.select(&pass.primary_bin, &tried).ok()
            } else {
                None
            };
            match next {
                Some(next) => {
                    pool.count_retry();
                    index = next;
                }
                None => {
                    let (label, done) = (&member.label, pass.done);
                    return self
                        .fail(done, client, pool, label, (failed, fwd), origin_start)
                        .await;
                }
            }
        };
        let origin_header = Instant::now();
        let Head {
            mut resp,
            len,
            fields: spans,
        } = head;
        let origin_keep_alive = resp.version == Version::HTTP_11
            && !hardening::connection_named(&resp.headers).any(|n| n == "close");
        let status = resp.status.as_u16();
        let rule = pass.routing.rules.get(pass.rule);
        // upstream_response_filter (and adjust_upstream_modules before it)
        let origin_encoded = pass.identity && resp.headers.contains_key(header::CONTENT_ENCODING);
        let compressible = pass.identity && compression::eligible(&node.config.compression, &resp);
        // (on the map the decisions read, and on the fields sent, below)
        let hop = hardening::hop_by_hop(&resp.headers);
        for name in &hop {
            resp.remove_header(name);
        }
        let vary = (compressible || origin_encoded)
            .then(|| vary::with_field(&resp.headers, "accept-encoding"))
            .flatten();
        if let Some(value) = &vary {
            if resp.insert_header(header::VARY, value.as_str()).is_err() {
                return Passed::HandOver;
            }
        }
        if matches!(status, 500 | 502 | 503 | 504) {
            pool.record_failure();
        }
        if pool.past_total_timeout(origin_start) {
            // the full path's 504 (total_timeout), counted as a timeout of this server
            member.metrics.error("timeout");
            let (label, done) = (&member.label, pass.done);
            return self
                .fail(done, client, pool, label, ("timeout", fwd), origin_start)
                .await;
        }
        pool.server_answered(index, status, origin_start.elapsed().as_secs_f64());
        // response_cache_filter, the cache bypassed: what the response says of storing (a bypass
        // rule never enables the cache: no such decision)
        let not_stored = if pass.bypass {
            None
        } else if resp.status == StatusCode::PARTIAL_CONTENT {
            Some(RANGE_ANSWER)
        } else {
            // (the fields of a request decide() reads, Cache-Control and Authorization, keep
            // it off the lean path: a request without fields stands for it)
            let bare = if head_only {
                &self.bare.head
            } else {
                &self.bare.get
            };
            let Some(request) = bare else {
                return Passed::HandOver;
            };
            let decided = freshness::decide(
                request,
                &resp,
                &rule.config,
                node.config.cache.heuristic_max_ttl,
                SystemTime::now(),
            );
            match decided {
                Ok(_) => {
                    // storable now: the next request fills the cache
                    node.predictor.mark_cacheable(&hashed_key(pass.primary_bin));
                    Some("deferred")
                }
                Err(reason) => Some(reason),
            }
        };
        // Pingora converts a close-delimited response to chunked for the (HTTP/1.1) client
        let client_framing = match upstream_framing {
            Framing::Close => Framing::Chunked,
            other => other,
        };
        let keep_alive = pass.keep_alive;
        // response_filter
        let cache_status = CacheStatus::Forward {
            fwd,
            status: Some(status),
            stored: false,
            detail: not_stored,
        };
        // the fields as the origin sent them, edited as the full path edits its header map
        let mut fields = Response(Vec::with_capacity(spans.len() + 8));
        for (name, value) in spans {
            fields
                .0
                .push((Cow::Borrowed(&buf[name]), Cow::Borrowed(&buf[value])));
        }
        if !resp.headers.contains_key(header::CONTENT_LENGTH) {
            // Transfer-Encoding overrides it (response_header)
            fields.remove(b"content-length");
        }
        for name in &hop {
            fields.remove(name.as_str().as_bytes());
        }
        if let Some(value) = vary {
            fields.insert(wire_name(&header::VARY), value.into_bytes());
        }
        if (upstream_framing, client_framing) == (Framing::Close, Framing::Chunked) {
            fields.insert(wire_name(&header::TRANSFER_ENCODING), &b"chunked"[..]);
        }
        let ours = cache_status.render(&node.config.node.name);
        let id = pass.done.request_id.as_deref();
        let rule_rules = &rule.config.headers.response;
        self.response_filter(&mut fields, ours, id, None, &pass.routing, rule_rules);
        let head_bytes = written_as(status, resp.get_reason_phrase(), fields, keep_alive);
        let mut done = pass.done;
        done.kind = Kind::Pass {
            label: cache_status.label(),
            upstream: member.label.clone(),
            origin_ms: crate::observe::millis(
                origin_header.duration_since(origin_start).as_secs_f64(),
            ),
        };
        done.status = status;
        done.first_byte = done.start.elapsed().as_secs_f64();
        buf.drain(..len);
        let relayed = relay(
            client,
            &mut upstream,
            head_bytes,
            buf,
            upstream_framing,
            client_framing,
            cfg.read_timeout,
            || pool.past_total_timeout(origin_start),
            &mut done.body_len,
        )
        .await;
        let keep_alive = match relayed {
            Relayed::Whole { reusable } => {
                if reusable && origin_keep_alive && upstream_framing != Framing::Close {
                    self.idle.put(
                        member.addr,
                        upstream,
                        node.config.node.upstream_keepalive_pool,
                    );
                }
                keep_alive
            }
            Relayed::ClientGone => {
                node.metrics
                    .disconnects
                    .count(DisconnectPhase::ResponseBody);
                tracing::debug!(host = %done.host, "client closed the connection");
                false
            }
            Relayed::OriginFailed(kind) => {
                member.metrics.error(kind);
                pool.record_failure();
                tracing::warn!(
                    host = %done.host,
                    path = done.target.split('?').next().unwrap_or("/"),
                    upstream = %member.label,
                    kind,
                    "the origin failed mid-response: connection to the client closed"
                );
                // as fail_to_proxy leaves it: an error, answered by the node
                done.kind = Kind::Failed {
                    label: CacheStatus::Forward {
                        fwd,
                        status: None,
                        stored: false,
                        detail: None,
                    }
                    .label(),
                    upstream: member.label.clone(),
                };
                false
            }
        };
        self.record(&done, done.body_len);
        Passed::Done { keep_alive }
    }

    /// Send `wire` to the server at `addr` on a pooled connection (once more on a new one if
    /// the pooled one turns out closed) or a new one, and read its response head; the failure
    /// kind (`connect`, `timeout`, `reset`, `protocol`) otherwise.
    async fn attempt(
        &self,
        addr: SocketAddr,
        cfg: &crate::config::OriginConfig,
        wire: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<(TcpStream, Head), &'static str> {
        let mut pooled = self.idle.take(addr, cfg.keepalive_timeout);
        loop {
            let reused = pooled.is_some();
            let mut stream = match pooled.take() {
                Some(stream) => stream,
                None => match timeout(cfg.connect_timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        stream
                    }
                    Ok(Err(_)) => return Err("connect"),
                    Err(_) => return Err("timeout"),
                },
            };
            buf.clear();
            match exchange(&mut stream, wire, cfg.read_timeout, buf).await {
                Ok(head) => return Ok((stream, head)),
                // a pooled connection the server had closed: not the server's failure
                Err(Failed::Nothing) if reused => continue,
                Err(Failed::Nothing) | Err(Failed::Reset) => return Err("reset"),
                Err(Failed::Timeout) => return Err("timeout"),
                Err(Failed::Protocol) => return Err("protocol"),
            }
        }
    }

    /// Answer a pass no server answered as `fail_to_proxy` answers it (502, or 504 after a
    /// timeout; the connection closes), and record it as the full path does.
    async fn fail<C: AsyncWrite + Unpin>(
        &self,
        mut done: Done,
        client: &mut C,
        pool: &crate::upstream::Pool,
        server: &str,
        (kind, fwd): (&'static str, Forward),
        origin_start: Instant,
    ) -> Passed {
        let node = &self.node;
        pool.record_failure();
        // (never through a shield: the lean pass path does not take those)
        let code = if kind == "timeout" { 504 } else { 502 };
        let (detail, text) = (failure_detail(code), failure_text(code, false));
        let status = CacheStatus::Forward {
            fwd,
            status: None,
            stored: false,
            detail: Some(detail),
        };
        tracing::warn!(
            error = kind,
            status = code,
            host = %done.host,
            path = done.target.split('?').next().unwrap_or("/"),
            upstream = server,
            waited_ms = origin_start.elapsed().as_millis() as u64,
            "request failed"
        );
        // as answers::plain_response, written by Pingora's error writer (the connection closes)
        let mut fields = plain_fields(text.len());
        let rendered = status.render(&node.config.node.name).into_bytes();
        fields.insert(&b"cache-status"[..], rendered);
        let head = Some(written_as(code, None, fields, false));
        let head_only = done.method == http::Method::HEAD;
        let mut sent = false;
        if let Some(mut out) = head {
            if !head_only {
                out.extend_from_slice(text.as_bytes());
            }
            sent = client.write_all(&out).await.is_ok() && client.flush().await.is_ok();
        }
        done.status = code;
        done.kind = Kind::Failed {
            label: status.label(),
            upstream: server.to_string(),
        };
        done.first_byte = done.start.elapsed().as_secs_f64();
        let body = if sent && !head_only {
            text.len() as u64
        } else {
            0
        };
        self.record(&done, body);
        Passed::Done { keep_alive: false }
    }
}

/// The cache key the predictor knows by its primary hash `primary_bin` (all it reads).
fn hashed_key(primary_bin: [u8; 16]) -> CacheKey {
    let mut key = CacheKey::new(String::new(), String::new());
    key.set_primary_bin_override(primary_bin);
    key
}

/// Send `head` and the body to `client`: `start` (read with the head), then what `upstream`
/// sends, framed as `from` and sent as `to` (chunked for a close-delimited one); payload
/// bytes counted in `sent`.
#[allow(clippy::too_many_arguments)]
async fn relay<C: AsyncWrite + Unpin>(
    client: &mut C,
    upstream: &mut TcpStream,
    head: Vec<u8>,
    data: &mut Vec<u8>,
    from: Framing,
    to: Framing,
    read_timeout: Duration,
    past_total: impl Fn() -> bool,
    sent: &mut u64,
) -> Relayed {
    let mut out = head;
    let mut chunks = Chunks::default();
    let mut left = match from {
        Framing::Length(n) => n,
        _ => 0,
    };
    loop {
        // what of `data` is this body's, and whether it ends there
        let (take, end) = match from {
            Framing::None => (0, true),
            Framing::Length(_) => {
                let take = (data.len() as u64).min(left) as usize;
                left -= take as u64;
                (take, left == 0)
            }
            Framing::Chunked => match chunks.feed(data) {
                Ok(Some(n)) => (n, true),
                Ok(None) => (data.len(), false),
                Err(()) => return Relayed::OriginFailed("protocol"),
            },
            Framing::Close => (data.len(), false),
        };
        let extra = data.len() > take;
        match (from, to) {
            (Framing::Close, Framing::Chunked) => {
                if take > 0 {
                    out.extend_from_slice(format!("{take:X}\r\n").as_bytes());
                    out.extend_from_slice(&data[..take]);
                    out.extend_from_slice(b"\r\n");
                }
            }
            _ => out.extend_from_slice(&data[..take]),
        }
        *sent = match from {
            Framing::Chunked => chunks.payload,
            _ => *sent + take as u64,
        };
        if end {
            if client.write_all(&out).await.is_err() || client.flush().await.is_err() {
                return Relayed::ClientGone;
            }
            // bytes past the end: the origin broke the framing
            return Relayed::Whole { reusable: !extra };
        }
        if !out.is_empty() {
            if client.write_all(&out).await.is_err() {
                return Relayed::ClientGone;
            }
            out.clear();
        }
        if past_total() {
            return Relayed::OriginFailed("timeout");
        }
        data.clear();
        data.reserve(READ_SIZE);
        match timeout(read_timeout, upstream.read_buf(data)).await {
            Ok(Ok(0)) if from == Framing::Close => {
                if to == Framing::Chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                if client.write_all(&out).await.is_err() || client.flush().await.is_err() {
                    return Relayed::ClientGone;
                }
                return Relayed::Whole { reusable: false };
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Relayed::OriginFailed("reset"),
            Err(_) => return Relayed::OriginFailed("timeout"),
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(parts: &[&[u8]]) -> Result<Option<usize>, ()> {
        let mut c = Chunks::default();
        let mut r = Ok(None);
        for p in parts {
            r = c.feed(p);
            if !matches!(r, Ok(None)) {
                return r;
            }
        }
        r
    }

    #[test]
    fn chunked_bodies_end_where_their_last_chunk_and_trailers_end() {
        assert_eq!(ends(&[b"5\r\nhello\r\n0\r\n\r\n"]), Ok(Some(15)));
        assert_eq!(ends(&[b"5\r\nhello\r\n0\r\n\r\nGET"]), Ok(Some(15)));
        assert_eq!(
            ends(&[b"5;x=y\r\nhe", b"llo\r\n0\r", b"\n\r\n"]),
            Ok(Some(3))
        );
        assert_eq!(ends(&[b"0\r\nExpires: 0\r\nX: y\r\n\r\n"]), Ok(Some(23)));
        assert_eq!(ends(&[b"a\r\n0123456789\r\n"]), Ok(None));
        let mut c = Chunks::default();
        assert_eq!(
            c.feed(b"A\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n"),
            Ok(Some(26))
        );
        assert_eq!(c.payload, 11);
    }

    #[test]
    fn broken_chunked_bodies_are_refused() {
        assert_eq!(ends(&[b"x\r\n"]), Err(()));
        assert_eq!(ends(&[b"5\r\nhelloX\r\n"]), Err(()));
        assert_eq!(ends(&[b"5\nhello"]), Err(()));
        assert_eq!(ends(&[b"ffffffffffffffffff\r\n"]), Err(()));
    }
}
