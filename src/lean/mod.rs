//! The lean hit path: the common fresh hit answered at the connection layer, below Pingora's
//! proxy session, with the response head serialized straight from the stored head.
//!
//! A fresh hit is most of a CDN node's traffic. Through Pingora's session it builds a request
//! header map, runs the cache state machine, copies the stored response header into a map,
//! edits it hook by hook and serializes it again. Here the request is parsed in place
//! (`httparse`), the key hashed, the tiers asked ([`TieredStorage::lookup_now`]: the memory
//! tier, then a small object on disk read with one `pread` and verified on this thread), and
//! the response written field by field from the stored bytes, in one write with the body (a
//! disk hit's body over 16 KiB on plain TCP: the head, then the body with `sendfile` from the
//! segment file just verified, `policy::connections`). A disk hit is counted and promoted into
//! memory as the full path's lookup does it.
//!
//! Only what this module can answer exactly as the full path would is answered here
//! ([`LeanHits::answer`] returns `None` for anything else, and the connection layer hands the
//! request to Pingora untouched): an HTTP/1.x GET or HEAD in origin form, with a Host and no
//! body, no `Range`, conditional, `Cache-Control`, `Pragma`, `Authorization`, `Expect` or
//! `Upgrade` field, no `Via` or `CDN-Loop` (loop detection), no edge cache key; matched by a
//! caching rule that keys on no request field and redirects nothing; no tracing; rate limits
//! of every request counted here as `request_filter` counts them (a refusal answered here as
//! the full path answers it, the allowed hit carrying their fields), unless a limit is keyed
//! on a forwarding field or the client has no address; no pending ban covering the object; an
//! object complete and fresh, in the memory tier or small enough to be read whole from disk
//! (not being filled, spooled or streamed; its part of the disk directory loaded; read
//! without error or damage: the full path counts and drops damage), stored without a
//! targeted cache-control field, that the fleet does not ask to revalidate. A response with
//! `Vary` is looked up as Pingora looks it up (primary slot, then the variant's secondary key;
//! the variance hashed as `cache::vary` hashes it), unless `Vary` names a forwarding field.
//! The differential test (tests/lean_differential.rs) sends one matrix of requests to a node
//! with this path and to one without, and compares every response.
//!
//! The same requests under a bypass rule, or when the cache predicts their key uncacheable
//! (Pingora would bypass the cache for them), are forwarded from here too (src/lean/pass.rs
//! says when and how).

use crate::cache::disk::BodyFile;
use crate::cache::entry::{from_ms, HeadView};
use crate::cache::tiered::{Body, Found, TieredStorage};
use crate::cache::vary;
use crate::config::Encoding;
use crate::metrics::{label_index, method_index, DisconnectPhase, Finished, Source};
use crate::node::{Node, Routing};
use crate::observe::Ids;
use crate::policy::client_ip::behind_trusted_proxy;
use crate::policy::ratelimit::Phase;
use crate::policy::{compression, forwarding, hardening};
use crate::rules::{key, normalize_host};
use crate::upstream::tier;
use blake2::digest::consts::U16;
use blake2::{Blake2b, Digest};
use bytes::BufMut;
use http::{HeaderName, Method, StatusCode};
use pingora_http::IntoCaseHeaderName;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

mod pass;
pub use pass::{Pass, KEPT_BUFFER};

/// Request header fields read at most (more: the full path).
const MAX_FIELDS: usize = 48;

/// Answers fresh hits for one node.
pub struct LeanHits {
    node: Arc<Node>,
    /// Request ids made here (`access_log.request_id_header`).
    ids: Ids,
    /// The `Via` this node adds.
    via: crate::policy::headers::Via,
    /// Keep-alive connections to origin servers of the lean pass path.
    idle: pass::IdleUpstreams,
    /// Requests standing for the lean passes' in freshness decisions.
    bare: pass::Bare,
}

/// A connection as the lean path needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The client's address (as connected).
    pub addr: Option<IpAddr>,
    /// The node is stopping: responses say `Connection: close`.
    pub closing: bool,
    /// The connection is TLS (`X-Forwarded-Proto: https` on a pass).
    pub tls: bool,
}

/// What [`LeanHits::answer`] made of a request.
// returned once per request and matched at once: boxing the answer would cost an allocation
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// Answered here.
    Answered(Answer),
    /// Forwarded from here ([`LeanHits::pass`]).
    Pass(Pass),
    /// The request header is not complete yet: read more.
    Incomplete,
    /// For the full path; `length` is the request's length (header and body) when its framing
    /// is plain (no body or one `Content-Length`), else unknown.
    Full {
        /// Bytes of the request, when known.
        length: Option<u64>,
    },
}

/// How a lean pass ended.
pub enum Passed {
    /// The response was relayed (or the client went away: `keep_alive` false).
    Done {
        /// The connection serves another request.
        keep_alive: bool,
    },
    /// Nothing was sent to the client: the full path takes the request.
    HandOver,
}

/// What the lean path does with a request it takes.
// one per request, matched at once
#[allow(clippy::large_enum_variant)]
enum Decided {
    Answer(Answer),
    Pass(Pass),
}

/// The body length a request header announces, when plainly framed: none (0) or one
/// `Content-Length`; `None` for chunked, conflicting or malformed framing.
fn framed_length(headers: &[httparse::Header<'_>]) -> Option<u64> {
    let mut length = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()?;
            if length.replace(n).is_some_and(|m| m != n) {
                return None;
            }
        }
    }
    Some(length.unwrap_or(0))
}

