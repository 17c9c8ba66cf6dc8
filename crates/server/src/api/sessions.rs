use axum::Json;
use axum::extract::{Path, State};
use gatehouse_store::{SessionFilter, SessionOutcome, SessionRecord};
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
    /// Requests not allowed outright (denied or held for review).
    pub denied: i64,
    /// Requests held for review.
    pub reviewed: i64,
    /// Values masked in results.
    pub masked: i64,
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
            reviewed: s.reviewed,
            masked: s.masked,
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
    /// Only sessions of this protocol (`postgres`, `http`, `api`, `mcp`, …).
    pub protocol: Option<String>,
    /// Only sessions with a denied or held request (`denied`), a request held for review
    /// (`reviewed`), or a masked value (`masked`).
    pub outcome: Option<String>,
    /// Only sessions that started at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only sessions that started before this time (RFC 3339).
    pub until: Option<String>,
    /// The next page: the sessions that come after this session id in the list.
    pub after: Option<String>,
    /// At most this many, newest first (default 50, at most 1000).
    pub limit: Option<usize>,
}

impl ListParams {
    /// The store filter these parameters ask for; `after` names a session that must exist.
    pub async fn filter(self, app: &AppState) -> Result<SessionFilter, ApiError> {
        let limit = self.limit.unwrap_or(50);
        if limit == 0 || limit > 1000 {
            return Err(ApiError::invalid("limit must be between 1 and 1000"));
        }
        let outcome =
            match self.outcome.as_deref().filter(|o| !o.is_empty()) {
                None => None,
                Some(o) => Some(SessionOutcome::parse(o).ok_or_else(|| {
                    ApiError::invalid(format!("outcome {o:?} is not one of denied, reviewed, masked"))
                })?),
            };
        let time = |name: &str, value: Option<String>| -> Result<Option<i64>, ApiError> {
            match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => parse_time(&v)
                    .map(Some)
                    .ok_or_else(|| ApiError::invalid(format!("{name} {v:?} is not a time like 2026-01-31T12:00:00Z"))),
            }
        };
        let since = time("since", self.since)?;
        let mut before = time("until", self.until)?;
        let mut before_id = None;
        if let Some(after) = self.after.filter(|a| !a.is_empty()) {
            let anchor = app
                .store
                .get_session(&after)
                .await?
                .ok_or_else(|| ApiError::invalid(format!("after: session {after:?} not found")))?;
            before = Some(before.map_or(anchor.started_at, |b| b.min(anchor.started_at)));
            before_id = Some(anchor.id);
        }
        let text = |v: Option<String>| v.filter(|v| !v.is_empty());
        Ok(SessionFilter {
            identity: text(self.identity),
            connection: text(self.connection),
            protocol: text(self.protocol),
            since,
            before,
            before_id,
            outcome,
            limit,
        })
    }
}

/// Unix milliseconds of an RFC 3339 time, or of a `datetime-local` form value (`2026-01-31T12:00`,
/// taken as UTC).
pub fn parse_time(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let parsed = time::OffsetDateTime::parse(text, &Rfc3339).ok().or_else(|| {
        let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
        time::PrimitiveDateTime::parse(text, &format).ok().map(time::PrimitiveDateTime::assume_utc)
    })?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
}

#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", params(ListParams),
    responses((status = 200, body = [SessionView]), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Params(params): Params<ListParams>,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    app.authorize(&caller, Area::Sessions, false)?;
    app.settled().await;
    let filter = params.filter(&app).await?;
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
    app.settled().await;
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
