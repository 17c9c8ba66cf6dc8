//! OIDC bearer tokens: the provider's discovery document, a JWKS cache that follows key
//! rotation, and the checks a JWT must pass before it becomes a `User::"…"` identity.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_core::{Identity, IdentityKind};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};

use crate::AuthError;

/// Signature algorithms accepted: asymmetric only. `none` and the HMAC family never verify.
const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// What the gateway needs to know about the identity provider.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// The provider's issuer URL, exactly as its tokens' `iss` and its discovery document say.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// The claim holding the caller's groups (a string or an array of strings).
    pub groups_claim: String,
    /// The claim that names the user (`email`, `preferred_username`, `sub`, …).
    pub username_claim: String,
    /// Tolerated clock difference for `exp` and `nbf`.
    pub leeway: Duration,
    /// The JWKS is fetched again for an unknown `kid` at most this often.
    pub jwks_min_refresh: Duration,
    /// The JWKS is fetched again after this long even if every `kid` is known.
    pub jwks_max_age: Duration,
}

struct Key {
    key: DecodingKey,
    /// The algorithms this key may verify, from its type (and its `alg`, when published).
    algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, Arc<Key>>,
    /// The last successful fetch.
    fetched: Option<Instant>,
    /// The last attempt, successful or not: refreshes are rate-limited on this, so a provider
    /// that is down is not asked again for every token.
    attempted: Option<Instant>,
    jwks_uri: Option<String>,
    /// From the discovery document, for the console's sign-in.
    endpoints: Option<Endpoints>,
}

/// Where a browser signs in (authorization code flow) and where the code is exchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub authorization: String,
    pub token: String,
}

/// Verifies JWTs from one identity provider. Cheap to share; refreshes are serialised.
pub struct OidcVerifier {
    settings: OidcSettings,
    http: reqwest::Client,
    cache: RwLock<Cache>,
    refreshing: Mutex<()>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier").field("issuer", &self.settings.issuer).finish_non_exhaustive()
    }
}

fn algorithms_for(jwk: &Jwk) -> Vec<Algorithm> {
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            jsonwebtoken::jwk::EllipticCurve::P256 => vec![Algorithm::ES256],
            jsonwebtoken::jwk::EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        // Symmetric keys are never used to verify: that is the classic key-confusion hole.
        AlgorithmParameters::OctetKey(_) => vec![],
    };
    let published = jwk
        .common
        .key_algorithm
        .and_then(|a| serde_json::to_value(a).ok())
        .and_then(|v| v.as_str().and_then(|s| s.parse::<Algorithm>().ok()));
    match published {
        Some(alg) => by_type.into_iter().filter(|a| *a == alg).collect(),
        None => by_type,
    }
}

