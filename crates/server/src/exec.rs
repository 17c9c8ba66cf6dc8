//! One-off statements for callers without a wire client (the exec API, agents' tools): the
//! statement runs through the PostgreSQL adapter's own session relay over the same pipeline, so
//! identity, policy, holds for review, masking and recording are the wire path's. This module
//! only watches what the pipeline decided, to answer in HTTP terms.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use gatehouse_core::pipeline::{
    Hold, OpenError, OpenRequest, OpenedSession, Pipeline, Request, RequestResult, Unapproved as HoldEnded, Verdict,
};
use gatehouse_core::{Decision, Outcome, Resource};
use gatehouse_proto_postgres::{ExecError, ExecStatement, ListenerConfig, SqlStatements};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::ApiError;
use crate::app::App;
use crate::pipeline::DataPath;

/// What one-off HTTP requests share with the HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpExec {
    pub config: Arc<gatehouse_proto_http::ListenerConfig>,
    pub upstreams: Arc<gatehouse_proto_http::Upstreams>,
}

/// The most bytes of an HTTP answer returned by the exec API or a tool.
pub const MAX_HTTP_BODY: usize = 1024 * 1024;

/// An HTTP request for the exec API or a tool.
#[derive(Debug, Clone, Default, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCall {
    /// `GET` (the default), `POST`, `PUT`, `PATCH`, `DELETE`, `HEAD` or `OPTIONS`.
    pub method: Option<String>,
    /// The path below the connection, e.g. `/v1/invoices/42`.
    pub path: String,
    /// Query parameters (each value a string), or a query string.
    #[schema(value_type = Object)]
    pub query: Option<serde_json::Value>,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body: a string is sent as it is, anything else as JSON.
    #[schema(value_type = Object)]
    pub body: Option<serde_json::Value>,
}

/// What an HTTP request returned.
#[derive(Debug, Serialize, ToSchema)]
pub struct HttpResult {
    /// The session the request was recorded in.
    pub session_id: String,
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    /// The answer, masked as the connection says: parsed when it is JSON, else text (or
    /// base64 for bytes that are not UTF-8, with `body_base64` true).
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
    pub body_base64: bool,
    /// The answer was longer than 1 MiB; the rest was not read.
    pub truncated: bool,
}

/// Runs one HTTP request on connection `connection` as the caller behind `token`.
pub async fn run_http(
    app: &Arc<App>,
    token: &str,
    client_addr: Option<SocketAddr>,
    connection: &str,
    via: &'static str,
    call: HttpCall,
    on_hold: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> Result<HttpResult, ApiError> {
    use base64::Engine as _;
    let method = call.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| ApiError::invalid(format!("method {method:?} is not an HTTP method")))?;
    let query = match call.query {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(q)) => Some(q),
        Some(serde_json::Value::Object(map)) => {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &map {
                match v {
                    serde_json::Value::String(s) => q.append_pair(k, s),
                    other => q.append_pair(k, &other.to_string()),
                };
            }
            Some(q.finish())
        }
        Some(_) => return Err(ApiError::invalid("query must be an object of strings or a query string")),
    };
    let mut headers = http::HeaderMap::new();
    for (k, v) in &call.headers {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ApiError::invalid(format!("header name {k:?} is not valid")))?;
        let value = http::HeaderValue::from_str(v)
            .map_err(|_| ApiError::invalid(format!("the value of header {k:?} is not valid")))?;
        headers.append(name, value);
    }
    let body = match call.body {
        None | Some(serde_json::Value::Null) => bytes::Bytes::new(),
        Some(serde_json::Value::String(s)) => bytes::Bytes::from(s),
        Some(other) => {
            if !headers.contains_key(http::header::CONTENT_TYPE) {
                headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            }
            bytes::Bytes::from(other.to_string())
        }
    };
    let request = gatehouse_proto_http::OneOff { method, path: call.path, query, headers, body };
    let pipeline = Arc::new(Watched { inner: DataPath::new(app.clone()), seen: Mutex::default(), on_hold });
    let answer = gatehouse_proto_http::exec(
        pipeline,
        app.http.config.clone(),
        app.http.upstreams.clone(),
        token,
        client_addr,
        connection,
        via,
        request,
        MAX_HTTP_BODY,
    )
    .await
    .map_err(api_error)?;
    let is_json = answer
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            essence == "application/json" || essence.ends_with("+json")
        })
        .unwrap_or(false);
    let (body, body_base64) = match std::str::from_utf8(&answer.body) {
        Ok(text) if is_json && !answer.truncated => match serde_json::from_str(text) {
            Ok(v) => (v, false),
            Err(_) => (serde_json::Value::String(text.to_string()), false),
        },
        Ok(text) => (serde_json::Value::String(text.to_string()), false),
        Err(_) => (serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&answer.body)), true),
    };
    let headers = answer
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    Ok(HttpResult {
        session_id: answer.session_id,
        status: answer.status,
        headers,
        body,
        body_base64,
        truncated: answer.truncated,
    })
}

