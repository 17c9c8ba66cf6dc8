//! Audit: the hash chain's verification, and the management events (every change made through
//! the API, the CLI or this console, refused attempts included), newest first.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use gatehouse_store::SessionFilter;
use maud::html;
use serde::Deserialize;

use super::{NoFields, Posted, Section, Viewer, badge, csrf_field, failed, page, respond, when};
use crate::api::{ApiError, AppState, Caller};
use crate::app::Area;

const PAGE: usize = 50;

#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    after: String,
}

async fn render(app: &AppState, viewer: &Viewer, q: &AuditQuery) -> Response {
    if let Err(e) = app.authorize(&viewer.identity, Area::Audit, false) {
        return failed(viewer, &e);
    }
    app.settled().await;
    let mut filter = SessionFilter { protocol: Some("api".into()), limit: PAGE + 1, ..Default::default() };
    if !q.after.is_empty() {
        match app.store.get_session(&q.after).await {
            Ok(Some(anchor)) => {
                filter.before = Some(anchor.started_at);
                filter.before_id = Some(anchor.id);
            }
            Ok(None) => return failed(viewer, &ApiError::invalid(format!("session {:?} not found", q.after))),
            Err(e) => return failed(viewer, &e.into()),
        }
    }
    let mut sessions = match app.store.list_sessions(filter).await {
        Ok(s) => s,
        Err(e) => return failed(viewer, &e.into()),
    };
    let more = sessions.len() > PAGE;
    sessions.truncate(PAGE);
    let mut rows = vec![];
    for s in &sessions {
        let events = match app.store.session_events(&s.id).await {
            Ok(e) => e,
            Err(e) => return failed(viewer, &e.into()),
        };
        let request = events
            .iter()
            .find(|e| e.kind == "request")
            .and_then(|e| serde_json::from_str::<serde_json::Value>(&e.payload).ok())
            .unwrap_or_default();
        let result = events
            .iter()
            .find(|e| e.kind == "request.result")
            .and_then(|e| serde_json::from_str::<serde_json::Value>(&e.payload).ok());
        rows.push((s, request, result));
    }
    let chain = app.chain.read().await.as_ref().map(|r| (r.ok, r.line(), r.checked_at));
    let body = html! {
        section aria-labelledby="chain" {
            h2 id="chain" { "Hash chain" }
            @match &chain {
                Some((ok, line, at)) => {
                    p data-test="chain" {
                        (badge(if *ok { "ok" } else { "broken" })) " " (line)
                        span class="meta" { "checked " (when(*at)) }
                    }
                }
                None => { p data-test="chain" { "Not checked yet (the check at start-up is still running)." } }
            }
            form method="post" action="/console/audit/verify" class="inline" {
                (csrf_field(viewer))
                button type="submit" { "Verify the whole chain now" }
            }
        }
        h2 { "Management events" }
        table class="list" {
            thead { tr { th scope="col" { "Time" } th scope="col" { "Identity" } th scope="col" { "Operation" } th scope="col" { "Target" } th scope="col" { "Decision" } th scope="col" { "Outcome" } } }
            tbody {
                @if rows.is_empty() { tr { td colspan="6" class="empty" { "No management events." } } }
                @for (s, request, result) in &rows {
                    tr {
                        td { a href=(format!("/console/sessions/{}", s.id)) { (when(s.started_at)) } }
                        td { (s.identity) }
                        td { code { (request["operation"].as_str().unwrap_or("?")) } }
                        td { (request["target"].as_str().unwrap_or("")) }
                        td { (badge(request["decision"].as_str().unwrap_or("?"))) }
                        td {
                            @match result {
                                Some(r) => { (r["status"].as_str().unwrap_or("?")) @if let Some(e) = r["error"].as_str() { ": " (e) } }
                                None => { (request["message"].as_str().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
        nav class="pager" aria-label="Pages" {
            @if more && let Some(last) = sessions.last() {
                a rel="next" href=(format!("/console/audit?after={}", last.id)) { "Older →" }
            }
        }
    };
    respond(StatusCode::OK, page(Some(viewer), "Audit", Section::Audit, body))
}

pub async fn show(State(app): State<AppState>, viewer: Viewer, Query(q): Query<AuditQuery>) -> Response {
    render(&app, &viewer, &q).await
}

pub async fn verify(State(app): State<AppState>, posted: Posted<NoFields>) -> Response {
    let viewer = posted.viewer;
    match crate::api::audit::verify(State(app.clone()), Caller(viewer.identity.clone())).await {
        Ok(_) => render(&app, &viewer, &AuditQuery::default()).await,
        Err(e) => failed(&viewer, &e),
    }
}
