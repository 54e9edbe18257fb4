//! Connection limits around the proxy application: at most `limits.max_connections` client
//! connections at once (new ones beyond are closed at once, as nginx does past
//! `worker_connections`), and a deadline for each request header (`limits.header_timeout`,
//! counted from when the connection waits for a request, idle keep-alive included) so that a
//! client trickling its header (slowloris) is disconnected. Pingora's own read timeout applies
//! to each read, not to the whole header.
//!
//! The proxy marks a header as received from its first hook ([`header_received`]); the mark is
//! a task-local of the connection's task.

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use prometheus::IntCounterVec;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

tokio::task_local! {
    static HEADER_SEEN: Arc<AtomicBool>;
}

/// Mark the current connection's request header as received (from the proxy's first hook).
pub fn header_received() {
    let _ = HEADER_SEEN.try_with(|seen| seen.store(true, Ordering::Relaxed));
}

/// A server application with connection limits around it.
pub struct Guarded<A> {
    inner: Arc<A>,
    slots: Semaphore,
    header_timeout: Duration,
    rejected: IntCounterVec,
}

impl<A> Guarded<A> {
    /// `inner` with at most `max_connections` connections and `header_timeout` per request
    /// header; refusals are counted in `rejected` (reasons `max_connections`, `header_timeout`:
    /// idle keep-alive connections closed count there too).
    pub fn new(
        inner: A,
        max_connections: usize,
        header_timeout: Duration,
        rejected: IntCounterVec,
    ) -> Guarded<A> {
        Guarded {
            inner: Arc::new(inner),
            slots: Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS)),
            header_timeout,
            rejected,
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
            self.rejected.with_label_values(&["max_connections"]).inc();
            tracing::warn!("limits.max_connections reached: connection closed");
            return None;
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // one call serves the whole HTTP/2 connection; its streams are separate tasks
            return self.inner.process_new(stream, shutdown).await;
        }
        let seen = Arc::new(AtomicBool::new(false));
        let served = HEADER_SEEN.scope(seen.clone(), self.inner.process_new(stream, shutdown));
        tokio::pin!(served);
        tokio::select! {
            biased;
            reused = &mut served => return reused,
            _ = tokio::time::sleep(self.header_timeout) => {}
        }
        if seen.load(Ordering::Relaxed) {
            return served.await;
        }
        // no complete request header in time: dropping the future closes the connection
        self.rejected.with_label_values(&["header_timeout"]).inc();
        tracing::debug!(
            timeout = ?self.header_timeout,
            "no complete request header within limits.header_timeout: connection closed"
        );
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
