//! Connection limits around the proxy application: at most `limits.max_connections` client
//! connections at once, and a deadline for each request header (`limits.header_timeout`,
//! counted from when the connection waits for a request, idle keep-alive included) so that a
//! client trickling its header (slowloris) is disconnected and an idle keep-alive connection is
//! closed. Pingora's own read timeout applies to each read, not to the whole header.
//!
//! Two layers: [`Guarded`] (a Pingora `ServerApp`) holds a connection slot and watches the
//! connection; inside it Pingora's HTTP/1 loop serves one request after another through
//! [`PerRequest`] (an `HttpServerApp`), which puts each wait for a request header under the
//! deadline. When every slot is taken, a new connection displaces an idle one (HTTP/1 waiting
//! for a request with nothing of it read, or HTTP/2 with no stream in flight), as nginx reuses
//! idle connections when it runs out; only when none is idle is the new connection closed. An HTTP/2 connection's
//! idle deadline is Pingora's `h2_idle_timeout` (set to `limits.header_timeout`, server.rs).
//!
//! The proxy marks a header as received from its first hook ([`header_received`]); the mark is
//! a task-local of the connection's task. The connection is watched ([`Tracked`]: bytes read,
//! the status line written) so that a request Pingora's parser refused with a 400 before any
//! hook ran is logged and counted too, a connection closed inside a request header (HTTP/2:
//! before its preface) is counted as a client disconnect, and an idle keep-alive connection
//! closed by the header deadline is not taken for a slow client. What it reads is also read for request lines
//! Pingora's parser rewrites ([`RequestLines`]). Its writes go through a [`WriteCoalescer`] (a
//! response's header leaves with its body).

use super::coalesce::WriteCoalescer;
use super::hardening::Rejection;
use super::request_line::RequestLines;
use super::sendfile::send_file;
use crate::config::LimitsConfig;
use crate::lean::{Answer, LeanHits, Outcome, Passed, Payload, Peer, KEPT_BUFFER};
use crate::metrics::{DisconnectPhase, Disconnects};
use crate::observe::logging::LogLimit;
use async_trait::async_trait;
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp,
};
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use prometheus::IntCounterVec;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, Semaphore};

/// Bytes of the HTTP/2 connection preface (RFC 9113 3.4) a client sends first.
const H2_PREFACE_LEN: u64 = 24;

tokio::task_local! {
    static WATCHED: Arc<Seen>;
}

/// Mark the current connection's request header as received (from the proxy's first hook).
pub fn header_received() {
    let _ = WATCHED.try_with(|seen| {
        seen.header.store(true, Ordering::Relaxed);
        seen.stop_waiting();
    });
}

/// What a connection did while one request was read and answered.
#[derive(Debug)]
struct Seen {
    bytes_read: AtomicU64,
    /// Status code of the first response written (0: none yet).
    status: AtomicU16,
    /// The request header was parsed (the proxy's first hook ran).
    header: AtomicBool,
    /// Counted in its shard's `waiting` (waiting for a request header).
    waiting: AtomicBool,
    /// The idle connections of the application this connection belongs to.
    idle: Arc<Idle>,
    /// This connection's shard of `idle`.
    shard: usize,
}

impl Seen {
    fn new(idle: Arc<Idle>) -> Seen {
        let shard = idle.next.fetch_add(1, Ordering::Relaxed) % IDLE_SHARDS;
        Seen {
            bytes_read: AtomicU64::new(0),
            status: AtomicU16::new(0),
            header: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
            idle,
            shard,
        }
    }

    /// This connection's shard of the idle connections.
    fn idle_shard(&self) -> &IdleShard {
        &self.idle.shards[self.shard]
    }

