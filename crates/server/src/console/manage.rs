//! Connections, identities and policies: lists, and forms to add or edit them. Secrets are
//! write-only: a form takes a new one, no page ever shows a stored one. A new service token is
//! shown once, on the page that follows its creation.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::{Flash, NoFields, Posted, Section, Viewer, badge, csrf_field, done, failed, section_page, when_text};
use crate::api::connections::ConnectionView;
use crate::api::{ApiError, AppState, Body, Caller, ConnectionInput, NewIdentity, SecretInput};

#[derive(Debug, Default, Deserialize)]
pub struct Editing {
    /// A connection to edit in the form.
    #[serde(default)]
    edit: String,
}

fn notice(text: &str) -> Markup {
    html! {
        @if let Some(warning) = text.strip_prefix(super::WARNING) {
            p class="error" role="alert" { (warning) }
        } @else if !text.is_empty() {
            p class="notice" role="status" { (text) }
        }
    }
}

fn problem_list(e: &ApiError) -> Markup {
    html! {
        div class="error" role="alert" data-test="form-error" {
            p { (e.to_string()) }
            @if let ApiError::Invalid { problems, .. } = e {
                @if !problems.is_empty() { ul { @for p in problems { li { code { (p) } } } } }
            }
        }
    }
}

fn field(name: &str, label: &str, value: &str, kind: &str, hint: &str) -> Markup {
    html! {
        div class="field" {
            label for=(name) { (label) }
            input id=(name) name=(name) type=(kind) value=(value) autocomplete="off";
            @if !hint.is_empty() { small { (hint) } }
        }
    }
}

// ---- connections ----

/// The connection form's fields. No `Debug`: it holds the secret.
#[derive(Default, Deserialize)]
pub struct ConnectionForm {
    /// Set when editing: the connection's name.
    #[serde(default)]
    original: String,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    database: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    tls: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    mask: String,
    #[serde(default)]
    mask_columns: String,
    #[serde(default)]
    secret_kind: String,
    #[serde(default)]
    secret_header: String,
    /// Write-only; empty when editing keeps the stored secret.
    #[serde(default)]
    secret: String,
}

fn list_of(text: &str) -> Option<Vec<String>> {
    let items: Vec<String> = text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    (!items.is_empty()).then_some(items)
}

impl ConnectionForm {
    fn of(c: &ConnectionView) -> Self {
        ConnectionForm {
            original: c.name.clone(),
            name: c.name.clone(),
            kind: c.kind.clone(),
            host: c.host.clone().unwrap_or_default(),
            port: c.port.map(|p| p.to_string()).unwrap_or_default(),
            url: c.url.clone().unwrap_or_default(),
            database: c.database.clone().unwrap_or_default(),
            user: c.user.clone().unwrap_or_default(),
            tls: c.tls.clone(),
            description: c.description.clone(),
            mask: c.mask.join(", "),
            mask_columns: c.mask_columns.join(", "),
            secret_kind: c.credential.as_ref().map(|s| s.kind.clone()).unwrap_or_default(),
            secret_header: c.credential.as_ref().and_then(|s| s.header.clone()).unwrap_or_default(),
            secret: String::new(),
        }
    }

    fn input(&self) -> Result<ConnectionInput, ApiError> {
        let text = |v: &str| (!v.trim().is_empty()).then(|| v.trim().to_string());
        let port = match text(&self.port) {
            None => None,
            Some(p) => {
                Some(p.parse::<u16>().map_err(|_| ApiError::invalid(format!("port {p:?} is not a port number")))?)
            }
        };
        let secret = (!self.secret.is_empty()).then(|| SecretInput {
            kind: text(&self.secret_kind).unwrap_or_else(|| "password".into()),
            header: text(&self.secret_header),
            value: self.secret.clone(),
        });
        Ok(ConnectionInput {
            name: text(&self.name),
            kind: text(&self.kind),
            host: text(&self.host),
            port,
            url: text(&self.url),
            database: text(&self.database),
            user: text(&self.user),
            tls: text(&self.tls),
            ca_file: None,
            description: Some(self.description.trim().to_string()),
            tags: None,
            mask: Some(list_of(&self.mask).unwrap_or_default()),
            mask_columns: Some(list_of(&self.mask_columns).unwrap_or_default()),
            secret,
        })
    }
}

