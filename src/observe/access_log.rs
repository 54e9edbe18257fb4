//! The access log: one line per request (JSON or NCSA combined), formatted on the request path
//! and handed to a writer thread through a bounded queue. A full queue (a slow disk or pipe)
//! drops the line and counts it: logging never makes a request wait.

use crate::config::{AccessLogConfig, AccessLogFormat};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// When it ended (RFC 3339, UTC, milliseconds).
    pub ts: String,
    /// The client's address (behind trusted proxies: the one they name).
    pub client: String,
    /// Request method.
    pub method: &'a str,
    /// Host (normalised, without port).
    pub host: &'a str,
    /// Request target (path and query).
    pub uri: &'a str,
    /// HTTP version of the request.
    pub proto: &'static str,
    /// Response status (0: none sent).
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Cache status label (hit, miss, stale, bypass, ...).
    pub cache: &'a str,
    /// Where the body came from: memory, disk, origin or node.
    pub source: &'static str,
    /// The upstream server asked (origin or shield), if any.
    pub upstream: Option<String>,
    /// Milliseconds from the upstream request to its response header, if one was asked.
    pub origin_ms: Option<f64>,
    /// Milliseconds from the request's start to the end of its response.
    pub ms: f64,
    /// The request id.
    pub id: Option<&'a str>,
    /// `User-Agent`.
    pub ua: Option<&'a str>,
    /// `Referer`.
    pub referer: Option<&'a str>,
}

impl Record<'_> {
    /// The line (with its newline) in `format`.
    pub fn line(&self, format: AccessLogFormat) -> Vec<u8> {
        match format {
            AccessLogFormat::Json => {
                let mut out = serde_json::to_vec(self).unwrap_or_default();
                out.push(b'\n');
                out
            }
            AccessLogFormat::Combined => {
                // %h - - [%t] "%r" %s %b "%{Referer}i" "%{User-agent}i" + cache fields
                let q = |v: Option<&str>| v.map_or("-".to_string(), |v| v.replace('"', "\\\""));
                let when = httpdate::fmt_http_date(SystemTime::now());
                format!(
                    "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" cache={} source={} id={} origin_ms={} ms={:.3}\n",
                    self.client,
                    when,
                    self.method,
                    self.uri.replace('"', "%22"),
                    self.proto,
                    self.status,
                    self.bytes,
                    q(self.referer),
                    q(self.ua),
                    self.cache,
                    self.source,
                    self.id.unwrap_or("-"),
                    self.origin_ms.map_or("-".to_string(), |m| format!("{m:.3}")),
                    self.ms
                )
                .into_bytes()
            }
        }
    }
}

/// The access log of a node.
pub struct AccessLog {
    config: AccessLogConfig,
    tx: Option<SyncSender<Vec<u8>>>,
    /// Requests seen (for sampling).
    seen: AtomicU64,
    /// Asks the writer to reopen its file (after a log rotation).
    reopen: Arc<AtomicBool>,
    dropped: prometheus::IntCounter,
    written: Arc<AtomicU64>,
}

/// Where the writer writes.
enum Sink {
    Stdout(std::io::Stdout),
    File(PathBuf, std::io::BufWriter<std::fs::File>),
}

fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl AccessLog {
    /// Start the writer for `config` (nothing when disabled). A file that cannot be opened is
    /// an error naming it.
    pub fn start(
        config: &AccessLogConfig,
        dropped: prometheus::IntCounter,
    ) -> anyhow::Result<AccessLog> {
        let reopen = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let tx = if config.enabled {
            let sink = match &config.path {
                None => Sink::Stdout(std::io::stdout()),
                Some(path) => {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir).map_err(|e| {
                            anyhow::anyhow!("access_log.path: cannot create {}: {e}", dir.display())
                        })?;
                    }
                    let file = open(path).map_err(|e| {
                        anyhow::anyhow!("access_log.path: cannot open {}: {e}", path.display())
                    })?;
                    Sink::File(
                        path.clone(),
                        std::io::BufWriter::with_capacity(64 * 1024, file),
                    )
                }
            };
            let (tx, rx) = sync_channel(config.buffer);
            let (reopen2, written2) = (reopen.clone(), written.clone());
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || write_lines(rx, sink, &reopen2, &written2))
                .map_err(|e| anyhow::anyhow!("starting the access log writer: {e}"))?;
            Some(tx)
        } else {
            None
        };
        Ok(AccessLog {
            config: config.clone(),
            tx,
            seen: AtomicU64::new(0),
            reopen,
            dropped,
            written,
        })
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether the next request with `status` is logged (errors always are; others by the
    /// sampling fraction, evenly: with 0.25, every fourth).
    pub fn wanted(&self, status: u16) -> bool {
        if self.tx.is_none() {
            return false;
        }
        if status == 0 || status >= 500 || self.config.sample >= 1.0 {
            return true;
        }
        super::evenly_sampled(
            self.seen.fetch_add(1, Ordering::Relaxed),
            self.config.sample,
        )
    }

    /// Queue `record`'s line; dropped (and counted) if the writer is behind.
    pub fn write(&self, record: &Record<'_>) {
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(record.line(self.config.format)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Reopen the log file before the next line (after `logrotate` moved it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// The writer thread: each wake-up writes every queued line, then flushes; until every sender
/// is gone.
fn write_lines(rx: Receiver<Vec<u8>>, mut sink: Sink, reopen: &AtomicBool, written: &AtomicU64) {
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                flush(&mut sink);
                return;
            }
        };
        if reopen.swap(false, Ordering::Relaxed) {
            if let Sink::File(path, w) = &mut sink {
                let _ = w.flush();
                match open(path) {
                    Ok(f) => *w = std::io::BufWriter::with_capacity(64 * 1024, f),
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "access log: cannot reopen")
                    }
                }
            }
        }
        let Some(first) = first else {
            continue;
        };
        for line in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            let ok = match &mut sink {
                Sink::Stdout(out) => out.lock().write_all(&line).is_ok(),
                Sink::File(_, w) => w.write_all(&line).is_ok(),
            };
            if ok {
                written.fetch_add(1, Ordering::Relaxed);
            }
        }
        flush(&mut sink);
    }
}

fn flush(sink: &mut Sink) {
    let _ = match sink {
        Sink::Stdout(out) => out.lock().flush(),
        Sink::File(_, w) => w.flush(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sample: f64) -> AccessLogConfig {
        AccessLogConfig {
            enabled: true,
            path: None,
            format: AccessLogFormat::Json,
            sample,
            buffer: 4,
            request_id_header: None,
        }
    }

    fn record() -> Record<'static> {
        Record {
            ts: "2026-12-01T00:00:00.000Z".into(),
            client: "192.0.2.1".into(),
            method: "GET",
            host: "example.com",
            uri: "/a?\"b\"",
            proto: "HTTP/1.1",
            status: 200,
            bytes: 12,
            cache: "hit",
            source: "memory",
            upstream: None,
            origin_ms: None,
            ms: 0.5,
            id: Some("abc"),
            ua: Some("curl/8"),
            referer: None,
        }
    }

    #[test]
    fn lines_in_both_formats() {
        let json: serde_json::Value =
            serde_json::from_slice(&record().line(AccessLogFormat::Json)).unwrap();
        assert_eq!(json["uri"], "/a?\"b\"");
        assert_eq!(json["status"], 200);
        let combined = String::from_utf8(record().line(AccessLogFormat::Combined)).unwrap();
        assert!(combined.starts_with("192.0.2.1 - - ["), "{combined}");
        assert!(combined.contains("\"GET /a?%22b%22 HTTP/1.1\" 200 12 \"-\" \"curl/8\" cache=hit"));
        assert!(combined.ends_with('\n'));
    }

    #[test]
    fn sampling_is_even_and_errors_always_pass() {
        let metrics = crate::metrics::Metrics::new(1, 1).unwrap();
        let log = AccessLog::start(&config(0.25), metrics.access_log_dropped.clone()).unwrap();
        let kept = (0..100).filter(|_| log.wanted(200)).count();
        assert_eq!(kept, 25);
        assert!((0..10).all(|_| log.wanted(503)));
        assert!(log.wanted(0));
    }
}
