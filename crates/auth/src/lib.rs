//! Turns what a caller presents into an [`Identity`], whichever way it authenticates:
//! service-account tokens, which are 256 random bits shown once and stored only as an
//! HMAC-SHA-256 under a key derived from the master key (expiry enforced, last use recorded at
//! most once a minute per identity, so authentication does not turn every request into a
//! write), and OIDC JWTs from the company's identity provider ([`oidc`]), which become
//! `User::"…"` identities with the groups of a configured claim; and the web console's sign-in
//! for people ([`login`]: the authorization code flow with PKCE). This crate does not decide what
//! an identity may do; that is policy's job.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gatehouse_core::Identity;
use gatehouse_keys::{KeyError, Keys, Secret};
use gatehouse_store::{IdentityRecord, Store};

pub mod login;
pub mod oidc;

pub use oidc::{OidcSettings, OidcVerifier};

/// Every service token starts with this, so secret scanners and people recognise it.
pub const TOKEN_PREFIX: &str = "ghs_";

/// Last use is written at most this often per identity.
const TOUCH_EVERY_MS: i64 = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token")]
    Invalid,
    #[error("token expired")]
    Expired,
    /// A well-formed credential that fails a check; the message says which.
    #[error("{0}")]
    Rejected(String),
    #[error("cannot check the token: {0}")]
    Unavailable(String),
}

/// A freshly issued token: the secret to show once, and the hash to store.
#[derive(Debug)]
pub struct IssuedToken {
    pub token: Secret,
    pub hash: Vec<u8>,
}

/// Issues a new service token.
pub fn issue_token(keys: &Keys) -> Result<IssuedToken, KeyError> {
    let token = keys.new_token(TOKEN_PREFIX)?;
    let hash = keys.token_hash(token.expose()).to_vec();
    Ok(IssuedToken { token, hash })
}

/// The identity a stored record stands for.
pub fn identity_of(record: &IdentityRecord) -> Identity {
    Identity {
        kind: record.kind,
        name: record.name.clone(),
        groups: record.groups.iter().cloned().collect(),
        expires_at: record.expires_at,
    }
}

/// Checks bearer tokens against the store.
#[derive(Debug)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    keys: Arc<Keys>,
    oidc: Option<Arc<OidcVerifier>>,
    touched: Mutex<HashMap<String, i64>>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, keys: Arc<Keys>, oidc: Option<Arc<OidcVerifier>>) -> Self {
        Authenticator { store, keys, oidc, touched: Mutex::new(HashMap::new()) }
    }

    /// The identity provider's verifier, when OIDC is configured.
    pub fn oidc(&self) -> Option<&Arc<OidcVerifier>> {
        self.oidc.as_ref()
    }

    /// The identity behind `token` (a service token or, when OIDC is configured, a JWT) at time
    /// `now` (Unix milliseconds).
    pub async fn authenticate(&self, token: &str, now: i64) -> Result<Identity, AuthError> {
        if token.len() > 16 * 1024 {
            return Err(AuthError::Invalid);
        }
        if !token.starts_with(TOKEN_PREFIX) {
            return match &self.oidc {
                Some(oidc) if oidc::looks_like_jwt(token) => oidc.verify(token).await,
                _ => Err(AuthError::Invalid),
            };
        }
        if token.len() > 256 {
            return Err(AuthError::Invalid);
        }
        let hash = self.keys.token_hash(token);
        let record = self
            .store
            .identity_by_token_hash(&hash)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?
            .ok_or(AuthError::Invalid)?;
        if record.expires_at.is_some_and(|exp| exp <= now) {
            return Err(AuthError::Expired);
        }
        if self.should_touch(&record.name, now)
            && let Err(e) = self.store.touch_identity(&record.name, now).await
        {
            tracing::warn!(identity = %record.name, error = %e, "could not record last use");
        }
        Ok(identity_of(&record))
    }

    fn should_touch(&self, name: &str, now: i64) -> bool {
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        match touched.get(name) {
            Some(&last) if now - last < TOUCH_EVERY_MS => false,
            _ => {
                touched.insert(name.to_string(), now);
                true
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use gatehouse_core::IdentityKind;
    use gatehouse_store::SqliteStore;

    async fn setup() -> (tempfile::TempDir, Arc<SqliteStore>, Arc<Keys>, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("g.db"), false).unwrap());
        let keys = Arc::new(Keys::from_master(&[1; 32]).unwrap());
        let auth = Authenticator::new(store.clone(), keys.clone(), None);
        (dir, store, keys, auth)
    }

    fn record(name: &str, hash: Vec<u8>, expires_at: Option<i64>) -> IdentityRecord {
        IdentityRecord {
            name: name.into(),
            kind: IdentityKind::Service,
            groups: vec!["g".into()],
            token_hash: Some(hash),
            created_at: 0,
            expires_at,
            last_used_at: None,
            token_rotated_at: None,
        }
    }

    #[tokio::test]
    async fn accepts_refuses_and_expires() {
        let (_dir, store, keys, auth) = setup().await;
        let t = issue_token(&keys).unwrap();
        store.create_identity(record("svc", t.hash.clone(), Some(10_000))).await.unwrap();
        let id = auth.authenticate(t.token.expose(), 5_000).await.unwrap();
        assert_eq!(id.name, "svc");
        assert!(id.groups.contains("g"));
        assert_eq!(store.get_identity("svc").await.unwrap().unwrap().last_used_at, Some(5_000));
        assert!(matches!(auth.authenticate(t.token.expose(), 10_000).await, Err(AuthError::Expired)));
        assert!(matches!(auth.authenticate("ghs_wrong", 1).await, Err(AuthError::Invalid)));
        assert!(matches!(auth.authenticate("no-prefix", 1).await, Err(AuthError::Invalid)));
        // A token hashed under another master key does not match.
        let other = Keys::from_master(&[2; 32]).unwrap();
        let t2 = issue_token(&other).unwrap();
        assert!(matches!(auth.authenticate(t2.token.expose(), 1).await, Err(AuthError::Invalid)));
    }
}