/// A request answered here: what to write, and what to record once it is written.
pub struct Answer {
    /// Bytes of the request (its header: it has no body).
    pub consumed: usize,
    /// The response header, serialized.
    pub head: Vec<u8>,
    /// What is sent after the header (`None` for HEAD).
    pub body: Option<Payload>,
    /// Where that body lies in a disk segment file, if it may be sent from there (a disk hit
    /// over 16 KiB): on a plain TCP connection it is, with `sendfile`.
    pub body_file: Option<BodyFile>,
    /// The connection stays open after the response.
    pub keep_alive: bool,
    done: Done,
}

/// The body of an answer.
pub enum Payload {
    /// A stored object's body (shared with the memory tier, or read from disk).
    Stored(Body),
    /// A body made here (a refusal's text).
    Made(Vec<u8>),
}

impl Payload {
    /// The bytes sent.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::Stored(body) => body.bytes(),
            Payload::Made(text) => text,
        }
    }
}

/// What [`LeanHits::variant`] found: the object answered, and the lookup before it (a
/// varying response's primary slot), each under its key.
struct Looked {
    key: u128,
    found: Found,
    before: Option<(u128, Found)>,
}

impl Looked {
    fn one(key: u128, found: Found) -> Looked {
        Looked {
            key,
            found,
            before: None,
        }
    }
}

/// A request refused by a rate limit, as [`LeanHits::refusal`] answers it.
struct RefusalOf<'a> {
    start: Instant,
    consumed: usize,
    method: Method,
    host: String,
    target: &'a str,
    version10: bool,
    peer: Peer,
    keep_alive: bool,
    request_id: Option<String>,
    seen: &'a Fields<'a>,
    limits: &'a [crate::policy::ratelimit::Outcome],
    refused: crate::policy::ratelimit::Outcome,
    routing: &'a Routing,
    client: IpAddr,
}

/// A request predicted uncacheable, as [`LeanHits::plan_pass`] reads it.
struct PassOf<'a> {
    start: Instant,
    consumed: usize,
    method: Method,
    version10: bool,
    target: &'a str,
    headers: &'a [httparse::Header<'a>],
    seen: &'a Fields<'a>,
    host: &'a str,
    routing: &'a Arc<Routing>,
    rule: Option<usize>,
    primary_bin: [u8; 16],
    peer: Peer,
    keep_alive: bool,
    /// Under a bypass rule (else predicted uncacheable).
    bypass: bool,
}

/// `headers` as a header map; `None` if one of them is not a valid field.
fn header_map(headers: &[httparse::Header<'_>]) -> Option<http::HeaderMap> {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for h in headers {
        map.append(
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            http::HeaderValue::from_bytes(h.value).ok()?,
        );
    }
    Some(map)
}

/// What a finished lean response records (as `proxy::access` records a full one).
struct Done {
    kind: Kind,
    start: Instant,
    first_byte: f64,
    method: Method,
    status: u16,
    host: String,
    /// The target as sent (path and query).
    target: String,
    version10: bool,
    client: Option<IpAddr>,
    request_id: Option<String>,
    user_agent: Option<String>,
    referer: Option<String>,
    body_len: u64,
}

/// What a lean response was.
enum Kind {
    /// A hit, from the disk tier or from memory.
    Hit { disk: bool },
    /// A rate limit's refusal.
    Refused,
    /// Forwarded: its `Cache-Status` label, the server and how long its head took (ms).
    Pass {
        label: &'static str,
        upstream: String,
        origin_ms: f64,
    },
    /// Forwarded, and the server failed before or during its response (`label`: of the
    /// `Cache-Status` the full path's `fail_to_proxy` leaves).
    Failed {
        label: &'static str,
        upstream: String,
    },
}

/// The request fields the lean path reads.
#[derive(Default)]
struct Fields<'a> {
    host: Option<&'a [u8]>,
    connection: Option<&'a [u8]>,
    request_id: Option<&'a [u8]>,
    user_agent: Option<&'a [u8]>,
    referer: Option<&'a [u8]>,
}

/// Fields of a client's request Pingora never sends upstream (its standard hop-by-hop list,
/// beside `hardening::HOP_BY_HOP`), and the cache key hint only this node sets.
const UPSTREAM_DROPPED: &[&str] = &[
    "proxy-authorization",
    "transfer-encoding",
    "http2-settings",
    tier::CACHE_KEY,
];

/// Request fields that take a request to the full path.
const FULL_PATH_FIELDS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "range",
    "if-range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "cache-control",
    "pragma",
    "authorization",
    "expect",
    "upgrade",
    "via",
    tier::CDN_LOOP,
    tier::CACHE_KEY,
];

/// A visible ASCII target byte an origin-form target may hold as http::Uri keeps it verbatim.
fn target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// A response field being assembled: stored (borrowed) or made here.
type Field<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// The response fields, edited as the full path's hooks edit a header map.
struct Response<'a>(Vec<Field<'a>>);

impl<'a> Response<'a> {
    fn remove(&mut self, name: &[u8]) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// Replace every field `name` with one (as `insert_header`).
    fn insert(&mut self, name: impl Into<Cow<'a, [u8]>>, value: impl Into<Cow<'a, [u8]>>) {
        let name = name.into();
        self.remove(&name);
        self.0.push((name, value.into()));
    }

    fn first(&self, name: &[u8]) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &**v)
    }

    fn all<'s>(&'s self, name: &'s [u8]) -> impl Iterator<Item = &'s [u8]> + 's {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &**v)
    }
}

