//! The contract every [`Store`] back-end must pass. Back-ends call [`run_all`] from their tests
//! with a fresh, empty store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use gatehouse_core::IdentityKind;

use crate::*;

fn identity(name: &str, hash: u8) -> IdentityRecord {
    IdentityRecord {
        name: name.into(),
        kind: IdentityKind::Service,
        groups: vec!["billing".into(), "ops".into()],
        token_hash: Some(vec![hash; 32]),
        created_at: 1_000,
        expires_at: Some(9_000),
        last_used_at: None,
        token_rotated_at: None,
    }
}

fn connection(name: &str) -> ConnectionRecord {
    ConnectionRecord {
        name: name.into(),
        kind: "postgres".into(),
        host: Some("127.0.0.1".into()),
        port: Some(5432),
        url: None,
        database: Some("app".into()),
        user: Some("app".into()),
        tls_mode: "require".into(),
        ca_file: None,
        description: "the app database".into(),
        tags: BTreeMap::from([("env".to_string(), "prod".to_string())]),
        mask: vec!["email".into()],
        mask_columns: vec!["*.*.ssn".into()],
        secret: Some(SealedSecret { kind: SecretKind::Password, sealed: vec![1, 2, 3] }),
        credentials: vec![],
        created_at: 10,
        updated_at: 10,
    }
}

/// Runs every contract check against `store`, which must be empty.
pub async fn run_all(store: &dyn Store) {
    store.ping().await.unwrap();
    identities(store).await;
    connections(store).await;
    policies(store).await;
    audit(store).await;
    reviews(store).await;
}

fn review(id: &str, digest: &str, created_at: i64) -> ReviewRecord {
    ReviewRecord {
        id: id.into(),
        kind: ReviewKind::Request,
        status: ReviewStatus::Pending,
        requester: "fn-billing".into(),
        requester_kind: IdentityKind::Service,
        connection: Some("pg".into()),
        session_id: Some("s1".into()),
        request: "DELETE FROM t WHERE id = 1".into(),
        digest: Some(digest.into()),
        params: vec![],
        fingerprint: Some("DELETE FROM t WHERE id = ?".into()),
        accesses: vec!["sql.delete Table::\"pg/public.t\"".into()],
        policies: vec!["deletes-need-dba".into()],
        reason: "held for review by policy deletes-need-dba".into(),
        approvers: vec![ReviewApprovers { group: "dba".into(), quorum: 1 }],
        votes: vec![],
        group: None,
        duration_ms: None,
        created_at,
        expires_at: created_at + 1_000,
        decided_at: None,
        grant_until: None,
        used_at: None,
        version: 1,
    }
}

