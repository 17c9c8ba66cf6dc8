//! Reviews: list and show them, approve or deny them, and ask for time-bound group access.
//! Anyone authenticated sees the reviews they asked for or may decide; members of `admins` and
//! holders of `api.read` on `Api::"reviews"` see all. Who may decide is checked on every vote,
//! whatever the client shows: a vote by someone else is refused (403) and recorded.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gatehouse_core::Identity;
use gatehouse_store::{ReviewFilter, ReviewRecord, ReviewStatus};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState, Body, Caller, ErrorBody, Params};
use crate::app::Area;
use crate::reviews;

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListParams {
    /// `pending`, `approved`, `denied` or `expired`.
    pub status: Option<String>,
    /// At most this many (default 50, at most 1000); pending ones first, then newest first.
    pub limit: Option<usize>,
}

/// Whether `caller` may see `review`: their own, one they may decide, or any with the right.
fn visible(caller: &Identity, sees_all: bool, review: &ReviewRecord) -> bool {
    sees_all
        || (review.requester == caller.name && review.requester_kind == caller.kind)
        || review.approvers.iter().any(|a| caller.groups.contains(&a.group))
}

fn sees_all(app: &AppState, caller: &Identity) -> bool {
    app.authorize(caller, Area::Reviews, false).is_ok()
}

#[utoipa::path(get, path = "/api/v1/reviews", tag = "reviews", params(ListParams),
    responses((status = 200, description = "reviews, pending first", body = [Object]), (status = 422, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Params(params): Params<ListParams>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    Ok(Json(visible_list(&app, &caller, params).await?.iter().map(reviews::view).collect()))
}

/// The reviews `caller` may see, pending first, then newest first.
pub(crate) async fn visible_list(
    app: &AppState,
    caller: &Identity,
    params: ListParams,
) -> Result<Vec<ReviewRecord>, ApiError> {
    let limit = params.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    let status = match params.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(ReviewStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(format!("status {s:?} is not one of pending, approved, denied, expired"))
        })?),
    };
    let all = sees_all(app, caller);
    // Read more than asked when filtering by visibility, so a page is rarely short.
    let fetch = if all { limit } else { (limit * 4).min(4000) };
    let mut found = app.store.list_reviews(ReviewFilter { status, requester: None, limit: fetch }).await?;
    found.retain(|r| visible(caller, all, r));
    found.sort_by_key(|r| (r.status != ReviewStatus::Pending, -r.created_at));
    found.truncate(limit);
    Ok(found)
}

async fn visible_review(app: &AppState, caller: &Identity, id: &str) -> Result<ReviewRecord, ApiError> {
    let review = app.store.get_review(id).await?;
    match review {
        Some(r) if visible(caller, sees_all(app, caller), &r) => Ok(r),
        _ => Err(ApiError::NotFound(format!("review {id:?} not found"))),
    }
}

#[utoipa::path(get, path = "/api/v1/reviews/{id}", tag = "reviews",
    params(("id" = String, Path, description = "review id")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(reviews::view(&visible_review(&app, &caller, &id).await?)))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Comment {
    /// Why; recorded with the decision and shown to the requester on a denial.
    #[serde(default)]
    pub comment: String,
}

#[utoipa::path(post, path = "/api/v1/reviews/{id}/approve", tag = "reviews", request_body = Comment,
    params(("id" = String, Path, description = "review id")),
    responses((status = 200, description = "the review after this approval", body = Object),
        (status = 403, description = "not an eligible approver (the requester, or in no approver group)", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "already decided, expired, or already voted", body = ErrorBody)))]
pub async fn approve(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Body(body): Body<Comment>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(reviews::view(&reviews::vote(&app, &caller, &id, true, &body.comment).await?)))
}

#[utoipa::path(post, path = "/api/v1/reviews/{id}/deny", tag = "reviews", request_body = Comment,
    params(("id" = String, Path, description = "review id")),
    responses((status = 200, description = "the denied review", body = Object),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn deny(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Body(body): Body<Comment>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(reviews::view(&reviews::vote(&app, &caller, &id, false, &body.comment).await?)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    /// A group declared requestable in `[access.groups]`.
    pub group: String,
    /// How long, e.g. `1h`, `30m`; at most the group's `max`.
    #[serde(rename = "for")]
    pub duration: String,
    pub reason: String,
}

#[utoipa::path(post, path = "/api/v1/access/requests", tag = "reviews", request_body = AccessRequest,
    responses((status = 201, description = "the review of the request", body = Object),
        (status = 403, description = "the group is not requestable", body = ErrorBody),
        (status = 409, description = "already a member", body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn request_access(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Body(body): Body<AccessRequest>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let duration = humantime::parse_duration(&body.duration)
        .map_err(|e| ApiError::invalid(format!("for {:?} is not a duration like 1h or 30m: {e}", body.duration)))?;
    let review = reviews::request_access(&app, &caller, &body.group, duration, &body.reason).await?;
    Ok((StatusCode::CREATED, Json(reviews::view(&review))))
}
