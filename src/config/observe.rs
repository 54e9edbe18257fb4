//! The `[access_log]` and `[tracing]` sections, validated.

use super::error::Errors;
use super::file;
use super::validate::{duration, TIMEOUT};
use super::*;

/// Validate `[access_log]`.
pub(super) fn access_log(errs: &mut Errors, a: &file::AccessLogSection) -> AccessLogConfig {
    let path = match a.path.as_deref() {
        None | Some("-") => None,
        Some("") => {
            errs.push(
                "access_log.path",
                "must be a file path, or \"-\" for standard output",
            );
            None
        }
        Some(p) => Some(PathBuf::from(p)),
    };
    let format = match a.format.as_deref() {
        None | Some("json") => AccessLogFormat::Json,
        Some("combined") => AccessLogFormat::Combined,
        Some(other) => {
            errs.push(
                "access_log.format",
                format!("unknown format {other:?}: use \"json\" or \"combined\""),
            );
            AccessLogFormat::Json
        }
    };
    let sample = a.sample.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample) {
        errs.push(
            "access_log.sample",
            format!("{sample} is not a fraction between 0 and 1"),
        );
    }
    let buffer = match a.buffer {
        None => 8192,
        Some(n) if (1..=1_000_000).contains(&n) => n as usize,
        Some(n) => {
            errs.push(
                "access_log.buffer",
                format!("{n} is out of range 1..=1000000"),
            );
            8192
        }
    };
    let request_id_header = match a.request_id_header.as_deref() {
        None => Some(HeaderName::from_static("x-request-id")),
        Some("") => None,
        Some(name) => match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                errs.push(
                    "access_log.request_id_header",
                    format!("{name:?} is not a header field name"),
                );
                None
            }
        },
    };
    AccessLogConfig {
        enabled: a.enabled.unwrap_or(true),
        path,
        format,
        sample: sample.clamp(0.0, 1.0),
        buffer,
        request_id_header,
    }
}

/// Validate `[tracing]`.
pub(super) fn tracing_config(
    errs: &mut Errors,
    t: &file::TracingSection,
    node_name: &str,
) -> TracingConfig {
    let endpoint = t
        .endpoint
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:4318/v1/traces".into());
    match url::Url::parse(&endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        _ => errs.push(
            "tracing.endpoint",
            format!("{endpoint:?} is not an http(s) URL like \"http://127.0.0.1:4318/v1/traces\""),
        ),
    }
    let json = match t.protocol.as_deref() {
        None | Some("http/protobuf") => false,
        Some("http/json") => true,
        Some(other) => {
            errs.push(
                "tracing.protocol",
                format!("unknown protocol {other:?}: use \"http/protobuf\" or \"http/json\""),
            );
            false
        }
    };
    let sample = t.sample.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample) {
        errs.push(
            "tracing.sample",
            format!("{sample} is not a fraction between 0 and 1"),
        );
    }
    TracingConfig {
        enabled: t.enabled.unwrap_or(false),
        endpoint,
        json,
        sample: sample.clamp(0.0, 1.0),
        service_name: t
            .service_name
            .clone()
            .unwrap_or_else(|| format!("outpost {node_name}")),
        timeout: duration(
            errs,
            "tracing.timeout",
            t.timeout.as_ref(),
            Duration::from_secs(5),
            TIMEOUT,
        ),
    }
}
