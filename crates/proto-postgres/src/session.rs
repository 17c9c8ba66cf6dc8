//! The PostgreSQL adapter: accepts callers, authenticates them through the pipeline, logs in
//! upstream with the connection's credential, and relays the simple query protocol — every
//! statement decided and recorded before it is forwarded, denied batches never forwarded.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_core::admission::{Admission, Admit};
use gatehouse_core::pipeline::{
    Hold, OpenError, OpenRequest, OpenedSession, Pipeline, Request, RequestResult, Verdict,
};
use gatehouse_core::{Decision, Outcome};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::messages::{self, Severity};
use crate::{
    BackendFrame, CancelToken, FrameReader, FrontendMessage, Startup, TlsMode, TransactionStatus, Upstream,
    UpstreamConfig, UpstreamError, WireError, next_backend, next_message, read_backend, read_message, read_startup,
};

/// Startup parameters passed on to the resource; everything else (`options`, `search_path`,
/// `replication`, …) is dropped, since it could change privileges or name resolution.
const PASSED_PARAMS: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
    "statement_timeout",
    "lock_timeout",
];

/// How the listener behaves.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// TLS offered on `SSLRequest`; `None` answers `N`.
    pub tls: Option<Arc<ServerConfig>>,
    /// A caller must finish startup and authentication within this.
    pub auth_timeout: Duration,
    /// A session with no request for this long is ended (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// The largest message accepted from a caller.
    pub max_message: usize,
    /// The largest message accepted from the resource.
    pub max_backend_message: usize,
    /// Deadline for logging in upstream.
    pub connect_timeout: Duration,
    /// Connections kept open at once; callers beyond it are refused with 53300 (`None`: no
    /// limit).
    pub max_connections: Option<usize>,
    /// The most bytes of rows (or `COPY` data) one statement may return; a statement that
    /// returns more is canceled and fails with 54000 (`None`: no limit).
    pub max_result_bytes: Option<u64>,
}

/// How long a caller over the connection limit has to send its startup packet (it is told
/// after it, as PostgreSQL does).
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);

/// What the adapter needs to turn statement text into requests: the SQL classifier, behind a
/// trait so this crate stays free of policy and of the parser's build.
pub trait Statements: Send + Sync + 'static {
    /// Splits a simple-query string into requests, one per statement, for `connection`, with
    /// unqualified tables resolved against `search_path` (the session's schemas, in order).
    fn requests(&self, sql: &str, connection: &str, search_path: &[String]) -> Vec<StatementRequest>;
}

/// One statement of a batch, ready for the pipeline.
#[derive(Debug, Clone)]
pub struct StatementRequest {
    pub request: Request,
    /// Refused by the adapter itself whatever policy says, with this message (e.g. an attempt to
    /// change `application_name`, which carries the caller's identity).
    pub refuse: Option<String>,
    /// Running it resets `application_name` (`RESET ALL`, `DISCARD ALL`): the adapter puts the
    /// caller's identity stamp back afterwards.
    pub restamp: bool,
}

type CancelMap = Arc<Mutex<HashMap<(i32, i32), CancelToken>>>;

/// Accepts callers until `shutdown` turns true, then stops accepting; open sessions go on
/// until they end or the process exits.
pub async fn serve<P: Pipeline, S: Statements>(
    listener: TcpListener,
    config: Arc<ListenerConfig>,
    pipeline: Arc<P>,
    statements: Arc<S>,
    mut shutdown: watch::Receiver<bool>,
) {
    let cancels: CancelMap = Arc::default();
    let admission = Admission::new(config.max_connections);
    loop {
        let over = || pipeline.over_limit("postgres", gatehouse_core::pipeline::Limit::ListenerConnections);
        let Some((stream, peer, admitted)) = admission.accept(&listener, &mut shutdown, over).await else { break };
        let counted = match admitted {
            Admit::Serve(counted) => counted,
            Admit::Refuse { counted, max } => {
                let (config, cancels) = (config.clone(), cancels.clone());
                tokio::spawn(async move {
                    let _counted = counted;
                    Session::refuse_busy(stream, peer, &config, &cancels, max).await;
                });
                continue;
            }
            Admit::Drop => continue,
        };
        let (config, pipeline, statements, cancels) =
            (config.clone(), pipeline.clone(), statements.clone(), cancels.clone());
        tokio::spawn(async move {
            let _counted = counted;
            Session::run(stream, peer, config, pipeline, statements, cancels).await;
        });
    }
}

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn fatal(code: &str, message: &str) -> Bytes {
    messages::error_response(Severity::Fatal, code, message, None, None)
}

