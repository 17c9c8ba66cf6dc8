//! Which headers cross the gateway. Upstream: hop-by-hop headers (RFC 9110 §7.6.1, and those the
//! `Connection` header names) are dropped, and so are the caller's credentials, identity claims
//! and method overrides; the connection's credential, `X-Forwarded-*` and the caller's identity
//! are added. Back to the caller: hop-by-hop headers are dropped, and the length, encoding and
//! validators of a body the gateway rewrote.

use base64::Engine as _;
use gatehouse_core::pipeline::CredentialForm;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The header that carries the caller's identity to the upstream.
pub const IDENTITY_HEADER: &str = "x-gatehouse-identity";

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers a caller may not send on: its own credentials (it never holds the upstream's),
/// claims of identity or origin (the gateway states those), and method overrides (the decided
/// method is the method that runs).
const CALLER_ONLY: &[&str] = &[
    "authorization",
    "cookie2",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "host",
];

fn is_hop_by_hop(name: &HeaderName, listed: &[String]) -> bool {
    HOP_BY_HOP.contains(&name.as_str()) || listed.iter().any(|l| l == name.as_str())
}

/// The header names a `Connection` header lists (they are hop-by-hop too).
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// What the upstream is told about the caller.
#[derive(Debug)]
pub struct Forwarded<'a> {
    pub client_ip: Option<String>,
    pub proto: &'a str,
    pub host: Option<String>,
    /// The caller's identity, as the gateway stamps it.
    pub identity: &'a str,
}

/// The headers to send upstream for a caller's request. `credential_header` is the header a
/// configured credential goes in (so a caller cannot set it), `None` without a credential.
pub fn upstream(
    caller: &HeaderMap,
    form: &CredentialForm,
    user: Option<&str>,
    secret: Option<&str>,
    forwarded: &Forwarded<'_>,
) -> Result<HeaderMap, String> {
    let listed = connection_listed(caller);
    let credential_name = match (form, secret) {
        (CredentialForm::Header(name), Some(_)) => {
            Some(HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("credential header {name:?}: {e}"))?)
        }
        _ => None,
    };
    let mut out = HeaderMap::with_capacity(caller.len() + 6);
    for (name, value) in caller {
        let lower = name.as_str();
        if is_hop_by_hop(name, &listed)
            || CALLER_ONLY.contains(&lower)
            || lower.starts_with("x-gatehouse-")
            || credential_name.as_ref() == Some(name)
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    let value = |text: String| HeaderValue::from_str(&text).map_err(|_| "a header value is not valid".to_string());
    match (form, secret) {
        (_, None) => {}
        (CredentialForm::Bearer, Some(token)) => {
            let mut v = value(format!("Bearer {token}"))?;
            v.set_sensitive(true);
            out.insert(header::AUTHORIZATION, v);
        }
        (CredentialForm::Header(_), Some(secret)) => {
            if let Some(name) = credential_name {
                let mut v = value(secret.to_string())?;
                v.set_sensitive(true);
                out.insert(name, v);
            }
        }
        (CredentialForm::Password | CredentialForm::KeyFile, Some(password)) => {
            let pair = format!("{}:{password}", user.unwrap_or_default());
            let mut v = value(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))?;
            v.set_sensitive(true);
            out.insert(header::AUTHORIZATION, v);
        }
    }
    if let Some(ip) = &forwarded.client_ip {
        out.insert("x-forwarded-for", value(ip.clone())?);
    }
    out.insert("x-forwarded-proto", value(forwarded.proto.to_string())?);
    if let Some(host) = &forwarded.host {
        out.insert("x-forwarded-host", value(host.clone())?);
    }
    out.insert(IDENTITY_HEADER, value(forwarded.identity.to_string())?);
    Ok(out)
}

/// The upstream's response headers as the caller gets them. `rewritten`: the gateway changed
/// the body (masked it, or decoded it to mask it), so its length, encoding and validators no
/// longer hold.
pub fn downstream(upstream: &HeaderMap, rewritten: bool) -> HeaderMap {
    let listed = connection_listed(upstream);
    let mut out = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        if is_hop_by_hop(name, &listed) {
            continue;
        }
        if rewritten
            && matches!(name.as_str(), "content-length" | "content-encoding" | "etag" | "content-md5" | "digest")
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn caller() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer ghs_caller"),
            ("x-api-key", "caller's own"),
            ("x-http-method-override", "DELETE"),
            ("x-forwarded-for", "10.9.9.9"),
            ("x-gatehouse-identity", "Service::\"admin\""),
            ("connection", "keep-alive, x-private"),
            ("x-private", "hop"),
            ("accept", "application/json"),
            ("cookie", "a=b"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    fn forwarded() -> Forwarded<'static> {
        Forwarded {
            client_ip: Some("127.0.0.1".into()),
            proto: "http",
            host: Some("gw:18080".into()),
            identity: "Service::\"app\"",
        }
    }

    #[test]
    fn the_callers_credentials_claims_and_overrides_are_replaced() {
        let out = upstream(&caller(), &CredentialForm::Header("X-Api-Key".into()), None, Some("k-123"), &forwarded())
            .unwrap();
        assert_eq!(out["x-api-key"], "k-123");
        assert_eq!(out.get_all("x-api-key").iter().count(), 1);
        assert!(out.get("authorization").is_none());
        assert!(out.get("x-http-method-override").is_none());
        assert!(out.get("x-private").is_none() && out.get("connection").is_none());
        assert_eq!(out["x-forwarded-for"], "127.0.0.1");
        assert_eq!(out["x-gatehouse-identity"], "Service::\"app\"");
        assert_eq!(out["accept"], "application/json");
        assert_eq!(out["cookie"], "a=b");

        let out = upstream(&caller(), &CredentialForm::Bearer, None, Some("tok"), &forwarded()).unwrap();
        assert_eq!(out["authorization"], "Bearer tok");
        assert!(out["authorization"].is_sensitive());
        assert_eq!(out["x-api-key"], "caller's own");
        let out = upstream(&caller(), &CredentialForm::Password, Some("u"), Some("p"), &forwarded()).unwrap();
        assert_eq!(out["authorization"], "Basic dTpw");
        let out = upstream(&caller(), &CredentialForm::Password, None, None, &forwarded()).unwrap();
        assert!(out.get("authorization").is_none());
    }

    #[test]
    fn a_rewritten_body_loses_its_length_and_encoding() {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("10"));
        h.insert("content-encoding", HeaderValue::from_static("gzip"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let out = downstream(&h, true);
        assert_eq!(out.len(), 1);
        let out = downstream(&h, false);
        assert!(out.get("content-length").is_some() && out.get("transfer-encoding").is_none());
    }
}
