//! One request through the gateway: described for policy, decided (and held for review when
//! policy says so), recorded, forwarded with the connection's credential, and answered with
//! the upstream's response, masked on its way back.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt as _;
use gatehouse_core::pipeline::{OpenedSession, Pipeline, Request as Described, RequestResult, Verdict};
use gatehouse_core::{Outcome, Resource};
use gatehouse_mask::{JsonMasker, JsonPath, Masker};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::json;

use crate::body::{BodyMasker, Encoding, Relayed, Sampler};
use crate::path::RoutedPath;
use crate::{Body, BoxError, Refusal, Shared};

/// The policy action of an HTTP method. `HEAD` and `OPTIONS` read like `GET`; other methods
/// (`TRACE`, `CONNECT`, extensions) are refused.
fn action(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => "http.get",
        Method::POST => "http.post",
        Method::PUT => "http.put",
        Method::PATCH => "http.patch",
        Method::DELETE => "http.delete",
        _ => return None,
    })
}

/// What masks a connection's responses.
#[derive(Clone)]
pub(crate) struct Masking {
    pub text: Option<Arc<Masker>>,
    pub json: Option<Arc<JsonMasker>>,
}

/// A connection's detectors and JSON-path rules, as its settings list them.
type MaskSettings = (Vec<String>, Vec<String>);

/// Maskers built once per set of settings (building compiles patterns).
#[derive(Default)]
pub(crate) struct Maskers(Mutex<HashMap<MaskSettings, Masking>>);

fn masking(maskers: &Maskers, session: &OpenedSession) -> Result<Masking, String> {
    let key = (session.mask.clone(), session.mask_columns.clone());
    if let Some(m) = maskers.0.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(m.clone());
    }
    let text = if session.mask.is_empty() {
        None
    } else {
        Some(Arc::new(gatehouse_mask::masker_from_settings(&session.mask).map_err(|e| e.to_string())?))
    };
    let rules = session
        .mask_columns
        .iter()
        .map(|p| JsonPath::parse(p).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let json = (text.is_some() || !rules.is_empty()).then(|| Arc::new(JsonMasker::new(text.clone(), rules)));
    let m = Masking { text, json };
    maskers.0.lock().unwrap_or_else(|p| p.into_inner()).insert(key, m.clone());
    Ok(m)
}

/// The query string with each value masked by the connection's detectors, for the record.
fn recorded_query(query: &str, masker: Option<&Masker>) -> String {
    let Some(masker) = masker else { return query.to_string() };
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => {
                let decoded = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                let masked = masker.mask(&decoded);
                if masked.is_changed() { format!("{k}={}", masked.text()) } else { pair.to_string() }
            }
            None => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn query_keys(query: &str) -> BTreeSet<String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(k, _)| k))
        .map(|k| percent_encoding::percent_decode_str(k).decode_utf8_lossy().into_owned())
        .collect()
}

/// Identifies the exact request for a review's grant: method, path, query and (when held back)
/// the body, as the caller sent them.
fn digest(method: &Method, path: &str, query: Option<&str>, body: Option<&[u8]>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"http request\0");
    ctx.update(method.as_str().as_bytes());
    ctx.update(b"\0");
    ctx.update(path.as_bytes());
    ctx.update(b"\0");
    ctx.update(query.unwrap_or_default().as_bytes());
    if let Some(body) = body {
        ctx.update(b"\0body\0");
        ctx.update(body);
    }
    hex::encode(ctx.finish())
}

/// Segments that look like ids (they hold a digit) become `?`, so requests group by shape.
fn fingerprint(method: &Method, segments: &[String]) -> String {
    let shape: Vec<&str> =
        segments.iter().map(|s| if s.chars().any(|c| c.is_ascii_digit()) { "?" } else { s.as_str() }).collect();
    format!("{method} /{}", shape.join("/"))
}

