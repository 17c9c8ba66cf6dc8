//! The web console: server-rendered pages on the API listener under `/console/`, for people.
//! Every page calls the same code as the REST API with the signed-in identity, so what the
//! console shows and allows is exactly what the API would: authorization, review eligibility and
//! recording are the server's, whatever the page offers.
//!
//! Sign-in is by the company's identity provider (authorization code flow with PKCE) or by a
//! token (the bootstrap admin token, for a first sign-in). A sign-in is a random cookie value
//! (`HttpOnly`, `SameSite=Lax`, `Secure` over TLS) whose SHA-256 names it in memory: sign-ins
//! end when the gateway restarts. Every form carries the sign-in's CSRF token and is refused
//! without it, and a cross-origin `Origin` is refused too. Pages are sent with a strict content
//! security policy: scripts and styles come from the gateway only, nothing from a CDN.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use gatehouse_core::Identity;
use maud::{DOCTYPE, Markup, html};
use serde::de::DeserializeOwned;

use crate::api::{ApiError, AppState, ClientAddr};
use crate::config::ConsoleSettings;

mod audit;
mod manage;
mod reviews;
mod sessions;
mod signin;

/// The sign-in cookie.
const SESSION_COOKIE: &str = "gatehouse_console";
/// Ties an OIDC sign-in's callback to the browser that started it.
const LOGIN_COOKIE: &str = "gatehouse_login";
/// A one-time message for the page after a change ("Connection x added."): a cookie, so that a
/// link from elsewhere cannot put words on a console page.
const FLASH_COOKIE: &str = "gatehouse_flash";
/// Starts a one-time message that reports a failure rather than a success.
const WARNING: &str = "!";
/// The CSRF token of the token sign-in form (before there is a sign-in to hold one).
const PRE_CSRF_COOKIE: &str = "gatehouse_csrf";
/// Sign-ins held at once; past this, the oldest are dropped.
const MAX_SIGNED_IN: usize = 10_000;
/// OIDC sign-ins started and not finished, held at once.
const MAX_PENDING: usize = 1_000;
/// An OIDC sign-in must come back within this.
const PENDING_FOR: Duration = Duration::from_secs(600);

/// One signed-in browser.
#[derive(Clone)]
struct SignedIn {
    identity: Identity,
    csrf: String,
    /// `oidc` or `token`.
    method: &'static str,
    ends: Instant,
    /// For a token sign-in: the identity's token rotation time then. A rotated or deleted
    /// token ends the sign-in.
    rotated_at: Option<Option<i64>>,
}

/// An OIDC sign-in waiting for the provider to send the browser back.
struct Pending {
    nonce: String,
    verifier: String,
    /// The console page to show once signed in.
    next: String,
    started: Instant,
}