/// The fields of the node's own plain-text answer of `len` bytes, as
/// `proxy::answers::plain_response` sets them.
fn plain_fields(len: usize) -> Response<'static> {
    let mut resp = Response(Vec::with_capacity(8));
    let text_type = &b"text/plain; charset=utf-8"[..];
    resp.insert(wire_name(&http::header::CONTENT_TYPE), text_type);
    resp.insert(
        wire_name(&http::header::CONTENT_LENGTH),
        len.to_string().into_bytes(),
    );
    resp.insert(wire_name(&http::header::CACHE_CONTROL), &b"no-store"[..]);
    resp
}

/// A `HeaderName` as Pingora writes one it inserts (well-known names title-cased).
fn wire_name(name: &HeaderName) -> Cow<'static, [u8]> {
    Cow::Owned(name.clone().into_case_header_name().as_slice().to_vec())
}

/// Whether `v` is a header value `to_str` accepts (visible ASCII, space, tab).
fn ascii_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b' '..0x7f).contains(&b))
}

impl LeanHits {
    /// The lean path of `node`.
    pub fn new(node: Arc<Node>) -> LeanHits {
        LeanHits {
            via: crate::policy::headers::Via::new(&node.config.node.name),
            idle: pass::IdleUpstreams::default(),
            bare: pass::Bare::new(),
            node,
            ids: Ids::new(),
        }
    }

    /// Whether the node runs the lean path (`node.lean_hits` and a cache tier).
    pub fn enabled(&self) -> bool {
        let storage = &self.node.storage;
        let tiers = storage.memory().is_some() || storage.disk().is_some();
        self.node.config.node.lean_hits && tiers
    }

