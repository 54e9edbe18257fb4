//! Runs the real `outpost` binary on ephemeral loopback ports.
#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the `outpost` binary built by cargo for these tests.
pub fn outpost_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_outpost"))
}

/// A loopback port that was free a moment ago, below the kernel's ephemeral port range: a port
/// from that range (bind :0) can be taken by any outgoing connection on the machine before the
/// node binds it. Processes start at different points of the range and threads share a counter,
/// so concurrent tests rarely even try the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_low.max(12_000));
    let span = high - low;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = low + NEXT.fetch_add(1, Ordering::SeqCst) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// Writes `toml` to a temporary `outpost.toml` and runs `outpost check --config <file>`.
pub fn run_check(toml: &str) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outpost.toml");
    std::fs::write(&path, toml).expect("write config");
    Command::new(outpost_bin())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("spawn outpost check")
}

/// `outpost check` must refuse the harness configuration with `extra` appended, naming `key`.
pub fn assert_refused(extra: &str, key: &str) {
    assert_refused_text(
        &NodeConfig::new("http://127.0.0.1:9")
            .extra(extra)
            .config_text(),
        extra,
        key,
    );
}

/// `outpost check` must refuse `toml` (made with `what`), naming `key`.
pub fn assert_refused_text(toml: &str, what: &str, key: &str) {
    let out = run_check(toml);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: accepted");
    assert!(
        err.contains(key),
        "{what}: error does not name {key}: {err}"
    );
}

fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Keys assigned by `key = value` lines of a TOML fragment.
fn keys_of(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .flat_map(|frag| frag.lines())
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') || l.starts_with('[') {
                return None;
            }
            l.split_once('=').map(|(k, _)| k.trim().to_string())
        })
        .collect()
}

/// Builder of a test node's configuration.
///
/// Ports and the temporary directory are chosen by `new`, so `config_text()` is exactly the file
/// that `start()` writes, and starting the same config again (after the first node is gone)
/// reuses the ports and the cache directory.
pub struct NodeConfig {
    origin_url: String,
    node: Vec<String>,
    rules: Vec<String>,
    cache: Vec<String>,
    origin: Vec<String>,
    extra: Vec<String>,
    tls: Vec<String>,
    certificates: Vec<String>,
    https_port: Option<u16>,
    env: Vec<(String, String)>,
    http_port: u16,
    admin_port: u16,
    metrics_port: u16,
    dir: Arc<tempfile::TempDir>,
}

impl NodeConfig {
    pub fn new(origin_url: &str) -> NodeConfig {
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        NodeConfig {
            origin_url: origin_url.to_string(),
            node: Vec::new(),
            rules: Vec::new(),
            cache: Vec::new(),
            origin: Vec::new(),
            extra: Vec::new(),
            tls: Vec::new(),
            certificates: Vec::new(),
            https_port: None,
            env: Vec::new(),
            http_port: ports[0],
            admin_port: ports[1],
            metrics_port: ports[2],
            dir: Arc::new(
                tempfile::Builder::new()
                    .prefix("outpost-test-")
                    .tempdir()
                    .expect("tempdir"),
            ),
        }
    }

    /// Raw TOML with `[[rules]]` tables, appended. Without any, one default caching rule.
    pub fn rules(mut self, toml: &str) -> Self {
        self.rules.push(toml.to_string());
        self
    }

    /// Extra `key = value` lines inside `[node]`.
    pub fn node(mut self, toml: &str) -> Self {
        self.node.push(toml.to_string());
        self
    }

    /// Extra `key = value` lines inside `[cache]` (a key given here replaces the harness default).
    pub fn cache(mut self, toml: &str) -> Self {
        self.cache.push(toml.to_string());
        self
    }

    /// Extra `key = value` lines inside the single `[[origins]]` table (named "origin").
    pub fn origin(mut self, toml: &str) -> Self {
        self.origin.push(toml.to_string());
        self
    }

    /// An HTTPS listener on a free port (certificates: [`Self::certificate`]).
    pub fn https(mut self) -> Self {
        let taken = [self.http_port, self.admin_port, self.metrics_port];
        let mut port = free_port();
        while taken.contains(&port) {
            port = free_port();
        }
        self.https_port = Some(port);
        self
    }

    /// Extra `key = value` lines inside `[tls]` (`h2`, `reload_check`).
    pub fn tls(mut self, toml: &str) -> Self {
        self.tls.push(toml.to_string());
        self
    }