/// The HTTP adapter's refusal as the API answers it.
fn api_error(r: gatehouse_proto_http::Refusal) -> ApiError {
    match (r.status.as_u16(), r.code) {
        (401, _) => ApiError::Unauthenticated(r.message),
        (403, "review_pending") => {
            ApiError::ReviewPending { message: r.message, review_id: r.review_id.unwrap_or_default() }
        }
        (403, _) => ApiError::Forbidden { message: r.message, policies: r.policies },
        (404, _) => ApiError::NotFound(r.message),
        (405, _) => ApiError::MethodNotAllowed(r.message),
        (429, _) => ApiError::Limited { message: r.message, retry_after: r.retry_after },
        (502 | 504, _) => ApiError::Upstream(r.message),
        (503, _) => ApiError::Unavailable(r.message),
        _ => ApiError::invalid(r.message),
    }
}

/// What the exec path shares with the PostgreSQL listener.
#[derive(Debug, Clone)]
pub struct ExecSettings {
    pub config: Arc<ListenerConfig>,
    pub statements: Arc<SqlStatements>,
}

/// The most rows an answer may hold.
pub const MAX_ROWS_LIMIT: usize = 10_000;
/// Rows returned unless the caller asks for another cap.
pub const DEFAULT_MAX_ROWS: usize = 1_000;

/// What the pipeline did with the statement, seen from the side.
#[derive(Debug, Default)]
struct Seen {
    /// The decisions that refused something, newest last.
    refusals: Vec<Decision>,
    /// A hold that ended without approval: the review, why, and whether it is still pending.
    unapproved: Option<Unapproved>,
    /// How each forwarded request ended.
    results: Vec<RequestResult>,
    session_id: Option<String>,
}

/// A held request that was not approved in time, denied, or expired.
#[derive(Debug)]
struct Unapproved {
    review_id: String,
    why: String,
    /// The review is still waiting for a decision: the same request may be sent again once
    /// it is approved.
    pending: bool,
}

