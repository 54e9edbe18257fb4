//! HTTP versions: Outpost answers with its own version (RFC 9110 2.5), whatever the origin spoke.
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;

/// A minimal HTTP/1.0 origin: one response per connection, then close. Counts requests.
fn http10_origin() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = "old-school";
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nCache-Control: max-age=60\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, count)
}

#[test]
fn responses_from_an_http10_origin_are_sent_as_http11_and_cached() {
    let (url, count) = http10_origin();
    let node = NodeConfig::new(&url).start();
    for i in 0..2 {
        let r = node.get("/v");
        assert_eq!(r.version(), reqwest::Version::HTTP_11, "request {i}");
        let cs = cache_status(&r);
        assert_eq!(r.text().unwrap(), "old-school");
        if i == 1 {
            assert!(cs_has(&cs, "hit"), "{cs}");
        }
    }
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
}
