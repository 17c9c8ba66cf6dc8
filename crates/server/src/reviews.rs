//! Just-in-time approval: reviews of requests that policy holds, the grants their approval
//! yields (run this exact request once; be in a group for a while), who may decide them, the
//! wake-up of requests held on the wire, expiry, and the webhook notification. Protocol-neutral:
//! adapters see only [`gatehouse_core::pipeline::Hold`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use gatehouse_audit::{Entry, new_session_id, now_ms, session_record};
use gatehouse_core::pipeline::{OpenedSession, Request};
use gatehouse_core::{Decision, Identity, IdentityKind};
use gatehouse_store::{ReviewApprovers, ReviewKind, ReviewRecord, ReviewStatus, ReviewVote};
use serde_json::json;
use tokio::sync::watch;

use crate::api::ApiError;
use crate::app::App;
use crate::config::ReviewSettings;

/// Delivery attempts of one webhook notification, and the first wait between them (doubled
/// after each failure).
const WEBHOOK_ATTEMPTS: u32 = 6;
const WEBHOOK_FIRST_RETRY: Duration = Duration::from_millis(500);

/// The review registry's in-memory side: wake-ups for held requests and the access grants in
/// force. The reviews themselves live in the store.
#[derive(Debug)]
pub struct Reviews {
    settings: ReviewSettings,
    /// Per pending review someone waits on: a counter bumped on every change.
    waiters: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Access grants in force, by identity name.
    access: Mutex<HashMap<String, Vec<AccessGrant>>>,
    /// Votes are decided one at a time, so quorum is counted on the latest state.
    voting: tokio::sync::Mutex<()>,
    http: reqwest::Client,
}

/// A group an identity holds until a time, by an approved access request.
#[derive(Debug)]
struct AccessGrant {
    kind: IdentityKind,
    group: String,
    until: i64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Reviews {
    pub fn new(settings: ReviewSettings) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Reviews {
            settings,
            waiters: Mutex::new(HashMap::new()),
            access: Mutex::new(HashMap::new()),
            voting: tokio::sync::Mutex::new(()),
            http,
        }
    }

    pub fn settings(&self) -> &ReviewSettings {
        &self.settings
    }

    /// Where an approver finds a review: its card in the web console, or the REST API when the
    /// console is off.
    pub fn link(&self, id: &str) -> String {
        if self.settings.console_links {
            format!("{}/console/reviews#review-{id}", self.settings.public_url)
        } else {
            format!("{}/api/v1/reviews/{id}", self.settings.public_url)
        }
    }

    /// Loads the access grants in force (at start-up).
    pub fn load_access(&self, grants: &[ReviewRecord]) {
        for r in grants {
            self.add_access(r);
        }
    }

    fn add_access(&self, r: &ReviewRecord) {
        if let (Some(group), Some(until)) = (&r.group, r.grant_until) {
            let grant = AccessGrant { kind: r.requester_kind, group: group.clone(), until };
            lock(&self.access).entry(r.requester.clone()).or_default().push(grant);
        }
    }

    /// `identity` with the groups its approved access requests add at `now`, and those groups
    /// (sorted; none for most identities).
    pub fn effective(&self, identity: &Identity, now: i64) -> (Option<Identity>, Vec<String>) {
        let mut extra: Vec<String> = {
            let mut access = lock(&self.access);
            let Some(grants) = access.get_mut(&identity.name) else { return (None, Vec::new()) };
            grants.retain(|g| g.until > now);
            let extra = grants
                .iter()
                .filter(|g| g.kind == identity.kind && !identity.groups.contains(&g.group))
                .map(|g| g.group.clone())
                .collect();
            if grants.is_empty() {
                access.remove(&identity.name);
            }
            extra
        };
        if extra.is_empty() {
            return (None, extra);
        }
        extra.sort();
        extra.dedup();
        let mut with = identity.clone();
        with.groups.extend(extra.iter().cloned());
        (Some(with), extra)
    }

