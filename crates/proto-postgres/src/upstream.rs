//! The upstream client: opens a session on the real PostgreSQL server (TCP with a deadline, TLS
//! as configured, startup, authentication) and forwards cancel requests to it.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use gatehouse_core::Blame;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::backend::{BackendFrame, read_backend};
use crate::tls;
use crate::wire::{Tag, WireError};

/// Largest message accepted from the server while logging in (authentication requests,
/// `ParameterStatus`, `BackendKeyData`, errors and notices are all small).
const LOGIN_MAX_LEN: usize = 1024 * 1024;

/// Default for [`UpstreamConfig::connect_timeout`].
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether and how the connection to the resource is encrypted (libpq's `sslmode`, reduced to
/// the modes a gateway should offer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP. Passwords still never travel in cleartext except to a loopback address.
    Disable,
    /// TLS, but any server certificate is accepted (the handshake signature is still checked
    /// against it): protects against eavesdropping, not against an active man-in-the-middle —
    /// except that a SCRAM-SHA-256-PLUS login still fails through one, since the server binds
    /// its proof to the certificate it sent.
    Require,
    /// TLS; the certificate must chain to the configured CA file (or the system roots) and
    /// name the host that was dialled.
    VerifyFull,
}

impl TlsMode {
    /// `disable`, `require` or `verify-full`, as in libpq.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Require => "require",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TlsMode {
    type Err = UpstreamError;

    /// Parses `disable`, `require` or `verify-full`.
    fn from_str(s: &str) -> Result<TlsMode, UpstreamError> {
        match s {
            "disable" => Ok(TlsMode::Disable),
            "require" => Ok(TlsMode::Require),
            "verify-full" => Ok(TlsMode::VerifyFull),
            other => Err(UpstreamError::Config(format!(
                "unknown TLS mode {other:?}: expected disable, require or verify-full"
            ))),
        }
    }
}

/// Where and as whom to log in on the resource. `Debug` never shows the password.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Password, if the server asks for one.
    pub password: Option<String>,
    /// Database to connect to.
    pub database: String,
    /// Encryption of the link.
    pub tls: TlsMode,
    /// PEM file of trusted CA certificates for [`TlsMode::VerifyFull`] (default: system roots).
    pub ca_file: Option<PathBuf>,
    /// Further startup parameters (`application_name`, `client_encoding`, …), sent after
    /// `user` and `database`. `user`, `database` and `_pq_.*` names are refused here.
    pub params: Vec<(String, String)>,
    /// Deadline for the whole login: TCP connect, TLS handshake, authentication and the first
    /// `ReadyForQuery`. Also bounds each cancel request.
    pub connect_timeout: Duration,
}

impl UpstreamConfig {
    /// A configuration with TLS mode [`TlsMode::VerifyFull`] against the system roots, no
    /// password, no extra parameters and a 10 s connect timeout.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        database: impl Into<String>,
    ) -> UpstreamConfig {
        UpstreamConfig {
            host: host.into(),
            port,
            user: user.into(),
            password: None,
            database: database.into(),
            tls: TlsMode::VerifyFull,
            ca_file: None,
            params: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// `host:port` (`[host]:port` for an IPv6 address), as used in error messages.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn check(&self) -> Result<(), UpstreamError> {
        if self.user.is_empty() {
            return Err(UpstreamError::Config(format!("{}: no user name configured", self.address())));
        }
        for (name, _) in &self.params {
            if name == "user" || name == "database" || name.starts_with("_pq_.") || name.is_empty() {
                return Err(UpstreamError::Config(format!(
                    "{}: startup parameter {name:?} cannot be set in params",
                    self.address()
                )));
            }
        }
        Ok(())
    }

    fn tls_setup(&self) -> Result<Option<TlsSetup>, UpstreamError> {
        let Some(config) = tls::client_config(self.tls, self.ca_file.as_deref())? else {
            return Ok(None);
        };
        let server_name = ServerName::try_from(self.host.clone()).map_err(|_| {
            UpstreamError::Config(format!("host {:?} is not a valid DNS name or IP address for TLS", self.host))
        })?;
        Ok(Some(TlsSetup { config, server_name, mode: self.tls }))
    }
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("params", &self.params)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// The process id and secret key of a backend (`BackendKeyData`), needed to cancel its
/// queries. `Debug` does not show the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    /// Backend process id.
    pub pid: i32,
    /// Secret key.
    pub key: i32,
}