impl OidcVerifier {
    pub fn new(settings: OidcSettings) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(OidcVerifier { settings, http, cache: RwLock::new(Cache::default()), refreshing: Mutex::new(()) })
    }

    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// Fetches the discovery document and the JWKS now. At start-up a failure is logged, not
    /// fatal: verification retries (rate-limited) when the provider is back.
    pub async fn prefetch(&self) -> Result<usize, String> {
        let _guard = self.refreshing.lock().await;
        self.refresh().await
    }

    async fn fetch_json(&self, url: &str) -> Result<Value, String> {
        let resp = self.http.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        resp.json::<Value>().await.map_err(|e| format!("{url}: {e}"))
    }

    /// Loads the discovery document (once) and the JWKS, replacing the cached keys: keys the
    /// provider removed stop verifying.
    async fn refresh(&self) -> Result<usize, String> {
        self.cache.write().await.attempted = Some(Instant::now());
        // The read guard must be gone before `discover` takes the write lock.
        let known = self.cache.read().await.jwks_uri.clone();
        let jwks_uri = match known {
            Some(uri) => uri,
            None => self.discover().await?.0,
        };
        let started = Instant::now();
        let set: JwkSet =
            serde_json::from_value(self.fetch_json(&jwks_uri).await?).map_err(|e| format!("{jwks_uri}: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            let algorithms = algorithms_for(jwk);
            if algorithms.is_empty() {
                continue;
            }
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, Arc::new(Key { key, algorithms }));
                }
                Err(e) => tracing::warn!(%kid, error = %e, "ignoring an unusable key in the JWKS"),
            }
        }
        let n = keys.len();
        let mut cache = self.cache.write().await;
        cache.keys = keys;
        cache.fetched = Some(started);
        cache.jwks_uri = Some(jwks_uri);
        tracing::debug!(keys = n, "JWKS loaded");
        Ok(n)
    }

    /// Reads the discovery document: the JWKS address, and the sign-in endpoints if it names them.
    async fn discover(&self) -> Result<(String, Option<Endpoints>), String> {
        let url = format!("{}/.well-known/openid-configuration", self.settings.issuer.trim_end_matches('/'));
        let doc = self.fetch_json(&url).await?;
        let issuer = doc["issuer"].as_str().unwrap_or_default();
        if issuer != self.settings.issuer {
            return Err(format!(
                "the discovery document names issuer {issuer:?}, not the configured {:?}",
                self.settings.issuer
            ));
        }
        let jwks_uri = doc["jwks_uri"].as_str().ok_or_else(|| format!("{url}: no jwks_uri"))?.to_string();
        let endpoints = match (doc["authorization_endpoint"].as_str(), doc["token_endpoint"].as_str()) {
            (Some(authorization), Some(token)) => {
                Some(Endpoints { authorization: authorization.to_string(), token: token.to_string() })
            }
            _ => None,
        };
        let mut cache = self.cache.write().await;
        cache.endpoints.clone_from(&endpoints);
        Ok((jwks_uri, endpoints))
    }

    /// The provider's authorization and token endpoints, from its discovery document (read once).
    pub async fn endpoints(&self) -> Result<Endpoints, String> {
        let known = self.cache.read().await.endpoints.clone();
        if let Some(found) = known {
            return Ok(found);
        }
        self.discover().await?.1.ok_or_else(|| {
            format!(
                "the identity provider {} publishes no authorization_endpoint and token_endpoint",
                self.settings.issuer
            )
        })
    }

    async fn key(&self, kid: &str) -> Result<Arc<Key>, AuthError> {
        let (found, stale, recent) = {
            let cache = self.cache.read().await;
            let age = cache.fetched.map(|f| f.elapsed());
            (
                cache.keys.get(kid).cloned(),
                age.is_none_or(|a| a > self.settings.jwks_max_age),
                cache.attempted.is_some_and(|a| a.elapsed() < self.settings.jwks_min_refresh),
            )
        };
        if let Some(key) = found
            && !stale
        {
            return Ok(key);
        }
        if !recent {
            let _guard = self.refreshing.lock().await;
            // Another caller may have refreshed while we waited.
            let fresh = self.cache.read().await.attempted.is_some_and(|a| a.elapsed() < self.settings.jwks_min_refresh);
            if !fresh && let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "cannot refresh the identity provider's keys");
            }
        }
        self.cache
            .read()
            .await
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError::Rejected("token signed by an unknown key".into()))
    }

    /// Checks a JWT and returns the user it names, with the groups of the configured claim.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let claims = self.claims(token, &self.settings.audience).await?;
        self.identity(&claims)
    }

    /// Checks an ID token from the console's sign-in: signed by the provider, for `client_id`,
    /// carrying the `nonce` the sign-in started with. Returns the user it names.
    pub async fn verify_id_token(&self, token: &str, client_id: &str, nonce: &str) -> Result<Identity, AuthError> {
        let claims = self.claims(token, client_id).await?;
        match claims["nonce"].as_str() {
            Some(n) if bool::from(subtle::ConstantTimeEq::ct_eq(n.as_bytes(), nonce.as_bytes())) => {
                self.identity(&claims)
            }
            Some(_) => Err(AuthError::Rejected("ID token carries another sign-in's nonce".into())),
            None => Err(AuthError::Rejected("ID token carries no nonce".into())),
        }
    }

    /// The claims of a JWT whose signature, issuer, audience and times check out.
    async fn claims(&self, token: &str, audience: &str) -> Result<Value, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        if !ALLOWED.contains(&header.alg) {
            return Err(AuthError::Rejected(format!("signature algorithm {:?} is not allowed", header.alg)));
        }
        let kid = header.kid.as_deref().ok_or_else(|| AuthError::Rejected("token has no key id (kid)".into()))?;
        let key = self.key(kid).await?;
        if !key.algorithms.contains(&header.alg) {
            return Err(AuthError::Rejected(format!("signature algorithm {:?} does not fit key {kid:?}", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            if matches!(e.kind(), ErrorKind::ExpiredSignature) {
                return AuthError::Expired;
            }
            AuthError::Rejected(
                match e.kind() {
                    ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
                    ErrorKind::InvalidAudience => "token is for another audience",
                    ErrorKind::InvalidIssuer => "token is from another issuer",
                    ErrorKind::InvalidSignature => "token signature does not verify",
                    ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim (exp, iss or aud)",
                    _ => "token is malformed",
                }
                .into(),
            )
        })?;
        Ok(data.claims)
    }

    /// The user a verified token's claims name, with the groups of the configured claim.
    fn identity(&self, claims: &Value) -> Result<Identity, AuthError> {
        let name = claims[&self.settings.username_claim]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::Rejected(format!("token has no {:?} claim", self.settings.username_claim)))?;
        let groups: BTreeSet<String> = match &claims[&self.settings.groups_claim] {
            Value::String(g) => [g.clone()].into(),
            Value::Array(list) => list.iter().filter_map(|g| g.as_str().map(String::from)).collect(),
            _ => BTreeSet::new(),
        };
        let expires_at = claims["exp"].as_i64().map(|e| e.saturating_mul(1000));
        Ok(Identity { kind: IdentityKind::User, name: name.to_string(), groups, expires_at })
    }

    /// The HTTP client the verifier fetches with (timeouts and user agent set), for the token
    /// exchange of the console's sign-in.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// Whether a bearer value looks like a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && token.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
