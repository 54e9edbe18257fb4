//! `outpost top`: a live view of one node for a person at a terminal. It reads the node's
//! `/metrics` and the admin API's `/status` and `/top` every interval and draws the rates
//! between the last two reads ([`view`]); `--once` prints one frame as plain text.

pub mod view;

use crate::admin::client;
use crate::observe::exposition::Scrape;
use crate::observe::topkeys::TopSnapshot;
use anyhow::{bail, Context};
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// What `outpost top` was asked to watch, and how.
pub struct Options {
    /// The admin API, e.g. `http://127.0.0.1:9091`.
    pub admin: String,
    /// The metrics listener, e.g. `http://127.0.0.1:9090` (`/metrics` is added if no path).
    pub metrics: String,
    /// `metrics` is the default, not given by the user (errors say so).
    pub metrics_defaulted: bool,
    /// Bearer token of the admin API.
    pub token: String,
    /// Time between two reads.
    pub interval: Duration,
    /// Print one frame (two reads `interval` apart) as plain text and exit.
    pub once: bool,
}

/// One read of a node.
pub struct Snapshot {
    /// When the metrics were read.
    pub at: Instant,
    /// `/metrics`.
    pub metrics: Scrape,
    /// The admin API's `/status`.
    pub status: serde_json::Value,
    /// The admin API's `/top`.
    pub top: TopSnapshot,
}

/// `(base, path)` of the metrics URL: `/metrics` unless it names another path.
fn metrics_target(metrics: &str) -> (String, String) {
    match url::Url::parse(metrics) {
        Ok(u) if !matches!(u.path(), "" | "/") => {
            let path = u.path().to_string();
            let mut base = u;
            base.set_path("");
            (base.to_string(), path)
        }
        _ => (metrics.to_string(), "/metrics".to_string()),
    }
}

/// A URL for messages: `base` with `path`.
fn joined(base: &str, path: &str) -> String {
    format!("{}{path}", client::http_url(base).trim_end_matches('/'))
}

/// `GET` an admin route, turning refusals into one-line errors naming the URL.
fn admin_get(opts: &Options, path: &str) -> anyhow::Result<String> {
    let url = joined(&opts.admin, path);
    let answer = client::get(&opts.admin, "--admin", path, Some(&opts.token))
        .with_context(|| format!("cannot reach the admin API at {url}"))?;
    match answer.status {
        200 => Ok(answer.body),
        401 => bail!(
            "the admin API at {url} refused the token (401): pass the node's admin token \
             with --token or OUTPOST_ADMIN_TOKEN"
        ),
        404 => bail!("{url} answered 404: is --admin the node's admin listener (admin.listen)?"),
        s => bail!("{url} answered {s}: {}", answer.body.trim()),
    }
}

/// Read the node once: `key_rows` keys of `/top`.
fn read(opts: &Options, key_rows: usize) -> anyhow::Result<Snapshot> {
    // the admin API first: it is the address the user gave
    let status = admin_get(opts, "/status")?;
    let status = serde_json::from_str(&status)
        .with_context(|| format!("{} is not JSON", joined(&opts.admin, "/status")))?;
    let (base, path) = metrics_target(&opts.metrics);
    let url = joined(&base, &path);
    let hint = match opts.metrics_defaulted {
        true => " (--metrics not given: pass the node's metrics.listen, e.g. --metrics http://127.0.0.1:9090)",
        false => "",
    };
    let answer = client::get(&base, "--metrics", &path, None)
        .with_context(|| format!("cannot reach the metrics listener at {url}{hint}"))?;
    if answer.status != 200 {
        bail!(
            "{url} answered {}: is --metrics the node's metrics listener (metrics.listen)?",
            answer.status
        );
    }
    let metrics = Scrape::parse(&answer.body);
    if !metrics.has("outpost_requests_total") {
        bail!("{url} has no outpost_requests_total: is it an Outpost node's metrics listener?");
    }
    let at = Instant::now();
    let top = admin_get(opts, &format!("/top?n={}", key_rows.clamp(1, 1000)))?;
    let top = serde_json::from_str(&top).with_context(|| {
        format!(
            "{}: unexpected answer (an older node without /top?)",
            joined(&opts.admin, "/top")
        )
    })?;
    Ok(Snapshot {
        at,
        metrics,
        status,
        top,
    })
}

/// The terminal's size (columns, rows) if standard output is one.
fn terminal_size() -> Option<(usize, usize)> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let (cols, rows) = crossterm::terminal::size().ok()?;
    (cols > 0).then_some((cols.into(), rows.into()))
}

/// The terminal in raw mode while `outpost top` runs live (keys arrive one by one, unechoed),
/// restored when dropped, whichever way the view ends.
struct RawTerminal;