fn describe(
    method: &Method,
    routed: &RoutedPath,
    query: Option<&str>,
    headers: &http::HeaderMap,
    connection: &str,
    masker: Option<&Masker>,
) -> (Described, Resource) {
    let resource = if routed.segments.is_empty() {
        Resource::Connection { connection: connection.to_string() }
    } else {
        Resource::Path { connection: connection.to_string(), path: routed.segments.join("/") }
    };
    let path = routed.decoded();
    let mut text = format!("{method} {path}");
    if let Some(q) = query {
        text.push('?');
        text.push_str(&recorded_query(q, masker));
    }
    let mut context = serde_json::Map::new();
    context.insert("method".into(), json!(method.as_str()));
    context.insert("path".into(), json!(path));
    context.insert("segments".into(), json!(routed.segments));
    context.insert("query_keys".into(), json!(query.map(query_keys).unwrap_or_default()));
    if let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        context.insert("content_type".into(), json!(ct.split(';').next().unwrap_or_default().trim()));
    }
    if let Some(n) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<i64>().ok()) {
        context.insert("body_size".into(), json!(n));
    }
    let action = action(method).unwrap_or("http.get");
    let described = Described {
        text,
        fingerprint: Some(fingerprint(method, &routed.segments)),
        accesses: vec![(action.to_string(), resource.clone())],
        note: None,
        context,
        params: Vec::new(),
        digest: digest(method, &routed.encoded, query, None),
    };
    (described, resource)
}

/// The request body: streamed, or held back (to identify a request that needs review).
pub(crate) enum Upload<B> {
    Streamed(B),
    Held(Bytes),
}

async fn hold_back<B>(body: B, max: usize) -> Result<Bytes, Refusal>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let limited = http_body_util::Limited::new(body, max);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid",
            format!("this request needs review, and its body is larger than the {max} bytes a held request may have"),
        )),
        Err(e) => Err(Refusal::bad_request(format!("the request body could not be read: {e}"))),
    }
}

fn refused<P: Pipeline>(shared: &Shared<P>, session: &OpenedSession, verdict: &Verdict, why: &str) {
    let result = RequestResult { error: Some(why.to_string()), ..Default::default() };
    shared.pipeline.finish(session, verdict.seq, result);
}

/// A request policy let through (approved, if it needed review), recorded and ready to forward.
pub(crate) struct Admitted<B> {
    pub seq: i64,
    pub resource: Resource,
    pub masks: Masking,
    pub upload: Upload<B>,
}