impl fmt::Debug for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendKey").field("pid", &self.pid).field("key", &"<redacted>").finish()
    }
}

/// How the server authenticated the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// No password asked (`trust`, or `peer`/`cert` rules that ask nothing on the wire).
    Trust,
    /// Cleartext password (only sent over TLS or to a loopback address).
    Cleartext,
    /// MD5 challenge-response.
    Md5,
    /// SCRAM-SHA-256 without channel binding.
    ScramSha256,
    /// SCRAM-SHA-256-PLUS with `tls-server-end-point` channel binding.
    ScramSha256Plus,
}

/// Why opening a session on (or cancelling on) the resource failed. Every message names the
/// resource's `host:port`; none contains the password.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The configuration cannot work (bad CA file, invalid host name, forbidden parameter).
    #[error("invalid upstream configuration: {0}")]
    Config(String),
    /// The network failed.
    #[error("{addr}: {during}: {source}")]
    Io {
        /// `host:port`.
        addr: String,
        /// What was being done (`connecting`, `sending the startup message`, …).
        during: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The login (or cancel) did not finish within [`UpstreamConfig::connect_timeout`].
    #[error("{addr}: no session within {after:?} (connect timeout)")]
    Timeout {
        /// `host:port`.
        addr: String,
        /// The deadline.
        after: Duration,
    },
    /// The TLS mode asks for TLS but the server answered `N` to `SSLRequest`.
    #[error("{addr}: the server does not accept TLS connections, but the TLS mode is {mode}")]
    TlsRefused {
        /// `host:port`.
        addr: String,
        /// The configured mode.
        mode: TlsMode,
    },
    /// The TLS handshake failed (untrusted certificate, wrong name, no common parameters…).
    #[error("{addr}: TLS handshake failed: {message}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// rustls's explanation.
        message: String,
    },
    /// The server broke the protocol (unexpected or malformed message, early close, failed
    /// SCRAM server proof).
    #[error("{addr}: protocol error: {message}")]
    Protocol {
        /// `host:port`.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// The gateway refused to authenticate the way the server asked (cleartext password over
    /// an unencrypted non-loopback link, no password configured, unsupported method).
    #[error("{addr}: {message}")]
    Auth {
        /// `host:port`.
        addr: String,
        /// Why.
        message: String,
    },
    /// The server refused the login with an `ErrorResponse` (`28P01` wrong password, `3D000`
    /// no such database, `53300` too many connections, …).
    #[error("{addr}: the server refused the login: {severity} {code}: {message}")]
    Server {
        /// `host:port`.
        addr: String,
        /// `FATAL`, `ERROR`, …
        severity: String,
        /// SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
        /// The server's detail, if any.
        detail: Option<String>,
    },
}

impl UpstreamError {
    /// Who is at fault: the gateway for configuration and for refusing an unsafe or
    /// unsupported authentication method, the resource for everything else.
    pub fn blame(&self) -> Blame {
        match self {
            UpstreamError::Config(_) | UpstreamError::Auth { .. } => Blame::Gateway,
            _ => Blame::Resource,
        }
    }
}

fn io_error<'a>(addr: &'a str, during: &'static str) -> impl FnOnce(io::Error) -> UpstreamError + 'a {
    move |source| UpstreamError::Io { addr: addr.to_owned(), during, source }
}

fn protocol(addr: &str, message: impl Into<String>) -> UpstreamError {
    UpstreamError::Protocol { addr: addr.to_owned(), message: message.into() }
}

