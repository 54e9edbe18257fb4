//! TLS for black-box tests: a throw-away certificate authority issuing leaf certificates for
//! given names and validity ([`TestCa`]), clients that trust it and send a chosen SNI, and the
//! TLS side of the test origin ([`super::TestOrigin::start_tls`]).
#![allow(dead_code)]

use super::origin::{plan, record, Planned, Recorded, State};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// A leaf certificate and its key, PEM, as issued by a [`TestCa`].
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The certificate (just the leaf; clients trust the CA).
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER: compare with what a server presented.
    pub der: Vec<u8>,
}

impl Leaf {
    /// Write `<stem>.crt` and `<stem>.key` into `dir` (replacing them); returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write certificate");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

/// When a leaf certificate is valid, relative to now.
#[derive(Clone, Copy, Debug)]
pub enum Validity {
    /// From a day ago for a year.
    Current,
    /// Expired yesterday (issued 30 days ago).
    Expired,
    /// Valid from tomorrow.
    NotYetValid,
}

/// A test certificate authority (ECDSA P-256), created afresh for each test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    serial: std::sync::atomic::AtomicU64,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Outpost test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            cert,
            key,
            serial: std::sync::atomic::AtomicU64::new(1000),
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate as a root for reqwest.
    pub fn root(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.pem().as_bytes()).expect("CA as reqwest root")
    }

    /// Write the CA certificate to `dir/ca.crt` (for a node's origin TLS settings).
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.crt");
        std::fs::write(&path, self.pem()).expect("write CA certificate");
        path
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), each with its own serial.
    pub fn leaf(&self, names: &[&str], validity: Validity) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).expect("leaf params");
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, first.as_str());
        }
        let now = time::OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        (params.not_before, params.not_after) = match validity {
            Validity::Current => (now - day, now + 365 * day),
            Validity::Expired => (now - 30 * day, now - day),
            Validity::NotYetValid => (now + day, now + 365 * day),
        };
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// A blocking client trusting `ca` (and nothing else) that sends `sni` for requests to
/// `https://<sni>:<port>/...` and connects to `addr`; it records the peer certificate
/// ([`peer_certificate`]). `h2`: `Some(true)` HTTP/2 only (still through ALPN), `Some(false)`
/// HTTP/1.1 only, `None` either, as ALPN decides.
pub fn client(
    ca: &TestCa,
    sni: &str,
    addr: SocketAddr,
    h2: Option<bool>,
) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca.root())
        .resolve(sni, addr)
        .tls_info(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10));
    b = match h2 {
        Some(true) => b.http2_prior_knowledge(),
        Some(false) => b.http1_only(),
        None => b,
    };
    b.build().expect("TLS client")
}

/// A TLS connection to `addr` trusting `ca`, with SNI `sni` and ALPN `alpn` (none if empty),
/// its handshake done and a 5 s read timeout: for requests no HTTP client would send.
pub fn raw_tls(
    ca: &TestCa,
    sni: &str,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.pem().as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA as a root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("SNI name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("handshake");
    }
    tls
}

/// The DER certificate the server presented for `resp` (clients from [`client`]).
pub fn peer_certificate(resp: &reqwest::blocking::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(|c| c.to_vec())
        .unwrap_or_default()
}

/// A rustls acceptor for the test origin: TLS 1.2/1.3, ALPN `h2, http/1.1` or `http/1.1`.
pub(super) fn acceptor(cert_pem: &str, key_pem: &str, h2: bool) -> tokio_rustls::TlsAcceptor {
    let chain = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("origin certificate PEM");
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .expect("origin key PEM")
        .expect("a private key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("origin certificate and key");
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Fields HTTP/2 forbids (RFC 9113 8.2.2); the HTTP/1 framing of a reply is dropped.
const CONNECTION_FIELDS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Serves one HTTP/2 connection with the origin's scripted replies (no truncation or stalls).
pub(super) async fn serve_h2<S>(stream: S, state: Arc<State>) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Full};
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let state = state.clone();
        async move {
            let (parts, body) = req.into_parts();
            let _ = body.collect().await;
            let rec = Recorded {
                method: parts.method.to_string(),
                uri: parts
                    .uri
                    .path_and_query()
                    .map_or("/".to_string(), |p| p.to_string()),
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .chain(
                        parts
                            .uri
                            .authority()
                            .map(|a| ("host".to_string(), a.to_string())),
                    )
                    .collect(),
                version: "HTTP/2.0".to_string(),
            };
            let (reply, hit_no) = record(&state, &rec);
            if let Some(d) = reply.delay {
                tokio::time::sleep(d).await;
            }
            let Planned {
                status,
                headers,
                send_body,
                mut body,
            } = plan(&rec, &reply, hit_no);
            if let Some(len) = reply.generated {
                body = super::origin::generated_body(0, len);
            }
            let mut resp = hyper::Response::builder().status(status);
            for (k, v) in &headers {
                if !CONNECTION_FIELDS.iter().any(|c| k.eq_ignore_ascii_case(c)) {
                    resp = resp.header(k.as_str(), v.as_str());
                }
            }
            if !send_body {
                body.clear();
            }
            Ok::<_, std::convert::Infallible>(
                resp.body(Full::new(bytes::Bytes::from(body)))
                    .expect("scripted response"),
            )
        }
    });
    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await
        .map_err(std::io::Error::other)
}
