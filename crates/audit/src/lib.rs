//! The audit trail. Every event (a session opening, a request and its decision, a management
//! action) is chained to the one before it with an HMAC whose key lives outside the store, and
//! written by one [`AuditWriter`] that commits events in groups to an append-only journal: the
//! data path waits for a shared append, never for a disk write or a database transaction of
//! its own. A background importer moves the journaled events into the store in large
//! transactions. After each commit the chain head (last sequence number and MAC) is written
//! to a file outside the store, so [`verify`] (which reads the store, then the journal)
//! detects edited, deleted, reordered and truncated events and names the first bad one.
//! This crate decides nothing and masks nothing: it records what it is given.

#![forbid(unsafe_code)]

mod chain;
mod import;
mod journal;
mod verify;
mod writer;

pub use chain::{ChainHead, HEAD_FILE, HeadFile, chain_mac, read_head};
pub use import::replay_journal;
pub use journal::{JOURNAL_DIR, JournalContents, journal_dir, read_journal};
pub use verify::{VerifyReport, verify, verify_with_head};
pub use writer::{AuditWriter, CommitObserver, Entry, FSYNC_INTERVAL, FsyncPolicy, WriterStats, session_record};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A new session id: a UUIDv7, so ids sort by creation time.
pub fn new_session_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[derive(Debug, thiserror::Error, Clone)]
pub enum AuditError {
    /// The events could not be committed; the caller must not forward the request.
    #[error("audit trail unavailable: {0}")]
    Unavailable(String),
    #[error("audit writer has stopped")]
    Stopped,
}
