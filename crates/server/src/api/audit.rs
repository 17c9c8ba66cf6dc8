use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, AppState, Caller, ErrorBody};
use crate::app::Area;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VerifyView {
    pub ok: bool,
    pub events: i64,
    pub first_bad: Option<i64>,
    pub problem: Option<String>,
    /// `ok: N events`, or `bad: event S: problem`.
    pub line: String,
}

#[utoipa::path(post, path = "/api/v1/audit/verify", tag = "audit",
    responses((status = 200, description = "the chain was checked; `ok` says how it went", body = VerifyView), (status = 403, body = ErrorBody)))]
pub async fn verify(State(app): State<AppState>, Caller(caller): Caller) -> Result<Json<VerifyView>, ApiError> {
    app.authorize(&caller, Area::Audit, false)?;
    app.settled().await;
    let report = gatehouse_audit::verify(app.store.as_ref(), &app.keys, &app.head_path())
        .await
        .map_err(ApiError::Unavailable)?;
    *app.chain.write().await = Some(report.clone());
    Ok(Json(VerifyView {
        line: report.line(),
        ok: report.ok,
        events: report.events,
        first_bad: report.first_bad,
        problem: report.problem,
    }))
}
