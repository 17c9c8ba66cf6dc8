//! The HTTP adapter: callers reach an HTTP API at `/CONNECTION/rest/of/path` with their own
//! bearer token, and never hold the API's key. Each request's path is normalised (so the path
//! decided is the path served), decided by the pipeline as `http.<method>` on
//! `Path::"CONNECTION/rest/of/path"`, held for review when policy says so, recorded, and
//! forwarded to the connection's URL with the stored credential injected and the caller's own
//! credentials, identity claims and method overrides removed. Bodies stream both ways; the
//! response is masked on its way back (JSON by detectors and JSON-path rules, other text by
//! detectors; compressed bodies are decoded to be masked).
//!
//! A caller's TCP connection keeps one gateway session per token and connection it uses, so a
//! keep-alive client is authenticated once. This crate knows no policy, storage or masking
//! rules of its own: it asks the [`Pipeline`] and uses `gatehouse-mask`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_core::pipeline::{OpenError, OpenRequest, OpenedSession, Pipeline};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

mod body;
mod error;
mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod headers;
mod oneoff;
pub mod path;
mod request;
mod tunnel;

pub use error::Refusal;
pub use oneoff::{OneOff, OneOffAnswer, exec};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every answer.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// How the listener behaves.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Serve HTTPS with this; `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Deadline for connecting to the upstream.
    pub connect_timeout: Duration,
    /// The longest the upstream may stay silent (before its answer, or within its body).
    pub read_timeout: Duration,
    /// The largest request body held back so a request that needs review is identified by its
    /// exact body (bigger ones are refused with 413 when they need review).
    pub max_review_body: usize,
    /// Record the first this many bytes of each request's and answer's body, masked (0: off).
    pub sample_bytes: usize,
    /// Connections kept open at once; callers beyond it get 503 (`None`: no limit).
    pub max_connections: Option<usize>,
}

/// The sessions one caller's TCP connection opened: one per token and connection.
struct Sessions {
    open: Mutex<HashMap<(String, String), Arc<OpenedSession>>>,
    /// Upgraded connections (WebSocket) still relaying: the sessions end after them.
    tunnels: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<OpenedSession>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Pooled upstream clients and built maskers, shared by the listener and one-off requests.
#[derive(Default)]
pub struct Upstreams {
    clients: forward::Clients,
    maskers: request::Maskers,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upstreams")
    }
}

/// What every request shares.
pub(crate) struct Shared<P: Pipeline> {
    pub pipeline: Arc<P>,
    pub config: Arc<ListenerConfig>,
    pub upstreams: Arc<Upstreams>,
}

/// Accepts callers until `shutdown` turns true, then stops accepting; open connections go on
/// until they end.
pub async fn serve<P: Pipeline>(
    listener: TcpListener,
    config: Arc<ListenerConfig>,
    pipeline: Arc<P>,
    upstreams: Arc<Upstreams>,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = Arc::new(Shared { pipeline, config, upstreams });
    let admission = gatehouse_core::admission::Admission::new(shared.config.max_connections);
    loop {
        let over = || shared.pipeline.over_limit("http", gatehouse_core::pipeline::Limit::ListenerConnections);
        let Some((stream, peer, admitted)) = admission.accept(&listener, &mut shutdown, over).await else { break };
        let shared = shared.clone();
        let counted = match admitted {
            gatehouse_core::admission::Admit::Serve(counted) => counted,
            gatehouse_core::admission::Admit::Refuse { counted, max } => {
                tokio::spawn(async move {
                    let _counted = counted;
                    busy(stream, max, shared).await;
                });
                continue;
            }
            gatehouse_core::admission::Admit::Drop => continue,
        };
        tokio::spawn(async move {
            let _counted = counted;
            connection(stream, peer, shared).await;
        });
    }
}

/// Answers every request of a connection over the limit with 503, then closes it.
async fn busy<P: Pipeline>(stream: TcpStream, max: usize, shared: Arc<Shared<P>>) {
    let refusal = Refusal {
        retry_after: Some(1),
        ..Refusal::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the gateway has its most connections open on this listener ({max}, http.max_connections)"),
        )
    };
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let mut response = refusal.response();
        response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let tls = shared.config.tls.clone();
    // A refused caller gets a few seconds to send its request and read the answer.
    let answer = async {
        let _ = match tls {
            Some(config) => match tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
                Ok(s) => builder.serve_connection(hyper_util::rt::TokioIo::new(s), service).await,
                Err(_) => return,
            },
            None => builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await,
        };
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), answer).await;
}

