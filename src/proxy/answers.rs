//! Answers of the node itself: refusals, rate-limit 429s, HTTPS redirects.

use super::*;

/// A plain-text answer of the node itself (never stored): `status` with a body of `body_len`
/// bytes; callers add their own fields.
pub(super) fn plain_response(status: u16, body_len: usize) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(8))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, body_len.to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    Ok(resp)
}

/// Send the node's own answer `resp` with `body` (none to a HEAD request).
pub(super) async fn send_answer(
    session: &mut Session,
    resp: ResponseHeader,
    body: Bytes,
) -> Result<()> {
    let head_only = session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

impl OutpostProxy {
    /// Answer a request refused by the hardening checks (and close the connection: its framing
    /// may not be what the client meant).
    pub(super) async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rejection: Rejection,
    ) -> Result<()> {
        self.count_rejection(session, ctx, rejection);
        let body = Bytes::from_static(rejection.message().as_bytes());
        let resp = plain_response(rejection.status(), body.len())?;
        session.set_keepalive(None);
        send_answer(session, resp, body).await
    }

    /// Answer a plain-HTTP request of a `redirect_https` rule with a redirect to the first
    /// HTTPS listener (counted as a bypass: the cache is not involved).
    pub(super) async fn redirect_to_https(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let req = session.req_header();
        let status = redirect::status(&req.method);
        let port = self.node.config.listen.https_port().unwrap_or(443);
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let location = redirect::location(&ctx.host, port, target);
        ctx.forward = Some(Forward::Bypass);
        ctx.cache_status = Some(CacheStatus::Forward {
            fwd: Forward::Bypass,
            status: None,
            stored: false,
            detail: Some("https-redirect"),
        });
        let body = Bytes::from_static(b"this resource is served over HTTPS\n");
        let mut resp = plain_response(status, body.len())?;
        resp.insert_header(header::LOCATION, location)?;
        send_answer(session, resp, body).await
    }

    /// Count and log a refused request.
    pub(super) fn count_rejection(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        rejection: Rejection,
    ) {
        ctx.refused = true;
        self.node
            .metrics
            .policy
            .rejected
            .with_label_values(&[rejection.reason()])
            .inc();
        let req = session.req_header();
        tracing::info!(
            reason = rejection.reason(),
            status = rejection.status(),
            client = ?session.client_addr(),
            method = %req.method,
            uri_bytes = req.raw_path().len(),
            "request refused"
        );
    }

    /// Count the request against the rate limits of `phase`; if one refuses it, answer 429
    /// and return true. Background refreshes are not counted.
    pub(super) async fn rate_limit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        phase: Phase,
    ) -> Result<bool> {
        let limits = &ctx.routing.limits;
        if limits.is_empty()
            || (phase == Phase::Misses && !limits.has_miss_limits())
            || session.subrequest_ctx.is_some()
        {
            return Ok(false);
        }
        let req = session.req_header();
        let Some(peer) = session.client_addr().and_then(|a| a.as_inet()) else {
            return Ok(false);
        };
        let client = client_ip(&ctx.routing.client_ip, peer.ip(), &req.headers);
        let refused = limits.check(
            &self.node.buckets,
            phase,
            (&req.method, &ctx.host, req.uri.path()),
            client,
            &req.headers,
            &mut ctx.limits,
        );
        let Some(refused) = refused else {
            return Ok(false);
        };
        let (text, retry) = limits.refuse(&self.node.metrics.policy.rate_limited, &refused, client);
        let body = Bytes::from(text);
        let mut resp = plain_response(StatusCode::TOO_MANY_REQUESTS.as_u16(), body.len())?;
        resp.insert_header(header::RETRY_AFTER, retry.to_string())?;
        resp.insert_header("ratelimit-policy", limits.policy_field(&ctx.limits))?;
        resp.insert_header("ratelimit", limits.state_field(&ctx.limits))?;
        ctx.refused = true;
        send_answer(session, resp, body).await?;
        Ok(true)
    }
}