/// The console's state: its settings and who is signed in.
pub struct Console {
    settings: ConsoleSettings,
    signed_in: Mutex<HashMap<[u8; 32], SignedIn>>,
    pending: Mutex<HashMap<String, Pending>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("settings", &self.settings).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn digest(value: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Console {
    pub fn new(settings: ConsoleSettings) -> Self {
        Console { settings, signed_in: Mutex::new(HashMap::new()), pending: Mutex::new(HashMap::new()) }
    }

    /// Signs `identity` in; returns the cookie value. The sign-in lasts the configured lifetime,
    /// less if the credential it was made with expires sooner.
    fn sign_in(
        &self,
        identity: Identity,
        method: &'static str,
        rotated_at: Option<Option<i64>>,
    ) -> Result<String, ApiError> {
        let value = gatehouse_auth::login::random_token(32).map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let csrf = gatehouse_auth::login::random_token(32).map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let mut lifetime = self.settings.session_lifetime;
        if let Some(expires) = identity.expires_at {
            let left = u64::try_from(expires - gatehouse_audit::now_ms()).unwrap_or(0);
            lifetime = lifetime.min(Duration::from_millis(left));
        }
        let now = Instant::now();
        let mut map = lock(&self.signed_in);
        map.retain(|_, s| s.ends > now);
        if map.len() >= MAX_SIGNED_IN
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.ends).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(digest(&value), SignedIn { identity, csrf, method, ends: now + lifetime, rotated_at });
        Ok(value)
    }

    fn find(&self, cookie: &str) -> Option<SignedIn> {
        let key = digest(cookie);
        let mut map = lock(&self.signed_in);
        match map.get(&key) {
            Some(s) if s.ends > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    fn sign_out(&self, cookie: &str) {
        lock(&self.signed_in).remove(&digest(cookie));
    }

    fn start_pending(&self, state: String, pending: Pending) {
        let mut map = lock(&self.pending);
        map.retain(|_, p| p.started.elapsed() < PENDING_FOR);
        if map.len() >= MAX_PENDING
            && let Some(oldest) = map.iter().min_by_key(|(_, p)| p.started).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(state, pending);
    }

    /// The pending sign-in of `state`, once: a state is never accepted twice.
    fn take_pending(&self, state: &str) -> Option<Pending> {
        lock(&self.pending).remove(state).filter(|p| p.started.elapsed() < PENDING_FOR)
    }

    /// `Secure` on cookies when browsers reach the gateway over TLS.
    fn cookie(&self, name: &str, value: &str, max_age: Option<Duration>) -> HeaderValue {
        let mut text = format!("{name}={value}; Path=/console; HttpOnly; SameSite=Lax");
        if self.settings.secure_cookies {
            text.push_str("; Secure");
        }
        if let Some(age) = max_age {
            text.push_str(&format!("; Max-Age={}", age.as_secs()));
        }
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Path=/console"))
    }

    fn clear_cookie(&self, name: &str) -> HeaderValue {
        self.cookie(name, "", Some(Duration::ZERO))
    }

    /// Where the identity provider sends browsers back to.
    fn redirect_uri(&self) -> String {
        format!("{}/console/callback", self.settings.public_url)
    }
}

/// The value of cookie `name` in a request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The signed-in person viewing a page.
#[derive(Clone)]
pub struct Viewer {
    pub identity: Identity,
    csrf: String,
    method: &'static str,
}

impl Viewer {
    /// Whether the viewer may read `area` of the management API: pages hide what they may not.
    fn may(&self, app: &AppState, area: crate::app::Area) -> bool {
        app.authorize(&self.identity, area, false).is_ok()
    }
}

/// Sends the browser to sign in, coming back to where it was going.
fn to_sign_in(parts: &Parts) -> Response {
    let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/console/");
    let next: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
    Redirect::to(&format!("/console/signin?next={next}")).into_response()
}

/// Where to go after signing in: a console page of this gateway, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/console/") && !n.contains("//") && !n.contains('\\') => n.to_string(),
        _ => "/console/".to_string(),
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        let Some(value) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_sign_in(parts));
        };
        let Some(signed_in) = app.console.find(value) else {
            return Err(to_sign_in(parts));
        };
        // A token sign-in ends when its token is rotated or its identity deleted.
        if let Some(rotated_at) = signed_in.rotated_at {
            let current = app.store.get_identity(&signed_in.identity.name).await.map_err(|e| {
                error_page(None, StatusCode::SERVICE_UNAVAILABLE, &format!("the store is unavailable: {e}"))
            })?;
            if current.map(|r| r.token_rotated_at) != Some(rotated_at) {
                app.console.sign_out(value);
                return Err(to_sign_in(parts));
            }
        }
        Ok(Viewer { identity: signed_in.identity, csrf: signed_in.csrf, method: signed_in.method })
    }
}

/// A form posted by a signed-in viewer, its CSRF token checked, and its fields as `T`.
pub struct Posted<T> {
    pub viewer: Viewer,
    pub form: T,
}

/// A form with no fields but its CSRF token (a button).
#[derive(serde::Deserialize)]
pub struct NoFields {}