fn wire_error(addr: &str, e: WireError) -> UpstreamError {
    match e {
        WireError::Io(source) => UpstreamError::Io { addr: addr.to_owned(), during: "reading from the server", source },
        WireError::Closed | WireError::Truncated => protocol(addr, "the server closed the connection during login"),
        other => protocol(addr, other.to_string()),
    }
}

fn server_error(addr: &str, frame: &BackendFrame) -> UpstreamError {
    match frame.error_fields() {
        Ok(f) => UpstreamError::Server {
            addr: addr.to_owned(),
            severity: f.severity,
            code: f.code,
            message: f.message,
            detail: f.detail,
        },
        Err(e) => protocol(addr, format!("unreadable ErrorResponse: {e}")),
    }
}

/// The link to the resource: plain TCP or TLS over TCP.
pub enum UpstreamStream {
    /// Plain TCP ([`TlsMode::Disable`]).
    Plain(TcpStream),
    /// rustls over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamStream {
    /// Whether the link is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, UpstreamStream::Tls(_))
    }

    /// The underlying TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamStream::Plain(s) => s,
            UpstreamStream::Tls(s) => s.get_ref().0,
        }
    }
}

impl fmt::Debug for UpstreamStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_tls() { "Tls" } else { "Plain" };
        f.debug_tuple(kind).field(&self.tcp().peer_addr().ok()).finish()
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// TLS settings resolved from an [`UpstreamConfig`], kept for cancel requests.
#[derive(Clone)]
struct TlsSetup {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    mode: TlsMode,
}

impl fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSetup").field("server_name", &self.server_name).field("mode", &self.mode).finish()
    }
}

/// A logged-in session on the resource, ready for queries: the server has sent its first
/// `ReadyForQuery` (status idle), which was consumed.
#[derive(Debug)]
pub struct Upstream {
    stream: UpstreamStream,
    addr: String,
    peer: SocketAddr,
    params: Vec<(String, String)>,
    key: Option<BackendKey>,
    auth: AuthMethod,
    tls: Option<TlsSetup>,
    timeout: Duration,
}

impl Upstream {
    /// The link, to write frontend messages to and read [`BackendFrame`]s from.
    pub fn stream(&mut self) -> &mut UpstreamStream {
        &mut self.stream
    }

    /// The link, by value (keep a [`cancel_token`](Self::cancel_token) first if needed).
    pub fn into_stream(self) -> UpstreamStream {
        self.stream
    }

    /// Every `ParameterStatus` the server sent during login (`server_version`,
    /// `client_encoding`, `DateStyle`, `TimeZone`, `integer_datetimes`, …), latest value per
    /// name, in the order first sent. The adapter relays these to the caller.
    pub fn parameters(&self) -> &[(String, String)] {
        &self.params
    }

    /// The value of one reported parameter.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The backend's process id and cancel key, if the server sent `BackendKeyData`.
    pub fn backend_key(&self) -> Option<BackendKey> {
        self.key
    }

    /// The address actually connected to.
    pub fn server_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The configured `host:port`.
    pub fn address(&self) -> &str {
        &self.addr
    }

    /// Whether the link is encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// How the server authenticated the gateway.
    pub fn auth_method(&self) -> AuthMethod {
        self.auth
    }

    /// A handle that cancels this session's running query, usable from another task while
    /// the stream is busy. `None` if the server sent no `BackendKeyData`.
    pub fn cancel_token(&self) -> Option<CancelToken> {
        Some(CancelToken {
            addr: self.addr.clone(),
            peer: self.peer,
            tls: if self.stream.is_tls() { self.tls.clone() } else { None },
            key: self.key?,
            timeout: self.timeout,
        })
    }
}

/// Cancels the running query of one upstream session: a `CancelRequest` on a new connection to
/// the same server address, over TLS if the session used TLS. `Debug` does not show the key.
#[derive(Debug, Clone)]
pub struct CancelToken {
    addr: String,
    peer: SocketAddr,
    tls: Option<TlsSetup>,
    key: BackendKey,
    timeout: Duration,
}

