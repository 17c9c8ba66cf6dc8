//! The enforcement pipeline every protocol adapter calls: authentication, `connect`, credential
//! choice, per-request decisions, write-ahead recording, metrics, and the registry of live
//! sessions that `sessions kill` and identity changes reach.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gatehouse_audit::{Entry, new_session_id, now_ms, session_record};
use gatehouse_auth::AuthError;
use gatehouse_core::pipeline::{
    CredentialForm, Hold, OpenError, OpenRequest, OpenedSession, Pipeline, Request, RequestResult, Unapproved,
    UpstreamTarget, Verdict,
};
use gatehouse_core::{AuthzRequest, ConnectionInfo, Decision, Identity, IdentityKind, Outcome, Resource};
use gatehouse_store::{ConnectionRecord, SecretKind};
use serde_json::json;
use tokio::sync::watch;

use crate::app::{App, SignInError};

/// A live session's handle: what ends it, whose it is, and the decisions it made lately.
#[derive(Debug)]
struct Live {
    identity: String,
    /// The session's place in its identity's session count, given back when it ends.
    _slot: crate::limits::SessionSlot,
    end: watch::Sender<Option<String>>,
    /// Decisions by request shape (accesses and context), each valid for the policy generation
    /// and the second (policies may test `context.time`) it was made in.
    decisions: HashMap<String, (u64, i64, Decision)>,
}

/// Most decisions a session keeps.
const DECISIONS_KEPT: usize = 256;

/// Sessions open right now, by id.
#[derive(Debug, Default)]
pub struct LiveSessions {
    inner: Mutex<HashMap<String, Live>>,
}

impl LiveSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends one session with `reason`; false if it is not live.
    pub fn kill(&self, id: &str, reason: &str) -> bool {
        match self.lock().get(id) {
            Some(live) => {
                let _ = live.end.send(Some(reason.to_string()));
                true
            }
            None => false,
        }
    }

    /// Ends every session of an identity (removed, or its token rotated).
    pub fn end_identity(&self, identity: &str, reason: &str) -> usize {
        let sessions = self.lock();
        let mut n = 0;
        for live in sessions.values().filter(|l| l.identity == identity) {
            let _ = live.end.send(Some(reason.to_string()));
            n += 1;
        }
        n
    }

    /// The ids of every live session.
    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn decision(&self, id: &str, key: &str, generation: u64, second: i64) -> Option<Decision> {
        match self.lock().get(id)?.decisions.get(key) {
            Some((g, s, d)) if *g == generation && *s == second => Some(d.clone()),
            _ => None,
        }
    }

    fn keep_decision(&self, id: &str, key: String, generation: u64, second: i64, decision: &Decision) {
        if let Some(live) = self.lock().get_mut(id) {
            if live.decisions.len() >= DECISIONS_KEPT {
                live.decisions.clear();
            }
            live.decisions.insert(key, (generation, second, decision.clone()));
        }
    }
}

/// The pipeline over the server's state.
#[derive(Debug, Clone)]
pub struct DataPath {
    app: Arc<App>,
}

impl DataPath {
    pub fn new(app: Arc<App>) -> Self {
        DataPath { app }
    }

    /// Records a refused session attempt: start and end in one batch.
    async fn refuse(&self, req: &OpenRequest, identity: Option<&Identity>, error: OpenError) -> OpenError {
        let id = new_session_id();
        let (name, kind) = match identity {
            Some(i) => (i.name.clone(), i.kind),
            None => (req.claimed_user.clone().unwrap_or_else(|| "-".into()), IdentityKind::Service),
        };
        let reason = format!("refused: {error}");
        let (code, policies) = match &error {
            OpenError::Unauthenticated(_) => ("unauthenticated", vec![]),
            OpenError::UnknownConnection(_) => ("unknown_connection", vec![]),
            OpenError::Forbidden { policies, .. } => ("forbidden", policies.clone()),
            OpenError::Unavailable(_) => ("unavailable", vec![]),
            OpenError::Limited { limit, .. } => (limit.as_str(), vec![]),
        };
        let client = req.client_addr.map(|a| a.to_string());
        let entries = vec![
            Entry::session_start(
                session_record(&id, &name, kind, Some(&req.connection), req.protocol, client.clone()),
                &json!({"identity": name, "authenticated": identity.is_some(), "protocol": req.protocol,
                    "connection": req.connection, "client_addr": client, "tls": req.tls}),
            ),
            Entry::request(
                &id,
                &json!({"action": "connect", "request": format!("connect {}", req.connection),
                    "decision": "deny", "refusal": code, "message": error.to_string(), "policies": policies}),
                true,
            ),
            Entry::session_end(&id, &reason),
        ];
        self.app.metrics.request(req.protocol, "deny");
        if let Err(e) = self.app.audit.record(entries).await {
            tracing::error!(error = %e, "a refused session could not be recorded");
            return OpenError::Unavailable(format!("the audit trail is unavailable: {e}"));
        }
        error
    }

