//! The `[cluster]` section (fleet purge over NATS JetStream), validated.

use super::error::Errors;
use super::file;
use super::validate::{duration, LIFETIME, WAIT};
use super::*;

/// Validate `[cluster]`.
pub(super) fn cluster(errs: &mut Errors, c: &file::ClusterSection) -> ClusterConfig {
    let nats_url = match &c.nats_url {
        None => {
            errs.push(
                "cluster.nats_url",
                "missing: the NATS server, e.g. \"nats://127.0.0.1:4222\" (or remove [cluster])",
            );
            String::new()
        }
        Some(u) => {
            match url::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "nats" | "tls") && url.host_str().is_some() => {}
                _ => errs.push(
                    "cluster.nats_url",
                    format!("{u:?} is not a NATS URL like \"nats://127.0.0.1:4222\""),
                ),
            }
            u.clone()
        }
    };
    let stream = c.stream.clone().unwrap_or_else(|| "OUTPOST_PURGES".into());
    if stream.is_empty()
        || !stream
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
    {
        errs.push(
            "cluster.stream",
            format!("invalid stream name {stream:?}: use letters, digits, '_' or '-'"),
        );
    }
    if let Some(var) = &c.token_env {
        if var.is_empty() {
            errs.push("cluster.token_env", "must name an environment variable");
        }
    }
    let retention = duration(
        errs,
        "cluster.retention",
        c.retention.as_ref(),
        Duration::from_secs(7 * 86400),
        Duration::from_secs(60)..=*LIFETIME.end(),
    );
    let revalidate_until_synced = match c.until_synced.as_deref() {
        None | Some("revalidate") => true,
        Some("serve") => false,
        Some(other) => {
            errs.push(
                "cluster.until_synced",
                format!("unknown value {other:?}: use \"revalidate\" or \"serve\""),
            );
            true
        }
    };
    ClusterConfig {
        nats_url,
        stream,
        token_env: c.token_env.clone(),
        retention,
        max_lag: duration(
            errs,
            "cluster.max_lag",
            c.max_lag.as_ref(),
            Duration::from_secs(30),
            WAIT,
        ),
        revalidate_until_synced,
    }
}