async fn reviews(store: &dyn Store) {
    let r1 = review("r1", "d1", 10_000);
    store.create_review(&r1).await.unwrap();
    assert!(matches!(store.create_review(&r1).await, Err(StoreError::Conflict(_))));
    store.create_review(&review("r2", "d2", 10_500)).await.unwrap();
    assert_eq!(store.get_review("r1").await.unwrap().unwrap(), r1);
    assert!(store.get_review("nope").await.unwrap().is_none());

    // Newest first, filtered by status and requester.
    let all = store.list_reviews(ReviewFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["r2", "r1"]);
    let mine = ReviewFilter { requester: Some("someone-else".into()), limit: 10, ..Default::default() };
    assert!(store.list_reviews(mine).await.unwrap().is_empty());

    // The same exact request joins the pending review while it has not expired.
    assert_eq!(store.pending_review("fn-billing", "pg", "d1", 10_100).await.unwrap().unwrap().id, "r1");
    assert!(store.pending_review("fn-billing", "pg", "d1", 11_000).await.unwrap().is_none());
    assert!(store.pending_review("fn-billing", "pg", "other", 10_100).await.unwrap().is_none());
    assert!(store.pending_review("other", "pg", "d1", 10_100).await.unwrap().is_none());

    // Updates are refused on a stale copy.
    let mut approved = r1.clone();
    approved.status = ReviewStatus::Approved;
    approved.grant_until = Some(20_000);
    assert!(store.update_review(&approved).await.unwrap());
    assert!(!store.update_review(&approved).await.unwrap(), "a stale copy must not overwrite");
    let stored = store.get_review("r1").await.unwrap().unwrap();
    assert_eq!((stored.status, stored.version), (ReviewStatus::Approved, 2));
    assert!(store.pending_review("fn-billing", "pg", "d1", 10_100).await.unwrap().is_none());

    // A grant is used once, only for its exact request, only before it ends.
    assert!(store.use_grant("fn-billing", "pg", "d2", None, 10_600).await.unwrap().is_none(), "r2 is pending");
    assert!(store.use_grant("fn-billing", "pg", "d1", None, 20_000).await.unwrap().is_none(), "grant ended");
    assert!(store.use_grant("fn-billing", "pg", "d1", Some("r2"), 10_600).await.unwrap().is_none());
    let used = store.use_grant("fn-billing", "pg", "d1", None, 10_600).await.unwrap().unwrap();
    assert_eq!((used.id.as_str(), used.used_at), ("r1", Some(10_600)));
    assert!(store.use_grant("fn-billing", "pg", "d1", None, 10_700).await.unwrap().is_none(), "used once");

    // Pending reviews past their time expire; decided ones stay as they are.
    let expired = store.expire_reviews(12_000).await.unwrap();
    assert_eq!(expired.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["r2"]);
    assert_eq!(store.get_review("r2").await.unwrap().unwrap().status, ReviewStatus::Expired);
    assert_eq!(store.get_review("r1").await.unwrap().unwrap().status, ReviewStatus::Approved);
    assert!(store.expire_reviews(13_000).await.unwrap().is_empty());
    let expired = ReviewFilter { status: Some(ReviewStatus::Expired), limit: 10, ..Default::default() };
    assert_eq!(store.list_reviews(expired).await.unwrap().len(), 1);

    // Access grants are active until their window ends.
    let mut access = review("r3", "", 30_000);
    access.kind = ReviewKind::Access;
    access.digest = None;
    access.connection = None;
    access.group = Some("oncall".into());
    access.status = ReviewStatus::Approved;
    access.grant_until = Some(40_000);
    store.create_review(&access).await.unwrap();
    assert_eq!(store.active_access_grants(35_000).await.unwrap().len(), 1);
    assert!(store.active_access_grants(40_000).await.unwrap().is_empty());
}

async fn identities(store: &dyn Store) {
    assert!(store.list_identities().await.unwrap().is_empty());
    store.create_identity(identity("fn-billing", 1)).await.unwrap();
    assert!(matches!(store.create_identity(identity("fn-billing", 2)).await, Err(StoreError::Conflict(_))));
    // Token hashes are unique too.
    assert!(matches!(store.create_identity(identity("other", 1)).await, Err(StoreError::Conflict(_))));

    let got = store.get_identity("fn-billing").await.unwrap().unwrap();
    assert_eq!(got, identity("fn-billing", 1));
    assert_eq!(store.identity_by_token_hash(&[1; 32]).await.unwrap().unwrap().name, "fn-billing");
    assert!(store.identity_by_token_hash(&[9; 32]).await.unwrap().is_none());

    store.rotate_identity_token("fn-billing", &[2; 32], 2_000, Some(12_000)).await.unwrap();
    assert!(store.identity_by_token_hash(&[1; 32]).await.unwrap().is_none());
    let got = store.identity_by_token_hash(&[2; 32]).await.unwrap().unwrap();
    assert_eq!((got.token_rotated_at, got.expires_at), (Some(2_000), Some(12_000)));
    assert!(matches!(store.rotate_identity_token("nobody", &[3; 32], 1, None).await, Err(StoreError::NotFound(_))));

    store.touch_identity("fn-billing", 3_000).await.unwrap();
    assert_eq!(store.get_identity("fn-billing").await.unwrap().unwrap().last_used_at, Some(3_000));

    store.create_identity(identity("a-first", 4)).await.unwrap();
    let names: Vec<String> = store.list_identities().await.unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, vec!["a-first".to_string(), "fn-billing".to_string()]);

    store.delete_identity("fn-billing").await.unwrap();
    assert!(store.get_identity("fn-billing").await.unwrap().is_none());
    assert!(store.identity_by_token_hash(&[2; 32]).await.unwrap().is_none());
    assert!(matches!(store.delete_identity("fn-billing").await, Err(StoreError::NotFound(_))));
}

