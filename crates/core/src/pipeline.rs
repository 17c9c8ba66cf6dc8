//! The contract between protocol adapters and the enforcement pipeline: one method per phase
//! (open, authorize each request, finish it, close), so policy, recording and metrics are
//! written once for every protocol. Adapters know nothing of policy or storage; the pipeline
//! knows nothing of wire formats.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;

use crate::{Decision, Identity, Resource};

/// A caller asking to open a session on a connection.
#[derive(Clone)]
pub struct OpenRequest {
    /// `postgres`, `mysql`, …
    pub protocol: &'static str,
    /// The connection the caller named (for PostgreSQL, the `database`).
    pub connection: String,
    pub client_addr: Option<SocketAddr>,
    /// The user name the caller claimed, if the protocol carries one; it must name the identity
    /// the credential belongs to.
    pub claimed_user: Option<String>,
    /// The caller's credential: a service token or an OIDC JWT. Never logged.
    pub secret: String,
    /// Whether the caller's transport is encrypted.
    pub tls: bool,
    /// Whether the adapter applies a connection's value detectors (`--mask`) to what it returns.
    /// If not, a session on a connection with detectors configured is refused: unmasked values
    /// never go out.
    pub masks_values: bool,
    /// The same for whole-column rules (`--mask-column`).
    pub masks_columns: bool,
    /// How the caller came: `wire` (its own client connection), `exec` (the exec API), `mcp`
    /// (an agent's tool call). Recorded with the session.
    pub via: &'static str,
}

impl fmt::Debug for OpenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenRequest")
            .field("protocol", &self.protocol)
            .field("connection", &self.connection)
            .field("client_addr", &self.client_addr)
            .field("claimed_user", &self.claimed_user)
            .field("tls", &self.tls)
            .field("via", &self.via)
            .finish_non_exhaustive()
    }
}

/// How to reach the resource for this session: the connection's address and the credential
/// chosen for the caller's groups.
#[derive(Clone)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub database: Option<String>,
    pub user: Option<String>,
    /// The resource credential, unsealed for this login only. Never logged.
    pub password: Option<String>,
    /// `disable`, `require` or `verify-full`.
    pub tls_mode: String,
    pub ca_file: Option<String>,
    /// What to stamp into the upstream session so the resource's own logs name the caller.
    pub stamp: String,
    /// The base URL, for resources reached by URL (HTTP, Kubernetes).
    pub url: Option<String>,
    /// How the credential is presented.
    pub form: CredentialForm,
}

/// How a resource credential is presented upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CredentialForm {
    /// A password with `user` (for HTTP: basic authentication).
    #[default]
    Password,
    /// A private key (SSH).
    KeyFile,
    /// An HTTP header with this name.
    Header(String),
    /// `Authorization: Bearer`.
    Bearer,
}

impl fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("tls_mode", &self.tls_mode)
            .field("url", &self.url)
            .field("form", &self.form)
            .finish_non_exhaustive()
    }
}

/// A session the pipeline accepted.
#[derive(Debug, Clone)]
pub struct OpenedSession {
    pub id: String,
    /// The protocol the session speaks (`postgres`, …), as in [`OpenRequest::protocol`].
    pub protocol: &'static str,
    pub client_addr: Option<SocketAddr>,
    pub identity: Identity,
    pub connection: String,
    /// The connection as policy sees it (type and tags), as it was when the session opened.
    pub connection_info: crate::ConnectionInfo,
    pub upstream: UpstreamTarget,
    /// The connection's value detectors (`email`, `credit_card`, …): what the adapter masks in
    /// what it returns, unless policy permits `unmask`.
    pub mask: Vec<String>,
    /// The connection's whole-column rules (`schema.table.column` patterns).
    pub mask_columns: Vec<String>,
}

/// Why a session was not opened. Adapters map each to their protocol's refusal.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// Wrong, expired or mismatched credentials (PostgreSQL 28P01).
    #[error("{0}")]
    Unauthenticated(String),
    /// No such connection (PostgreSQL 3D000).
    #[error("{0}")]
    UnknownConnection(String),
    /// Policy refused `connect` (PostgreSQL 42501).
    #[error("{message}")]
    Forbidden { message: String, policies: Vec<String> },
    /// The gateway cannot decide or record now: fail closed.
    #[error("{0}")]
    Unavailable(String),
    /// Over one of the gateway's limits (PostgreSQL 53300, or 28000 for sign-in lockouts).
    #[error("{message}")]
    Limited { limit: Limit, message: String },
}

/// The gateway's own limits on callers, each counted when it refuses something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Connections open on one listener.
    ListenerConnections,
    /// Sessions one identity has open at once.
    IdentitySessions,
    /// Failed sign-ins from one source address within the window.
    AuthFailuresSource,
    /// Failed sign-ins claiming one identity within the window.
    AuthFailuresIdentity,
    /// Requests per second of one identity.
    Requests,
    /// Bytes of one statement's result.
    ResultBytes,
}

impl Limit {
    /// The name in metrics (`gatehouse_limited_total{limit}`) and in the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::ListenerConnections => "listener_connections",
            Limit::IdentitySessions => "identity_sessions",
            Limit::AuthFailuresSource => "auth_failures_source",
            Limit::AuthFailuresIdentity => "auth_failures_identity",
            Limit::Requests => "requests",
            Limit::ResultBytes => "result_bytes",
        }
    }

    pub const ALL: [Limit; 6] = [
        Limit::ListenerConnections,
        Limit::IdentitySessions,
        Limit::AuthFailuresSource,
        Limit::AuthFailuresIdentity,
        Limit::Requests,
        Limit::ResultBytes,
    ];

    /// Whether it is a sign-in lockout rather than a count of open things.
    pub fn is_sign_in(self) -> bool {
        matches!(self, Limit::AuthFailuresSource | Limit::AuthFailuresIdentity)
    }
}

