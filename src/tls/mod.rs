//! TLS to clients: certificates read from PEM files and checked ([`load`]), chosen for each
//! handshake by SNI ([`resolver`]), reloaded when their files or the configuration change
//! ([`reload`]), and the HTTP -> HTTPS redirect of the rules that ask for it ([`redirect`]).
//!
//! Pingora's own `TlsSettings::build()` panics on a bad file, so nothing reaches it unchecked:
//! the listeners get a [`resolver::SniResolver`] over certificates loaded here.

pub mod redirect;
pub mod reload;
pub mod resolver;

use crate::config::CertificateConfig;
use pingora_core::tls::sign::CertifiedKey;
use pingora_core::tls::{CertificateDer, CryptoProvider, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a certificate entry cannot be served; each names the PEM file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file could not be read (missing, permissions).
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The entry's field naming the file: `cert` or `key`.
        field: &'static str,
        /// The PEM file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not PEM, or a PEM section in it is damaged.
    #[error("{}: not a valid PEM file: {source}", path.display())]
    Pem {
        /// The entry's field naming the file: `cert` or `key`.
        field: &'static str,
        /// The PEM file.
        path: PathBuf,
        /// The parser's error.
        source: std::io::Error,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("{}: no certificate (PEM \"BEGIN CERTIFICATE\") in the file", path.display())]
    NoCertificate {
        /// The PEM file.
        path: PathBuf,
    },
    /// The leaf certificate is not a valid X.509 certificate.
    #[error("{}: the certificate cannot be parsed: {reason}", path.display())]
    BadCertificate {
        /// The PEM file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The key file holds no private key.
    #[error("{}: no private key (PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\") in the file", path.display())]
    NoKey {
        /// The PEM file.
        path: PathBuf,
    },
    /// The private key is of a kind the TLS library cannot sign with.
    #[error("{}: unsupported private key: {reason}", path.display())]
    UnsupportedKey {
        /// The PEM file.
        path: PathBuf,
        /// What the TLS library said.
        reason: String,
    },
    /// The private key is not the certificate's.
    #[error("{}: the private key does not match the certificate in {}", path.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        path: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
}

impl CertError {
    /// The entry's field whose file is at fault: `cert` or `key`.
    pub fn field(&self) -> &'static str {
        match self {
            CertError::Read { field, .. } | CertError::Pem { field, .. } => field,
            CertError::NoCertificate { .. } | CertError::BadCertificate { .. } => "cert",
            CertError::NoKey { .. }
            | CertError::UnsupportedKey { .. }
            | CertError::KeyMismatch { .. } => "key",
        }
    }

    /// The PEM file at fault.
    pub fn path(&self) -> &Path {
        match self {
            CertError::Read { path, .. }
            | CertError::Pem { path, .. }
            | CertError::NoCertificate { path }
            | CertError::BadCertificate { path, .. }
            | CertError::NoKey { path }
            | CertError::UnsupportedKey { path, .. }
            | CertError::KeyMismatch { path, .. } => path,
        }
    }
}

/// One certificate entry read and checked: ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    /// The chain and its signing key, as handshakes use them.
    pub key: Arc<CertifiedKey>,
    /// SNI names it serves, lowercase (configured, else the certificate's DNS names).
    pub names: Vec<String>,
    /// The leaf's notBefore.
    pub not_before: SystemTime,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
    /// The leaf's serial number (hex), for logs.
    pub serial: String,
    /// The certificate file, for logs.
    pub file: PathBuf,
}

impl LoadedCertificate {
    /// A short name for logs and the expiry metric: its first SNI name, else its file.
    pub fn label(&self) -> String {
        self.names
            .first()
            .cloned()
            .unwrap_or_else(|| self.file.display().to_string())
    }

    /// Time left until notAfter at `now` (negative once expired), in seconds.
    pub fn expires_in(&self, now: SystemTime) -> i64 {
        signed_secs(self.not_after, now)
    }
}

/// `a - b` in whole seconds.
fn signed_secs(a: SystemTime, b: SystemTime) -> i64 {
    match a.duration_since(b) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The process's rustls crypto provider (ring, as Pingora installs it).
fn provider() -> Arc<CryptoProvider> {
    pingora_core::tls::install_default_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .expect("a crypto provider was installed just above")
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        field,
        path: path.to_path_buf(),
        source,
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = read("cert", path)?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertError::Pem {
            field: "cert",
            path: path.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let pem = read("key", path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| CertError::Pem {
            field: "key",
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| CertError::NoKey {
            path: path.to_path_buf(),
        })
}

/// What the leaf certificate says about itself: DNS names, validity, serial.
struct Leaf {
    dns_names: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: String,
}

fn parse_leaf(der: &CertificateDer<'_>, path: &Path) -> Result<Leaf, CertError> {
    let bad = |reason: String| CertError::BadCertificate {
        path: path.to_path_buf(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    let time = |t: &x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    };
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(name) => {
                    Some(name.trim_end_matches('.').to_ascii_lowercase())
                }
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(bad(format!("subjectAltName: {e}"))),
    };
    Ok(Leaf {
        dns_names,
        not_before: time(&cert.validity().not_before),
        not_after: time(&cert.validity().not_after),
        serial: cert.raw_serial_as_string(),
    })
}

/// Read and check one certificate entry: a chain, a private key the TLS library can sign with,
/// and the key matching the leaf certificate. Dates are not checked here (an expired
/// certificate is served, with a warning: see [`reload::Tls`]).
pub fn load(entry: &CertificateConfig) -> Result<LoadedCertificate, CertError> {
    let chain = read_chain(&entry.cert)?;
    let leaf = parse_leaf(&chain[0], &entry.cert)?;
    let der = read_key(&entry.key)?;
    let signing =
        provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| CertError::UnsupportedKey {
                path: entry.key.clone(),
                reason: e.to_string(),
            })?;
    let key = CertifiedKey::new(chain, signing);
    if key.keys_match().is_err() {
        return Err(CertError::KeyMismatch {
            path: entry.key.clone(),
            cert: entry.cert.clone(),
        });
    }
    Ok(LoadedCertificate {
        key: Arc::new(key),
        names: if entry.names.is_empty() {
            leaf.dns_names
        } else {
            entry.names.clone()
        },
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        serial: leaf.serial,
        file: entry.cert.clone(),
    })
}
