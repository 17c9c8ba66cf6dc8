//! Persistence for Gatehouse behind one [`Store`] trait: identities (token hashes only),
//! connections with their sealed credentials, policy versions, sessions and the append-only
//! audit events. [`SqliteStore`] is the embedded back-end; migrations live per back-end under
//! `migrations/<backend>/` so a PostgreSQL back-end follows with the same schema, and
//! [`contract`] is the test suite every back-end must pass. This crate never sees a secret in
//! clear (credentials arrive sealed, tokens hashed) and knows nothing of policy or HTTP.

#![forbid(unsafe_code)]

mod model;
mod sqlite;

#[doc(hidden)]
pub mod contract;

pub use model::*;
pub use sqlite::SqliteStore;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store holds malformed data: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Everything Gatehouse persists. Implementations must be safe to share across tasks and must
/// pass [`contract::run_all`].
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<()>;

    // Identities.
    async fn create_identity(&self, identity: IdentityRecord) -> Result<()>;
    async fn get_identity(&self, name: &str) -> Result<Option<IdentityRecord>>;
    async fn identity_by_token_hash(&self, hash: &[u8]) -> Result<Option<IdentityRecord>>;
    async fn list_identities(&self) -> Result<Vec<IdentityRecord>>;
    /// Replaces the token hash (the old token stops working at once) and its expiry.
    async fn rotate_identity_token(&self, name: &str, new_hash: &[u8], now: i64, expires_at: Option<i64>)
    -> Result<()>;
    async fn touch_identity(&self, name: &str, now: i64) -> Result<()>;
    async fn delete_identity(&self, name: &str) -> Result<()>;

    // Connections.
    async fn create_connection(&self, connection: ConnectionRecord) -> Result<()>;
    /// Replaces every field but the name, credentials and `created_at`.
    async fn update_connection(&self, connection: ConnectionRecord) -> Result<()>;
    async fn get_connection(&self, name: &str) -> Result<Option<ConnectionRecord>>;
    async fn list_connections(&self) -> Result<Vec<ConnectionRecord>>;
    /// Deletes the connection and its extra credentials.
    async fn delete_connection(&self, name: &str) -> Result<()>;
    /// Appends an extra credential (they are tried in the order added).
    async fn add_credential(&self, connection: &str, credential: CredentialRecord) -> Result<()>;
    async fn remove_credential(&self, connection: &str, credential: &str) -> Result<()>;

    // Policies.
    /// Stores a new policy version and returns its number (1, 2, …).
    async fn put_policy(&self, text: &str, author: &str, now: i64) -> Result<i64>;
    async fn current_policy(&self) -> Result<Option<PolicyVersion>>;

    // Audit.
    /// Appends a batch of chained events and the session changes they describe, atomically: after
    /// it returns, the batch is committed to the store's log.
    async fn append_audit(&self, batch: AuditBatch) -> Result<()>;
    /// [`append_audit`](Self::append_audit) of a batch the caller keeps (to try again if it
    /// fails), free to block the calling thread instead of moving the work elsewhere: only for a
    /// caller that has a thread of its own for it (the audit journal's importer).
    async fn append_audit_inline(&self, batch: &AuditBatch) -> Result<()> {
        self.append_audit(batch.clone()).await
    }
    /// Files that hold committed events until they reach their final place (SQLite's WAL): forcing
    /// these to disk makes every committed batch durable. Empty when commits are durable already.
    fn log_files(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
    /// Moves what the log holds to its final place (SQLite: a passive WAL checkpoint, which
    /// forces the log and the database to disk). Blocks the calling thread: the audit writer
    /// calls it from a thread of its own, so that no commit on the data path waits for it. A store
    /// that keeps no such log has nothing to do.
    fn checkpoint(&self) -> Result<()> {
        Ok(())
    }
    /// The newest event's sequence number and MAC, to continue the chain.
    async fn last_event(&self) -> Result<Option<(i64, Vec<u8>)>>;
    /// Events with `seq > after`, oldest first, at most `limit`.
    async fn events_after(&self, after: i64, limit: usize) -> Result<Vec<StoredEvent>>;
    async fn session_events(&self, session_id: &str) -> Result<Vec<StoredEvent>>;
    async fn list_sessions(&self, filter: SessionFilter) -> Result<Vec<SessionRecord>>;
    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>>;
    /// The ids of sessions that were never ended (left open by a gateway that was killed).
    async fn open_sessions(&self) -> Result<Vec<String>>;

    // Reviews.
    async fn create_review(&self, review: &ReviewRecord) -> Result<()>;
    async fn get_review(&self, id: &str) -> Result<Option<ReviewRecord>>;
    /// Newest first.
    async fn list_reviews(&self, filter: ReviewFilter) -> Result<Vec<ReviewRecord>>;
    /// The pending, unexpired request review of this requester for this exact request, if any.
    async fn pending_review(
        &self,
        requester: &str,
        connection: &str,
        digest: &str,
        now: i64,
    ) -> Result<Option<ReviewRecord>>;
    /// Stores a changed review if nobody changed it since it was read (its `version` is still
    /// the stored one); returns whether it did. The stored version is then `version + 1`.
    async fn update_review(&self, review: &ReviewRecord) -> Result<bool>;
    /// Uses an approved, unused, unexpired request grant for this exact request, atomically: at
    /// most one caller gets it. `id` restricts it to one review.
    async fn use_grant(
        &self,
        requester: &str,
        connection: &str,
        digest: &str,
        id: Option<&str>,
        now: i64,
    ) -> Result<Option<ReviewRecord>>;
    /// Marks every pending review whose time ran out as expired, and returns them.
    async fn expire_reviews(&self, now: i64) -> Result<Vec<ReviewRecord>>;
    /// Approved access reviews whose window has not ended.
    async fn active_access_grants(&self, now: i64) -> Result<Vec<ReviewRecord>>;
}