    /// What to do with the bytes at the start of `buf` (a request begins there): answer it
    /// here, read more, or hand it to the full path.
    pub fn answer(&self, buf: &[u8], peer: Peer) -> Outcome {
        match self.try_answer(buf, peer) {
            Some(Decided::Answer(answer)) => return Outcome::Answered(answer),
            Some(Decided::Pass(pass)) => return Outcome::Pass(pass),
            None => {}
        }
        let mut storage = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut storage);
        match req.parse(buf) {
            Ok(httparse::Status::Partial) => Outcome::Incomplete,
            Ok(httparse::Status::Complete(n)) => {
                // a connection that may turn into a tunnel (Upgrade, CONNECT) is Pingora's
                // with every byte read: what follows the request is the tunnel's
                let tunnel = req.method == Some("CONNECT")
                    || req
                        .headers
                        .iter()
                        .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
                Outcome::Full {
                    length: framed_length(req.headers)
                        .filter(|_| !tunnel)
                        .map(|body| n as u64 + body),
                }
            }
            Err(_) => Outcome::Full { length: None },
        }
    }

    /// The answer to a request at the start of `buf`, if this path serves it.
    fn try_answer(&self, buf: &[u8], peer: Peer) -> Option<Decided> {
        let start = Instant::now();
        let mut storage = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut storage);
        let consumed = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => return None,
        };
        let method = match req.method? {
            "GET" => Method::GET,
            "HEAD" => Method::HEAD,
            _ => return None,
        };
        let version10 = match req.version? {
            1 => false,
            0 => true,
            _ => return None,
        };
        let target = req.path?;
        if !target.starts_with('/') || !target.bytes().all(target_byte) {
            return None;
        }
        let limits = &self.node.config.limits;
        let headers = &*req.headers;
        let fields_len: u64 = headers
            .iter()
            .map(|h| (h.name.len() + h.value.len() + 4) as u64)
            .sum();
        if target.len() as u64 > limits.max_uri_bytes
            || headers.len() > limits.max_headers
            || target.len() as u64 + fields_len + 16 > limits.max_header_bytes
        {
            return None;
        }
        let request_id_name = self.node.config.access_log.request_id_header.as_ref();
        let mut seen = Fields::default();
        for h in headers {
            let name = h.name;
            if FULL_PATH_FIELDS
                .iter()
                .any(|f| f.eq_ignore_ascii_case(name))
            {
                return None;
            }
            let slot = if name.eq_ignore_ascii_case("host") {
                &mut seen.host
            } else if name.eq_ignore_ascii_case("connection") {
                &mut seen.connection
            } else if request_id_name.is_some_and(|n| n.as_str().eq_ignore_ascii_case(name)) {
                &mut seen.request_id
            } else if name.eq_ignore_ascii_case("user-agent") {
                &mut seen.user_agent
            } else if name.eq_ignore_ascii_case("referer") {
                &mut seen.referer
            } else {
                continue;
            };
            if slot.replace(h.value).is_some() {
                // a field sent twice: the full path decides which one counts
                return None;
            }
        }
        // RFC 9112 3.2: Host is required in HTTP/1.1; an HTTP/1.0 request without is rare
        let host = std::str::from_utf8(seen.host?).ok()?;
        if host.is_empty() || !ascii_value(host.as_bytes()) {
            return None;
        }
        let asked_close = match seen.connection {
            None => version10,
            Some(v) if v.eq_ignore_ascii_case(b"close") => true,
            Some(v) if v.eq_ignore_ascii_case(b"keep-alive") => false,
            Some(_) => return None,
        };
        let node = &self.node;
        if node.tracing.is_some() {
            return None;
        }
        let routing = node.routing.load();
        let limited = !routing.limits.is_empty();
        let keyed = routing.limits.keyed_field(Phase::Every);
        if limited
            && (peer.addr.is_none()
                || keyed.is_some_and(|f| forwarding::is_forwarding_field(f.as_str())))
        {
            // no address to count (the full path counts none either), or a key the full path
            // settles before counting
            return None;
        }
        if peer
            .addr
            .is_some_and(|ip| behind_trusted_proxy(&routing.client_ip, ip))
        {
            // the client's address comes from forwarding fields: the full path reads them
            return None;
        }
        let host = normalize_host(host);
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let rule_index = routing.rules.matching(&method, &host, path);
        let rule = routing.rules.get(rule_index);
        let rc = &rule.config;
        if rc.redirect_https || !rc.key.headers.is_empty() {
            return None;
        }
        let mut primary = String::new();
        key::build_primary(
            &rc.key,
            &host,
            path,
            query,
            &http::HeaderMap::new(),
            &mut primary,
        );
        let primary_bin = pingora_cache::key::hash_key(&primary);
        let bypass = !rule.caches();
        if bypass || self.predicted_uncacheable(primary_bin) {
            // a bypass rule, or Pingora bypasses the cache for such a key: the lean pass path
            // forwards it
            return self
                .plan_pass(PassOf {
                    start,
                    consumed,
                    method,
                    version10,
                    target,
                    headers,
                    seen: &seen,
                    host: &host,
                    routing: &routing,
                    rule: rule_index,
                    primary_bin,
                    peer,
                    keep_alive: !asked_close && !peer.closing,
                    bypass,
                })
                .map(Decided::Pass);
        }
        let looked = self.variant(node.storage, primary_bin, headers)?;
        let view = HeadView::parse(looked.found.head()).ok()?;
        let now = SystemTime::now();
        let fresh_until = from_ms(view.fresh_until_ms);
        if fresh_until < now
            || matches!(view.status, 100..=199 | 204 | 304)
            || node
                .cluster
                .as_ref()
                .is_some_and(|c| c.must_revalidate(from_ms(view.confirmed_ms)))
        {
            return None;
        }
        if !node.bans.is_empty() && self.banned(&view, &primary) {
            // the full path counts the purged lookup and refetches or revalidates
            return None;
        }
        let mut resp = Response(Vec::with_capacity(24));
        let mut chunked = false;
        for field in view.fields() {
            let (name, value) = field.ok()?;
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // stored from a chunked response: sent with its length (below)
                chunked = true;
                continue;
            }
            if (name.eq_ignore_ascii_case(b"vary") && !view.has_variance)
                || rc
                    .ttl
                    .targeted
                    .iter()
                    .any(|t| name.eq_ignore_ascii_case(t.as_str().as_bytes()))
            {
                // variance not recorded, targeted fields: the full path's decisions
                return None;
            }
            resp.0.push((Cow::Borrowed(name), value.bytes()));
        }
        if chunked && resp.first(b"content-length").is_some() {
            return None;
        }
        // request_filter: the request id, then the limits of every request (last: nothing
        // after this hands the request to the full path, which would count it again)
        let request_id =
            request_id_name.map(|_| crate::observe::request_id(seen.request_id, &self.ids));
        let mut limits = Vec::new();
        if let Some(client) = peer.addr.filter(|_| limited) {
            let fields = match keyed {
                Some(_) => header_map(headers)?,
                None => http::HeaderMap::new(),
            };
            let client = crate::policy::client_ip::client_ip(&routing.client_ip, client, &fields);
            let refused = routing.limits.check(
                &node.buckets,
                Phase::Every,
                (&method, &host, path),
                client,
                &fields,
                &mut limits,
            );
            if let Some(refused) = refused {
                return Some(Decided::Answer(self.refusal(RefusalOf {
                    start,
                    consumed,
                    method,
                    host: host.into_owned(),
                    target,
                    version10,
                    peer,
                    keep_alive: !asked_close && !peer.closing,
                    request_id,
                    seen: &seen,
                    limits: &limits,
                    refused,
                    routing: &routing,
                    client,
                })));
            }
        }
        let body_len = looked.found.body().len();
        let keep_alive = !asked_close && !peer.closing;
        let status = view.status;

        // Pingora's cache_hit_header: Age
        let age = now
            .duration_since(from_ms(view.epoch_ms))
            .unwrap_or_default()
            .as_secs();
        resp.insert(&b"Age"[..], age.to_string().into_bytes());
        // range_header_filter: a stored response without a length gets one (and loses its
        // Transfer-Encoding); one with both is the full path's to frame
        if resp.first(b"content-length").is_none() {
            resp.insert(&b"Content-Length"[..], body_len.to_string().into_bytes());
        }
        // Pingora's range filter: a 200 with a length may be asked for in ranges (as nginx)
        let ranged = resp
            .first(b"content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .is_some_and(|v| v.parse::<usize>().is_ok());
        if status == 200 && ranged {
            resp.insert(&b"Accept-Ranges"[..], &b"bytes"[..]);
        }
        // response_filter: Cache-Status, request id, tag and targeted fields, Via, header rules
        let ttl = match fresh_until.duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        let ours = format!("{}; hit; ttl={ttl}", node.config.node.name);
        let limit_fields = (!limits.is_empty()).then(|| {
            let policy = routing.limits.policy_field(&limits);
            (policy, routing.limits.state_field(&limits))
        });
        let rule_rules = &rc.headers.response;
        let id = request_id.as_deref();
        self.response_filter(&mut resp, ours, id, limit_fields, &routing, rule_rules);
        let head = written(status, resp, keep_alive);
        let disk = matches!(looked.found, Found::Disk(..));
        let head_only = method == Method::HEAD;
        let body_file = if head_only {
            None
        } else {
            looked.found.body_file()
        };
        // the full path's storage lookups, counted (and a disk hit promoted) as it does
        let storage = &node.storage;
        if let Some((key, found)) = looked.before {
            storage.settle(key, found);
        }
        let body = storage.settle(looked.key, looked.found);
        let first_byte = start.elapsed().as_secs_f64();
        Some(Decided::Answer(Answer {
            consumed,
            head,
            body: (!head_only).then_some(Payload::Stored(body)),
            body_file,
            keep_alive,
            done: Done {
                kind: Kind::Hit { disk },
                start,
                first_byte,
                method,
                status,
                host: host.into_owned(),
                target: target.to_string(),
                version10,
                client: peer.addr,
                request_id,
                user_agent: ascii_text(seen.user_agent),
                referer: ascii_text(seen.referer),
                body_len: if head_only { 0 } else { body_len as u64 },
            },
        }))
    }

    /// The forwarding of a request predicted uncacheable or under a bypass rule, as the full
    /// path's hooks build
    /// it (`request_filter`, `upstream_peer`, `upstream_request_filter`); `None` where the
    /// lean pass path does not go (rate limits, a shield, an origin over TLS, an encoding
    /// other than identity negotiated, no server available: the full path's cases).
    fn plan_pass(&self, p: PassOf<'_>) -> Option<Pass> {
        let node = &self.node;
        let routing = p.routing;
        let rc = &routing.rules.get(p.rule).config;
        if p.version10
            || !routing.limits.is_empty()
            || routing.shield.origin.is_some_and(|_| rc.shield)
        {
            return None;
        }
        let pool = routing.origins.get(rc.origin)?;
        if pool.config.tls.is_some() {
            return None;
        }
        let compression = &node.config.compression;
        let identity = compression.enabled;
        if identity && self.negotiated(p.headers) != Some(Encoding::Identity) {
            return None;
        }
        let member = pool.select(&p.primary_bin, &[]).ok()?;
        let id_name = node.config.access_log.request_id_header.as_ref();
        let request_id = id_name.map(|_| crate::observe::request_id(p.seen.request_id, &self.ids));
        let wire = self.upstream_request(&p, pool, id_name.zip(request_id.as_deref()), identity);
        Some(Pass {
            consumed: p.consumed,
            wire: wire?,
            routing: Arc::clone(routing),
            rule: p.rule,
            origin: rc.origin,
            member,
            primary_bin: p.primary_bin,
            identity,
            keep_alive: p.keep_alive,
            bypass: p.bypass,
            done: Done {
                kind: Kind::Hit { disk: false },
                start: p.start,
                first_byte: 0.0,
                status: 0,
                host: p.host.to_string(),
                target: p.target.to_string(),
                version10: p.version10,
                client: p.peer.addr,
                request_id,
                user_agent: ascii_text(p.seen.user_agent),
                referer: ascii_text(p.seen.referer),
                body_len: 0,
                method: p.method,
            },
        })
    }

    /// The request a lean pass sends upstream, as the full path builds it (its hooks edit a
    /// copy of the request as received, which Pingora serializes): forwarding fields settled
    /// (`forwarding::settle`) and the peer appended to `X-Forwarded-For`, hop-by-hop fields
    /// dropped (ours and Pingora's standard list), the origin's `Host`, the request id,
    /// `CDN-Loop`, `Via`, header rules, `Accept-Encoding: identity` when compression
    /// negotiated it. The client's fields keep their order and case; fields set here follow
    /// them, named as Pingora names the fields it inserts. Written straight from the parsed
    /// request, without Pingora's two header maps.
    fn upstream_request(
        &self,
        p: &PassOf<'_>,
        pool: &crate::upstream::Pool,
        request_id: Option<(&HeaderName, &str)>,
        identity: bool,
    ) -> Option<Vec<u8>> {
        let node = &self.node;
        let routing = p.routing;
        let rc = &routing.rules.get(p.rule).config;
        let believed = forwarding::believed(
            &routing.client_ip,
            &routing.shield.trusted_edges,
            p.peer.addr,
        );
        let is = |h: &httparse::Header<'_>, name: &str| h.name.eq_ignore_ascii_case(name);
        // settle: a client not believed loses every forwarding field, once it sent one
        let drop_forwarding = !believed
            && p.headers
                .iter()
                .any(|h| forwarding::is_forwarding_field(h.name));
        let host_override = pool.config.host.as_deref();
        let rules = [&routing.headers.request, &rc.headers.request];
        let replaced = |h: &httparse::Header<'_>| {
            hardening::HOP_BY_HOP.iter().any(|n| is(h, n.as_str()))
                || UPSTREAM_DROPPED.iter().any(|n| is(h, n))
                || is(h, "x-forwarded-for")
                || (drop_forwarding && forwarding::is_forwarding_field(h.name))
                || (host_override.is_some() && is(h, "host"))
                || request_id.is_some_and(|(name, _)| is(h, name.as_str()))
                || (identity && is(h, "accept-encoding"))
                || rules.iter().any(|r| {
                    r.remove.iter().any(|n| is(h, n.as_str()))
                        || r.set.iter().any(|(n, _)| is(h, n.as_str()))
                })
        };
        let mut out = Vec::with_capacity(512);
        out.put_slice(p.method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(p.target.as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        let field = |out: &mut Vec<u8>, name: &[u8], value: &[u8]| {
            out.put_slice(name);
            out.put_slice(b": ");
            out.put_slice(value);
            out.put_slice(b"\r\n");
        };
        let (mut has_proto, mut has_host) = (false, false);
        for h in p.headers {
            if replaced(h) {
                continue;
            }
            has_proto |= is(h, "x-forwarded-proto");
            has_host |= is(h, "x-forwarded-host");
            field(&mut out, h.name.as_bytes(), h.value);
        }
        // fields set by the node's hooks, before the header rules run (which may remove or
        // replace them)
        let mut made: SmallVec<[Field<'_>; 8]> = SmallVec::new();
        if !has_proto {
            let scheme: &[u8] = if p.peer.tls { b"https" } else { b"http" };
            let name = &forwarding::X_FORWARDED_PROTO;
            made.push((wire_name(name), Cow::Borrowed(scheme)));
        }
        if !has_host && !p.host.is_empty() {
            let name = &forwarding::X_FORWARDED_HOST;
            made.push((wire_name(name), Cow::Borrowed(p.host.as_bytes())));
        }
        if let Some(host) = host_override {
            made.push((
                wire_name(&http::header::HOST),
                Cow::Borrowed(host.as_bytes()),
            ));
        }
        if let Some((name, id)) = request_id {
            made.push((wire_name(name), Cow::Borrowed(id.as_bytes())));
        }
        let cdn_loop = tier::cdn_loop_value(&http::HeaderMap::new(), &node.config.node.name);
        made.push((
            Cow::Borrowed(tier::CDN_LOOP.as_bytes()),
            Cow::Owned(cdn_loop.into_bytes()),
        ));
        // the client's X-Forwarded-For (when kept) with the peer appended
        let received = p
            .headers
            .iter()
            .filter(|h| !drop_forwarding && is(h, "x-forwarded-for"))
            .map(|h| h.value);
        let peer = p.peer.addr.map(crate::policy::client_ip::canonical);
        let forwarded_for = forwarding::chain(received, peer);
        if !forwarded_for.is_empty() {
            let name = &forwarding::X_FORWARDED_FOR;
            made.push((wire_name(name), Cow::Owned(forwarded_for)));
        }
        if node.config.node.via {
            let version = if p.version10 {
                http::Version::HTTP_10
            } else {
                http::Version::HTTP_11
            };
            let empty = http::HeaderMap::new();
            let via = self.via.value(version, empty.get_all(http::header::VIA));
            let via = via.as_bytes().to_vec();
            made.push((wire_name(&http::header::VIA), Cow::Owned(via)));
        }
        // header rules, global then the rule's: removals, then fields set (replacing)
        let named = |n: &HeaderName, name: &[u8]| n.as_str().as_bytes().eq_ignore_ascii_case(name);
        let touched = |name: &[u8]| {
            rules.iter().any(|r| {
                r.remove.iter().any(|n| named(n, name)) || r.set.iter().any(|(n, _)| named(n, name))
            })
        };
        for (name, value) in &made {
            if !touched(name) {
                field(&mut out, name, value);
            }
        }
        let mut set: SmallVec<[(&HeaderName, &http::HeaderValue); 4]> = SmallVec::new();
        for r in rules {
            set.retain(|(n, _)| !r.remove.contains(n));
            for (name, value) in &r.set {
                set.retain(|(n, _)| *n != name);
                set.push((name, value));
            }
        }
        for (name, value) in set {
            field(&mut out, &wire_name(name), value.as_bytes());
        }
        if identity {
            let name = wire_name(&http::header::ACCEPT_ENCODING);
            field(&mut out, &name, Encoding::Identity.token().as_bytes());
        }
        out.put_slice(b"\r\n");
        Some(out)
    }

    /// `response_filter`'s edits of a response on its way to the client, as the full path's
    /// hook makes them: `Cache-Status` (`ours` after an upstream cache's entry), the request
    /// id, the rate limits' fields, purge tags and targeted fields stripped, `Via`, header
    /// rules (global, then the rule's `rule_rules`).
    fn response_filter(
        &self,
        resp: &mut Response<'_>,
        ours: String,
        request_id: Option<&str>,
        limit_fields: Option<(String, String)>,
        routing: &Routing,
        rule_rules: &crate::config::HeaderRules,
    ) {
        let node = &self.node;
        let cache_status = match resp
            .first(b"cache-status")
            .filter(|v| ascii_value(v))
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
        {
            Some(upstream) if !upstream.is_empty() => format!("{upstream}, {ours}"),
            _ => ours,
        };
        resp.insert(&b"cache-status"[..], cache_status.into_bytes());
        if let (Some(name), Some(id)) = (&node.config.access_log.request_id_header, request_id) {
            resp.insert(wire_name(name), id.as_bytes().to_vec());
        }
        if let Some((policy, state)) = limit_fields {
            resp.insert(&b"ratelimit-policy"[..], policy.into_bytes());
            resp.insert(&b"ratelimit"[..], state.into_bytes());
        }
        let purge = &node.config.purge;
        if purge.strip_tag_headers {
            for name in &purge.tag_headers {
                resp.remove(name.as_str().as_bytes());
            }
        }
        for name in &node.config.cache.strip_targeted {
            resp.remove(name.as_str().as_bytes());
        }
        if node.config.node.via {
            let mut via = Vec::new();
            for v in resp.all(b"via").filter(|v| ascii_value(v)) {
                via.extend_from_slice(v);
                via.extend_from_slice(b", ");
            }
            via.extend_from_slice(b"1.1 ");
            via.extend_from_slice(node.config.node.name.as_bytes());
            // as Pingora names it (wire_name(&VIA), without an allocation per response)
            resp.insert(&b"via"[..], via);
        }
        for rules in [&routing.headers.response, rule_rules] {
            for name in &rules.remove {
                resp.remove(name.as_str().as_bytes());
            }
            for (name, value) in &rules.set {
                resp.insert(wire_name(name), value.as_bytes().to_vec());
            }
        }
    }

    /// The stored object a request with `headers` gets for the primary key hashed
    /// `primary_bin`, as Pingora's lookup finds it: the primary slot, or when the stored
    /// response varies and the request's variance is not the primary slot's, the variant
    /// stored under the secondary key, if it was stored after the primary slot's (older
    /// variants belong to a former `Vary` family), with the primary slot's object then (each
    /// lookup is counted as Pingora's would be). `None`: not found at once
    /// ([`TieredStorage::lookup_now`]), or not for this path.
    fn variant(
        &self,
        storage: &TieredStorage,
        primary_bin: [u8; 16],
        headers: &[httparse::Header<'_>],
    ) -> Option<Looked> {
        let primary = u128::from_le_bytes(primary_bin);
        let first = storage.lookup_now(primary)?;
        let view = HeadView::parse(first.head()).ok()?;
        let Some(variance) = view.variance else {
            return Some(Looked::one(primary, first));
        };
        let mut vary = SmallVec::<[Cow<'_, [u8]>; 2]>::new();
        for field in view.fields() {
            let (name, value) = field.ok()?;
            if name.eq_ignore_ascii_case(b"vary") {
                let value = value.bytes();
                let forwarding = value
                    .split(|&b| b == b',')
                    .filter_map(|n| std::str::from_utf8(n).ok())
                    .any(|n| forwarding::is_forwarding_field(n.trim()));
                if forwarding {
                    // the full path settles these fields before Vary reads them
                    return None;
                }
                vary.push(value);
            }
        }
        let lines = |name: &str| {
            let name = name.to_string();
            headers
                .iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(&name))
                .map(|h| h.value)
        };
        let encoding = self.negotiated(headers);
        let wanted = vary::variance_of(
            vary.iter().map(|v| &**v),
            lines,
            encoding.map(Encoding::token),
        )?;
        drop(vary);
        let created_ms = view.created_ms;
        if wanted == variance {
            return Some(Looked::one(primary, first));
        }
        let mut hasher = Blake2b::<U16>::new();
        hasher.update(primary_bin);
        hasher.update(wanted);
        let combined: [u8; 16] = hasher.finalize().into();
        let key = u128::from_le_bytes(combined);
        let other = storage.lookup_now(key)?;
        let found = HeadView::parse(other.head()).ok()?;
        if found.variance != Some(wanted) || found.created_ms < created_ms {
            return None;
        }
        Some(Looked {
            key,
            found: other,
            before: Some((primary, first)),
        })
    }

    /// The encoding negotiated for a request with `headers` when compression is on (as the
    /// full path's `OutpostProxy::negotiated`).
    fn negotiated(&self, headers: &[httparse::Header<'_>]) -> Option<Encoding> {
        let compression = &self.node.config.compression;
        compression.enabled.then(|| {
            let accept = headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("accept-encoding"))
                .map(|h| h.value);
            compression::negotiate_bytes(accept, &compression.encodings)
        })
    }

    /// Whether a ban newer than the object stored under `primary` covers it (by key or by a
    /// tag in its fields), as `cache_hit_filter` asks: only while bans are pending (a purge by
    /// prefix or tag, until the background pass retires it), so the header map built here
    /// costs nothing otherwise. An unreadable head counts as covered (the full path decides).
    fn banned(&self, view: &HeadView<'_>, primary: &str) -> bool {
        let mut fields = http::HeaderMap::new();
        for field in view.fields() {
            let Ok((name, value)) = field else {
                return true;
            };
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name),
                http::HeaderValue::from_bytes(&value.bytes()),
            ) else {
                return true;
            };
            fields.append(name, value);
        }
        let confirmed = from_ms(view.confirmed_ms);
        self.node.bans.check(primary, confirmed, &fields).is_some()
    }

    /// The 429 of a request a rate limit refuses, as `OutpostProxy::rate_limit` writes it:
    /// counted, with `Retry-After` and the limits' fields, without the fields
    /// `response_filter` adds (the full path sends it past that hook).
    fn refusal(&self, r: RefusalOf<'_>) -> Answer {
        let limits = &r.routing.limits;
        let (text, retry) =
            limits.refuse(&self.node.metrics.policy.rate_limited, &r.refused, r.client);
        let mut resp = plain_fields(text.len());
        resp.insert(
            wire_name(&http::header::RETRY_AFTER),
            retry.to_string().into_bytes(),
        );
        resp.insert(
            &b"ratelimit-policy"[..],
            limits.policy_field(r.limits).into_bytes(),
        );
        resp.insert(&b"ratelimit"[..], limits.state_field(r.limits).into_bytes());
        let status = StatusCode::TOO_MANY_REQUESTS.as_u16();
        let head = written(status, resp, r.keep_alive);
        let head_only = r.method == Method::HEAD;
        let body_len = if head_only { 0 } else { text.len() as u64 };
        Answer {
            body_file: None,
            consumed: r.consumed,
            head,
            body: (!head_only).then(|| Payload::Made(text.into_bytes())),
            keep_alive: r.keep_alive,
            done: Done {
                kind: Kind::Refused,
                start: r.start,
                first_byte: 0.0,
                method: r.method,
                status,
                host: r.host,
                target: r.target.to_string(),
                version10: r.version10,
                client: r.peer.addr,
                request_id: r.request_id,
                user_agent: ascii_text(r.seen.user_agent),
                referer: ascii_text(r.seen.referer),
                body_len,
            },
        }
    }

    /// Record an answer once written (`sent`: the write completed), as the full path records
    /// a hit: metrics, access log line, top keys; a failed write counts a client disconnect.
    pub fn finished(&self, answer: &Answer, sent: bool) {
        let d = &answer.done;
        if !sent {
            self.node
                .metrics
                .disconnects
                .count(DisconnectPhase::ResponseBody);
            tracing::debug!(host = %d.host, "client closed the connection");
        }
        self.record(d, if sent { d.body_len } else { 0 });
    }

    /// Record a finished lean response (`body_bytes` of its body sent), as the full path
    /// records one: metrics, access log line, top keys.
    fn record(&self, d: &Done, body_bytes: u64) {
        let node = &self.node;
        let seconds = d.start.elapsed().as_secs_f64();
        // a refusal is written by the node itself, with no first byte of its own
        let (label, source, first_byte, upstream, origin_ms) = match &d.kind {
            Kind::Refused => ("refused", Source::Node, seconds, None, None),
            Kind::Hit { disk } => {
                node.metrics.lean_hits.inc();
                if matches!(d.status, 404 | 410 | 500..=599) {
                    node.metrics.stale.negative_hits.inc();
                }
                let source = if *disk { Source::Disk } else { Source::Memory };
                ("hit", source, d.first_byte, None, None)
            }
            Kind::Pass {
                label,
                upstream,
                origin_ms,
            } => {
                node.metrics.lean_passes.inc();
                let upstream = Some(upstream.clone());
                (
                    *label,
                    Source::Upstream,
                    d.first_byte,
                    upstream,
                    Some(*origin_ms),
                )
            }
            Kind::Failed { label, upstream } => {
                node.metrics.lean_passes.inc();
                let upstream = Some(upstream.clone());
                (*label, Source::Node, d.first_byte, upstream, None)
            }
        };
        node.metrics.record_request(&Finished {
            label: label_index(label),
            method: method_index(&d.method),
            status: d.status,
            seconds,
            first_byte_seconds: first_byte,
            body_bytes,
            source,
        });
        let log = &node.access_log;
        if log.wanted(d.status) {
            let routing: arc_swap::Guard<Arc<Routing>> = node.routing.load();
            let client = d.client.map_or_else(
                || "-".to_string(),
                |ip| {
                    crate::policy::client_ip::client_ip(
                        &routing.client_ip,
                        ip,
                        &http::HeaderMap::new(),
                    )
                    .to_string()
                },
            );
            log.write(&crate::observe::access_log::Record {
                ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                client,
                method: d.method.as_str(),
                host: &d.host,
                uri: &d.target,
                proto: if d.version10 { "HTTP/1.0" } else { "HTTP/1.1" },
                status: d.status,
                bytes: body_bytes,
                cache: label,
                source: source.as_str(),
                upstream,
                origin_ms,
                ms: crate::observe::millis(seconds),
                id: d.request_id.as_deref(),
                ua: d.user_agent.as_deref(),
                referer: d.referer.as_deref(),
            });
        }
        let path = d.target.split('?').next().unwrap_or("/");
        node.top_keys.record(&d.host, path, body_bytes);
    }
}