async fn send_and_close(mut stream: impl AsyncWrite + Unpin, frame: Bytes) {
    let _ = stream.write_all(&frame).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

pub(crate) struct Session;

/// The statements of the batch in flight, with what the resource said about each so far.
struct InFlight {
    seqs: Vec<i64>,
    done: usize,
    started: Instant,
    rows: u64,
    bytes: u64,
    error: Option<String>,
    /// The columns of the current statement's rows.
    columns: Vec<String>,
    /// Values masked in the current statement's results.
    masked: crate::masking::Tally,
}

enum Step {
    Client(Result<FrontendMessage, WireError>),
    Upstream(Result<BackendFrame, WireError>),
    Ended(String),
    Idle,
}

impl Session {
    async fn run<P: Pipeline, S: Statements>(
        tcp: TcpStream,
        peer: SocketAddr,
        config: Arc<ListenerConfig>,
        pipeline: Arc<P>,
        statements: Arc<S>,
        cancels: CancelMap,
    ) {
        // Startup and authentication together must finish within the deadline.
        let deadline = tokio::time::Instant::now() + config.auth_timeout;
        let startup = tokio::time::timeout_at(deadline, Self::startup(tcp, peer, &config, &cancels)).await;
        let (mut client, params, tls) = match startup {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!(%peer, "authentication deadline passed");
                return;
            }
        };
        let opened =
            tokio::time::timeout_at(deadline, Self::authenticate(&mut client, peer, tls, &params, pipeline.as_ref()))
                .await;
        let session = match opened {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(_) => {
                send_and_close(&mut client, fatal("08006", "canceling authentication due to timeout")).await;
                return;
            }
        };
        let reason = Self::proxy(client, &params, &session, &config, pipeline.clone(), statements, &cancels).await;
        pipeline.close(&session, &reason).await;
    }

    /// Tells a caller over the listener's connection limit so, once it has sent its startup
    /// packet (after TLS, if it asks for it), as PostgreSQL does. A cancel request still works.
    async fn refuse_busy(tcp: TcpStream, peer: SocketAddr, config: &ListenerConfig, cancels: &CancelMap, max: usize) {
        let deadline = REFUSAL_DEADLINE.min(config.auth_timeout);
        if let Ok(Some((client, _, _))) =
            tokio::time::timeout(deadline, Self::startup(tcp, peer, config, cancels)).await
        {
            let message = format!(
                "sorry, too many clients already: the gateway has its most connections open on this listener ({max}, postgres.max_connections)"
            );
            send_and_close(client, fatal("53300", &message)).await;
        }
    }

    /// SSL/GSS negotiation, cancel requests, and the startup packet.
    async fn startup(
        mut tcp: TcpStream,
        peer: SocketAddr,
        config: &ListenerConfig,
        cancels: &CancelMap,
    ) -> Option<(Box<dyn Io>, Vec<(String, String)>, bool)> {
        let mut stream: Option<Box<dyn Io>> = None;
        loop {
            let got = match stream.as_mut() {
                Some(s) => read_startup(s, crate::MAX_STARTUP_LEN).await,
                None => read_startup(&mut tcp, crate::MAX_STARTUP_LEN).await,
            };
            match got {
                Ok(Startup::Ssl) if stream.is_none() => match &config.tls {
                    Some(tls) => {
                        tcp.write_all(&[messages::SSL_ACCEPT]).await.ok()?;
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                        match acceptor.accept(tcp).await {
                            Ok(s) => {
                                stream = Some(Box::new(s));
                                // `tcp` moved into the TLS stream: from here on use `stream`.
                                return Self::startup_tls(stream?, peer, cancels).await;
                            }
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return None;
                            }
                        }
                    }
                    None => tcp.write_all(&[messages::SSL_REFUSE]).await.ok()?,
                },
                Ok(Startup::GssEnc) if stream.is_none() => tcp.write_all(&[messages::SSL_REFUSE]).await.ok()?,
                Ok(Startup::Cancel { pid, key }) => {
                    forward_cancel(cancels, pid, key).await;
                    return None;
                }
                Ok(Startup::Startup { params, .. }) => return Some((Box::new(tcp), params, false)),
                Ok(_) => {
                    send_and_close(&mut tcp, fatal("08P01", "unexpected negotiation request")).await;
                    return None;
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "bad startup packet");
                    send_and_close(&mut tcp, fatal("08P01", &format!("invalid startup packet: {e}"))).await;
                    return None;
                }
            }
        }
    }

    async fn startup_tls(
        mut stream: Box<dyn Io>,
        peer: SocketAddr,
        cancels: &CancelMap,
    ) -> Option<(Box<dyn Io>, Vec<(String, String)>, bool)> {
        match read_startup(&mut stream, crate::MAX_STARTUP_LEN).await {
            Ok(Startup::Startup { params, .. }) => Some((stream, params, true)),
            Ok(Startup::Cancel { pid, key }) => {
                forward_cancel(cancels, pid, key).await;
                None
            }
            Ok(_) => {
                send_and_close(&mut stream, fatal("08P01", "unexpected negotiation request inside TLS")).await;
                None
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad startup packet");
                send_and_close(&mut stream, fatal("08P01", &format!("invalid startup packet: {e}"))).await;
                None
            }
        }
    }

    /// Asks for the password (only over TLS or on loopback) and opens the session.
    async fn authenticate<P: Pipeline>(
        client: &mut Box<dyn Io>,
        peer: SocketAddr,
        tls: bool,
        params: &[(String, String)],
        pipeline: &P,
    ) -> Option<OpenedSession> {
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        if param("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
            send_and_close(client, fatal("0A000", "replication connections are not supported through the gateway"))
                .await;
            return None;
        }
        let Some(user) = param("user") else {
            send_and_close(client, fatal("28000", "no user name given")).await;
            return None;
        };
        let database = param("database").unwrap_or_else(|| user.clone());
        // Statements are classified as UTF-8 text: an encoding whose bytes the lexer would read
        // differently (SJIS, BIG5, … hide quotes and backslashes in multibyte characters) is refused.
        if let Some(enc) = param("client_encoding") {
            let norm = enc.to_ascii_uppercase().replace(['-', '_'], "");
            if !matches!(norm.as_str(), "UTF8" | "UNICODE" | "SQLASCII") {
                let msg = format!("client_encoding \"{enc}\" is not supported through the gateway; use UTF8");
                send_and_close(client, fatal("0A000", &msg)).await;
                return None;
            }
        }
        if !tls && !peer.ip().is_loopback() {
            send_and_close(
                client,
                fatal(
                    "28000",
                    "the gateway accepts passwords only over TLS: connect with sslmode=require or verify-full",
                ),
            )
            .await;
            return None;
        }
        if client.write_all(&messages::authentication_cleartext_password()).await.is_err()
            || client.flush().await.is_err()
        {
            return None;
        }
        let password = match read_message(client, 64 * 1024).await {
            Ok(m) if m.tag() == b'p' => match m.password() {
                Ok(p) => p.to_string(),
                Err(_) => {
                    send_and_close(client, fatal("08P01", "malformed password message")).await;
                    return None;
                }
            },
            Ok(_) => {
                send_and_close(client, fatal("08P01", "expected a password message")).await;
                return None;
            }
            Err(_) => return None,
        };
        let request = OpenRequest {
            protocol: "postgres",
            connection: database,
            client_addr: Some(peer),
            claimed_user: Some(user),
            secret: password,
            tls,
            // Value detectors and whole-column rules are applied to what the resource returns.
            masks_values: true,
            masks_columns: true,
            via: "wire",
        };
        match pipeline.open(request).await {
            Ok(session) => Some(session),
            Err(e) => {
                let code = match &e {
                    OpenError::Unauthenticated(_) => "28P01",
                    OpenError::UnknownConnection(_) => "3D000",
                    OpenError::Forbidden { .. } => "42501",
                    OpenError::Unavailable(_) => "08004",
                    // A sign-in lockout is an authorization refusal; too many sessions is
                    // PostgreSQL's own "too many connections".
                    OpenError::Limited { limit, .. } if limit.is_sign_in() => "28000",
                    OpenError::Limited { .. } => "53300",
                };
                send_and_close(client, fatal(code, &e.to_string())).await;
                None
            }
        }
    }

    /// Logs in upstream, then relays until one side ends; returns why the session ended.
    pub(crate) async fn proxy<P: Pipeline, S: Statements>(
        client: Box<dyn Io>,
        params: &[(String, String)],
        session: &OpenedSession,
        config: &ListenerConfig,
        pipeline: Arc<P>,
        statements: Arc<S>,
        cancels: &CancelMap,
    ) -> String {
        let (client_read, client_write) = tokio::io::split(client);
        let mut client_write = BufWriter::new(client_write);
        let target = &session.upstream;
        let client_app = params.iter().find(|(k, _)| k == "application_name").map(|(_, v)| v.as_str()).unwrap_or("");
        let mut app_name =
            if client_app.is_empty() { target.stamp.clone() } else { format!("{} {client_app}", target.stamp) };
        app_name.truncate(63);
        let mut upstream_params: Vec<(String, String)> =
            params.iter().filter(|(k, _)| PASSED_PARAMS.contains(&k.as_str())).cloned().collect();
        let app_name_stamp = app_name.clone();
        upstream_params.push(("application_name".into(), app_name));
        let cfg = upstream_config(session, upstream_params, config.connect_timeout);
        let mut upstream = match crate::connect(&cfg).await {
            Ok(u) => u,
            Err(e) => {
                let (code, message) = upstream_refusal(&e);
                send_and_close(client_write, fatal(code, &message)).await;
                return format!("upstream login failed: {e}");
            }
        };
        let search_path = match search_path(&mut upstream, config.max_backend_message).await {
            Ok(p) => p,
            Err(e) => {
                send_and_close(client_write, fatal("08006", &format!("the resource did not answer: {e}"))).await;
                return format!("upstream failed: {e}");
            }
        };
        // The caller's own cancel key, mapped to the resource's.
        let (pid, key) = random_key();
        if let Some(token) = upstream.cancel_token() {
            cancels.lock().unwrap_or_else(|p| p.into_inner()).insert((pid, key), token);
        }
        let mut hello = Vec::new();
        hello.extend_from_slice(&messages::authentication_ok());
        for (name, value) in upstream.parameters() {
            hello.extend_from_slice(&messages::parameter_status(name, value));
        }
        hello.extend_from_slice(&messages::backend_key_data(pid, key));
        hello.extend_from_slice(&messages::ready_for_query(TransactionStatus::Idle));
        if client_write.write_all(&hello).await.is_err() || client_write.flush().await.is_err() {
            forget_cancel(cancels, pid, key);
            return "the caller left".into();
        }
        let (masker, column_rules) = match crate::masking::for_connection(&session.mask, &session.mask_columns) {
            Ok(m) => m,
            Err(e) => {
                let _ =
                    client_write.write_all(&fatal("08004", &format!("the connection's masking is invalid: {e}"))).await;
                let _ = client_write.flush().await;
                forget_cancel(cancels, pid, key);
                return format!("invalid masking: {e}");
            }
        };
        let reason = Relay {
            session,
            column_rules,
            catalog_login: cfg.clone(),
            max_backend: config.max_backend_message,
            unmask_connection: false,
            row_whole: Vec::new(),
            ddl_in_flight: false,
            copy_plan: None,
            active_mask: masker.clone(),
            masker,
            copy_out: CopyOut::Plain,
            drop_complete: false,
            row_columns: None,
            pipeline,
            statements,
            search_path,
            client_write,
            status: TransactionStatus::Idle,
            in_flight: None,
            queued: VecDeque::new(),
            discard_reply: None,
            app_name: app_name_stamp,
            restamp_after: false,
            swallowing: false,
            ext: Default::default(),
            copy_in: false,
            result_limit: config.max_result_bytes,
            result_bytes: 0,
            over_result: false,
            cancel: upstream.cancel_token(),
        }
        .run(client_read, upstream, config)
        .await;
        forget_cancel(cancels, pid, key);
        reason
    }
}

fn upstream_refusal(e: &UpstreamError) -> (&'static str, String) {
    match e {
        UpstreamError::Server { code, message, .. } => {
            // The resource refused the gateway's own credential: the caller cannot fix that.
            let _ = code;
            ("08004", format!("the gateway could not log in to the resource: {message}"))
        }
        UpstreamError::Timeout { .. } | UpstreamError::Io { .. } => {
            ("08001", format!("the resource is unreachable: {e}"))
        }
        _ => ("08004", format!("the gateway could not log in to the resource: {e}")),
    }
}

fn random_key() -> (i32, i32) {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    let pid = i32::from_be_bytes([bytes[0] & 0x3f, bytes[1], bytes[2], bytes[3]]).max(1);
    let key = i32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    (pid, key)
}

