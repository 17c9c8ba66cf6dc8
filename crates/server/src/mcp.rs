//! `/mcp`: the Model Context Protocol (Streamable HTTP, through `rmcp`) for agents, with bearer
//! tokens. Each identity sees only the tools it may use: `query_<connection>` per PostgreSQL
//! connection it may connect to, described with the tables it may read, `http_<connection>` per
//! HTTP connection, plus `list_my_reviews` and `request_access`. A query runs through the exec path (the wire path's policy, holds,
//! masking and recording); each tool call is also a request in a gateway session per MCP session.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gatehouse_audit::{Entry, new_session_id, now_ms, session_record};
use gatehouse_core::pipeline::{Pipeline, Request as PipelineRequest};
use gatehouse_core::{AuthzRequest, ConnectionInfo, Identity, Outcome, Resource};
use gatehouse_proto_postgres::ExecStatement;
use gatehouse_store::ReviewFilter;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, InitializeResult,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};

use crate::api::{ApiError, AppState, bearer};
use crate::app::App;
use crate::pipeline::DataPath;

/// How often a held query reports progress to a client that asked for it.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The `/mcp` service: a handler per MCP session, behind bearer authentication.
pub fn service(app: AppState) -> axum::Router<AppState> {
    let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Some(host) =
        reqwest::Url::parse(&app.reviews.settings().public_url).ok().and_then(|u| u.host_str().map(String::from))
    {
        hosts.push(host);
    }
    let config = StreamableHttpServerConfig::default().with_allowed_hosts(hosts);
    let factory_app = app.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(Gateway { app: factory_app.clone(), session: Mutex::new(None) }),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    axum::Router::new().nest_service("/mcp", mcp).layer(axum::middleware::from_fn_with_state(app, authenticate))
}