/// A request field's value for the access log, if it is ASCII text (as `to_str` reads it).
fn ascii_text(v: Option<&[u8]>) -> Option<String> {
    v.filter(|v| ascii_value(v))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// `resp` with what Pingora's HTTP/1 writer adds (Date where there is none, Connection),
/// serialized.
fn written(status: u16, resp: Response<'_>, keep_alive: bool) -> Vec<u8> {
    written_as(status, None, resp, keep_alive)
}

/// [`written`], with the origin's reason phrase (`None`: the status code's).
fn written_as(
    status: u16,
    reason: Option<&str>,
    mut resp: Response<'_>,
    keep_alive: bool,
) -> Vec<u8> {
    if resp.first(b"date").is_none() {
        let date = pingora_core::protocols::http::date::get_cached_date();
        resp.insert(&b"Date"[..], date.as_bytes().to_vec());
    }
    let connection: &[u8] = if keep_alive { b"keep-alive" } else { b"close" };
    resp.insert(&b"Connection"[..], connection);
    serialize(status, reason, &resp)
}

/// The status line and fields of a response, as Pingora's HTTP/1 writer serializes them.
fn serialize(status: u16, reason: Option<&str>, resp: &Response<'_>) -> Vec<u8> {
    let len: usize = resp.0.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(len + 40);
    out.put_slice(b"HTTP/1.1 ");
    let code = StatusCode::from_u16(status).ok();
    match code {
        Some(code) => out.put_slice(code.as_str().as_bytes()),
        None => out.put_slice(status.to_string().as_bytes()),
    }
    out.put_u8(b' ');
    if let Some(reason) = reason.or_else(|| code.and_then(|c| c.canonical_reason())) {
        out.put_slice(reason.as_bytes());
    }
    out.put_slice(b"\r\n");
    for (name, value) in &resp.0 {
        out.put_slice(name);
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out
}