/// Describes a request, decides it, holds it for review if policy says so, and records it.
pub(crate) async fn admit<P: Pipeline, B>(
    shared: &Arc<Shared<P>>,
    session: &Arc<OpenedSession>,
    method: &Method,
    routed: &RoutedPath,
    query: Option<&str>,
    headers: &http::HeaderMap,
    body: B,
) -> Result<Admitted<B>, Refusal>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if action(method).is_none() {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{method} requests are not forwarded: policy decides GET, HEAD, OPTIONS, POST, PUT, PATCH and DELETE"
            ),
        ));
    }
    let masks = masking(&shared.upstreams.maskers, session)
        .map_err(|e| Refusal::unavailable(format!("the connection's masking is invalid: {e}")))?;
    let (mut described, resource) =
        describe(method, routed, query, headers, &session.connection, masks.text.as_deref());
    // A request that needs review is identified by its exact body, so that body is held back.
    // A request without a body has nothing to hold back, and needs no check ahead.
    let bodiless = body.is_end_stream() || body.size_hint().exact() == Some(0);
    let upload = if bodiless {
        described.digest = digest(method, &routed.encoded, query, Some(b""));
        Upload::Held(Bytes::new())
    } else if shared.pipeline.check(session, &described).await.outcome == Outcome::Review {
        let held = hold_back(body, shared.config.max_review_body).await?;
        described.digest = digest(method, &routed.encoded, query, Some(&held));
        Upload::Held(held)
    } else {
        Upload::Streamed(body)
    };
    let verdict = shared.pipeline.authorize(session, &described).await.map_err(|e| {
        Refusal::unavailable(format!("the gateway cannot record this request, so it was not sent: {e}"))
    })?;
    if let Some(message) = &verdict.limited {
        refused(shared, session, &verdict, "refused: rate limit");
        return Err(Refusal {
            retry_after: Some(1),
            ..Refusal::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        });
    }
    let verdict = match (&verdict.decision.outcome, verdict.held.clone(), &upload) {
        (Outcome::Allow, _, _) => verdict,
        (Outcome::Review, Some(hold), Upload::Held(_)) => {
            match shared.pipeline.hold(session, &hold, &described).await {
                Ok(approved) => approved,
                Err(ended) => {
                    refused(shared, session, &verdict, &format!("refused: {}", ended.message));
                    let (code, message) = if ended.pending {
                        (
                            "review_pending",
                            format!("{}; send the same request again once it is approved", ended.message),
                        )
                    } else {
                        ("forbidden", ended.message)
                    };
                    return Err(Refusal {
                        review_id: Some(hold.review_id),
                        ..Refusal::new(StatusCode::FORBIDDEN, code, message)
                    });
                }
            }
        }
        (Outcome::Review, Some(hold), Upload::Streamed(_)) => {
            // Policy changed between the check and the decision: the body was not held back,
            // so this request cannot be the one a review approves. The caller sends it again.
            refused(shared, session, &verdict, "refused: needs review");
            return Err(Refusal {
                review_id: Some(hold.review_id),
                ..Refusal::new(StatusCode::FORBIDDEN, "review_pending", "this request now needs review: send it again")
            });
        }
        _ => {
            refused(shared, session, &verdict, "refused");
            return Err(Refusal {
                policies: verdict.decision.policies.clone(),
                ..Refusal::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("permission denied: {}", verdict.decision.explain()),
                )
            });
        }
    };
    Ok(Admitted { seq: verdict.seq, resource, masks, upload })
}