fn forget_cancel(cancels: &CancelMap, pid: i32, key: i32) {
    cancels.lock().unwrap_or_else(|p| p.into_inner()).remove(&(pid, key));
}

async fn forward_cancel(cancels: &CancelMap, pid: i32, key: i32) {
    let token = cancels.lock().unwrap_or_else(|p| p.into_inner()).get(&(pid, key)).cloned();
    match token {
        Some(token) => {
            if let Err(e) = token.cancel().await {
                tracing::warn!(error = %e, "forwarding a cancel request failed");
            }
        }
        None => tracing::debug!("cancel request for an unknown session ignored"),
    }
}

/// The session's schemas in search order, for resolving unqualified names.
async fn search_path(upstream: &mut Upstream, max: usize) -> Result<Vec<String>, String> {
    let stream = upstream.stream();
    let query = frontend_query("SELECT pg_catalog.array_to_string(pg_catalog.current_schemas(false), ',')");
    stream.write_all(&query).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    loop {
        let frame = read_backend(stream, max).await.map_err(|e| e.to_string())?;
        match frame.tag() {
            b'D' => {
                let body = frame.body();
                // Int16 column count, Int32 length, value.
                if body.len() >= 6 {
                    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                    if len > 0 {
                        let end = 6 + usize::try_from(len).unwrap_or(0);
                        let text = String::from_utf8_lossy(body.get(6..end).unwrap_or_default()).to_string();
                        out = text.split(',').filter(|s| !s.is_empty()).map(String::from).collect();
                    }
                }
            }
            b'E' => return Err(frame.error_fields().map(|f| f.message).unwrap_or_default()),
            b'Z' => return Ok(out),
            _ => {}
        }
    }
}

/// How the gateway logs in to the resource for `session`, sending `params` at startup.
pub(crate) fn upstream_config(
    session: &OpenedSession,
    params: Vec<(String, String)>,
    connect_timeout: Duration,
) -> UpstreamConfig {
    let target = &session.upstream;
    UpstreamConfig {
        host: target.host.clone(),
        port: target.port,
        user: target.user.clone().unwrap_or_default(),
        password: target.password.clone(),
        database: target.database.clone().unwrap_or_else(|| session.connection.clone()),
        tls: target.tls_mode.parse().unwrap_or(TlsMode::VerifyFull),
        ca_file: target.ca_file.clone().map(Into::into),
        params,
        connect_timeout,
    }
}

pub(crate) fn frontend_query(sql: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(sql.len() + 6);
    out.push(b'Q');
    out.extend_from_slice(&(i32::try_from(sql.len() + 5).unwrap_or(i32::MAX)).to_be_bytes());
    out.extend_from_slice(sql.as_bytes());
    out.push(0);
    out
}

/// The relay loop's state.
struct Relay<'a, P: Pipeline, S: Statements, W: AsyncWrite + Unpin> {
    session: &'a OpenedSession,
    pipeline: Arc<P>,
    statements: Arc<S>,
    search_path: Vec<String>,
    client_write: BufWriter<W>,
    status: TransactionStatus,
    in_flight: Option<InFlight>,
    /// Caller messages that arrived while a batch was in flight.
    queued: VecDeque<FrontendMessage>,
    /// A statement the gateway sent to fail the upstream transaction: its reply is replaced by
    /// this refusal instead of being relayed.
    discard_reply: Option<Bytes>,
    /// The `application_name` the resource must keep seeing.
    app_name: String,
    /// The batch in flight resets `application_name`: put the stamp back once it is done.
    restamp_after: bool,
    /// The reply to the gateway's own re-stamping statement is not relayed.
    swallowing: bool,
    /// Prepared statements, portals and owed answers of the extended query protocol.
    ext: crate::extended::Extended,
    /// The resource asked for `COPY FROM STDIN` data.
    copy_in: bool,
    /// The connection's value detectors, if it has any.
    masker: Option<Arc<gatehouse_mask::Masker>>,
    /// What masks the current statement's results: the connection's detectors, unless policy
    /// lets this caller `unmask` (checked at each statement).
    active_mask: Option<Arc<gatehouse_mask::Masker>>,
    /// How `COPY … TO STDOUT` data of the current statement is passed on.
    copy_out: CopyOut,
    /// A refused binary `COPY` output ended with an error: the server's completion is dropped.
    drop_complete: bool,
    /// The columns of the rows the simple query in flight returns now.
    row_columns: Option<Vec<crate::Column>>,
    /// The connection's whole-column rules.
    column_rules: Vec<gatehouse_mask::ColumnPattern>,
    /// How to log in for reading the catalogue (column names for the rules).
    catalog_login: UpstreamConfig,
    max_backend: usize,
    /// Policy lets this caller see the whole connection unmasked (as of the current statement).
    unmask_connection: bool,
    /// How each column of the simple query's current rows is masked.
    row_whole: Vec<crate::masking::ColumnMask>,
    /// A statement in flight may change tables: what is known of their columns is dropped after.
    ddl_in_flight: bool,
    /// How the rows of the `COPY … TO STDOUT` in flight are masked field by field.
    copy_plan: Option<crate::masking::CopyPlan>,
    /// The most bytes of rows one statement may return.
    result_limit: Option<u64>,
    /// Bytes of rows the current statement returned so far.
    result_bytes: u64,
    /// The current statement passed `result_limit`: it was canceled and its rows are dropped.
    over_result: bool,
    /// Cancels the statement running upstream.
    cancel: Option<CancelToken>,
}

/// `COPY … TO STDOUT` data under masking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyOut {
    Plain,
    /// Text or CSV rows: each masked.
    Masked,
    /// Rows of a `COPY table` under whole-column rules: masked field by field.
    Columns,
    /// Binary rows cannot be masked: dropped, and the copy ends with an error.
    Refused,
}

