//! Sessions: the live-updating, filtered, paginated list, and one session's timeline.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::{NoFields, Posted, Section, Viewer, badge, csrf_field, failed, page, respond, when_text};
use crate::api::sessions::{EventView, ListParams, SessionDetail};
use crate::api::{AppState, Caller, Params};
use crate::app::Area;

/// Sessions on one page of the list.
const PAGE: usize = 50;

#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    identity: String,
    #[serde(default)]
    connection: String,
    #[serde(default)]
    protocol: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    after: String,
    /// `rows`: only the table's body, for the page's live refresh.
    #[serde(default)]
    fragment: String,
}

impl Filters {
    /// The query string of these filters (without the page or fragment), for links.
    fn query(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("identity", &self.identity),
            ("connection", &self.connection),
            ("protocol", &self.protocol),
            ("outcome", &self.outcome),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }

    fn params(&self, limit: usize) -> ListParams {
        let text = |v: &String| (!v.is_empty()).then(|| v.clone());
        ListParams {
            identity: text(&self.identity),
            connection: text(&self.connection),
            protocol: text(&self.protocol),
            outcome: text(&self.outcome),
            since: text(&self.since),
            until: text(&self.until),
            after: text(&self.after),
            limit: Some(limit),
        }
    }
}

fn select(name: &str, label: &str, current: &str, options: &[(&str, &str)]) -> Markup {
    html! {
        div class="field" {
            label for=(name) { (label) }
            select id=(name) name=(name) {
                @for (value, text) in options {
                    option value=(value) selected[*value == current] { (text) }
                }
            }
        }
    }
}

fn text_field(name: &str, label: &str, value: &str, kind: &str) -> Markup {
    html! {
        div class="field" {
            label for=(name) { (label) }
            input id=(name) name=(name) type=(kind) value=(value);
        }
    }
}

fn rows(list: &[crate::api::sessions::SessionView]) -> Markup {
    html! {
        @if list.is_empty() {
            tr { td colspan="9" class="empty" { "No sessions match." } }
        }
        @for s in list {
            tr data-session=(s.id) {
                td { a href=(format!("/console/sessions/{}", s.id)) { (when_text(&s.started_at)) } }
                td { (s.identity) }
                td { (s.connection.as_deref().unwrap_or("—")) }
                td { (s.protocol) }
                td class="num" { (s.requests) }
                td class="num" { @if s.denied > 0 { (badge("deny")) " " } (s.denied) }
                td class="num" { @if s.reviewed > 0 { (badge("review")) " " } (s.reviewed) }
                td class="num" { @if s.masked > 0 { (badge("masked")) " " } (s.masked) }
                td {
                    @if s.live { (badge("live")) } @else { (s.end_reason.as_deref().unwrap_or("ended")) }
                }
            }
        }
    }
}

pub async fn list(State(app): State<AppState>, viewer: Viewer, Query(filters): Query<Filters>) -> Response {
    // One more than a page, to know whether there is a next one.
    let found = crate::api::sessions::list(
        State(app.clone()),
        Caller(viewer.identity.clone()),
        Params(filters.params(PAGE + 1)),
    )
    .await;
    let mut list = match found {
        Ok(axum::Json(list)) => list,
        Err(e) => return failed(&viewer, &e),
    };
    let more = list.len() > PAGE;
    list.truncate(PAGE);
    if filters.fragment == "rows" {
        return respond(StatusCode::OK, rows(&list));
    }
    let query = filters.query();
    let live = filters.after.is_empty();
    let body = html! {
        form class="filters" method="get" action="/console/sessions" role="search" aria-label="Filter sessions" {
            (text_field("identity", "Identity", &filters.identity, "text"))
            (text_field("connection", "Connection", &filters.connection, "text"))
            (select("protocol", "Protocol", &filters.protocol,
                &[("", "any"), ("postgres", "PostgreSQL"), ("http", "HTTP"), ("mcp", "MCP"), ("api", "management API")]))
            (select("outcome", "Outcome", &filters.outcome,
                &[("", "any"), ("denied", "a denial"), ("reviewed", "a review"), ("masked", "masked values")]))
            (text_field("since", "From (UTC)", &filters.since, "datetime-local"))
            (text_field("until", "To (UTC)", &filters.until, "datetime-local"))
            div class="field actions" {
                button type="submit" { "Filter" }
                @if !query.is_empty() { a href="/console/sessions" { "Clear" } }
            }
        }
        @if live {
            p class="hint" id="live-status" aria-live="polite" { "Newest first; this page refreshes by itself." }
        }
        table class="list" {
            caption class="visually-hidden" { "Sessions, newest first" }
            thead {
                tr {
                    th scope="col" { "Started" } th scope="col" { "Identity" } th scope="col" { "Connection" }
                    th scope="col" { "Protocol" } th scope="col" class="num" { "Requests" }
                    th scope="col" class="num" { "Denied" } th scope="col" class="num" { "Reviewed" }
                    th scope="col" class="num" { "Masked" } th scope="col" { "State" }
                }
            }
            @if live {
                tbody id="session-rows" data-live=(format!("/console/sessions?{query}{}fragment=rows", if query.is_empty() { "" } else { "&" })) {
                    (rows(&list))
                }
            } @else {
                tbody id="session-rows" { (rows(&list)) }
            }
        }
        nav class="pager" aria-label="Pages" {
            @if !live {
                a href=(format!("/console/sessions?{query}")) { "← Newest" }
            }
            @if more && let Some(last) = list.last() {
                a rel="next" href=(format!("/console/sessions?{query}{}after={}", if query.is_empty() { "" } else { "&" }, last.id)) { "Older →" }
            }
        }
    };
    respond(StatusCode::OK, page(Some(&viewer), "Sessions", Section::Sessions, body))
}