fn connection_form(viewer: &Viewer, f: &ConnectionForm) -> Markup {
    let editing = !f.original.is_empty();
    let options = |current: &str, list: &[(&str, &str)]| {
        html! { @for (v, t) in list { option value=(v) selected[*v == current] { (t) } } }
    };
    html! {
        form method="post" action="/console/connections" class="stacked" aria-labelledby="connection-form" {
            h2 id="connection-form" { @if editing { "Edit " code { (f.original) } } @else { "Add a connection" } }
            (csrf_field(viewer))
            input type="hidden" name="original" value=(f.original);
            @if editing {
                input type="hidden" name="name" value=(f.name);
            } @else {
                (field("name", "Name", &f.name, "text", "letters, digits, - and _"))
            }
            div class="field" {
                label for="type" { "Type" }
                select id="type" name="type" disabled[editing] {
                    (options(&f.kind, &[("postgres", "PostgreSQL"), ("http", "HTTP API"), ("mysql", "MySQL/MariaDB"), ("redis", "Redis"), ("ssh", "SSH"), ("kubernetes", "Kubernetes")]))
                }
            }
            (field("host", "Host", &f.host, "text", ""))
            (field("port", "Port", &f.port, "number", ""))
            (field("url", "URL", &f.url, "url", "for HTTP and Kubernetes connections"))
            (field("database", "Database", &f.database, "text", ""))
            (field("user", "User", &f.user, "text", ""))
            div class="field" {
                label for="tls" { "TLS to the resource" }
                select id="tls" name="tls" {
                    (options(&f.tls, &[("", "default (verify-full)"), ("verify-full", "verify-full"), ("require", "require"), ("disable", "disable")]))
                }
            }
            (field("description", "Description", &f.description, "text", ""))
            (field("mask", "Mask detectors", &f.mask, "text", "comma-separated: email, credit_card, iban, ssn, phone, ip, secret"))
            (field("mask_columns", "Masked columns or JSON paths", &f.mask_columns, "text", "comma-separated"))
            fieldset {
                legend { "Credential (write-only)" }
                div class="field" {
                    label for="secret_kind" { "Kind" }
                    select id="secret_kind" name="secret_kind" {
                        (options(&f.secret_kind, &[("password", "password"), ("bearer", "bearer token"), ("header", "named header")]))
                    }
                }
                (field("secret_header", "Header name", &f.secret_header, "text", "for a named header, e.g. X-Api-Key"))
                (field("secret", "Secret", "", "password", if editing { "leave empty to keep the stored credential" } else { "" }))
            }
            div class="buttons" {
                button type="submit" class="primary" { @if editing { "Save" } @else { "Add connection" } }
                @if editing { a href="/console/connections" { "Cancel" } }
            }
        }
    }
}

async fn connections_page(
    app: &AppState,
    viewer: &Viewer,
    form: &ConnectionForm,
    message: &str,
    problem: Option<&ApiError>,
) -> Response {
    let list = match crate::api::connections::list(State(app.clone()), Caller(viewer.identity.clone())).await {
        Ok(axum::Json(list)) => list,
        Err(e) => return failed(viewer, &e),
    };
    let body = html! {
        (notice(message))
        @if let Some(e) = problem { (problem_list(e)) }
        table class="list" {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Type" } th scope="col" { "Target" } th scope="col" { "Credential" } th scope="col" { "Masking" } th scope="col" { "Updated" } th scope="col" { span class="visually-hidden" { "Actions" } } } }
            tbody {
                @if list.is_empty() { tr { td colspan="7" class="empty" { "No connections yet." } } }
                @for c in &list {
                    tr data-connection=(c.name) {
                        td { strong { (c.name) } @if !c.description.is_empty() { br; small { (c.description) } } }
                        td { (c.kind) }
                        td { code { @if let Some(u) = &c.url { (u) } @else { (c.host.as_deref().unwrap_or("")) ":" (c.port.map(|p| p.to_string()).unwrap_or_default()) @if let Some(d) = &c.database { "/" (d) } } } }
                        td { @if let Some(s) = &c.credential { (s.kind) " " (badge("set")) } @else { "none" } @if !c.credentials.is_empty() { " +" (c.credentials.len()) } }
                        td { (c.mask.join(", ")) @if !c.mask_columns.is_empty() { br; small { (c.mask_columns.join(", ")) } } }
                        td { (when_text(&c.updated_at)) }
                        td class="actions" {
                            a href=(format!("/console/connections?edit={}", c.name)) { "Edit" }
                            form method="post" action=(format!("/console/connections/{}/test", c.name)) class="inline" {
                                (csrf_field(viewer))
                                button type="submit" class="link" aria-label=(format!("Test {}", c.name)) { "Test" }
                            }
                            form method="post" action=(format!("/console/connections/{}/delete", c.name)) class="inline" {
                                (csrf_field(viewer))
                                button type="submit" class="link danger" aria-label=(format!("Delete {}", c.name)) { "Delete" }
                            }
                        }
                    }
                }
            }
        }
        (connection_form(viewer, form))
    };
    section_page(viewer, "Connections", Section::Connections, problem, body)
}

