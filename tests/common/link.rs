//! A simulated wide-area link between two "regions": a TCP relay on a loopback port that
//! forwards to `target` and delays every byte by a fixed one-way latency in each direction, and
//! can be partitioned (open connections cut, new ones refused) and healed.
//!
//! The kernel's `tc netem` would do the delaying, but it needs the `sch_netem` qdisc, which
//! kernels without modules (these CI machines) do not have; a user-space relay runs anywhere.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::background::Background;

struct State {
    partitioned: AtomicBool,
    /// Bumped on each partition: connections of an older generation close.
    generation: AtomicU64,
}

/// A delaying relay to one target address; stopped on Drop.
pub struct Link {
    addr: SocketAddr,
    state: Arc<State>,
    /// Stops the relay when the link is dropped.
    _server: Background,
}

impl Link {
    /// Relay to `target`, each direction delayed by `one_way`.
    pub fn new(target: SocketAddr, one_way: Duration) -> Link {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind link");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let state = Arc::new(State {
            partitioned: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        });
        let st = state.clone();
        let server = Background::spawn(format!("link-{}", addr.port()), 2, move || async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if st.partitioned.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let st = st.clone();
                tokio::spawn(async move {
                    let generation = st.generation.load(Ordering::SeqCst);
                    // the connection itself crosses the link: one round trip
                    tokio::time::sleep(one_way * 2).await;
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    relay(client, server, one_way, st, generation).await;
                });
            }
        });
        Link {
            addr,
            state,
            _server: server,
        }
    }

    /// The address to connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>` (for node configs).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `nats://<addr>`.
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Cut the link: open connections close, new ones are refused, until [`Link::heal`].
    pub fn partition(&self) {
        self.state.partitioned.store(true, Ordering::SeqCst);
        self.state.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Restore the link.
    pub fn heal(&self) {
        self.state.partitioned.store(false, Ordering::SeqCst);
    }
}

/// Forward both ways with the delay, until either side closes or the link is partitioned.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    one_way: Duration,
    st: Arc<State>,
    generation: u64,
) {
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let cut = {
        let st = st.clone();
        async move {
            while st.generation.load(Ordering::SeqCst) == generation {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::select! {
        _ = pipe(cr, sw, one_way) => {}
        _ = pipe(sr, cw, one_way) => {}
        _ = cut => {}
    }
}

/// Copy `from` to `to`, each chunk delivered `delay` after it was read (order kept).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    // the writer drains what was read before the reader saw the end
    tokio::join!(reader, writer);
}