impl RawTerminal {
    /// Raw mode when standard input and output are a terminal; `None` otherwise (piped: the
    /// view ends with Ctrl-C's signal).
    fn enter() -> Option<RawTerminal> {
        let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        (tty && crossterm::terminal::enable_raw_mode().is_ok()).then_some(RawTerminal)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Whether a key asks to leave the view: `q`, Esc, Ctrl-C or Ctrl-D (raw mode turns Ctrl-C
/// into a key, not a signal).
fn quits(key: &KeyEvent) -> bool {
    if key.kind != KeyEventKind::Press {
        return false;
    }
    match key.code {
        KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
        KeyCode::Char('c' | 'd') => key.modifiers.contains(KeyModifiers::CONTROL),
        _ => false,
    }
}

/// Wait `interval`, reading keys if the terminal is raw; true if one asked to quit.
fn wait_or_quit(interval: Duration, raw: bool) -> anyhow::Result<bool> {
    if !raw {
        std::thread::sleep(interval);
        return Ok(false);
    }
    let until = Instant::now() + interval;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || !event::poll(left).context("reading the terminal")? {
            return Ok(false);
        }
        if let Event::Key(key) = event::read().context("reading the terminal")? {
            if quits(&key) {
                return Ok(true);
            }
        }
    }
}

/// Lines of a frame above the top keys table, without upstream servers.
const FIXED_LINES: usize = 14;

/// Rows left for the top keys table on a `rows`-line terminal showing `servers` servers.
fn key_rows(rows: usize, servers: usize) -> usize {
    rows.saturating_sub(FIXED_LINES + servers).max(5)
}

fn servers(status: &serde_json::Value) -> usize {
    status["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| 1 + p["servers"].as_array().map_or(0, Vec::len))
        .sum()
}

/// Run `outpost top`: one frame and exit with `--once`, else redraw every interval until `q`
/// (or Esc, Ctrl-C). Errors of the first read end it; later ones are shown and retried.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let every = humantime::format_duration(opts.interval).to_string();
    if opts.once {
        let first = read(opts, 20)?;
        std::thread::sleep(opts.interval);
        let second = read(opts, 20)?;
        let layout = view::Layout {
            width: terminal_size().map_or(120, |(w, _)| w),
            key_rows: 20,
            ansi: false,
        };
        print!(
            "{}",
            view::render(&first, &second, &opts.admin, &every, layout)
        );
        return Ok(());
    }
    let (_, rows) = terminal_size().unwrap_or((120, 40));
    let mut prev = read(opts, key_rows(rows, 0))?;
    println!(
        "outpost top: reading {} every {every} (q or Ctrl-C to quit) ...",
        opts.admin
    );
    let raw = RawTerminal::enter();
    let mut out = std::io::stdout();
    while !wait_or_quit(opts.interval, raw.is_some())? {
        let (width, rows) = terminal_size().unwrap_or((120, 40));
        let rows_for_keys = key_rows(rows, servers(&prev.status));
        // clear the screen, cursor home
        let mut frame = String::from("\x1b[H\x1b[2J");
        match read(opts, rows_for_keys) {
            Ok(cur) => {
                let layout = view::Layout {
                    width,
                    key_rows: rows_for_keys,
                    ansi: true,
                };
                frame.push_str(&view::render(&prev, &cur, &opts.admin, &every, layout));
                prev = cur;
            }
            Err(e) => {
                tracing::debug!(error = %e, "outpost top: read failed");
                frame.push_str(&format!("error: {e:#}\n(retrying every {every})\n"));
            }
        }
        if raw.is_some() {
            // raw mode also stops the terminal from returning the carriage at a line feed
            frame = frame.replace('\n', "\r\n");
        }
        out.write_all(frame.as_bytes())
            .and_then(|()| out.flush())
            .context("writing to the terminal")?;
    }
    drop(raw);
    // the last frame stays on screen; the shell prompt starts below it
    println!();
    Ok(())
}

/// Parse `--interval`: a duration (`1s`, `500ms`, `2m`) or a number of seconds.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("{s:?}: the interval must be positive")),
        Err(_) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?} is not a duration like 1s or 500ms: {e}"))?,
    };
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?}: the interval must be at least 100ms"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_url_gets_the_metrics_path_unless_it_has_one() {
        assert_eq!(
            metrics_target("http://127.0.0.1:9090"),
            ("http://127.0.0.1:9090".into(), "/metrics".into())
        );
        assert_eq!(
            metrics_target("http://127.0.0.1:9090/"),
            ("http://127.0.0.1:9090/".into(), "/metrics".into())
        );
        assert_eq!(
            metrics_target("http://10.0.0.1:9090/metrics"),
            ("http://10.0.0.1:9090/".into(), "/metrics".into())
        );
    }

    #[test]
    fn intervals_take_units_or_seconds() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert!(parse_interval("10ms").is_err());
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("soon").is_err());
    }

    #[test]
    fn q_esc_and_control_c_or_d_quit_other_keys_do_not() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        let none = KeyModifiers::NONE;
        let ctrl = KeyModifiers::CONTROL;
        for k in [
            key(KeyCode::Char('q'), none),
            key(KeyCode::Char('Q'), KeyModifiers::SHIFT),
            key(KeyCode::Esc, none),
            key(KeyCode::Char('c'), ctrl),
            key(KeyCode::Char('d'), ctrl),
        ] {
            assert!(quits(&k), "{k:?}");
        }
        for k in [
            key(KeyCode::Char('c'), none),
            key(KeyCode::Char('x'), none),
            key(KeyCode::Enter, none),
            KeyEvent::new_with_kind(KeyCode::Char('q'), none, KeyEventKind::Release),
        ] {
            assert!(!quits(&k), "{k:?}");
        }
    }

    #[test]
    fn key_rows_fit_the_terminal() {
        assert_eq!(key_rows(40, 2), 40 - FIXED_LINES - 2);
        assert_eq!(key_rows(10, 2), 5);
    }
}
