//! Connection limits around the proxy application: at most `limits.max_connections` client
//! connections at once (new ones beyond are closed at once, as nginx does past
//! `worker_connections`), and a deadline for each request header (`limits.header_timeout`,
//! counted from when the connection waits for a request, idle keep-alive included) so that a
//! client trickling its header (slowloris) is disconnected. Pingora's own read timeout applies
//! to each read, not to the whole header.
//!
//! The proxy marks a header as received from its first hook ([`header_received`]); the mark is
//! a task-local of the connection's task. The connection is watched ([`Tracked`]: bytes read,
//! the status line written) so that a request Pingora's parser refused with a 400 before any
//! hook ran is logged and counted too, a connection closed inside a request header (HTTP/2:
//! before its preface) is counted as a client disconnect, and an idle keep-alive connection
//! closed by the header deadline is not taken for a slow client. Its writes go through a
//! [`WriteCoalescer`] (a response's header leaves with its body).

use super::coalesce::WriteCoalescer;
use crate::metrics::{DisconnectPhase, Disconnects};
use crate::observe::logging::LogLimit;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use prometheus::IntCounterVec;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;

tokio::task_local! {
    static WATCHED: Arc<Seen>;
}

/// Mark the current connection's request header as received (from the proxy's first hook).
pub fn header_received() {
    let _ = WATCHED.try_with(|seen| seen.header.store(true, Ordering::Relaxed));
}

/// Bytes of the HTTP/2 connection preface (RFC 9113 3.4) a client sends first.
const H2_PREFACE_LEN: u64 = 24;

/// What a connection did while one request was read and answered.
#[derive(Debug, Default)]
struct Seen {
    bytes_read: AtomicU64,
    /// Status code of the first response written (0: none yet).
    status: AtomicU16,
    /// The request header was parsed (the proxy's first hook ran).
    header: AtomicBool,
}

/// A client connection watched for what it did (bytes read, the status written).
#[derive(Debug)]
pub struct Tracked {
    inner: Stream,
    seen: Arc<Seen>,
    /// Small writes held to go out with the next large one (a header with its body).
    send: WriteCoalescer,
}

/// The status code of an HTTP/1 status line at the start of `buf` (`HTTP/1.1 400 ...`).
fn status_of(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.seen.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
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

/// `stream` watched, its [`Seen`] reset for a new request (a kept-alive connection keeps its
/// watch: nothing is allocated per request).
fn track(stream: Stream) -> (Stream, Arc<Seen>) {
    if let Some(tracked) = stream.as_any().downcast_ref::<Tracked>() {
        let seen = tracked.seen.clone();
        seen.bytes_read.store(0, Ordering::Relaxed);
        seen.status.store(0, Ordering::Relaxed);
        seen.header.store(false, Ordering::Relaxed);
        return (stream, seen);
    }
    let seen = Arc::new(Seen::default());
    // coalescing pays on a plain TCP stream (a TLS stream encrypts each write on its own)
    let plain = stream.as_any().is::<L4Stream>();
    (
        Box::new(Tracked {
            inner: stream,
            seen: seen.clone(),
            send: WriteCoalescer::new(plain),
        }),
        seen,
    )
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
    inner: Arc<A>,
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// On shutdown, how long idle keep-alive connections stay open before they are closed.
    linger: Duration,
    header_timeout: Duration,
    rejected: IntCounterVec,
    disconnects: Disconnects,
    /// The connection-limit warning: at most one a second, so that an overload does not also
    /// flood the log.
    full: LogLimit,
}

impl<A> Guarded<A> {
    /// `inner` with at most `max_connections` connections and `header_timeout` per request
    /// header; refusals are counted in `rejected` (reasons `max_connections`, `header_timeout`
    /// for a header begun but not finished in time, `malformed` for requests Pingora's parser
    /// refused with a 400); clients that leave before a request header is complete are counted
    /// in `disconnects` (phases `request_header`, `h2_preface`).
    pub fn new(
        inner: A,
        max_connections: usize,
        header_timeout: Duration,
        rejected: IntCounterVec,
        disconnects: Disconnects,
    ) -> Guarded<A> {
        let max_connections = max_connections.min(Semaphore::MAX_PERMITS);
        Guarded {
            inner: Arc::new(inner),
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            linger: Duration::ZERO,
            header_timeout,
            rejected,
            disconnects,
            full: LogLimit::new(Duration::from_secs(1)),
        }
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
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Ok(_slot) = self.slots.try_acquire() else {
            let refused = self.rejected.with_label_values(&["max_connections"]);
            refused.inc();
            if let Some(suppressed) = self.full.admit() {
                tracing::warn!(
                    refused_so_far = refused.get(),
                    suppressed,
                    "limits.max_connections reached: new connections are closed"
                );
            }
            return None;
        };
        let (stream, watched) = track(stream);
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // one call serves the whole HTTP/2 connection; its streams are separate tasks, and
            // its idle deadline is Pingora's h2_idle_timeout (limits.header_timeout, server.rs)
            let reused = self.inner.process_new(stream, shutdown).await;
            if watched.bytes_read.load(Ordering::Relaxed) < H2_PREFACE_LEN {
                // closed before its preface (an unused preconnect): Pingora's "H2 handshake
                // error" line is left out of the log (observe::logging::QUIET)
                self.disconnects.count(DisconnectPhase::H2Preface);
                tracing::debug!("HTTP/2 connection closed before its preface");
            }
            return reused;
        }
        let seen = &watched.header;
        let served = WATCHED.scope(watched.clone(), self.inner.process_new(stream, shutdown));
        tokio::pin!(served);
        let reused = tokio::select! {
            biased;
            reused = &mut served => Some(reused),
            _ = tokio::time::sleep(self.header_timeout) => None,
        };
        let reused = match reused {
            Some(reused) => reused,
            None if seen.load(Ordering::Relaxed) => served.await,
            None => {
                // no complete request header in time: dropping the future closes the connection
                if watched.bytes_read.load(Ordering::Relaxed) > 0 {
                    self.rejected.with_label_values(&["header_timeout"]).inc();
                    tracing::info!(
                        timeout = ?self.header_timeout,
                        reason = "header_timeout",
                        "request refused: header not complete within limits.header_timeout"
                    );
                } else {
                    tracing::debug!("idle keep-alive connection closed at limits.header_timeout");
                }
                return None;
            }
        };
        let bytes_read = watched.bytes_read.load(Ordering::Relaxed);
        if !seen.load(Ordering::Relaxed) && bytes_read > 0 {
            match watched.status.load(Ordering::Relaxed) {
                400 => {
                    // Pingora's parser refused the request before any hook could see it
                    self.rejected.with_label_values(&["malformed"]).inc();
                    tracing::info!(
                        status = 400,
                        reason = "malformed",
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

    async fn cleanup(&self) {
        // Pingora calls this once the listeners stopped accepting; the inner cleanup closes
        // every idle keep-alive connection at once
        self.open_connections().wait_closed(self.linger).await;
        self.inner.cleanup().await;
    }
}
