//! The server's shared state and the management operations the REST API exposes: everything
//! that authorises a management call, records it in the audit trail and then performs it.

use std::path::PathBuf;
use std::sync::Arc;

use gatehouse_audit::{AuditWriter, Entry, VerifyReport, new_session_id, session_record};
use gatehouse_auth::Authenticator;
use gatehouse_core::{AuthzRequest, ConnectionInfo, Decision, Identity, IdentityKind, Outcome, Resource};
use gatehouse_keys::Keys;
use gatehouse_policy::PolicyEngine;
use gatehouse_store::Store;
use serde_json::json;
use tokio::sync::RwLock;

use crate::api::ApiError;

/// How long a reader of sessions and events waits for the newest events to reach the store.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Everything a request handler needs.
#[derive(Debug)]
pub struct App {
    pub data_dir: PathBuf,
    pub store: Arc<dyn Store>,
    pub keys: Arc<Keys>,
    pub policy: PolicyEngine,
    pub audit: AuditWriter,
    pub auth: Authenticator,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Whether `/metrics` is served (`[metrics] enabled`).
    pub metrics_enabled: bool,
    /// The result of the audit chain check run at start-up (and refreshed by `audit verify`).
    pub chain: RwLock<Option<VerifyReport>>,
    /// Proxied sessions open right now.
    pub live: crate::pipeline::LiveSessions,
    /// Held requests and access grants in force.
    pub reviews: crate::reviews::Reviews,
    /// What one-off statements (the exec API) run with.
    pub exec: Option<crate::exec::ExecSettings>,
    /// Limits on each caller.
    pub limits: Arc<crate::limits::Limits>,
    /// What one-off HTTP requests (the exec API, agents' tools) run with: the HTTP listener's
    /// settings and its pooled upstream clients.
    pub http: crate::exec::HttpExec,
    /// The web console's settings and sign-ins.
    pub console: crate::console::Console,
}

/// Why a sign-in did not succeed.
#[derive(Debug)]
pub enum SignInError {
    /// The credential was refused (wrong, expired, …), or could not be checked.
    Auth(gatehouse_auth::AuthError),
    /// The address or the name is locked out after too many failures; the credential was not
    /// checked.
    Limited(crate::limits::Refused),
}

/// The parts of the management API, as `Api::"…"` resources in policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Identities,
    Connections,
    Policies,
    Sessions,
    Audit,
    Reviews,
}

impl Area {
    pub fn as_str(self) -> &'static str {
        match self {
            Area::Identities => "identities",
            Area::Connections => "connections",
            Area::Policies => "policies",
            Area::Sessions => "sessions",
            Area::Audit => "audit",
            Area::Reviews => "reviews",
        }
    }
}

impl App {
    /// Checks a caller's credential under the sign-in limits: a locked-out address or name is
    /// refused without checking it, and each failure counts towards a lockout (recorded when
    /// one begins). `claimed` is the name the caller gave, where its protocol carries one.
    pub async fn sign_in(
        &self,
        secret: &str,
        source: Option<std::net::IpAddr>,
        claimed: Option<&str>,
    ) -> Result<Identity, SignInError> {
        if let Err(refused) = self.limits.sign_in_allowed(source, claimed) {
            self.metrics.limited(refused.limit);
            return Err(SignInError::Limited(refused));
        }
        let result = self.auth.authenticate(secret, gatehouse_audit::now_ms()).await;
        match result {
            Ok(identity) => Ok(identity),
            Err(gatehouse_auth::AuthError::Unavailable(e)) => {
                Err(SignInError::Auth(gatehouse_auth::AuthError::Unavailable(e)))
            }
            Err(e) => {
                for lockout in self.limits.sign_in_failed(source, claimed) {
                    tracing::warn!(limit = lockout.limit.as_str(), key = %lockout.key, seconds = lockout.until.as_secs_f64(),
                        "too many failed sign-ins; refusing further attempts for a while");
                    let payload = json!({"limit": lockout.limit.as_str(), "key": lockout.key,
                        "seconds": lockout.until.as_secs_f64()});
                    if let Err(e) = self.record_server_event("auth.locked", payload).await {
                        tracing::error!(error = %e, "a sign-in lockout could not be recorded");
                    }
                }
                Err(SignInError::Auth(e))
            }
        }
    }

    pub fn head_path(&self) -> PathBuf {
        self.data_dir.join(gatehouse_audit::HEAD_FILE)
    }

    /// Waits until what was recorded so far has moved from the audit journal into the store
    /// (milliseconds, unless the store fails), so that a reader of sessions and events sees
    /// everything recorded before it asked.
    pub async fn settled(&self) {
        if !self.audit.settled(SETTLE_LIMIT).await {
            tracing::warn!("the audit store is behind the journal; an answer may lack the newest events");
        }
    }

