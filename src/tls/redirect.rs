//! HTTP -> HTTPS redirects of rules with `redirect_https = true`: a request that arrived on a
//! plain HTTP listener is sent to the same host, path and query on the first HTTPS listener.

use http::Method;
use pingora_proxy::Session;

/// Whether the request came over TLS (an HTTPS listener), HTTP/1 or HTTP/2.
pub fn on_tls(session: &Session) -> bool {
    session
        .digest()
        .is_some_and(|d| d.ssl_digest.as_ref().is_some())
}

/// Whether to redirect this request: its rule asks for HTTPS (`rule_redirects`), it came over
/// plain HTTP and names a host. Background refreshes are never redirected.
pub fn wanted(session: &Session, rule_redirects: bool, host: &str) -> bool {
    rule_redirects
        && !host.is_empty()
        && !session.downstream_session.is_subrequest()
        && !on_tls(session)
}

/// The redirect status for `method`: 301 for GET and HEAD (what nginx answers, and what every
/// client and cache understands), 308 for other methods, which must not be turned into a GET
/// on the way (RFC 9110 15.4.9; 301 allows clients to do that).
pub fn status(method: &Method) -> u16 {
    if matches!(*method, Method::GET | Method::HEAD) {
        301
    } else {
        308
    }
}

/// `https://<host>[:<port>]<path_and_query>`: `host` without its port (an IPv6 literal in
/// brackets), `port` left out when it is 443.
pub fn location(host: &str, port: u16, path_and_query: &str) -> String {
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_keeps_path_and_query_and_names_a_port_other_than_443() {
        assert_eq!(
            location("example.com", 8443, "/a/b?x=1&y"),
            "https://example.com:8443/a/b?x=1&y"
        );
        assert_eq!(location("example.com", 443, "/"), "https://example.com/");
        assert_eq!(location("[::1]", 8443, "/p"), "https://[::1]:8443/p");
        assert_eq!(location("example.com", 443, "*"), "https://example.com/");
    }

    #[test]
    fn safe_methods_get_301_others_308() {
        assert_eq!(status(&Method::GET), 301);
        assert_eq!(status(&Method::HEAD), 301);
        assert_eq!(status(&Method::POST), 308);
        assert_eq!(status(&Method::DELETE), 308);
    }
}
