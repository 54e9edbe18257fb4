//! A scriptable HTTP/1.1 origin server for black-box tests, in clear text or over TLS
//! ([`TestOrigin::start_tls`], with HTTP/2 when ALPN picks it).
//!
//! Raw tokio (no HTTP library) so that tests have full control over the wire: delays before the
//! response head, truncated bodies followed by a connection reset, exact headers. HTTP/2 goes
//! through hyper and serves the same scripted replies, without truncation and stalls.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::background::Background;

/// One request as received by the origin.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Request target as sent: path + query.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    /// The protocol version: "HTTP/1.1", "HTTP/1.0" or "HTTP/2.0".
    pub version: String,
}

impl Recorded {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    /// All values of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The path part of the URI (without query).
    pub fn path(&self) -> &str {
        route_path(&self.uri)
    }

    /// The query part of the URI (without `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.uri.split_once('?').map(|(_, q)| q)
    }
}

/// A scripted response.
#[derive(Clone, Debug)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    pub(super) delay: Option<Duration>,
    body_counter: bool,
    truncate_after: Option<usize>,
    conditional: bool,
    stall: Option<(usize, Duration)>,
    /// A body of this many bytes of [`generated_body`], produced while it is sent.
    pub(super) generated: Option<usize>,
    chunked: bool,
    hang_up: bool,
    close_delimited: bool,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: None,
            body_counter: false,
            truncate_after: None,
            conditional: false,
            stall: None,
            generated: None,
            chunked: false,
            hang_up: false,
            close_delimited: false,
        }
    }

    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply::new(200).body(body)
    }

    /// Add a response header (repeatable; the same name may be added several times).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }

    /// Sleep this long before sending the response head.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }

    /// Append `#<hit number>` to the body so that tests can tell fetches apart.
    pub fn body_counter(mut self) -> Self {
        self.body_counter = true;
        self
    }

    /// Announce the full Content-Length, send only `n` body bytes, then reset the connection.
    pub fn truncate_after(mut self, n: usize) -> Self {
        self.truncate_after = Some(n);
        self
    }

    /// Send the head and the first `n` body bytes, pause for `d`, then send the rest
    /// (a slow body; combine with `truncate_after` to fail after the pause).
    pub fn stall_after(mut self, n: usize, d: Duration) -> Self {
        self.stall = Some((n, d));
        self
    }

    /// A body of `len` bytes of [`generated_body`], produced as it is sent (so large bodies
    /// cost the test process no memory); replaces `body`.
    pub fn generated(mut self, len: usize) -> Self {
        self.generated = Some(len);
        self.body = Vec::new();
        self
    }

    /// Send the body with `Transfer-Encoding: chunked` (no Content-Length), in 64 KiB chunks.
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    /// Send the body without a length and close the connection after it (RFC 9112 6.3: the
    /// body ends where the connection does).
    pub fn close_delimited(mut self) -> Self {
        self.close_delimited = true;
        self
    }

    /// Close the connection without sending anything: the origin hangs up on the request.
    pub fn hang_up(mut self) -> Self {
        self.hang_up = true;
        self
    }

    /// Answer 304 when the request's validators match this reply's ETag / Last-Modified.
    pub fn conditional(mut self) -> Self {
        self.conditional = true;
        self
    }

    fn get_header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_header(&self, name: &str) -> bool {
        self.get_header(name).is_some()
    }
}

type Handler = Arc<dyn Fn(&Recorded, usize) -> Reply + Send + Sync + 'static>;

#[derive(Default)]
pub(super) struct State {
    routes: Mutex<HashMap<String, Handler>>,
    hits: Mutex<HashMap<String, usize>>,
    requests: Mutex<HashMap<String, Vec<Recorded>>>,
    total: AtomicUsize,
}

/// A real HTTP/1.1 server on 127.0.0.1:0, on its own thread and tokio runtime; stopped on Drop.
pub struct TestOrigin {
    addr: SocketAddr,
    state: Arc<State>,
    /// Stops the server when the origin is dropped.
    _server: Background,
}