    fn credential(
        &self,
        conn: &ConnectionRecord,
        identity: &Identity,
    ) -> Result<(Option<String>, Option<String>, CredentialForm), OpenError> {
        let chosen = conn.credentials.iter().find(|c| c.groups.iter().any(|g| identity.groups.contains(g)));
        let (user, sealed, aad) = match chosen {
            Some(c) => (
                c.user.clone().or_else(|| conn.user.clone()),
                c.secret.clone(),
                format!("connection/{}/credential/{}", conn.name, c.name),
            ),
            None => (conn.user.clone(), conn.secret.clone(), format!("connection/{}/default", conn.name)),
        };
        let form = match sealed.as_ref().map(|s| &s.kind) {
            Some(SecretKind::Bearer) => CredentialForm::Bearer,
            Some(SecretKind::Header { name }) => CredentialForm::Header(name.clone()),
            Some(SecretKind::KeyFile) => CredentialForm::KeyFile,
            Some(SecretKind::Password) | None => CredentialForm::Password,
        };
        let password = match sealed {
            Some(s) => Some(
                self.app
                    .keys
                    .open(&s.sealed, &aad)
                    .map_err(|e| OpenError::Unavailable(format!("the connection's credential cannot be opened: {e}")))?
                    .expose()
                    .to_string(),
            ),
            None => None,
        };
        Ok((user, password, form))
    }
}

impl DataPath {
    /// Records a request and its decision before it may be forwarded; `extra` adds to the event.
    async fn record_request(
        &self,
        session: &OpenedSession,
        req: &Request,
        decision: &Decision,
        extra: serde_json::Value,
    ) -> Result<i64, String> {
        let denied = decision.outcome != Outcome::Allow;
        let empty = serde_json::Map::new();
        let event = RequestEvent {
            action: req.accesses.first().map_or("connect", |(a, _)| a.as_str()),
            request: &req.text,
            params: &req.params,
            fingerprint: req.fingerprint.as_deref(),
            accesses: Accesses(&req.accesses),
            note: req.note.as_deref(),
            decision: decision.outcome.as_str(),
            policies: &decision.policies,
            approvers: &decision.approvers,
            errors: &decision.errors,
            extra: extra.as_object().unwrap_or(&empty),
        };
        let payload = serde_json::to_string(&event).map_err(|e| format!("the request cannot be recorded: {e}"))?;
        let entry = Entry::request_serialized(&session.id, payload, denied, decision.outcome == Outcome::Review);
        let seq = self.app.audit.record_one(entry).await.map_err(|e| format!("the audit trail is unavailable: {e}"))?;
        self.app.metrics.request(session.protocol, decision.outcome.as_str());
        Ok(seq)
    }

    /// Uses an approved grant for this exact request, if there is one (`review`: only that
    /// review's), and records the run it allows.
    async fn run_granted(
        &self,
        session: &OpenedSession,
        req: &Request,
        decision: &Decision,
        review: Option<&str>,
    ) -> Result<Option<Verdict>, String> {
        let used = self
            .app
            .store
            .use_grant(&session.identity.name, &session.connection, &req.digest, review, now_ms())
            .await
            .map_err(|e| format!("reviews are unavailable: {e}"))?;
        let Some(review) = used else { return Ok(None) };
        let approvers: Vec<&str> = review.votes.iter().filter(|v| v.approve).map(|v| v.approver.as_str()).collect();
        let allowed = Decision::allow(decision.policies.clone());
        let seq =
            self.record_request(session, req, &allowed, json!({"grant": review.id, "approved_by": approvers})).await?;
        Ok(Some(Verdict { seq, decision: allowed, held: None, grant: Some(review.id), limited: None }))
    }