    /// A `[[tls.certificates]]` entry for these files, with extra lines (`names = [...]`,
    /// `default = true`).
    pub fn certificate(mut self, cert: &Path, key: &Path, extra: &str) -> Self {
        self.certificates.push(format!(
            "[[tls.certificates]]\ncert = {}\nkey = {}\n{}\n",
            toml_str(&cert.to_string_lossy()),
            toml_str(&key.to_string_lossy()),
            extra.trim()
        ));
        self
    }

    /// The HTTPS listener's address (after [`Self::https`]).
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_port
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
    }

    /// An environment variable of the node process (e.g. `OUTPOST_LOG`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Raw TOML appended at the end.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push(toml.to_string());
        self
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("outpost.toml")
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.metrics_port))
    }

    /// The generated configuration file.
    pub fn config_text(&self) -> String {
        let mut s = String::new();
        s.push_str("[node]\nthreads = 2\n");
        let node_keys = keys_of(&self.node);
        for (k, v) in [("name", "\"outpost\""), ("shutdown_grace", "\"1s\"")] {
            if !node_keys.iter().any(|x| x == k) {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        for n in &self.node {
            s.push_str(n.trim());
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&format!(
            "[listen]\nhttp = [\"127.0.0.1:{}\"]\n",
            self.http_port
        ));
        if let Some(port) = self.https_port {
            s.push_str(&format!("https = [\"127.0.0.1:{port}\"]\n"));
        }
        s.push('\n');
        if !self.tls.is_empty() || !self.certificates.is_empty() {
            s.push_str("[tls]\n");
            for t in &self.tls {
                s.push_str(t.trim());
                s.push('\n');
            }
            s.push('\n');
            for c in &self.certificates {
                s.push_str(c);
                s.push('\n');
            }
        }
        s.push_str(&format!(
            "[admin]\nlisten = \"127.0.0.1:{}\"\ntoken = \"test-token\"\n\n",
            self.admin_port
        ));
        s.push_str(&format!(
            "[metrics]\nlisten = \"127.0.0.1:{}\"\n\n",
            self.metrics_port
        ));

        s.push_str("[cache]\n");
        let cache_dir = self.dir.path().join("cache");
        let cache_keys = keys_of(&self.cache);
        let defaults = [
            ("dir", toml_str(&cache_dir.to_string_lossy())),
            ("memory_size", "\"64MiB\"".to_string()),
            ("lock_wait_timeout", "\"5s\"".to_string()),
        ];
        for (k, v) in defaults {
            if !cache_keys.iter().any(|x| x == k) {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        for c in &self.cache {
            s.push_str(c.trim());
            s.push('\n');
        }
        s.push('\n');

        s.push_str("[[origins]]\n");
        let origin_keys = keys_of(&self.origin);
        let defaults = [
            ("name", "\"origin\"".to_string()),
            ("url", toml_str(&self.origin_url)),
            ("connect_timeout", "\"1s\"".to_string()),
            ("read_timeout", "\"3s\"".to_string()),
        ];
        for (k, v) in defaults {
            let servers = k == "url" && origin_keys.iter().any(|x| x == "servers");
            if !servers && !origin_keys.iter().any(|x| x == k) {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        for o in &self.origin {
            s.push_str(o.trim());
            s.push('\n');
        }
        s.push('\n');

        if self.rules.is_empty() {
            s.push_str(
                "[[rules]]\nname = \"default\"\naction = \"cache\"\n[rules.ttl]\nheuristic = true\n\n",
            );
        } else {
            for r in &self.rules {
                s.push_str(r.trim());
                s.push_str("\n\n");
            }
        }
        for e in &self.extra {
            s.push_str(e.trim());
            s.push_str("\n\n");
        }
        s
    }

    /// Writes the config, spawns `outpost run --config`, waits until it serves.
    pub fn start(&self) -> Node {
        std::fs::write(self.config_path(), self.config_text()).expect("write config");
        let node = self.spawn(&[], "outpost.log");
        node.wait_ready(Duration::from_secs(30));
        node
    }

    /// Spawns `outpost run --upgrade` on the config file as it is (a node started from it is
    /// running) and returns at once: the new process waits on the upgrade socket
    /// ([`Self::upgrade_sock`]) for the running node, sent SIGQUIT, to hand its sockets over.
    /// Its output goes to `outpost-upgrade.log`.
    pub fn start_upgrade(&self) -> Node {
        self.spawn(&["--upgrade"], "outpost-upgrade.log")
    }

    /// The default `node.upgrade_sock`: `<cache.dir>/upgrade.sock`.
    pub fn upgrade_sock(&self) -> PathBuf {
        self.dir.path().join("cache").join("upgrade.sock")
    }

    fn spawn(&self, args: &[&str], log_name: &str) -> Node {
        let config_path = self.config_path();
        let log_path = self.dir.path().join(log_name);
        let log = File::create(&log_path).expect("create log");
        let log2 = log.try_clone().unwrap();
        let child = Command::new(outpost_bin())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .current_dir(self.dir.path())
            .env("RUST_BACKTRACE", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .expect("spawn outpost run");
        let client = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("reqwest client");
        let pid = child.id();
        Node {
            child: Mutex::new(child),
            pid,
            http: self.http_addr(),
            https: self.https_addr(),
            admin: self.admin_addr(),
            metrics: self.metrics_addr(),
            dir: self.dir.clone(),
            log_path,
            client,
        }
    }
}

/// A running `outpost run` process. Drop kills it (SIGKILL) and removes its temporary directory
/// (once the `NodeConfig` it came from is gone as well).
pub struct Node {
    child: Mutex<Child>,
    pid: u32,
    http: SocketAddr,
    https: Option<SocketAddr>,
    admin: SocketAddr,
    metrics: SocketAddr,
    dir: Arc<tempfile::TempDir>,
    log_path: PathBuf,
    client: reqwest::blocking::Client,
}

impl Node {
    fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let probe = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "outpost exited during start-up ({status})\n--- config ---\n{}\n--- log ---\n{}",
                    self.config_text(),
                    self.log()
                );
            }
            // Pingora starts each service (proxy, metrics, admin) on its own: wait for all three.
            let http_up = TcpStream::connect_timeout(&self.http, Duration::from_millis(200))
                .is_ok()
                && self.https.is_none_or(|a| {
                    TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()
                });
            let admin_up =
                TcpStream::connect_timeout(&self.admin, Duration::from_millis(200)).is_ok();
            if http_up && admin_up {
                if let Ok(r) = probe.get(self.metrics_url()).send() {
                    if r.status().as_u16() == 200 {
                        return;
                    }
                }
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "outpost did not become ready within {limit:?} (http {} accepting: {http_up})\n--- config ---\n{}\n--- log ---\n{}",
                    self.http,
                    self.config_text(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn config_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("outpost.toml")).unwrap_or_default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.http
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The HTTPS listener's address (the config had [`NodeConfig::https`]).
    pub fn https_addr(&self) -> SocketAddr {
        self.https.expect("the node has no HTTPS listener")
    }

    /// `https://<host>:PORT{path}` on the HTTPS listener: `host` is what the client sends as
    /// SNI (resolve it to [`Self::https_addr`], see `common::tls::client`).
    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.https_addr().port())
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:PORT{path}` on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The Prometheus text of GET /metrics.
    pub fn metrics(&self) -> String {
        let r = self
            .client
            .get(self.metrics_url())
            .send()
            .unwrap_or_else(|e| {
                panic!(
                    "GET {}: {e}\n--- log ---\n{}",
                    self.metrics_url(),
                    self.log()
                )
            });
        assert_eq!(r.status().as_u16(), 200, "GET /metrics status");
        r.text().expect("metrics body")
    }

    /// A client with no redirects and a 10 s timeout.
    pub fn client(&self) -> reqwest::blocking::Client {
        self.client.clone()
    }

    /// GET `path` on the public listener (panics on transport errors).
    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        self.client
            .get(self.url(path))
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n--- log ---\n{}", self.log()))
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    /// The last `lines` lines of the process's output (for panic messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Graceful stop: SIGTERM, then wait up to 15 s for the process to exit, reaping it.
    /// Returns its exit status; if it does not exit in time it is SIGKILLed and this panics.
    pub fn stop(&self) -> ExitStatus {
        self.stop_within(Duration::from_secs(15))
    }

    /// `stop` with a deadline of `limit` for the exit after SIGTERM.
    pub fn stop_within(&self, limit: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_exit(limit) {
            return status;
        }
        self.kill();
        panic!(
            "outpost (pid {}) did not exit within {limit:?} of SIGTERM\n--- log (tail) ---\n{}",
            self.pid,
            self.log_tail(80)
        );
    }

    /// Sends `signal` (e.g. `libc::SIGQUIT`) to the process, if it has not exited.
    pub fn signal(&self, signal: libc::c_int) {
        if self.try_wait().is_some() {
            return;
        }
        // SAFETY: kill(2) with our own child's pid, not reaped yet (try_wait above), so the pid
        // cannot have been reused.
        let sent = unsafe { libc::kill(self.pid as libc::pid_t, signal) };
        assert_eq!(sent, 0, "kill({}, {signal}) failed", self.pid);
    }

    /// Waits up to `limit` for the process to exit by itself; its status, or `None` (still
    /// running).
    pub fn wait_exit(&self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the process and reap it.
    pub fn kill(&self) {
        let mut c = self.child.lock().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