impl TestOrigin {
    pub fn start() -> TestOrigin {
        TestOrigin::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Like `start`, on a given address (e.g. a port a node was already configured with).
    pub fn start_on(addr: SocketAddr) -> TestOrigin {
        TestOrigin::spawn(addr, None)
    }

    /// Like `start`, over TLS with the PEM certificate chain and key given (see
    /// `common::tls::TestCa`); with `h2`, ALPN offers `h2` before `http/1.1` and HTTP/2
    /// requests are served (`Recorded::version` says which one a request used).
    pub fn start_tls(cert_pem: &str, key_pem: &str, h2: bool) -> TestOrigin {
        let acceptor = super::tls::acceptor(cert_pem, key_pem, h2);
        TestOrigin::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), Some(acceptor))
    }

    fn spawn(addr: SocketAddr, tls: Option<TlsAcceptor>) -> TestOrigin {
        let std_listener = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("test origin: bind {addr}: {e}"));
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        let server = Background::spawn(
            format!("test-origin-{}", addr.port()),
            4,
            move || async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    match listener.accept().await {
                        Ok((sock, _)) => {
                            let st = st.clone();
                            let tls = tls.clone();
                            tokio::spawn(async move {
                                let _ = sock.set_nodelay(true);
                                match tls {
                                    None => {
                                        let _ = serve_conn(sock, st).await;
                                    }
                                    Some(tls) => {
                                        let _ = serve_tls(&tls, sock, st).await;
                                    }
                                }
                            });
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            },
        );
        TestOrigin {
            addr,
            state,
            _server: server,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://127.0.0.1:PORT` (for an origin started with `start_tls`).
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Serve `reply` for requests to exactly `path` (query ignored for routing); `"*"`: every
    /// path without a route of its own.
    pub fn set(&self, path: &str, reply: Reply) {
        self.set_handler(path, move |_, _| reply.clone());
    }

    /// Serve `path` with a function of the request and the 1-based hit number for this path.
    pub fn set_handler(
        &self,
        path: &str,
        f: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(path.to_string(), Arc::new(f));
    }

    /// Requests received for `path` (any method, any query).
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_hits(&self) -> usize {
        self.state.total.load(Ordering::SeqCst)
    }

    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.state
            .requests
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }
}

fn route_path(uri: &str) -> &str {
    let mut p = uri;
    // absolute-form: strip scheme and authority
    if let Some(rest) = p
        .strip_prefix("http://")
        .or_else(|| p.strip_prefix("https://"))
    {
        p = match rest.find('/') {
            Some(i) => &rest[i..],
            None => "/",
        };
    }
    match p.find('?') {
        Some(i) => &p[..i],
        None => p,
    }
}

/// A connection the HTTP/1 server writes to: a TCP stream or TLS over one.
trait Wire: AsyncRead + AsyncWrite + Unpin + Send {
    /// Make closing the connection reset it (RST), to cut a response short.
    fn reset_on_close(&self);
}

impl Wire for TcpStream {
    fn reset_on_close(&self) {
        #[allow(deprecated)]
        let _ = self.set_linger(Some(Duration::from_secs(0)));
    }
}

impl Wire for tokio_rustls::server::TlsStream<TcpStream> {
    fn reset_on_close(&self) {
        self.get_ref().0.reset_on_close()
    }
}

struct Conn<S> {
    sock: S,
    buf: Vec<u8>,
}

impl<S: Wire> Conn<S> {
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self.sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(false);
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(true)
    }

    async fn read_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).to_string();
                self.buf.drain(..i + 2);
                return Ok(Some(line));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    async fn read_exact_n(&mut self, n: usize) -> std::io::Result<bool> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Ok(false);
            }
        }
        self.buf.drain(..n);
        Ok(true)
    }

    /// Reads one request head. None: connection closed cleanly (or garbage).
    async fn read_head(
        &mut self,
    ) -> std::io::Result<Option<(String, String, String, Vec<(String, String)>)>> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > 256 * 1024 {
                return Ok(None);
            }
            if !self.fill().await? {
                return Ok(None);
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(uri), Some(version)) = (parts.next(), parts.next(), parts.next())
        else {
            return Ok(None);
        };
        let mut headers = Vec::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        Ok(Some((
            method.to_string(),
            uri.to_string(),
            version.to_string(),
            headers,
        )))
    }

    /// Reads and discards the request body. false: connection broken.
    async fn skip_body(&mut self, headers: &[(String, String)]) -> std::io::Result<bool> {
        let te = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
            .map(|(_, v)| v.to_ascii_lowercase());
        if te.map(|t| t.contains("chunked")).unwrap_or(false) {
            loop {
                let Some(line) = self.read_line().await? else {
                    return Ok(false);
                };
                let size_str = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_str, 16).unwrap_or(0);
                if size == 0 {
                    // trailers until empty line
                    loop {
                        match self.read_line().await? {
                            None => return Ok(false),
                            Some(l) if l.is_empty() => return Ok(true),
                            Some(_) => {}
                        }
                    }
                }
                if !self.read_exact_n(size + 2).await? {
                    return Ok(false);
                }
            }
        }
        let cl = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if cl > 0 {
            return self.read_exact_n(cl).await;
        }
        Ok(true)
    }
}

