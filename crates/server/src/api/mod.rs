//! The REST API: `/api/v1/…` with bearer tokens and JSON, its OpenAPI document, and the
//! unauthenticated `/healthz` and `/readyz`.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gatehouse_audit::AuditError;
use gatehouse_auth::AuthError;
use gatehouse_core::Identity;
use gatehouse_store::StoreError;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::{App, SignInError};

pub(crate) mod audit;
pub(crate) mod connections;
pub(crate) mod exec;
pub(crate) mod identities;
pub(crate) mod policies;
pub(crate) mod reviews;
pub(crate) mod sessions;

pub use connections::{ConnectionInput, CredentialInput, SecretInput};
pub use identities::NewIdentity;
pub use policies::CheckInput;

pub type AppState = Arc<App>;

/// Errors as every API response carries them: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{message}")]
    Forbidden { message: String, policies: Vec<String> },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{message}")]
    Invalid { message: String, problems: Vec<String> },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// The request waits for a review: retry the same request once it is approved.
    #[error("{message}")]
    ReviewPending { message: String, review_id: String },
    /// The resource could not be reached or ended the session.
    #[error("{0}")]
    Upstream(String),
    /// The resource refused the statement (syntax, a missing table, a constraint, …).
    #[error("{message}")]
    Statement { message: String, sqlstate: String },
    /// Over one of the gateway's limits (request rate, sessions, failed sign-ins): 429, with
    /// `Retry-After` in seconds when it is known.
    #[error("{message}")]
    Limited { message: String, retry_after: Option<u64> },
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::Invalid { message: message.into(), problems: vec![] }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `unauthenticated`, `forbidden`, `review_pending`, `not_found`, `conflict`, `invalid`,
    /// `rate_limited`, `upstream_unavailable`, `unavailable`, `internal`.
    pub code: String,
    pub message: String,
    /// For `forbidden`: the `@id`s of the deciding policies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<String>>,
    /// For `invalid`: every problem found, e.g. each policy error with its position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
    /// For `review_pending`: the review to approve before retrying the same request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_id: Option<String>,
    /// For a statement the resource refused: its SQLSTATE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (mut review_id, mut sqlstate, mut retry_after) = (None, None, None);
        let (status, code, policies, problems) = match self {
            ApiError::ReviewPending { review_id: id, .. } => {
                review_id = Some(id);
                (StatusCode::FORBIDDEN, "review_pending", None, None)
            }
            ApiError::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_unavailable", None, None),
            ApiError::Limited { retry_after: after, .. } => {
                retry_after = after;
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited", None, None)
            }
            ApiError::Statement { sqlstate: state, .. } => {
                sqlstate = Some(state);
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid", None, None)
            }
            ApiError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated", None, None),
            ApiError::Forbidden { policies, .. } => (StatusCode::FORBIDDEN, "forbidden", Some(policies), None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None, None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", None, None),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None, None),
            ApiError::Invalid { problems, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid", None, (!problems.is_empty()).then_some(problems))
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None, None),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None, None),
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: ErrorDetail { code: code.into(), message, policies, problems, review_id, sqlstate },
            }),
        )
            .into_response();
        if let Some(seconds) = retry_after
            && let Ok(value) = axum::http::HeaderValue::from_str(&seconds.max(1).to_string())
        {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            StoreError::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            StoreError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            StoreError::Corrupt(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        ApiError::Unavailable(format!("{e}; the change was not made"))
    }
}

/// A JSON request body whose rejection (bad JSON, unknown field, wrong content type) is an
/// [`ApiError`] in the documented shape, not a plain-text response.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) => Err(ApiError::invalid(rejection.body_text())),
        }
    }
}

/// Query-string parameters, rejected as [`ApiError`] like [`Body`].
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<S, T> FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Params(v)),
            Err(rejection) => Err(ApiError::invalid(rejection.body_text())),
        }
    }
}

/// The authenticated caller of an API request.
#[derive(Debug, Clone)]
pub struct Caller(pub Identity);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)?;
        let source = parts.extensions.get::<axum::extract::ConnectInfo<ClientAddr>>().map(|c| c.0.0.ip());
        sign_in(app, token, source).await.map(Caller)
    }
}

