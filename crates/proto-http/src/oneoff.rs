//! One request for callers without an HTTP client of their own (the exec API, agents' tools): it
//! runs through the same path as the listener's requests (normalised path, decision, review,
//! recording, credential, masking) in a session of its own, and the answer is collected up to a
//! size.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use gatehouse_core::pipeline::Pipeline;
use http::{HeaderMap, Method, Request};
use http_body_util::BodyExt as _;

use crate::{ListenerConfig, Refusal, Sessions, Shared, Upstreams};

/// The request.
#[derive(Debug, Clone)]
pub struct OneOff {
    pub method: Method,
    /// The path below the connection, with its leading `/` (percent-encoded where needed).
    pub path: String,
    /// The query string, without `?`.
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The upstream's answer, masked as the listener would send it.
#[derive(Debug, Clone)]
pub struct OneOffAnswer {
    /// The session it was recorded in.
    pub session_id: String,
    pub status: u16,
    pub headers: HeaderMap,
    /// At most the size asked for.
    pub body: Bytes,
    /// The body was longer; the rest was not read.
    pub truncated: bool,
}

/// Runs `request` on HTTP connection `connection` as the caller behind `token`, reading at
/// most `max_body` bytes of the answer. `via` is recorded with the session (`exec`, `mcp`).
#[allow(clippy::too_many_arguments)]
pub async fn exec<P: Pipeline>(
    pipeline: Arc<P>,
    config: Arc<ListenerConfig>,
    upstreams: Arc<Upstreams>,
    token: &str,
    client_addr: Option<SocketAddr>,
    connection: &str,
    via: &'static str,
    request: OneOff,
    max_body: usize,
) -> Result<OneOffAnswer, Refusal> {
    let started = Instant::now();
    if !request.path.starts_with('/') {
        return Err(Refusal::bad_request(format!("the path {:?} must start with /", request.path)));
    }
    let routed = crate::path::route(&format!("/{connection}{}", request.path))
        .map_err(|e| Refusal::bad_request(format!("{e}: {}", request.path)))?;
    if routed.connection != connection {
        return Err(Refusal::bad_request(format!("the path {:?} leaves its connection", request.path)));
    }
    let shared = Arc::new(Shared { pipeline, config, upstreams });
    let sessions = Arc::new(Sessions { open: Mutex::new(HashMap::new()), tunnels: Mutex::default() });
    let session = crate::session(&shared, &sessions, token.to_string(), connection, client_addr, true, via).await?;
    let mut uri = format!("/{connection}{}", request.path);
    if let Some(q) = request.query.as_deref().filter(|q| !q.is_empty()) {
        uri.push('?');
        uri.push_str(q);
    }
    let mut builder = Request::builder().method(request.method).uri(&uri);
    if let Some(h) = builder.headers_mut() {
        *h = request.headers;
    }
    let req = builder
        .body(http_body_util::Full::new(request.body))
        .map_err(|e| Refusal::bad_request(format!("the request is not valid: {e}")))?;
    let result = crate::request::run(&shared, &session, req, routed, client_addr, true, started).await;
    let answer = match result {
        Ok(response) => {
            let (parts, mut body) = response.into_parts();
            let mut collected = BytesMut::new();
            let mut truncated = false;
            let mut failed = None;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Ok(data) = frame.into_data() {
                            let room = max_body.saturating_sub(collected.len());
                            if data.len() > room {
                                collected.extend_from_slice(&data[..room]);
                                truncated = true;
                                break;
                            }
                            collected.extend_from_slice(&data);
                        }
                    }
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            drop(body);
            match failed {
                Some(e) => Err(Refusal::upstream(e)),
                None => Ok(OneOffAnswer {
                    session_id: session.id.clone(),
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body: collected.freeze(),
                    truncated,
                }),
            }
        }
        Err(refusal) => Err(refusal),
    };
    let open: Vec<_> = sessions.lock().drain().map(|(_, s)| s).collect();
    for s in open {
        shared.pipeline.close(&s, "the request was answered").await;
    }
    answer
}