/// Completes the TLS handshake and serves HTTP/2 or HTTP/1 as ALPN chose.
async fn serve_tls(tls: &TlsAcceptor, sock: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let stream = tls.accept(sock).await?;
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        return super::tls::serve_h2(stream, state).await;
    }
    serve_conn(stream, state).await
}

/// Counts and records `rec`, and picks the scripted reply with its 1-based hit number.
pub(super) fn record(state: &State, rec: &Recorded) -> (Reply, usize) {
    let path = route_path(&rec.uri).to_string();
    let hit_no = {
        let mut hits = state.hits.lock().unwrap();
        let h = hits.entry(path.clone()).or_insert(0);
        *h += 1;
        *h
    };
    state
        .requests
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default()
        .push(rec.clone());
    state.total.fetch_add(1, Ordering::SeqCst);
    let handler = {
        let routes = state.routes.lock().unwrap();
        // "*" answers every path without a route of its own
        routes.get(&path).or_else(|| routes.get("*")).cloned()
    };
    let reply = match handler {
        Some(h) => h(rec, hit_no),
        None => Reply::new(404).body("not found"),
    };
    (reply, hit_no)
}

async fn serve_conn<S: Wire>(sock: S, state: Arc<State>) -> std::io::Result<()> {
    let mut conn = Conn {
        sock,
        buf: Vec::new(),
    };
    loop {
        let Some((method, uri, version, headers)) = conn.read_head().await? else {
            return Ok(());
        };
        if !conn.skip_body(&headers).await? {
            return Ok(());
        }
        let rec = Recorded {
            method: method.clone(),
            uri: uri.clone(),
            headers,
            version: version.clone(),
        };
        let (reply, hit_no) = record(&state, &rec);

        let conn_hdr = rec
            .header("connection")
            .map(|v| v.to_ascii_lowercase())
            .unwrap_or_default();
        let close_after = conn_hdr.contains("close")
            || (version == "HTTP/1.0" && !conn_hdr.contains("keep-alive"));

        if let Some(d) = reply.delay {
            tokio::time::sleep(d).await;
        }
        if reply.hang_up {
            return Ok(());
        }

        let keep_going = write_reply(&mut conn.sock, &rec, &reply, hit_no, close_after).await?;
        if !keep_going || close_after {
            let _ = conn.sock.shutdown().await;
            return Ok(());
        }
    }
}

fn etag_matches(inm: &str, etag: &str) -> bool {
    let strip = |s: &str| s.trim().trim_start_matches("W/").to_string();
    let etag = strip(etag);
    inm.split(',').any(|t| {
        let t = t.trim();
        t == "*" || strip(t) == etag
    })
}

fn not_modified(rec: &Recorded, reply: &Reply) -> bool {
    if let Some(inm) = rec.header("if-none-match") {
        return match reply.get_header("etag") {
            Some(etag) => etag_matches(&inm, etag),
            None => false,
        };
    }
    if let (Some(ims), Some(lm)) = (
        rec.header("if-modified-since"),
        reply.get_header("last-modified"),
    ) {
        if let (Some(ims), Some(lm)) = (parse_http_date(&ims), parse_http_date(lm)) {
            return ims >= lm;
        }
    }
    false
}

/// What to answer `rec` with `reply`: status, header fields (with the framing fields for
/// HTTP/1), whether a body follows, and the body (empty for a generated one).
pub(super) struct Planned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub send_body: bool,
    pub body: Vec<u8>,
}