/// Refuses requests without a valid bearer token before they reach the MCP layer.
async fn authenticate(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let token = match bearer(request.headers()) {
        Ok(t) => t.to_string(),
        Err(e) => return e.into_response(),
    };
    let source = request.extensions().get::<axum::extract::ConnectInfo<crate::api::ClientAddr>>().map(|c| c.0.0.ip());
    match crate::api::sign_in(&app, &token, source).await {
        Ok(_) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// One MCP session's handler.
struct Gateway {
    app: Arc<App>,
    /// The gateway session recording this MCP session's tool calls, opened at the first call.
    session: Mutex<Option<Recorded>>,
}

struct Recorded {
    id: String,
    identity: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let recorded = self.session.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(r) = recorded
            && let Err(e) = self.app.audit.record_detached(vec![Entry::session_end(&r.id, "the MCP session ended")])
        {
            tracing::error!(session = %r.id, error = %e, "the end of an MCP session could not be recorded");
        }
    }
}

/// How a tool call ended, as answered and recorded.
enum Call {
    Done(Value),
    /// Held for review and not approved in time.
    Held(String),
    Refused(String),
}

impl From<Result<Value, String>> for Call {
    fn from(r: Result<Value, String>) -> Call {
        match r {
            Ok(v) => Call::Done(v),
            Err(e) => Call::Refused(e),
        }
    }
}

/// Runs a tool's request; while it is held for review, tells a client that gave a progress
/// token so every [`PROGRESS_EVERY`], naming the review.
async fn with_progress<T>(
    run: impl std::future::Future<Output = T>,
    mut held_rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    context: &RequestContext<RoleServer>,
) -> T {
    tokio::pin!(run);
    let token = context.meta.get_progress_token();
    let mut held: Option<String> = None;
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    let mut progress = 0.0;
    loop {
        tokio::select! {
            result = &mut run => return result,
            Some(review) = held_rx.recv() => held = Some(review),
            _ = tick.tick(), if held.is_some() && token.is_some() => {}
        }
        if let (Some(review), Some(token)) = (&held, &token) {
            progress += 1.0;
            let mut note = ProgressNotificationParam::new(token.clone(), progress);
            note.message = Some(format!("waiting for approval: review {review}"));
            let _ = context.peer.notify_progress(note).await;
        }
    }
}

impl Call {
    /// How a query or request (`what`) through the exec path ended, as a tool answers it.
    fn answer<T: serde::Serialize>(result: Result<T, ApiError>, what: &str) -> Call {
        match result {
            Ok(r) => serde_json::to_value(&r).map_err(|e| e.to_string()).into(),
            Err(ApiError::ReviewPending { review_id, .. }) => Call::Held(format!(
                "this {what} needs approval and was not approved in time (review {review_id}); once a person approves it, call this tool again with exactly the same arguments and it runs once"
            )),
            Err(e) => Call::Refused(e.to_string()),
        }
    }
}

fn tool_error(text: impl Into<String>) -> CallToolResponse {
    CallToolResponse::Complete(CallToolResult::error(vec![ContentBlock::text(text.into())]))
}

/// `query_<connection>`, with every character but letters and digits as `_`.
pub fn tool_name(connection: &str) -> String {
    format!("query_{}", safe_name(connection))
}

/// `http_<connection>`, the tool of an HTTP connection, named likewise.
pub fn http_tool_name(connection: &str) -> String {
    format!("http_{}", safe_name(connection))
}

fn safe_name(connection: &str) -> String {
    connection.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

fn schema(value: Value) -> Arc<serde_json::Map<String, Value>> {
    Arc::new(value.as_object().cloned().unwrap_or_default())
}

impl Gateway {
    /// The caller of this request: its token and identity.
    async fn caller(&self, context: &RequestContext<RoleServer>) -> Result<(String, Identity), ErrorData> {
        let token = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| bearer(&parts.headers).ok().map(str::to_string))
            .ok_or_else(|| ErrorData::invalid_request("missing bearer token", None))?;
        let identity = self
            .app
            .auth
            .authenticate(&token, now_ms())
            .await
            .map_err(|e| ErrorData::invalid_request(format!("authentication failed: {e}"), None))?;
        Ok((token, identity))
    }

    /// The address the agent connected from, for policies that test `context.client_ip`.
    fn client_addr(context: &RequestContext<RoleServer>) -> Option<std::net::SocketAddr> {
        context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.extensions.get::<axum::extract::ConnectInfo<crate::api::ClientAddr>>())
            .map(|c| c.0.0)
    }

    /// The MCP session's id, from the request's `Mcp-Session-Id` header.
    fn mcp_session(context: &RequestContext<RoleServer>) -> Option<String> {
        context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.headers.get("mcp-session-id"))
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }

    /// The recording session of this MCP session, opened on first use. A session belongs to one
    /// identity: a call with another identity's token is refused.
    async fn recording(&self, identity: &Identity, mcp_session: Option<String>) -> Result<String, String> {
        if let Some(r) = self.session.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if r.identity != identity.name {
                return Err("this MCP session belongs to another identity".into());
            }
            return Ok(r.id.clone());
        }
        let id = new_session_id();
        let start = Entry::session_start(
            session_record(&id, &identity.name, identity.kind, None, "mcp", None),
            &json!({"identity": identity.name, "identity_kind": identity.kind, "groups": identity.groups,
                "protocol": "mcp", "mcp_session": mcp_session}),
        );
        self.app.audit.record(vec![start]).await.map_err(|e| format!("the audit trail is unavailable: {e}"))?;
        self.app.metrics.session("mcp");
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Recorded { id: id.clone(), identity: identity.name.clone() });
        Ok(id)
    }

    /// Whether policy lets `identity` connect to `connection` now (access grants included).
    fn may_connect(&self, identity: &Identity, connection: &ConnectionInfo) -> bool {
        let (granted, _) = self.app.reviews.effective(identity, now_ms());
        let request = AuthzRequest {
            principal: granted.unwrap_or_else(|| identity.clone()),
            action: "connect".into(),
            resources: vec![Resource::Connection { connection: connection.name.clone() }],
            context: serde_json::Map::from_iter([("protocol".to_string(), json!("mcp"))]),
        };
        self.app.policy.decide(&request, std::slice::from_ref(connection)).is_ok_and(|d| d.outcome == Outcome::Allow)
    }

    /// The tables of `connection` the caller may read, as policy says now.
    async fn readable_tables(
        &self,
        token: &str,
        connection: &str,
        client_addr: Option<std::net::SocketAddr>,
    ) -> Result<Vec<String>, String> {
        let path = DataPath::new(self.app.clone());
        let open = crate::exec::open_request(token, client_addr, connection, "mcp");
        let session = path.open(open).await.map_err(|e| e.to_string())?;
        let config = self.app.exec.as_ref().map(|e| e.config.clone());
        let tables = match config {
            Some(config) => gatehouse_proto_postgres::tables(&session, &config).await,
            None => Err("the exec path is not configured".into()),
        };
        let mut readable = Vec::new();
        for (schema, table) in tables.as_deref().unwrap_or_default() {
            let request = PipelineRequest {
                text: String::new(),
                fingerprint: None,
                accesses: vec![(
                    "sql.select".into(),
                    Resource::Table { connection: connection.into(), schema: schema.clone(), table: table.clone() },
                )],
                note: None,
                context: serde_json::Map::new(),
                params: vec![],
                digest: String::new(),
            };
            if path.check(&session, &request).await.outcome == Outcome::Allow {
                readable.push(format!("{schema}.{table}"));
            }
        }
        path.close(&session, "listed the tables for an agent's tool description").await;
        tables.map(|_| readable)
    }

    async fn query(
        &self,
        token: &str,
        connection: &str,
        arguments: &serde_json::Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> Call {
        let Some(sql) = arguments.get("sql").and_then(Value::as_str) else {
            return Call::Refused("the argument sql (a string) is required".into());
        };
        let params = match arguments.get("params") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(values)) => values
                .iter()
                .map(|v| match v {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                })
                .collect(),
            Some(_) => return Call::Refused("the argument params must be an array".into()),
        };
        let statement = ExecStatement { sql: sql.to_string(), params, max_rows: crate::exec::DEFAULT_MAX_ROWS };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let client = Self::client_addr(context);
        let run = crate::exec::run(&self.app, token, client, connection, "mcp", statement, Some(tx));
        Call::answer(with_progress(run, rx, context).await, "query")
    }

    /// One HTTP request on an HTTP connection, through the exec path.
    async fn http_call(
        &self,
        token: &str,
        connection: &str,
        arguments: &serde_json::Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> Call {
        let call: crate::exec::HttpCall = match serde_json::from_value(Value::Object(arguments.clone())) {
            Ok(c) => c,
            Err(e) => {
                return Call::Refused(format!("the arguments are not method, path, query, headers and body: {e}"));
            }
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let run =
            crate::exec::run_http(&self.app, token, Self::client_addr(context), connection, "mcp", call, Some(tx));
        Call::answer(with_progress(run, rx, context).await, "request")
    }

    /// Records one tool call in the MCP session.
    async fn record_call(&self, session: &str, tool: &str, arguments: Value, outcome: &Call, started: Instant) {
        let (decision, result, error) = match outcome {
            Call::Done(v) => ("allow", Some(v), None),
            Call::Held(e) => ("review", None, Some(e)),
            Call::Refused(e) => ("deny", None, Some(e)),
        };
        let entry = Entry::request(
            session,
            &json!({"action": format!("mcp.{tool}"), "tool": tool, "arguments": arguments, "decision": decision,
                "rows": result.and_then(|v| v["row_count"].as_u64()),
                "status": result.and_then(|v| v["status"].as_u64()), "error": error,
                "exec_session": result.map(|v| v["session_id"].clone()),
                "duration_ms": started.elapsed().as_secs_f64() * 1000.0}),
            decision != "allow",
        );
        if let Err(e) = self.app.audit.record_one(entry).await {
            tracing::error!(session = %session, error = %e, "an MCP tool call could not be recorded");
        }
    }

    /// The arguments as recorded: values in the statement and parameters masked with the
    /// connection's detectors (the statement itself is recorded masked in its own session too).
    async fn masked_arguments(&self, connection: Option<&str>, arguments: &serde_json::Map<String, Value>) -> Value {
        let detectors = match connection {
            Some(c) => self.app.store.get_connection(c).await.ok().flatten().map(|c| c.mask).unwrap_or_default(),
            None => vec![],
        };
        let Ok(masker) = gatehouse_mask::masker_from_settings(&detectors) else { return json!("(not recorded)") };
        fn mask(masker: &gatehouse_mask::Masker, v: &Value) -> Value {
            match v {
                Value::String(s) => Value::String(masker.mask(s).text().to_string()),
                Value::Array(a) => Value::Array(a.iter().map(|x| mask(masker, x)).collect()),
                Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), mask(masker, x))).collect()),
                other => other.clone(),
            }
        }
        mask(&masker, &Value::Object(arguments.clone()))
    }
}

