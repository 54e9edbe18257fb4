//! The node's TLS state ([`Tls`]): the certificates declared, the resolver serving them, and
//! their reloads — when their files change ([`CertificateWatcher`], every `tls.reload_check`)
//! and on a configuration reload. A reload loads every file first and swaps the whole set only
//! if all of them are good; otherwise the previous certificates stay in service and the error,
//! naming the file, is logged and counted.

use super::resolver::{CertificateSet, SniResolver};
use super::{load, CertError, LoadedCertificate};
use crate::config::{CertificateConfig, TlsConfig};
use crate::metrics::TlsMetrics;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::ALPN;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A certificate entry that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", CertificateConfig::key_path(*index, source.field()))]
pub struct LoadError {
    /// Index of the entry in `tls.certificates`.
    pub index: usize,
    /// What is wrong with its files.
    pub source: CertError,
}

/// Load every entry of `entries` (not empty) or report the first that fails.
pub fn load_set(entries: &[CertificateConfig]) -> Result<CertificateSet, LoadError> {
    let certificates = entries
        .iter()
        .enumerate()
        .map(|(index, e)| load(e).map_err(|source| LoadError { index, source }))
        .collect::<Result<Vec<_>, _>>()?;
    let default = entries.iter().position(|e| e.default).unwrap_or(0);
    Ok(CertificateSet::new(certificates, default))
}

/// A hash of the contents of every file of `entries` (a missing file hashes as missing), so
/// that any change — rewritten, replaced, removed — shows.
fn fingerprint(entries: &[CertificateConfig]) -> u64 {
    let mut all = Vec::new();
    for path in entries.iter().flat_map(|e| [&e.cert, &e.key]) {
        all.extend_from_slice(path.as_os_str().as_encoded_bytes());
        match std::fs::read(path) {
            Ok(bytes) => {
                all.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                all.extend_from_slice(&bytes);
            }
            Err(e) => all.extend_from_slice(format!("\0unreadable: {:?}\0", e.kind()).as_bytes()),
        }
    }
    xxhash_rust::xxh3::xxh3_64(&all)
}

/// The files being watched and how they looked at the last load attempt.
struct Watched {
    entries: Vec<CertificateConfig>,
    fingerprint: u64,
}

/// TLS of the HTTPS listeners: the certificate resolver and what reloads it.
pub struct Tls {
    resolver: Arc<SniResolver>,
    watched: Mutex<Watched>,
    metrics: TlsMetrics,
    h2: bool,
    reload_check: Duration,
}

impl Tls {
    /// Load the certificates of `config` (checked by validation, but files can change
    /// meanwhile), warning about any expired or not yet valid one.
    pub fn new(config: &TlsConfig, metrics: TlsMetrics) -> Result<Tls, LoadError> {
        let fingerprint = fingerprint(&config.certificates);
        let set = load_set(&config.certificates)?;
        announce(&set, &metrics);
        Ok(Tls {
            resolver: Arc::new(SniResolver::new(set)),
            watched: Mutex::new(Watched {
                entries: config.certificates.clone(),
                fingerprint,
            }),
            metrics,
            h2: config.h2,
            reload_check: config.reload_check,
        })
    }

    /// Pingora settings for one HTTPS listener: TLS 1.2 and 1.3, this node's resolver, ALPN
    /// `h2, http/1.1` (or `http/1.1` alone without `tls.h2`).
    pub fn listener_settings(&self) -> pingora_core::Result<TlsSettings> {
        // the paths are unused: a resolver is set, and build() then reads no file
        let mut settings = TlsSettings::intermediate("", "")?;
        settings.set_cert_resolver(self.resolver.clone());
        if self.h2 {
            settings.enable_h2();
        } else {
            settings.set_alpn(ALPN::H1);
        }
        Ok(settings)
    }

    /// The certificates new handshakes get.
    pub fn current(&self) -> Arc<CertificateSet> {
        self.resolver.current()
    }

    /// Load `entries` (a reloaded configuration's) and serve them to new handshakes; on
    /// error keep the current certificates. `cause` says what asked, for the log.
    pub fn reload(
        &self,
        entries: &[CertificateConfig],
        cause: &'static str,
    ) -> Result<usize, LoadError> {
        let mut watched = self.watched.lock();
        watched.entries = entries.to_vec();
        watched.fingerprint = fingerprint(entries);
        self.swap(entries, cause)
    }

    /// Reload when a watched file changed since the last attempt (each change is tried once:
    /// a bad file is reported once, not at every check). Returns whether anything changed.
    pub fn check_files(&self) -> bool {
        let mut watched = self.watched.lock();
        let now = fingerprint(&watched.entries);
        if now == watched.fingerprint {
            return false;
        }
        watched.fingerprint = now;
        let _ = self.swap(&watched.entries, "files changed");
        true
    }

    fn swap(&self, entries: &[CertificateConfig], cause: &'static str) -> Result<usize, LoadError> {
        match load_set(entries) {
            Ok(set) => {
                announce(&set, &self.metrics);
                let n = set.certificates().len();
                self.resolver.swap(set);
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(cause, certificates = n, "TLS certificates reloaded");
                Ok(n)
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(
                    cause,
                    key = %CertificateConfig::key_path(e.index, e.source.field()),
                    file = %e.source.path().display(),
                    error = %e.source,
                    "TLS certificates not reloaded: the previous ones are still served"
                );
                Err(e)
            }
        }
    }
}

/// Log the certificates of `set`, warn about dates, and set their expiry gauges.
fn announce(set: &CertificateSet, metrics: &TlsMetrics) {
    let now = SystemTime::now();
    metrics.expiry.reset();
    for c in set.certificates() {
        let expires_in = c.expires_in(now);
        metrics
            .expiry
            .with_label_values(&[&c.label()])
            .set(expires_in);
        warn_about_dates(c, now);
        tracing::info!(
            file = %c.file.display(),
            names = ?c.names,
            serial = %c.serial,
            expires_in_days = expires_in / 86_400,
            "TLS certificate loaded"
        );
    }
}

fn warn_about_dates(c: &LoadedCertificate, now: SystemTime) {
    let date = |t: SystemTime| httpdate::fmt_http_date(t);
    if c.not_after < now {
        tracing::warn!(
            file = %c.file.display(),
            names = ?c.names,
            not_after = %date(c.not_after),
            "TLS certificate has expired: clients will refuse it"
        );
    } else if c.not_before > now {
        tracing::warn!(
            file = %c.file.display(),
            names = ?c.names,
            not_before = %date(c.not_before),
            "TLS certificate is not valid yet: clients will refuse it"
        );
    }
    if c.names.is_empty() {
        tracing::warn!(
            file = %c.file.display(),
            "TLS certificate names no DNS name and none is configured: served only as the default"
        );
    }
}

/// Checks the certificate and key files every `tls.reload_check` and reloads them when they
/// changed.
pub struct CertificateWatcher {
    /// The node's TLS state.
    pub tls: Arc<Tls>,
}

#[async_trait]
impl BackgroundService for CertificateWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let every = self.tls.reload_check;
        if every.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let tls = self.tls.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || tls.check_files()).await {
                tracing::error!(error = %e, "TLS certificate check failed");
            }
        }
    }
}
