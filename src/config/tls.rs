//! `[tls]`: the certificates of the HTTPS listeners, typed and validated. The PEM files are
//! read and checked here (a missing file, no certificate, no usable key, a key of another
//! certificate), so `outpost check` and start-up refuse them with the file and key path.

use super::error::Errors;
use super::file::TlsSection;
use super::validate::{duration, WAIT};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often certificate files are checked for changes unless `tls.reload_check` says.
pub const DEFAULT_RELOAD_CHECK: Duration = Duration::from_secs(10);

/// `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Offer HTTP/2 through ALPN (`h2`, `http/1.1`); false: HTTP/1.1 only.
    pub h2: bool,
    /// How often the certificate and key files are checked for changes; zero: never (a
    /// configuration reload still reloads them).
    pub reload_check: Duration,
    /// The certificates, in config order; exactly one is the default when any are declared.
    pub certificates: Vec<CertificateConfig>,
}

/// One `[[tls.certificates]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// PEM certificate chain (leaf first), resolved against the config file's directory.
    pub cert: PathBuf,
    /// PEM private key, resolved against the config file's directory.
    pub key: PathBuf,
    /// SNI names served, lowercase; `*.example.com` matches one label. Empty: the
    /// certificate's DNS names.
    pub names: Vec<String>,
    /// Served when SNI is absent or matches no certificate.
    pub default: bool,
}

impl CertificateConfig {
    /// The key path of this entry's `field` in the file (`tls.certificates[1].cert`).
    pub fn key_path(index: usize, field: &str) -> String {
        format!("tls.certificates[{index}].{field}")
    }
}

/// Whether `name` is a DNS name or a `*.`-wildcard over one, as SNI matching understands it.
fn valid_name(name: &str) -> bool {
    let exact = name.strip_prefix("*.").unwrap_or(name);
    !exact.is_empty()
        && exact.len() <= 253
        && exact.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `path` as written, relative to the directory of the config file `source`.
fn resolve(source: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    match source.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// Validate `[tls]` of the config file `source`, reading every certificate and key.
pub(super) fn tls(errs: &mut Errors, s: &TlsSection, source: &Path) -> TlsConfig {
    let reload_check = duration(
        errs,
        "tls.reload_check",
        s.reload_check.as_ref(),
        DEFAULT_RELOAD_CHECK,
        WAIT,
    );
    let mut certificates = Vec::new();
    for (i, c) in s.certificates.iter().enumerate() {
        let key = |field: &str| CertificateConfig::key_path(i, field);
        let mut path = |field: &str, value: &Option<String>| match value.as_deref() {
            Some(p) if !p.is_empty() => Some(resolve(source, p)),
            _ => {
                errs.push(key(field), format!("missing: the PEM {field} file"));
                None
            }
        };
        let (cert, pem_key) = (path("cert", &c.cert), path("key", &c.key));
        let mut names = Vec::new();
        for (j, name) in c.names.iter().flatten().enumerate() {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if valid_name(&name) {
                names.push(name);
            } else {
                errs.push(
                    format!("{}[{j}]", key("names")),
                    format!("{name:?} is not a DNS name or a wildcard such as \"*.example.com\""),
                );
            }
        }
        if c.names.as_ref().is_some_and(|n| n.is_empty()) {
            errs.push(
                key("names"),
                "an empty list serves no name: leave it out to serve the certificate's names",
            );
        }
        if let (Some(cert), Some(pem_key)) = (cert, pem_key) {
            let declared = CertificateConfig {
                cert,
                key: pem_key,
                names,
                default: c.default.unwrap_or(false),
            };
            if let Err(e) = crate::tls::load(&declared) {
                errs.push(key(e.field()), e.to_string());
            }
            certificates.push(declared);
        }
    }
    let defaults: Vec<usize> = s
        .certificates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.default == Some(true))
        .map(|(i, _)| i)
        .collect();
    if let [_, second, ..] = defaults[..] {
        errs.push(
            CertificateConfig::key_path(second, "default"),
            format!(
                "only one certificate can be the default (tls.certificates[{}] already is)",
                defaults[0]
            ),
        );
    }
    if let Some(first) = certificates.first_mut() {
        if defaults.is_empty() {
            first.default = true;
        }
    }
    TlsConfig {
        h2: s.h2.unwrap_or(true),
        reload_check,
        certificates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_names_or_one_leading_wildcard() {
        assert!(valid_name("example.com"));
        assert!(valid_name("*.example.com"));
        assert!(valid_name("localhost"));
        assert!(!valid_name("*"));
        assert!(!valid_name("a.*.example.com"));
        assert!(!valid_name("exa mple.com"));
        assert!(!valid_name("a..b"));
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        assert_eq!(
            resolve(Path::new("conf/outpost.toml"), "tls/a.crt"),
            PathBuf::from("conf/tls/a.crt")
        );
        assert_eq!(
            resolve(Path::new("outpost.toml"), "tls/a.crt"),
            PathBuf::from("tls/a.crt")
        );
        assert_eq!(
            resolve(Path::new("conf/outpost.toml"), "/etc/a.crt"),
            PathBuf::from("/etc/a.crt")
        );
    }
}