impl CancelToken {
    /// The session's backend key.
    pub fn key(&self) -> BackendKey {
        self.key
    }

    /// Sends the cancel request and waits until the server has closed that connection (it
    /// answers nothing, and does not say whether a query was running). The cancelled query
    /// then fails on its own session with SQLSTATE `57014`.
    pub async fn cancel(&self) -> Result<(), UpstreamError> {
        let addr = self.addr.as_str();
        let attempt = async {
            let tcp = TcpStream::connect(self.peer).await.map_err(io_error(addr, "connecting"))?;
            let stream = negotiate_tls(tcp, addr, self.tls.as_ref()).await?;
            deliver_cancel(stream, addr, self.key).await
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(UpstreamError::Timeout { addr: addr.to_owned(), after: self.timeout }))
    }
}

/// Sends a `CancelRequest` for backend `key` to `cfg.host:cfg.port` on a new connection, over
/// TLS unless `cfg.tls` is [`TlsMode::Disable`] (PostgreSQL accepts a cancel request after
/// `SSLRequest`, which keeps the key off the wire), within `cfg.connect_timeout`. Prefer
/// [`Upstream::cancel_token`], which targets the exact address the session is connected to
/// even when the host name resolves to several.
pub async fn send_cancel(cfg: &UpstreamConfig, key: BackendKey) -> Result<(), UpstreamError> {
    let addr = cfg.address();
    let tls = cfg.tls_setup()?;
    let attempt = async {
        let tcp = TcpStream::connect((cfg.host.as_str(), cfg.port)).await.map_err(io_error(&addr, "connecting"))?;
        let stream = negotiate_tls(tcp, &addr, tls.as_ref()).await?;
        deliver_cancel(stream, &addr, key).await
    };
    tokio::time::timeout(cfg.connect_timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(UpstreamError::Timeout { addr: addr.clone(), after: cfg.connect_timeout }))
}

