use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gatehouse_audit::now_ms;
use gatehouse_core::{validate_group_name, validate_name};
use gatehouse_keys::Secret;
use gatehouse_store::{ConnectionRecord, CredentialRecord, SealedSecret, SecretKind};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::{ApiError, AppState, Body, Caller, ErrorBody, rfc3339};
use crate::app::Area;

pub const TYPES: &[&str] = &["postgres", "mysql", "redis", "ssh", "http", "kubernetes"];
pub const TLS_MODES: &[&str] = &["disable", "require", "verify-full"];

fn default_port(kind: &str) -> Option<u16> {
    match kind {
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        "redis" => Some(6379),
        "ssh" => Some(22),
        _ => None,
    }
}

fn uses_url(kind: &str) -> bool {
    matches!(kind, "http" | "kubernetes")
}

/// A credential as sent to the API. Write-only: never returned. `Debug` hides the value.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretInput {
    /// `password`, `key_file`, `header` or `bearer`.
    pub kind: String,
    /// For `header`: the header name, e.g. `X-Api-Key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    pub value: String,
}

impl fmt::Debug for SecretInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretInput").field("kind", &self.kind).field("header", &self.header).finish_non_exhaustive()
    }
}

/// Fields of a connection. On create, `name` and `type` are required; on update, absent fields
/// keep their value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `disable`, `require` or `verify-full` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// A CA certificate file on the gateway host, to verify the resource with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Replaces all tags when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// Detectors to run on values: email, credit_card, iban, ssn, phone, ip, secret, custom:NAME.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<Vec<String>>,
    /// Whole-column rules: `schema.table.column` with `*` for one name, or a JSON path for HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_columns: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretInput>,
}

/// An extra credential for callers in some groups.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialInput {
    pub name: String,
    pub groups: Vec<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub secret: Option<SecretInput>,
}

/// That a credential is set, and of which kind; never its value.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CredentialSet {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CredentialView {
    pub name: String,
    pub groups: Vec<String>,
    pub user: Option<String>,
    pub credential: Option<CredentialSet>,
    pub created_at: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConnectionView {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub url: Option<String>,
    pub database: Option<String>,
    pub user: Option<String>,
    pub tls: String,
    pub ca_file: Option<String>,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub mask: Vec<String>,
    pub mask_columns: Vec<String>,
    pub credential: Option<CredentialSet>,
    pub credentials: Vec<CredentialView>,
    pub created_at: String,
    pub updated_at: String,
}

fn set_of(s: &Option<SealedSecret>) -> Option<CredentialSet> {
    s.as_ref().map(|s| CredentialSet {
        kind: s.kind.tag().into(),
        header: match &s.kind {
            SecretKind::Header { name } => Some(name.clone()),
            _ => None,
        },
    })
}

