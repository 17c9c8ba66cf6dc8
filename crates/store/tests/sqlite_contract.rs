#![allow(clippy::unwrap_used)]

use gatehouse_store::{SqliteStore, Store, contract};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("gatehouse.db"), true).unwrap();
    contract::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reopens_with_data_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.db");
    {
        let store = SqliteStore::open(&path, false).unwrap();
        store.put_policy("kept", "admin", 1).await.unwrap();
    }
    let store = SqliteStore::open(&path, false).unwrap();
    assert_eq!(store.current_policy().await.unwrap().unwrap().text, "kept");
}

/// Pages in the WAL, read the way SQLite's own header says: (file size - 32-byte header) / frame.
fn wal_pages(db: &std::path::Path) -> u64 {
    let len = std::fs::metadata(db.with_extension("db-wal")).map(|m| m.len()).unwrap_or(0);
    len.saturating_sub(32) / (4096 + 24)
}

/// Frames in use in the WAL since it last started over (a passive checkpoint reports it).
fn wal_frames_in_use(db: &std::path::Path) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commits_leave_checkpoints_to_the_background_and_the_log_starts_over_after_one() {
    use gatehouse_store::{AuditBatch, StoredEvent};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.db");
    let store = SqliteStore::open(&path, false).unwrap();
    let payload = "x".repeat(3000);
    let mut seq = 0;
    let mut append = async |n: usize| {
        for _ in 0..n {
            seq += 1;
            let e = StoredEvent {
                seq,
                ts: seq,
                session_id: None,
                kind: "k".into(),
                payload: payload.clone(),
                mac: vec![0; 32],
            };
            store.append_audit_inline(&AuditBatch { events: vec![e], sessions: vec![] }).await.unwrap();
        }
    };
    // Well past the 1,000 pages at which SQLite's commits checkpoint by default: the commits did
    // not stop to checkpoint (and force the disk), so the log kept growing.
    append(1500).await;
    assert!(wal_pages(&path) > 1200, "the WAL holds {} pages", wal_pages(&path));
    // The background checkpoint copies it all; the next commit then starts the log over.
    store.checkpoint().unwrap();
    append(1).await;
    let in_use = wal_frames_in_use(&path);
    assert!(in_use < 10, "{in_use} frames in use after a checkpoint and one commit");
    let events = store.events_after(0, 10_000).await.unwrap();
    assert_eq!(events.len(), 1501);
}
