//! A real `nats-server` with JetStream for fleet purge tests, on a free loopback port, its
//! storage in a temporary directory; stopped on Drop. Tests that need it are skipped (with a
//! message) where the binary is missing; `scripts/test.sh` installs it when it can.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `nats-server -js`.
pub struct Nats {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// Where `nats-server` is, if installed.
pub fn nats_server() -> Option<std::path::PathBuf> {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
}

impl Nats {
    /// Start one, or `None` (after printing why) when `nats-server` is not installed.
    pub fn start() -> Option<Nats> {
        let nats = Nats {
            child: None,
            port: super::free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        nats.restarted()
    }

    fn restarted(mut self) -> Option<Nats> {
        let Some(bin) = nats_server() else {
            eprintln!("SKIPPED: nats-server is not installed (apt-get install nats-server)");
            return None;
        };
        let child = Command::new(bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(self)
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stop the server (its stored streams stay for [`Nats::start_again`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port and storage.
    pub fn start_again(mut self) -> Nats {
        self.stop();
        self.restarted().expect("nats-server")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}
