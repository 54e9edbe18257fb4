//! CLI surface and configuration validation of the real binary.
mod common;

use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A valid configuration; the tests below break one thing at a time.
const BASE: &str = r#"[node]
name = "outpost"
threads = 1
shutdown_grace = "1s"

[listen]
http = ["127.0.0.1:18080"]

[admin]
listen = "127.0.0.1:19091"
token = "t"

[metrics]
listen = "127.0.0.1:19090"

[cache]
dir = "cache"
memory_size = "64MiB"
max_object_size = "8MiB"

[[origins]]
name = "local"
url = "http://127.0.0.1:8000"
connect_timeout = "2s"

[[rules]]
name = "api"
action = "bypass"
[rules.match]
path_prefix = ["/api/"]

[[rules]]
name = "static"
action = "cache"
[rules.match]
paths = ["/static/**"]
[rules.ttl]
default = "1h"
[rules.key]
query = "ignore"

[[rules]]
name = "default"
action = "cache"
[rules.ttl]
heuristic = true
"#;

fn all_output(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn replace_once(base: &str, from: &str, to: &str) -> String {
    assert_eq!(
        base.matches(from).count(),
        1,
        "test bug: {from:?} not unique"
    );
    base.replacen(from, to, 1)
}

/// `BASE` with `from` replaced by `to` must fail `outpost check`, naming every one of `needles`.
fn assert_base_edit_fails(from: &str, to: &str, needles: &[&str]) {
    assert_check_fails(&replace_once(BASE, from, to), needles);
}

/// `outpost check` must fail, and its output must name the file and every one of `needles`.
fn assert_check_fails(toml: &str, needles: &[&str]) {
    let out = run_check(toml);
    let text = all_output(&out);
    assert!(
        !out.status.success(),
        "check accepted an invalid config; output:\n{text}\nconfig:\n{toml}"
    );
    assert!(
        text.contains("outpost.toml"),
        "error does not name the file; output:\n{text}"
    );
    for n in needles {
        assert!(
            text.contains(n),
            "error does not mention {n:?}; output:\n{text}"
        );
    }
}

fn outpost(args: &[&str]) -> Output {
    Command::new(outpost_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn outpost")
}

#[test]
fn help_succeeds() {
    let o = outpost(&["--help"]);
    assert!(o.status.success(), "outpost --help: {}", all_output(&o));
    let t = all_output(&o);
    assert!(t.contains("run") && t.contains("check"), "{t}");

    let o = outpost(&["run", "--help"]);
    assert!(o.status.success(), "outpost run --help: {}", all_output(&o));
    let t = all_output(&o);
    for flag in [
        "--config",
        "--origin",
        "--listen",
        "--admin",
        "--metrics",
        "--cache-dir",
    ] {
        assert!(t.contains(flag), "run --help lacks {flag}:\n{t}");
    }

    let o = outpost(&["check", "--help"]);
    assert!(
        o.status.success(),
        "outpost check --help: {}",
        all_output(&o)
    );
    assert!(all_output(&o).contains("--config"));
}

#[test]
fn check_accepts_shipped_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/outpost.toml");
    let o = Command::new(outpost_bin())
        .args(["check", "--config", path])
        .env_remove("OUTPOST_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("spawn");
    let t = all_output(&o);
    assert!(o.status.success(), "check conf/outpost.toml failed:\n{t}");
    // the effective config is printed
    assert!(
        t.contains("static-assets") && t.contains("uncacheable-api"),
        "effective config not printed:\n{t}"
    );
}

#[test]
fn check_accepts_base_and_harness_configs() {
    let o = run_check(BASE);
    assert!(o.status.success(), "BASE rejected:\n{}", all_output(&o));
    let cfg = NodeConfig::new("http://127.0.0.1:8000");
    let o = run_check(&cfg.config_text());
    assert!(
        o.status.success(),
        "harness config rejected:\n{}\n{}",
        all_output(&o),
        cfg.config_text()
    );
}

#[test]
fn check_rejects_unknown_key() {
    assert_base_edit_fails(
        "memory_size = \"64MiB\"",
        "memroy_size = \"64MiB\"",
        &["cache.memroy_size"],
    );
}

#[test]
fn check_rejects_bad_duration_with_rule_index() {
    // rules[1]
    assert_base_edit_fails(
        "default = \"1h\"",
        "default = \"ten\"",
        &["rules[1].ttl.default"],
    );
    // rules[0]
    assert_base_edit_fails(
        "path_prefix = [\"/api/\"]\n",
        "path_prefix = [\"/api/\"]\n[rules.ttl]\ndefault = \"ten\"\n",
        &["rules[0].ttl.default"],
    );
}

#[test]
fn check_rejects_bad_size() {
    assert_base_edit_fails(
        "memory_size = \"64MiB\"",
        "memory_size = \"64 potatoes\"",
        &["cache.memory_size"],
    );
}

#[test]
fn check_rejects_bad_disk_tier_settings() {
    assert_base_edit_fails(
        "dir = \"cache\"",
        "dir = \"cache\"\ntiers = \"ssd\"",
        &["cache.tiers", "ssd", "memory+disk"],
    );
    assert_base_edit_fails(
        "dir = \"cache\"",
        "dir = \"cache\"\ndisk_size = \"100KiB\"",
        &["cache.disk_size", "at least 1MiB"],
    );
    assert_base_edit_fails(
        "dir = \"cache\"",
        "dir = \"cache\"\ndisk_size = \"10MiB\"\ndisk_max_object_size = \"20MiB\"",
        &[
            "cache.disk_max_object_size",
            "must not exceed cache.disk_size",
        ],
    );
    assert_base_edit_fails(
        "dir = \"cache\"",
        "dir = \"cache\"\ndisk_size = -1",
        &["cache.disk_size"],
    );
}

#[test]
fn small_disk_size_lowers_the_default_disk_object_limit() {
    let toml = replace_once(
        BASE,
        "dir = \"cache\"",
        "dir = \"cache\"\ndisk_size = \"2MiB\"",
    );
    let out = run_check(&toml);
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    // a quarter of the tier, so one object cannot flush it
    assert!(text.contains("disk_max_object_size = 524288"), "{text}");
}

#[test]
fn check_rejects_bad_listen_address() {
    assert_base_edit_fails(
        "http = [\"127.0.0.1:18080\"]",
        "http = [\"not an address\"]",
        &["listen.http"],
    );
}

#[test]
fn check_rejects_bad_origin_url() {
    assert_base_edit_fails(
        "url = \"http://127.0.0.1:8000\"",
        "url = \"not a url\"",
        &["origins[0].url"],
    );
}

#[test]
fn check_rejects_rule_with_missing_origin() {
    assert_base_edit_fails(
        "name = \"static\"\n",
        "name = \"static\"\norigin = \"nope\"\n",
        &["rules[1].origin", "nope"],
    );
}

#[test]
fn check_rejects_query_keep_without_list() {
    assert_base_edit_fails("query = \"ignore\"", "query = \"keep\"", &["rules[1].key"]);
}

#[test]
fn check_rejects_invalid_glob() {
    assert_base_edit_fails(
        "paths = [\"/static/**\"]",
        "paths = [\"/static/[unclosed\"]",
        &["rules[1].match.paths"],
    );
}

#[test]
fn check_rejects_unknown_action() {
    assert_base_edit_fails(
        "action = \"bypass\"",
        "action = \"purge\"",
        &["rules[0].action"],
    );
}

#[test]
fn check_reports_toml_syntax_error_with_line() {
    // line 3 of BASE is `threads = 1`
    assert_eq!(BASE.lines().nth(2), Some("threads = 1"));
    let t = replace_once(BASE, "threads = 1", "threads = = 1");
    let out = run_check(&t);
    let text = all_output(&out);
    assert!(!out.status.success(), "syntax error accepted:\n{text}");
    assert!(text.contains("outpost.toml"), "file not named:\n{text}");
    assert!(
        text.contains("line 3") || text.contains("outpost.toml:3"),
        "line 3 not named:\n{text}"
    );
}

/// `outpost run` with the arguments `args` adds, in `dir`, its output captured.
fn spawn_run(dir: &std::path::Path, args: impl FnOnce(&mut Command)) -> std::process::Child {
    let mut c = Command::new(outpost_bin());
    c.arg("run");
    args(&mut c);
    c.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn outpost run")
}

#[test]
fn run_with_bad_config_exits_nonzero_without_listening() {
    let port = free_port();
    let t = replace_once(
        BASE,
        "http = [\"127.0.0.1:18080\"]",
        &format!("http = [\"127.0.0.1:{port}\"]"),
    );
    let t = replace_once(&t, "default = \"1h\"", "default = \"ten\"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outpost.toml");
    std::fs::write(&path, &t).unwrap();
    let mut child = spawn_run(dir.path(), |c| {
        c.arg("--config").arg(&path);
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut listened = false;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_millis(50),
        )
        .is_ok()
        {
            listened = true;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`outpost run` with an invalid config did not exit within 15s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let text = all_output(&out);
    assert!(
        !status.success(),
        "run exited 0 on an invalid config:\n{text}"
    );
    assert!(
        !listened,
        "run listened on its port despite the invalid config"
    );
    assert!(
        text.contains("rules[1].ttl.default"),
        "run error does not name the key:\n{text}"
    );
}

#[test]
fn bad_stale_negative_and_timeout_settings_are_named_by_key() {
    assert_base_edit_fails(
        "default = \"1h\"",
        "default = \"1h\"\nnot_found = \"soon\"\nserver_error = \"1 fortnight\"",
        &["rules[1].ttl.not_found", "rules[1].ttl.server_error"],
    );
    // a wrong type stops parsing at that key
    assert_base_edit_fails(
        "default = \"1h\"",
        "default = \"1h\"\nserver_error = -3",
        &["rules[1].ttl.server_error"],
    );
    assert_base_edit_fails(
        "default = \"1h\"",
        "default = \"1h\"\n[rules.stale]\nwhile_revalidate = \"forever\"\nif_error = \"1x\"",
        &["rules[1].stale.while_revalidate", "rules[1].stale.if_error"],
    );
    assert_base_edit_fails(
        "default = \"1h\"",
        "default = \"1h\"\n[rules.stale]\nretry = true",
        &["retry"],
    );
    assert_base_edit_fails(
        "connect_timeout = \"2s\"",
        "connect_timeout = \"2s\"\ntotal_timeout = \"0s\"\nfailure_backoff = \"never\"",
        &["origins[0].total_timeout", "origins[0].failure_backoff"],
    );
}

#[test]
fn check_prints_stale_and_negative_settings_of_each_rule() {
    let toml = replace_once(
        BASE,
        "default = \"1h\"",
        "default = \"1h\"\nnot_found = \"1m\"\nserver_error = \"5s\"\n[rules.stale]\nwhile_revalidate = \"30s\"\nif_error = \"1h\"",
    );
    let out = run_check(&toml);
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    for needle in [
        "not_found = \"1m\"",
        "server_error = \"5s\"",
        "while_revalidate = \"30s\"",
        "if_error = \"1h\"",
        "failure_backoff = \"2s\"",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn sizes_and_durations_out_of_their_range_are_refused_naming_key_and_range() {
    // too large to represent: an error, never a saturated (unbounded) value
    assert_base_edit_fails(
        "memory_size = \"64MiB\"",
        "memory_size = \"99999999999999999999PiB\"",
        &[
            "cache.memory_size",
            "\"99999999999999999999PiB\" is out of range",
            "at most 1PiB",
        ],
    );
    assert_base_edit_fails(
        "connect_timeout = \"2s\"",
        "connect_timeout = \"99999999999999999999s\"",
        &["origins[0].connect_timeout", "out of range", "at most 1d"],
    );
    // representable, but beyond anything the key can mean
    assert_base_edit_fails(
        "memory_size = \"64MiB\"",
        "memory_size = \"2PiB\"",
        &["cache.memory_size", "at most 1PiB"],
    );
    assert_base_edit_fails(
        "connect_timeout = \"2s\"",
        "connect_timeout = \"1000000000h\"",
        &["origins[0].connect_timeout", "at most 1d"],
    );
    assert_base_edit_fails(
        "default = \"1h\"",
        "default = \"1000000000h\"",
        &["rules[1].ttl.default", "at most 3650d"],
    );
    // zero or too small where that makes no sense
    assert_base_edit_fails(
        "connect_timeout = \"2s\"",
        "connect_timeout = \"0s\"",
        &["origins[0].connect_timeout", "at least 1ms"],
    );
    assert_base_edit_fails(
        "memory_size = \"64MiB\"",
        "memory_size = \"64KiB\"",
        &["cache.memory_size", "at least 1MiB"],
    );
    assert_base_edit_fails(
        "[cache]",
        "[limits]\nmax_header_bytes = 100\nheader_timeout = \"0s\"\n\n[cache]",
        &[
            "limits.max_header_bytes",
            "at least 1KiB and at most 1MiB",
            "limits.header_timeout",
        ],
    );
    // every one of them at once
    let all = replace_once(
        BASE,
        "memory_size = \"64MiB\"",
        "memory_size = \"99999999999999999999PiB\"\nlock_wait_timeout = \"1000000000h\"",
    );
    let all = replace_once(&all, "shutdown_grace = \"1s\"", "shutdown_grace = \"2d\"");
    assert_check_fails(
        &all,
        &[
            "cache.memory_size",
            "cache.lock_wait_timeout",
            "node.shutdown_grace",
        ],
    );
}

/// `outpost run` from a directory with no conf/outpost.toml and no `--config` runs on the
/// shipped configuration built into the binary, and its start-up line says so; an explicit
/// `--config` that is missing is still an error.
#[test]
fn run_without_a_config_file_here_uses_the_built_in_default() {
    let origin = TestOrigin::start();
    origin.set(
        "/hello",
        Reply::ok("hello").header("Cache-Control", "max-age=60"),
    );
    let dir = tempfile::tempdir().unwrap();
    let [port, admin, metrics] = [free_port(), free_port(), free_port()];
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let cache = dir.path().join("cache");
    let mut child = spawn_run(dir.path(), |c| {
        c.args(["--origin", &origin.url()])
            .args(["--listen", &addr(port), "--admin", &addr(admin)])
            .args(["--metrics", &addr(metrics)])
            .arg("--cache-dir")
            .arg(&cache);
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let listening = loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!("run exited ({status}):\n{}", all_output(&out));
        }
        if TcpStream::connect(addr(port)).is_ok() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let answers: Vec<(u16, String)> = (0..2)
        .filter(|_| listening)
        .map(|_| {
            let r = reqwest::blocking::get(format!("http://{}/hello", addr(port))).expect("GET");
            (r.status().as_u16(), r.text().unwrap_or_default())
        })
        .collect();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = all_output(&out);
    assert!(listening, "not listening within 30 s:\n{text}");
    assert_eq!(
        answers,
        [(200, "hello".into()), (200, "hello".into())],
        "{text}"
    );
    assert_eq!(origin.hits("/hello"), 1, "the second GET was a hit");
    assert!(
        text.contains("outpost starting") && text.contains("config=(built-in conf/outpost.toml)"),
        "the start-up line does not say the configuration is the built-in one:\n{text}"
    );
    assert!(cache.exists(), "the disk tier directory was not made");

    let missing = outpost(&["run", "--config", "missing.toml"]);
    let text = all_output(&missing);
    assert!(!missing.status.success());
    assert!(
        text.contains("missing.toml") && text.contains("cannot read config file"),
        "{text}"
    );
}