pub async fn connections(
    State(app): State<AppState>,
    viewer: Viewer,
    Flash(flash): Flash,
    Query(n): Query<Editing>,
) -> Response {
    let mut form = ConnectionForm { kind: "postgres".into(), ..Default::default() };
    if !n.edit.is_empty() {
        match crate::api::connections::show(State(app.clone()), Caller(viewer.identity.clone()), Path(n.edit.clone()))
            .await
        {
            Ok(axum::Json(c)) => form = ConnectionForm::of(&c),
            Err(e) => return failed(&viewer, &e),
        }
    }
    connections_page(&app, &viewer, &form, &flash, None).await
}

pub async fn add_connection(State(app): State<AppState>, posted: Posted<ConnectionForm>) -> Response {
    let Posted { viewer, form } = posted;
    let caller = Caller(viewer.identity.clone());
    let result = match form.input() {
        Err(e) => Err(e),
        Ok(input) if form.original.is_empty() => {
            crate::api::connections::create(State(app.clone()), caller, Body(input)).await.map(|_| "added")
        }
        Ok(mut input) => {
            input.kind = None;
            input.name = None;
            crate::api::connections::update(State(app.clone()), caller, Path(form.original.clone()), Body(input))
                .await
                .map(|_| "saved")
        }
    };
    match result {
        Ok(verb) => done(&app, "/console/connections", &format!("Connection {} {verb}.", form.name.trim())),
        Err(e) => {
            connections_page(&app, &viewer, &ConnectionForm { secret: String::new(), ..form }, "", Some(&e)).await
        }
    }
}

pub async fn delete_connection(
    State(app): State<AppState>,
    Path(name): Path<String>,
    posted: Posted<NoFields>,
) -> Response {
    let viewer = posted.viewer;
    match crate::api::connections::delete(State(app.clone()), Caller(viewer.identity.clone()), Path(name.clone())).await
    {
        Ok(_) => done(&app, "/console/connections", &format!("Connection {name} deleted.")),
        Err(e) => failed(&viewer, &e),
    }
}

/// Tries to reach a connection's resource, and says how it went on the next page.
pub async fn test_connection(
    State(app): State<AppState>,
    Path(name): Path<String>,
    posted: Posted<NoFields>,
) -> Response {
    let viewer = posted.viewer;
    match crate::api::connections::test(State(app.clone()), Caller(viewer.identity.clone()), Path(name.clone())).await {
        Ok(axum::Json(r)) => {
            let message = match (r.reachable, r.latency_ms, r.error) {
                (true, Some(ms), _) => format!("Connection {name}: {} answered in {ms:.1} ms.", r.address),
                (true, None, _) => format!("Connection {name}: {} answered.", r.address),
                (false, _, e) => format!(
                    "{}Connection {name}: {} is unreachable: {}.",
                    super::WARNING,
                    r.address,
                    e.unwrap_or_default()
                ),
            };
            done(&app, "/console/connections", &message)
        }
        Err(e) => failed(&viewer, &e),
    }
}

// ---- identities ----

#[derive(Debug, Default, Deserialize)]
pub struct IdentityForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    groups: String,
    #[serde(default)]
    ttl: String,
}

