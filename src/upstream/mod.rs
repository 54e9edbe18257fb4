//! Upstream origins: the peers Outpost fetches from.
//!
//! One origin per `[[origins]]` entry for now; pools, health checks and shields build on
//! [`Origin`] later.

use crate::config::OriginConfig;
use pingora_core::upstreams::peer::HttpPeer;

/// An origin server with its connection settings prepared.
pub struct Origin {
    /// The validated config entry.
    pub config: OriginConfig,
    peer: HttpPeer,
}

impl Origin {
    /// Prepare the peer template for `config`.
    pub fn new(config: OriginConfig) -> Self {
        let mut peer = HttpPeer::new(config.addr, false, String::new());
        peer.options.connection_timeout = Some(config.connect_timeout);
        peer.options.total_connection_timeout = Some(config.connect_timeout);
        peer.options.read_timeout = Some(config.read_timeout);
        peer.options.write_timeout = Some(config.read_timeout);
        Origin { config, peer }
    }

    /// A peer for one request (a clone of the template; connections are pooled by Pingora).
    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }
}