async fn deliver_cancel(mut stream: UpstreamStream, addr: &str, key: BackendKey) -> Result<(), UpstreamError> {
    let mut buf = BytesMut::with_capacity(16);
    frontend::cancel_request(key.pid, key.key, &mut buf);
    stream.write_all(&buf).await.map_err(io_error(addr, "sending the cancel request"))?;
    stream.flush().await.map_err(io_error(addr, "sending the cancel request"))?;
    // The server reads the request, signals the backend and closes without answering; waiting
    // for the close means the request was taken. Errors here (a TLS close without
    // close_notify, a reset) say the same.
    let mut sink = [0u8; 256];
    for _ in 0..16 {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    tracing::debug!(upstream = addr, pid = key.pid, "cancel request delivered");
    Ok(())
}

/// Sends `SSLRequest` and performs the TLS handshake if `tls` is set; otherwise returns the
/// plain stream. Exactly one byte is read before the handshake, so nothing a
/// man-in-the-middle sends ahead of it can be mistaken for data inside TLS.
async fn negotiate_tls(
    mut tcp: TcpStream,
    addr: &str,
    tls: Option<&TlsSetup>,
) -> Result<UpstreamStream, UpstreamError> {
    let Some(tls) = tls else {
        return Ok(UpstreamStream::Plain(tcp));
    };
    let mut buf = BytesMut::with_capacity(8);
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await.map_err(io_error(addr, "sending SSLRequest"))?;
    let mut answer = [0u8; 1];
    match tcp.read(&mut answer).await.map_err(io_error(addr, "reading the answer to SSLRequest"))? {
        0 => return Err(protocol(addr, "the server closed the connection after SSLRequest")),
        _ => match answer[0] {
            b'S' => {}
            b'N' => return Err(UpstreamError::TlsRefused { addr: addr.to_owned(), mode: tls.mode }),
            other => return Err(protocol(addr, format!("unexpected answer {} to SSLRequest", Tag(other)))),
        },
    }
    let connector = TlsConnector::from(tls.config.clone());
    let stream = connector
        .connect(tls.server_name.clone(), tcp)
        .await
        .map_err(|e| UpstreamError::Tls { addr: addr.to_owned(), message: e.to_string() })?;
    Ok(UpstreamStream::Tls(Box::new(stream)))
}

/// Whether a cleartext password may be sent: only inside TLS or to a loopback address (the
/// same rule a careful server applies to `password` authentication over the network).
pub(crate) fn cleartext_allowed(tls: bool, peer: SocketAddr) -> bool {
    tls || peer.ip().to_canonical().is_loopback()
}

/// Opens a session on the resource: TCP connect, TLS as `cfg.tls` says (`SSLRequest` first),
/// `StartupMessage` with `user`, `database` and `cfg.params`, authentication (trust, cleartext
/// — only over TLS or to a loopback address —, MD5, SCRAM-SHA-256, or SCRAM-SHA-256-PLUS with
/// `tls-server-end-point` channel binding when the server offers it over TLS), then collects
/// every `ParameterStatus` and the `BackendKeyData` up to the first `ReadyForQuery`. All of it
/// within `cfg.connect_timeout`.
///
/// A SCRAM login succeeds only after the server proved it knows the password (its final
/// signature is verified), so a server that skips to `AuthenticationOk` is refused.
pub async fn connect(cfg: &UpstreamConfig) -> Result<Upstream, UpstreamError> {
    cfg.check()?;
    let addr = cfg.address();
    let tls = cfg.tls_setup()?;
    match tokio::time::timeout(cfg.connect_timeout, open_session(cfg, &addr, tls)).await {
        Ok(result) => result,
        Err(_) => Err(UpstreamError::Timeout { addr, after: cfg.connect_timeout }),
    }
}

async fn open_session(cfg: &UpstreamConfig, addr: &str, tls: Option<TlsSetup>) -> Result<Upstream, UpstreamError> {
    let tcp = TcpStream::connect((cfg.host.as_str(), cfg.port)).await.map_err(io_error(addr, "connecting"))?;
    let peer = tcp.peer_addr().map_err(io_error(addr, "connecting"))?;
    // Small protocol messages; do not wait to coalesce them.
    let _ = tcp.set_nodelay(true);
    let mut stream = negotiate_tls(tcp, addr, tls.as_ref()).await?;

    let mut buf = BytesMut::new();
    let params = [("user", cfg.user.as_str()), ("database", cfg.database.as_str())]
        .into_iter()
        .chain(cfg.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(params, &mut buf)
        .map_err(|e| UpstreamError::Config(format!("{addr}: startup parameters: {e}")))?;
    send(&mut stream, &buf, addr, "sending the startup message").await?;

    let auth = authenticate(&mut stream, cfg, addr, peer).await?;
    let (params, key) = read_until_ready(&mut stream, addr).await?;
    tracing::debug!(upstream = addr, peer = %peer, tls = stream.is_tls(), ?auth, "upstream session open");
    Ok(Upstream { stream, addr: addr.to_owned(), peer, params, key, auth, tls, timeout: cfg.connect_timeout })
}

async fn send(stream: &mut UpstreamStream, buf: &[u8], addr: &str, during: &'static str) -> Result<(), UpstreamError> {
    stream.write_all(buf).await.map_err(io_error(addr, during))?;
    stream.flush().await.map_err(io_error(addr, during))
}

fn password<'a>(cfg: &'a UpstreamConfig, addr: &str, method: &str) -> Result<&'a str, UpstreamError> {
    cfg.password.as_deref().ok_or_else(|| UpstreamError::Auth {
        addr: addr.to_owned(),
        message: format!(
            "the server asks for {method} authentication of user {:?}, but no password is configured",
            cfg.user
        ),
    })
}