async fn identities_page(
    app: &AppState,
    viewer: &Viewer,
    form: &IdentityForm,
    message: &str,
    token: Option<&str>,
    problem: Option<&ApiError>,
) -> Response {
    let list = match crate::api::identities::list(State(app.clone()), Caller(viewer.identity.clone())).await {
        Ok(axum::Json(list)) => list,
        Err(e) => return failed(viewer, &e),
    };
    let body = html! {
        (notice(message))
        @if let Some(t) = token {
            div class="notice token" role="status" {
                p { "The new identity's token, shown this once. Store it now: it cannot be shown again." }
                pre data-test="new-token" { (t) }
            }
        }
        @if let Some(e) = problem { (problem_list(e)) }
        p class="hint" { "Service accounts are listed here. People sign in through the identity provider; their groups come from it." }
        table class="list" {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Kind" } th scope="col" { "Groups" } th scope="col" { "Created" } th scope="col" { "Token expires" } th scope="col" { "Last used" } th scope="col" { span class="visually-hidden" { "Actions" } } } }
            tbody {
                @for i in &list {
                    tr data-identity=(i.name) {
                        td { strong { (i.name) } }
                        td { (i.kind) }
                        td { (i.groups.join(", ")) }
                        td { (when_text(&i.created_at)) }
                        td { @if let Some(e) = &i.expires_at { (when_text(e)) @if i.expired { " " (badge("expired")) } } @else { "never" } }
                        td { @if let Some(u) = &i.last_used_at { (when_text(u)) } @else { "—" } }
                        td class="actions" {
                            @if i.kind == "service" {
                                form method="post" action=(format!("/console/identities/{}/rotate", i.name)) class="inline" {
                                    (csrf_field(viewer))
                                    button type="submit" class="link" aria-label=(format!("Rotate the token of {}", i.name)) { "Rotate token" }
                                }
                            }
                            form method="post" action=(format!("/console/identities/{}/delete", i.name)) class="inline" {
                                (csrf_field(viewer))
                                button type="submit" class="link danger" aria-label=(format!("Delete {}", i.name)) { "Delete" }
                            }
                        }
                    }
                }
            }
        }
        form method="post" action="/console/identities" class="stacked" aria-labelledby="identity-form" {
            h2 id="identity-form" { "Add a service account" }
            (csrf_field(viewer))
            (field("name", "Name", &form.name, "text", "letters, digits, - and _"))
            (field("groups", "Groups", &form.groups, "text", "comma-separated"))
            (field("ttl", "Token lifetime", &form.ttl, "text", "e.g. 90d or 12h; empty: no expiry"))
            div class="buttons" { button type="submit" class="primary" { "Add service account" } }
        }
    };
    section_page(viewer, "Identities", Section::Identities, problem, body)
}

pub async fn identities(State(app): State<AppState>, viewer: Viewer, Flash(flash): Flash) -> Response {
    identities_page(&app, &viewer, &IdentityForm::default(), &flash, None, None).await
}

pub async fn add_identity(State(app): State<AppState>, posted: Posted<IdentityForm>) -> Response {
    let Posted { viewer, form } = posted;
    let input = NewIdentity {
        name: form.name.trim().to_string(),
        groups: list_of(&form.groups).unwrap_or_default(),
        ttl: (!form.ttl.trim().is_empty()).then(|| form.ttl.trim().to_string()),
    };
    match crate::api::identities::create(State(app.clone()), Caller(viewer.identity.clone()), Body(input)).await {
        Ok((_, axum::Json(created))) => {
            let message = format!("Service account {} added.", created.identity.name);
            identities_page(&app, &viewer, &IdentityForm::default(), &message, Some(&created.token), None).await
        }
        Err(e) => identities_page(&app, &viewer, &form, "", None, Some(&e)).await,
    }
}

/// A new token for a service account (the old one stops working at once), shown once.
pub async fn rotate_identity(
    State(app): State<AppState>,
    Path(name): Path<String>,
    posted: Posted<NoFields>,
) -> Response {
    let viewer = posted.viewer;
    let rotated = crate::api::identities::rotate(
        State(app.clone()),
        Caller(viewer.identity.clone()),
        Path(name.clone()),
        axum::body::Bytes::new(),
    )
    .await;
    match rotated {
        Ok(axum::Json(r)) => {
            let message = format!("The token of {name} was rotated; the old one no longer works.");
            identities_page(&app, &viewer, &IdentityForm::default(), &message, Some(&r.token), None).await
        }
        Err(e) => failed(&viewer, &e),
    }
}

pub async fn delete_identity(
    State(app): State<AppState>,
    Path(name): Path<String>,
    posted: Posted<NoFields>,
) -> Response {
    let viewer = posted.viewer;
    match crate::api::identities::delete(State(app.clone()), Caller(viewer.identity.clone()), Path(name.clone())).await
    {
        Ok(_) => done(&app, "/console/identities", &format!("Identity {name} deleted.")),
        Err(e) => failed(&viewer, &e),
    }
}

// ---- policies ----

