use axum::Json;
use axum::extract::State;
use gatehouse_audit::now_ms;
use gatehouse_auth::identity_of;
use gatehouse_core::{AuthzRequest, Decision, Identity, IdentityKind, Resource};
use gatehouse_policy::PolicyEngine;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::{ApiError, AppState, Body, Caller, ErrorBody, rfc3339};
use crate::app::{Area, principal_kind};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyEntry {
    pub id: String,
    /// `permit` or `forbid`.
    pub effect: String,
    pub approvers: Vec<ApproverView>,
    pub line: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApproverView {
    pub group: String,
    pub quorum: u32,
}

/// The policy set in force.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyView {
    /// 0 before any `policies set`.
    pub version: i64,
    pub text: String,
    pub policies: Vec<PolicyEntry>,
    pub warnings: Vec<String>,
    pub author: Option<String>,
    pub updated_at: Option<String>,
}

/// A new policy set.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    pub text: String,
}

fn view(engine: &PolicyEngine, version: i64, author: Option<String>, updated_at: Option<i64>) -> PolicyView {
    let summary = engine.summary();
    PolicyView {
        version,
        text: engine.text(),
        policies: summary
            .policies
            .iter()
            .map(|p| PolicyEntry {
                id: p.id.clone(),
                effect: match p.effect {
                    gatehouse_policy::Effect::Permit => "permit",
                    gatehouse_policy::Effect::Forbid => "forbid",
                }
                .into(),
                approvers: p
                    .approvers
                    .iter()
                    .map(|a| ApproverView { group: a.group.clone(), quorum: a.quorum })
                    .collect(),
                line: p.line,
            })
            .collect(),
        warnings: summary.warnings.clone(),
        author,
        updated_at: updated_at.map(rfc3339),
    }
}

#[utoipa::path(get, path = "/api/v1/policies", tag = "policies",
    responses((status = 200, body = PolicyView), (status = 403, body = ErrorBody)))]
pub async fn show(State(app): State<AppState>, Caller(caller): Caller) -> Result<Json<PolicyView>, ApiError> {
    app.authorize(&caller, Area::Policies, false)?;
    let current = app.store.current_policy().await?;
    Ok(Json(match current {
        Some(p) => view(&app.policy, p.version, Some(p.author), Some(p.created_at)),
        None => view(&app.policy, 0, None, None),
    }))
}

#[utoipa::path(put, path = "/api/v1/policies", tag = "policies", request_body = PolicyInput,
    responses((status = 200, body = PolicyView), (status = 422, description = "the set is invalid; the old one stays", body = ErrorBody)))]
pub async fn set(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Body(input): Body<PolicyInput>,
) -> Result<Json<PolicyView>, ApiError> {
    let now = now_ms();
    let details = json!({"text": input.text});
    let (version, ids) = app
        .managed(&caller, Area::Policies, "policies.set", "policies", details, || async {
            let loaded = gatehouse_policy::validate(&input.text).map_err(|e| ApiError::Invalid {
                message: "the policy set is invalid; the policies in force are unchanged".into(),
                problems: if e.problems().is_empty() {
                    vec![e.to_string()]
                } else {
                    e.problems().iter().map(ToString::to_string).collect()
                },
            })?;
            let ids: Vec<String> = loaded.summary().ids().into_iter().map(String::from).collect();
            let version = app.store.put_policy(&input.text, &caller.name, now).await?;
            app.policy.install(loaded);
            Ok((version, ids))
        })
        .await?;
    tracing::info!(version, policies = ids.len(), by = %caller.name, "policy set replaced");
    Ok(Json(view(&app.policy, version, Some(caller.name.clone()), Some(now))))
}

#[utoipa::path(get, path = "/api/v1/policies/schema", tag = "policies",
    responses((status = 200, description = "the Cedar schema, in Cedar's schema syntax", content_type = "text/plain", body = String)))]