/// Runs the authentication exchange up to `AuthenticationOk`.
async fn authenticate(
    stream: &mut UpstreamStream,
    cfg: &UpstreamConfig,
    addr: &str,
    peer: SocketAddr,
) -> Result<AuthMethod, UpstreamError> {
    let unsupported = |method: &str| UpstreamError::Auth {
        addr: addr.to_owned(),
        message: format!("the server asks for {method} authentication, which the gateway does not support"),
    };
    let mut method = AuthMethod::Trust;
    let mut scram: Option<ScramSha256> = None;
    let mut scram_verified = false;
    loop {
        let frame = read_backend(stream, LOGIN_MAX_LEN).await.map_err(|e| wire_error(addr, e))?;
        match frame.tag() {
            b'R' => {}
            b'E' => return Err(server_error(addr, &frame)),
            b'N' | b'v' => {
                log_notice(addr, &frame);
                continue;
            }
            other => {
                return Err(protocol(addr, format!("unexpected message {} during authentication", Tag(other))));
            }
        }
        let mut raw = BytesMut::from(&frame.raw()[..]);
        let message = Message::parse(&mut raw)
            .map_err(|e| protocol(addr, format!("bad authentication request: {e}")))?
            .ok_or_else(|| protocol(addr, "incomplete authentication request"))?;
        if scram.is_some()
            && !matches!(
                message,
                Message::AuthenticationSaslContinue(_)
                    | Message::AuthenticationSaslFinal(_)
                    | Message::AuthenticationOk
            )
        {
            return Err(protocol(addr, "the server switched authentication method in the middle of SCRAM"));
        }
        let mut out = BytesMut::new();
        match message {
            Message::AuthenticationOk => {
                if scram.is_some() && !scram_verified {
                    return Err(protocol(
                        addr,
                        "the server ended SCRAM authentication without proving it knows the password",
                    ));
                }
                return Ok(method);
            }
            Message::AuthenticationCleartextPassword => {
                if !cleartext_allowed(stream.is_tls(), peer) {
                    return Err(UpstreamError::Auth {
                        addr: addr.to_owned(),
                        message: format!(
                            "the server asks for the password in cleartext over an unencrypted connection to \
                             {peer}, which is not a loopback address; refusing (set the TLS mode to require or \
                             verify-full)"
                        ),
                    });
                }
                let password = password(cfg, addr, "cleartext password")?;
                frontend::password_message(password.as_bytes(), &mut out)
                    .map_err(|_| UpstreamError::Config(format!("{addr}: the password contains a NUL byte")))?;
                method = AuthMethod::Cleartext;
            }
            Message::AuthenticationMd5Password(body) => {
                let password = password(cfg, addr, "MD5 password")?;
                let hash = md5_hash(cfg.user.as_bytes(), password.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), &mut out)
                    .map_err(|e| protocol(addr, format!("MD5 response: {e}")))?;
                method = AuthMethod::Md5;
            }
            Message::AuthenticationSasl(body) => {
                let (mut plain, mut plus) = (false, false);
                let mut offered = Vec::new();
                let mut mechanisms = body.mechanisms();
                while let Some(mechanism) =
                    mechanisms.next().map_err(|e| protocol(addr, format!("bad SASL mechanism list: {e}")))?
                {
                    plain |= mechanism == sasl::SCRAM_SHA_256;
                    plus |= mechanism == sasl::SCRAM_SHA_256_PLUS;
                    offered.push(mechanism.to_owned());
                }
                let binding = end_point_hash(stream);
                let (mechanism, channel_binding, chosen) = match binding {
                    Some(hash) if plus => (
                        sasl::SCRAM_SHA_256_PLUS,
                        ChannelBinding::tls_server_end_point(hash),
                        AuthMethod::ScramSha256Plus,
                    ),
                    // "y": we could bind but the server did not offer it; lets the server
                    // detect a downgrade by a man-in-the-middle who stripped -PLUS.
                    Some(_) if plain => (sasl::SCRAM_SHA_256, ChannelBinding::unrequested(), AuthMethod::ScramSha256),
                    None if plain => (sasl::SCRAM_SHA_256, ChannelBinding::unsupported(), AuthMethod::ScramSha256),
                    _ => return Err(unsupported(&format!("SASL ({})", offered.join(", ")))),
                };
                let password = password(cfg, addr, "SCRAM-SHA-256")?;
                let client = ScramSha256::new(password.as_bytes(), channel_binding);
                frontend::sasl_initial_response(mechanism, client.message(), &mut out)
                    .map_err(|e| protocol(addr, format!("SCRAM first message: {e}")))?;
                scram = Some(client);
                method = chosen;
            }
            Message::AuthenticationSaslContinue(body) => {
                let client = scram.as_mut().ok_or_else(|| protocol(addr, "SASL continue before SASL start"))?;
                client.update(body.data()).map_err(|e| protocol(addr, format!("SCRAM: {e}")))?;
                frontend::sasl_response(client.message(), &mut out)
                    .map_err(|e| protocol(addr, format!("SCRAM final message: {e}")))?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let client = scram.as_mut().ok_or_else(|| protocol(addr, "SASL final before SASL start"))?;
                client
                    .finish(body.data())
                    .map_err(|e| protocol(addr, format!("SCRAM: the server's proof did not verify: {e}")))?;
                scram_verified = true;
            }
            Message::AuthenticationKerberosV5 => return Err(unsupported("Kerberos V5")),
            Message::AuthenticationScmCredential => return Err(unsupported("SCM credential")),
            Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => return Err(unsupported("GSSAPI")),
            Message::AuthenticationSspi => return Err(unsupported("SSPI")),
            _ => return Err(protocol(addr, "unexpected authentication request")),
        }
        if !out.is_empty() {
            send(stream, &out, addr, "sending authentication data").await?;
        }
    }
}