    /// Waits for the review of a held request: approved (the request runs, using the grant),
    /// denied, expired, still pending when the hold ends, or the session ended meanwhile.
    async fn wait_for_review(
        &self,
        session: &OpenedSession,
        hold: &Hold,
        req: &Request,
    ) -> Result<Verdict, Unapproved> {
        let deadline = tokio::time::Instant::now() + self.app.reviews.settings().hold;
        let ended = self.ended(session);
        tokio::pin!(ended);
        loop {
            let mut changes = self.app.reviews.watch(&hold.review_id);
            let review = match self.app.store.get_review(&hold.review_id).await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(Unapproved::closed(format!("review {} no longer exists", hold.review_id))),
                Err(e) => return Err(Unapproved::closed(format!("reviews are unavailable: {e}"))),
            };
            if review.status == gatehouse_store::ReviewStatus::Approved {
                let decision = Decision {
                    outcome: Outcome::Review,
                    policies: review.policies.clone(),
                    approvers: vec![],
                    errors: vec![],
                };
                if let Some(verdict) =
                    self.run_granted(session, req, &decision, Some(&review.id)).await.map_err(Unapproved::closed)?
                {
                    return Ok(verdict);
                }
            }
            if review.status != gatehouse_store::ReviewStatus::Pending {
                return Err(Unapproved::closed(crate::reviews::refusal(&review)));
            }
            let pending = |message: String| Unapproved { message, pending: true };
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Err(pending(crate::reviews::refusal(&review))),
                reason = &mut ended => {
                    return Err(pending(format!("the session ended while the request was held: {reason}")));
                }
            }
        }
    }

    /// Decides every access of a request; the strictest outcome wins. The same request shape
    /// in the same session, second and policy generation gets the same decision, so that one is
    /// reused rather than evaluated again.
    async fn decide(&self, session: &OpenedSession, req: &Request) -> Result<Decision, String> {
        if req.accesses.is_empty() {
            return Ok(Decision::allow(vec![]));
        }
        // Read before deciding: a change while deciding makes this decision stale, not kept.
        let generation = self.app.policy.generation();
        let set = self.app.policy.current();
        let now = now_ms();
        let second = now / 1000;
        // What no policy mentions cannot change a decision: a set that never tests the time
        // decides the same all day; one that never tests the statement text decides the same
        // for every constant in it.
        let valid_for = if set.mentions("time") { second } else { 0 };
        // Groups held by an approved access request count while the window lasts.
        let (granted, extra) = self.app.reviews.effective(&session.identity, now);
        let principal = granted.as_ref().unwrap_or(&session.identity);
        let mut key = decision_key(req, |attribute| set.mentions(attribute));
        if !extra.is_empty() {
            key.push_str(&format!("+groups={}\n", extra.join(",")));
        }
        if let Some(d) = self.app.live.decision(&session.id, &key, generation, valid_for) {
            return Ok(d);
        }
        let mut context = serde_json::Map::new();
        context.insert("protocol".into(), json!(session.protocol));
        context.insert("time".into(), json!(second));
        if let Some(addr) = session.client_addr {
            context.insert("client_ip".into(), json!(addr.ip().to_string()));
        }
        context.extend(req.context.clone());
        let connections = std::slice::from_ref(&session.connection_info);
        let decision = Decision::strictest(req.accesses.iter().map(|(action, resource)| {
            let authz = AuthzRequest {
                principal: principal.clone(),
                action: action.clone(),
                resources: vec![resource.clone()],
                context: context.clone(),
            };
            self.app.policy.decide(&authz, connections).unwrap_or_else(|e| Decision {
                outcome: Outcome::Deny,
                policies: vec![],
                approvers: vec![],
                errors: vec![e.to_string()],
            })
        }));
        self.app.live.keep_decision(&session.id, key, generation, valid_for, &decision);
        Ok(decision)
    }
}

/// A `request` event's payload, serialised without an intermediate JSON value.
#[derive(serde::Serialize)]
struct RequestEvent<'a> {
    action: &'a str,
    request: &'a str,
    params: &'a [String],
    fingerprint: Option<&'a str>,
    accesses: Accesses<'a>,
    note: Option<&'a str>,
    decision: &'a str,
    policies: &'a [String],
    approvers: &'a [gatehouse_core::Approval],
    errors: &'a [String],
    /// What the caller adds (a grant, a review, a refusal's reason).
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

/// A request's accesses as `action Type::"id"` strings.
struct Accesses<'a>(&'a [(String, Resource)]);

impl serde::Serialize for Accesses<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|(action, resource)| Access(action, resource)))
    }
}

