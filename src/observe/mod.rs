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
