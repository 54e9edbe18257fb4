//! Errors the request path raises itself, and which client errors are routine.

use super::*;

/// No server of a pool could take the request: 503 (stale-if-error applies: an upstream error).
pub(super) fn no_server_error(pool: &Pool, why: NoServer) -> Box<Error> {
    let what = match why {
        NoServer::AllDown => "no healthy server",
        NoServer::Exhausted => "every server failed",
    };
    Error::explain(
        ErrorType::Custom(NO_SERVER),
        format!("{} {:?}: {what}", pool.tier.as_str(), pool.name()),
    )
    .into_up()
}

/// Error type of [`no_server_error`].
pub(super) const NO_SERVER: &str = "no-server";

/// The origin failed this request: the fetch went past `total_timeout`.
pub(super) fn total_timeout_error() -> Box<Error> {
    Error::explain(
        ErrorType::ReadTimedout,
        "origin fetch exceeded total_timeout",
    )
    .into_up()
}

/// A client that disconnects mid-response is routine, not an error worth a log line.
pub(super) fn client_went_away(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}
