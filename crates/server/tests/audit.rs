//! The audit trail end to end: management actions are recorded as sessions, and edits,
//! deletions and truncation of the SQLite file are caught by `audit verify`, online and offline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn make_events(gw: &Gateway) {
    for i in 0..4 {
        gw.cli_ok(&["identities", "add", &format!("svc-{i}"), "--groups", "g"]).unwrap();
    }
}

fn verify_offline(gw: &Gateway) -> (bool, String) {
    let out = gw.client().args(["audit", "verify", "--data-dir", gw.data_dir().to_str().unwrap()]).output().unwrap();
    (out.status.success(), format!("{}{}", stdout(&out), stderr(&out)))
}

fn verify_online(gw: &Gateway) -> (bool, String) {
    let out = gw.cli(&["audit", "verify"]).unwrap();
    (out.status.success(), format!("{}{}", stdout(&out), stderr(&out)))
}

fn last_seq(gw: &Gateway) -> i64 {
    let conn = rusqlite::Connection::open(gw.data_dir().join("gatehouse.db")).unwrap();
    conn.query_row("SELECT MAX(seq) FROM audit_events", [], |r| r.get(0)).unwrap()
}

#[test]
fn management_actions_are_sessions_with_timelines() {
    let gw = gateway();
    gw.cli_ok(&["identities", "add", "fn-a", "--groups", "g"]).unwrap();
    let list: serde_json::Value = serde_json::from_str(&gw.cli_ok(&["sessions", "list", "--json"]).unwrap()).unwrap();
    let first = &list[0];
    assert_eq!(first["identity"], "admin");
    assert_eq!(first["protocol"], "api");
    let id = first["id"].as_str().unwrap();
    let show = gw.cli_ok(&["sessions", "show", id]).unwrap();
    assert!(show.contains("identity.create fn-a -> allow"), "{show}");
    assert!(show.contains("session.end"), "{show}");
    let limited: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["sessions", "list", "--limit", "1", "--json"]).unwrap()).unwrap();
    assert_eq!(limited.as_array().unwrap().len(), 1);
    let table = gw.cli_ok(&["sessions", "list", "--identity", "admin"]).unwrap();
    assert!(table.starts_with("ID ") && table.contains("api"), "{table}");
    let (ok, line) = verify_online(&gw);
    assert!(ok && line.starts_with("ok: "), "{line}");
}

#[test]
fn edited_event_fails_verify_naming_it() {
    let mut gw = gateway();
    make_events(&gw);
    gw.terminate().unwrap();
    assert!(verify_offline(&gw).0);
    sqlite(
        &gw,
        "UPDATE audit_events SET payload = replace(payload, 'svc-1', 'svc-X') WHERE payload LIKE '%svc-1%' AND kind = 'request'",
    );
    let conn = rusqlite::Connection::open(gw.data_dir().join("gatehouse.db")).unwrap();
    let edited: i64 =
        conn.query_row("SELECT seq FROM audit_events WHERE payload LIKE '%svc-X%'", [], |r| r.get(0)).unwrap();
    let (ok, line) = verify_offline(&gw);
    assert!(!ok);
    assert!(line.contains(&format!("event {edited}:")), "{line}");

    // The server still starts on a broken chain, reports it, and verify through the API agrees.
    gw.restart().unwrap();
    let (ok, line) = verify_online(&gw);
    assert!(!ok && line.contains(&format!("event {edited}:")), "{line}");
    assert!(gw.log().contains("AUDIT CHAIN BROKEN"), "{}", gw.log());
    let ready = curl("GET", &format!("{}/readyz", gw.url()), None, None);
    assert_eq!(ready.status, 200, "a broken chain is reported, not fatal");
    assert!(ready.json()["audit_chain"].as_str().unwrap().starts_with("bad: "), "{}", ready.body);
    gw.cli_ok(&["identities", "list"]).unwrap();
}

#[test]
fn deleted_event_fails_verify_naming_it() {
    let mut gw = gateway();
    make_events(&gw);
    gw.terminate().unwrap();
    sqlite(&gw, "DELETE FROM audit_events WHERE seq = 5");
    let (ok, line) = verify_offline(&gw);
    assert!(!ok);
    assert!(line.contains("event 5:") && line.contains("missing"), "{line}");
}

#[test]
fn deleted_newest_event_fails_verify_naming_it() {
    let mut gw = gateway();
    make_events(&gw);
    gw.terminate().unwrap();
    let newest = last_seq(&gw);
    sqlite(&gw, &format!("DELETE FROM audit_events WHERE seq = {newest}"));
    let (ok, line) = verify_offline(&gw);
    assert!(!ok);
    assert!(line.contains(&format!("event {newest}:")), "{line}");
}

#[test]
fn verify_passes_on_an_untouched_trail_online_and_offline() {
    let mut gw = gateway();
    make_events(&gw);
    let (ok, line) = verify_online(&gw);
    assert!(ok, "{line}");
    gw.terminate().unwrap();
    let (ok, line) = verify_offline(&gw);
    assert!(ok && line.starts_with("ok: "), "{line}");
}

#[test]
fn a_corrupt_chain_head_is_reported_and_the_server_still_starts() {
    let mut gw = gateway();
    make_events(&gw);
    gw.terminate().unwrap();
    std::fs::write(gw.data_dir().join("audit.head"), "not json").unwrap();
    gw.restart().unwrap();
    gw.cli_ok(&["identities", "add", "after-restart"]).unwrap();
    // The start-up check found it, logged it, and recorded it in the chain itself.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let recorded = loop {
        let conn = rusqlite::Connection::open(gw.data_dir().join("gatehouse.db")).unwrap();
        let payload: Option<String> =
            conn.query_row("SELECT payload FROM audit_events WHERE kind = 'audit.chain_broken'", [], |r| r.get(0)).ok();
        if let Some(p) = payload {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "no audit.chain_broken event");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(recorded.contains("chain head is unreadable"), "{recorded}");
    assert!(gw.log().contains("AUDIT CHAIN BROKEN"), "{}", gw.log());
}

#[test]
fn refused_management_changes_are_recorded_too() {
    let gw = gateway();
    let token = gw.cli_ok(&["identities", "add", "intruder", "--groups", "visitors"]).unwrap();
    let out = gw.cli_as(token.trim(), &["connections", "add", "x", "--type", "redis", "--host", "h"]).unwrap();
    assert!(!out.status.success());
    let list: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["sessions", "list", "--identity", "intruder", "--json"]).unwrap()).unwrap();
    assert_eq!(list[0]["denied"], 1, "{list}");
    let show = gw.cli_ok(&["sessions", "show", list[0]["id"].as_str().unwrap()]).unwrap();
    assert!(show.contains("connection.create x -> deny"), "{show}");
}
