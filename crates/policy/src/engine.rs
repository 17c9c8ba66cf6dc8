//! The engine: the current policy set behind an `ArcSwap`, and the three-outcome evaluator.

use std::sync::Arc;

use arc_swap::ArcSwap;
use cedar_policy::{Authorizer, Context, Entities, Request, Response};
use gatehouse_core::{Approval, AuthzRequest, ConnectionInfo, Decision, Outcome, Resource};
use serde::Serialize;
use serde_json::Value;

use crate::entities::{Builder, uid};
use crate::load::{LoadedPolicies, PolicySummary, validate};
use crate::{PolicyError, SCHEMA, schema};

/// The combined decision of a request and the decision for each object it touches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetailedDecision {
    /// The strictest of the per-object decisions: what the gateway does.
    pub decision: Decision,
    /// Each object, in request order, with its own decision.
    pub per_resource: Vec<(Resource, Decision)>,
}

impl DetailedDecision {
    /// A few lines for `policies check` and logs: the combined outcome alone on the first line,
    /// then the deciding `@id`s, approvers and errors, then each object when there are several.
    pub fn report(&self) -> String {
        let d = &self.decision;
        let mut out = vec![d.outcome.as_str().to_string()];
        out.extend(detail_lines(d, ""));
        if self.per_resource.len() > 1 {
            for (r, d) in &self.per_resource {
                out.push(format!("{}: {}", r.entity_ref(), d.outcome.as_str()));
                out.extend(detail_lines(d, "  "));
            }
        }
        out.join("\n")
    }
}

fn detail_lines(d: &Decision, indent: &str) -> Vec<String> {
    let mut out = Vec::new();
    if d.policies.is_empty() && d.outcome == Outcome::Deny && d.errors.is_empty() {
        out.push(format!("{indent}policies: none (default deny: no policy permits it)"));
    } else if !d.policies.is_empty() {
        out.push(format!("{indent}policies: {}", d.policies.join(", ")));
    }
    if !d.approvers.is_empty() {
        let a: Vec<String> = d.approvers.iter().map(|a| format!("{} (quorum {})", a.group, a.quorum)).collect();
        out.push(format!("{indent}approvers: {}", a.join(", ")));
    }
    for e in &d.errors {
        out.push(format!("{indent}error: {e}"));
    }
    out
}

/// The current policy set and the evaluator. Reads (every request) are lock-free; [`set`]
/// swaps in a new set atomically and keeps the old one if the new text is refused.
///
/// [`set`]: PolicyEngine::set
#[derive(Debug)]
pub struct PolicyEngine {
    current: ArcSwap<LoadedPolicies>,
    /// Counts installs, so that a decision kept from before a change is known stale.
    generation: std::sync::atomic::AtomicU64,
}

impl Default for PolicyEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyEngine {
    /// An engine with the empty set: everything is denied.
    pub fn new() -> Self {
        PolicyEngine { current: ArcSwap::from_pointee(LoadedPolicies::empty()), generation: Default::default() }
    }

    /// An engine loaded with `text`.
    pub fn with_text(text: &str) -> Result<Self, PolicyError> {
        Ok(PolicyEngine { current: ArcSwap::from_pointee(validate(text)?), generation: Default::default() })
    }

    /// The schema policies are written against.
    pub fn schema_text() -> &'static str {
        SCHEMA
    }

    /// Validates `text` and makes it the current set. On error the current set is unchanged.
    pub fn set(&self, text: &str) -> Result<PolicySummary, PolicyError> {
        Ok(self.install(validate(text)?))
    }

    /// Makes an already validated set the current one.
    pub fn install(&self, loaded: LoadedPolicies) -> PolicySummary {
        let summary = loaded.summary().clone();
        self.current.store(Arc::new(loaded));
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(policies = summary.policies.len(), "policy set replaced");
        summary
    }

    /// Changes each time a set is installed. A decision made while this read `g` is stale once
    /// it reads anything else (read it before deciding).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The text of the current set.
    pub fn text(&self) -> String {
        self.current.load().text().to_string()
    }

    /// The `@id`s and approvers of the current set.
    pub fn summary(&self) -> PolicySummary {
        self.current.load().summary().clone()
    }

    /// The current set itself (a snapshot: later [`set`](Self::set)s do not change it).
    pub fn current(&self) -> Arc<LoadedPolicies> {
        self.current.load_full()
    }

    /// Decides a request: each resource on its own, the strictest outcome wins. `connections`
    /// supplies the type and tags of the connections the resources live in.
    ///
    /// Errs only for a malformed request (unknown action, a resource type the action does not
    /// apply to, a context that does not match the schema, no resources); every policy outcome,
    /// including evaluation errors, is a [`Decision`].
    pub fn decide(&self, req: &AuthzRequest, connections: &[ConnectionInfo]) -> Result<Decision, PolicyError> {
        Ok(self.decide_detailed(req, connections)?.decision)
    }

    /// Like [`decide`](Self::decide), with the decision for each resource.
    pub fn decide_detailed(
        &self,
        req: &AuthzRequest,
        connections: &[ConnectionInfo],
    ) -> Result<DetailedDecision, PolicyError> {
        let set = self.current.load();
        decide_with(&set, req, connections)
    }
}

