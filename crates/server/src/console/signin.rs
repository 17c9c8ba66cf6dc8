//! Signing in and out: through the identity provider (authorization code flow with PKCE), or
//! with a token (the bootstrap admin token, a service token, or a JWT).

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use gatehouse_auth::login::{Client, Start, exchange};
use gatehouse_core::{Identity, IdentityKind};
use maud::html;
use serde::Deserialize;
use serde_json::json;

use super::{
    LOGIN_COOKIE, NoFields, PRE_CSRF_COOKIE, Pending, Posted, SESSION_COOKIE, Section, cookie, error_page, page,
    respond, safe_next, same_origin, source,
};
use crate::api::{ApiError, AppState};

#[derive(Debug, Default, Deserialize)]
pub struct SignInQuery {
    next: Option<String>,
}

/// The sign-in page, with `problem` shown above the choices.
fn sign_in_page(app: &AppState, csrf: &str, next: &str, problem: Option<&str>, status: StatusCode) -> Response {
    let oidc = app.auth.oidc().map(|o| o.issuer().to_string());
    let next_q: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
    let body = html! {
        @if let Some(p) = problem {
            p class="error" role="alert" data-test="signin-error" { (p) }
        }
        div class="signin" {
            @if let Some(issuer) = &oidc {
                section {
                    h2 { "People" }
                    p { "Sign in with your company account at " code { (issuer) } "." }
                    a class="button primary" href=(format!("/console/signin/oidc?next={next_q}")) data-test="signin-oidc" {
                        "Sign in with your identity provider"
                    }
                }
            }
            section {
                h2 { "With a token" }
                p { "The bootstrap admin token (" code { "admin.token" } " in the data directory) or a service token." }
                form method="post" action="/console/signin/token" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="next" value=(next);
                    label for="token" { "Token" }
                    input id="token" name="token" type="password" autocomplete="off" required;
                    button type="submit" { "Sign in" }
                }
            }
        }
    };
    let mut response = respond(status, page(None, "Sign in", Section::None, body));
    response.headers_mut().append(header::SET_COOKIE, app.console.cookie(PRE_CSRF_COOKIE, csrf, None));
    response
}