/// The channel-binding hash of the server certificate, if the link is TLS and the
/// certificate's signature algorithm defines one.
fn end_point_hash(stream: &UpstreamStream) -> Option<Vec<u8>> {
    match stream {
        UpstreamStream::Plain(_) => None,
        UpstreamStream::Tls(s) => {
            s.get_ref().1.peer_certificates()?.first().and_then(|c| tls::server_end_point_hash(c))
        }
    }
}

fn log_notice(addr: &str, frame: &BackendFrame) {
    match frame.error_fields() {
        Ok(f) => tracing::debug!(upstream = addr, severity = %f.severity, code = %f.code, message = %f.message,
            "notice from the server during login"),
        Err(_) => tracing::debug!(upstream = addr, tag = %Tag(frame.tag()), "message from the server during login"),
    }
}

/// After `AuthenticationOk`: every `ParameterStatus` and the `BackendKeyData`, up to the first
/// `ReadyForQuery`.
async fn read_until_ready(
    stream: &mut UpstreamStream,
    addr: &str,
) -> Result<(Vec<(String, String)>, Option<BackendKey>), UpstreamError> {
    let mut params: Vec<(String, String)> = Vec::new();
    let mut key = None;
    loop {
        let frame = read_backend(stream, LOGIN_MAX_LEN).await.map_err(|e| wire_error(addr, e))?;
        match frame.tag() {
            b'S' => {
                let (name, value) = frame.parameter_status().map_err(|e| protocol(addr, e.to_string()))?;
                match params.iter_mut().find(|(n, _)| n == name) {
                    Some(slot) => value.clone_into(&mut slot.1),
                    None => params.push((name.to_owned(), value.to_owned())),
                }
            }
            b'K' => key = Some(frame.backend_key().map_err(|e| protocol(addr, e.to_string()))?),
            b'Z' => {
                frame.ready_status().map_err(|e| protocol(addr, e.to_string()))?;
                return Ok((params, key));
            }
            b'E' => return Err(server_error(addr, &frame)),
            b'N' => log_notice(addr, &frame),
            other => {
                return Err(protocol(addr, format!("unexpected message {} before the session was ready", Tag(other))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleartext_only_inside_tls_or_to_loopback() {
        let lo: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        let lo6: SocketAddr = "[::1]:5432".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5432".parse().unwrap();
        let remote: SocketAddr = "192.0.2.10:5432".parse().unwrap();
        assert!(cleartext_allowed(false, lo));
        assert!(cleartext_allowed(false, lo6));
        assert!(cleartext_allowed(false, mapped));
        assert!(!cleartext_allowed(false, remote));
        assert!(cleartext_allowed(true, remote));
    }

    #[test]
    fn debug_hides_password_and_key() {
        let mut cfg = UpstreamConfig::new("db.internal", 5432, "app", "shop");
        cfg.password = Some("hunter2-secret".into());
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("<redacted>"));
        let key = BackendKey { pid: 42, key: 987_654_321 };
        let shown = format!("{key:?}");
        assert!(shown.contains("42") && !shown.contains("987654321"), "{shown}");
    }

    #[test]
    fn config_checks() {
        let mut cfg = UpstreamConfig::new("::1", 5432, "app", "shop");
        assert_eq!(cfg.address(), "[::1]:5432");
        cfg.params.push(("user".into(), "postgres".into()));
        assert!(matches!(cfg.check(), Err(UpstreamError::Config(_))));
        cfg.params = vec![("_pq_.x".into(), "1".into())];
        assert!(cfg.check().is_err());
        cfg.params = vec![("application_name".into(), "gatehouse".into())];
        assert!(cfg.check().is_ok());
        assert_eq!("verify-full".parse::<TlsMode>().unwrap(), TlsMode::VerifyFull);
        assert!("prefer".parse::<TlsMode>().is_err());
        cfg.host = "not a host name".into();
        cfg.tls = TlsMode::Require;
        assert!(matches!(cfg.tls_setup(), Err(UpstreamError::Config(_))));
    }

    #[tokio::test]
    async fn silent_server_times_out_naming_the_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(socket);
        });
        let mut cfg = UpstreamConfig::new("127.0.0.1", port, "app", "shop");
        cfg.tls = TlsMode::Disable;
        cfg.connect_timeout = Duration::from_millis(200);
        let err = connect(&cfg).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
        hold.abort();
    }

    #[tokio::test]
    async fn scram_without_the_server_proof_is_refused() {
        // A fake server: offers SCRAM, then claims success without sending its signature.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut startup = vec![0u8; 4];
            socket.read_exact(&mut startup).await.unwrap();
            let len = i32::from_be_bytes(startup[..4].try_into().unwrap()) as usize;
            let mut rest = vec![0u8; len - 4];
            socket.read_exact(&mut rest).await.unwrap();
            // AuthenticationSASL offering SCRAM-SHA-256.
            let mut body = Vec::new();
            body.extend_from_slice(&10i32.to_be_bytes());
            body.extend_from_slice(b"SCRAM-SHA-256\0\0");
            let mut msg = vec![b'R'];
            msg.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
            msg.extend_from_slice(&body);
            socket.write_all(&msg).await.unwrap();
            // Read the client-first message, then claim success without any proof.
            let mut head = [0u8; 5];
            socket.read_exact(&mut head).await.unwrap();
            let mut rest = vec![0u8; i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize - 4];
            socket.read_exact(&mut rest).await.unwrap();
            socket.write_all(&crate::messages::authentication_ok()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let mut cfg = UpstreamConfig::new("127.0.0.1", port, "app", "shop");
        cfg.tls = TlsMode::Disable;
        cfg.password = Some("pw-never-shown".into());
        let err = connect(&cfg).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Protocol { .. }), "{err}");
        assert!(err.to_string().contains("without proving"), "{err}");
        assert!(!err.to_string().contains("pw-never-shown"));
        server.abort();
    }
}
