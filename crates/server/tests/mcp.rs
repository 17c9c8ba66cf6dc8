//! `/mcp` driven by the official MCP Python SDK (`pip install mcp`) against a real PostgreSQL:
//! tools per identity, masked rows, a denied query as a tool error, a held query approved during
//! the hold, one left undecided and retried once approved, and every call recorded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use pg::*;
use serde_json::{Value, json};

fn agent(f: &Fixture, token: &str, args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/mcp_agent.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out =
        Command::new(python).arg(script).arg(format!("{}/mcp", f.gw.url())).arg(token).args(args).output().unwrap();
    assert!(out.status.success(), "the MCP SDK client (pip install mcp) failed: {}\n{}", stdout(&out), stderr(&out));
    serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

fn pending(f: &Fixture, token: &str) -> Vec<Value> {
    let out = f.gw.cli_as(token, &["reviews", "list", "--status", "pending", "--json"]).unwrap();
    serde_json::from_str::<Value>(&stdout(&out)).unwrap().as_array().unwrap().clone()
}

#[test]
fn agents_see_their_tools_get_masked_rows_are_refused_held_and_recorded() {
    let f = Fixture::with_env(&[("GATEHOUSE_REVIEWS_HOLD_SECONDS", "4")]);
    f.direct(
        "CREATE TABLE public.people (id int PRIMARY KEY, email text);
         INSERT INTO public.people VALUES (1, 'ada@example.com'), (2, 'grace@example.org');",
    );
    f.gw.cli_ok(&["connections", "update", "pg", "--mask", "email", "--description", "the shop"]).unwrap();
    f.policies(&format!(
        "{POLICIES}\n@id(\"order-deletes-need-dba\")\n@approval(\"dba\")\nforbid (principal, action == Action::\"sql.delete\", resource == Table::\"pg/public.orders\");"
    ));
    let dba = f.gw.cli_ok(&["identities", "add", "dba1", "--groups", "dba"]).unwrap().trim().to_string();
    let outsider = f.gw.cli_ok(&["identities", "add", "outsider", "--groups", "ops"]).unwrap().trim().to_string();

    // Tools differ by identity: only what the caller may use is listed.
    let tools = agent(&f, &f.token, &["list"]);
    let names: Vec<&str> = tools.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["query_pg", "list_my_reviews", "request_access"], "{tools}");
    let about = tools[0]["description"].as_str().unwrap();
    assert!(
        about.contains("the shop") && about.contains("public.orders") && about.contains("public.people"),
        "{about}"
    );
    assert!(!about.contains("secrets"), "a table the caller may not read is not offered: {about}");
    let theirs = agent(&f, &outsider, &["list"]);
    let names: Vec<&str> = theirs.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["list_my_reviews", "request_access"], "{theirs}");

    // An allowed query: masked rows.
    let r = agent(&f, &f.token, &["call", "query_pg", r#"{"sql": "SELECT id, email FROM public.people ORDER BY id"}"#]);
    assert_eq!(r["is_error"], false, "{r}");
    let rows = &r["structured"]["rows"];
    assert_eq!(rows[0][0], "1");
    assert!(!rows[0][1].as_str().unwrap().contains("ada"), "{r}");
    assert_eq!(r["structured"]["masked"], json!({"email": {"email": 2}}));
    let r = agent(
        &f,
        &f.token,
        &["call", "query_pg", r#"{"sql": "SELECT item FROM public.orders WHERE id = $1", "params": [1]}"#],
    );
    assert_eq!(r["structured"]["rows"], json!([["lamp"]]), "{r}");

    // A denied one: a tool error naming the policy.
    let r = agent(&f, &f.token, &["call", "query_pg", r#"{"sql": "SELECT * FROM public.secrets"}"#]);
    assert_eq!(r["is_error"], true, "{r}");
    assert!(r["text"][0].as_str().unwrap().contains("no-secrets"), "{r}");
    // A tool the caller was not offered runs nothing either.
    let r = agent(&f, &outsider, &["call", "query_pg", r#"{"sql": "SELECT 1"}"#]);
    assert_eq!(r["is_error"], true, "{r}");

    // Held, then approved during the hold: the call completes, with progress while it waited.
    let delete = r#"{"sql": "DELETE FROM public.orders WHERE id = $1", "params": [2]}"#;
    std::thread::scope(|s| {
        let call = s.spawn(|| agent(&f, &f.token, &["call", "query_pg", delete]));
        let deadline = Instant::now() + Duration::from_secs(20);
        let id = loop {
            if let Some(r) = pending(&f, &dba).first() {
                break r["id"].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "no review appeared");
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(1200));
        assert!(f.gw.cli_as(&dba, &["reviews", "approve", &id]).unwrap().status.success());
        let r = call.join().unwrap();
        assert_eq!(r["is_error"], false, "{r}");
        assert_eq!(r["structured"]["command"], "DELETE 1");
        let progress = r["progress"].as_array().unwrap();
        assert!(progress.iter().any(|m| m.as_str().unwrap().contains(&id)), "{r}");
    });

    // Held and undecided: the agent is told the review id and that it may retry once approved.
    let update = r#"{"sql": "DELETE FROM public.orders WHERE id = 1"}"#;
    let r = agent(&f, &f.token, &["call", "query_pg", update]);
    assert_eq!(r["is_error"], true, "{r}");
    let text = r["text"][0].as_str().unwrap();
    assert!(text.contains("call this tool again with exactly the same arguments"), "{text}");
    let mine = agent(&f, &f.token, &["call", "list_my_reviews", "{}"]);
    let review =
        mine["structured"]["reviews"].as_array().unwrap().iter().find(|r| r["status"] == "pending").unwrap().clone();
    assert!(text.contains(review["id"].as_str().unwrap()), "{text}");
    assert!(f.gw.cli_as(&dba, &["reviews", "approve", review["id"].as_str().unwrap()]).unwrap().status.success());
    let r = agent(&f, &f.token, &["call", "query_pg", update]);
    assert_eq!(r["structured"]["command"], "DELETE 1", "{r}");

    // An agent can ask for more rights instead of failing.
    let r = agent(&f, &f.token, &["call", "request_access", r#"{"group": "oncall", "duration": "1h", "reason": "x"}"#]);
    assert_eq!(r["is_error"], true, "no group is requestable here: {r}");

    // Every call is a request of an mcp session of the caller, with masked arguments.
    let sessions: Value =
        serde_json::from_str(&f.gw.cli_ok(&["sessions", "list", "--identity", "app", "--json"]).unwrap()).unwrap();
    let mcp: Vec<&Value> = sessions.as_array().unwrap().iter().filter(|s| s["protocol"] == "mcp").collect();
    assert!(!mcp.is_empty(), "{sessions}");
    // Each agent run closed its MCP session, and the gateway session recording it ended too.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sessions: Value =
            serde_json::from_str(&f.gw.cli_ok(&["sessions", "list", "--identity", "app", "--json"]).unwrap()).unwrap();
        let live: Vec<&Value> =
            sessions.as_array().unwrap().iter().filter(|s| s["protocol"] == "mcp" && s["live"] == true).collect();
        if live.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "MCP sessions still live after their clients left: {live:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = session_events(&f.gw, "app");
    let calls: Vec<&Value> =
        events.iter().filter(|e| e["data"]["action"] == "mcp.query_pg").map(|e| &e["data"]).collect();
    assert!(calls.iter().any(|c| c["decision"] == "allow" && c["rows"] == 2), "{calls:?}");
    assert!(calls.iter().any(|c| c["decision"] == "deny"), "{calls:?}");
    assert!(calls.iter().any(|c| c["decision"] == "review"), "{calls:?}");
    let exec_sessions: Vec<&Value> = events.iter().filter(|e| e["data"]["via"] == "mcp").collect();
    assert!(!exec_sessions.is_empty(), "the statements themselves are recorded in sessions via mcp");
    assert!(f.gw.cli_ok(&["audit", "verify"]).unwrap().starts_with("ok"));

    // No token: 401 before any MCP exchange.
    let r = curl("POST", &format!("{}/mcp", f.gw.url()), None, Some("{}"));
    assert_eq!(r.status, 401, "{}", r.body);
}
