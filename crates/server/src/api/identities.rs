use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gatehouse_audit::now_ms;
use gatehouse_auth::issue_token;
use gatehouse_core::{IdentityKind, validate_group_name, validate_name};
use gatehouse_store::IdentityRecord;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::{ApiError, AppState, Body, Caller, ErrorBody, rfc3339};
use crate::app::Area;

/// A service identity as the API shows it (never its token).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IdentityView {
    pub name: String,
    /// `service` or `user`.
    pub kind: String,
    pub groups: Vec<String>,
    pub created_at: String,
    /// RFC 3339, or null for a token that does not expire.
    pub expires_at: Option<String>,
    pub expired: bool,
    pub last_used_at: Option<String>,
    pub token_rotated_at: Option<String>,
}

impl IdentityView {
    fn of(r: &IdentityRecord, now: i64) -> Self {
        IdentityView {
            name: r.name.clone(),
            kind: match r.kind {
                IdentityKind::Service => "service",
                IdentityKind::User => "user",
            }
            .into(),
            groups: r.groups.clone(),
            created_at: rfc3339(r.created_at),
            expires_at: r.expires_at.map(rfc3339),
            expired: r.expires_at.is_some_and(|e| e <= now),
            last_used_at: r.last_used_at.map(rfc3339),
            token_rotated_at: r.token_rotated_at.map(rfc3339),
        }
    }
}

/// A new service identity.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewIdentity {
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// How long the token stays valid, e.g. `90d`, `12h`; absent for no expiry.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A token, shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub identity: IdentityView,
    pub token: String,
}

/// The caller as the gateway sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub principal: String,
    pub name: String,
    pub groups: Vec<String>,
    pub admin: bool,
}

/// Options for a token rotation.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateInput {
    /// The new token's lifetime, e.g. `90d`; absent keeps the old token's lifetime.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A lifetime like `90d` in milliseconds; `None` for no lifetime given.
fn parse_ttl(ttl: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(ttl) = ttl.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(None) };
    let d = humantime::parse_duration(ttl).map_err(|e| ApiError::invalid(format!("ttl {ttl:?}: {e}")))?;
    let ms = i64::try_from(d.as_millis()).map_err(|_| ApiError::invalid(format!("ttl {ttl:?} is too long")))?;
    if ms == 0 {
        return Err(ApiError::invalid("ttl must be longer than zero"));
    }
    Ok(Some(ms))
}

fn clean_groups(groups: Vec<String>) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for g in groups {
        let g = g.trim().to_string();
        validate_group_name(&g).map_err(ApiError::invalid)?;
        if !out.contains(&g) {
            out.push(g);
        }
    }
    out.sort();
    Ok(out)
}

#[utoipa::path(get, path = "/api/v1/whoami", tag = "identities",
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
pub async fn whoami(Caller(caller): Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        principal: caller.entity_ref(),
        admin: caller.is_admin(),
        name: caller.name,
        groups: caller.groups.into_iter().collect(),
    })
}

#[utoipa::path(get, path = "/api/v1/identities", tag = "identities",
    responses((status = 200, body = [IdentityView]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(State(app): State<AppState>, Caller(caller): Caller) -> Result<Json<Vec<IdentityView>>, ApiError> {
    app.authorize(&caller, Area::Identities, false)?;
    let now = now_ms();
    Ok(Json(app.store.list_identities().await?.iter().map(|r| IdentityView::of(r, now)).collect()))
}

#[utoipa::path(get, path = "/api/v1/identities/{name}", tag = "identities",
    params(("name" = String, Path, description = "identity name")),
    responses((status = 200, body = IdentityView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<IdentityView>, ApiError> {
    app.authorize(&caller, Area::Identities, false)?;
    let r = app.identity(&name).await?;
    Ok(Json(IdentityView::of(&r, now_ms())))
}

#[utoipa::path(post, path = "/api/v1/identities", tag = "identities", request_body = NewIdentity,
    responses((status = 201, body = TokenResponse), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Body(input): Body<NewIdentity>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    validate_name("identity", &input.name).map_err(ApiError::invalid)?;
    let groups = clean_groups(input.groups)?;
    let now = now_ms();
    let expires_at = parse_ttl(input.ttl.as_deref())?.map(|ms| now.saturating_add(ms));
    let issued = issue_token(&app.keys).map_err(|e| ApiError::Internal(e.to_string()))?;
    let record = IdentityRecord {
        name: input.name.clone(),
        kind: IdentityKind::Service,
        groups: groups.clone(),
        token_hash: Some(issued.hash),
        created_at: now,
        expires_at,
        last_used_at: None,
        token_rotated_at: None,
    };
    let view = IdentityView::of(&record, now);
    let details = json!({"groups": groups, "expires_at": expires_at.map(rfc3339)});
    app.managed(&caller, Area::Identities, "identity.create", &input.name, details, || async {
        app.store.create_identity(record).await?;
        Ok(())
    })
    .await?;
    Ok((StatusCode::CREATED, Json(TokenResponse { identity: view, token: issued.token.expose().to_string() })))
}

#[utoipa::path(post, path = "/api/v1/identities/{name}/rotate", tag = "identities",
    params(("name" = String, Path, description = "identity name")), request_body(content = Option<RotateInput>),
    responses((status = 200, body = TokenResponse), (status = 404, body = ErrorBody)))]
pub async fn rotate(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<TokenResponse>, ApiError> {
    let input: RotateInput = if body.iter().all(u8::is_ascii_whitespace) {
        RotateInput::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("request body: {e}")))?
    };
    let issued = issue_token(&app.keys).map_err(|e| ApiError::Internal(e.to_string()))?;
    let now = now_ms();
    let ttl = parse_ttl(input.ttl.as_deref())?;
    app.managed(&caller, Area::Identities, "identity.rotate", &name, json!({"ttl": input.ttl}), || async {
        let current = app.identity(&name).await?;
        // Without --ttl, the new token lives as long as the old one was meant to.
        let lifetime =
            ttl.or_else(|| current.expires_at.map(|e| e - current.token_rotated_at.unwrap_or(current.created_at)));
        let expires_at = lifetime.map(|l| now.saturating_add(l.max(1)));
        app.store.rotate_identity_token(&name, &issued.hash, now, expires_at).await?;
        app.live.end_identity(&name, "the identity's token was rotated");
        Ok(())
    })
    .await?;
    let r = app.identity(&name).await?;
    Ok(Json(TokenResponse { identity: IdentityView::of(&r, now), token: issued.token.expose().to_string() }))
}

#[utoipa::path(delete, path = "/api/v1/identities/{name}", tag = "identities",
    params(("name" = String, Path, description = "identity name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.managed(&caller, Area::Identities, "identity.delete", &name, json!({}), || async {
        app.store.delete_identity(&name).await?;
        app.live.end_identity(&name, "the identity was removed");
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