async fn connection<P: Pipeline>(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared<P>>) {
    let sessions = Arc::new(Sessions { open: Mutex::default(), tunnels: Mutex::default() });
    let tls = shared.config.tls.clone();
    let served = match tls {
        Some(config) => match tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
            Ok(s) => serve_connection(hyper_util::rt::TokioIo::new(s), peer, true, &shared, &sessions).await,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
        },
        None => serve_connection(hyper_util::rt::TokioIo::new(stream), peer, false, &shared, &sessions).await,
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
    let tunnels: Vec<_> = std::mem::take(&mut *sessions.tunnels.lock().unwrap_or_else(|p| p.into_inner()));
    for tunnel in tunnels {
        let _ = tunnel.await;
    }
    let open: Vec<Arc<OpenedSession>> = sessions.lock().drain().map(|(_, s)| s).collect();
    for session in open {
        shared.pipeline.close(&session, "the caller closed the connection").await;
    }
}

async fn serve_connection<P: Pipeline, I>(
    io: I,
    peer: SocketAddr,
    tls: bool,
    shared: &Arc<Shared<P>>,
    sessions: &Arc<Sessions>,
) -> Result<(), BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (shared, sessions) = (shared.clone(), sessions.clone());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (shared, sessions) = (shared.clone(), sessions.clone());
        async move { Ok::<_, std::convert::Infallible>(handle(req, peer, tls, &shared, &sessions).await) }
    });
    hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection_with_upgrades(io, service)
        .await
}

/// The bearer token of a request.
fn bearer(req: &Request<Incoming>) -> Result<String, Refusal> {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .ok_or_else(|| Refusal::unauthenticated("missing bearer token (Authorization: Bearer TOKEN)"))?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Refusal::unauthenticated("the Authorization header must be 'Bearer TOKEN'"))
}

fn token_key(token: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()))
}

/// The session for this token and connection on this caller connection, opened at first use
/// (and again after it was ended: killed, identity removed or rotated, credential expired).
async fn session<P: Pipeline>(
    shared: &Arc<Shared<P>>,
    sessions: &Arc<Sessions>,
    token: String,
    connection: &str,
    peer: Option<SocketAddr>,
    tls: bool,
    via: &'static str,
) -> Result<Arc<OpenedSession>, Refusal> {
    let key = (token_key(&token), connection.to_string());
    if let Some(s) = sessions.lock().get(&key).cloned() {
        return Ok(s);
    }
    let opened = shared
        .pipeline
        .open(OpenRequest {
            protocol: "http",
            connection: connection.to_string(),
            client_addr: peer,
            claimed_user: None,
            secret: token,
            tls,
            masks_values: true,
            masks_columns: true,
            via,
        })
        .await;
    let session = Arc::new(opened.map_err(|e| match e {
        OpenError::Unauthenticated(m) => Refusal::unauthenticated(m),
        OpenError::UnknownConnection(m) => Refusal::new(http::StatusCode::NOT_FOUND, "not_found", m),
        OpenError::Forbidden { message, policies } => {
            Refusal { policies, ..Refusal::new(http::StatusCode::FORBIDDEN, "forbidden", message) }
        }
        OpenError::Unavailable(m) => Refusal::unavailable(m),
        OpenError::Limited { message, .. } => {
            Refusal::new(http::StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    })?);
    sessions.lock().insert(key.clone(), session.clone());
    // When the session must end (killed, identity removed or rotated, token expired), the next
    // request opens a new one, which authenticates again.
    let (pipeline, watched, sessions) = (shared.pipeline.clone(), session.clone(), Arc::downgrade(sessions));
    tokio::spawn(async move {
        let reason = pipeline.ended(&watched).await;
        let Some(sessions) = sessions.upgrade() else { return };
        let removed = {
            let mut open = sessions.lock();
            match open.get(&key) {
                Some(s) if Arc::ptr_eq(s, &watched) => open.remove(&key),
                _ => None,
            }
        };
        if let Some(s) = removed {
            pipeline.close(&s, &reason).await;
        }
    });
    Ok(session)
}

async fn handle<P: Pipeline>(
    req: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
    shared: &Arc<Shared<P>>,
    sessions: &Arc<Sessions>,
) -> Response<Body> {
    let started = Instant::now();
    let routed = match path::route(req.uri().path()) {
        Ok(r) => r,
        Err(e) => return Refusal::bad_request(format!("{e}: {}", req.uri().path())).response(),
    };
    let token = match bearer(&req) {
        Ok(t) => t,
        Err(r) => return r.response(),
    };
    let session = match session(shared, sessions, token, &routed.connection, Some(peer), tls, "wire").await {
        Ok(s) => s,
        Err(r) => return r.response(),
    };
    if tunnel::is_upgrade(&req) {
        return match tunnel::open(shared, sessions, &session, req, routed, peer, tls, started).await {
            Ok(response) => response,
            Err(refusal) => refusal.response(),
        };
    }
    match request::run(shared, &session, req, routed, Some(peer), tls, started).await {
        Ok(response) => response,
        Err(refusal) => refusal.response(),
    }
}

/// An empty body.
pub(crate) fn empty() -> Body {
    use http_body_util::BodyExt as _;
    http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()
}