impl ConnectionView {
    fn of(r: &ConnectionRecord) -> Self {
        ConnectionView {
            name: r.name.clone(),
            kind: r.kind.clone(),
            host: r.host.clone(),
            port: r.port,
            url: r.url.clone(),
            database: r.database.clone(),
            user: r.user.clone(),
            tls: r.tls_mode.clone(),
            ca_file: r.ca_file.clone(),
            description: r.description.clone(),
            tags: r.tags.clone(),
            mask: r.mask.clone(),
            mask_columns: r.mask_columns.clone(),
            credential: set_of(&r.secret),
            credentials: r
                .credentials
                .iter()
                .map(|c| CredentialView {
                    name: c.name.clone(),
                    groups: c.groups.clone(),
                    user: c.user.clone(),
                    credential: set_of(&c.secret),
                    created_at: rfc3339(c.created_at),
                })
                .collect(),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

fn default_aad(connection: &str) -> String {
    format!("connection/{connection}/default")
}

fn credential_aad(connection: &str, credential: &str) -> String {
    format!("connection/{connection}/credential/{credential}")
}

fn seal(app: &AppState, kind: &str, input: &SecretInput, aad: &str) -> Result<SealedSecret, ApiError> {
    let secret_kind = match input.kind.as_str() {
        "password" => SecretKind::Password,
        "key_file" => {
            if kind != "ssh" {
                return Err(ApiError::invalid(format!("a key file is a credential for ssh connections, not {kind}")));
            }
            SecretKind::KeyFile
        }
        "header" | "bearer" if !uses_url(kind) => {
            return Err(ApiError::invalid(format!(
                "a {} credential is for http and kubernetes connections, not {kind}",
                input.kind
            )));
        }
        "header" => {
            let name = input.header.as_deref().map(str::trim).unwrap_or_default();
            let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(ApiError::invalid(format!("header name {name:?} is not a valid HTTP header name")));
            }
            SecretKind::Header { name: name.to_string() }
        }
        "bearer" => SecretKind::Bearer,
        other => {
            return Err(ApiError::invalid(format!(
                "credential kind {other:?} is not one of password, key_file, header, bearer"
            )));
        }
    };
    if input.value.is_empty() {
        return Err(ApiError::invalid("the credential is empty"));
    }
    let sealed =
        app.keys.seal(&Secret::new(input.value.clone()), aad).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(SealedSecret { kind: secret_kind, sealed })
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Applies `input` over `base` (or over nothing, for a new connection) and checks the result.
fn build(
    app: &AppState,
    name: &str,
    base: Option<ConnectionRecord>,
    input: ConnectionInput,
    now: i64,
) -> Result<ConnectionRecord, ApiError> {
    let creating = base.is_none();
    let mut r = base.unwrap_or_else(|| ConnectionRecord {
        name: name.to_string(),
        kind: String::new(),
        host: None,
        port: None,
        url: None,
        database: None,
        user: None,
        tls_mode: "verify-full".into(),
        ca_file: None,
        description: String::new(),
        tags: BTreeMap::new(),
        mask: vec![],
        mask_columns: vec![],
        secret: None,
        credentials: vec![],
        created_at: now,
        updated_at: now,
    });
    if let Some(k) = input.kind {
        if !creating && k != r.kind {
            return Err(ApiError::invalid(format!(
                "the type of connection {name:?} cannot change ({} to {k}); remove and add it again",
                r.kind
            )));
        }
        r.kind = k;
    }
    if !TYPES.contains(&r.kind.as_str()) {
        return Err(ApiError::invalid(format!("type {:?} is not one of {}", r.kind, TYPES.join(", "))));
    }
    if input.host.is_some() {
        r.host = non_empty(input.host);
    }
    if input.port.is_some() {
        r.port = input.port;
    }
    if input.url.is_some() {
        r.url = non_empty(input.url);
    }
    if input.database.is_some() {
        r.database = non_empty(input.database);
    }
    if input.user.is_some() {
        r.user = non_empty(input.user);
    }
    if let Some(t) = input.tls {
        r.tls_mode = t;
    }
    if input.ca_file.is_some() {
        r.ca_file = non_empty(input.ca_file);
    }
    if let Some(d) = input.description {
        r.description = d;
    }
    if let Some(t) = input.tags {
        r.tags = t;
    }
    if let Some(m) = input.mask {
        r.mask = m.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    }
    if let Some(m) = input.mask_columns {
        r.mask_columns = m.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    }
    if !TLS_MODES.contains(&r.tls_mode.as_str()) {
        return Err(ApiError::invalid(format!("tls {:?} is not one of {}", r.tls_mode, TLS_MODES.join(", "))));
    }
    if uses_url(&r.kind) {
        let url = r.url.as_deref().ok_or_else(|| ApiError::invalid(format!("a {} connection needs --url", r.kind)))?;
        let parsed = reqwest::Url::parse(url).map_err(|e| ApiError::invalid(format!("url {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ApiError::invalid(format!("url {url:?} must be http:// or https:// with a host")));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(ApiError::invalid(
                "put credentials in --bearer-env, --header-env or --password-env, not in the URL",
            ));
        }
        if r.host.is_some() || r.port.is_some() {
            return Err(ApiError::invalid(format!("a {} connection takes --url, not --host/--port", r.kind)));
        }
    } else {
        let host =
            r.host.as_deref().ok_or_else(|| ApiError::invalid(format!("a {} connection needs --host", r.kind)))?;
        if host.chars().any(|c| c.is_whitespace() || c == '/' || c == '@') {
            return Err(ApiError::invalid(format!("host {host:?} is not a host name or address")));
        }
        if r.url.is_some() {
            return Err(ApiError::invalid(format!("a {} connection takes --host/--port, not --url", r.kind)));
        }
        if r.port.is_none() {
            r.port = default_port(&r.kind);
        }
        if r.port == Some(0) {
            return Err(ApiError::invalid("port 0 is not a port"));
        }
    }
    for k in r.tags.keys() {
        if k.is_empty() || k.chars().any(|c| c.is_whitespace() || c == '=') {
            return Err(ApiError::invalid(format!("tag key {k:?} must be non-empty without spaces or '='")));
        }
    }
    validate_masking(&r)?;
    if let Some(secret) = &input.secret {
        r.secret = Some(seal(app, &r.kind, secret, &default_aad(name))?);
    }
    r.updated_at = now;
    Ok(r)
}

/// What is recorded about a change: every field but the credential's value.
fn audit_details(input: &ConnectionInput) -> serde_json::Value {
    let mut shown = input.clone();
    shown.secret = None;
    let mut v = serde_json::to_value(shown).unwrap_or_default();
    if let (Some(obj), Some(secret)) = (v.as_object_mut(), &input.secret) {
        obj.insert(
            "credential".into(),
            json!({"kind": secret.kind, "header": secret.header, "value": "(set, not recorded)"}),
        );
    }
    v
}

#[utoipa::path(get, path = "/api/v1/connections", tag = "connections",
    responses((status = 200, body = [ConnectionView]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(State(app): State<AppState>, Caller(caller): Caller) -> Result<Json<Vec<ConnectionView>>, ApiError> {
    app.authorize(&caller, Area::Connections, false)?;
    Ok(Json(app.store.list_connections().await?.iter().map(ConnectionView::of).collect()))
}

#[utoipa::path(get, path = "/api/v1/connections/{name}", tag = "connections",
    params(("name" = String, Path, description = "connection name")),
    responses((status = 200, body = ConnectionView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<ConnectionView>, ApiError> {
    app.authorize(&caller, Area::Connections, false)?;
    let r = app.connection(&name).await?;
    Ok(Json(ConnectionView::of(&r)))
}

#[utoipa::path(post, path = "/api/v1/connections", tag = "connections", request_body = ConnectionInput,
    responses((status = 201, body = ConnectionView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Body(input): Body<ConnectionInput>,
) -> Result<(StatusCode, Json<ConnectionView>), ApiError> {
    let name = input.name.clone().unwrap_or_default();
    validate_name("connection", &name).map_err(ApiError::invalid)?;
    if input.kind.is_none() {
        return Err(ApiError::invalid(format!("--type is required: one of {}", TYPES.join(", "))));
    }
    let details = audit_details(&input);
    let record = build(&app, &name, None, input, now_ms())?;
    let view = ConnectionView::of(&record);
    app.managed(&caller, Area::Connections, "connection.create", &name, details, || async {
        app.store.create_connection(record).await?;
        Ok(())
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(patch, path = "/api/v1/connections/{name}", tag = "connections", request_body = ConnectionInput,
    params(("name" = String, Path, description = "connection name")),
    responses((status = 200, body = ConnectionView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Body(input): Body<ConnectionInput>,
) -> Result<Json<ConnectionView>, ApiError> {
    if input.name.as_deref().is_some_and(|n| n != name) {
        return Err(ApiError::invalid("a connection cannot be renamed"));
    }
    let details = audit_details(&input);
    let view = app
        .managed(&caller, Area::Connections, "connection.update", &name, details, || async {
            let existing = app.connection(&name).await?;
            let record = build(&app, &name, Some(existing), input, now_ms())?;
            let view = ConnectionView::of(&record);
            app.store.update_connection(record).await?;
            Ok(view)
        })
        .await?;
    Ok(Json(view))
}

#[utoipa::path(delete, path = "/api/v1/connections/{name}", tag = "connections",
    params(("name" = String, Path, description = "connection name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.managed(&caller, Area::Connections, "connection.delete", &name, json!({}), || async {
        app.store.delete_connection(&name).await?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/connections/{name}/credentials", tag = "connections", request_body = CredentialInput,
    params(("name" = String, Path, description = "connection name")),
    responses((status = 201, body = ConnectionView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_credential(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Body(input): Body<CredentialInput>,
) -> Result<(StatusCode, Json<ConnectionView>), ApiError> {
    validate_name("credential", &input.name).map_err(ApiError::invalid)?;
    if input.groups.is_empty() {
        return Err(ApiError::invalid("a credential needs --groups: the callers it is for"));
    }
    for g in &input.groups {
        validate_group_name(g).map_err(ApiError::invalid)?;
    }
    if input.secret.is_none() && non_empty(input.user.clone()).is_none() {
        return Err(ApiError::invalid("a credential needs a user, a secret, or both"));
    }
    let details = json!({"credential": input.name, "groups": input.groups, "user": input.user,
        "secret": input.secret.as_ref().map(|s| json!({"kind": s.kind, "value": "(set, not recorded)"}))});
    app.managed(&caller, Area::Connections, "connection.credential.add", &name, details, || async {
        let conn = app.connection(&name).await?;
        let secret = match &input.secret {
            Some(s) => Some(seal(&app, &conn.kind, s, &credential_aad(&name, &input.name))?),
            None => None,
        };
        let record = CredentialRecord {
            name: input.name.clone(),
            groups: input.groups.clone(),
            user: non_empty(input.user.clone()),
            secret,
            created_at: now_ms(),
        };
        app.store.add_credential(&name, record).await?;
        Ok(())
    })
    .await?;
    let r = app.connection(&name).await?;
    Ok((StatusCode::CREATED, Json(ConnectionView::of(&r))))
}

#[utoipa::path(delete, path = "/api/v1/connections/{name}/credentials/{credential}", tag = "connections",
    params(("name" = String, Path, description = "connection name"), ("credential" = String, Path, description = "credential name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn remove_credential(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path((name, credential)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    app.managed(
        &caller,
        Area::Connections,
        "connection.credential.remove",
        &name,
        json!({"credential": credential}),
        || async {
            app.store.remove_credential(&name, &credential).await?;
            Ok(())
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether the gateway can reach a connection's address.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TestResult {
    pub reachable: bool,
    pub address: String,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/connections/{name}/test", tag = "connections",
    params(("name" = String, Path, description = "connection name")),
    responses((status = 200, body = TestResult), (status = 404, body = ErrorBody)))]
pub async fn test(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<TestResult>, ApiError> {
    app.authorize(&caller, Area::Connections, false)?;
    let r = app.connection(&name).await?;
    let address = match (&r.host, r.port, &r.url) {
        (Some(h), Some(p), _) => {
            if h.contains(':') {
                format!("[{h}]:{p}")
            } else {
                format!("{h}:{p}")
            }
        }
        (_, _, Some(u)) => {
            let url = reqwest::Url::parse(u).map_err(|e| ApiError::Internal(e.to_string()))?;
            let host = url.host_str().unwrap_or_default();
            let port = url.port_or_known_default().unwrap_or(443);
            format!("{host}:{port}")
        }
        _ => return Err(ApiError::Internal("connection has no address".into())),
    };
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(address.as_str())).await;
    let latency = started.elapsed().as_secs_f64() * 1000.0;
    if !matches!(result, Ok(Ok(_))) {
        app.metrics.upstream_error(&name);
    }
    Ok(Json(match result {
        Ok(Ok(_)) => TestResult { reachable: true, address, latency_ms: Some(latency), error: None },
        Ok(Err(e)) => TestResult { reachable: false, address, latency_ms: None, error: Some(e.to_string()) },
        Err(_) => {
            TestResult { reachable: false, address, latency_ms: None, error: Some("no answer within 5 s".into()) }
        }
    }))
}

/// Masking settings must mean something for the connection's kind: known detectors, and column
/// patterns in the form its adapter reads.
fn validate_masking(r: &ConnectionRecord) -> Result<(), ApiError> {
    gatehouse_mask::masker_from_settings(&r.mask).map_err(|e| ApiError::invalid(format!("mask: {e}")))?;
    for pattern in &r.mask_columns {
        match r.kind.as_str() {
            "postgres" | "mysql" => {
                gatehouse_mask::ColumnPattern::parse(pattern).map_err(|e| {
                    ApiError::invalid(format!(
                        "mask column {pattern:?} must be schema.table.column (with * for one name): {e}"
                    ))
                })?;
            }
            "http" | "kubernetes" if pattern.starts_with('$') => {}
            "http" | "kubernetes" => {
                return Err(ApiError::invalid(format!(
                    "mask_columns: {pattern:?} is not a JSON path (like $.customer.email)"
                )));
            }
            kind => {
                return Err(ApiError::invalid(format!(
                    "mask_columns: a {kind} connection has no columns; use --mask detectors"
                )));
            }
        }
    }
    Ok(())
}