async fn connections(store: &dyn Store) {
    store.create_connection(connection("pg-prod")).await.unwrap();
    assert!(matches!(store.create_connection(connection("pg-prod")).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.get_connection("pg-prod").await.unwrap().unwrap(), connection("pg-prod"));

    let mut changed = connection("pg-prod");
    changed.description = "changed".into();
    changed.secret = Some(SealedSecret { kind: SecretKind::Header { name: "X-Api-Key".into() }, sealed: vec![4] });
    changed.updated_at = 20;
    changed.created_at = 999; // ignored by update
    store.update_connection(changed.clone()).await.unwrap();
    let got = store.get_connection("pg-prod").await.unwrap().unwrap();
    assert_eq!(got.description, "changed");
    assert_eq!(got.secret, changed.secret);
    assert_eq!(got.created_at, 10);
    assert!(matches!(store.update_connection(connection("missing")).await, Err(StoreError::NotFound(_))));

    let cred = |name: &str| CredentialRecord {
        name: name.into(),
        groups: vec!["analysts".into()],
        user: Some("readonly".into()),
        secret: Some(SealedSecret { kind: SecretKind::Password, sealed: vec![5] }),
        created_at: 30,
    };
    store.add_credential("pg-prod", cred("ro")).await.unwrap();
    store.add_credential("pg-prod", cred("audit")).await.unwrap();
    assert!(matches!(store.add_credential("pg-prod", cred("ro")).await, Err(StoreError::Conflict(_))));
    assert!(matches!(store.add_credential("missing", cred("x")).await, Err(StoreError::NotFound(_))));
    let names: Vec<String> =
        store.get_connection("pg-prod").await.unwrap().unwrap().credentials.into_iter().map(|c| c.name).collect();
    assert_eq!(names, vec!["ro".to_string(), "audit".to_string()], "credentials keep the order added");
    store.remove_credential("pg-prod", "ro").await.unwrap();
    assert!(matches!(store.remove_credential("pg-prod", "ro").await, Err(StoreError::NotFound(_))));
    store.add_credential("pg-prod", cred("ro")).await.unwrap();
    let names: Vec<String> =
        store.get_connection("pg-prod").await.unwrap().unwrap().credentials.into_iter().map(|c| c.name).collect();
    assert_eq!(names, vec!["audit".to_string(), "ro".to_string()]);

    store.create_connection(connection("another")).await.unwrap();
    assert_eq!(store.list_connections().await.unwrap().len(), 2);
    store.delete_connection("pg-prod").await.unwrap();
    assert!(store.get_connection("pg-prod").await.unwrap().is_none());
    // Credentials went with it: a new connection of the same name starts clean.
    store.create_connection(connection("pg-prod")).await.unwrap();
    assert!(store.get_connection("pg-prod").await.unwrap().unwrap().credentials.is_empty());
    assert!(matches!(store.delete_connection("missing").await, Err(StoreError::NotFound(_))));
}

async fn policies(store: &dyn Store) {
    assert!(store.current_policy().await.unwrap().is_none());
    assert_eq!(store.put_policy("first", "admin", 1).await.unwrap(), 1);
    assert_eq!(store.put_policy("second", "ops", 2).await.unwrap(), 2);
    let current = store.current_policy().await.unwrap().unwrap();
    assert_eq!((current.version, current.text.as_str(), current.author.as_str()), (2, "second", "ops"));
}

fn event(seq: i64, session: Option<&str>) -> StoredEvent {
    StoredEvent {
        seq,
        ts: 100 + seq,
        session_id: session.map(String::from),
        kind: "request".into(),
        payload: format!("{{\"n\":{seq}}}"),
        mac: vec![seq as u8; 32],
    }
}

fn session(id: &str, identity: &str, started_at: i64) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        identity: identity.into(),
        identity_kind: IdentityKind::Service,
        connection: Some("pg-prod".into()),
        protocol: "postgres".into(),
        client_addr: Some("127.0.0.1:5000".into()),
        started_at,
        ended_at: None,
        end_reason: None,
        requests: 0,
        denied: 0,
        reviewed: 0,
        masked: 0,
    }
}

