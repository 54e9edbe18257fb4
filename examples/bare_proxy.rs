//! The floor of a Pingora-based pass-through: a proxy with no hooks beyond choosing the peer.
//!
//! `cargo run --release --example bare_proxy -- LISTEN ORIGIN` (e.g. `127.0.0.1:19083
//! 127.0.0.1:19000`) proxies every request to ORIGIN over plain HTTP/1.1 with keep-alive, one
//! worker thread, no cache, no logging. Measure its CPU per request with the same `wrk` load as
//! Outpost's pass row (`benches/load/README.md`) to see what Outpost's own hooks add.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Bare(String);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.0.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = || anyhow::anyhow!("usage: bare_proxy LISTEN ORIGIN");
    let listen = args.next().ok_or_else(usage)?;
    let origin = args.next().ok_or_else(usage)?;
    let conf = ServerConf {
        threads: 1,
        upstream_keepalive_pool_size: 256,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut service = http_proxy_service(&server.configuration, Bare(origin));
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever()
}
