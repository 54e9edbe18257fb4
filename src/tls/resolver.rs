//! Which certificate a handshake gets: by SNI, the exact name first, then a wildcard
//! (`*.example.com` covers exactly one more label), then the default certificate. The set is
//! immutable and swapped whole ([`SniResolver::swap`]): a handshake sees the old set or the new
//! one, never a mix, and established connections keep the certificate they got.

use super::LoadedCertificate;
use arc_swap::ArcSwap;
use pingora_core::tls::sign::CertifiedKey;
use pingora_core::tls::{ClientHello, ResolvesServerCert};
use std::collections::HashMap;
use std::sync::Arc;

/// The certificates served, indexed by the names they serve.
#[derive(Debug)]
pub struct CertificateSet {
    certificates: Vec<LoadedCertificate>,
    /// Exact name -> index; the first certificate naming it wins.
    exact: HashMap<String, usize>,
    /// `example.com` of `*.example.com` -> index; the first wins.
    wildcard: HashMap<String, usize>,
    default: usize,
}

impl CertificateSet {
    /// Index `certificates` (not empty) by name; `default` (an index into it) answers SNI that
    /// matches nothing and handshakes without SNI.
    pub fn new(certificates: Vec<LoadedCertificate>, default: usize) -> CertificateSet {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, c) in certificates.iter().enumerate() {
            for name in &c.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        let default = default.min(certificates.len().saturating_sub(1));
        CertificateSet {
            certificates,
            exact,
            wildcard,
            default,
        }
    }

    /// The certificates, in config order.
    pub fn certificates(&self) -> &[LoadedCertificate] {
        &self.certificates
    }

    /// The certificate for a handshake that asked for `sni` (`None`: no SNI); `None` only
    /// when the set is empty.
    pub fn select(&self, sni: Option<&str>) -> Option<&LoadedCertificate> {
        let index = sni
            .map(|name| name.trim_end_matches('.').to_ascii_lowercase())
            .and_then(|name| {
                self.exact.get(&name).copied().or_else(|| {
                    let (_, parent) = name.split_once('.')?;
                    self.wildcard.get(parent).copied()
                })
            })
            .unwrap_or(self.default);
        self.certificates.get(index)
    }
}

/// The listeners' certificate resolver: picks from the current [`CertificateSet`] per handshake.
#[derive(Debug)]
pub struct SniResolver {
    current: ArcSwap<CertificateSet>,
}

impl SniResolver {
    /// A resolver serving `set`.
    pub fn new(set: CertificateSet) -> SniResolver {
        SniResolver {
            current: ArcSwap::from_pointee(set),
        }
    }

    /// Serve `set` to new handshakes from now on.
    pub fn swap(&self, set: CertificateSet) {
        self.current.store(Arc::new(set));
    }

    /// The set new handshakes get.
    pub fn current(&self) -> Arc<CertificateSet> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        if sni.is_none() {
            // rustls's WARN for an IP address sent as SNI is left out of the log
            // (observe::logging::QUIET): this line says it, at debug
            tracing::debug!("TLS handshake without a host name (no SNI, or an IP address)");
        }
        self.current.load().select(sni).map(|c| c.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn cert(names: &[&str], serial: &str) -> LoadedCertificate {
        // selection never looks at the chain: a bare signing key will do
        let pair = rcgen::KeyPair::generate().expect("key pair");
        let der = pingora_core::tls::PrivateKeyDer::try_from(pair.serialize_der()).expect("der");
        let signing = crate::tls::provider()
            .key_provider
            .load_private_key(der)
            .expect("signing key");
        LoadedCertificate {
            key: Arc::new(CertifiedKey::new(vec![], signing)),
            names: names.iter().map(|n| n.to_string()).collect(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH,
            serial: serial.into(),
            file: "x.crt".into(),
        }
    }

    fn chosen(set: &CertificateSet, sni: Option<&str>) -> String {
        set.select(sni)
            .map(|c| c.serial.clone())
            .unwrap_or_default()
    }

    #[test]
    fn exact_name_then_wildcard_then_default() {
        let set = CertificateSet::new(
            vec![
                cert(&["example.com", "*.example.com"], "wild"),
                cert(&["www.example.com"], "www"),
                cert(&["other.test"], "other"),
            ],
            2,
        );
        assert_eq!(chosen(&set, Some("www.example.com")), "www");
        assert_eq!(chosen(&set, Some("WWW.Example.COM.")), "www");
        assert_eq!(chosen(&set, Some("img.example.com")), "wild");
        assert_eq!(chosen(&set, Some("example.com")), "wild");
        // a wildcard covers one label only
        assert_eq!(chosen(&set, Some("a.b.example.com")), "other");
        assert_eq!(chosen(&set, Some("unknown.test")), "other");
        assert_eq!(chosen(&set, None), "other");
    }

    #[test]
    fn the_first_certificate_naming_a_name_wins() {
        let set = CertificateSet::new(vec![cert(&["a.test"], "1"), cert(&["a.test"], "2")], 1);
        assert_eq!(chosen(&set, Some("a.test")), "1");
    }
}