pub async fn show(State(app): State<AppState>, headers: HeaderMap, Query(q): Query<SignInQuery>) -> Response {
    let next = safe_next(q.next.as_deref());
    if let Some(value) = cookie(&headers, SESSION_COOKIE)
        && app.console.find(value).is_some()
    {
        return Redirect::to(&next).into_response();
    }
    match gatehouse_auth::login::random_token(32) {
        Ok(csrf) => sign_in_page(&app, &csrf, &next, None, StatusCode::OK),
        Err(e) => error_page(None, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// Signs `identity` in and sends the browser on to `next`, recording the sign-in.
async fn signed_in(app: &AppState, identity: Identity, method: &'static str, next: &str) -> Response {
    let rotated_at = if identity.kind == IdentityKind::Service && method == "token" {
        match app.store.get_identity(&identity.name).await {
            Ok(Some(r)) => Some(r.token_rotated_at),
            Ok(None) => return error_page(None, StatusCode::UNAUTHORIZED, "that identity no longer exists"),
            Err(e) => {
                return error_page(None, StatusCode::SERVICE_UNAVAILABLE, &format!("the store is unavailable: {e}"));
            }
        }
    } else {
        None
    };
    let who = identity.entity_ref();
    let groups: Vec<String> = identity.groups.iter().cloned().collect();
    // Recorded before the sign-in exists: one that cannot be recorded does not happen.
    if let Err(e) =
        app.record_server_event("console.sign_in", json!({"identity": who, "groups": groups, "method": method})).await
    {
        return error_page(None, StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    }
    let value = match app.console.sign_in(identity, method, rotated_at) {
        Ok(v) => v,
        Err(e) => return error_page(None, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let mut response = Redirect::to(next).into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, app.console.cookie(SESSION_COOKIE, &value, None));
    headers.append(header::SET_COOKIE, app.console.clear_cookie(PRE_CSRF_COOKIE));
    headers.append(header::SET_COOKIE, app.console.clear_cookie(LOGIN_COOKIE));
    response
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    token: String,
}

pub async fn with_token(State(app): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return error_page(None, StatusCode::PAYLOAD_TOO_LARGE, "the form is too large");
    };
    let form: TokenForm = match serde_urlencoded::from_bytes(&bytes) {
        Ok(f) => f,
        Err(e) => return error_page(None, StatusCode::UNPROCESSABLE_ENTITY, &format!("the form is malformed: {e}")),
    };
    let next = safe_next(form.next.as_deref());
    let expected = cookie(&parts.headers, PRE_CSRF_COOKIE).unwrap_or_default();
    let fresh = gatehouse_auth::login::random_token(32).unwrap_or_default();
    if !same_origin(&parts.headers)
        || expected.is_empty()
        || !super::same_secret(expected.as_bytes(), form.csrf.as_bytes())
    {
        let problem = "this form's security token is missing or out of date; try again";
        return sign_in_page(&app, &fresh, &next, Some(problem), StatusCode::FORBIDDEN);
    }
    let token = form.token.trim();
    match crate::api::sign_in(&app, token, source(&parts.extensions)).await {
        Ok(identity) => signed_in(&app, identity, "token", &next).await,
        Err(e) => {
            let status = super::status_of(&e);
            let message = match &e {
                ApiError::Unauthenticated(m) => format!("That token was not accepted: {m}."),
                other => other.to_string(),
            };
            sign_in_page(&app, &fresh, &next, Some(&message), status)
        }
    }
}

pub async fn start_oidc(State(app): State<AppState>, Query(q): Query<SignInQuery>) -> Response {
    let Some(oidc) = app.auth.oidc() else {
        return error_page(None, StatusCode::NOT_FOUND, "no identity provider is configured ([oidc] issuer)");
    };
    let endpoints = match oidc.endpoints().await {
        Ok(e) => e,
        Err(e) => {
            return error_page(None, StatusCode::BAD_GATEWAY, &format!("the identity provider cannot be reached: {e}"));
        }
    };
    let settings = &app.console.settings;
    let start = match Start::new(&endpoints, &settings.client_id, &app.console.redirect_uri()) {
        Ok(s) => s,
        Err(e) => return error_page(None, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let state = start.state.clone();
    app.console.start_pending(
        state.clone(),
        Pending {
            nonce: start.nonce,
            verifier: start.verifier,
            next: safe_next(q.next.as_deref()),
            started: std::time::Instant::now(),
        },
    );
    let mut response = Redirect::to(&start.url).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, app.console.cookie(LOGIN_COOKIE, &state, Some(super::PENDING_FOR)));
    response
}

#[derive(Debug, Default, Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

pub async fn callback(State(app): State<AppState>, headers: HeaderMap, Query(cb): Query<Callback>) -> Response {
    let retry = "sign in again";
    let fail = |status: StatusCode, message: String| {
        let mut response = error_page(None, status, &format!("{message}; {retry}."));
        response.headers_mut().append(header::SET_COOKIE, app.console.clear_cookie(LOGIN_COOKIE));
        response
    };
    if let Some(error) = cb.error {
        let detail = cb.error_description.map(|d| format!(": {d}")).unwrap_or_default();
        return fail(StatusCode::UNAUTHORIZED, format!("The identity provider did not sign you in ({error}{detail})"));
    }
    let (Some(code), Some(state)) = (cb.code, cb.state) else {
        return fail(StatusCode::BAD_REQUEST, "The identity provider sent no code and state".into());
    };
    let bound = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if bound.is_empty() || !super::same_secret(bound.as_bytes(), state.as_bytes()) {
        return fail(StatusCode::BAD_REQUEST, "This sign-in was not started in this browser".into());
    }
    let Some(pending) = app.console.take_pending(&state) else {
        return fail(StatusCode::BAD_REQUEST, "This sign-in is unknown, used or too old".into());
    };
    let Some(oidc) = app.auth.oidc() else {
        return fail(StatusCode::NOT_FOUND, "No identity provider is configured".into());
    };
    let settings = &app.console.settings;
    let redirect_uri = app.console.redirect_uri();
    let client = Client {
        id: &settings.client_id,
        secret: settings.client_secret.as_ref().map(gatehouse_keys::Secret::expose),
        redirect_uri: &redirect_uri,
    };
    let endpoints = match oidc.endpoints().await {
        Ok(e) => e,
        Err(e) => return fail(StatusCode::BAD_GATEWAY, format!("The identity provider cannot be reached: {e}")),
    };
    let id_token = match exchange(oidc, &endpoints, &client, &code, &pending.verifier).await {
        Ok(t) => t,
        Err(e) => return fail(StatusCode::UNAUTHORIZED, format!("The sign-in failed: {e}")),
    };
    match oidc.verify_id_token(&id_token, &settings.client_id, &pending.nonce).await {
        Ok(identity) => {
            app.metrics.authentication("console", "ok");
            signed_in(&app, identity, "oidc", &pending.next).await
        }
        Err(e) => {
            app.metrics.authentication("console", "refused");
            fail(StatusCode::UNAUTHORIZED, format!("The identity provider's ID token was refused: {e}"))
        }
    }
}

pub async fn sign_out(State(app): State<AppState>, headers: HeaderMap, posted: Posted<NoFields>) -> Response {
    if let Some(value) = cookie(&headers, SESSION_COOKIE) {
        app.console.sign_out(value);
    }
    let who = posted.viewer.identity.entity_ref();
    if let Err(e) = app.record_server_event("console.sign_out", json!({"identity": who})).await {
        tracing::warn!(error = %e, "a console sign-out could not be recorded");
    }
    let mut response = Redirect::to("/console/signin").into_response();
    response.headers_mut().append(header::SET_COOKIE, app.console.clear_cookie(SESSION_COOKIE));
    response
}
