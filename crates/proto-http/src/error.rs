//! The gateway's own answers, in the shape the REST API uses:
//! `{"error": {"code": "...", "message": "...", ...}}` with the matching status.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt as _;

use crate::Body;

/// One refusal or failure of the gateway's, before or instead of the upstream's answer.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub policies: Vec<String>,
    pub review_id: Option<String>,
    pub retry_after: Option<u64>,
}

impl Refusal {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal { status, code, message: message.into(), policies: Vec::new(), review_id: None, retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn upstream(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", message)
    }

    pub fn timeout(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", message)
    }

    pub fn response(&self) -> Response<Body> {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if !self.policies.is_empty() {
            error["policies"] = serde_json::json!(self.policies);
        }
        if let Some(id) = &self.review_id {
            error["review_id"] = serde_json::json!(id);
        }
        let body = serde_json::json!({ "error": error }).to_string();
        let mut response =
            Response::new(http_body_util::Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync());
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&seconds.max(1).to_string())
        {
            headers.insert(header::RETRY_AFTER, v);
        }
        response
    }
}
