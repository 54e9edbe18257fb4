//! The node's own log (standard error, through `tracing`; the access log is
//! [`super::access_log`]), kept readable under real traffic:
//!
//! - [`LogLimit`]: a warning that can repeat with the traffic (a disk fault, a full connection
//!   table, a failing cache hit) is logged at most once per interval, its line saying how many
//!   of its kind were left out since the previous one (`suppressed`).
//! - Routine client behaviour is counted, not logged as a fault: a client that goes away is
//!   `outpost_client_disconnects_total{phase}` and a debug line. Pingora and rustls log some of
//!   these events unconditionally (an ERROR for a client that left mid-response or mid-header,
//!   for an HTTP/2 connection closed before its preface, a WARN for an IP address sent as SNI):
//!   those lines ([`QUIET`]) are left out of the log, the node recording the event itself. They
//!   are matched by target *and* the start of the message, so the other lines of the same
//!   modules (an origin failure while serving stale, a retried fetch, a cache lock timeout)
//!   still show.
//!
//! `OUTPOST_LOG` sets the filter (default [`DEFAULT_FILTER`]); a filter enabling `debug` or
//! `trace` anywhere (`OUTPOST_LOG=debug`, `OUTPOST_LOG=info,pingora_proxy=debug`) shows the
//! quiet lines too. `OUTPOST_LOG_FORMAT=json` writes JSON lines.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The usual interval of a [`LogLimit`]: one line of a kind per 10 seconds at most.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The filter without `OUTPOST_LOG`: Outpost at info, Pingora's crates at warn.
pub const DEFAULT_FILTER: &str = "info,pingora_core=warn,pingora_proxy=warn,pingora_cache=warn";

/// Install the process's log subscriber (stderr), as `OUTPOST_LOG` and `OUTPOST_LOG_FORMAT`
/// say. Records of the `log` crate (Pingora's, rustls's) go through it too.
pub fn init() {
    let configured = EnvFilter::try_from_env("OUTPOST_LOG").ok();
    let quiet = configured.as_ref().is_none_or(|f| {
        f.max_level_hint()
            .is_some_and(|most| most < LevelFilter::DEBUG)
    });
    let filter = configured.unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    let json = std::env::var("OUTPOST_LOG_FORMAT").is_ok_and(|f| f == "json");
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(quiet.then(Quiet::new));
    if json {
        subscriber.with(lines.json()).init();
    } else {
        subscriber.with(lines).init();
    }
}

/// At most one line of a kind per interval. Shared by every thread logging that kind; lock
/// free.
#[derive(Debug)]
pub struct LogLimit {
    interval_ms: u64,
    epoch: Instant,
    /// When the last line was let through: ms since `epoch`, plus `interval_ms` (so 0 means
    /// none yet).
    last: AtomicU64,
    /// Lines left out since the last one let through.
    suppressed: AtomicU64,
}