/// The CSRF field every console form carries.
#[derive(serde::Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// Whether a presented secret (a CSRF token, a sign-in state) is the expected one, compared in
/// constant time.
fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(presented, expected).into()
}

/// Refuses a form sent from another origin (when the browser says where it came from).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else { return true };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    url::Url::parse(origin).ok().is_some_and(|o| {
        let port = o.port().map(|p| format!(":{p}")).unwrap_or_default();
        o.host_str().is_some_and(|h| format!("{h}{port}") == host)
    })
}

impl<T: DeserializeOwned> FromRequest<AppState> for Posted<T> {
    type Rejection = Response;

    async fn from_request(req: Request, app: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, app).await?;
        if !same_origin(&parts.headers) {
            return Err(error_page(Some(&viewer), StatusCode::FORBIDDEN, "this form was sent from another site"));
        }
        let bytes = axum::body::to_bytes(body, 1024 * 1024)
            .await
            .map_err(|_| error_page(Some(&viewer), StatusCode::PAYLOAD_TOO_LARGE, "the form is larger than 1 MiB"))?;
        let csrf: CsrfField = serde_urlencoded::from_bytes(&bytes).unwrap_or(CsrfField { csrf: String::new() });
        if !same_secret(csrf.csrf.as_bytes(), viewer.csrf.as_bytes()) {
            return Err(error_page(
                Some(&viewer),
                StatusCode::FORBIDDEN,
                "this form's security token is missing or out of date; reload the page and try again",
            ));
        }
        let form = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
            error_page(Some(&viewer), StatusCode::UNPROCESSABLE_ENTITY, &format!("the form is malformed: {e}"))
        })?;
        Ok(Posted { viewer, form })
    }
}

/// The one-time message left for this page by the change before it, if any.
pub struct Flash(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Flash {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let text = cookie(&parts.headers, FLASH_COOKIE)
            .map(|v| url::form_urlencoded::parse(format!("m={v}").as_bytes()).map(|(_, m)| m.into_owned()).collect())
            .unwrap_or_default();
        Ok(Flash(text))
    }
}

/// Goes to `path` with `message` shown there once.
fn done(app: &AppState, path: &str, message: &str) -> Response {
    let value: String = url::form_urlencoded::byte_serialize(message.as_bytes()).collect();
    let mut response = Redirect::to(path).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, app.console.cookie(FLASH_COOKIE, &value, Some(Duration::from_secs(60))));
    response
}

/// The source address of a request, for the sign-in limits.
fn source(parts_ext: &axum::http::Extensions) -> Option<IpAddr> {
    parts_ext.get::<axum::extract::ConnectInfo<ClientAddr>>().map(|c| c.0.0.ip())
}

/// The console's sections, for the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Sessions,
    Reviews,
    Connections,
    Identities,
    Policies,
    Audit,
    None,
}

const SECTIONS: [(Section, &str, &str); 6] = [
    (Section::Sessions, "Sessions", "/console/sessions"),
    (Section::Reviews, "Reviews", "/console/reviews"),
    (Section::Connections, "Connections", "/console/connections"),
    (Section::Identities, "Identities", "/console/identities"),
    (Section::Policies, "Policies", "/console/policies"),
    (Section::Audit, "Audit", "/console/audit"),
];