/// `action Type::"id"`, serialised as a string without building it first.
struct Access<'a>(&'a str, &'a Resource);

impl serde::Serialize for Access<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{} {}", self.0, self.1))
    }
}

/// A `request.result` event's payload; what is empty is left out.
#[derive(serde::Serialize)]
struct ResultEvent<'a> {
    request_seq: i64,
    status: &'a str,
    duration_ms: f64,
    rows: Option<u64>,
    command: Option<&'a str>,
    error: Option<&'a str>,
    bytes_out: u64,
    bytes_in: u64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    columns: &'a [String],
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    masked: &'a std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_sample: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_sample: Option<&'a str>,
}

/// What a decision depends on beyond the session, the policy set and the time: the accesses,
/// and the attributes of the request's context that the set mentions.
fn decision_key(req: &Request, mentioned: impl Fn(&str) -> bool) -> String {
    let mut key = String::with_capacity(128);
    for (action, resource) in &req.accesses {
        use std::fmt::Write;
        let _ = writeln!(key, "{action} {resource}");
    }
    for (name, value) in req.context.iter().filter(|(name, _)| mentioned(name)) {
        key.push_str(&serde_json::to_string(name).unwrap_or_default());
        key.push('=');
        key.push_str(&value.to_string());
        key.push('\n');
    }
    key
}