async fn audit(store: &dyn Store) {
    assert!(store.last_event().await.unwrap().is_none());
    store
        .append_audit(AuditBatch {
            events: vec![event(1, Some("s1")), event(2, Some("s1")), event(3, None)],
            sessions: vec![
                SessionChange::Open(session("s1", "fn", 100)),
                SessionChange::Request { id: "s1".into(), denied: false, reviewed: false },
                SessionChange::Request { id: "s1".into(), denied: true, reviewed: true },
                SessionChange::Masked { id: "s1".into(), values: 3 },
            ],
        })
        .await
        .unwrap();
    store
        .append_audit(AuditBatch {
            events: vec![event(4, Some("s2")), event(5, Some("s1"))],
            sessions: vec![
                SessionChange::Open(session("s2", "other", 200)),
                SessionChange::Close { id: "s1".into(), ended_at: 300, reason: "client closed".into() },
            ],
        })
        .await
        .unwrap();
    // A batch whose sequence number collides is refused as a whole.
    let err = store.append_audit(AuditBatch { events: vec![event(6, None), event(5, None)], sessions: vec![] }).await;
    assert!(err.is_err());
    assert_eq!(store.last_event().await.unwrap(), Some((5, vec![5; 32])));

    let all = store.events_after(0, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(all[0], event(1, Some("s1")));
    assert_eq!(store.events_after(2, 2).await.unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(store.session_events("s1").await.unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 5]);

    let s1 = store.get_session("s1").await.unwrap().unwrap();
    assert_eq!(
        (s1.requests, s1.denied, s1.reviewed, s1.masked, s1.ended_at, s1.end_reason.as_deref()),
        (2, 1, 1, 3, Some(300), Some("client closed"))
    );
    let listed = store.list_sessions(SessionFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), vec!["s2", "s1"], "newest first");
    let by_identity = store
        .list_sessions(SessionFilter { identity: Some("fn".into()), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(by_identity.len(), 1);
    let limited = store.list_sessions(SessionFilter { limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!(limited.len(), 1);
    let before =
        store.list_sessions(SessionFilter { before: Some(200), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(before.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), vec!["s1"]);
    let ids = |list: Vec<SessionRecord>| list.into_iter().map(|s| s.id).collect::<Vec<_>>();
    for outcome in [SessionOutcome::Denied, SessionOutcome::Reviewed, SessionOutcome::Masked] {
        let filter = SessionFilter { outcome: Some(outcome), limit: 10, ..Default::default() };
        assert_eq!(ids(store.list_sessions(filter).await.unwrap()), vec!["s1"], "{outcome:?}");
    }
    let since = SessionFilter { since: Some(150), limit: 10, ..Default::default() };
    assert_eq!(ids(store.list_sessions(since).await.unwrap()), vec!["s2"]);
    let mut http = session("s3", "fn", 200);
    http.protocol = "http".into();
    store
        .append_audit(AuditBatch { events: vec![event(6, Some("s3"))], sessions: vec![SessionChange::Open(http)] })
        .await
        .unwrap();
    let by_protocol = SessionFilter { protocol: Some("http".into()), limit: 10, ..Default::default() };
    assert_eq!(ids(store.list_sessions(by_protocol).await.unwrap()), vec!["s3"]);
    // Paging by (started_at, id): s3 and s2 share a millisecond; the page after s3 goes on with s2.
    let first = store.list_sessions(SessionFilter { limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!(ids(first.clone()), vec!["s3"]);
    let next = SessionFilter { before: Some(200), before_id: Some("s3".into()), limit: 10, ..Default::default() };
    assert_eq!(ids(store.list_sessions(next).await.unwrap()), vec!["s2", "s1"]);
    assert!(store.get_session("nope").await.unwrap().is_none());
    let mut open = store.open_sessions().await.unwrap();
    open.sort();
    assert_eq!(open, vec!["s2".to_string(), "s3".to_string()], "s1 was closed");
}