    /// A new request is awaited: forget the last one, count the connection as waiting.
    fn start_waiting(&self) {
        self.bytes_read.store(0, Ordering::Relaxed);
        self.status.store(0, Ordering::Relaxed);
        self.header.store(false, Ordering::Relaxed);
        if !self.waiting.swap(true, Ordering::Relaxed) {
            self.idle_shard().waiting.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The wait is over (a header came, or the connection is closing).
    fn stop_waiting(&self) {
        if self.waiting.swap(false, Ordering::Relaxed) {
            self.idle_shard().waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Idle: waiting for a request with nothing of it read.
    fn is_idle(&self) -> bool {
        self.bytes_read.load(Ordering::Relaxed) == 0 && !self.header.load(Ordering::Relaxed)
    }
}

/// The idle connections of one application, and the signals that close one of them to make
/// room for a new connection: HTTP/1 connections waiting for a request, and HTTP/2
/// connections with no stream in flight.
#[derive(Debug)]
struct Idle {
    /// HTTP/1 connections, spread over shards so that worker threads do not all register
    /// with one `Notify` (a lock) for every request they wait for.
    shards: [IdleShard; IDLE_SHARDS],
    /// The shard of the next connection.
    next: AtomicUsize,
    /// Open HTTP/2 connections by socket cookie (unique for the socket's lifetime, so a
    /// stream, in its own task, finds its connection).
    h2: parking_lot::Mutex<HashMap<u64, Arc<H2Conn>>>,
}

/// Shards of [`Idle`]'s HTTP/1 connections.
const IDLE_SHARDS: usize = 16;

/// Some of the HTTP/1 connections of an [`Idle`].
#[derive(Debug, Default)]
struct IdleShard {
    /// Connections waiting for a request header (a hint: one may have begun sending).
    waiting: AtomicUsize,
    /// Wakes one waiting connection, which closes if it is idle and passes the signal on if not.
    displace: Notify,
}

impl Default for Idle {
    fn default() -> Self {
        Idle {
            shards: std::array::from_fn(|_| IdleShard::default()),
            next: AtomicUsize::new(0),
            h2: parking_lot::Mutex::default(),
        }
    }
}

/// One open HTTP/2 connection.
#[derive(Debug, Default)]
struct H2Conn {
    /// Streams being served.
    streams: AtomicUsize,
    /// Chosen to close for a new connection (once).
    closing: AtomicBool,
    /// Closes the connection.
    close: Notify,
}

/// A stream of an [`H2Conn`] in flight (the connection is not idle while one lives).
struct H2Stream(Option<Arc<H2Conn>>);

impl Drop for H2Stream {
    fn drop(&mut self) {
        if let Some(conn) = &self.0 {
            conn.streams.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Idle {
    /// Ask one idle connection to close: a waiting HTTP/1 one, else an HTTP/2 one with no
    /// stream; false if there is none.
    fn displace_one(&self) -> bool {
        let start = self.next.load(Ordering::Relaxed);
        let waiting = (0..IDLE_SHARDS)
            .map(|i| &self.shards[(start + i) % IDLE_SHARDS])
            .find(|shard| shard.waiting.load(Ordering::Relaxed) > 0);
        if let Some(shard) = waiting {
            shard.displace.notify_one();
            return true;
        }
        let conns = self.h2.lock();
        let idle = conns.values().find(|c| {
            c.streams.load(Ordering::Relaxed) == 0 && !c.closing.swap(true, Ordering::Relaxed)
        });
        match idle {
            Some(conn) => {
                conn.close.notify_one();
                true
            }
            None => false,
        }
    }

    /// Resolves when this connection (`seen`) is asked to close for a new one while idle; a
    /// connection that is not idle passes the request on and never resolves.
    async fn displaced(&self, seen: &Seen) {
        seen.idle_shard().displace.notified().await;
        if seen.is_idle() {
            return;
        }
        self.displace_one();
        std::future::pending::<()>().await
    }

    /// Count a stream in flight on its HTTP/2 connection (by the session's socket cookie).
    fn h2_stream(&self, session: &ServerSession) -> H2Stream {
        let conn = session
            .digest()
            .and_then(|d| d.socket_digest.as_ref())
            .and_then(|s| s.socket_cookie().ok())
            .and_then(|cookie| self.h2.lock().get(&cookie).cloned());
        if let Some(conn) = &conn {
            conn.streams.fetch_add(1, Ordering::Relaxed);
        }
        H2Stream(conn)
    }
}

/// A client connection watched for what it did (bytes read, the status written).
#[derive(Debug)]
pub struct Tracked {
    inner: Stream,
    seen: Arc<Seen>,
    /// Small writes held to go out with the next large one (a header with its body).
    send: WriteCoalescer,
    /// The lines read, as the client sent them (HTTP/1 connections).
    lines: Option<RequestLines>,
    /// Bytes read ahead by the lean hit path and handed back ([`Tracked::hand_over`]).
    held: Held,
}

/// Bytes the lean hit path read and handed to Pingora with a request it does not answer.
/// Pingora reads the lent part (that request) first; what follows (requests pipelined behind
/// it) is kept for the lean path, and Pingora's reads wait meanwhile (they only watch for the
/// client closing), so that Pingora never reads past its request and holds none of the next.
#[derive(Debug, Default)]
struct Held {
    bytes: Vec<u8>,
    /// Read position in `bytes`.
    pos: usize,
    /// Of `bytes[pos..]`, how many Pingora may read.
    lend: usize,
    /// Bytes Pingora read from the socket since the hand-over.
    direct: u64,
    /// Of those, how many belong to the request handed over (its body not read yet); `None`:
    /// its length is unknown.
    expected: Option<u64>,
}

/// The request lines the client sent on `stream`, if it is a watched (HTTP/1) connection.
pub fn request_lines(stream: &Stream) -> Option<&RequestLines> {
    stream
        .as_any()
        .downcast_ref::<Tracked>()
        .and_then(|tracked| tracked.lines.as_ref())
}

/// The status code of an HTTP/1 status line at the start of `buf` (`HTTP/1.1 400 ...`).
fn status_of(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

impl Tracked {
    /// The socket of a plain TCP (or Unix) connection, which bytes may be sent to directly once
    /// everything written before is flushed; `None` under TLS.
    fn plain_socket(&self) -> Option<std::os::fd::RawFd> {
        self.inner
            .as_any()
            .downcast_ref::<L4Stream>()
            .map(std::os::fd::AsRawFd::as_raw_fd)
            .filter(|fd| *fd >= 0)
    }

    /// Give Pingora `bytes` read ahead, of which the first `lend` (one request, whose whole
    /// length is `length` when known) are its to read.
    fn hand_over(&mut self, bytes: Vec<u8>, lend: usize, length: Option<u64>) {
        self.held = Held {
            expected: length.map(|l| l.saturating_sub(lend as u64)),
            lend,
            pos: 0,
            direct: 0,
            bytes,
        };
    }

    /// Take the connection back from Pingora after its request: the bytes read ahead that it
    /// did not read, or `None` if it may have read into a next request (it read more from the
    /// socket than the request it was handed, or its length was unknown and it read any).
    fn take_back(&mut self) -> Option<Vec<u8>> {
        let held = std::mem::take(&mut self.held);
        if held.lend > 0 || held.direct > held.expected.unwrap_or(0) {
            return None;
        }
        let mut bytes = held.bytes;
        bytes.drain(..held.pos);
        Some(bytes)
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if me.held.lend > 0 {
            let n = me.held.lend.min(buf.remaining());
            buf.put_slice(&me.held.bytes[me.held.pos..me.held.pos + n]);
            me.held.pos += n;
            me.held.lend -= n;
            me.seen.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        if me.held.pos < me.held.bytes.len() {
            // the next request, kept for the lean path
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            self.seen
                .bytes_read
                .fetch_add(read.len() as u64, Ordering::Relaxed);
            let n = read.len() as u64;
            if let Some(lines) = &mut self.lines {
                lines.feed(read);
            }
            self.held.direct += n;
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.seen.status.load(Ordering::Relaxed) == 0 {
            if let Some(code) = status_of(buf) {
                self.seen.status.store(code, Ordering::Relaxed);
            }
        }
        let me = &mut *self;
        me.send.poll_write(&mut me.inner, cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        me.send.poll_flush(&mut me.inner, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        me.send.poll_shutdown(&mut me.inner, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.seen.status.load(Ordering::Relaxed) == 0 {
            if let Some(code) = bufs.first().and_then(|b| status_of(b)) {
                self.seen.status.store(code, Ordering::Relaxed);
            }
        }
        let me = &mut *self;
        me.send.poll_write_vectored(&mut me.inner, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.send.is_write_vectored(&self.inner)
    }
}

#[async_trait]
impl Shutdown for Tracked {
    async fn shutdown(&mut self) {
        // held bytes first, as the inner stream flushes its own buffer before shutting down
        let me = &mut *self;
        let _ = std::future::poll_fn(|cx| me.send.poll_flush(&mut me.inner, cx)).await;
        me.inner.shutdown().await
    }
}

impl UniqueID for Tracked {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Tracked {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Tracked {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Tracked {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Tracked {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Tracked {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// `stream` watched (lines up to `max_line` bytes read for request lines, none for HTTP/2),
/// with a coalescing writer on plain TCP.
fn track(stream: Stream, idle: &Arc<Idle>, max_line: Option<usize>) -> (Stream, Arc<Seen>) {
    let seen = Arc::new(Seen::new(idle.clone()));
    // coalescing pays on a plain TCP stream (a TLS stream encrypts each write on its own)
    let plain = stream.as_any().is::<L4Stream>();
    (
        Box::new(Tracked {
            inner: stream,
            seen: seen.clone(),
            send: WriteCoalescer::new(plain),
            lines: max_line.map(RequestLines::new),
            held: Held::default(),
        }),
        seen,
    )
}

/// The watched connection inside `stream` (every HTTP/1 connection is one: [`track`]).
fn downcast(stream: Stream) -> Option<Box<Tracked>> {
    match stream.into_any().downcast::<Tracked>() {
        Ok(tracked) => Some(tracked),
        Err(_) => {
            tracing::error!("connection is not a watched stream: closed");
            None
        }
    }
}

/// Write a lean answer; false if the client is gone. Its header goes out with its body
/// ([`WriteCoalescer`]), except for a body that may be sent from a disk segment file on a
/// plain TCP connection: the header is written on its own, then the body with `sendfile`
/// (what the socket does not take at once, written from the verified copy in memory). The
/// header is not held back for the body (`MSG_MORE`): measured, that made each 100 KiB
/// disk hit cost ~12 µs more under BBR (README, Benchmarks).
async fn write_answer(tracked: &mut Tracked, answer: &Answer) -> bool {
    use tokio::io::AsyncWriteExt as _;
    let body = answer
        .body
        .as_ref()
        .map(Payload::bytes)
        .filter(|b| !b.is_empty());
    let written = async {
        tracked.write_all(&answer.head).await?;
        if let Some(body) = body {
            let mut from = 0;
            if let (Some(file), Some(socket)) = (&answer.body_file, tracked.plain_socket()) {
                tracked.flush().await?;
                // never more than the body (the response's length); an error here (a file
                // system without sendfile): the copy below sends it all
                let len = file.len().min(body.len() as u64);
                let sent = send_file(socket, file.file(), file.offset(), len).unwrap_or(0);
                from = usize::try_from(sent).map_or(body.len(), |n| n.min(body.len()));
            }
            tracked.write_all(&body[from..]).await?;
        }
        tracked.flush().await
    };
    written.await.is_ok()
}

/// How many client connections a [`Guarded`] application has open (a cheap, cloneable
/// handle: the graceful shutdown waits on it).
#[derive(Clone)]
pub struct OpenConnections {
    slots: Arc<Semaphore>,
    max: usize,
}

impl OpenConnections {
    /// Client connections open now (idle keep-alive ones included).
    pub fn get(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }

    /// Wait until no connection is open, at most `limit`; true if none is.
    pub async fn wait_closed(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.get() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// A server application with connection limits around it.
pub struct Guarded<A> {
    inner: Arc<PerRequest<A>>,
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// On shutdown, how long idle keep-alive connections stay open before they are closed.
    linger: Duration,
    /// Longest request line read for a rewritten target (`limits.max_header_bytes`).
    max_line: usize,
    rejected: IntCounterVec,
    /// The connection-limit warning: at most one a second, so that an overload does not also
    /// flood the log.
    full: LogLimit,
    /// The lean hit path, when on (HTTP/1 connections).
    lean: Option<Arc<LeanHits>>,
    /// Set (and waiters woken) once idle connections are to close at shutdown.
    closing: Arc<Closing>,
}

/// The shutdown's signal to close idle connections waiting in the lean path.
#[derive(Default)]
struct Closing {
    now: AtomicBool,
    notify: Notify,
}

impl Closing {
    async fn wait(&self) {
        let notified = self.notify.notified();
        if self.now.load(Ordering::Acquire) {
            return;
        }
        notified.await
    }
}

/// How a wait for a request in the lean path ended.
enum Read {
    /// Bytes of a request are in the buffer.
    More,
    /// The connection is over (closed by the client, the deadline, for a new connection or
    /// at shutdown; counted).
    Over,
}

/// How long a new connection past `max_connections` waits for the idle one it displaced to
/// give its slot back (it closes as soon as its task runs).
const DISPLACE_WAIT: Duration = Duration::from_millis(500);

impl<A> Guarded<A> {
    /// `inner` with at most `limits.max_connections` connections and `limits.header_timeout`
    /// per request header; refusals are counted in `rejected` (reasons `max_connections`,
    /// `header_timeout` for a header begun but not finished in time, `malformed` for requests
    /// Pingora's parser refused with a 400), idle connections closed in `idle_closed` (reasons
    /// `header_timeout`, `max_connections`), clients that leave before a request header is
    /// complete in `disconnects` (phases `request_header`, `h2_preface`).
    pub fn new(
        inner: A,
        limits: &LimitsConfig,
        rejected: IntCounterVec,
        idle_closed: IntCounterVec,
        disconnects: Disconnects,
    ) -> Guarded<A> {
        let max_connections = limits.max_connections.min(Semaphore::MAX_PERMITS);
        Guarded {
            inner: Arc::new(PerRequest {
                app: Arc::new(inner),
                header_timeout: limits.header_timeout,
                rejected: rejected.clone(),
                idle_closed,
                disconnects,
                idle: Arc::new(Idle::default()),
            }),
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            linger: Duration::ZERO,
            max_line: usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX),
            rejected,
            full: LogLimit::new(Duration::from_secs(1)),
            lean: None,
            closing: Arc::default(),
        }
    }

    /// Answer fresh memory hits on HTTP/1 connections with `lean` (when it is enabled).
    pub fn with_lean_hits(mut self, lean: Arc<LeanHits>) -> Self {
        self.lean = lean.enabled().then_some(lean);
        self
    }

    /// On a graceful shutdown (or upgrade), keep idle keep-alive connections open up to
    /// `linger` before closing them, while every response sent meanwhile says
    /// `Connection: close`: a busy client learns to reconnect (to the new process, after an
    /// upgrade) from a response instead of finding its connection closed just as it sends the
    /// next request. Ends early once no connection is open.
    pub fn with_shutdown_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// A handle counting this application's open client connections.
    pub fn open_connections(&self) -> OpenConnections {
        OpenConnections {
            slots: self.slots.clone(),
            max: self.max_connections,
        }
    }

    /// Serve one HTTP/2 connection (its streams are separate tasks, and its idle deadline is
    /// Pingora's h2_idle_timeout, limits.header_timeout: server.rs), registered so that it can
    /// be closed for a new connection while no stream is in flight.
    async fn serve_h2(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream>
    where
        A: HttpServerApp + Send + Sync + 'static,
    {
        let cookie = stream
            .get_socket_digest()
            .and_then(|d| d.socket_cookie().ok());
        // watched for the bytes it reads (no request lines: HTTP/2 frames are binary)
        let (stream, watched) = track(stream, &self.inner.idle, None);
        let conn = Arc::new(H2Conn::default());
        if let Some(cookie) = cookie {
            self.inner.idle.h2.lock().insert(cookie, conn.clone());
        }
        let (served, displaced) = tokio::select! {
            biased;
            reused = self.inner.process_new(stream, shutdown) => (reused, false),
            _ = conn.close.notified() => {
                self.inner.idle_closed.with_label_values(&["max_connections"]).inc();
                tracing::debug!("idle HTTP/2 connection closed for a new one at limits.max_connections");
                (None, true)
            }
        };
        if let Some(cookie) = cookie {
            self.inner.idle.h2.lock().remove(&cookie);
        }
        if !displaced && watched.bytes_read.load(Ordering::Relaxed) < H2_PREFACE_LEN {
            // closed before its preface (an unused preconnect): Pingora's "H2 handshake
            // error" line is left out of the log (observe::logging::QUIET)
            self.inner.disconnects.count(DisconnectPhase::H2Preface);
            tracing::debug!("HTTP/2 connection closed before its preface");
        }
        served
    }

    /// Serve an HTTP/1 connection: the lean path answers the requests it can, in a loop of its
    /// own; a request it does not answer goes to Pingora's session (through [`PerRequest`])
    /// with the bytes already read, and the connection comes back after it unless Pingora
    /// may have read into the next request (then Pingora keeps it, as its own loop would).
    async fn serve_h1(
        &self,
        lean: &LeanHits,
        stream: Stream,
        seen: &Arc<Seen>,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream>
    where
        A: HttpServerApp + Send + Sync + 'static,
    {
        let addr = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let tls = stream.get_ssl_digest().is_some();
        let mut tracked = downcast(stream)?;
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        // responses of the lean pass path are read here
        let mut origin_buf: Vec<u8> = Vec::new();
        // Pingora keeps the connection (it may hold bytes of the next request), with the
        // settings it carries from one request to the next
        let mut pingora = false;
        let mut kept: Option<HttpPersistentSettings> = None;
        // when the request being read must be complete (from when the wait for it began)
        let mut deadline = None;
        loop {
            if !pingora {
                // the lean path's turn: answer requests until one is not a lean hit
                let length = loop {
                    if !buf.is_empty() {
                        let peer = Peer {
                            addr,
                            closing: *shutdown.borrow(),
                            tls,
                        };
                        match lean.answer(&buf, peer) {
                            Outcome::Answered(answer) => {
                                seen.stop_waiting();
                                let sent = write_answer(&mut tracked, &answer).await;
                                lean.finished(&answer, sent);
                                if !sent || !answer.keep_alive {
                                    Shutdown::shutdown(&mut *tracked).await;
                                    return None;
                                }
                                buf.drain(..answer.consumed);
                                deadline = None;
                                continue;
                            }
                            Outcome::Pass(pass) => {
                                seen.stop_waiting();
                                let consumed = pass.consumed;
                                let passed = lean.pass(pass, &mut *tracked, &mut origin_buf).await;
                                if origin_buf.capacity() > KEPT_BUFFER {
                                    origin_buf = Vec::new();
                                }
                                match passed {
                                    Passed::Done { keep_alive: true } => {
                                        buf.drain(..consumed);
                                        deadline = None;
                                        continue;
                                    }
                                    Passed::Done { keep_alive: false } => {
                                        Shutdown::shutdown(&mut *tracked).await;
                                        return None;
                                    }
                                    // nothing sent: the full path takes it (a bodyless request)
                                    Passed::HandOver => break Some(consumed as u64),
                                }
                            }
                            Outcome::Full { length } => break length,
                            // past any header size limit: the full path refuses it
                            Outcome::Incomplete if buf.len() > self.max_line + 4096 => break None,
                            Outcome::Incomplete => {}
                        }
                    }
                    let until = *deadline.get_or_insert_with(|| {
                        tokio::time::Instant::now() + self.inner.header_timeout
                    });
                    match self.read_request(&mut tracked, &mut buf, seen, until).await {
                        Read::More => {}
                        Read::Over => return None,
                    }
                };
                let lend = length
                    .and_then(|l| usize::try_from(l).ok())
                    .map_or(buf.len(), |l| l.min(buf.len()));
                tracked.hand_over(std::mem::take(&mut buf), lend, length);
                deadline = None;
            }
            let mut session = ServerSession::new_http1(tracked);
            match kept.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                // as Pingora's own HTTP/1 loop starts a connection
                None => session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) }),
            }
            let reused = self.inner.process_new_http(session, shutdown).await?;
            let (stream, settings) = reused.consume();
            tracked = downcast(stream)?;
            if pingora {
                kept = settings;
                continue;
            }
            match tracked.take_back() {
                Some(rest) => buf = rest,
                None => {
                    pingora = true;
                    kept = settings;
                }
            }
        }
    }

    /// Wait for (more of) a request on `tracked` into `buf` under the header deadline, as
    /// [`PerRequest`] waits for Pingora's reads: a connection idle past the deadline, or
    /// chosen to make room for a new connection, or open at shutdown, is closed and counted.
    async fn read_request(
        &self,
        tracked: &mut Tracked,
        buf: &mut Vec<u8>,
        seen: &Seen,
        until: tokio::time::Instant,
    ) -> Read {
        let inner = &self.inner;
        if buf.is_empty() {
            seen.start_waiting();
        }
        let deadline = tokio::time::sleep_until(until);
        let read = async {
            buf.reserve(4096);
            tracked.read_buf(buf).await
        };
        let wait = tokio::select! {
            biased;
            read = read => Ok(read),
            _ = deadline => Err(Wait::Deadline),
            _ = inner.idle.displaced(seen) => Err(Wait::Displaced),
            _ = self.closing.wait() => return Read::Over,
        };
        match wait {
            Ok(Ok(n)) if n > 0 => Read::More,
            Ok(_) => {
                if !buf.is_empty() {
                    inner.disconnects.count(DisconnectPhase::RequestHeader);
                    tracing::debug!(
                        bytes_read = buf.len(),
                        "client closed the connection mid-header"
                    );
                }
                Read::Over
            }
            Err(why) => {
                inner.waited_too_long(why, !buf.is_empty());
                Read::Over
            }
        }
    }

    /// A slot for a new connection: a free one, or the one an idle connection gives back when
    /// asked to close; `None` when every connection is busy.
    async fn slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        if let Ok(slot) = self.slots.try_acquire() {
            return Some(slot);
        }
        if !self.inner.idle.displace_one() {
            return None;
        }
        tokio::time::timeout(DISPLACE_WAIT, self.slots.acquire())
            .await
            .ok()?
            .ok()
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_slot) = self.slot().await else {
            let refused = self.rejected.with_label_values(&["max_connections"]);
            refused.inc();
            if let Some(suppressed) = self.full.admit() {
                tracing::warn!(
                    refused_so_far = refused.get(),
                    suppressed,
                    "limits.max_connections reached with no idle connection: new connections are closed"
                );
            }
            return None;
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.serve_h2(stream, shutdown).await;
        }
        let (stream, watched) = track(stream, &self.inner.idle, Some(self.max_line));
        let reused = match &self.lean {
            // the lean path answers what it can, Pingora's session the rest
            Some(lean) => {
                let served = self.serve_h1(lean, stream, &watched, shutdown);
                WATCHED.scope(watched.clone(), served).await
            }
            // Pingora's HTTP/1 loop serves every request of the connection through PerRequest
            None => {
                let served = self.inner.process_new(stream, shutdown);
                WATCHED.scope(watched.clone(), served).await
            }
        };
        watched.stop_waiting();
        reused
    }

    async fn cleanup(&self) {
        // Pingora calls this once the listeners stopped accepting; the inner cleanup closes
        // every idle keep-alive connection at once
        self.open_connections().wait_closed(self.linger).await;
        self.closing.now.store(true, Ordering::Release);
        self.closing.notify.notify_waiters();
        self.inner.cleanup().await;
    }
}

/// The HTTP layer inside [`Guarded`]: Pingora's HTTP/1 keep-alive loop calls it once per
/// request, in the connection's task; HTTP/2 streams (their own tasks) pass straight through.
pub struct PerRequest<A> {
    app: Arc<A>,
    header_timeout: Duration,
    rejected: IntCounterVec,
    idle_closed: IntCounterVec,
    disconnects: Disconnects,
    idle: Arc<Idle>,
}

/// How the wait for a request header ended.
enum Wait {
    /// The request was served (or the connection ended) first.
    Served(Option<ReusedHttpStream>),
    /// `limits.header_timeout` passed.
    Deadline,
    /// A new connection needed this idle one's slot.
    Displaced,
}

impl<A> PerRequest<A> {
    /// Count and log a connection closed while waiting for a request header: the deadline
    /// passed (with `partial`, a header begun: a slow client), or a new connection needed
    /// its slot.
    fn waited_too_long(&self, why: Wait, partial: bool) {
        match why {
            Wait::Deadline if partial => {
                self.rejected.with_label_values(&["header_timeout"]).inc();
                tracing::info!(
                    timeout = ?self.header_timeout,
                    reason = "header_timeout",
                    "request refused: header not complete within limits.header_timeout"
                );
            }
            Wait::Deadline => {
                self.idle_closed
                    .with_label_values(&["header_timeout"])
                    .inc();
                tracing::debug!("idle keep-alive connection closed at limits.header_timeout");
            }
            Wait::Displaced => {
                self.idle_closed
                    .with_label_values(&["max_connections"])
                    .inc();
                tracing::debug!(
                    "idle keep-alive connection closed for a new one at limits.max_connections"
                );
            }
            Wait::Served(_) => {}
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for PerRequest<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let Ok(seen) = WATCHED.try_with(Arc::clone) else {
            // an HTTP/2 stream: its connection's idle deadline is Pingora's h2_idle_timeout
            let _in_flight = self.idle.h2_stream(&session);
            return self.app.process_new_http(session, shutdown).await;
        };
        seen.start_waiting();
        let served = self.app.process_new_http(session, shutdown);
        tokio::pin!(served);
        let wait = tokio::select! {
            biased;
            reused = &mut served => Wait::Served(reused),
            _ = tokio::time::sleep(self.header_timeout) => Wait::Deadline,
            _ = self.idle.displaced(&seen) => Wait::Displaced,
        };
        seen.stop_waiting();
        let reused = match wait {
            Wait::Served(reused) => reused,
            // the header came in time: the request is served whatever it takes
            _ if seen.header.load(Ordering::Relaxed) => served.await,
            // dropping the future closes the connection
            why => {
                self.waited_too_long(why, seen.bytes_read.load(Ordering::Relaxed) > 0);
                return None;
            }
        };
        let bytes_read = seen.bytes_read.load(Ordering::Relaxed);
        if !seen.header.load(Ordering::Relaxed) && bytes_read > 0 {
            match seen.status.load(Ordering::Relaxed) {
                400 => {
                    // Pingora's parser refused the request before any hook could see it
                    let reason = Rejection::Malformed.reason();
                    self.rejected.with_label_values(&[reason]).inc();
                    tracing::info!(
                        status = 400,
                        reason,
                        bytes_read,
                        "request refused: not a valid HTTP request"
                    );
                }
                0 => {
                    // the connection ended inside a request header: Pingora's "Fail to proxy"
                    // line is left out of the log (observe::logging::QUIET)
                    self.disconnects.count(DisconnectPhase::RequestHeader);
                    tracing::debug!(bytes_read, "client closed the connection mid-header");
                }
                _ => {}
            }
        }
        reused
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.app.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.app.server_options()
    }

    async fn http_cleanup(&self) {
        self.app.http_cleanup().await
    }
}