/// The hidden CSRF field for a form of `viewer`'s.
fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// A whole page: head, navigation, the viewer and a sign-out button, then `body`.
fn page(viewer: Option<&Viewer>, title: &str, section: Section, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Gatehouse" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    a class="brand" href="/console/" { "Gatehouse" }
                    @if let Some(v) = viewer {
                        nav aria-label="Sections" {
                            ul {
                                @for (s, label, href) in SECTIONS {
                                    li {
                                        @if s == section {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        div class="who" {
                            span data-test="viewer" title=(format!("signed in with {}", v.method)) {
                                (v.identity.entity_ref())
                            }
                            form method="post" action="/console/signout" {
                                (csrf_field(v))
                                button type="submit" class="link" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A rendered page as a response, with the console's security headers.
fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

/// A section's page for a signed-in viewer: 200, or the status of the `problem` the page shows.
fn section_page(viewer: &Viewer, title: &str, section: Section, problem: Option<&ApiError>, body: Markup) -> Response {
    respond(problem.map(status_of).unwrap_or(StatusCode::OK), page(Some(viewer), title, section, body))
}

/// An error shown as a page: what went wrong, in the API's words.
fn error_page(viewer: Option<&Viewer>, status: StatusCode, message: &str) -> Response {
    let title = match status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::UNAUTHORIZED => "Not signed in",
        s if s.is_server_error() => "Unavailable",
        _ => "Cannot do that",
    };
    respond(
        status,
        page(
            viewer,
            title,
            Section::None,
            html! {
                p class="error" role="alert" { (message) }
                p { a href="/console/" { "Back to the console" } }
            },
        ),
    )
}

/// The status an API error is answered with.
fn status_of(e: &ApiError) -> StatusCode {
    match e {
        ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        ApiError::Forbidden { .. } | ApiError::ReviewPending { .. } => StatusCode::FORBIDDEN,
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::Conflict(_) => StatusCode::CONFLICT,
        ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        ApiError::Invalid { .. } | ApiError::Statement { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
        ApiError::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
    }
}

/// An API error as a console page.
fn failed(viewer: &Viewer, e: &ApiError) -> Response {
    error_page(Some(viewer), status_of(e), &e.to_string())
}

/// A time in Unix milliseconds as the console shows it: UTC, to the second.
fn when(ms: i64) -> String {
    let text = crate::api::rfc3339(ms);
    text.get(..19).map(|t| format!("{} UTC", t.replace('T', " "))).unwrap_or(text)
}

/// An RFC 3339 time as the console shows it.
fn when_text(rfc3339: &str) -> String {
    crate::api::sessions::parse_time(rfc3339).map(when).unwrap_or_else(|| rfc3339.to_string())
}

/// A badge for a decision or status word.
fn badge(word: &str) -> Markup {
    html! { span class=(format!("badge badge-{word}")) { (word) } }
}

/// Headers every console response carries.
async fn security_headers(
    axum::extract::State(app): axum::extract::State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let flash_shown = req.method() == axum::http::Method::GET && cookie(req.headers(), FLASH_COOKIE).is_some();
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    if flash_shown && !h.contains_key(header::SET_COOKIE) {
        h.append(header::SET_COOKIE, app.console.clear_cookie(FLASH_COOKIE));
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")], CSS).into_response()
}

async fn js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")], JS)
        .into_response()
}

/// The first page: sessions for those who may read them, else the reviews they may decide.
async fn home(axum::extract::State(app): axum::extract::State<AppState>, viewer: Viewer) -> Redirect {
    if viewer.may(&app, crate::app::Area::Sessions) {
        Redirect::to("/console/sessions")
    } else {
        Redirect::to("/console/reviews")
    }
}

/// The console's routes, or none when `[console] enabled = false`.
pub fn router(app: &AppState) -> Router<AppState> {
    if !app.console.settings.enabled {
        return Router::new();
    }
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(home))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .route("/console/signin", get(signin::show))
        .route("/console/signin/token", post(signin::with_token))
        .route("/console/signin/oidc", get(signin::start_oidc))
        .route("/console/callback", get(signin::callback))
        .route("/console/signout", post(signin::sign_out))
        .route("/console/sessions", get(sessions::list))
        .route("/console/sessions/{id}", get(sessions::show))
        .route("/console/sessions/{id}/kill", post(sessions::kill))
        .route("/console/reviews", get(reviews::list))
        .route("/console/reviews/{id}/approve", post(reviews::approve))
        .route("/console/reviews/{id}/deny", post(reviews::deny))
        .route("/console/connections", get(manage::connections).post(manage::add_connection))
        .route("/console/connections/{name}/delete", post(manage::delete_connection))
        .route("/console/connections/{name}/test", post(manage::test_connection))
        .route("/console/identities", get(manage::identities).post(manage::add_identity))
        .route("/console/identities/{name}/delete", post(manage::delete_identity))
        .route("/console/identities/{name}/rotate", post(manage::rotate_identity))
        .route("/console/policies", get(manage::policies).post(manage::set_policies))
        .route("/console/policies/check", post(manage::check))
        .route("/console/audit", get(audit::show))
        .route("/console/audit/verify", post(audit::verify))
        .layer(axum::middleware::from_fn_with_state(app.clone(), security_headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_sign_in_only_console_pages() {
        assert_eq!(safe_next(Some("/console/reviews?status=pending")), "/console/reviews?status=pending");
        for bad in ["//evil.example/", "https://evil.example/", "/console//evil", "/console/\\evil", "/api/v1/x", ""] {
            assert_eq!(safe_next(Some(bad)), "/console/", "{bad}");
        }
        assert_eq!(safe_next(None), "/console/");
    }

    #[test]
    fn forms_from_another_origin_are_refused() {
        let headers = |origin: Option<&str>, host: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            if let Some(o) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
            }
            h
        };
        assert!(same_origin(&headers(None, "127.0.0.1:8800")), "no Origin: the CSRF token decides");
        assert!(same_origin(&headers(Some("http://127.0.0.1:8800"), "127.0.0.1:8800")));
        assert!(!same_origin(&headers(Some("http://127.0.0.1:8801"), "127.0.0.1:8800")));
        assert!(!same_origin(&headers(Some("https://evil.example"), "127.0.0.1:8800")));
        assert!(!same_origin(&headers(Some("null"), "127.0.0.1:8800")));
    }

    fn console(secure_cookies: bool) -> Console {
        Console::new(ConsoleSettings {
            enabled: true,
            session_lifetime: Duration::from_secs(3600),
            secure_cookies,
            public_url: "https://gatehouse.example".into(),
            client_id: "console".into(),
            client_secret: None,
        })
    }

    #[test]
    fn cookies_are_http_only_lax_and_secure_over_tls() {
        let plain = console(false).cookie(SESSION_COOKIE, "v", None);
        assert_eq!(plain.to_str().unwrap(), "gatehouse_console=v; Path=/console; HttpOnly; SameSite=Lax");
        let tls = console(true).cookie(SESSION_COOKIE, "v", None);
        assert!(tls.to_str().unwrap().ends_with("; Secure"), "{tls:?}");
        let cleared = console(true).clear_cookie(LOGIN_COOKIE);
        assert!(cleared.to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn a_sign_in_is_found_by_its_cookie_and_ends_with_its_credential() {
        let c = console(false);
        let identity = |expires_at| Identity {
            kind: gatehouse_core::IdentityKind::User,
            name: "alice@example.com".into(),
            groups: Default::default(),
            expires_at,
        };
        let value = c.sign_in(identity(None), "oidc", None).unwrap();
        assert_eq!(c.find(&value).unwrap().identity.name, "alice@example.com");
        assert!(c.find("not-a-sign-in").is_none());
        c.sign_out(&value);
        assert!(c.find(&value).is_none(), "signed out");
        let expired = c.sign_in(identity(Some(gatehouse_audit::now_ms() - 1)), "oidc", None).unwrap();
        assert!(c.find(&expired).is_none(), "a sign-in ends when its token has expired");
        let state = "s".to_string();
        let pending =
            Pending { nonce: "n".into(), verifier: "v".into(), next: "/console/".into(), started: Instant::now() };
        c.start_pending(state.clone(), pending);
        assert!(c.take_pending(&state).is_some());
        assert!(c.take_pending(&state).is_none(), "a state is used once");
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("x_gatehouse_console=a; gatehouse_console=b"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("b"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), None);
    }
}
