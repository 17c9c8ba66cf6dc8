//! The web console's sign-in for people: the OpenID Connect authorization code flow with PKCE
//! (RFC 7636, `S256`). [`Start::new`] makes the secrets of one sign-in (state, nonce, code
//! verifier) and the provider URL to send the browser to; [`exchange`] trades the code the
//! provider sent back for an ID token, which [`OidcVerifier::verify_id_token`] then checks
//! (signature, issuer, audience = client id, expiry, nonce).

use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;

use crate::AuthError;
use crate::oidc::{Endpoints, OidcVerifier};

/// `bytes` random bytes as unpadded base64url: 32 bytes make a 43-character value, the
/// shortest code verifier RFC 7636 allows.
pub fn random_token(bytes: usize) -> Result<String, AuthError> {
    use base64::Engine;
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| AuthError::Unavailable("the system's random number generator failed".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// The `S256` code challenge of a code verifier: base64url(SHA-256(verifier)).
pub fn code_challenge(verifier: &str) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// One sign-in in progress: what the callback must check and send, and where the browser goes.
pub struct Start {
    /// Sent to the provider and back; ties the callback to this sign-in.
    pub state: String,
    /// Must come back inside the ID token.
    pub nonce: String,
    /// Kept by the gateway; only its challenge goes to the browser.
    pub verifier: String,
    /// The provider's authorization endpoint with every parameter of this sign-in.
    pub url: String,
}

impl std::fmt::Debug for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Start").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Start {
    /// A new sign-in against `endpoints`, coming back to `redirect_uri`.
    pub fn new(endpoints: &Endpoints, client_id: &str, redirect_uri: &str) -> Result<Start, AuthError> {
        let (state, nonce, verifier) = (random_token(32)?, random_token(32)?, random_token(32)?);
        let mut url = reqwest::Url::parse(&endpoints.authorization).map_err(|e| {
            AuthError::Unavailable(format!(
                "the identity provider's authorization endpoint {:?} is not a URL: {e}",
                endpoints.authorization
            ))
        })?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", "openid profile email")
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &code_challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(Start { state, nonce, verifier, url: url.into() })
    }
}

/// The client the console signs in as.
pub struct Client<'a> {
    pub id: &'a str,
    /// For a confidential client; sent with HTTP basic authentication.
    pub secret: Option<&'a str>,
    pub redirect_uri: &'a str,
}

impl std::fmt::Debug for Client<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("secret", &self.secret.map(|_| "<redacted>"))
            .field("redirect_uri", &self.redirect_uri)
            .finish()
    }
}

/// Trades an authorization code for the ID token, proving the sign-in with its code verifier.
pub async fn exchange(
    oidc: &OidcVerifier,
    endpoints: &Endpoints,
    client: &Client<'_>,
    code: &str,
    verifier: &str,
) -> Result<String, AuthError> {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", client.redirect_uri),
        ("client_id", client.id),
        ("code_verifier", verifier),
    ];
    let mut request = oidc.http().post(&endpoints.token).form(&form);
    if let Some(secret) = client.secret {
        request = request.basic_auth(client.id, Some(secret));
    }
    let response = request
        .send()
        .await
        .map_err(|e| AuthError::Unavailable(format!("the identity provider's token endpoint: {e}")))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        // The provider's own error code and description, never the request (it holds the code).
        let error = body["error"].as_str().unwrap_or("no error code");
        let detail = body["error_description"].as_str().map(|d| format!(": {d}")).unwrap_or_default();
        return Err(AuthError::Rejected(format!(
            "the identity provider refused the sign-in (HTTP {status}, {error}{detail})"
        )));
    }
    body["id_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| AuthError::Rejected("the identity provider's answer holds no id_token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_is_rfc_7636s() {
        // RFC 7636, appendix B.
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn a_start_carries_every_parameter_and_fresh_secrets() {
        let endpoints = Endpoints { authorization: "https://idp.example/authorize?x=1".into(), token: "t".into() };
        let a = Start::new(&endpoints, "console", "http://127.0.0.1:8800/console/callback").unwrap();
        let b = Start::new(&endpoints, "console", "http://127.0.0.1:8800/console/callback").unwrap();
        assert_ne!(a.state, b.state);
        assert_ne!(a.verifier, b.verifier);
        assert_eq!(a.verifier.len(), 43);
        let url = reqwest::Url::parse(&a.url).unwrap();
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["x"], "1");
        assert_eq!(q["code_challenge"], code_challenge(&a.verifier));
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["state"], a.state);
        assert_eq!(q["nonce"], a.nonce);
        assert!(!a.url.contains(&a.verifier), "the verifier never goes to the browser");
        assert!(!format!("{a:?}").contains(&a.verifier));
    }
}