impl LogLimit {
    /// One line per `interval` at most.
    pub fn new(interval: Duration) -> LogLimit {
        LogLimit {
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether to log a line now: `Some(n)` to log it, saying `n` lines of its kind were left
    /// out since the previous one; `None` to leave it out (it is counted for the next).
    pub fn admit(&self) -> Option<u64> {
        let elapsed = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let now = elapsed.saturating_add(self.interval_ms);
        let last = self.last.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= self.interval_ms
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// A line another crate logs for routine client behaviour that the node records itself.
#[derive(Debug)]
pub struct QuietLine {
    /// The exact target (the `log` record's module path).
    pub target: &'static str,
    /// How the message starts.
    pub starts: &'static str,
    /// Parts of which the message must contain one as well (empty: any message).
    pub contains: &'static [&'static str],
}

impl QuietLine {
    /// Whether `message` starts as this line does (and contains one of its parts).
    fn starts_with_of(&self, message: &str) -> bool {
        message.starts_with(self.starts)
            && (self.contains.is_empty() || self.contains.iter().any(|c| message.contains(c)))
    }
}

/// The lines left out of the default log, and who records their event instead.
pub const QUIET: &[QuietLine] = &[
    // A stored response could not be sent: the proxy's `logging` hook counts a client that
    // went away and logs any other failure (rate limited).
    QuietLine {
        target: "pingora_proxy::proxy_cache",
        starts: "Fail to serve cache: ",
        contains: &[],
    },
    // The client left before its request header was complete: counted by the connection
    // guard (`policy::connections`, phase request_header).
    QuietLine {
        target: "pingora_proxy",
        starts: "Fail to proxy: Downstream ",
        contains: &["while reading request headers"],
    },
    // An HTTP/2 connection closed before its preface (a browser's unused preconnect; the
    // server's SETTINGS may meet the closed socket first): counted by the connection guard
    // (phase h2_preface). An invalid preface is still logged.
    QuietLine {
        target: "pingora_core::apps",
        starts: "H2 handshake error",
        contains: &[
            "closed before reading preface",
            "without sending TLS close_notify",
            "Connection reset by peer",
            "Broken pipe",
        ],
    },
    // A client sent an IP address as SNI (RFC 6066 allows only host names): the handshake
    // goes on without SNI, the resolver logs it at debug.
    QuietLine {
        target: "rustls::msgs::handshake",
        starts: "Illegal SNI extension: ignoring IP address",
        contains: &[],
    },
];

/// Lines another crate logs once per event that the node cannot observe to count itself: let
/// through at most once per [`LOG_INTERVAL`] each.
pub const LIMITED: &[QuietLine] = &[
    // A TLS handshake failed: a TCP health check on an HTTPS port, a scanner, a client that
    // does not trust the certificate (Pingora logs an ERROR each; the handshake happens before
    // the node's code sees the connection).
    QuietLine {
        target: "pingora_core::services::listening",
        starts: "Downstream handshake error",
        contains: &[],
    },
];

/// Whether a line of `target` saying `message` is one of [`QUIET`].
pub fn is_quiet(target: &str, message: &str) -> bool {
    QUIET
        .iter()
        .any(|q| q.target == target && q.starts_with_of(message))
}

/// The layer leaving [`QUIET`] lines out, and [`LIMITED`] lines but one per interval.
struct Quiet {
    /// One per [`LIMITED`] line.
    limits: Vec<LogLimit>,
}

impl Quiet {
    fn new() -> Quiet {
        Quiet {
            limits: LIMITED
                .iter()
                .map(|_| LogLimit::new(LOG_INTERVAL))
                .collect(),
        }
    }
}

/// The target `tracing-log` gives the events it makes of `log` records; the record's own
/// target is their `log.target` field.
const LOG_BRIDGE: &str = "log";

/// The `log.target` field of an event made of a `log` record.
#[derive(Default)]
struct LogTarget(Option<String>);

impl Visit for LogTarget {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.0 = Some(value.to_string());
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
}

/// The `message` field of an event, as it would be written.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

impl<S: Subscriber> Layer<S> for Quiet {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let mut target = event.metadata().target();
        let mut bridged = LogTarget::default();
        if target == LOG_BRIDGE {
            event.record(&mut bridged);
            target = bridged.0.as_deref().unwrap_or(target);
        }
        let limited = LIMITED.iter().position(|q| q.target == target);
        if limited.is_none() && !QUIET.iter().any(|q| q.target == target) {
            return true;
        }
        let mut message = Message::default();
        event.record(&mut message);
        if let Some(i) = limited {
            if LIMITED[i].starts_with_of(&message.0) {
                return self.limits[i].admit().is_some();
            }
        }
        !is_quiet(target, &message.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_limit_lets_the_first_line_through_then_counts_the_rest() {
        let limit = LogLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.admit(), Some(0));
        assert_eq!(limit.admit(), None);
        assert_eq!(limit.admit(), None);
        // the next interval's line says how many were left out
        limit.last.store(0, Ordering::Relaxed);
        assert_eq!(limit.admit(), Some(2));
        assert_eq!(limit.admit(), None);
    }

    #[test]
    fn a_zero_interval_lets_every_line_through() {
        let limit = LogLimit::new(Duration::ZERO);
        assert!((0..5).all(|_| limit.admit() == Some(0)));
    }

    #[test]
    fn quiet_lines_are_matched_by_target_and_message() {
        let hit = "Fail to serve cache: Downstream WriteError context: while writing body";
        assert!(is_quiet("pingora_proxy::proxy_cache", hit));
        assert!(!is_quiet("pingora_proxy", hit), "another target");
        let header = "Fail to proxy: Downstream ConnectionClosed context: while reading request \
                      headers, bytes already read: 21, downstream session type: h1";
        assert!(is_quiet("pingora_proxy", header));
        // an upstream failure Pingora logs before a retry stays
        let retry = "Fail to proxy: Upstream ConnectError context: ..., tries: 1, retry: true";
        assert!(!is_quiet("pingora_proxy", retry));
        let preface = "H2 handshake error  HandshakeError context: while h2 handshaking with \
                       client cause: connection closed before reading preface";
        assert!(is_quiet("pingora_core::apps", preface));
        let reset = "H2 handshake error  HandshakeError context: while h2 handshaking with \
                     client cause: Broken pipe (os error 32)";
        assert!(is_quiet("pingora_core::apps", reset));
        let garbage = "H2 handshake error  HandshakeError context: while h2 handshaking with \
                       client cause: invalid preface";
        assert!(!is_quiet("pingora_core::apps", garbage));
        assert!(is_quiet(
            "rustls::msgs::handshake",
            "Illegal SNI extension: ignoring IP address presented as hostname (3132372e302e302e31)"
        ));
        assert!(!is_quiet(
            "rustls::msgs::handshake",
            "Illegal SNI hostname received \"a b\""
        ));
    }

    /// Messages a subscriber with the [`Quiet`] layer writes.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Written {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let mut message = Message::default();
            event.record(&mut message);
            if let Ok(mut w) = self.0.lock() {
                w.push(message.0);
            }
        }
    }

    #[test]
    fn the_quiet_layer_leaves_out_only_quiet_lines_and_limits_limited_ones() {
        let written = Written::default();
        let subscriber = tracing_subscriber::registry()
            .with(Some(Quiet::new()))
            .with(written.clone());
        tracing::subscriber::with_default(subscriber, || {
            // as tracing-log dispatches Pingora's `log` records
            use tracing::Level;
            let cache = "pingora_proxy::proxy_cache";
            let hit = "Fail to serve cache";
            tracing::event!(target: "log", Level::ERROR, log.target = cache, "{hit}: {}", "x");
            let lock = "Cache lock timeout, y";
            tracing::event!(target: "log", Level::ERROR, log.target = cache, "{lock}");
            tracing::event!(target: "log", Level::ERROR, log.target = "other", "{hit}: {}", "z");
            tracing::error!(target: "pingora_proxy::proxy_cache", "Fail to serve cache: {}", "w");
            tracing::warn!("Fail to serve cache: ours");
            // a limited line: the first of a burst only
            let listening = "pingora_core::services::listening";
            for _ in 0..5 {
                tracing::event!(target: "log", Level::ERROR, log.target = listening, "Downstream handshake error: eof");
            }
        });
        let written = written.0.lock().map(|w| w.clone()).unwrap_or_default();
        assert_eq!(
            written,
            [
                "Cache lock timeout, y",
                "Fail to serve cache: z",
                "Fail to serve cache: ours",
                "Downstream handshake error: eof"
            ]
        );
    }
}
