//! Reviews: pending first, each with the exact request, who asked, why it was held and by which
//! policy; approve or deny with a comment. The buttons show only to eligible approvers, and every
//! vote goes through the same check as the API's, whatever the page showed.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use gatehouse_store::ReviewStatus;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::{Flash, Posted, Section, Viewer, badge, csrf_field, done, failed, section_page, when_text};
use crate::api::{ApiError, AppState};

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    status: String,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// One review as a card; `may` is `Ok` when the viewer may vote on it, else why not.
fn card(viewer: &Viewer, r: &Value, may: &Result<(), String>) -> Markup {
    let id = r["id"].as_str().unwrap_or_default();
    let status = r["status"].as_str().unwrap_or("?");
    let approvers: Vec<String> = r["approvers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    format!("{} (quorum {})", x["group"].as_str().unwrap_or("?"), x["quorum"].as_u64().unwrap_or(1))
                })
                .collect()
        })
        .unwrap_or_default();
    html! {
        article class=(format!("review review-{status}")) id=(format!("review-{id}")) data-review=(id) aria-labelledby=(format!("h-{id}")) {
            header {
                h2 id=(format!("h-{id}")) {
                    (badge(status)) " "
                    @if r["kind"] == "access" {
                        "Access to group " code { (r["group"].as_str().unwrap_or("?")) }
                        " for " (r["duration_seconds"].as_i64().unwrap_or(0) / 60) " minutes"
                    } @else {
                        "Request on " code { (r["connection"].as_str().unwrap_or("—")) }
                    }
                }
                p class="meta" {
                    "Review " code { (id) } " · asked by " strong data-test="requester" { (r["requester"].as_str().unwrap_or("?")) }
                    " at " (when_text(r["created_at"].as_str().unwrap_or_default()))
                    @if status == "pending" { " · expires " (when_text(r["expires_at"].as_str().unwrap_or_default())) }
                }
            }
            @if let Some(request) = r["request"].as_str().filter(|t| !t.is_empty()) {
                pre class="statement" data-test="request" { (request) }
            }
            @let params = strings(&r["params"]);
            @if !params.is_empty() {
                p class="meta" { "Parameters: " @for (i, p) in params.iter().enumerate() { code { "$" (i + 1) "=" (p) } " " } }
            }
            dl class="facts" {
                dt { "Reason" } dd { (r["reason"].as_str().unwrap_or("")) }
                dt { "Policy" } dd { @for p in strings(&r["policies"]) { code { (p) } " " } }
                dt { "Approvers" } dd { (approvers.join(", ")) }
                @if let Some(session) = r["session_id"].as_str() {
                    dt { "Session" } dd { a href=(format!("/console/sessions/{session}")) { (session) } }
                }
            }
            @if let Some(votes) = r["votes"].as_array().filter(|v| !v.is_empty()) {
                ul class="votes" {
                    @for v in votes {
                        li {
                            (badge(v["decision"].as_str().unwrap_or("?"))) " by " (v["approver"].as_str().unwrap_or("?"))
                            " at " (when_text(v["at"].as_str().unwrap_or_default()))
                            @if let Some(c) = v["comment"].as_str().filter(|c| !c.is_empty()) { ": " q { (c) } }
                        }
                    }
                }
            }
            @if status == "pending" {
                @match may {
                    Ok(()) => {
                        form method="post" class="vote" {
                            (csrf_field(viewer))
                            label for=(format!("comment-{id}")) { "Comment" }
                            textarea id=(format!("comment-{id}")) name="comment" rows="2" {}
                            div class="buttons" {
                                button type="submit" class="primary" formaction=(format!("/console/reviews/{id}/approve")) { "Approve" }
                                button type="submit" class="danger" formaction=(format!("/console/reviews/{id}/deny")) { "Deny" }
                            }
                        }
                    }
                    Err(why) => { p class="hint" data-test="not-eligible" { (why) } }
                }
            }
        }
    }
}

async fn render(app: &AppState, viewer: &Viewer, q: &ListQuery, flash: &str, problem: Option<&ApiError>) -> Response {
    let status = (!q.status.is_empty()).then(|| q.status.clone());
    let params = crate::api::reviews::ListParams { status, limit: Some(200) };
    let records = match crate::api::reviews::visible_list(app, &viewer.identity, params).await {
        Ok(records) => records,
        Err(e) => return failed(viewer, &e),
    };
    let now = gatehouse_audit::now_ms();
    let mut cards = vec![];
    for record in &records {
        let view = crate::reviews::view(record);
        // Only a pending review can be voted on; the reason a decided one cannot is not shown.
        let may = match crate::reviews::obstacle(record, &viewer.identity, now, "approve").0 {
            None => Ok(()),
            Some(e) => Err(e.to_string()),
        };
        cards.push(card(viewer, &view, &may));
    }
    let pending = records.iter().filter(|r| r.status == ReviewStatus::Pending).count();
    let body = html! {
        @if let Some(e) = problem { p class="error" role="alert" data-test="vote-error" { (e.to_string()) } }
        @if !flash.is_empty() { p class="notice" role="status" data-test="vote-done" { (flash) } }
        form class="filters" method="get" action="/console/reviews" {
            div class="field" {
                label for="status" { "Status" }
                select id="status" name="status" {
                    @for (value, text) in [("", "all, pending first"), ("pending", "pending"), ("approved", "approved"), ("denied", "denied"), ("expired", "expired")] {
                        option value=(value) selected[value == q.status] { (text) }
                    }
                }
            }
            div class="field actions" { button type="submit" { "Show" } }
        }
        p class="hint" id="live-status" aria-live="polite" data-refresh="10" { (pending) " pending." }
        @if records.is_empty() { p class="empty" { "No reviews." } }
        @for c in cards { (c) }
    };
    section_page(viewer, "Reviews", Section::Reviews, problem, body)
}

pub async fn list(
    State(app): State<AppState>,
    viewer: Viewer,
    Flash(flash): Flash,
    Query(q): Query<ListQuery>,
) -> Response {
    render(&app, &viewer, &q, &flash, None).await
}

#[derive(Debug, Deserialize)]
pub struct VoteForm {
    #[serde(default)]
    comment: String,
}

async fn vote(app: AppState, id: String, posted: Posted<VoteForm>, approve: bool) -> Response {
    let viewer = posted.viewer;
    match crate::reviews::vote(&app, &viewer.identity, &id, approve, posted.form.comment.trim()).await {
        Ok(review) => {
            let verb = if approve { "approved" } else { "denied" };
            let outcome = if review.status == ReviewStatus::Pending {
                format!("You {verb} review {id}; it waits for more approvals.")
            } else {
                format!("You {verb} review {id}; it is now {}.", review.status.as_str())
            };
            done(&app, "/console/reviews", &outcome)
        }
        Err(e) => render(&app, &viewer, &ListQuery::default(), "", Some(&e)).await,
    }
}

pub async fn approve(State(app): State<AppState>, Path(id): Path<String>, posted: Posted<VoteForm>) -> Response {
    vote(app, id, posted, true).await
}

pub async fn deny(State(app): State<AppState>, Path(id): Path<String>, posted: Posted<VoteForm>) -> Response {
    vote(app, id, posted, false).await
}
