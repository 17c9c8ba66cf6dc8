use axum::Json;
use axum::extract::{Path, State};
use gatehouse_store::{SessionFilter, SessionRecord};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState, Caller, ErrorBody, Params, rfc3339};
use crate::app::Area;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    pub id: String,
    pub identity: String,
    pub identity_kind: String,
    pub connection: Option<String>,
    pub protocol: String,
    pub client_addr: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
    pub live: bool,
    pub requests: i64,
    pub denied: i64,
}

impl SessionView {
    fn of(s: &SessionRecord) -> Self {
        SessionView {
            id: s.id.clone(),
            identity: s.identity.clone(),
            identity_kind: s.identity_kind.entity_type().to_ascii_lowercase(),
            connection: s.connection.clone(),
            protocol: s.protocol.clone(),
            client_addr: s.client_addr.clone(),
            started_at: rfc3339(s.started_at),
            ended_at: s.ended_at.map(rfc3339),
            end_reason: s.end_reason.clone(),
            live: s.ended_at.is_none(),
            requests: s.requests,
            denied: s.denied,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub seq: i64,
    pub time: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionDetail {
    #[serde(flatten)]
    pub session: SessionView,
    /// Every recorded event of the session, in order.
    pub events: Vec<EventView>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListParams {
    /// Only sessions of this identity.
    pub identity: Option<String>,
    /// Only sessions on this connection.
    pub connection: Option<String>,
    /// At most this many, newest first (default 50, at most 1000).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", params(ListParams),
    responses((status = 200, body = [SessionView]), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Params(params): Params<ListParams>,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    app.authorize(&caller, Area::Sessions, false)?;
    let limit = params.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    let filter = SessionFilter { identity: params.identity, connection: params.connection, before: None, limit };
    Ok(Json(app.store.list_sessions(filter).await?.iter().map(SessionView::of).collect()))
}

#[utoipa::path(get, path = "/api/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, body = SessionDetail), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<SessionDetail>, ApiError> {
    app.authorize(&caller, Area::Sessions, false)?;
    let session =
        app.store.get_session(&id).await?.ok_or_else(|| ApiError::NotFound(format!("session {id:?} not found")))?;
    let events = app
        .store
        .session_events(&id)
        .await?
        .into_iter()
        .map(|e| EventView {
            seq: e.seq,
            time: rfc3339(e.ts),
            kind: e.kind,
            data: serde_json::from_str(&e.payload).unwrap_or(serde_json::Value::String(e.payload)),
        })
        .collect();
    Ok(Json(SessionDetail { session: SessionView::of(&session), events }))
}

#[utoipa::path(post, path = "/api/v1/sessions/{id}/kill", tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    responses((status = 204, description = "the session was told to end"), (status = 404, body = ErrorBody), (status = 409, description = "the session has already ended", body = ErrorBody)))]
pub async fn kill(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    let by = caller.entity_ref();
    app.managed(&caller, Area::Sessions, "session.kill", &id, serde_json::json!({}), || async {
        if app.live.kill(&id, &format!("terminated by {by}")) {
            return Ok(());
        }
        match app.store.get_session(&id).await? {
            Some(_) => Err(ApiError::Conflict(format!("session {id:?} has already ended"))),
            None => Err(ApiError::NotFound(format!("session {id:?} not found"))),
        }
    })
    .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