impl Pipeline for DataPath {
    async fn open(&self, req: OpenRequest) -> Result<OpenedSession, OpenError> {
        let source = req.client_addr.map(|a| a.ip());
        let identity = match self.app.sign_in(&req.secret, source, req.claimed_user.as_deref()).await {
            Ok(identity) => identity,
            // A locked-out attempt is counted, not recorded one by one: the lockout itself is.
            Err(SignInError::Limited(r)) => return Err(OpenError::Limited { limit: r.limit, message: r.message }),
            Err(SignInError::Auth(AuthError::Unavailable(e))) => {
                return Err(self.refuse(&req, None, OpenError::Unavailable(e)).await);
            }
            Err(SignInError::Auth(e)) => {
                let who = req.claimed_user.clone().unwrap_or_default();
                let err = OpenError::Unauthenticated(format!("authentication failed for user \"{who}\": {e}"));
                return Err(self.refuse(&req, None, err).await);
            }
        };
        if let Some(claimed) = &req.claimed_user
            && claimed != &identity.name
        {
            let err = OpenError::Unauthenticated(format!(
                "user \"{claimed}\" does not match the identity of the password ({})",
                identity.entity_ref()
            ));
            return Err(self.refuse(&req, Some(&identity), err).await);
        }
        let conn = match self.app.store.get_connection(&req.connection).await {
            Ok(Some(c)) if c.kind == req.protocol => c,
            Ok(Some(c)) => {
                let err = OpenError::UnknownConnection(format!(
                    "connection \"{}\" is a {} connection, not {}",
                    req.connection, c.kind, req.protocol
                ));
                return Err(self.refuse(&req, Some(&identity), err).await);
            }
            Ok(None) => {
                let err = OpenError::UnknownConnection(format!("connection \"{}\" does not exist", req.connection));
                return Err(self.refuse(&req, Some(&identity), err).await);
            }
            Err(e) => return Err(self.refuse(&req, Some(&identity), OpenError::Unavailable(e.to_string())).await),
        };
        let unapplied: Vec<&str> = (if req.masks_values { &[][..] } else { &conn.mask[..] })
            .iter()
            .chain(if req.masks_columns { &[][..] } else { &conn.mask_columns[..] })
            .map(String::as_str)
            .collect();
        if !unapplied.is_empty() {
            // Fail closed: values the connection says to mask must not go out unmasked.
            let err = OpenError::Unavailable(format!(
                "connection \"{}\" masks values ({}), which the {} adapter does not do yet; refusing the session rather than returning them unmasked",
                conn.name,
                unapplied.join(", "),
                req.protocol
            ));
            return Err(self.refuse(&req, Some(&identity), err).await);
        }
        let mut context = serde_json::Map::new();
        context.insert("protocol".into(), json!(req.protocol));
        context.insert("time".into(), json!(now_ms() / 1000));
        if let Some(addr) = req.client_addr {
            context.insert("client_ip".into(), json!(addr.ip().to_string()));
        }
        let (granted, _) = self.app.reviews.effective(&identity, now_ms());
        let authz = AuthzRequest {
            principal: granted.unwrap_or_else(|| identity.clone()),
            action: "connect".into(),
            resources: vec![Resource::Connection { connection: conn.name.clone() }],
            context,
        };
        let info = ConnectionInfo { name: conn.name.clone(), kind: conn.kind.clone(), tags: conn.tags.clone() };
        let decision = self.app.policy.decide(&authz, std::slice::from_ref(&info)).unwrap_or_else(|e| Decision {
            outcome: Outcome::Deny,
            policies: vec![],
            approvers: vec![],
            errors: vec![e.to_string()],
        });
        if decision.outcome != Outcome::Allow {
            let err = OpenError::Forbidden {
                message: format!("permission denied to connect to \"{}\": {}", conn.name, decision.explain()),
                policies: decision.policies.clone(),
            };
            return Err(self.refuse(&req, Some(&identity), err).await);
        }
        let (user, password, form) = match self.credential(&conn, &identity) {
            Ok(c) => c,
            Err(e) => return Err(self.refuse(&req, Some(&identity), e).await),
        };
        let (host, port) = match (conn.host.clone(), conn.port, &conn.url) {
            (Some(h), Some(p), _) => (h, p),
            (_, _, Some(_)) => (String::new(), 0),
            _ => {
                return Err(self
                    .refuse(&req, Some(&identity), OpenError::Unavailable("connection has no address".into()))
                    .await);
            }
        };
        let slot = match self.app.limits.open_session(&identity) {
            Ok(slot) => slot,
            Err(r) => {
                self.app.metrics.limited(r.limit);
                let err = OpenError::Limited { limit: r.limit, message: r.message };
                return Err(self.refuse(&req, Some(&identity), err).await);
            }
        };
        let id = new_session_id();
        let client = req.client_addr.map(|a| a.to_string());
        let entries = vec![
            Entry::session_start(
                session_record(&id, &identity.name, identity.kind, Some(&conn.name), req.protocol, client.clone()),
                &json!({"identity": identity.name, "identity_kind": identity.kind, "groups": identity.groups,
                    "protocol": req.protocol, "via": req.via, "connection": conn.name, "client_addr": client,
                    "tls": req.tls, "upstream_user": user}),
            ),
            Entry::request(
                &id,
                &json!({"action": "connect", "request": format!("connect {}", conn.name), "decision": "allow",
                    "policies": decision.policies}),
                false,
            ),
        ];
        self.app
            .audit
            .record(entries)
            .await
            .map_err(|e| OpenError::Unavailable(format!("the audit trail is unavailable: {e}")))?;
        self.app.metrics.session(req.protocol);
        self.app.metrics.request(req.protocol, "allow");
        let (end, _) = watch::channel(None);
        self.app.live.lock_insert(
            id.clone(),
            Live { identity: identity.name.clone(), _slot: slot, end, decisions: HashMap::new() },
        );
        let stamp = format!("gatehouse:{}", identity.entity_ref().replace('"', ""));
        Ok(OpenedSession {
            id,
            protocol: req.protocol,
            client_addr: req.client_addr,
            connection: conn.name.clone(),
            connection_info: info,
            identity,
            upstream: UpstreamTarget {
                host,
                port,
                database: conn.database.clone(),
                user,
                password,
                tls_mode: conn.tls_mode.clone(),
                ca_file: conn.ca_file.clone(),
                stamp,
                url: conn.url.clone(),
                form,
            },
            mask: conn.mask.clone(),
            mask_columns: conn.mask_columns.clone(),
        })
    }

    async fn authorize(&self, session: &OpenedSession, req: &Request) -> Result<Verdict, String> {
        if let Err(r) = self.app.limits.request(&session.identity) {
            self.app.metrics.limited(r.limit);
            let decision = Decision::deny(vec![]);
            let extra = json!({"refusal": r.limit.as_str(), "message": r.message});
            let seq = self.record_request(session, req, &decision, extra).await?;
            return Ok(Verdict { seq, decision, held: None, grant: None, limited: Some(r.message) });
        }
        let decision = self.decide(session, req).await?;
        if decision.outcome == Outcome::Review && !req.digest.is_empty() {
            // Approved earlier and sent again: the grant runs it once.
            if let Some(verdict) = self.run_granted(session, req, &decision, None).await? {
                return Ok(verdict);
            }
            let (review, joined) = crate::reviews::open_request_review(&self.app, session, req, &decision).await?;
            let seq = self
                .record_request(
                    session,
                    req,
                    &decision,
                    json!({"review_id": review.id, "review": if joined { "joined" } else { "created" }}),
                )
                .await?;
            let notice = self.app.reviews.notice(&review, joined);
            return Ok(Verdict {
                seq,
                decision,
                held: Some(Hold { review_id: review.id, notice }),
                grant: None,
                limited: None,
            });
        }
        let seq = self.record_request(session, req, &decision, json!({})).await?;
        Ok(Verdict { seq, decision, held: None, grant: None, limited: None })
    }