/// The response `reply` makes for `rec` (hit `hit_no`): a 304 for a matching conditional
/// request, the hit number appended with `body_counter`.
pub(super) fn plan(rec: &Recorded, reply: &Reply, hit_no: usize) -> Planned {
    let mut body = reply.body.clone();
    if reply.body_counter {
        body.extend_from_slice(format!("#{hit_no}").as_bytes());
    }
    let is_head = rec.method.eq_ignore_ascii_case("HEAD");

    let (status, headers, send_body): (u16, Vec<(String, String)>, bool) =
        if reply.conditional && not_modified(rec, reply) {
            let keep = [
                "etag",
                "last-modified",
                "cache-control",
                "expires",
                "vary",
                "date",
                "content-location",
            ];
            let hs = reply
                .headers
                .iter()
                .filter(|(k, _)| keep.iter().any(|x| k.eq_ignore_ascii_case(x)))
                .cloned()
                .collect();
            (304, hs, false)
        } else {
            let mut hs = reply.headers.clone();
            let no_body_status = reply.status == 204 || reply.status == 304 || reply.status < 200;
            let body_len = reply.generated.unwrap_or(body.len());
            if !no_body_status && reply.chunked {
                hs.push(("Transfer-Encoding".to_string(), "chunked".to_string()));
            } else if !no_body_status
                && !reply.close_delimited
                && !reply.has_header("content-length")
                && !reply.has_header("transfer-encoding")
            {
                hs.push(("Content-Length".to_string(), body_len.to_string()));
            }
            (reply.status, hs, !no_body_status && !is_head)
        };
    Planned {
        status,
        headers,
        send_body,
        body,
    }
}

/// Writes the response. Returns false when the connection must be closed (truncation).
async fn write_reply<S: Wire>(
    sock: &mut S,
    rec: &Recorded,
    reply: &Reply,
    hit_no: usize,
    close_after: bool,
) -> std::io::Result<bool> {
    let Planned {
        status,
        headers,
        send_body,
        mut body,
    } = plan(rec, reply, hit_no);

    let mut head = format!("HTTP/1.1 {} {}\r\n", status, reason(status));
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("date")) {
        head.push_str(&format!("Date: {}\r\n", http_date(SystemTime::now())));
    }
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if close_after || reply.close_delimited {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");

    let mut head = head.into_bytes();
    if send_body && (reply.generated.is_some() || reply.chunked) {
        let source = reply.generated.is_none().then_some(&body[..]);
        let len = reply.generated.unwrap_or(body.len());
        return write_streamed(sock, &head, reply, source, len).await;
    }
    // Body bytes already sent before a stall.
    let mut sent = 0;
    if let (true, Some((n, d))) = (send_body, reply.stall) {
        let n = n
            .min(body.len())
            .min(reply.truncate_after.unwrap_or(usize::MAX));
        head.extend_from_slice(&body[..n]);
        sock.write_all(&head).await?;
        sock.flush().await?;
        tokio::time::sleep(d).await;
        head.clear();
        body.drain(..n);
        sent = n;
    }
    if let (true, Some(n)) = (send_body, reply.truncate_after) {
        // `n` counts from the start of the body, including a part sent before a stall.
        let n = n.saturating_sub(sent).min(body.len());
        let mut out = head;
        out.extend_from_slice(&body[..n]);
        sock.write_all(&out).await?;
        sock.flush().await?;
        // Let the peer read the partial body, then reset the connection.
        tokio::time::sleep(Duration::from_millis(100)).await;
        sock.reset_on_close();
        return Ok(false);
    }

    let mut out = head;
    if send_body {
        out.extend_from_slice(&body);
    }
    sock.write_all(&out).await?;
    sock.flush().await?;
    Ok(!reply.close_delimited)
}

