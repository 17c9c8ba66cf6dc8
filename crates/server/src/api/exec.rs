//! `POST /api/v1/connections/{name}/exec`: one statement through the data path, for callers
//! without a wire client.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use gatehouse_proto_postgres::ExecStatement;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, Body, ErrorBody, bearer};
use crate::exec::{DEFAULT_MAX_ROWS, ExecResult};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecInput {
    /// One SQL statement; `$1`, `$2`, … take `params`.
    pub sql: String,
    /// Values for the placeholders: strings, numbers, booleans or null (objects and arrays are
    /// sent as JSON text).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub params: Vec<serde_json::Value>,
    /// Rows returned at most (default 1000, at most 10000); `truncated` says when there were more.
    pub max_rows: Option<usize>,
}

/// A JSON value as the text PostgreSQL reads for a parameter.
fn param_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

#[utoipa::path(post, path = "/api/v1/connections/{name}/exec", tag = "exec", request_body = ExecInput,
    params(("name" = String, Path, description = "a PostgreSQL connection")),
    responses((status = 200, body = ExecResult),
        (status = 401, body = ErrorBody),
        (status = 403, description = "forbidden (with the deciding policies), or review_pending (with review_id: retry the same request once approved)", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "invalid input, or the resource refused the statement (with its sqlstate)", body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn exec(
    State(app): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Path(name): Path<String>,
    Body(input): Body<ExecInput>,
) -> Result<Json<ExecResult>, ApiError> {
    let token = bearer(&headers)?.to_string();
    if input.sql.trim().is_empty() {
        return Err(ApiError::invalid("sql must not be empty"));
    }
    let statement = ExecStatement {
        sql: input.sql,
        params: input.params.iter().map(param_text).collect(),
        max_rows: input.max_rows.unwrap_or(DEFAULT_MAX_ROWS),
    };
    // The caller's address, for policies that test `context.client_ip`.
    let client = extensions.get::<axum::extract::ConnectInfo<super::ClientAddr>>().map(|c| c.0.0);
    Ok(Json(crate::exec::run(&app, &token, client, &name, "exec", statement, None).await?))
}
