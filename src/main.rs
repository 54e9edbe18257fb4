//! The `outpost` command line: `run` a node, `check` a configuration, `purge` through a node's
//! admin API, watch a node with `top`.

use clap::{ArgGroup, Parser, Subcommand};
use outpost::config::{Config, Overrides};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The configuration `outpost run` reads when `--config` is not given.
const DEFAULT_CONFIG: &str = "conf/outpost.toml";
/// conf/outpost.toml as built: what `outpost run` runs on without `--config` where there is no
/// conf/outpost.toml (from any other directory).
const EMBEDDED_CONFIG: &str = include_str!("../conf/outpost.toml");
/// How errors and the start-up line name the built-in configuration.
const EMBEDDED_NAME: &str = "(built-in conf/outpost.toml)";

/// mimalloc: less fragmentation than glibc malloc for many small cache objects, and faster
/// small allocations on the request path (measured with benches/load/run.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Outpost: an HTTP edge caching reverse proxy (a self-hosted CDN node).
#[derive(Parser)]
#[command(name = "outpost", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (until SIGTERM: graceful, SIGINT: fast, or SIGQUIT: hand the listening
    /// sockets to a node started with --upgrade, then stop gracefully).
    Run {
        /// Configuration file [default: conf/outpost.toml, or when there is none here, that
        /// file as built into the binary].
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Origin URL (replaces the first [[origins]] url), e.g. http://127.0.0.1:8000.
        #[arg(long, value_name = "URL")]
        origin: Option<String>,
        /// Public HTTP listen address (replaces [listen] http).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Admin API listen address.
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
        /// Prometheus metrics listen address.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// Disk cache directory.
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<String>,
        /// Zero-downtime upgrade: take the listening sockets over from the node running with
        /// this configuration. Start this, then send the running node SIGQUIT (within about
        /// 5 s): it hands its sockets over on node.upgrade_sock and finishes its requests in
        /// flight.
        #[arg(long, short)]
        upgrade: bool,
    },
    /// Validate a configuration: print the effective config, or every error (exit 1).
    Check {
        /// Configuration file.
        #[arg(long, short, default_value = "conf/outpost.toml")]
        config: PathBuf,
    },
    /// Purge cached objects through a node's admin API (exit 1 if it refuses).
    #[command(group(ArgGroup::new("target").required(true).args(["url", "prefix", "tag", "all"])))]
    Purge {
        /// The node's admin API, e.g. http://127.0.0.1:9091.
        #[arg(long, value_name = "URL")]
        admin: String,
        /// Bearer token of the admin API.
        #[arg(long, env = "OUTPOST_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
        /// One URL, every stored variant of it, e.g. https://example.com/a.css.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Every URL whose path starts with this prefix (of --host, or of every host).
        #[arg(long, value_name = "PATH")]
        prefix: Option<String>,
        /// With --prefix: only this host.
        #[arg(long, requires = "prefix")]
        host: Option<String>,
        /// Every object tagged so (Surrogate-Key / Cache-Tag); repeat for several.
        #[arg(long, value_name = "TAG")]
        tag: Vec<String>,
        /// Everything cached (needs --yes).
        #[arg(long, requires = "yes")]
        all: bool,
        /// Confirm --all.
        #[arg(long)]
        yes: bool,
        /// Mark stale (revalidate on next request) instead of removing.
        #[arg(long)]
        soft: bool,
    },
    /// Watch a node live: requests/s by cache status, hit ratios, bytes/s, latency, upstream
    /// health, purges, rate limits and the most requested keys, redrawn every interval (q quits).
    Top {
        /// The node's admin API, e.g. http://127.0.0.1:9091.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9091")]
        admin: String,
        /// Bearer token of the admin API.
        #[arg(long, env = "OUTPOST_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
        /// The node's metrics listener (metrics.listen) [default: http://127.0.0.1:9090].
        #[arg(long, value_name = "URL")]
        metrics: Option<String>,
        /// Time between two reads, e.g. 1s, 500ms, 5s.
        #[arg(long, value_name = "DURATION", default_value = "1s",
              value_parser = outpost::observe::top::parse_interval)]
        interval: std::time::Duration,
        /// Print one frame (two reads one interval apart) as plain text, and exit.
        #[arg(long)]
        once: bool,
    },
}

/// The `POST /purge` body for the CLI's target arguments.
fn purge_body(
    url: Option<String>,
    prefix: Option<String>,
    host: Option<String>,
    tags: Vec<String>,
    all: bool,
    soft: bool,
) -> serde_json::Value {
    let mut body = match (url, prefix) {
        (Some(url), _) => serde_json::json!({ "url": url }),
        (None, Some(prefix)) => match host {
            Some(host) => serde_json::json!({ "prefix": prefix, "host": host }),
            None => serde_json::json!({ "prefix": prefix }),
        },
        (None, None) if all => serde_json::json!({ "all": true, "confirm": true }),
        (None, None) => serde_json::json!({ "tags": tags }),
    };
    if soft {
        body["soft"] = serde_json::Value::Bool(true);
    }
    body
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Purge {
            admin,
            token,
            url,
            prefix,
            host,
            tag,
            all,
            yes: _,
            soft,
        } => {
            let body = purge_body(url, prefix, host, tag, all, soft).to_string();
            match outpost::admin::client::post_json(&admin, "/purge", &token, &body) {
                Ok(answer) => {
                    println!("{}", answer.body.trim());
                    if (200..300).contains(&answer.status) {
                        ExitCode::SUCCESS
                    } else {
                        eprintln!("error: the admin API answered {}", answer.status);
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Top {
            admin,
            token,
            metrics,
            interval,
            once,
        } => {
            let options = outpost::observe::top::Options {
                admin,
                metrics_defaulted: metrics.is_none(),
                metrics: metrics.unwrap_or_else(|| "http://127.0.0.1:9090".into()),
                token,
                interval,
                once,
            };
            match outpost::observe::top::run(&options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => match Config::load(&config, &Overrides::default()) {
            Ok(cfg) => {
                print!("{}", cfg.describe());
                eprintln!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config,
            origin,
            listen,
            admin,
            metrics,
            cache_dir,
            upgrade,
        } => {
            let overrides = Overrides {
                origin,
                listen,
                admin,
                metrics,
                cache_dir,
            };
            // no --config: conf/outpost.toml here, else the same file as built in (reloads
            // then have no file to read)
            let file = config.or_else(|| {
                let default = PathBuf::from(DEFAULT_CONFIG);
                default.exists().then_some(default)
            });
            let loaded = match &file {
                Some(path) => Config::load(path, &overrides),
                None => Config::from_str(EMBEDDED_CONFIG, Path::new(EMBEDDED_NAME), &overrides),
            };
            let cfg = match loaded {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            outpost::observe::logging::init();
            let start = if upgrade {
                outpost::server::Start::Upgrade
            } else {
                outpost::server::Start::Fresh
            };
            match outpost::server::run(cfg, file.map(|path| (path, overrides)), start) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
