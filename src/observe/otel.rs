//! OpenTelemetry tracing of requests (`[tracing]`): a server span per request (cache status,
//! method, status) and a client span per upstream fetch, exported over OTLP/HTTP by the SDK's
//! batch processor (its own thread: the request path only hands finished spans over). The W3C
//! `traceparent` of a request is continued, and the upstream fetch span's is sent to the origin.
//!
//! Spans are built when the request is logged, from times recorded on the way (no span object
//! lives across Pingora's hooks). Off, nothing here runs and `traceparent` passes untouched.

use crate::config::TracingConfig;
use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// The trace identity of one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestTrace {
    /// The trace (the caller's, or a new one).
    pub trace_id: TraceId,
    /// The caller's span, when the request carried a `traceparent`.
    pub parent: Option<SpanId>,
    /// This node's server span.
    pub server: SpanId,
    /// The upstream fetch span (its id goes to the origin in `traceparent`).
    pub fetch: SpanId,
    /// Whether the spans are recorded and exported.
    pub sampled: bool,
    /// When the request started (wall clock).
    pub start: SystemTime,
}

impl RequestTrace {
    /// The `traceparent` value for the upstream request: this trace, the fetch span.
    pub fn upstream_traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.fetch,
            u8::from(self.sampled)
        )
    }
}

/// Parse a W3C `traceparent` (version 00, or a later version's first four fields).
pub fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, bool)> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace, span, flags & 1 == 1))
}

/// What the server span reports about a finished request.
pub struct Finished<'a> {
    /// Request method.
    pub method: &'a str,
    /// Host.
    pub host: &'a str,
    /// Path (no query: spans are not a place for query strings).
    pub path: &'a str,
    /// Response status (0: none).
    pub status: u16,
    /// Cache status label.
    pub cache: &'a str,
    /// Body bytes sent.
    pub bytes: u64,
    /// The request id.
    pub request_id: Option<&'a str>,
    /// The upstream fetch: (server, tier, offset of its start, offset of its end, its status).
    pub fetch: Option<(String, &'static str, Duration, Duration, Option<u16>)>,
    /// Time from the start to the end of the response.
    pub total: Duration,
}

/// The node's tracer.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    sample: f64,
    started: AtomicU64,
    ids: super::Ids,
}

impl Tracing {
    /// The exporter and tracer for `config` (`None` when tracing is off).
    pub fn start(config: &TracingConfig) -> anyhow::Result<Option<Tracing>> {
        if !config.enabled {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(config.endpoint.clone())
            .with_protocol(if config.json {
                Protocol::HttpJson
            } else {
                Protocol::HttpBinary
            })
            .with_timeout(config.timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("tracing.endpoint {}: {e}", config.endpoint))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "outpost");
        Ok(Some(Tracing {
            provider,
            tracer,
            sample: config.sample,
            started: AtomicU64::new(0),
            ids: super::Ids::new(),
        }))
    }

    /// A fresh 64-bit id (never zero).
    fn id(&self) -> u64 {
        self.ids.next().max(1)
    }

    /// The trace of a request that carried `traceparent` (if any).
    pub fn begin(&self, traceparent: Option<&str>) -> RequestTrace {
        let (trace_id, parent, sampled) = match traceparent.and_then(parse_traceparent) {
            Some((trace, span, sampled)) => (trace, Some(span), sampled),
            None => {
                // evenly: with 0.1, every tenth new trace
                let n = self.started.fetch_add(1, Ordering::Relaxed);
                let sampled = super::evenly_sampled(n, self.sample);
                let id = (u128::from(self.id()) << 64) | u128::from(self.id());
                (TraceId::from(id), None, sampled)
            }
        };
        RequestTrace {
            trace_id,
            parent,
            server: SpanId::from(self.id()),
            fetch: SpanId::from(self.id()),
            sampled,
            start: SystemTime::now(),
        }
    }

    /// Record the spans of a finished request (nothing unless it was sampled).
    pub fn finish(&self, t: &RequestTrace, r: &Finished<'_>) {
        if !t.sampled {
            return;
        }
        let flags = TraceFlags::SAMPLED;
        let parent_cx = match t.parent {
            Some(span) => Context::new().with_remote_span_context(SpanContext::new(
                t.trace_id,
                span,
                flags,
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", r.method.to_string()),
            KeyValue::new("server.address", r.host.to_string()),
            KeyValue::new("url.path", r.path.to_string()),
            KeyValue::new("http.response.status_code", i64::from(r.status)),
            KeyValue::new("outpost.cache_status", r.cache.to_string()),
            KeyValue::new("http.response.body.size", r.bytes as i64),
        ];
        if let Some(id) = r.request_id {
            attributes.push(KeyValue::new("outpost.request_id", id.to_string()));
        }
        let server = SpanBuilder {
            trace_id: Some(t.trace_id),
            span_id: Some(t.server),
            span_kind: Some(SpanKind::Server),
            name: format!("{} {}", r.method, r.cache).into(),
            start_time: Some(t.start),
            end_time: Some(t.start + r.total),
            attributes: Some(attributes),
            status: if r.status >= 500 || r.status == 0 {
                Status::error(format!("status {}", r.status))
            } else {
                Status::Unset
            },
            ..SpanBuilder::from_name("")
        };
        let span = self.tracer.build_with_context(server, &parent_cx);
        let server_cx = parent_cx.with_remote_span_context(SpanContext::new(
            t.trace_id,
            t.server,
            flags,
            false,
            TraceState::default(),
        ));
        drop(span);
        if let Some((upstream, tier, from, to, status)) = &r.fetch {
            let mut attributes = vec![
                KeyValue::new("server.address", upstream.clone()),
                KeyValue::new("outpost.tier", *tier),
                KeyValue::new("http.request.method", r.method.to_string()),
            ];
            if let Some(s) = status {
                attributes.push(KeyValue::new("http.response.status_code", i64::from(*s)));
            }
            let fetch = SpanBuilder {
                trace_id: Some(t.trace_id),
                span_id: Some(t.fetch),
                span_kind: Some(SpanKind::Client),
                name: format!("{tier} fetch").into(),
                start_time: Some(t.start + *from),
                end_time: Some(t.start + *to),
                attributes: Some(attributes),
                status: match status {
                    Some(s) if *s < 500 => Status::Unset,
                    _ => Status::error("upstream failed"),
                },
                ..SpanBuilder::from_name("")
            };
            drop(self.tracer.build_with_context(fetch, &server_cx));
        }
    }

    /// Export what is pending (at shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "tracing: spans not exported at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing_follows_w3c() {
        let (t, s, sampled) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        assert!(sampled);
        assert!(
            !parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .2
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // a later version may carry more fields
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }
}
