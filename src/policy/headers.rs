//! Header rules applied on the request path: removals then fields set, global rules before the
//! matching cache rule's, and `Via` (RFC 9110 7.6.3).

use crate::config::HeaderRules;
use http::header::GetAll;
use http::{HeaderValue, Version};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

/// Apply `rules` to a request sent to the origin.
pub fn apply_request(rules: &HeaderRules, req: &mut RequestHeader) -> Result<()> {
    for name in &rules.remove {
        req.remove_header(name);
    }
    for (name, value) in &rules.set {
        req.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// Apply `rules` to a response sent to the client.
pub fn apply_response(rules: &HeaderRules, resp: &mut ResponseHeader) -> Result<()> {
    for name in &rules.remove {
        resp.remove_header(name);
    }
    for (name, value) in &rules.set {
        resp.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// This node's `Via` entries (RFC 9110 7.6.3): `<received protocol> <name>`.
pub struct Via {
    name: String,
    /// The common case, ready-made: a message received as HTTP/1.1 with no `Via` yet.
    http11: HeaderValue,
}

impl Via {
    /// Entries naming the node `name` (a token: validated with the configuration).
    pub fn new(name: &str) -> Via {
        Via {
            name: name.to_string(),
            http11: HeaderValue::from_str(&format!("1.1 {name}"))
                .unwrap_or_else(|_| HeaderValue::from_static("1.1 outpost")),
        }
    }

    /// The `Via` value of a message received as `version` carrying `existing` `Via` values:
    /// them, then this node's entry.
    pub fn value(&self, version: Version, existing: GetAll<'_, HeaderValue>) -> HeaderValue {
        let protocol = match version {
            Version::HTTP_09 => "0.9",
            Version::HTTP_10 => "1.0",
            Version::HTTP_2 => "2",
            Version::HTTP_3 => "3",
            _ => "1.1",
        };
        if protocol == "1.1" && existing.iter().next().is_none() {
            return self.http11.clone();
        }
        let mut out = String::new();
        for v in existing.iter().filter_map(|v| v.to_str().ok()) {
            out.push_str(v);
            out.push_str(", ");
        }
        out.push_str(protocol);
        out.push(' ');
        out.push_str(&self.name);
        HeaderValue::from_str(&out).unwrap_or_else(|_| self.http11.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn via_names_the_received_protocol_and_appends() {
        let via = Via::new("edge-1");
        let none = HeaderMap::new();
        let v = |version, h: &HeaderMap| via.value(version, h.get_all("via"));
        assert_eq!(v(Version::HTTP_11, &none), "1.1 edge-1");
        assert_eq!(v(Version::HTTP_10, &none), "1.0 edge-1");
        assert_eq!(v(Version::HTTP_2, &none), "2 edge-1");
        let mut prev = HeaderMap::new();
        prev.append("via", HeaderValue::from_static("1.1 a"));
        prev.append("via", HeaderValue::from_static("2 b"));
        assert_eq!(v(Version::HTTP_11, &prev), "1.1 a, 2 b, 1.1 edge-1");
    }
}