/// An origin's answer to `req` for a representation `body` tagged `etag`, as RFC 9110 14.2
/// and 13.1.5 say: a 206 of the one range asked for (unless `If-Range` names another
/// version), else the whole 200, or a 416.
pub fn range_reply(req: &Recorded, body: &[u8], etag: &str, cache_control: &str) -> Reply {
    let whole = || {
        Reply::ok(body.to_vec())
            .header("ETag", etag)
            .header("Cache-Control", cache_control)
            .header("Accept-Ranges", "bytes")
            .header("Content-Type", "video/mp4")
    };
    if req.header("If-Range").is_some_and(|v| v != etag) {
        return whole();
    }
    let Some(range) = req.header("Range") else {
        return whole();
    };
    let Some(set) = range.strip_prefix("bytes=") else {
        return whole();
    };
    let len = body.len();
    let (first, last) = match set.split_once('-') {
        Some(("", n)) => {
            let n: usize = n.parse().expect("suffix");
            (len.saturating_sub(n), len - 1)
        }
        Some((a, "")) => (a.parse().expect("first"), len - 1),
        Some((a, b)) => (
            a.parse().expect("first"),
            b.parse::<usize>().expect("last").min(len - 1),
        ),
        None => return whole(),
    };
    if first >= len {
        return Reply::new(416)
            .header("Content-Range", &format!("bytes */{len}"))
            .header("Cache-Control", cache_control);
    }
    Reply::new(206)
        .header("ETag", etag)
        .header("Cache-Control", cache_control)
        .header("Content-Type", "video/mp4")
        .header("Content-Range", &format!("bytes {first}-{last}/{len}"))
        .body(body[first..=last].to_vec())
}

/// Bytes `start..end` of the deterministic body that [`Reply::generated`] serves: every byte
/// depends on its offset, so a misplaced or repeated block never compares equal.
pub fn generated_body(start: usize, end: usize) -> Vec<u8> {
    let first_word = start / 8;
    let last_word = end.div_ceil(8);
    let mut out = Vec::with_capacity((last_word - first_word) * 8);
    for w in first_word..last_word {
        let v = (w as u64 ^ 0x5555_AAAA_0F0F_F0F0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        out.extend_from_slice(&(v ^ (v >> 29)).to_le_bytes());
    }
    let skip = start - first_word * 8;
    out.drain(..skip);
    out.truncate(end - start);
    out
}

/// Sends `head` then a body of `len` bytes (from `source`, or generated) piece by piece,
/// chunk-encoded if asked, honouring `stall_after` and `truncate_after`. Returns false when
/// the connection must be closed.
async fn write_streamed<S: Wire>(
    sock: &mut S,
    head: &[u8],
    reply: &Reply,
    source: Option<&[u8]>,
    len: usize,
) -> std::io::Result<bool> {
    const PIECE: usize = 64 * 1024;
    sock.write_all(head).await?;
    let stop = reply.truncate_after.unwrap_or(len).min(len);
    let mut pos = 0;
    while pos < stop {
        let mut end = (pos + PIECE).min(stop);
        if let Some((n, _)) = reply.stall {
            if pos < n && n < end {
                end = n;
            }
        }
        let piece = match source {
            Some(b) => b[pos..end].to_vec(),
            None => generated_body(pos, end),
        };
        if reply.chunked {
            let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
            framed.extend_from_slice(&piece);
            framed.extend_from_slice(b"\r\n");
            sock.write_all(&framed).await?;
        } else {
            sock.write_all(&piece).await?;
        }
        pos = end;
        if let Some((n, d)) = reply.stall {
            if pos == n {
                sock.flush().await?;
                tokio::time::sleep(d).await;
            }
        }
    }
    sock.flush().await?;
    if stop < len {
        // Let the peer read the partial body, then reset the connection.
        tokio::time::sleep(Duration::from_millis(100)).await;
        sock.reset_on_close();
        return Ok(false);
    }
    if reply.chunked {
        sock.write_all(b"0\r\n\r\n").await?;
        sock.flush().await?;
    }
    Ok(true)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

// Howard Hinnant's civil_from_days / days_from_civil.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = (z - era * 146097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = (y - era * 400) as u64;
    let m = m as u64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as u64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe as i64 - 719468
}

/// IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parses an IMF-fixdate; None for anything else.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (_, rest) = s.split_once(", ")?;
    let mut it = rest.split_whitespace();
    let d: u32 = it.next()?.parse().ok()?;
    let mon = it.next()?;
    let m = MONTHS.iter().position(|x| x.eq_ignore_ascii_case(mon))? as u32 + 1;
    let y: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':');
    let hh: i64 = hms.next()?.parse().ok()?;
    let mm: i64 = hms.next()?.parse().ok()?;
    let ss: i64 = hms.next()?.parse().ok()?;
    let secs = days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss;
    if secs < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs(secs as u64))
}
