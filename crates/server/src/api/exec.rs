//! `POST /api/v1/connections/{name}/exec`: one statement through the data path, for callers
//! without a wire client.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use gatehouse_proto_postgres::ExecStatement;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, Body, Caller, ErrorBody, bearer};
use crate::exec::{DEFAULT_MAX_ROWS, ExecResult};

/// A statement for a PostgreSQL connection (`sql`, `params`, `max_rows`), or a request for an
/// HTTP connection (`method`, `path`, `query`, `headers`, `body`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecInput {
    /// One SQL statement; `$1`, `$2`, … take `params`.
    pub sql: Option<String>,
    /// Values for the placeholders: strings, numbers, booleans or null (objects and arrays are
    /// sent as JSON text).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub params: Vec<serde_json::Value>,
    /// Rows returned at most (default 1000, at most 10000); `truncated` says when there were more.
    pub max_rows: Option<usize>,
    /// HTTP: `GET` (the default), `POST`, `PUT`, `PATCH`, `DELETE`, `HEAD` or `OPTIONS`.
    pub method: Option<String>,
    /// HTTP: the path below the connection, e.g. `/v1/invoices/42`.
    pub path: Option<String>,
    /// HTTP: query parameters (each value a string), or a query string.
    #[schema(value_type = Object)]
    pub query: Option<serde_json::Value>,
    /// HTTP: request headers.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// HTTP: the body; a string is sent as it is, anything else as JSON.
    #[schema(value_type = Object)]
    pub body: Option<serde_json::Value>,
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
    params(("name" = String, Path, description = "a PostgreSQL or HTTP connection")),
    responses((status = 200, description = "ExecResult for a PostgreSQL connection, HttpResult for an HTTP one", body = ExecResult),
        (status = 401, body = ErrorBody),
        (status = 403, description = "forbidden (with the deciding policies), or review_pending (with review_id: retry the same request once approved)", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "invalid input, or the resource refused the statement (with its sqlstate)", body = ErrorBody),
        (status = 429, description = "over a limit (with Retry-After)", body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn exec(
    State(app): State<AppState>,
    Caller(_caller): Caller,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Path(name): Path<String>,
    Body(input): Body<ExecInput>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let token = bearer(&headers)?.to_string();
    // The caller's address, for policies that test `context.client_ip`.
    let client = extensions.get::<axum::extract::ConnectInfo<super::ClientAddr>>().map(|c| c.0.0);
    let kind = app.store.get_connection(&name).await?.map(|c| c.kind);
    if kind.as_deref() == Some("http") {
        if input.sql.is_some() || !input.params.is_empty() || input.max_rows.is_some() {
            return Err(ApiError::invalid(format!(
                "{name:?} is an HTTP connection: send method, path, query, headers and body, not sql"
            )));
        }
        let call = crate::exec::HttpCall {
            method: input.method,
            path: input.path.ok_or_else(|| ApiError::invalid("path is required for an HTTP connection"))?,
            query: input.query,
            headers: input.headers,
            body: input.body,
        };
        let result = crate::exec::run_http(&app, &token, client, &name, "exec", call, None).await?;
        return serde_json::to_value(result).map(Json).map_err(|e| ApiError::Internal(e.to_string()));
    }
    if input.method.is_some()
        || input.path.is_some()
        || input.query.is_some()
        || !input.headers.is_empty()
        || input.body.is_some()
    {
        return Err(ApiError::invalid(format!("{name:?} is not an HTTP connection: send sql (and params)")));
    }
    let sql = input.sql.unwrap_or_default();
    if sql.trim().is_empty() {
        return Err(ApiError::invalid("sql must not be empty"));
    }
    let statement = ExecStatement {
        sql,
        params: input.params.iter().map(param_text).collect(),
        max_rows: input.max_rows.unwrap_or(DEFAULT_MAX_ROWS),
    };
    let result = crate::exec::run(&app, &token, client, &name, "exec", statement, None).await?;
    serde_json::to_value(result).map(Json).map_err(|e| ApiError::Internal(e.to_string()))
}
