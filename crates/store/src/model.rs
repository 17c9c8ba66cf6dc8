use std::collections::BTreeMap;
use std::fmt;

use gatehouse_core::IdentityKind;
use serde::{Deserialize, Serialize};

/// A stored identity. Its token exists only as a keyed hash.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    pub name: String,
    pub kind: IdentityKind,
    pub groups: Vec<String>,
    pub token_hash: Option<Vec<u8>>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub token_rotated_at: Option<i64>,
}

impl fmt::Debug for IdentityRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityRecord")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("groups", &self.groups)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("last_used_at", &self.last_used_at)
            .finish_non_exhaustive()
    }
}

/// How a sealed credential is presented upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SecretKind {
    /// A password (databases, Redis, SSH password login).
    Password,
    /// A private key (SSH).
    KeyFile,
    /// An HTTP header `name: value`.
    Header { name: String },
    /// An HTTP `Authorization: Bearer` token.
    Bearer,
}

impl SecretKind {
    pub fn tag(&self) -> &'static str {
        match self {
            SecretKind::Password => "password",
            SecretKind::KeyFile => "key_file",
            SecretKind::Header { .. } => "header",
            SecretKind::Bearer => "bearer",
        }
    }
}

/// A credential sealed with AES-256-GCM by the keys crate. `Debug` shows only its kind.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub kind: SecretKind,
    pub sealed: Vec<u8>,
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedSecret({})", self.kind.tag())
    }
}

/// A named resource and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRecord {
    pub name: String,
    /// `postgres`, `mysql`, `redis`, `ssh`, `http` or `kubernetes`.
    pub kind: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub url: Option<String>,
    pub database: Option<String>,
    pub user: Option<String>,
    /// `disable`, `require` or `verify-full`.
    pub tls_mode: String,
    pub ca_file: Option<String>,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub mask: Vec<String>,
    pub mask_columns: Vec<String>,
    pub secret: Option<SealedSecret>,
    /// Extra credentials, in the order they were added.
    pub credentials: Vec<CredentialRecord>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An extra credential of a connection, used for callers in one of its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    pub name: String,
    pub groups: Vec<String>,
    pub user: Option<String>,
    pub secret: Option<SealedSecret>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    pub version: i64,
    pub text: String,
    pub author: String,
    pub created_at: i64,
}

/// One audit event as stored: its place in the chain and its MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub seq: i64,
    pub ts: i64,
    pub session_id: Option<String>,
    pub kind: String,
    /// The event body as JSON text, byte for byte what the MAC covers.
    pub payload: String,
    pub mac: Vec<u8>,
}

/// A session as listed: who, where, when, and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub identity: String,
    pub identity_kind: IdentityKind,
    pub connection: Option<String>,
    pub protocol: String,
    pub client_addr: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
    pub requests: i64,
    /// Requests not allowed outright: denied, or held for review.
    pub denied: i64,
    /// Requests held for review.
    pub reviewed: i64,
    /// Values masked in the session's results.
    pub masked: i64,
}

/// What a batch of audit events does to the sessions table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionChange {
    Open(SessionRecord),
    Request {
        id: String,
        denied: bool,
        reviewed: bool,
    },
    /// Values were masked in a result of the session.
    Masked {
        id: String,
        values: i64,
    },
    Close {
        id: String,
        ended_at: i64,
        reason: String,
    },
}

/// Events and session changes committed together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditBatch {
    pub events: Vec<StoredEvent>,
    pub sessions: Vec<SessionChange>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    pub identity: Option<String>,
    pub connection: Option<String>,
    /// `postgres`, `http`, `api`, `mcp`, …
    pub protocol: Option<String>,
    /// Sessions that started at or after this time.
    pub since: Option<i64>,
    /// Sessions that started before this time (for paging), newest first.
    pub before: Option<i64>,
    /// With `before`: also the sessions that started at exactly `before` whose id sorts before
    /// this one, so that a page boundary between sessions of the same millisecond loses none.
    pub before_id: Option<String>,
    /// Only sessions with this outcome.
    pub outcome: Option<SessionOutcome>,
    pub limit: usize,
}

/// What happened in a session, to filter by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionOutcome {
    /// At least one request was denied or held.
    Denied,
    /// At least one request was held for review.
    Reviewed,
    /// At least one value was masked.
    Masked,
}

impl SessionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionOutcome::Denied => "denied",
            SessionOutcome::Reviewed => "reviewed",
            SessionOutcome::Masked => "masked",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [SessionOutcome::Denied, SessionOutcome::Reviewed, SessionOutcome::Masked]
            .into_iter()
            .find(|o| o.as_str() == text)
    }
}

/// What a review asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewKind {
    /// Run one exact request once.
    Request,
    /// Membership of a group for a time window.
    Access,
}

impl ReviewKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewKind::Request => "request",
            ReviewKind::Access => "access",
        }
    }
}

/// Where a review stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    Pending,
    Approved,
    Denied,
    Expired,
}

impl ReviewStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewStatus::Pending => "pending",
            ReviewStatus::Approved => "approved",
            ReviewStatus::Denied => "denied",
            ReviewStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<ReviewStatus> {
        Some(match s {
            "pending" => ReviewStatus::Pending,
            "approved" => ReviewStatus::Approved,
            "denied" => ReviewStatus::Denied,
            "expired" => ReviewStatus::Expired,
            _ => return None,
        })
    }
}

/// One approver group a review needs, with how many distinct members of it must approve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewApprovers {
    pub group: String,
    pub quorum: u32,
}

/// One person's (or service's) approval or denial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewVote {
    pub approver: String,
    pub approver_kind: IdentityKind,
    /// The review's approver groups the approver was in when voting: the approval counts for each.
    pub groups: Vec<String>,
    pub approve: bool,
    pub comment: String,
    pub at: i64,
}

/// A pending or decided review and what its approval grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRecord {
    pub id: String,
    pub kind: ReviewKind,
    pub status: ReviewStatus,
    pub requester: String,
    pub requester_kind: IdentityKind,
    /// The connection a request review is for.
    pub connection: Option<String>,
    /// The session the request was made in.
    pub session_id: Option<String>,
    /// The exact request as recorded (a statement; for access, "group G for 1h").
    pub request: String,
    /// For a request review: the request's digest (its text and parameter values as sent).
    pub digest: Option<String>,
    /// Parameter values as recorded.
    pub params: Vec<String>,
    pub fingerprint: Option<String>,
    /// What the request does (`sql.delete Table::"…"`, …).
    pub accesses: Vec<String>,
    /// `@id`s of the policies that asked for review.
    pub policies: Vec<String>,
    /// Why: the policies' explanation, or the requester's reason for an access request.
    pub reason: String,
    pub approvers: Vec<ReviewApprovers>,
    pub votes: Vec<ReviewVote>,
    /// For an access review: the group and how long.
    pub group: Option<String>,
    pub duration_ms: Option<i64>,
    pub created_at: i64,
    /// A review still pending at this time expires.
    pub expires_at: i64,
    pub decided_at: Option<i64>,
    /// Once approved: a request grant may be used until then; an access grant lasts until then.
    pub grant_until: Option<i64>,
    /// When a request grant was used (it runs once).
    pub used_at: Option<i64>,
    /// Incremented by every update; an update of a stale copy is refused.
    pub version: i64,
}

/// Which reviews to list.
#[derive(Debug, Clone, Default)]
pub struct ReviewFilter {
    pub status: Option<ReviewStatus>,
    pub requester: Option<String>,
    pub limit: usize,
}