pub async fn schema(Caller(_caller): Caller) -> &'static str {
    PolicyEngine::schema_text()
}

/// A question for `policies check`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckInput {
    /// `Service::"fn-billing"` or `User::"alice@example.com"`; absent for the caller itself
    /// (with the groups its token carries).
    #[serde(default)]
    pub principal: Option<String>,
    /// An action from the schema, e.g. `sql.delete`.
    pub action: String,
    /// One or more resources, e.g. `Table::"pg-prod/public.t"`; several are decided together.
    pub resources: Vec<String>,
    /// Extra context attributes, as in the schema.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub context: serde_json::Map<String, serde_json::Value>,
    /// Groups to assume for the principal. Defaults to a service identity's stored groups;
    /// required to see a user's groups (they come from the identity provider).
    #[serde(default)]
    pub groups: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DecisionView {
    /// `allow`, `review` or `deny`.
    pub decision: String,
    pub policies: Vec<String>,
    pub approvers: Vec<ApproverView>,
    pub errors: Vec<String>,
}

impl DecisionView {
    fn of(d: &Decision) -> Self {
        DecisionView {
            decision: d.outcome.as_str().into(),
            policies: d.policies.clone(),
            approvers: d.approvers.iter().map(|a| ApproverView { group: a.group.clone(), quorum: a.quorum }).collect(),
            errors: d.errors.clone(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResourceDecision {
    pub resource: String,
    #[serde(flatten)]
    pub decision: DecisionView,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckResult {
    #[serde(flatten)]
    pub decision: DecisionView,
    pub principal: String,
    pub groups: Vec<String>,
    pub per_resource: Vec<ResourceDecision>,
    /// The outcome on the first line, then the deciding policies, approvers and errors.
    pub report: String,
}

#[utoipa::path(post, path = "/api/v1/policies/check", tag = "policies", request_body = CheckInput,
    responses((status = 200, body = CheckResult), (status = 422, body = ErrorBody)))]
pub async fn check(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Body(input): Body<CheckInput>,
) -> Result<Json<CheckResult>, ApiError> {
    app.authorize(&caller, Area::Policies, false)?;
    let text = input.principal.clone().unwrap_or_else(|| caller.entity_ref());
    let (kind, name) = principal_kind(&text)
        .ok_or_else(|| ApiError::invalid(format!("principal {text:?} must be Service::\"NAME\" or User::\"NAME\"")))?;
    let principal = match (&input.groups, kind) {
        (Some(groups), _) => Identity { kind, name, groups: groups.iter().cloned().collect(), expires_at: None },
        // The caller asking about itself: the groups its credential carries now.
        (None, _) if kind == caller.kind && name == caller.name => caller.clone(),
        (None, IdentityKind::Service) => {
            let record = app.store.get_identity(&name).await?.ok_or_else(|| {
                ApiError::NotFound(format!(
                    "service identity {name:?} not found; pass its groups to check a hypothetical one"
                ))
            })?;
            identity_of(&record)
        }
        (None, IdentityKind::User) => Identity { kind, name, groups: Default::default(), expires_at: None },
    };
    if input.resources.is_empty() {
        return Err(ApiError::invalid("at least one resource is required"));
    }
    let resources = input
        .resources
        .iter()
        .map(|r| Resource::parse(r).map_err(|e| ApiError::invalid(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let connections = app.connection_infos(&resources).await?;
    let req =
        AuthzRequest { principal: principal.clone(), action: input.action.clone(), resources, context: input.context };
    let detailed = app.policy.decide_detailed(&req, &connections).map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(Json(CheckResult {
        decision: DecisionView::of(&detailed.decision),
        principal: principal.entity_ref(),
        groups: principal.groups.iter().cloned().collect(),
        per_resource: detailed
            .per_resource
            .iter()
            .map(|(r, d)| ResourceDecision { resource: r.entity_ref(), decision: DecisionView::of(d) })
            .collect(),
        report: detailed.report(),
    }))
}
