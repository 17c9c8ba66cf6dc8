//! Upgraded connections (WebSocket): the upgrade request is decided, held and recorded like any
//! `GET`; once allowed, it is sent upstream (HTTP/1.1, with the stored credential) and, when
//! the upstream switches protocols, the two connections are joined byte for byte until either
//! side closes or the session must end. Messages on an upgraded connection cannot be masked,
//! so a connection whose answers would be masked for this caller refuses upgrades.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use gatehouse_core::pipeline::{OpenedSession, Pipeline, RequestResult};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::path::RoutedPath;
use crate::request::{Admitted, admit, upstream_headers};
use crate::{Body, Refusal, Sessions, Shared};

/// Whether a request asks to switch protocols (`Connection: upgrade` with `Upgrade`).
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn open<P: Pipeline>(
    shared: &Arc<Shared<P>>,
    sessions: &Arc<Sessions>,
    session: &Arc<OpenedSession>,
    mut req: Request<Incoming>,
    routed: RoutedPath,
    peer: SocketAddr,
    tls: bool,
    started: Instant,
) -> Result<Response<Body>, Refusal> {
    if req.method() != Method::GET {
        return Err(Refusal::bad_request("only a GET request may ask to switch protocols"));
    }
    let on_client = hyper::upgrade::on(&mut req);
    let query = req.uri().query().map(String::from);
    let (parts, body) = req.into_parts();
    let Admitted { seq, resource, masks, .. } =
        admit(shared, session, &Method::GET, &routed, query.as_deref(), &parts.headers, body).await?;
    let finish = {
        let (pipeline, session) = (shared.pipeline.clone(), session.clone());
        move |status: Option<u16>, error: Option<String>, bytes_in: u64, bytes_out: u64| {
            let result = RequestResult {
                duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                command: status.map(|s| s.to_string()),
                error,
                bytes_in,
                bytes_out,
                ..Default::default()
            };
            pipeline.finish(&session, seq, result);
        }
    };
    if (masks.text.is_some() || masks.json.is_some()) && !shared.pipeline.may_unmask(session, &resource).await {
        let why = format!(
            "connection {:?} masks values, and messages on an upgraded (WebSocket) connection cannot be masked; refusing rather than passing them unmasked",
            session.connection
        );
        finish(None, Some(why.clone()), 0, 0);
        return Err(Refusal::new(StatusCode::NOT_IMPLEMENTED, "unsupported", why));
    }
    let target = &session.upstream;
    let Some(base) = target.url.as_deref() else {
        finish(None, Some("the connection has no URL".into()), 0, 0);
        return Err(Refusal::unavailable(format!("connection {:?} has no URL", session.connection)));
    };
    let upstream = shared
        .upstreams
        .clients
        .get(base, target.ca_file.as_deref(), shared.config.connect_timeout, shared.config.read_timeout)
        .map_err(Refusal::unavailable)?;
    let mut headers = upstream_headers(session, &parts.headers, Some(peer), tls).map_err(Refusal::bad_request)?;
    // The upgrade itself is hop-by-hop: asked again, by the gateway, on its own connection.
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(upgrade) = parts.headers.get(header::UPGRADE) {
        headers.insert(header::UPGRADE, upgrade.clone());
    }
    let url = upstream.url(&routed.encoded, query.as_deref());
    let response = match upstream.client.get(url).version(http::Version::HTTP_11).headers(headers).send().await {
        Ok(r) => r,
        Err(e) => {
            let why = format!("the upstream did not answer: {e}");
            finish(None, Some(why.clone()), 0, 0);
            return Err(if e.is_timeout() { Refusal::timeout(why) } else { Refusal::upstream(why) });
        }
    };
    let status = response.status();
    let mut out_headers = crate::headers::downstream(response.headers(), false);
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // Refused upstream: its answer streams back as it is (nothing here is masked), and is
        // recorded like any answer once it ends.
        let (pipeline, session) = (shared.pipeline.clone(), session.clone());
        let finisher = Box::new(move |result: RequestResult| pipeline.finish(&session, seq, result));
        let body = crate::body::Relayed::new(
            crate::body::decoded(response, crate::body::Encoding::Identity),
            None,
            finisher,
            started,
            status.as_u16(),
            Arc::default(),
            None,
        );
        let mut answer = Response::new(body.boxed_unsync());
        *answer.status_mut() = status;
        *answer.headers_mut() = out_headers;
        return Ok(answer);
    }
    if let Some(upgrade) = response.headers().get(header::UPGRADE).cloned() {
        out_headers.insert(header::UPGRADE, upgrade);
    }
    out_headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let upstream_io = match response.upgrade().await {
        Ok(io) => io,
        Err(e) => {
            let why = format!("the upstream's upgraded connection failed: {e}");
            finish(Some(101), Some(why.clone()), 0, 0);
            return Err(Refusal::upstream(why));
        }
    };
    let (pipeline, watched) = (shared.pipeline.clone(), session.clone());
    let relay = tokio::spawn(async move {
        let client_io = match on_client.await {
            Ok(io) => io,
            Err(e) => {
                finish(Some(101), Some(format!("the caller's upgraded connection failed: {e}")), 0, 0);
                return;
            }
        };
        let mut client_io = hyper_util::rt::TokioIo::new(client_io);
        let mut upstream_io = upstream_io;
        let ended = pipeline.ended(&watched);
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io) => match copied {
                Ok((to_upstream, to_caller)) => finish(Some(101), None, to_upstream, to_caller),
                Err(e) => finish(Some(101), Some(format!("the upgraded connection failed: {e}")), 0, 0),
            },
            reason = ended => finish(Some(101), Some(format!("cut: {reason}")), 0, 0),
        }
    });
    sessions.tunnels.lock().unwrap_or_else(|p| p.into_inner()).push(relay);
    let mut answer = Response::new(crate::empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *answer.headers_mut() = out_headers;
    Ok(answer)
}
