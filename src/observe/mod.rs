//! Watching a node: the access log ([`access_log`]), OpenTelemetry tracing ([`otel`]), the
//! heaviest keys of the recent traffic ([`topkeys`], kept by the node, served on the admin
//! API's `GET /top`), the Prometheus text format as the CLI reads it ([`exposition`]), and
//! `outpost top`, a live view of a node for a person ([`top`]).

pub mod access_log;
pub mod exposition;
pub mod otel;
pub mod top;
pub mod topkeys;

pub use topkeys::TopKeys;

/// Whether the `n`th event (0-based) is among a `fraction` of events spread evenly: with
/// 0.25, every fourth. Used by access log and trace sampling.
pub fn evenly_sampled(n: u64, fraction: f64) -> bool {
    fraction >= 1.0 || ((n + 1) as f64 * fraction).floor() > (n as f64 * fraction).floor()
}