/// Checks an API caller's bearer token under the sign-in limits of its address.
pub async fn sign_in(app: &App, token: &str, source: Option<std::net::IpAddr>) -> Result<Identity, ApiError> {
    let method = if gatehouse_auth::oidc::looks_like_jwt(token) { "oidc" } else { "token" };
    let result = app.sign_in(token, source, None).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(SignInError::Limited(_)) => "locked",
        Err(SignInError::Auth(AuthError::Expired)) => "expired",
        Err(SignInError::Auth(AuthError::Unavailable(_))) => "unavailable",
        Err(_) => "refused",
    };
    app.metrics.authentication(method, outcome);
    match result {
        Ok(identity) => Ok(identity),
        Err(SignInError::Limited(r)) => {
            Err(ApiError::Limited { message: r.message, retry_after: r.retry_after.map(|d| d.as_secs() + 1) })
        }
        Err(SignInError::Auth(AuthError::Unavailable(e))) => Err(ApiError::Unavailable(e)),
        Err(SignInError::Auth(e)) => Err(ApiError::Unauthenticated(e.to_string())),
    }
}

/// The address an API caller connected from, for policies that test `context.client_ip`.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::tls::TlsListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// The bearer token of a request.
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthenticated("missing bearer token (Authorization: Bearer TOKEN)".into()))?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthenticated("the Authorization header must be 'Bearer TOKEN'".into()))
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Gatehouse", description = "Management API of the Gatehouse access gateway."),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody, ErrorDetail, crate::exec::HttpResult, crate::exec::HttpCall)),
    security(("bearer" = []))
)]
struct ApiDoc;

/// The whole HTTP surface of the API listener.
pub fn router(app: AppState) -> Router {
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(identities::list, identities::create))
        .routes(routes!(identities::show, identities::delete))
        .routes(routes!(identities::rotate))
        .routes(routes!(identities::whoami))
        .routes(routes!(connections::list, connections::create))
        .routes(routes!(connections::show, connections::update, connections::delete))
        .routes(routes!(connections::test))
        .routes(routes!(connections::add_credential))
        .routes(routes!(connections::remove_credential))
        .routes(routes!(policies::show, policies::set))
        .routes(routes!(policies::schema))
        .routes(routes!(policies::check))
        .routes(routes!(sessions::list))
        .routes(routes!(sessions::show))
        .routes(routes!(sessions::kill))
        .routes(routes!(audit::verify))
        .routes(routes!(exec::exec))
        .routes(routes!(reviews::list))
        .routes(routes!(reviews::show))
        .routes(routes!(reviews::approve))
        .routes(routes!(reviews::deny))
        .routes(routes!(reviews::request_access))
        .split_for_parts();
    let openapi = Arc::new(openapi);
    router
        .route("/api/v1/openapi.json", get(move || async move { Json(openapi.as_ref().clone()) }))
        .merge(crate::mcp::service(app.clone()))
        .merge(crate::console::router(&app))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this endpoint".into())
        })
        .with_state(app)
}

/// Prometheus metrics (OpenMetrics text), unless `[metrics] enabled = false`.
async fn metrics(State(app): State<AppState>) -> Response {
    if !app.metrics_enabled {
        return ApiError::NotFound("metrics are disabled ([metrics] enabled = false)".into()).into_response();
    }
    match app.metrics.render(app.audit.stats()) {
        Ok(text) => {
            ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
                .into_response()
        }
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Ready when the store answers. The audit chain's state is reported, but a broken chain does
/// not make the gateway unready: it keeps serving and recording.
async fn readyz(State(app): State<AppState>) -> Response {
    let chain = match app.chain.read().await.as_ref() {
        Some(report) => report.line(),
        None => "checking".to_string(),
    };
    if let Some(e) = app.audit.stats().fsync_failure() {
        let body = serde_json::json!({"status": "unavailable", "audit": format!("cannot force the audit trail to disk: {e}"), "audit_chain": chain});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    if let Some(e) = app.audit.stats().failing() {
        let body = serde_json::json!({"status": "unavailable", "audit": format!("the audit trail cannot be written: {e}; requests are refused until it can"), "audit_chain": chain});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    match app.store.ping().await {
        Ok(()) => Json(serde_json::json!({"status": "ready", "audit_chain": chain})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unavailable", "store": e.to_string(), "audit_chain": chain})),
        )
            .into_response(),
    }
}

/// RFC 3339 text of a Unix-millisecond time.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}
