//! A minimal HTTP client of a node's admin and metrics listeners for the CLI (`outpost purge`,
//! `outpost top`): one HTTP/1.1 request per connection over plain TCP (both listeners speak
//! plain HTTP, on loopback by default).

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
    exchange(
        admin,
        "--admin",
        "POST",
        path,
        Some(token),
        Some(("application/json", body)),
    )
}

/// `GET <base>/<path>`, with the bearer `token` if given; `flag` names the command-line option
/// `base` came from, for error messages.
pub fn get(base: &str, flag: &str, path: &str, token: Option<&str>) -> anyhow::Result<Answer> {
    exchange(base, flag, "GET", path, token, None)
}

/// `base` with `http://` in front if it has no scheme: `127.0.0.1:9091` is
/// `http://127.0.0.1:9091`.
pub fn http_url(base: &str) -> String {
    match base.contains("://") {
        true => base.to_string(),
        false => format!("http://{base}"),
    }
}

fn exchange(
    base: &str,
    flag: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &str)>,
) -> anyhow::Result<Answer> {
    let url = url::Url::parse(&http_url(base))
        .with_context(|| format!("{flag} {base:?} is not a URL"))?;
    if url.scheme() != "http" {
        bail!("{flag} {base:?}: the admin and metrics listeners speak plain http://");
    }
    let host = url
        .host_str()
        .with_context(|| format!("{flag} {base:?} has no host"))?;
    let port = url.port().unwrap_or(80);
    let timeout = Duration::from_secs(10);
    // every address of the name in turn: "localhost" may resolve to ::1 first
    let mut stream = None;
    let mut last_error = None;
    for addr in (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
    {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let mut stream = match (stream, last_error) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e).context(format!("cannot connect to {host}:{port}")),
        (None, None) => bail!("no address for {host}"),
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some((content_type, body)) = body {
        request.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("Connection: close\r\n\r\n");
    if let Some((_, body)) = body {
        request.push_str(body);
    }
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer of {host}:{port}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("the answer of {host}:{port} has no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("the answer of {host}:{port} has no status"))?;
    Ok(Answer {
        status,
        body: body.to_string(),
    })
}