/// One request as the adapter understood it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The exact request text (a SQL statement, a command line, …), as recorded.
    pub text: String,
    /// Constants removed, for grouping and search.
    pub fingerprint: Option<String>,
    /// What it does to what. Empty for requests covered by `connect` alone (transaction
    /// control, `SHOW`, …): recorded, needing no further permit.
    pub accesses: Vec<(String, Resource)>,
    /// Why the adapter classified it as it did, when that matters to the caller (e.g. "calls
    /// non-allow-listed function dblink").
    pub note: Option<String>,
    /// Attributes for policy context (statement, tables, has_where, …).
    pub context: serde_json::Map<String, serde_json::Value>,
    /// Parameter values sent with the request (extended protocol), recorded with it but not
    /// given to policy.
    pub params: Vec<String>,
    /// Identifies the exact request: a hash of its text and parameter values as the caller sent
    /// them, before anything was masked for the record. Equal digests mean the same request; a
    /// review's grant covers only requests with its digest.
    pub digest: String,
}

/// The decision on a request, and its place in the recording.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub seq: i64,
    pub decision: Decision,
    /// For `Review`: the review the request waits for. The adapter tells the caller
    /// ([`Hold::notice`]) and then waits with [`Pipeline::hold`].
    pub held: Option<Hold>,
    /// For `Allow` by an approved review's grant: that review's id.
    pub grant: Option<String>,
    /// Refused because the caller is over its request rate (the decision is `Deny`): what to
    /// tell it. PostgreSQL answers 53400, HTTP 429.
    pub limited: Option<String>,
}

/// A request waiting for a person's approval.
#[derive(Debug, Clone)]
pub struct Hold {
    pub review_id: String,
    /// What to tell the caller while it waits: the review, who must approve it, and where.
    pub notice: String,
}

/// A held request that was not approved during its hold.
#[derive(Debug, Clone)]
pub struct Unapproved {
    /// What to tell the caller: the review and why.
    pub message: String,
    /// The review still waits for a decision: the same request may be sent again once it is
    /// approved (HTTP `review_pending`). Otherwise it was denied or expired, or cannot be used.
    pub pending: bool,
}

impl Unapproved {
    pub fn closed(message: impl Into<String>) -> Unapproved {
        Unapproved { message: message.into(), pending: false }
    }
}

/// What happened to a request that ran.
#[derive(Debug, Clone, Default)]
pub struct RequestResult {
    pub duration_ms: f64,
    pub rows: Option<u64>,
    /// The resource's completion tag (`SELECT 3`, `DELETE 1`, …).
    pub command: Option<String>,
    /// The resource's error (`SQLSTATE: message`).
    pub error: Option<String>,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// The names of the result's columns, when it has rows.
    pub columns: Vec<String>,
    /// Values masked, by column and detector (never the values).
    pub masked: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    /// The first bytes of the request's and the answer's bodies, masked, when the adapter
    /// samples them (HTTP with `[http] sample_bytes`).
    pub samples: Option<Samples>,
}

/// Masked, capped samples of a request's and its answer's bodies.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub request: String,
    pub response: String,
}

/// The enforcement pipeline as adapters see it.
pub trait Pipeline: Send + Sync + 'static {
    /// Authenticates the caller, finds the connection, checks `connect`, picks the credential
    /// and records the session's start. Every refusal is recorded too.
    fn open(&self, req: OpenRequest) -> impl Future<Output = Result<OpenedSession, OpenError>> + Send;

    /// Decides a request and records it before it may be forwarded (write-ahead). An `Err`
    /// means it could not be recorded or decided: the adapter must refuse it.
    fn authorize(&self, session: &OpenedSession, req: &Request)
    -> impl Future<Output = Result<Verdict, String>> + Send;

    /// Holds a request that needs review until the review is decided, the hold time passes, or
    /// the session ends. `Ok` when approved: the request is recorded again as allowed by the
    /// grant and may be forwarded. `Err` otherwise (denied, expired, still pending: the caller
    /// may re-run the same request once it is approved).
    fn hold(
        &self,
        session: &OpenedSession,
        hold: &Hold,
        req: &Request,
    ) -> impl Future<Output = Result<Verdict, Unapproved>> + Send;

    /// Decides a request without recording it: for a check ahead of the real one (a prepared
    /// statement at `Parse`, decided and recorded again each time it runs).
    fn check(&self, session: &OpenedSession, req: &Request) -> impl Future<Output = Decision> + Send;

    /// Whether the caller may see values of `resource` unmasked (`unmask`), as policy says now.
    fn may_unmask(&self, session: &OpenedSession, resource: &Resource) -> impl Future<Output = bool> + Send;

    /// Records how a forwarded request ended, without waiting: nothing is held back for it, so
    /// the record rides with the next commit of the audit trail.
    fn finish(&self, session: &OpenedSession, seq: i64, result: RequestResult);

    /// Records the session's end.
    fn close(&self, session: &OpenedSession, reason: &str) -> impl Future<Output = ()> + Send;

    /// Counts a refusal by one of the adapter's own limits (connections on its listener, result
    /// size), for metrics.
    fn over_limit(&self, protocol: &'static str, limit: Limit);

    /// Resolves when the session must end now (killed, identity removed or rotated, credential
    /// expired), with the reason to tell the caller.
    fn ended(&self, session: &OpenedSession) -> impl Future<Output = String> + Send;
}
