//! A minimal client of the admin API for `outpost purge`: one HTTP/1.1 request over a plain TCP
//! connection (the admin listener is plain HTTP, on loopback by default).

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// An admin API answer: status code and body.
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// Response body.
    pub body: String,
}

/// `POST <admin>/<path>` with a JSON `body` and the bearer `token`.
pub fn post_json(admin: &str, path: &str, token: &str, body: &str) -> anyhow::Result<Answer> {
    let url = url::Url::parse(admin).with_context(|| format!("--admin {admin:?} is not a URL"))?;
    if url.scheme() != "http" {
        bail!("--admin {admin:?}: the admin API speaks plain http://");
    }
    let host = url
        .host_str()
        .with_context(|| format!("--admin {admin:?} has no host"))?;
    let port = url.port().unwrap_or(80);
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("no address for {host}"))?;
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to the admin API at {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .context("reading the admin API's answer")?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the admin API's answer has no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the admin API's answer has no status")?;
    Ok(Answer {
        status,
        body: body.to_string(),
    })
}