    /// A receiver that changes whenever review `id` does.
    pub fn watch(&self, id: &str) -> watch::Receiver<u64> {
        lock(&self.waiters).entry(id.to_string()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Wakes whoever waits on `review`; a decided review has nothing more to wait for.
    fn changed(&self, review: &ReviewRecord) {
        let mut waiters = lock(&self.waiters);
        if let Some(tx) = waiters.get(&review.id) {
            tx.send_modify(|n| *n += 1);
        }
        if review.status != ReviewStatus::Pending {
            waiters.remove(&review.id);
        }
    }

    /// A new pending review of `kind` by `requester`, expiring after `[reviews] expire_after`;
    /// what is particular to its kind is left empty for the caller to fill in.
    fn pending(
        &self,
        kind: ReviewKind,
        requester: &Identity,
        request: String,
        reason: String,
        approvers: &[(String, u32)],
    ) -> ReviewRecord {
        let now = now_ms();
        ReviewRecord {
            id: new_session_id(),
            kind,
            status: ReviewStatus::Pending,
            requester: requester.name.clone(),
            requester_kind: requester.kind,
            connection: None,
            session_id: None,
            request,
            digest: None,
            params: vec![],
            fingerprint: None,
            accesses: vec![],
            policies: vec![],
            reason,
            approvers: approvers
                .iter()
                .map(|(group, quorum)| ReviewApprovers { group: group.clone(), quorum: *quorum })
                .collect(),
            votes: vec![],
            group: None,
            duration_ms: None,
            created_at: now,
            expires_at: now + millis(self.settings.expire_after),
            decided_at: None,
            grant_until: None,
            used_at: None,
            version: 1,
        }
    }

    /// Stores a new review, counts it and notifies the webhook.
    async fn opened(&self, app: &App, review: &ReviewRecord) -> Result<(), gatehouse_store::StoreError> {
        app.store.create_review(review).await?;
        app.metrics.review("created");
        self.notify(review);
        Ok(())
    }

    /// What a held caller is told while it waits.
    pub fn notice(&self, review: &ReviewRecord, joined: bool) -> String {
        let hold = self.settings.hold.as_secs();
        format!(
            "review {id} {what}: this request needs approval by {approvers}; holding it for up to {hold}s. Approve with \"gatehouse reviews approve {id}\" ({link})",
            id = review.id,
            what = if joined { "(already pending)" } else { "created" },
            approvers = approvers_text(&review.approvers),
            link = self.link(&review.id),
        )
    }

    /// Sends the notification of a new review to the configured webhook, retrying with backoff,
    /// in the background: the caller never waits for it.
    pub fn notify(&self, review: &ReviewRecord) {
        let Some(url) = self.settings.webhook_url.clone() else { return };
        let link = self.link(&review.id);
        let what = match review.kind {
            ReviewKind::Request => format!(
                "{} asks to run on {}: {}",
                review.requester,
                review.connection.as_deref().unwrap_or("-"),
                review.request
            ),
            ReviewKind::Access => format!("{} asks for {} ({})", review.requester, review.request, review.reason),
        };
        let text = format!(
            "Gatehouse review {}: {what}\nApprovers: {}. Approve: gatehouse reviews approve {} or {link}",
            review.id,
            approvers_text(&review.approvers),
            review.id
        );
        let body = json!({
            "text": text,
            "review": view(review),
            "request": review.request,
            "link": link,
        });
        let http = self.http.clone();
        let id = review.id.clone();
        tokio::spawn(async move {
            let mut wait = WEBHOOK_FIRST_RETRY;
            for attempt in 1..=WEBHOOK_ATTEMPTS {
                match http.post(url.clone()).json(&body).send().await {
                    Ok(r) if r.status().is_success() => return,
                    // The URL may carry a secret (Slack's do): never log it.
                    Ok(r) => {
                        tracing::warn!(review = %id, attempt, status = %r.status(), "the review webhook refused the notification")
                    }
                    Err(e) => {
                        tracing::warn!(review = %id, attempt, error = %e.without_url(), "the review webhook is unreachable")
                    }
                }
                if attempt < WEBHOOK_ATTEMPTS {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
            tracing::error!(review = %id, "gave up notifying the review webhook");
        });
    }
}

fn approvers_text(approvers: &[ReviewApprovers]) -> String {
    let groups: Vec<String> = approvers
        .iter()
        .map(|a| if a.quorum > 1 { format!("{} (quorum {})", a.group, a.quorum) } else { a.group.clone() })
        .collect();
    groups.join(" and ")
}

/// A review as the API, the CLI and the webhook show it.
pub fn view(r: &ReviewRecord) -> serde_json::Value {
    let rfc = |ms: Option<i64>| ms.map(crate::api::rfc3339);
    json!({
        "id": r.id,
        "kind": r.kind.as_str(),
        "status": r.status.as_str(),
        "requester": r.requester,
        "requester_kind": r.requester_kind,
        "connection": r.connection,
        "session_id": r.session_id,
        "request": r.request,
        "params": r.params,
        "fingerprint": r.fingerprint,
        "accesses": r.accesses,
        "policies": r.policies,
        "reason": r.reason,
        "approvers": r.approvers,
        "votes": r.votes.iter().map(|v| json!({
            "approver": v.approver, "groups": v.groups, "decision": if v.approve { "approve" } else { "deny" },
            "comment": v.comment, "at": crate::api::rfc3339(v.at),
        })).collect::<Vec<_>>(),
        "group": r.group,
        "duration_seconds": r.duration_ms.map(|d| d / 1000),
        "created_at": crate::api::rfc3339(r.created_at),
        "expires_at": crate::api::rfc3339(r.expires_at),
        "decided_at": rfc(r.decided_at),
        "grant_until": rfc(r.grant_until),
        "used_at": rfc(r.used_at),
    })
}

/// Finds the pending review of this exact request by this caller, or opens one. Returns it and
/// whether it was already pending.
pub async fn open_request_review(
    app: &App,
    session: &OpenedSession,
    req: &Request,
    decision: &Decision,
) -> Result<(ReviewRecord, bool), String> {
    let now = now_ms();
    let unavailable = |e: gatehouse_store::StoreError| format!("reviews are unavailable: {e}");
    if let Some(r) = app
        .store
        .pending_review(&session.identity.name, &session.connection, &req.digest, now)
        .await
        .map_err(unavailable)?
    {
        return Ok((r, true));
    }
    let approvers = decision.approvers.iter().map(|a| (a.group.clone(), a.quorum)).collect::<Vec<_>>();
    let review = ReviewRecord {
        connection: Some(session.connection.clone()),
        session_id: Some(session.id.clone()),
        digest: Some(req.digest.clone()),
        params: req.params.clone(),
        fingerprint: req.fingerprint.clone(),
        accesses: req.accesses.iter().map(|(a, r)| format!("{a} {}", r.entity_ref())).collect(),
        policies: decision.policies.clone(),
        ..app.reviews.pending(ReviewKind::Request, &session.identity, req.text.clone(), decision.explain(), &approvers)
    };
    app.reviews.opened(app, &review).await.map_err(unavailable)?;
    Ok((review, false))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Why a held request did not run, for the caller.
pub fn refusal(review: &ReviewRecord) -> String {
    match review.status {
        ReviewStatus::Denied => {
            let by = review.votes.iter().rev().find(|v| !v.approve);
            match by {
                Some(v) if !v.comment.is_empty() => {
                    format!("review {} was denied by {}: {}", review.id, v.approver, v.comment)
                }
                Some(v) => format!("review {} was denied by {}", review.id, v.approver),
                None => format!("review {} was denied", review.id),
            }
        }
        ReviewStatus::Expired => {
            format!("review {} expired before it was approved; the request did not run", review.id)
        }
        ReviewStatus::Approved => {
            format!("review {} was approved, but its grant was already used or has ended", review.id)
        }
        ReviewStatus::Pending => format!(
            "this request is waiting for approval (review {}); once it is approved, send the same request again and it runs once",
            review.id
        ),
    }
}

/// An approval or denial of review `id` by `caller`. Eligibility is checked here, whatever
/// the client: the requester cannot decide their own review, and an approver must be in one of
/// the review's approver groups now. Each approver group needs its quorum of distinct approvers;
/// one denial denies.
/// Why `caller` may not cast a vote (`verb`: approve or deny) on `review` at `now`, if anything
/// stands in the way, and the caller's groups that the review accepts approvers from. Checked on
/// every vote, and shown by the console to decide which buttons to offer.
pub fn obstacle(review: &ReviewRecord, caller: &Identity, now: i64, verb: &str) -> (Option<ApiError>, Vec<String>) {
    let id = &review.id;
    let refuse = |message: String| ApiError::Forbidden { message, policies: vec![] };
    let mut problem = None;
    if review.status == ReviewStatus::Pending && review.expires_at <= now {
        problem = Some(ApiError::Conflict(format!("review {id} has expired")));
    } else if review.status != ReviewStatus::Pending {
        problem = Some(ApiError::Conflict(format!("review {id} is already {}", review.status.as_str())));
    } else if caller.name == review.requester && caller.kind == review.requester_kind {
        problem = Some(refuse(format!("{} cannot {verb} their own request (review {id})", caller.entity_ref())));
    }
    let groups: Vec<String> =
        review.approvers.iter().map(|a| a.group.clone()).filter(|g| caller.groups.contains(g)).collect();
    if problem.is_none() && groups.is_empty() {
        problem = Some(refuse(format!(
            "{} may not {verb} review {id}: it needs approval by {}, and the caller is in none of those groups",
            caller.entity_ref(),
            approvers_text(&review.approvers)
        )));
    }
    if problem.is_none() && review.votes.iter().any(|v| v.approver == caller.name && v.approver_kind == caller.kind) {
        problem = Some(ApiError::Conflict(format!("{} has already decided on review {id}", caller.entity_ref())));
    }
    (problem, groups)
}

pub async fn vote(
    app: &App,
    caller: &Identity,
    id: &str,
    approve: bool,
    comment: &str,
) -> Result<ReviewRecord, ApiError> {
    let _one_at_a_time = app.reviews.voting.lock().await;
    let now = now_ms();
    let mut review =
        app.store.get_review(id).await?.ok_or_else(|| ApiError::NotFound(format!("review {id:?} not found")))?;
    let verb = if approve { "approve" } else { "deny" };
    let (problem, groups) = obstacle(&review, caller, now, verb);
    // Recorded before it takes effect, refused attempts included.
    let action = format!("review.{verb}");
    let denied = problem.is_some();
    let entries = api_call(
        caller,
        json!({"action": action, "operation": action, "target": id, "review_id": id, "comment": comment,
            "requester": review.requester, "request": review.request, "as_groups": groups,
            "decision": if denied { "deny" } else { "allow" },
            "message": problem.as_ref().map(ToString::to_string)}),
        denied,
    );
    app.audit.record(entries).await?;
    if let Some(p) = problem {
        return Err(p);
    }
    review.votes.push(ReviewVote {
        approver: caller.name.clone(),
        approver_kind: caller.kind,
        groups,
        approve,
        comment: comment.to_string(),
        at: now,
    });
    if !approve {
        review.status = ReviewStatus::Denied;
        review.decided_at = Some(now);
    } else if quorum_met(&review) {
        review.status = ReviewStatus::Approved;
        review.decided_at = Some(now);
        review.grant_until = Some(match review.kind {
            ReviewKind::Request => now + millis(app.reviews.settings.grant_validity),
            ReviewKind::Access => now + review.duration_ms.unwrap_or(0),
        });
    }
    if !app.store.update_review(&review).await? {
        return Err(ApiError::Conflict(format!("review {id} changed meanwhile; try again")));
    }
    review.version += 1;
    if review.status != ReviewStatus::Pending {
        app.metrics.review(review.status.as_str());
        let event = json!({"review_id": id, "status": review.status.as_str(), "kind": review.kind.as_str(),
            "requester": review.requester, "grant_until": review.grant_until, "group": review.group});
        if let Err(e) = app.record_server_event(&format!("review.{}", review.status.as_str()), event).await {
            tracing::error!(review = %id, error = %e, "a review decision could not be recorded");
        }
    }
    if review.kind == ReviewKind::Access && review.status == ReviewStatus::Approved {
        app.reviews.add_access(&review);
    }
    app.reviews.changed(&review);
    Ok(review)
}

/// A management call by `caller` as its own `api` session: start, the request, end.
fn api_call(caller: &Identity, request: serde_json::Value, denied: bool) -> Vec<Entry> {
    let session_id = new_session_id();
    vec![
        Entry::session_start(
            session_record(&session_id, &caller.name, caller.kind, None, "api", None),
            &json!({"identity": caller.name, "identity_kind": caller.kind, "groups": caller.groups, "protocol": "api"}),
        ),
        Entry::request(&session_id, &request, denied),
        Entry::session_end(&session_id, if denied { "denied" } else { "completed" }),
    ]
}

/// Whether every approver group has its quorum of distinct approving members.
fn quorum_met(review: &ReviewRecord) -> bool {
    review.approvers.iter().all(|a| {
        let n = review.votes.iter().filter(|v| v.approve && v.groups.contains(&a.group)).count();
        u32::try_from(n).unwrap_or(u32::MAX) >= a.quorum
    })
}

/// `gatehouse access request`: a review of membership of a requestable group for a while.
pub async fn request_access(
    app: &App,
    caller: &Identity,
    group: &str,
    duration: Duration,
    reason: &str,
) -> Result<ReviewRecord, ApiError> {
    let settings = app.reviews.settings();
    let Some((approvers, max)) = settings.access.get(group) else {
        let mut requestable: Vec<&str> = settings.access.keys().map(String::as_str).collect();
        requestable.sort_unstable();
        let which = if requestable.is_empty() {
            "none are".to_string()
        } else {
            format!("requestable: {}", requestable.join(", "))
        };
        return Err(ApiError::Forbidden {
            message: format!("group {group:?} cannot be requested ({which}; see [access.groups] in the configuration)"),
            policies: vec![],
        });
    };
    if reason.trim().is_empty() {
        return Err(ApiError::invalid("a reason is required"));
    }
    if duration.is_zero() || duration > *max {
        return Err(ApiError::invalid(format!(
            "the window must be longer than zero and at most {} for group {group:?}",
            humantime::format_duration(*max)
        )));
    }
    if caller.groups.contains(group) {
        return Err(ApiError::Conflict(format!("{} is already in group {group:?}", caller.entity_ref())));
    }
    let request = format!("group {group} for {}", humantime::format_duration(duration));
    let review = ReviewRecord {
        group: Some(group.to_string()),
        duration_ms: Some(millis(duration)),
        ..app.reviews.pending(ReviewKind::Access, caller, request, reason.to_string(), approvers)
    };
    let entries = api_call(
        caller,
        json!({"action": "access.request", "operation": "access.request", "target": group, "review_id": review.id,
            "request": review.request, "reason": reason, "decision": "review", "approvers": review.approvers}),
        false,
    );
    app.audit.record(entries).await?;
    app.reviews.opened(app, &review).await?;
    Ok(review)
}

/// Expires pending reviews whose time ran out, records it, and wakes their held requests; runs
/// until `stop` turns true.
pub async fn expire_until(app: std::sync::Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let expired = match app.store.expire_reviews(now_ms()).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "pending reviews could not be checked for expiry");
                continue;
            }
        };
        for review in expired {
            app.metrics.review("expired");
            let event = json!({"review_id": review.id, "status": "expired", "kind": review.kind.as_str(),
                "requester": review.requester});
            if let Err(e) = app.record_server_event("review.expired", event).await {
                tracing::error!(review = %review.id, error = %e, "a review's expiry could not be recorded");
            }
            app.reviews.changed(&review);
        }
    }
}
