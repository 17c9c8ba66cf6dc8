//! Crash safety: the gateway is killed with SIGKILL while clients run numbered statements; after
//! a restart the audit chain verifies, every statement whose answer reached a client is in the
//! audit trail, and the sessions the crash cut are ended in the record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use pg::*;

const CLIENTS: u64 = 4;

#[test]
fn a_killed_gateway_keeps_every_answered_statement_and_a_valid_chain() {
    let mut f = Fixture::new();
    let url = f.url(&f.token);
    let answered: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let (url, answered) = (&url, &answered);
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    let client = client(url).await;
                    for n in 0.. {
                        let number = (c + 1) * 10_000_000 + n;
                        // Numbered in the statement text, which is what the audit trail records.
                        match client.simple_query(&format!("SELECT {number} AS n")).await {
                            Ok(_) => answered.lock().unwrap().push(number),
                            Err(_) => break,
                        }
                    }
                });
            });
        }
        std::thread::sleep(Duration::from_millis(1500));
        f.gw.kill().unwrap();
    });
    let answered = answered.into_inner().unwrap();
    assert!(answered.len() > 100, "the clients ran under load before the crash: {}", answered.len());

    f.gw.restart().unwrap();
    let verify = f.gw.cli_ok(&["audit", "verify"]).unwrap();
    assert!(verify.starts_with("ok"), "{verify}");
    let events = session_events(&f.gw, "app");
    let recorded: HashSet<&str> =
        events.iter().filter(|e| e["kind"] == "request").filter_map(|e| e["data"]["request"].as_str()).collect();
    let missing: Vec<&u64> =
        answered.iter().filter(|n| !recorded.contains(format!("SELECT {n} AS n").as_str())).collect();
    assert!(missing.is_empty(), "{} answered statements are not in the audit trail: {missing:?}", missing.len());

    // The sessions the crash cut are ended in the record, not left live forever.
    let sessions: serde_json::Value =
        serde_json::from_str(&f.gw.cli_ok(&["sessions", "list", "--identity", "app", "--json"]).unwrap()).unwrap();
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len() as u64, CLIENTS);
    for s in sessions {
        assert_eq!(s["live"], false, "{s}");
        assert_eq!(s["end_reason"], "the gateway stopped without ending the session", "{s}");
    }
    // And the gateway serves again.
    let out = f.app("SELECT 'back';");
    assert!(stdout(&out).contains("back"), "{}", stderr(&out));
}