/// The data path with a window on its decisions.
struct Watched {
    inner: DataPath,
    seen: Mutex<Seen>,
    /// Told the review id when a request starts to be held.
    on_hold: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl Watched {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Pipeline for Watched {
    async fn open(&self, req: OpenRequest) -> Result<OpenedSession, OpenError> {
        let session = self.inner.open(req).await?;
        self.seen().session_id = Some(session.id.clone());
        Ok(session)
    }

    async fn authorize(&self, session: &OpenedSession, req: &Request) -> Result<Verdict, String> {
        let verdict = self.inner.authorize(session, req).await?;
        if verdict.decision.outcome == Outcome::Deny {
            self.seen().refusals.push(verdict.decision.clone());
        }
        Ok(verdict)
    }

    async fn hold(&self, session: &OpenedSession, hold: &Hold, req: &Request) -> Result<Verdict, HoldEnded> {
        if let Some(tx) = &self.on_hold {
            let _ = tx.send(hold.review_id.clone());
        }
        let result = self.inner.hold(session, hold, req).await;
        if let Err(ended) = &result {
            self.seen().unapproved = Some(Unapproved {
                review_id: hold.review_id.clone(),
                why: ended.message.clone(),
                pending: ended.pending,
            });
        }
        result
    }

    async fn check(&self, session: &OpenedSession, req: &Request) -> Decision {
        let decision = self.inner.check(session, req).await;
        if decision.outcome == Outcome::Deny {
            self.seen().refusals.push(decision.clone());
        }
        decision
    }

    async fn may_unmask(&self, session: &OpenedSession, resource: &Resource) -> bool {
        self.inner.may_unmask(session, resource).await
    }

    fn finish(&self, session: &OpenedSession, seq: i64, result: RequestResult) {
        self.seen().results.push(result.clone());
        self.inner.finish(session, seq, result);
    }

    async fn close(&self, session: &OpenedSession, reason: &str) {
        self.inner.close(session, reason).await;
    }

    fn over_limit(&self, protocol: &'static str, limit: gatehouse_core::pipeline::Limit) {
        self.inner.over_limit(protocol, limit);
    }

    async fn ended(&self, session: &OpenedSession) -> String {
        self.inner.ended(session).await
    }
}

/// One result column.
#[derive(Debug, Serialize, ToSchema)]
pub struct ColumnView {
    pub name: String,
    /// The PostgreSQL type (`int4`, `text`, …; `oid:N` for others).
    #[serde(rename = "type")]
    pub type_name: String,
}

/// What a statement returned.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecResult {
    /// The session the statement was recorded in.
    pub session_id: String,
    pub columns: Vec<ColumnView>,
    /// Values as text (`null` for SQL NULL), masked as the connection says.
    #[schema(value_type = Vec<Vec<Option<String>>>)]
    pub rows: Vec<Vec<Option<String>>>,
    /// Rows returned, or affected (`INSERT`, `UPDATE`, `DELETE`).
    pub row_count: u64,
    /// The completion tag: `SELECT 2`, `DELETE 1`, … (absent when truncated).
    pub command: Option<String>,
    /// More rows existed than `max_rows`; they were not fetched.
    pub truncated: bool,
    /// Values masked, by column and detector.
    #[schema(value_type = Object)]
    pub masked: BTreeMap<String, BTreeMap<String, u64>>,
    /// Notices the statement produced (a hold for review announces itself with one).
    pub notices: Vec<String>,
}

/// A session on PostgreSQL connection `connection` for an API caller (exec, MCP).
pub fn open_request(token: &str, client_addr: Option<SocketAddr>, connection: &str, via: &'static str) -> OpenRequest {
    OpenRequest {
        protocol: "postgres",
        connection: connection.to_string(),
        client_addr,
        claimed_user: None,
        secret: token.to_string(),
        // The caller's bearer token came over the API listener, which is TLS or loopback.
        tls: true,
        masks_values: true,
        masks_columns: true,
        via,
    }
}

/// Runs one statement on PostgreSQL connection `connection` as the caller behind `token`.
/// `on_hold` is told the review id if the statement is held for review.
pub async fn run(
    app: &Arc<App>,
    token: &str,
    client_addr: Option<SocketAddr>,
    connection: &str,
    via: &'static str,
    statement: ExecStatement,
    on_hold: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> Result<ExecResult, ApiError> {
    let Some(settings) = app.exec.clone() else {
        return Err(ApiError::Unavailable("the exec path is not configured".into()));
    };
    if statement.max_rows == 0 || statement.max_rows > MAX_ROWS_LIMIT {
        return Err(ApiError::invalid(format!("max_rows must be between 1 and {MAX_ROWS_LIMIT}")));
    }
    let watched = Arc::new(Watched { inner: DataPath::new(app.clone()), seen: Mutex::default(), on_hold });
    let open = open_request(token, client_addr, connection, via);
    let output =
        gatehouse_proto_postgres::exec(watched.clone(), settings.statements, settings.config, open, statement).await;
    let output = match output {
        Ok(o) => o,
        Err(ExecError::Open(e)) => {
            return Err(match e {
                OpenError::Unauthenticated(m) => ApiError::Unauthenticated(m),
                OpenError::UnknownConnection(m) => ApiError::NotFound(m),
                OpenError::Forbidden { message, policies } => ApiError::Forbidden { message, policies },
                OpenError::Unavailable(m) => ApiError::Unavailable(m),
                OpenError::Limited { message, .. } => ApiError::Limited { message, retry_after: None },
            });
        }
        Err(ExecError::Session(m)) => return Err(ApiError::Upstream(m)),
    };
    let seen = std::mem::take(&mut *watched.seen());
    if let Some(error) = output.error {
        let message = format!("{}: {}", error.code, error.message);
        return Err(match error.code.as_str() {
            "42501" => match seen.unapproved {
                Some(Unapproved { review_id, why, pending: true }) => {
                    ApiError::ReviewPending { message: why, review_id }
                }
                Some(Unapproved { why, .. }) => ApiError::Forbidden { message: why, policies: vec![] },
                None => ApiError::Forbidden {
                    message: error.message,
                    policies: seen.refusals.last().map(|d| d.policies.clone()).unwrap_or_default(),
                },
            },
            "58000" => ApiError::Unavailable(error.message),
            // Over the caller's request rate: try again in a second.
            "53400" => ApiError::Limited { message: error.message, retry_after: Some(1) },
            _ => ApiError::Statement { message, sqlstate: error.code },
        });
    }
    let mut masked: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for result in &seen.results {
        for (column, by_detector) in &result.masked {
            let entry = masked.entry(column.clone()).or_default();
            for (detector, n) in by_detector {
                *entry.entry(detector.clone()).or_default() += n;
            }
        }
    }
    let affected = output.command.as_deref().and_then(|c| c.rsplit(' ').next()).and_then(|n| n.parse::<u64>().ok());
    let row_count = if output.columns.is_empty() {
        affected.unwrap_or(0)
    } else {
        u64::try_from(output.rows.len()).unwrap_or(u64::MAX)
    };
    Ok(ExecResult {
        session_id: seen.session_id.unwrap_or_default(),
        columns: output.columns.into_iter().map(|c| ColumnView { name: c.name, type_name: c.type_name }).collect(),
        rows: output.rows,
        row_count,
        command: output.command,
        truncated: output.truncated,
        masked,
        notices: output.notices,
    })
}
