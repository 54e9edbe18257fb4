//! The `outpost` command line: `run` a node, `check` a configuration.

use clap::{Parser, Subcommand};
use outpost::config::{Config, Overrides};
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Run a node (until SIGTERM: graceful, or SIGINT: fast).
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = "conf/outpost.toml")]
        config: PathBuf,
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
    },
    /// Validate a configuration: print the effective config, or every error (exit 1).
    Check {
        /// Configuration file.
        #[arg(long, short, default_value = "conf/outpost.toml")]
        config: PathBuf,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,pingora_core=warn,pingora_proxy=warn,pingora_cache=warn",
        )
    });
    let json = std::env::var("OUTPOST_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
        } => {
            let overrides = Overrides {
                origin,
                listen,
                admin,
                metrics,
                cache_dir,
            };
            let cfg = match Config::load(&config, &overrides) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging();
            match outpost::server::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