impl<P: Pipeline, S: Statements, W: AsyncWrite + Unpin + Send> Relay<'_, P, S, W> {
    async fn run<R: AsyncRead + Unpin + Send + 'static>(
        mut self,
        client_read: R,
        upstream: Upstream,
        config: &ListenerConfig,
    ) -> String {
        let (up_read, up_write) = tokio::io::split(upstream.into_stream());
        // What goes to the resource is sent once nothing more from the caller is waiting, so a
        // pipelined batch (Parse, Bind, Describe, Execute, Sync) is one send, not five.
        let mut up_write = BufWriter::with_capacity(64 * 1024, up_write);
        // One task reads both sides (the readers are cancel-safe): no hand-off per message.
        let mut client = FrameReader::new(client_read, config.max_message);
        let mut resource = FrameReader::new(up_read, config.max_backend_message);
        let pipeline = self.pipeline.clone();
        let session = self.session;
        let ended = pipeline.ended(session);
        tokio::pin!(ended);
        let reason = loop {
            let idle = async {
                match config.idle_timeout {
                    Some(t) if self.in_flight.is_none() && self.ext.expects.is_empty() => tokio::time::sleep(t).await,
                    _ => std::future::pending::<()>().await,
                }
            };
            let step = tokio::select! {
                m = next_message(&mut client) => Step::Client(m),
                f = next_backend(&mut resource) => Step::Upstream(f),
                reason = &mut ended => Step::Ended(reason),
                _ = idle => Step::Idle,
            };
            let from_upstream = matches!(step, Step::Upstream(Ok(_)));
            let outcome = match step {
                Step::Client(Ok(m)) => self.on_client(m, &mut up_write).await,
                Step::Client(Err(WireError::Closed)) => Err("the caller closed the connection".to_string()),
                Step::Client(Err(e @ WireError::BadLength { .. })) => {
                    self.fatal("54000", &format!("message too large: {e}")).await;
                    Err(format!("refused an oversized message: {e}"))
                }
                Step::Client(Err(e)) => {
                    self.fatal("08P01", &format!("protocol violation: {e}")).await;
                    Err(format!("protocol violation: {e}"))
                }
                Step::Upstream(Ok(f)) => self.on_upstream(f, &mut up_write).await,
                Step::Upstream(Err(e)) => {
                    self.fatal("08006", "the connection to the resource was lost").await;
                    Err(format!("the resource connection was lost: {e}"))
                }
                Step::Ended(reason) => {
                    self.fatal("57P01", &format!("terminating connection: {reason}")).await;
                    Err(reason)
                }
                Step::Idle => {
                    self.fatal("57P05", "terminating connection due to idle timeout").await;
                    Err("idle timeout".to_string())
                }
            };
            if let Err(reason) = outcome {
                break reason;
            }
            // Nothing more waiting from the resource: what was relayed goes out now.
            if from_upstream && !resource.has_frame() && self.flush().await.is_err() {
                break "the caller left".to_string();
            }
            if !client.has_frame()
                && let Err(e) = up_write.flush().await
            {
                self.fatal("08006", "the connection to the resource was lost").await;
                break format!("the resource connection was lost: {e}");
            }
        };
        let _ = up_write.write_all(&[b'X', 0, 0, 0, 4]).await;
        let _ = up_write.shutdown().await;
        self.finish_in_flight(Some("the session ended before the statement completed".into()));
        reason
    }

    async fn fatal(&mut self, code: &str, message: &str) {
        let _ = self.client_write.write_all(&fatal(code, message)).await;
        let _ = self.client_write.flush().await;
        let _ = self.client_write.shutdown().await;
    }

    async fn send_client(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.client_write.write_all(bytes).await.map_err(|_| "the caller left".to_string())
    }

    async fn flush(&mut self) -> Result<(), String> {
        self.client_write.flush().await.map_err(|_| "the caller left".to_string())
    }

    async fn on_client<U: AsyncWrite + Unpin>(&mut self, m: FrontendMessage, up: &mut U) -> Result<(), String> {
        if self.copy_in && matches!(m.tag(), b'd' | b'c' | b'f') {
            if m.tag() != b'd' {
                self.copy_in = false;
            }
            return up.write_all(m.raw()).await.map_err(|e| format!("the resource connection was lost: {e}"));
        }
        if !self.can_handle(&m) {
            self.queued.push_back(m);
            return Ok(());
        }
        self.handle(m, up).await
    }

    async fn handle<U: AsyncWrite + Unpin>(&mut self, m: FrontendMessage, up: &mut U) -> Result<(), String> {
        match m.tag() {
            b'Q' => self.query(m, up).await,
            b'X' => Err("the caller ended the session".into()),
            b'P' | b'B' | b'E' | b'D' | b'C' | b'H' | b'S' => self.extended(m, up).await,
            b'F' => {
                let e = messages::error_response(
                    Severity::Error,
                    "42501",
                    "FunctionCall messages are refused: they run a function by its number, which policy cannot judge",
                    None,
                    None,
                );
                self.send_client(&e).await?;
                self.send_client(&messages::ready_for_query(self.status)).await?;
                self.flush().await
            }
            other => {
                self.fatal("08P01", &format!("unexpected message type {:?}", other as char)).await;
                Err(format!("protocol violation: message type {:?}", other as char))
            }
        }
    }

    /// Whether a caller message can be handled now or must wait for an answer in flight.
    fn can_handle(&self, m: &FrontendMessage) -> bool {
        if self.discard_reply.is_some() || self.swallowing || self.in_flight.is_some() {
            return false;
        }
        // A simple query waits until every extended-protocol answer has come back.
        m.tag() != b'Q' || self.ext.expects.is_empty()
    }

    async fn forward<U: AsyncWrite + Unpin>(up: &mut U, bytes: &[u8]) -> Result<(), String> {
        up.write_all(bytes).await.map_err(|e| format!("the resource connection was lost: {e}"))
    }

    /// The refusal a denied request gets, as an `ErrorResponse`: 53400 when it was refused by
    /// the caller's request rate (`limited`), 42501 otherwise.
    fn refusal(
        decision: &Decision,
        limited: Option<&str>,
        adapter_reason: Option<&str>,
        note: Option<&str>,
        detail: Option<&str>,
    ) -> Bytes {
        if let Some(message) = limited {
            return messages::error_response(Severity::Error, "53400", message, detail, None);
        }
        let mut message = match adapter_reason {
            Some(r) => format!("permission denied: {r}"),
            None => match decision.outcome {
                Outcome::Review => {
                    format!("permission denied: this statement needs approval ({})", decision.explain())
                }
                _ => format!("permission denied: {}", decision.explain()),
            },
        };
        if let Some(note) = note {
            message.push_str(&format!(" ({note})"));
        }
        messages::error_response(Severity::Error, "42501", &message, detail, None)
    }

    /// Holds a request for its review: the caller is told at once (a `NoticeResponse`), then the
    /// session waits for the decision without reading further messages. The outer error is a
    /// lost caller connection; the inner one the refusal to answer with.
    async fn hold(&mut self, hold: &Hold, request: &Request) -> Result<Result<Verdict, String>, String> {
        let notice = messages::notice_response(Severity::Notice, "00000", &hold.notice, None, None);
        self.send_client(&notice).await?;
        self.flush().await?;
        Ok(self.pipeline.hold(self.session, hold, request).await.map_err(|u| u.message))
    }

    /// The answer when a request could not be recorded: it is not forwarded (fail closed).
    fn unrecorded(e: &str) -> Bytes {
        let message = format!("the gateway cannot record this statement, so it was not run: {e}");
        messages::error_response(Severity::Error, "58000", &message, None, None)
    }

    /// Refuses an extended-protocol message: the resource is made to fail at this point of the
    /// pipeline (so earlier answers arrive first and an open transaction fails too), and the
    /// caller's messages are dropped until its `Sync`, as the server itself does after an error.
    async fn refuse_extended<U: AsyncWrite + Unpin>(&mut self, refusal: Bytes, up: &mut U) -> Result<(), String> {
        self.ext.discarding = true;
        self.ext.expects.push_back(crate::extended::Expect::Injected(refusal));
        Self::forward(up, &crate::extended::failing_parse()).await
    }

    /// Records a request the gateway refuses before the resource sees it, and refuses it.
    async fn refuse_recorded<U: AsyncWrite + Unpin>(
        &mut self,
        request: &Request,
        adapter_reason: Option<&str>,
        detail: Option<&str>,
        phase: &str,
        up: &mut U,
    ) -> Result<(), String> {
        let refusal = match self.pipeline.authorize(self.session, request).await {
            Ok(v) => {
                self.finish(v.seq, Some(format!("refused {phase}")), 0, None);
                Self::refusal(&v.decision, v.limited.as_deref(), adapter_reason, request.note.as_deref(), detail)
            }
            Err(e) => Self::unrecorded(&e),
        };
        self.refuse_extended(refusal, up).await
    }

    async fn extended<U: AsyncWrite + Unpin>(&mut self, m: FrontendMessage, up: &mut U) -> Result<(), String> {
        use crate::extended::{
            Described, Expect, Portal, Prepared, bind_message, bind_statement, describe_message, execute_message,
            parse_message, target_message,
        };
        use std::sync::atomic::Ordering;
        if self.ext.discarding {
            if m.tag() == b'S' {
                self.ext.discarding = false;
                self.ext.expects.push_back(Expect::Sync);
                Self::forward(up, m.raw()).await?;
                return up.flush().await.map_err(|e| format!("the resource connection was lost: {e}"));
            }
            return Ok(());
        }
        let malformed = |e: String| format!("malformed {:?} message: {e}", m.tag() as char);
        match m.tag() {
            b'P' => {
                let (name, query, types) = match parse_message(m.body()) {
                    Ok(p) => p,
                    Err(e) => {
                        self.fatal("08P01", &malformed(e.clone())).await;
                        return Err(malformed(e));
                    }
                };
                let requests = self.requests(&query);
                // Refused at Parse when policy already says no; one that needs review is decided
                // at Bind, with its values; each Execute is decided and recorded again, so a
                // policy change in between applies.
                let mut decide_at_bind = false;
                for r in &requests {
                    let decision = self.pipeline.check(self.session, &r.request).await;
                    match decision.outcome {
                        Outcome::Allow if r.refuse.is_none() => {}
                        Outcome::Review if r.refuse.is_none() => decide_at_bind = true,
                        _ => return self.refuse_recorded(&r.request, r.refuse.as_deref(), None, "at Parse", up).await,
                    }
                }
                let prepared = Prepared::new(requests, decide_at_bind);
                prepared.set_param_types(types);
                self.ext.statements.insert(name, Arc::new(prepared));
                self.ext.expects.push_back(Expect::Parse);
                Self::forward(up, m.raw()).await
            }
            b'B' => {
                let statement = bind_statement(m.body()).map_err(malformed)?;
                let prepared = self.ext.statements.get(&statement).cloned();
                let types = prepared.as_ref().map(|p| p.param_types()).unwrap_or_default();
                let bind = bind_message(m.body(), &types).map_err(malformed)?;
                let Some(prepared) = prepared else {
                    // Unknown to the gateway: the resource answers with its own error, or, for a
                    // statement prepared in SQL, the portal is refused at Execute.
                    self.ext.portals.remove(&bind.portal);
                    self.ext.expects.push_back(Expect::Bind);
                    return Self::forward(up, m.raw()).await;
                };
                let params = bind.params.into_iter().map(|p| crate::masking::text(self.masker.as_deref(), p)).collect();
                let portal = Portal::new(prepared.clone(), params, bind.values_digest, bind.result_formats);
                if prepared.decide_at_bind {
                    // Decided with its values: refused now if policy says no; one that still
                    // needs review is held when it runs, at Execute.
                    for r in &prepared.requests {
                        let request = portal.request(&r.request);
                        if self.pipeline.check(self.session, &request).await.outcome == Outcome::Deny {
                            return self.refuse_recorded(&request, None, None, "at Bind", up).await;
                        }
                    }
                }
                self.ext.portals.insert(bind.portal, Arc::new(portal));
                self.ext.expects.push_back(Expect::Bind);
                Self::forward(up, m.raw()).await
            }
            b'E' => {
                let name = execute_message(m.body()).map_err(malformed)?;
                let Some(portal) = self.ext.portals.get(&name).cloned() else {
                    let refusal = messages::error_response(
                        Severity::Error,
                        "42501",
                        &format!(
                            "permission denied: portal \"{name}\" was not opened by a Bind of a statement prepared through the gateway, so it cannot be decided"
                        ),
                        None,
                        None,
                    );
                    return self.refuse_extended(refusal, up).await;
                };
                let mut seq = None;
                for r in &portal.prepared.requests {
                    let request = portal.request(&r.request);
                    match self.pipeline.authorize(self.session, &request).await {
                        Ok(v) if v.decision.outcome == Outcome::Allow && r.refuse.is_none() => seq = Some(v.seq),
                        Ok(Verdict { seq: held_seq, held: Some(hold), .. }) if r.refuse.is_none() => {
                            match self.hold(&hold, &request).await? {
                                Ok(allowed) => seq = Some(allowed.seq),
                                Err(message) => {
                                    self.finish(held_seq, Some(format!("refused: {message}")), 0, None);
                                    let refusal = messages::error_response(
                                        Severity::Error,
                                        "42501",
                                        &format!("permission denied: {message}"),
                                        None,
                                        None,
                                    );
                                    return self.refuse_extended(refusal, up).await;
                                }
                            }
                        }
                        Ok(v) => {
                            self.finish(v.seq, Some("refused".into()), 0, None);
                            let refusal = Self::refusal(
                                &v.decision,
                                v.limited.as_deref(),
                                r.refuse.as_deref(),
                                r.request.note.as_deref(),
                                None,
                            );
                            return self.refuse_extended(refusal, up).await;
                        }
                        Err(e) => {
                            let refusal = Self::unrecorded(&e);
                            return self.refuse_extended(refusal, up).await;
                        }
                    }
                }
                // Nothing tells what its rows look like: ask, so later phases know each column.
                if portal.shape_unknown() {
                    portal.describing.store(true, Ordering::Relaxed);
                    Self::forward(up, &describe_message(b'P', &name)).await?;
                    self.ext
                        .expects
                        .push_back(Expect::Describe { target: Described::Portal(portal.clone()), own: true });
                }
                self.refresh_mask().await;
                self.ddl_in_flight |= portal.prepared.requests.iter().any(|r| changes_tables(&r.request));
                self.ext.expects.push_back(Expect::Execute {
                    seq,
                    started: Instant::now(),
                    rows: 0,
                    bytes: 0,
                    portal: Some(portal),
                    masked: Default::default(),
                    whole: None,
                });
                Self::forward(up, m.raw()).await
            }
            b'D' => {
                let (kind, name) = target_message(m.body()).map_err(malformed)?;
                let target = if kind == b'S' {
                    self.ext.statements.get(&name).map(|p| {
                        p.describing.store(true, Ordering::Relaxed);
                        Described::Statement(p.clone())
                    })
                } else {
                    self.ext.portals.get(&name).map(|p| {
                        p.describing.store(true, Ordering::Relaxed);
                        Described::Portal(p.clone())
                    })
                };
                self.ext
                    .expects
                    .push_back(Expect::Describe { target: target.unwrap_or(Described::Unknown), own: false });
                Self::forward(up, m.raw()).await
            }
            b'C' => {
                let (kind, name) = target_message(m.body()).map_err(malformed)?;
                if kind == b'S' {
                    self.ext.statements.remove(&name);
                } else {
                    self.ext.portals.remove(&name);
                }
                self.ext.expects.push_back(Expect::Close);
                Self::forward(up, m.raw()).await
            }
            b'S' => {
                self.ext.expects.push_back(Expect::Sync);
                Self::forward(up, m.raw()).await?;
                up.flush().await.map_err(|e| format!("the resource connection was lost: {e}"))
            }
            // Flush: the resource sends what it has.
            _ => {
                Self::forward(up, m.raw()).await?;
                up.flush().await.map_err(|e| format!("the resource connection was lost: {e}"))
            }
        }
    }

    /// The statements of `sql` as requests. What they record of the text is masked like the
    /// results (a value the caller typed is not kept in clear either); policy still sees the
    /// text as sent.
    fn requests(&self, sql: &str) -> Vec<StatementRequest> {
        let mut requests = self.statements.requests(sql, &self.session.connection, &self.search_path);
        if let Some(masker) = self.masker.as_deref() {
            for r in &mut requests {
                r.request.text = crate::masking::text(Some(masker), std::mem::take(&mut r.request.text));
            }
        }
        requests
    }

    /// Re-checks whether this caller may see the connection's masked values unmasked.
    async fn refresh_mask(&mut self) {
        if self.masker.is_none() && self.column_rules.is_empty() {
            return;
        }
        let connection = gatehouse_core::Resource::Connection { connection: self.session.connection.clone() };
        self.unmask_connection = self.pipeline.may_unmask(self.session, &connection).await;
        self.active_mask = if self.unmask_connection { None } else { self.masker.clone() };
    }

    /// How each of `columns` is masked for this caller (see [`column_masks`]).
    async fn column_masks(&mut self, columns: Option<&[crate::Column]>) -> Vec<crate::masking::ColumnMask> {
        if (self.column_rules.is_empty() && self.masker.is_none()) || self.unmask_connection {
            return Vec::new();
        }
        column_masks(&*self.pipeline, self.session, &self.column_rules, &self.catalog_login, self.max_backend, columns)
            .await
    }

    /// Sends an error, notice or notification with what it carries masked.
    async fn send_masked(&mut self, frame: &BackendFrame) -> Result<(), String> {
        let masked = self.active_mask.as_deref().and_then(|m| match frame.tag() {
            b'A' => crate::masking::notification(frame.body(), m),
            tag => crate::masking::error_fields(tag, frame.body(), m),
        });
        self.send_client(masked.as_ref().unwrap_or(frame.raw())).await
    }

    /// `COPY … TO STDOUT` messages under masking: what to send, if anything.
    fn copy_out_frame(&mut self, frame: &BackendFrame, tally: &mut crate::masking::Tally) -> Option<Bytes> {
        let rules_apply = !self.column_rules.is_empty() && !self.unmask_connection;
        if self.active_mask.is_none() && !rules_apply {
            return Some(frame.raw().clone());
        }
        let masker = self.active_mask.clone();
        match frame.tag() {
            b'H' => {
                // COPY data carries no column descriptions: under column rules, only a copy whose
                // columns were worked out from its statement can be masked.
                self.copy_out = if frame.body().first() == Some(&1) {
                    CopyOut::Refused
                } else if rules_apply {
                    if self.copy_plan.is_some() { CopyOut::Columns } else { CopyOut::Refused }
                } else {
                    CopyOut::Masked
                };
                Some(frame.raw().clone())
            }
            b'd' => match self.copy_out {
                CopyOut::Refused => None,
                CopyOut::Masked => Some(
                    masker
                        .as_deref()
                        .and_then(|m| crate::masking::copy_data(frame.body(), m, tally))
                        .unwrap_or_else(|| frame.raw().clone()),
                ),
                CopyOut::Columns => {
                    let plan = self.copy_plan.as_mut()?;
                    if std::mem::take(&mut plan.header) {
                        return Some(frame.raw().clone());
                    }
                    match crate::masking::copy_row(frame.body(), plan, masker.as_deref(), tally) {
                        Ok(Some(row)) => Some(row),
                        Ok(None) => Some(frame.raw().clone()),
                        Err(e) => {
                            tracing::warn!(session = %self.session.id, error = e, "COPY row not as planned; refusing the rest");
                            self.copy_out = CopyOut::Refused;
                            None
                        }
                    }
                }
                CopyOut::Plain => Some(frame.raw().clone()),
            },
            _ => {
                // CopyDone.
                let refused = std::mem::replace(&mut self.copy_out, CopyOut::Plain) == CopyOut::Refused;
                if refused {
                    self.drop_complete = true;
                    return Some(messages::error_response(
                        Severity::Error,
                        "0A000",
                        "this COPY output cannot be masked on this connection (binary format, or whole-column rules, which COPY gives no column names for); use a SELECT, or COPY in text or csv format",
                        None,
                        None,
                    ));
                }
                Some(frame.raw().clone())
            }
        }
    }

    async fn malformed_from_resource(&mut self, e: &str) -> Result<(), String> {
        self.fatal("08P01", "the resource sent a malformed message").await;
        Err(format!("malformed message from the resource: {e}"))
    }

    fn finish_execute(&self, expect: crate::extended::Expect, command: Option<String>, error: Option<String>) {
        if let crate::extended::Expect::Execute { seq: Some(seq), started, rows, bytes, portal, masked, .. } = expect {
            let rows = command
                .as_deref()
                .and_then(|c| c.rsplit(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(rows);
            let columns = portal
                .and_then(|p| p.columns())
                .map(|c| c.iter().map(|c| c.name.clone()).collect())
                .unwrap_or_default();
            let result = RequestResult {
                duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                rows: Some(rows),
                command,
                error,
                bytes_out: bytes,
                bytes_in: 0,
                columns,
                masked,
                samples: None,
            };
            self.pipeline.finish(self.session, seq, result);
        }
    }

    async fn on_upstream_extended<U: AsyncWrite + Unpin>(
        &mut self,
        frame: BackendFrame,
        up: &mut U,
    ) -> Result<(), String> {
        use crate::extended::Expect;
        match frame.tag() {
            b'1' | b'2' | b'3' => {
                self.ext.expects.pop_front();
            }
            b't' => {
                if let Some(Expect::Describe { target, own }) = self.ext.expects.front() {
                    if let Some(types) = crate::extended::parameter_description(frame.body()) {
                        target.parameters(types);
                    }
                    if *own {
                        return Ok(());
                    }
                }
            }
            b'T' | b'n' if matches!(self.ext.expects.front(), Some(Expect::Describe { .. })) => {
                let columns = if frame.tag() == b'T' {
                    match frame.row_description() {
                        Ok(c) => c,
                        Err(e) => {
                            self.fatal("08P01", "the resource sent a malformed row description").await;
                            return Err(format!("malformed row description from the resource: {e}"));
                        }
                    }
                } else {
                    Vec::new()
                };
                if let Some(Expect::Describe { target, own }) = self.ext.expects.pop_front() {
                    target.answered(columns);
                    if own {
                        return Ok(());
                    }
                }
            }
            b'D' => {
                // Which columns a rule masks whole: worked out at the first row of each Execute.
                let pending = match self.ext.expects.front() {
                    Some(Expect::Execute { whole: None, portal, .. }) => {
                        Some(portal.as_ref().and_then(|p| p.columns()))
                    }
                    _ => None,
                };
                if let Some(columns) = pending {
                    let computed = self.column_masks(columns.as_deref()).await;
                    if let Some(Expect::Execute { whole, .. }) = self.ext.expects.front_mut() {
                        *whole = Some(computed);
                    }
                }
                if let Some(Expect::Execute { rows, bytes, portal, masked, whole, .. }) = self.ext.expects.front_mut() {
                    *rows += 1;
                    *bytes += frame.raw().len() as u64;
                    let whole = whole.as_deref().unwrap_or_default();
                    if self.active_mask.is_some() || whole.contains(&crate::masking::ColumnMask::Whole) {
                        let columns = portal.as_ref().and_then(|p| p.columns());
                        let masker = self.active_mask.as_deref();
                        match crate::masking::data_row(frame.body(), columns.as_deref(), whole, masker, masked) {
                            Ok(Some(row)) => return self.send_client(&row).await,
                            Ok(None) => {}
                            Err(e) => return self.malformed_from_resource(e).await,
                        }
                    }
                }
            }
            b'H' | b'd' | b'c' => {
                if frame.tag() == b'd'
                    && let Some(Expect::Execute { bytes, .. }) = self.ext.expects.front_mut()
                {
                    *bytes += frame.raw().len() as u64;
                }
                let mut tally = crate::masking::Tally::new();
                let out = self.copy_out_frame(&frame, &mut tally);
                if let Some(Expect::Execute { masked, .. }) = self.ext.expects.front_mut() {
                    merge_tally(masked, tally);
                }
                return match out {
                    Some(bytes) => self.send_client(&bytes).await,
                    None => Ok(()),
                };
            }
            b'A' | b'N' => return self.send_masked(&frame).await,
            b'C' if std::mem::take(&mut self.drop_complete) => {
                if let Some(e) = self.ext.expects.pop_front() {
                    self.finish_execute(e, None, Some("binary COPY output cannot be masked".into()));
                }
                return Ok(());
            }
            b'C' | b'I' | b's' => {
                if let Some(e) = self.ext.expects.pop_front() {
                    let tag = if frame.tag() == b'C' { frame.command_tag().ok().map(String::from) } else { None };
                    self.finish_execute(e, tag, None);
                }
            }
            b'G' => self.start_copy_in(up).await?,
            b'E' => {
                let failed = self.ext.expects.pop_front();
                // The server now skips everything up to the next Sync.
                while let Some(next) = self.ext.expects.front() {
                    if matches!(next, Expect::Sync) {
                        break;
                    }
                    if let Some(skipped) = self.ext.expects.pop_front() {
                        self.finish_execute(skipped, None, Some("not run: an earlier message failed".into()));
                    }
                }
                match failed {
                    Some(Expect::Injected(refusal)) => return self.send_client(&refusal).await,
                    Some(other) => {
                        let e = frame.error_fields().map(|f| format!("{}: {}", f.code, f.message)).unwrap_or_default();
                        self.finish_execute(other, None, Some(crate::masking::text(self.masker.as_deref(), e)));
                    }
                    None => {}
                }
                return self.send_masked(&frame).await;
            }
            b'Z' => {
                while let Some(e) = self.ext.expects.pop_front() {
                    if matches!(e, Expect::Sync) {
                        break;
                    }
                    self.finish_execute(e, None, Some("not run".into()));
                }
                self.status = frame.ready_status().unwrap_or(TransactionStatus::Idle);
                if std::mem::take(&mut self.ddl_in_flight) {
                    crate::catalog::forget(&self.session.connection);
                }
                self.send_client(frame.raw()).await?;
                self.flush().await?;
                return self.drain_queue(up).await;
            }
            _ => {}
        }
        self.send_client(frame.raw()).await
    }

    /// The resource asked for `COPY FROM STDIN` data: the caller's copy messages now go straight
    /// through, including any that arrived early and wait in the queue.
    async fn start_copy_in<U: AsyncWrite + Unpin>(&mut self, up: &mut U) -> Result<(), String> {
        self.copy_in = true;
        while self.copy_in && self.queued.front().is_some_and(|m| matches!(m.tag(), b'd' | b'c' | b'f')) {
            if let Some(m) = self.queued.pop_front() {
                self.copy_in = m.tag() == b'd';
                Self::forward(up, m.raw()).await?;
            }
        }
        up.flush().await.map_err(|e| format!("the resource connection was lost: {e}"))
    }

    async fn query<U: AsyncWrite + Unpin>(&mut self, m: FrontendMessage, up: &mut U) -> Result<(), String> {
        let text = match m.query_text() {
            Ok(t) => t.to_string(),
            Err(e) => {
                self.fatal("08P01", &format!("malformed query message: {e}")).await;
                return Err(format!("malformed query: {e}"));
            }
        };
        let batch = self.requests(&text);
        if batch.is_empty() {
            // An empty query string: the resource answers EmptyQueryResponse.
            self.in_flight = Some(InFlight {
                seqs: vec![],
                done: 0,
                started: Instant::now(),
                rows: 0,
                bytes: 0,
                error: None,
                columns: vec![],
                masked: Default::default(),
            });
            return up.write_all(m.raw()).await.map_err(|e| format!("the resource connection was lost: {e}"));
        }
        let mut verdicts = Vec::with_capacity(batch.len());
        let mut refusal: Option<(usize, Verdict, Option<String>)> = None;
        for (i, stmt) in batch.iter().enumerate() {
            match self.pipeline.authorize(self.session, &stmt.request).await {
                Ok(v) => {
                    let held = v.decision.outcome == Outcome::Review && v.held.is_some();
                    let denied = (v.decision.outcome != Outcome::Allow && !held) || stmt.refuse.is_some();
                    if denied && refusal.is_none() {
                        refusal = Some((i, v.clone(), stmt.refuse.clone()));
                    }
                    verdicts.push(v);
                }
                Err(e) => {
                    // Not recorded, so not forwarded.
                    let msg = Self::unrecorded(&e);
                    for v in &verdicts {
                        self.finish(v.seq, Some("not run: the batch could not be recorded".into()), 0, None);
                    }
                    return self.refuse(msg, up).await;
                }
            }
        }
        // Statements that need review wait here, one after another, until each is decided.
        let mut held_refusal: Option<(usize, String)> = None;
        if refusal.is_none() {
            for i in 0..verdicts.len() {
                let Some(hold) = verdicts[i].held.clone() else { continue };
                match self.hold(&hold, &batch[i].request).await? {
                    // The approved run is recorded as its own request; its result goes there.
                    Ok(allowed) => verdicts[i] = allowed,
                    Err(message) => {
                        held_refusal = Some((i, message));
                        break;
                    }
                }
            }
        }
        if let Some((i, message)) = held_refusal {
            let n = batch.len();
            for (j, v) in verdicts.iter().enumerate() {
                let why = if j == i {
                    format!("refused: {message}")
                } else {
                    "not run: another statement of the batch was not approved".into()
                };
                self.finish(v.seq, Some(why), 0, None);
            }
            let detail = (n > 1).then(|| {
                format!(
                    "statement {} of {n} was not approved, so none of them ran: {}",
                    i + 1,
                    truncate(&batch[i].request.text, 200)
                )
            });
            let err = messages::error_response(
                Severity::Error,
                "42501",
                &format!("permission denied: {message}"),
                detail.as_deref(),
                None,
            );
            return self.refuse(err, up).await;
        }
        if let Some((i, verdict, adapter_reason)) = refusal {
            let n = batch.len();
            let stmt = &batch[i].request;
            let detail = if n > 1 {
                Some(format!(
                    "statement {} of {n} was refused, so none of them ran: {}",
                    i + 1,
                    truncate(&stmt.text, 200)
                ))
            } else {
                None
            };
            for (j, v) in verdicts.iter().enumerate() {
                let why = if j == i { "refused" } else { "not run: another statement of the batch was refused" };
                self.finish(v.seq, Some(why.into()), 0, None);
            }
            let err = Self::refusal(
                &verdict.decision,
                verdict.limited.as_deref(),
                adapter_reason.as_deref(),
                stmt.note.as_deref(),
                detail.as_deref(),
            );
            return self.refuse(err, up).await;
        }
        self.restamp_after = batch.iter().any(|s| s.restamp);
        self.in_flight = Some(InFlight {
            seqs: verdicts.iter().map(|v| v.seq).collect(),
            done: 0,
            started: Instant::now(),
            rows: 0,
            bytes: 0,
            error: None,
            columns: vec![],
            masked: Default::default(),
        });
        self.refresh_mask().await;
        self.copy_plan = None;
        if !self.column_rules.is_empty() && !self.unmask_connection && batch.len() == 1 {
            self.copy_plan = plan_copy(
                &*self.pipeline,
                self.session,
                &self.column_rules,
                &self.catalog_login,
                self.max_backend,
                &text,
            )
            .await;
        }
        self.ddl_in_flight |= batch.iter().any(|r| changes_tables(&r.request));
        up.write_all(m.raw()).await.map_err(|e| format!("the resource connection was lost: {e}"))?;
        up.flush().await.map_err(|e| format!("the resource connection was lost: {e}"))
    }

    /// Answers a refused batch. Inside a transaction the resource's transaction is failed too,
    /// so a later COMMIT commits nothing.
    async fn refuse<U: AsyncWrite + Unpin>(&mut self, error: Bytes, up: &mut U) -> Result<(), String> {
        if self.status == TransactionStatus::InTransaction {
            self.discard_reply = Some(error);
            let fail = frontend_query(
                "SELECT pg_catalog.int4('gatehouse: a statement of this transaction was refused by policy')",
            );
            up.write_all(&fail).await.map_err(|e| format!("the resource connection was lost: {e}"))?;
            return up.flush().await.map_err(|e| format!("the resource connection was lost: {e}"));
        }
        self.send_client(&error).await?;
        self.send_client(&messages::ready_for_query(self.status)).await?;
        self.flush().await
    }

    fn finish(&self, seq: i64, error: Option<String>, rows: u64, command: Option<String>) {
        let result = RequestResult { error, rows: Some(rows), command, ..Default::default() };
        self.pipeline.finish(self.session, seq, result);
    }

    fn finish_in_flight(&mut self, error: Option<String>) {
        if let Some(f) = self.in_flight.take() {
            for &seq in &f.seqs[f.done.min(f.seqs.len())..] {
                let result = RequestResult { error: error.clone().or(Some("not run".into())), ..Default::default() };
                self.pipeline.finish(self.session, seq, result);
            }
        }
    }

    /// One statement of the batch in flight completed (or failed).
    fn statement_done(&mut self, command: Option<String>, error: Option<String>) {
        let Some(f) = self.in_flight.as_mut() else { return };
        if let Some(&seq) = f.seqs.get(f.done) {
            let rows = command
                .as_deref()
                .and_then(|c| c.rsplit(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(f.rows);
            let result = RequestResult {
                duration_ms: f.started.elapsed().as_secs_f64() * 1000.0,
                rows: Some(rows),
                command,
                error: error.clone(),
                bytes_out: f.bytes,
                bytes_in: 0,
                columns: std::mem::take(&mut f.columns),
                masked: std::mem::take(&mut f.masked),
                samples: None,
            };
            self.pipeline.finish(self.session, seq, result);
        }
        f.done += 1;
        f.rows = 0;
        f.bytes = 0;
        f.started = Instant::now();
        if error.is_some() {
            f.error = error;
        }
    }

    async fn on_upstream<U: AsyncWrite + Unpin>(&mut self, frame: BackendFrame, up: &mut U) -> Result<(), String> {
        if self.swallowing {
            if frame.tag() == b'Z' {
                self.swallowing = false;
                return self.drain_queue(up).await;
            }
            return Ok(());
        }
        if let Some(refusal) = &self.discard_reply {
            // The reply to the gateway's own failing statement: replaced by the refusal.
            if frame.tag() == b'Z' {
                self.status = frame.ready_status().unwrap_or(TransactionStatus::Failed);
                let refusal = refusal.clone();
                self.discard_reply = None;
                self.send_client(&refusal).await?;
                self.send_client(&messages::ready_for_query(self.status)).await?;
                self.flush().await?;
                return self.drain_queue(up).await;
            }
            return Ok(());
        }
        let frame = match self.result_limit {
            Some(max) => match self.limit_result(frame, max).await? {
                Some(frame) => frame,
                None => return Ok(()),
            },
            None => frame,
        };
        if !self.ext.expects.is_empty() {
            return self.on_upstream_extended(frame, up).await;
        }
        match frame.tag() {
            b'D' => {
                if let Some(f) = self.in_flight.as_mut() {
                    f.rows += 1;
                    f.bytes += frame.raw().len() as u64;
                    if self.active_mask.is_some() || self.row_whole.contains(&crate::masking::ColumnMask::Whole) {
                        let masker = self.active_mask.as_deref();
                        match crate::masking::data_row(
                            frame.body(),
                            self.row_columns.as_deref(),
                            &self.row_whole,
                            masker,
                            &mut f.masked,
                        ) {
                            Ok(Some(row)) => return self.send_client(&row).await,
                            Ok(None) => {}
                            Err(e) => return self.malformed_from_resource(e).await,
                        }
                    }
                }
            }
            b'H' | b'd' | b'c' => {
                let mut tally = crate::masking::Tally::new();
                let out = self.copy_out_frame(&frame, &mut tally);
                if let Some(f) = self.in_flight.as_mut() {
                    if frame.tag() == b'd' {
                        f.bytes += frame.raw().len() as u64;
                    }
                    merge_tally(&mut f.masked, tally);
                }
                if self.drop_complete && frame.tag() == b'c' {
                    self.statement_done(None, Some("binary COPY output cannot be masked".into()));
                }
                return match out {
                    Some(bytes) => self.send_client(&bytes).await,
                    None => Ok(()),
                };
            }
            b'C' if std::mem::take(&mut self.drop_complete) => return Ok(()),
            b'T' => {
                let columns = frame.row_description().ok();
                if let Some(f) = self.in_flight.as_mut() {
                    f.columns = columns.iter().flatten().map(|c| c.name.clone()).collect();
                }
                self.row_whole = self.column_masks(columns.as_deref()).await;
                self.row_columns = columns;
            }
            b'C' => {
                let tag = frame.command_tag().ok().map(String::from);
                self.statement_done(tag, None);
            }
            b'I' => self.statement_done(None, None),
            b'E' if self.in_flight.is_some() => {
                let e = frame.error_fields().map(|f| format!("{}: {}", f.code, f.message)).unwrap_or_default();
                self.statement_done(None, Some(crate::masking::text(self.masker.as_deref(), e)));
                return self.send_masked(&frame).await;
            }
            b'E' | b'N' | b'A' => return self.send_masked(&frame).await,
            b'G' => self.start_copy_in(up).await?,
            _ => {}
        }
        self.send_client(frame.raw()).await?;
        if frame.tag() == b'Z' {
            self.status = frame.ready_status().unwrap_or(TransactionStatus::Idle);
            if std::mem::take(&mut self.ddl_in_flight) {
                crate::catalog::forget(&self.session.connection);
            }
            self.finish_in_flight(Some("not run: an earlier statement of the batch failed".into()));
            self.flush().await?;
            if std::mem::take(&mut self.restamp_after) {
                let set = format!("SET application_name TO '{}'", self.app_name.replace('\'', "''"));
                self.swallowing = true;
                up.write_all(&frontend_query(&set))
                    .await
                    .map_err(|e| format!("the resource connection was lost: {e}"))?;
                return up.flush().await.map_err(|e| format!("the resource connection was lost: {e}"));
            }
            return self.drain_queue(up).await;
        }
        // Large results stream: flush as frames arrive so the caller never waits on a buffer.
        if self.client_write.buffer().len() >= 32 * 1024 {
            self.flush().await?;
        }
        Ok(())
    }

    /// Keeps each statement's result under `max` bytes. Past it, the statement is canceled
    /// upstream and its further rows dropped; the error that ends it (the cancel's `57014`) is
    /// answered as 54000 saying why, and the session goes on. If the statement completed
    /// before the cancel reached it, caller and resource no longer agree on what ran after it,
    /// so the session is ended. `None`: the frame is dropped.
    async fn limit_result(&mut self, frame: BackendFrame, max: u64) -> Result<Option<BackendFrame>, String> {
        let too_large = || {
            format!(
                "the statement's result is larger than the gateway allows ({max} bytes, postgres.max_result_bytes); it was canceled"
            )
        };
        match frame.tag() {
            b'D' | b'd' => {
                if self.over_result {
                    return Ok(None);
                }
                self.result_bytes += frame.raw().len() as u64;
                if self.result_bytes > max {
                    self.over_result = true;
                    self.pipeline.over_limit("postgres", gatehouse_core::pipeline::Limit::ResultBytes);
                    if let Some(token) = self.cancel.clone() {
                        tokio::spawn(async move {
                            if let Err(e) = token.cancel().await {
                                tracing::warn!(error = %e, "canceling an over-large result failed");
                            }
                        });
                    }
                    return Ok(None);
                }
            }
            b'c' if self.over_result => return Ok(None),
            b'E' if self.over_result => {
                self.over_result = false;
                self.result_bytes = 0;
                let error = messages::error_response(Severity::Error, "54000", &too_large(), None, None);
                return BackendFrame::from_raw(error).map(Some).map_err(|e| e.to_string());
            }
            b'C' | b's' if self.over_result => {
                let message = too_large();
                let why = format!("54000: {message}");
                if let Some(crate::extended::Expect::Execute { .. }) = self.ext.expects.front()
                    && let Some(e) = self.ext.expects.pop_front()
                {
                    self.finish_execute(e, None, Some(why.clone()));
                } else {
                    self.statement_done(None, Some(why));
                }
                self.fatal(
                    "54000",
                    &format!("{message}; it completed before the cancel reached it, so the session ends"),
                )
                .await;
                return Err("a result over postgres.max_result_bytes completed before it could be canceled".into());
            }
            b'C' | b'E' | b'I' | b's' | b'Z' => self.result_bytes = 0,
            _ => {}
        }
        Ok(Some(frame))
    }

    async fn drain_queue<U: AsyncWrite + Unpin>(&mut self, up: &mut U) -> Result<(), String> {
        while let Some(m) = self.queued.front() {
            if !self.can_handle(m) {
                break;
            }
            let Some(m) = self.queued.pop_front() else { break };
            Box::pin(self.handle(m, up)).await?;
        }
        Ok(())
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Adds one tally of masked values to another.
fn merge_tally(into: &mut crate::masking::Tally, from: crate::masking::Tally) {
    for (column, detectors) in from {
        let entry = into.entry(column).or_default();
        for (detector, n) in detectors {
            *entry.entry(detector).or_default() += n;
        }
    }
}

/// How each of `columns` is masked for this caller. Table columns are named through the
/// catalogue: a column that a whole-column rule names is masked whole, and one this caller may
/// `unmask` (on the column, its table or the connection) is left clear; the rest, and
/// expressions, go through the value detectors. If the catalogue cannot be read, table columns
/// are masked whole when rules exist, else left to the detectors (fail closed either way).
async fn column_masks<P: Pipeline>(
    pipeline: &P,
    session: &OpenedSession,
    rules: &[gatehouse_mask::ColumnPattern],
    login: &UpstreamConfig,
    max_backend: usize,
    columns: Option<&[crate::Column]>,
) -> Vec<crate::masking::ColumnMask> {
    use crate::masking::ColumnMask;
    let Some(columns) = columns else { return Vec::new() };
    let tables: Vec<u32> = columns.iter().map(|c| c.table_oid).filter(|o| *o != 0).collect();
    if tables.is_empty() {
        return Vec::new();
    }
    let unknown = if rules.is_empty() { ColumnMask::Detect } else { ColumnMask::Whole };
    let names = crate::catalog::columns(login, &session.connection, &tables, max_backend).await;
    if let Err(e) = &names {
        tracing::warn!(session = %session.id, error = %e, "column names unknown; masking as if every rule applied");
    }
    let mut plan = Vec::with_capacity(columns.len());
    for c in columns {
        let mask = match (&names, c.table_oid) {
            (_, 0) => ColumnMask::Detect,
            (Err(_), _) => unknown,
            (Ok(names), oid) => match names.get(&oid).and_then(|t| t.get(&c.column_number)) {
                // A table the catalogue does not show (dropped meanwhile).
                None => unknown,
                Some((schema, table, column)) => {
                    let resource = gatehouse_core::Resource::Column {
                        connection: session.connection.clone(),
                        schema: schema.clone(),
                        table: table.clone(),
                        column: column.clone(),
                    };
                    if pipeline.may_unmask(session, &resource).await {
                        ColumnMask::Clear
                    } else if rules.iter().any(|r| r.matches(schema, table, column)) {
                        ColumnMask::Whole
                    } else {
                        ColumnMask::Detect
                    }
                }
            },
        };
        plan.push(mask);
    }
    plan
}

/// Whether a request may rename or recreate tables or columns (what the catalogue told the
/// column rules may be stale after it).
fn changes_tables(request: &Request) -> bool {
    request.accesses.iter().any(|(action, _)| action == "sql.ddl")
}

/// How to mask the rows of `sql` field by field, if it is a `COPY table … TO STDOUT` in text or
/// CSV format with no options that change how rows are written, on a table the catalogue
/// knows. `None` otherwise: the copy is then refused under whole-column rules.
async fn plan_copy<P: Pipeline>(
    pipeline: &P,
    session: &OpenedSession,
    rules: &[gatehouse_mask::ColumnPattern],
    login: &UpstreamConfig,
    max_backend: usize,
    sql: &str,
) -> Option<crate::masking::CopyPlan> {
    use crate::masking::{ColumnMask, CopyPlan};
    let shape = gatehouse_sql::copy_out(sql).ok()??;
    if shape.other_options || shape.format == gatehouse_sql::CopyFormat::Binary {
        return None;
    }
    let (schema, table, all) =
        crate::catalog::table_columns(login, shape.schema.as_deref(), &shape.table, max_backend).await.ok()??;
    let chosen: Vec<(String, u32)> = if shape.columns.is_empty() {
        all
    } else {
        shape.columns.iter().map(|n| all.iter().find(|(c, _)| c == n).cloned()).collect::<Option<_>>()?
    };
    let csv = shape.format == gatehouse_sql::CopyFormat::Csv;
    let mut columns = Vec::with_capacity(chosen.len());
    for (column, oid) in chosen {
        let resource = gatehouse_core::Resource::Column {
            connection: session.connection.clone(),
            schema: schema.clone(),
            table: table.clone(),
            column: column.clone(),
        };
        let mask = if pipeline.may_unmask(session, &resource).await {
            ColumnMask::Clear
        } else if rules.iter().any(|r| r.matches(&schema, &table, &column)) {
            ColumnMask::Whole
        } else {
            ColumnMask::Detect
        };
        columns.push((column, mask, CopyPlan::free_text(oid)));
    }
    Some(CopyPlan {
        csv,
        delimiter: shape.delimiter.unwrap_or(if csv { b',' } else { b'\t' }),
        header: csv && shape.header,
        columns,
    })
}