#[derive(Debug, Default, Deserialize)]
pub struct Search {
    #[serde(default)]
    q: String,
}

/// One request of a timeline: its event and, once it finished, its result.
struct Step<'a> {
    request: &'a EventView,
    result: Option<&'a EventView>,
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The masked-value counts of a result: total, and `place: detector×n` lines.
fn masked_counts(result: &Value) -> (i64, Vec<String>) {
    let mut total = 0;
    let mut lines = vec![];
    if let Some(by_place) = result["masked"].as_object() {
        for (place, by_detector) in by_place {
            if let Some(by_detector) = by_detector.as_object() {
                for (detector, n) in by_detector {
                    let n = n.as_i64().unwrap_or(0);
                    total += n;
                    lines.push(format!("{place}: {detector} × {n}"));
                }
            }
        }
    }
    (total, lines)
}

/// `1 row`, `2 rows`.
fn counted(n: i64, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

fn step(s: &Step<'_>) -> Markup {
    let r = &s.request.data;
    let decision = r["decision"].as_str().unwrap_or("?");
    let policies: Vec<String> = r["policies"].as_array().map(|a| a.iter().map(text_of).collect()).unwrap_or_default();
    let params: Vec<String> = r["params"].as_array().map(|a| a.iter().map(text_of).collect()).unwrap_or_default();
    let text = r["request"].as_str().map(String::from).unwrap_or_else(|| {
        let operation = r["operation"].as_str().unwrap_or_default();
        format!("{operation} {}", text_of(&r["target"])).trim().to_string()
    });
    html! {
        li class=(format!("step decision-{decision}")) data-seq=(s.request.seq) {
            div class="step-head" {
                time { (when_text(&s.request.time)) }
                (badge(decision))
                span class="action" { (text_of(&r["action"])) }
                @if let Some(res) = s.result {
                    @let d = &res.data;
                    @if let Some(ms) = d["duration_ms"].as_f64() { span class="meta" { (format!("{ms:.1} ms")) } }
                    @if let Some(rows) = d["rows"].as_i64() { span class="meta" { (counted(rows, "row")) } }
                    @if let Some(cmd) = d["command"].as_str() { span class="meta" { (cmd) } }
                    @let (masked, _) = masked_counts(d);
                    @if masked > 0 { span class="meta" { (badge("masked")) " " (counted(masked, "value")) } }
                } @else if decision == "allow" && r["action"] != "connect" {
                    span class="meta" { "running, or no result recorded" }
                }
            }
            pre class="statement" { (text) }
            @if !params.is_empty() {
                p class="meta" { "Parameters: " @for (i, p) in params.iter().enumerate() { code { "$" (i + 1) "=" (p) } " " } }
            }
            @if !policies.is_empty() {
                p class="meta" { "Decided by: " @for p in &policies { code { (p) } " " } }
            }
            @if let Some(by) = r["approved_by"].as_array() {
                p class="meta" { "Approved by " (by.iter().map(text_of).collect::<Vec<_>>().join(", ")) " (review " code { (text_of(&r["grant"])) } ")" }
            }
            @if let Some(m) = r["message"].as_str() { p class="meta" { (m) } }
            @if let Some(res) = s.result {
                @let d = &res.data;
                @if let Some(e) = d["error"].as_str() { p class="error" { (e) } }
                @let (_, lines) = masked_counts(d);
                @if !lines.is_empty() {
                    details { summary { "Masked values" } ul { @for l in &lines { li { code { (l) } } } } }
                }
                @if let Some(sample) = d["response_sample"].as_str() {
                    details { summary { "Response sample (masked)" } pre { (sample) } }
                }
                @if let Some(sample) = d["request_sample"].as_str() {
                    details { summary { "Request sample (masked)" } pre { (sample) } }
                }
            }
        }
    }
}

/// An event that is not a request: the session's start and end, and whatever other kinds
/// (sign-in refusals, terminal output of later adapters) are recorded.
fn other(e: &EventView) -> Markup {
    let summary = match e.kind.as_str() {
        "session.start" => format!(
            "started{}{}",
            e.data["client_addr"].as_str().map(|a| format!(" from {a}")).unwrap_or_default(),
            if e.data["tls"].as_bool() == Some(true) { " over TLS" } else { "" }
        ),
        "session.end" => format!("ended: {}", text_of(&e.data["reason"])),
        _ => e.data.to_string(),
    };
    html! {
        li class="event" data-seq=(e.seq) {
            time { (when_text(&e.time)) }
            span class="kind" { (e.kind) }
            span { (summary) }
        }
    }
}

pub async fn show(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(search): Query<Search>,
) -> Response {
    let detail =
        crate::api::sessions::show(State(app.clone()), Caller(viewer.identity.clone()), Path(id.clone())).await;
    let SessionDetail { session: s, events } = match detail {
        Ok(axum::Json(d)) => d,
        Err(e) => return failed(&viewer, &e),
    };
    let needle = search.q.trim().to_lowercase();
    let results: std::collections::HashMap<i64, &EventView> = events
        .iter()
        .filter(|e| e.kind == "request.result")
        .filter_map(|e| e.data["request_seq"].as_i64().map(|seq| (seq, e)))
        .collect();
    let mut shown = 0usize;
    let mut items = vec![];
    for e in &events {
        match e.kind.as_str() {
            "request.result" => {}
            "request" => {
                let text = e.data["request"].as_str().unwrap_or_default().to_lowercase();
                if needle.is_empty() || text.contains(&needle) {
                    shown += 1;
                    items.push(step(&Step { request: e, result: results.get(&e.seq).copied() }));
                }
            }
            _ if needle.is_empty() => items.push(other(e)),
            _ => {}
        }
    }
    let title = format!("Session {}", s.id);
    let body = html! {
        dl class="facts" {
            dt { "Identity" } dd { (s.identity) " (" (s.identity_kind) ")" }
            dt { "Connection" } dd { (s.connection.as_deref().unwrap_or("—")) }
            dt { "Protocol" } dd { (s.protocol) }
            dt { "From" } dd { (s.client_addr.as_deref().unwrap_or("—")) }
            dt { "Started" } dd { (when_text(&s.started_at)) }
            dt { "Ended" } dd {
                @if let Some(end) = &s.ended_at { (when_text(end)) ": " (s.end_reason.as_deref().unwrap_or("")) }
                @else { (badge("live")) }
            }
            dt { "Requests" } dd { (s.requests) ", " (s.denied) " not allowed, " (s.reviewed) " held for review, " (s.masked) " values masked" }
        }
        @if s.live && viewer.may(&app, Area::Sessions) {
            form method="post" action=(format!("/console/sessions/{}/kill", s.id)) class="inline" {
                (csrf_field(&viewer))
                button type="submit" class="danger" { "End this session" }
            }
        }
        form class="filters" method="get" role="search" aria-label="Search the statements" {
            div class="field" {
                label for="q" { "Search statements" }
                input id="q" name="q" type="search" value=(search.q);
            }
            div class="field actions" { button type="submit" { "Search" } }
        }
        @if !needle.is_empty() { p class="hint" { (shown) " requests match." } }
        h2 { "Timeline" }
        ol class="timeline" data-test="timeline" { @for item in items { (item) } }
    };
    respond(StatusCode::OK, page(Some(&viewer), &title, Section::Sessions, body))
}

pub async fn kill(State(app): State<AppState>, Path(id): Path<String>, posted: Posted<NoFields>) -> Response {
    let viewer = posted.viewer;
    match crate::api::sessions::kill(State(app), Caller(viewer.identity.clone()), Path(id.clone())).await {
        Ok(_) => Redirect::to(&format!("/console/sessions/{id}")).into_response(),
        Err(e) => failed(&viewer, &e),
    }
}
