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

/// Whether `e` says the origin could not be reached, or closed the connection without a
/// response (RFC 9111 4.2.4 "disconnected"), rather than answering too slowly.
pub(super) fn unreachable(e: &Error) -> bool {
    match e.etype() {
        ErrorType::Custom(what) => *what == NO_SERVER,
        t => matches!(
            t,
            ErrorType::ConnectTimedout
                | ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectError
                | ErrorType::ConnectProxyFailure
                | ErrorType::TLSHandshakeFailure
                | ErrorType::TLSHandshakeTimedout
                | ErrorType::InvalidCert
                | ErrorType::HandshakeError
                | ErrorType::SocketError
                | ErrorType::BindError
                | ErrorType::ConnectionClosed
                | ErrorType::ReadError
                | ErrorType::WriteError
        ),
    }
}

/// The `Cache-Status` detail of the node's answer `code` to a request that failed.
pub fn failure_detail(code: u16) -> &'static str {
    match code {
        504 => "origin-timeout",
        502 => "origin-unreachable",
        503 => "no-healthy-origin",
        _ => "error",
    }
}

/// The body of the node's answer `code` to a request that failed (`shield`: the tier above
/// is a shield, not the origin).
pub fn failure_text(code: u16, shield: bool) -> &'static str {
    match code {
        502 if shield => {
            "502 Bad Gateway: the shield tier could not be reached or failed mid-response\n"
        }
        502 => "502 Bad Gateway: the origin could not be reached or failed mid-response\n",
        504 if shield => "504 Gateway Timeout: the shield tier did not answer in time\n",
        504 => "504 Gateway Timeout: the origin did not answer in time\n",
        503 if shield => {
            "503 Service Unavailable: no shield node is available (all down or failed)\n"
        }
        503 => "503 Service Unavailable: no origin server is available (all down or failed)\n",
        400 => "400 Bad Request\n",
        408 => Rejection::BodyTimeout.message(),
        413 => Rejection::BodyTooLarge.message(),
        _ => "the request could not be completed\n",
    }
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

/// A client that disconnects mid-response is routine, not an error worth a log line. Over
/// HTTP/2 that is a downstream `H2Error`: the client reset the stream ("Client closed H2",
/// "cannot reserve capacity") or closed the connection under it.
pub(super) fn client_went_away(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed
                | ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::H2Error
        )
}

/// Where the exchange of `session` stood when its client went away. (Pingora's own "body
/// done" is also true of a body cut short, hence `request_body_ended`.)
fn disconnect_phase(session: &mut Session, ctx: &RequestCtx) -> DisconnectPhase {
    if session.response_written().is_some() {
        DisconnectPhase::ResponseBody
    } else if !ctx.request_body_ended && !session.is_body_empty() {
        DisconnectPhase::RequestBody
    } else {
        DisconnectPhase::ResponseHeader
    }
}

impl OutpostProxy {
    /// The failure `e` a request ended with, once (from `logging`): a client that went away is
    /// counted by phase and logged at debug; another failure `fail_to_proxy` did not log (one
    /// of a stored response being sent, whose Pingora line is left out of the log:
    /// `observe::logging::QUIET`) is logged here, at most once per interval.
    pub(super) fn record_failure(&self, session: &mut Session, e: &Error, ctx: &RequestCtx) {
        if client_went_away(e) {
            let phase = disconnect_phase(session, ctx);
            self.node.metrics.disconnects.count(phase);
            tracing::debug!(
                error = %e,
                host = %ctx.host,
                phase = phase.as_str(),
                "client closed the connection"
            );
        } else if !ctx.failure_logged {
            if let Some(suppressed) = self.hit_failures.admit() {
                let path = session.req_header().uri.path();
                tracing::warn!(
                    error = %e,
                    host = %ctx.host,
                    path,
                    suppressed,
                    "sending a stored response failed"
                );
            }
        }
    }
}