pub(crate) async fn run<P: Pipeline, B>(
    shared: &Arc<Shared<P>>,
    session: &Arc<OpenedSession>,
    req: Request<B>,
    routed: RoutedPath,
    peer: Option<SocketAddr>,
    tls: bool,
    started: Instant,
) -> Result<Response<Body>, Refusal>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let method = req.method().clone();
    let query = req.uri().query().map(String::from);
    let (parts, body) = req.into_parts();
    let admitted = admit(shared, session, &method, &routed, query.as_deref(), &parts.headers, body).await?;
    let Admitted { seq, resource, masks, upload } = admitted;
    let finish_with = |status: Option<u16>, error: String| {
        let result = RequestResult {
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            command: status.map(|s| s.to_string()),
            error: Some(error),
            ..Default::default()
        };
        shared.pipeline.finish(session, seq, result);
    };
    let target = &session.upstream;
    let Some(base) = target.url.as_deref() else {
        finish_with(None, "the connection has no URL".into());
        return Err(Refusal::unavailable(format!("connection {:?} has no URL", session.connection)));
    };
    let upstream = shared
        .upstreams
        .clients
        .get(base, target.ca_file.as_deref(), shared.config.connect_timeout, shared.config.read_timeout)
        .map_err(|e| {
            finish_with(None, e.clone());
            Refusal::unavailable(e)
        })?;
    let masking_applies =
        (masks.text.is_some() || masks.json.is_some()) && !(shared.pipeline.may_unmask(session, &resource).await);
    let mut headers = upstream_headers(session, &parts.headers, peer, tls).map_err(|e| {
        finish_with(None, e.clone());
        Refusal::bad_request(e)
    })?;
    if masking_applies {
        // Only encodings the gateway can decode to mask.
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, deflate, br"));
    }
    let url = upstream.url(&routed.encoded, query.as_deref());
    let bytes_in = Arc::new(AtomicU64::new(0));
    let sample_bytes = shared.config.sample_bytes;
    let sampler = (sample_bytes > 0).then(|| Sampler::new(sample_bytes, masks.text.clone()));
    let body = match upload {
        Upload::Held(bytes) => {
            bytes_in.store(bytes.len() as u64, Ordering::Relaxed);
            if let Some(s) = &sampler {
                s.request(&bytes);
            }
            reqwest::Body::from(bytes)
        }
        Upload::Streamed(incoming) => {
            let (counter, sampler) = (bytes_in.clone(), sampler.clone());
            let stream = http_body_util::BodyDataStream::new(incoming).map(move |chunk| {
                let chunk = chunk.map_err(Into::into);
                if let Ok(c) = &chunk {
                    counter.fetch_add(c.len() as u64, Ordering::Relaxed);
                    if let Some(s) = &sampler {
                        s.request(c);
                    }
                }
                chunk
            });
            reqwest::Body::wrap_stream(stream)
        }
    };
    let response = match upstream.client.request(method.clone(), url).headers(headers).body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            let why = format!("the upstream did not answer: {}", error_chain(&e));
            finish_with(None, why.clone());
            return Err(if e.is_timeout() { Refusal::timeout(why) } else { Refusal::upstream(why) });
        }
    };
    let status = response.status();
    let no_body = method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let content_type =
        response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body_masker = if masking_applies && !no_body {
        BodyMasker::for_type(&content_type, masks.text.as_ref(), &masks.json)
    } else {
        None
    };
    let encoding = if body_masker.is_some() {
        let header = response.headers().get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
        match Encoding::parse(header) {
            Some(e) => e,
            None => {
                let why = format!(
                    "the response is {}-encoded, which the gateway cannot decode to mask",
                    header.unwrap_or("?")
                );
                finish_with(Some(status.as_u16()), why.clone());
                return Err(Refusal::upstream(why));
            }
        }
    } else {
        Encoding::Identity
    };
    let rewritten = body_masker.is_some();
    let mut out = Response::builder().status(status);
    if let Some(h) = out.headers_mut() {
        *h = crate::headers::downstream(response.headers(), rewritten);
    }
    let (pipeline, finished_session) = (shared.pipeline.clone(), session.clone());
    let finisher = Box::new(move |result: RequestResult| pipeline.finish(&finished_session, seq, result));
    let upstream_body = crate::body::decoded(response, encoding);
    let body =
        Relayed::new(upstream_body, body_masker, finisher, started, status.as_u16(), bytes_in, sampler).boxed_unsync();
    out.body(body).map_err(|e| Refusal::upstream(format!("the upstream's answer could not be relayed: {e}")))
}

/// The headers to send upstream for a caller's request on `session` (see [`crate::headers`]).
pub(crate) fn upstream_headers(
    session: &OpenedSession,
    caller: &http::HeaderMap,
    peer: Option<SocketAddr>,
    tls: bool,
) -> Result<http::HeaderMap, String> {
    let target = &session.upstream;
    let identity = session.identity.entity_ref();
    let forwarded = crate::headers::Forwarded {
        client_ip: peer.map(|p| p.ip().to_string()),
        proto: if tls { "https" } else { "http" },
        host: caller.get(header::HOST).and_then(|h| h.to_str().ok()).map(String::from),
        identity: &identity,
    };
    crate::headers::upstream(caller, &target.form, target.user.as_deref(), target.password.as_deref(), &forwarded)
}

/// An error with its causes, for messages (reqwest's own message omits them).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_the_sha256_hex_of_the_request() {
        // As Python's hashlib computes them.
        assert_eq!(
            digest(&Method::GET, "/v1/invoices", Some("a=1"), None),
            "f09f35e00411b05196b146ea9a408432ff4c13524aff752d339f070ae0bd8941"
        );
        assert_eq!(
            digest(&Method::POST, "/v1/x", None, Some(b"{}")),
            "306055a208c305235bd117c47708c0c5fa9966c26a00791229e45e5f615fc765"
        );
    }
}
