#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use gatehouse_audit::{AuditWriter, Entry, FsyncPolicy, HEAD_FILE, verify};
use gatehouse_keys::Keys;
use gatehouse_store::{SqliteStore, Store};

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    keys: Arc<Keys>,
}

async fn fixture_with(n: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("gatehouse.db"), false).unwrap());
    let keys = Arc::new(Keys::from_master(&[3u8; 32]).unwrap());
    let (writer, handle) = AuditWriter::start(
        store.clone(),
        keys.clone(),
        dir.path().join(HEAD_FILE),
        FsyncPolicy::Interval(gatehouse_audit::FSYNC_INTERVAL),
    )
    .await
    .unwrap();
    // Concurrent callers share commits; every one gets its own sequence number.
    let mut tasks = Vec::new();
    for i in 0..n {
        let w = writer.clone();
        tasks.push(tokio::spawn(async move {
            w.record_one(Entry {
                session_id: None,
                kind: "management".into(),
                payload: serde_json::json!({"n": i}).to_string(),
                session_change: None,
            })
            .await
            .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=n as i64).collect::<Vec<_>>());
    drop(writer);
    handle.await.unwrap();
    Fixture { dir, store, keys }
}

impl Fixture {
    async fn verify(&self) -> gatehouse_audit::VerifyReport {
        verify(self.store.as_ref(), &self.keys, &self.dir.path().join(HEAD_FILE)).await.unwrap()
    }

    fn sql(&self, sql: &str) {
        let conn = rusqlite::Connection::open(self.dir.path().join("gatehouse.db")).unwrap();
        conn.execute_batch(sql).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intact_chain_verifies() {
    let f = fixture_with(50).await;
    let report = f.verify().await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.line(), "ok: 50 events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_event_is_named() {
    let f = fixture_with(10).await;
    f.sql("UPDATE audit_events SET payload = '{\"n\":999}' WHERE seq = 4");
    let report = f.verify().await;
    assert!(!report.ok);
    assert_eq!(report.first_bad, Some(4), "{}", report.line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_event_is_named() {
    let f = fixture_with(10).await;
    f.sql("DELETE FROM audit_events WHERE seq = 6");
    let report = f.verify().await;
    assert_eq!(report.first_bad, Some(6), "{}", report.line());
    assert!(report.line().contains("missing"), "{}", report.line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_events_are_named() {
    let f = fixture_with(10).await;
    // Swap the contents of events 3 and 5, keeping their sequence numbers.
    f.sql(
        "UPDATE audit_events SET seq = -3 WHERE seq = 3; UPDATE audit_events SET seq = 3 WHERE seq = 5; \
         UPDATE audit_events SET seq = 5 WHERE seq = -3;",
    );
    let report = f.verify().await;
    assert_eq!(report.first_bad, Some(3), "{}", report.line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_newest_events_are_named() {
    let f = fixture_with(10).await;
    f.sql("DELETE FROM audit_events WHERE seq >= 9");
    let report = f.verify().await;
    assert_eq!(report.first_bad, Some(9), "{}", report.line());
    assert!(report.line().contains("newest events deleted"), "{}", report.line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_mac_with_wrong_key_is_named() {
    let f = fixture_with(5).await;
    let other = Keys::from_master(&[4u8; 32]).unwrap();
    let report = verify(f.store.as_ref(), &other, &f.dir.path().join(HEAD_FILE)).await.unwrap();
    assert_eq!(report.first_bad, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_continues_after_truncation_keeping_the_gap() {
    let f = fixture_with(5).await;
    f.sql("DELETE FROM audit_events WHERE seq = 5");
    let (writer, handle) =
        AuditWriter::start(f.store.clone(), f.keys.clone(), f.dir.path().join(HEAD_FILE), FsyncPolicy::Off)
            .await
            .unwrap();
    let seq = writer
        .record_one(Entry {
            session_id: None,
            kind: "management".into(),
            payload: serde_json::json!({}).to_string(),
            session_change: None,
        })
        .await
        .unwrap();
    assert_eq!(seq, 6, "numbering continues after the anchored head");
    drop(writer);
    handle.await.unwrap();
    let report = f.verify().await;
    assert_eq!(report.first_bad, Some(5), "{}", report.line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failure_is_reported_to_the_caller() {
    let f = fixture_with(1).await;
    let (writer, handle) =
        AuditWriter::start(f.store.clone(), f.keys.clone(), f.dir.path().join(HEAD_FILE), FsyncPolicy::Off)
            .await
            .unwrap();
    // Make the table refuse inserts. The journal takes the next event (its caller is answered),
    // but once the store has refused it, callers get the store's error, not a pretence.
    f.sql("CREATE TRIGGER refuse BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'disk says no'); END;");
    assert_eq!(writer.record_one(management(1)).await.unwrap(), 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let err = loop {
        match writer.record_one(management(2)).await {
            Err(e) => break e,
            Ok(_) => assert!(std::time::Instant::now() < deadline, "the store's refusal never reached a caller"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(err.to_string().contains("disk says no"), "{err}");
    assert!(writer.stats().failing().is_some_and(|e| e.contains("disk says no")));
    let accepted = f.store.last_event().await.unwrap().unwrap().0;
    f.sql("DROP TRIGGER refuse;");
    // The importer tries again; once the store takes the journaled events, recording resumes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let seq = loop {
        match writer.record_one(management(3)).await {
            Ok(seq) => break seq,
            Err(e) => assert!(std::time::Instant::now() < deadline, "recording never resumed: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(accepted, 1, "the store took nothing while it refused");
    assert!(seq > 2, "service resumes with the next number once the store recovers: {seq}");
    assert_eq!(writer.stats().failing(), None);
    drop(writer);
    handle.await.unwrap();
    let report = f.verify().await;
    assert_eq!(report.line(), format!("ok: {seq} events"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_entries_are_committed_without_holding_back_urgent_ones() {
    let f = fixture_with(0).await;
    let (writer, handle) =
        AuditWriter::start(f.store.clone(), f.keys.clone(), f.dir.path().join(HEAD_FILE), FsyncPolicy::Off)
            .await
            .unwrap();
    let entry = |n: i64| Entry {
        session_id: None,
        kind: "request.result".into(),
        payload: serde_json::json!({"n": n}).to_string(),
        session_change: None,
    };
    // Alone: committed once the short window has passed.
    let seqs = writer.record_later(vec![entry(1)]).await.unwrap();
    assert_eq!(seqs, vec![1]);
    // An urgent entry is not held back by the window.
    let started = std::time::Instant::now();
    assert_eq!(writer.record_one(entry(2)).await.unwrap(), 2);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    // Many later entries from concurrent callers all get committed, each once.
    let mut tasks = Vec::new();
    for n in 0..50 {
        let w = writer.clone();
        tasks.push(tokio::spawn(async move { w.record_later(vec![entry(100 + n)]).await.unwrap()[0] }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (3..53).collect::<Vec<i64>>());
    drop(writer);
    handle.await.unwrap();
    assert!(f.verify().await.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_waiting_or_not_all_get_committed_once_in_one_chain() {
    let f = fixture_with(0).await;
    let (writer, handle) =
        AuditWriter::start(f.store.clone(), f.keys.clone(), f.dir.path().join(HEAD_FILE), FsyncPolicy::Off)
            .await
            .unwrap();
    let entry = |task: usize, n: usize| Entry {
        session_id: None,
        kind: "management".into(),
        payload: serde_json::json!({"task": task, "n": n}).to_string(),
        session_change: None,
    };
    let mut tasks = Vec::new();
    for task in 0..8 {
        let w = writer.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for n in 0..200 {
                if n % 3 == 0 {
                    // Nothing waits for these: they must still be committed, in their turn.
                    w.record_detached(vec![entry(task, n)]).unwrap();
                } else {
                    seqs.push(w.record_one(entry(task, n)).await.unwrap());
                }
            }
            seqs
        }));
    }
    let mut waited = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one caller's events are committed in order");
        waited.extend(seqs);
    }
    drop(writer);
    handle.await.unwrap();
    let report = f.verify().await;
    assert!(report.ok, "{report:?}");
    let conn = rusqlite::Connection::open(f.dir.path().join("gatehouse.db")).unwrap();
    let (count, distinct): (i64, i64) = conn
        .query_row("SELECT count(*), count(DISTINCT payload) FROM audit_events", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!((count, distinct), (1600, 1600), "every entry once, the detached ones included");
    waited.sort();
    waited.dedup();
    assert_eq!(waited.len(), 8 * 133);
}

/// Holds the store's write lock from another connection (as an operator's `sqlite3` would)
/// until dropped: the importer cannot move journaled events into the store meanwhile.
struct StoreLock {
    _held: rusqlite::Connection,
}

impl StoreLock {
    fn hold(dir: &std::path::Path) -> StoreLock {
        let conn = rusqlite::Connection::open(dir.join("gatehouse.db")).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        StoreLock { _held: conn }
    }
}

fn management(n: usize) -> Entry {
    Entry {
        session_id: None,
        kind: "management".into(),
        payload: serde_json::json!({"n": n}).to_string(),
        session_change: None,
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_events_are_verified_before_they_reach_the_store_and_replayed_after_a_crash() {
    let f = fixture_with(5).await;
    let head = f.dir.path().join(HEAD_FILE);
    let (writer, handle) =
        AuditWriter::start(f.store.clone(), f.keys.clone(), head.clone(), FsyncPolicy::Off).await.unwrap();
    let lock = StoreLock::hold(f.dir.path());
    // Recorded (journaled) although the store is locked: the callers are answered at once.
    for n in 0..3 {
        writer.record_one(management(n)).await.unwrap();
    }
    assert_eq!(f.store.last_event().await.unwrap().unwrap().0, 5, "the store has not taken them yet");
    let report = f.verify().await;
    assert!(report.ok, "{}", report.line());
    assert_eq!(report.line(), "ok: 8 events (3 of them in the journal, not yet in the store)");
    assert!(!writer.settled(std::time::Duration::from_millis(50)).await, "the importer waits for the lock");

    // A gateway killed now: its data directory as it is, with the events only in the journal.
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(f.dir.path(), crashed.path());
    drop(lock);
    assert!(writer.settled(std::time::Duration::from_secs(10)).await, "imported once the lock is gone");
    assert_eq!(f.store.last_event().await.unwrap().unwrap().0, 8);
    assert_eq!(f.verify().await.line(), "ok: 8 events");
    drop(writer);
    handle.await.unwrap();
    let journal = gatehouse_audit::journal_dir(&head);
    assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 0, "a clean stop leaves no journal");

    // The crashed copy: verify reads the journal; a start moves it into the store first.
    let store = Arc::new(SqliteStore::open(&crashed.path().join("gatehouse.db"), false).unwrap());
    let crashed_head = crashed.path().join(HEAD_FILE);
    let report = verify(store.as_ref(), &f.keys, &crashed_head).await.unwrap();
    assert_eq!(report.line(), "ok: 8 events (3 of them in the journal, not yet in the store)");
    let (writer, handle) =
        AuditWriter::start(store.clone(), f.keys.clone(), crashed_head.clone(), FsyncPolicy::Off).await.unwrap();
    assert_eq!(store.last_event().await.unwrap().unwrap().0, 8, "replayed before the writer starts");
    assert_eq!(writer.record_one(management(9)).await.unwrap(), 9, "the chain goes on after the replayed events");
    drop(writer);
    handle.await.unwrap();
    let report = verify(store.as_ref(), &f.keys, &crashed_head).await.unwrap();
    assert_eq!(report.line(), "ok: 9 events");
}