    async fn hold(&self, session: &OpenedSession, hold: &Hold, req: &Request) -> Result<Verdict, Unapproved> {
        self.app.metrics.held(1);
        let result = self.wait_for_review(session, hold, req).await;
        self.app.metrics.held(-1);
        result
    }

    async fn check(&self, session: &OpenedSession, req: &Request) -> Decision {
        self.decide(session, req).await.unwrap_or_else(|e| Decision {
            outcome: Outcome::Deny,
            policies: vec![],
            approvers: vec![],
            errors: vec![e],
        })
    }

    async fn may_unmask(&self, session: &OpenedSession, resource: &Resource) -> bool {
        let request = Request {
            text: String::new(),
            fingerprint: None,
            accesses: vec![("unmask".to_string(), resource.clone())],
            note: None,
            context: serde_json::Map::new(),
            params: Vec::new(),
            digest: String::new(),
        };
        self.decide(session, &request).await.is_ok_and(|d| d.outcome == Outcome::Allow)
    }

    fn finish(&self, session: &OpenedSession, seq: i64, result: RequestResult) {
        let mut masked: u64 = 0;
        for by_detector in result.masked.values() {
            for (detector, n) in by_detector {
                self.app.metrics.masked(detector, *n);
                masked = masked.saturating_add(*n);
            }
        }
        let event = ResultEvent {
            request_seq: seq,
            status: if result.error.is_some() { "error" } else { "ok" },
            duration_ms: result.duration_ms,
            rows: result.rows,
            command: result.command.as_deref(),
            error: result.error.as_deref(),
            bytes_out: result.bytes_out,
            bytes_in: result.bytes_in,
            columns: &result.columns,
            masked: &result.masked,
            request_sample: result.samples.as_ref().map(|s| s.request.as_str()),
            response_sample: result.samples.as_ref().map(|s| s.response.as_str()),
        };
        let payload = match serde_json::to_string(&event) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(session = %session.id, error = %e, "a request result could not be serialised");
                return;
            }
        };
        let entry = Entry::result(&session.id, payload, i64::try_from(masked).unwrap_or(i64::MAX));
        if let Err(e) = self.app.audit.record_detached(vec![entry]) {
            tracing::error!(session = %session.id, error = %e, "a request result could not be recorded");
        }
    }

    async fn close(&self, session: &OpenedSession, reason: &str) {
        self.app.live.remove(&session.id);
        // It happened: if the store fails now, it is kept and retried.
        let entry = Entry::session_end(&session.id, reason);
        if let Err(e) = self.app.audit.record_kept(vec![entry]).await {
            tracing::error!(session = %session.id, error = %e, "a session end could not be recorded");
        }
    }

    fn over_limit(&self, _protocol: &'static str, limit: gatehouse_core::pipeline::Limit) {
        self.app.metrics.limited(limit);
    }

    async fn ended(&self, session: &OpenedSession) -> String {
        let rx = self.app.live.lock().get(&session.id).map(|l| l.end.subscribe());
        let Some(mut rx) = rx else { return "the session is not registered".into() };
        let expiry = session.identity.expires_at.map(|e| {
            let wait = u64::try_from(e - now_ms()).unwrap_or(0);
            std::time::Duration::from_millis(wait)
        });
        let killed = async {
            loop {
                if let Some(reason) = rx.borrow().clone() {
                    return reason;
                }
                if rx.changed().await.is_err() {
                    return "the gateway is shutting down".to_string();
                }
            }
        };
        match expiry {
            Some(wait) => tokio::select! {
                reason = killed => reason,
                _ = tokio::time::sleep(wait) => "the caller's credential expired".to_string(),
            },
            None => killed.await,
        }
    }
}

impl LiveSessions {
    fn lock_insert(&self, id: String, live: Live) {
        self.lock().insert(id, live);
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}