impl ServerHandler for Gateway {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("gatehouse", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Gatehouse: each tool runs one request through the gateway's policy. Denied calls return an error naming the policy; a call that needs a person's approval is held, then reported with its review id: retry the same call once approved. Values the caller may not see are masked.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let (token, identity) = self.caller(&context).await?;
        let connections =
            self.app.store.list_connections().await.map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let mut tools = Vec::new();
        for conn in connections.iter().filter(|c| c.kind == "postgres" || c.kind == "http") {
            let info = ConnectionInfo { name: conn.name.clone(), kind: conn.kind.clone(), tags: conn.tags.clone() };
            if !self.may_connect(&identity, &info) {
                continue;
            }
            let about = if conn.description.is_empty() { String::new() } else { format!(" ({})", conn.description) };
            let tool = if conn.kind == "http" {
                Tool::new(
                    http_tool_name(&conn.name),
                    format!(
                        "Call the HTTP API {}{about} through the gateway, which adds its credentials. Requests policy does not allow are refused, some need a person's approval; values you may not see are masked in the answer.",
                        conn.name
                    ),
                    schema(json!({
                        "type": "object",
                        "properties": {
                            "method": {"type": "string", "description": "GET (default), POST, PUT, PATCH or DELETE."},
                            "path": {"type": "string", "description": "The path below the API's base, e.g. /v1/invoices/42."},
                            "query": {"type": "object", "description": "Query parameters.", "additionalProperties": {"type": "string"}},
                            "headers": {"type": "object", "description": "Request headers.", "additionalProperties": {"type": "string"}},
                            "body": {"description": "The request body: a string, or JSON."},
                        },
                        "required": ["path"],
                    })),
                )
            } else {
                let tables = match self.readable_tables(&token, &conn.name, Self::client_addr(&context)).await {
                    Ok(t) if t.is_empty() => {
                        "No table is readable for you; ask for access if you need one.".to_string()
                    }
                    Ok(t) => format!("Tables you may read: {}.", t.join(", ")),
                    Err(e) => format!("(The table list is unavailable: {e}.)"),
                };
                Tool::new(
                    tool_name(&conn.name),
                    format!(
                        "Run one SQL statement on the PostgreSQL connection {}{about}. {tables} Writes and other tables may be refused or need a person's approval; values you may not see are masked.",
                        conn.name
                    ),
                    schema(json!({
                        "type": "object",
                        "properties": {
                            "sql": {"type": "string", "description": "One SQL statement; $1, $2, … take params."},
                            "params": {"type": "array", "description": "Values for $1, $2, …", "items": {}},
                        },
                        "required": ["sql"],
                    })),
                )
            };
            tools.push(tool);
        }
        tools.push(Tool::new(
            "list_my_reviews",
            "Your requests waiting for or decided by a person's approval: held queries and access requests, with their status.",
            schema(json!({"type": "object", "properties": {}})),
        ));
        tools.push(Tool::new(
            "request_access",
            "Ask a person for time-bound membership of a group (for rights you lack). Returns the review to wait for.",
            schema(json!({
                "type": "object",
                "properties": {
                    "group": {"type": "string"},
                    "duration": {"type": "string", "description": "How long, e.g. 1h or 30m."},
                    "reason": {"type": "string", "description": "Why you need it; shown to the approvers."},
                },
                "required": ["group", "duration", "reason"],
            })),
        ));
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (token, identity) = self.caller(&context).await?;
        let session = match self.recording(&identity, Self::mcp_session(&context)).await {
            Ok(s) => s,
            Err(e) => return Ok(tool_error(e)),
        };
        let started = Instant::now();
        let arguments = request.arguments.clone().unwrap_or_default();
        let tool = request.name.to_string();
        let connection = if tool.starts_with("query_") || tool.starts_with("http_") {
            self.app
                .store
                .list_connections()
                .await
                .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
                .into_iter()
                .find(|c| {
                    (c.kind == "postgres" && tool_name(&c.name) == tool)
                        || (c.kind == "http" && http_tool_name(&c.name) == tool)
                })
                .map(|c| (c.name, c.kind))
        } else {
            None
        };
        let outcome: Call = match (tool.as_str(), &connection) {
            (_, Some((conn, kind))) if kind == "http" => self.http_call(&token, conn, &arguments, &context).await,
            (_, Some((conn, _))) => self.query(&token, conn, &arguments, &context).await,
            ("list_my_reviews", _) => Call::from({
                let filter = ReviewFilter { status: None, requester: Some(identity.name.clone()), limit: 100 };
                match self.app.store.list_reviews(filter).await {
                    Ok(reviews) => Ok(json!({"reviews": reviews
                        .iter()
                        .filter(|r| r.requester_kind == identity.kind)
                        .map(crate::reviews::view)
                        .collect::<Vec<_>>()})),
                    Err(e) => Err(e.to_string()),
                }
            }),
            ("request_access", _) => Call::from({
                let arg = |k: &str| arguments.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                match humantime::parse_duration(&arg("duration")) {
                    Err(e) => Err(format!("duration {:?} is not like 1h or 30m: {e}", arg("duration"))),
                    Ok(d) => crate::reviews::request_access(&self.app, &identity, &arg("group"), d, &arg("reason"))
                        .await
                        .map(|r| {
                            json!({"review": crate::reviews::view(&r),
                            "next": "a person must approve this review; the group applies from then on"})
                        })
                        .map_err(|e| e.to_string()),
                }
            }),
            _ => Call::Refused(format!("unknown tool {tool:?}")),
        };
        let recorded = self.masked_arguments(connection.as_ref().map(|(c, _)| c.as_str()), &arguments).await;
        self.record_call(&session, &tool, recorded, &outcome, started).await;
        Ok(match outcome {
            Call::Done(v) => CallToolResponse::Complete(CallToolResult::structured(v)),
            Call::Held(e) | Call::Refused(e) => tool_error(e),
        })
    }
}