/// Decides `req` against one loaded set.
fn decide_with(
    set: &LoadedPolicies,
    req: &AuthzRequest,
    connections: &[ConnectionInfo],
) -> Result<DetailedDecision, PolicyError> {
    let schema = &schema::get()?.schema;
    if req.resources.is_empty() {
        return Err(PolicyError::Request(
            "no resource to decide on; a request that names no object is decided on its Connection".into(),
        ));
    }
    let action = uid("Action", &req.action)?;
    if !schema.actions().any(|a| *a == action) {
        return Err(PolicyError::Request(format!("unknown action {:?}", req.action)));
    }
    let context = Context::from_json_value(context_json(&req.context), Some((schema, &action)))
        .map_err(|e| PolicyError::Request(format!("context: {}", with_help(&e))))?;

    let mut builder = Builder::new(connections);
    let principal = builder.principal(&req.principal)?;
    let mut resources = Vec::with_capacity(req.resources.len());
    for r in &req.resources {
        resources.push(builder.resource(r)?);
    }
    let entities = Entities::from_entities(builder.into_entities(), Some(schema))
        .map_err(|e| PolicyError::Request(with_help(&e)))?;

    let authorizer = Authorizer::new();
    let mut per_resource = Vec::with_capacity(resources.len());
    for (r, resource) in req.resources.iter().zip(resources) {
        let request = Request::new(principal.clone(), action.clone(), resource, context.clone(), Some(schema))
            .map_err(|e| PolicyError::Request(with_help(&e)))?;
        let d = decide_one(set, &authorizer, &request, &entities);
        tracing::debug!(
            principal = %req.principal.entity_ref(),
            action = %req.action,
            resource = %r.entity_ref(),
            outcome = d.outcome.as_str(),
            policies = ?d.policies,
            "policy decision"
        );
        per_resource.push((r.clone(), d));
    }
    let decision = Decision::strictest(per_resource.iter().map(|(_, d)| d.clone()));
    Ok(DetailedDecision { decision, per_resource })
}

/// The three-outcome procedure for one resource (DESIGN.md, "Three outcomes").
fn decide_one(set: &LoadedPolicies, authorizer: &Authorizer, request: &Request, entities: &Entities) -> Decision {
    let first = authorizer.is_authorized(request, &set.full, entities);
    let reasons = reasons(set, &first);
    let errors = eval_errors(&first);
    if !errors.is_empty() {
        // An erroring policy is skipped by Cedar, which would fail open for a forbid: deny.
        for e in &errors {
            tracing::warn!(error = %e, "policy evaluation error; denying");
        }
        let forbids = if first.decision() == cedar_policy::Decision::Deny { reasons } else { vec![] };
        return Decision { outcome: Outcome::Deny, policies: forbids, approvers: vec![], errors };
    }
    if first.decision() == cedar_policy::Decision::Allow {
        return Decision::allow(reasons);
    }
    // Denied. `reasons` are the forbids that matched; none means the default deny.
    if reasons.is_empty() {
        return Decision::deny(vec![]);
    }
    let approval_only = reasons.iter().all(|id| set.policy(id).is_some_and(|p| !p.approvers.is_empty()));
    if !approval_only {
        return Decision::deny(reasons);
    }
    let second = authorizer.is_authorized(request, &set.without_approvals, entities);
    let errors = eval_errors(&second);
    if !errors.is_empty() {
        return Decision { outcome: Outcome::Deny, policies: reasons, approvers: vec![], errors };
    }
    if second.decision() != cedar_policy::Decision::Allow {
        return Decision::deny(reasons);
    }
    let mut approvers: Vec<Approval> = Vec::new();
    for a in reasons.iter().filter_map(|id| set.policy(id)).flat_map(|p| p.approvers.iter()) {
        match approvers.iter_mut().find(|x| x.group == a.group) {
            Some(x) => x.quorum = x.quorum.max(a.quorum),
            None => approvers.push(a.clone()),
        }
    }
    Decision { outcome: Outcome::Review, policies: reasons, approvers, errors: vec![] }
}

/// The determining policies' `@id`s, in text order.
fn reasons(set: &LoadedPolicies, r: &Response) -> Vec<String> {
    let mut ids: Vec<String> = r.diagnostics().reason().map(ToString::to_string).collect();
    ids.sort_by_key(|id| set.position(id));
    ids
}

/// Evaluation errors, each naming its policy, sorted for stable output.
fn eval_errors(r: &Response) -> Vec<String> {
    let mut out: Vec<String> = r
        .diagnostics()
        .errors()
        .map(|e| match e {
            cedar_policy::AuthorizationError::PolicyEvaluationError(e) => {
                format!("policy {:?}: {}", e.policy_id().to_string(), e.inner())
            }
        })
        .collect();
    out.sort();
    out
}

/// The request context as Cedar JSON: `null` attributes are dropped (absent), and a plain
/// string `client_ip` becomes an `ip(…)` extension value.
fn context_json(ctx: &serde_json::Map<String, Value>) -> Value {
    let mut out = serde_json::Map::with_capacity(ctx.len());
    for (k, v) in ctx {
        match (k.as_str(), v) {
            (_, Value::Null) => {}
            ("client_ip", Value::String(ip)) => {
                out.insert(k.clone(), serde_json::json!({ "__extn": { "fn": "ip", "arg": ip } }));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

fn with_help(e: &dyn miette::Diagnostic) -> String {
    match e.help() {
        Some(h) => format!("{e}; {h}"),
        None => e.to_string(),
    }
}

// The engine is shared between request tasks.
const _: fn() = || {
    fn is<T: Send + Sync>() {}
    is::<PolicyEngine>();
};