#[derive(Debug, Default, Deserialize)]
pub struct PolicyForm {
    #[serde(default)]
    text: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct CheckForm {
    #[serde(default)]
    principal: String,
    #[serde(default)]
    groups: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    resources: String,
    #[serde(default)]
    context: String,
}

async fn policies_page(
    app: &AppState,
    viewer: &Viewer,
    text: Option<&str>,
    check: &CheckForm,
    outcome: Option<Result<crate::api::policies::CheckResult, ApiError>>,
    message: &str,
    problem: Option<&ApiError>,
) -> Response {
    let current = match crate::api::policies::show(State(app.clone()), Caller(viewer.identity.clone())).await {
        Ok(axum::Json(v)) => v,
        Err(e) => return failed(viewer, &e),
    };
    let shown = text.unwrap_or(&current.text);
    let body = html! {
        (notice(message))
        p class="meta" {
            "Version " (current.version)
            @if let Some(a) = &current.author { " by " (a) }
            @if let Some(t) = &current.updated_at { " at " (when_text(t)) }
            " · " (current.policies.len()) " policies"
        }
        @if !current.warnings.is_empty() { ul class="warnings" { @for w in &current.warnings { li { (w) } } } }
        form method="post" action="/console/policies" class="stacked" aria-labelledby="policy-text-label" {
            (csrf_field(viewer))
            label id="policy-text-label" for="policy-text" { "Policy set (Cedar)" }
            @if let Some(e) = problem { (problem_list(e)) }
            textarea id="policy-text" name="text" rows="18" spellcheck="false" aria-invalid=[problem.map(|_| "true")] { (shown) }
            div class="buttons" { button type="submit" class="primary" { "Validate and apply" } }
        }
        form method="post" action="/console/policies/check" class="stacked" aria-labelledby="check-form" {
            h2 id="check-form" { "Check a decision" }
            (csrf_field(viewer))
            (field("principal", "Principal", &check.principal, "text", "e.g. Service::\"fn-billing\" or User::\"alice@example.com\"; empty: you"))
            (field("groups", "Groups", &check.groups, "text", "comma-separated; empty: the identity's own"))
            (field("action", "Action", &check.action, "text", "e.g. sql.delete or http.get"))
            (field("resources", "Resources", &check.resources, "text", "comma-separated, e.g. Table::\"pg-prod/public.t\""))
            (field("context", "Context (JSON object)", &check.context, "text", "optional"))
            div class="buttons" { button type="submit" { "Check" } }
        }
        @match &outcome {
            Some(Ok(r)) => {
                div class="check-result" role="status" data-test="check-result" {
                    p { (badge(&r.decision.decision)) " for " code { (r.principal) } }
                    pre { (r.report) }
                }
            }
            Some(Err(e)) => { (problem_list(e)) }
            None => {}
        }
    };
    section_page(viewer, "Policies", Section::Policies, problem, body)
}

pub async fn policies(State(app): State<AppState>, viewer: Viewer, Flash(flash): Flash) -> Response {
    policies_page(&app, &viewer, None, &CheckForm::default(), None, &flash, None).await
}

pub async fn set_policies(State(app): State<AppState>, posted: Posted<PolicyForm>) -> Response {
    let Posted { viewer, form } = posted;
    // Browsers send text areas with CRLF line ends.
    let text = form.text.replace("\r\n", "\n");
    let input = crate::api::policies::PolicyInput { text: text.clone() };
    match crate::api::policies::set(State(app.clone()), Caller(viewer.identity.clone()), Body(input)).await {
        Ok(axum::Json(v)) => done(&app, "/console/policies", &format!("Policy set version {} applied.", v.version)),
        Err(e) => policies_page(&app, &viewer, Some(&text), &CheckForm::default(), None, "", Some(&e)).await,
    }
}

pub async fn check(State(app): State<AppState>, posted: Posted<CheckForm>) -> Response {
    let Posted { viewer, form } = posted;
    let context = match form.context.trim() {
        "" => Ok(serde_json::Map::new()),
        text => serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
            .map_err(|e| ApiError::invalid(format!("the context is not a JSON object: {e}"))),
    };
    let outcome = match context {
        Err(e) => Err(e),
        Ok(context) => {
            let input = crate::api::CheckInput {
                principal: (!form.principal.trim().is_empty()).then(|| form.principal.trim().to_string()),
                action: form.action.trim().to_string(),
                resources: list_of(&form.resources).unwrap_or_default(),
                context,
                groups: list_of(&form.groups),
            };
            crate::api::policies::check(State(app.clone()), Caller(viewer.identity.clone()), Body(input))
                .await
                .map(|axum::Json(r)| r)
        }
    };
    policies_page(&app, &viewer, None, &form, Some(outcome), "", None).await
}