    /// A connection by name, or 404.
    pub async fn connection(&self, name: &str) -> Result<gatehouse_store::ConnectionRecord, ApiError> {
        self.store
            .get_connection(name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("connection {name:?} not found")))
    }

    /// An identity by name, or 404.
    pub async fn identity(&self, name: &str) -> Result<gatehouse_store::IdentityRecord, ApiError> {
        self.store.get_identity(name).await?.ok_or_else(|| ApiError::NotFound(format!("identity {name:?} not found")))
    }

    /// Connection attributes policy needs for the given resources.
    pub async fn connection_infos(&self, resources: &[Resource]) -> Result<Vec<ConnectionInfo>, ApiError> {
        let mut out: Vec<ConnectionInfo> = Vec::new();
        for name in resources.iter().filter_map(Resource::connection) {
            if out.iter().any(|c| c.name == name) {
                continue;
            }
            if let Some(rec) = self.store.get_connection(name).await? {
                out.push(ConnectionInfo { name: rec.name, kind: rec.kind, tags: rec.tags });
            }
        }
        Ok(out)
    }

    /// Members of `admins` may always manage; anyone else needs `api.read` / `api.write` on
    /// `Api::"<area>"` from policy. A management call is never held for review.
    pub fn authorize(&self, caller: &Identity, area: Area, write: bool) -> Result<(), ApiError> {
        if caller.is_admin() {
            self.metrics.request("api", "allow");
            return Ok(());
        }
        let req = AuthzRequest {
            principal: caller.clone(),
            action: if write { "api.write" } else { "api.read" }.to_string(),
            resources: vec![Resource::Api { area: area.as_str().to_string() }],
            context: serde_json::Map::from_iter([("protocol".to_string(), json!("api"))]),
        };
        let decision = self.policy.decide(&req, &[]).unwrap_or_else(|e| {
            tracing::error!(error = %e, "management authorisation could not be evaluated; denying");
            Decision::deny(vec![])
        });
        self.metrics.request("api", decision.outcome.as_str());
        match decision.outcome {
            Outcome::Allow => Ok(()),
            Outcome::Review | Outcome::Deny => Err(ApiError::Forbidden {
                message: format!(
                    "{} {} on Api::\"{}\": {}",
                    caller.entity_ref(),
                    req.action,
                    area.as_str(),
                    decision.explain()
                ),
                policies: decision.policies,
            }),
        }
    }

    /// Authorises a management change, records it before it happens (write-ahead: if it cannot
    /// be recorded it does not happen), runs it, and records its result.
    pub async fn managed<T, F, Fut>(
        &self,
        caller: &Identity,
        area: Area,
        operation: &str,
        target: &str,
        details: serde_json::Value,
        run: F,
    ) -> Result<T, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let session_id = new_session_id();
        let start = self.session_start(&session_id, caller);
        self.metrics.session("api");
        let authorized = self.authorize(caller, area, true);
        let (decision, policies) = match &authorized {
            Ok(()) => ("allow", vec![]),
            Err(ApiError::Forbidden { policies, .. }) => ("deny", policies.clone()),
            Err(_) => ("deny", vec![]),
        };
        let request = Entry::request(
            &session_id,
            &json!({
                "action": "api.write",
                "resource": format!("Api::\"{}\"", area.as_str()),
                "operation": operation,
                "target": target,
                "details": details,
                "decision": decision,
                "policies": policies,
                "builtin": caller.is_admin(),
            }),
            authorized.is_err(),
        );
        if let Err(e) = authorized {
            let end = Entry::session_end(&session_id, "denied");
            self.audit.record(vec![start, request, end]).await?;
            return Err(e);
        }
        self.audit.record(vec![start, request]).await?;
        let started = std::time::Instant::now();
        let result = run().await;
        let payload = match &result {
            Ok(_) => json!({"status": "ok", "duration_ms": started.elapsed().as_secs_f64() * 1000.0}),
            Err(e) => {
                json!({"status": "error", "error": e.to_string(), "duration_ms": started.elapsed().as_secs_f64() * 1000.0})
            }
        };
        let outcome = Entry::event(Some(&session_id), "request.result", &payload);
        let end = Entry::session_end(&session_id, "completed");
        if let Err(e) = self.audit.record(vec![outcome, end]).await {
            tracing::error!(error = %e, %operation, "the result of a management change could not be recorded");
        }
        result
    }

    fn session_start(&self, session_id: &str, caller: &Identity) -> Entry {
        Entry::session_start(
            session_record(session_id, &caller.name, caller.kind, None, "api", None),
            &json!({"identity": caller.name, "identity_kind": caller.kind, "groups": caller.groups, "protocol": "api"}),
        )
    }

    /// Records a server-level event (start-up, bootstrap, shutdown) outside any session.
    pub async fn record_server_event(&self, kind: &str, payload: serde_json::Value) -> Result<(), ApiError> {
        self.audit.record_one(Entry::event(None, kind, &payload)).await?;
        Ok(())
    }
}

/// The identity behind `Service::"name"` for `policies check`, with the groups it has now.
pub fn principal_kind(text: &str) -> Option<(IdentityKind, String)> {
    let (ty, rest) = text.trim().split_once("::")?;
    let name = rest.strip_prefix('"')?.strip_suffix('"')?;
    let kind = match ty {
        "Service" => IdentityKind::Service,
        "User" => IdentityKind::User,
        _ => return None,
    };
    (!name.is_empty() && !name.contains('"')).then(|| (kind, name.to_string()))
}
