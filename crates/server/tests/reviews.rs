//! Just-in-time approval end to end: statements that policy holds for review, driven with psql
//! and psycopg against a real PostgreSQL, decided with the `gatehouse reviews` commands by other
//! identities; time-bound group access with `gatehouse access request`; and the webhook
//! notification received by an HTTP server on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use pg::*;
use serde_json::Value;

const POLICIES: &str = r#"
@id("apps-connect")
permit (principal in Group::"apps", action == Action::"connect", resource == Connection::"pg");

@id("apps-work")
permit (principal in Group::"apps",
        action in [Action::"sql.select", Action::"sql.insert", Action::"sql.update", Action::"sql.delete"],
        resource in Connection::"pg");

@id("no-secrets")
forbid (principal, action, resource == Table::"pg/public.secrets")
unless { principal in Group::"oncall" };

@id("order-changes-need-dba")
@approval("dba")
forbid (principal, action in [Action::"sql.update", Action::"sql.delete"], resource == Table::"pg/public.orders");

@id("refunds-need-two-from-finance")
@approval("finance")
@quorum("2")
forbid (principal, action == Action::"sql.insert", resource == Table::"pg/public.refunds");
"#;

struct Reviewed {
    f: Fixture,
    /// Tokens by identity: `app` (groups apps and dba: it may approve others, never itself),
    /// `dba1`, `dba2` (dba), `fin1`, `fin2` (finance), `outsider` (ops).
    tokens: std::collections::HashMap<&'static str, String>,
}

impl Reviewed {
    fn start(env: &[(&str, &str)], config: Option<&str>) -> Reviewed {
        let f = Fixture::with_config(env, config);
        f.direct("CREATE TABLE public.refunds (order_id int, amount numeric)");
        let mut tokens = std::collections::HashMap::new();
        f.gw.cli_ok(&["identities", "rm", "app"]).unwrap();
        for (name, groups) in [
            ("app", "apps,dba"),
            ("dba1", "dba"),
            ("dba2", "dba"),
            ("fin1", "finance"),
            ("fin2", "finance"),
            ("outsider", "ops"),
        ] {
            let token = f.gw.cli_ok(&["identities", "add", name, "--groups", groups]).unwrap().trim().to_string();
            tokens.insert(name, token);
        }
        f.policies(POLICIES);
        Reviewed { f, tokens }
    }

    fn token(&self, who: &str) -> &str {
        &self.tokens[who]
    }

    /// psql as `app` with a script on standard input.
    fn psql(&self, script: &str) -> Output {
        self.f.psql("app", self.token("app"), "pg", script)
    }

    fn cli(&self, who: &str, args: &[&str]) -> Output {
        self.f.gw.cli_as(self.token(who), args).unwrap()
    }

    fn reviews(&self, who: &str, status: &str) -> Vec<Value> {
        let out = self.cli(who, &["reviews", "list", "--status", status, "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap().as_array().unwrap().clone()
    }

    /// Waits until `who` sees `n` pending reviews; returns them.
    fn wait_pending(&self, who: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pending = self.reviews(who, "pending");
            if pending.len() >= n {
                return pending;
            }
            assert!(Instant::now() < deadline, "no {n} pending reviews after 20 s: {pending:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn vote(&self, who: &str, verb: &str, id: &str, comment: &str) -> Output {
        self.cli(who, &["reviews", verb, id, "--comment", comment])
    }

    fn price(&self, id: i32) -> String {
        self.f.direct(&format!("SELECT price FROM public.orders WHERE id = {id}")).trim().to_string()
    }

    /// One statement through psycopg as `app`: what the caller saw, as JSON.
    fn psycopg(&self, sql: &str, params: Option<&str>) -> Value {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/psycopg_exec.py");
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let mut cmd = Command::new(python);
        cmd.arg(script).arg(format!("{} connect_timeout=10", self.f.url(self.token("app")))).arg(sql);
        if let Some(p) = params {
            cmd.arg(p);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "psycopg (pip install 'psycopg[binary]'): {}", stderr(&out));
        serde_json::from_str(stdout(&out).trim()).unwrap()
    }
}

fn review_id_in(text: &str) -> String {
    let at = text.find("review ").unwrap_or_else(|| panic!("no review named in: {text}")) + "review ".len();
    text[at..].chars().take_while(|c| c.is_ascii_hexdigit() || *c == '-').collect()
}

/// An HTTP server on loopback that answers the first request with 500 and later ones with 200,
/// and hands over each request body it received.
fn webhook_receiver() -> (String, mpsc::Receiver<Value>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/T0/B0/XyZzY", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let status = if n == 0 { "500 Internal Server Error" } else { "200 OK" };
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
        }
    });
    (url, rx)
}

#[test]
fn a_held_delete_approved_during_the_hold_completes_in_the_same_call_and_only_eligible_approvers_count() {
    let (webhook, notifications) = webhook_receiver();
    let t =
        Reviewed::start(&[("GATEHOUSE_REVIEWS_HOLD_SECONDS", "30"), ("GATEHOUSE_REVIEWS_WEBHOOK_URL", &webhook)], None);
    std::thread::scope(|s| {
        let started = Instant::now();
        let held = s.spawn(|| t.psql("DELETE FROM public.orders WHERE id = 1;\n"));
        let pending = t.wait_pending("dba1", 1);
        let review = &pending[0];
        let id = review["id"].as_str().unwrap().to_string();
        assert_eq!(review["status"], "pending");
        assert_eq!(review["requester"], "app");
        assert_eq!(review["connection"], "pg");
        assert_eq!(review["request"], "DELETE FROM public.orders WHERE id = 1");
        assert_eq!(review["approvers"], serde_json::json!([{"group": "dba", "quorum": 1}]));
        assert_eq!(review["policies"], serde_json::json!(["order-changes-need-dba"]));
        for key in ["created_at", "expires_at", "fingerprint", "reason"] {
            assert!(review[key].is_string(), "{key} in {review}");
        }
        // Not visible to someone who neither asked nor may decide.
        assert!(t.reviews("outsider", "pending").is_empty());

        // The requester is in the approver group, and still may not approve its own request.
        let own = t.vote("app", "approve", &id, "looks fine to me");
        assert!(!own.status.success());
        assert!(stderr(&own).contains("cannot approve their own request"), "{}", stderr(&own));
        // Someone outside the approver groups may not either, whatever the client shows.
        let api =
            curl("POST", &format!("{}/api/v1/reviews/{id}/approve", t.f.gw.url()), Some(t.token("fin1")), Some("{}"));
        assert_eq!(api.status, 403, "{}", api.body);
        assert!(api.body.contains("in none of those groups"), "{}", api.body);
        let outsider = t.vote("outsider", "approve", &id, "");
        assert!(!outsider.status.success() && stderr(&outsider).contains("may not approve"), "{}", stderr(&outsider));
        // Nor may they read it.
        let shown = t.cli("outsider", &["reviews", "show", &id]);
        assert!(!shown.status.success() && stderr(&shown).contains("not found"), "{}", stderr(&shown));
        assert_eq!(t.price(1), "19.90", "nothing ran yet");

        let ok = t.vote("dba1", "approve", &id, "ticket OPS-7");
        assert!(ok.status.success(), "{}", stderr(&ok));
        let out = held.join().unwrap();
        assert!(out.status.success() && stderr(&out).contains("NOTICE"), "{}", stderr(&out));
        assert!(stderr(&out).contains(&format!("review {id} created")), "{}", stderr(&out));
        assert!(!stderr(&out).contains("ERROR"), "{}", stderr(&out));
        assert!(started.elapsed() < Duration::from_secs(25), "it completed when approved, not at the hold's end");
        assert_eq!(t.f.direct("SELECT count(*) FROM public.orders WHERE id = 1").trim(), "0");

        // Recorded: the held request, the approved run with the grant, its result; the vote.
        let events = session_events(&t.f.gw, "app");
        let requests: Vec<&Value> = events.iter().filter(|e| e["kind"] == "request").map(|e| &e["data"]).collect();
        let held_event = requests.iter().find(|r| r["decision"] == "review").expect("the held request");
        assert_eq!(held_event["review_id"], id.as_str());
        let run = requests.iter().find(|r| r["grant"] == id.as_str()).expect("the run under the grant");
        assert_eq!(run["decision"], "allow");
        assert_eq!(run["approved_by"], serde_json::json!(["dba1"]));
        let approved = t.reviews("dba1", "approved");
        assert_eq!(approved[0]["votes"][0]["comment"], "ticket OPS-7");
        assert!(approved[0]["used_at"].is_string(), "the grant was used by the held run");
        let votes = session_events(&t.f.gw, "dba1");
        assert!(
            votes.iter().any(|e| e["data"]["action"] == "review.approve" && e["data"]["comment"] == "ticket OPS-7")
        );
        let refused = session_events(&t.f.gw, "app");
        assert!(refused.iter().any(|e| e["data"]["action"] == "review.approve" && e["data"]["decision"] == "deny"));
    });

    // Quorum 2 from finance: one approval is not enough, a second person's is.
    std::thread::scope(|s| {
        let held = s.spawn(|| t.psql("INSERT INTO public.refunds VALUES (1, 19.90);\n"));
        let id = t.wait_pending("fin1", 1)[0]["id"].as_str().unwrap().to_string();
        let first = t.vote("fin1", "approve", &id, "");
        assert!(first.status.success());
        assert!(stderr(&first).contains("still needs more approvals"), "{}", stderr(&first));
        let again = t.vote("fin1", "approve", &id, "");
        assert!(!again.status.success() && stderr(&again).contains("already decided"), "{}", stderr(&again));
        assert_eq!(t.reviews("fin2", "pending").len(), 1, "one approver of a quorum of 2 does not approve");
        assert_eq!(t.f.direct("SELECT count(*) FROM public.refunds").trim(), "0");
        assert!(t.vote("fin2", "approve", &id, "").status.success());
        let out = held.join().unwrap();
        assert!(out.status.success() && !stderr(&out).contains("ERROR"), "{}", stderr(&out));
        assert_eq!(t.f.direct("SELECT count(*) FROM public.refunds").trim(), "1");
    });

    // The webhook was told of each new review; the first delivery failed and was retried.
    let received: Vec<Value> = (0..3).map(|_| notifications.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
    let deletes: Vec<&Value> =
        received.iter().filter(|n| n["request"] == "DELETE FROM public.orders WHERE id = 1").collect();
    assert_eq!(deletes.len(), 2, "delivered again after a 500: {received:?}");
    assert_eq!(deletes[0], deletes[1], "the same notification");
    let delete = deletes[0];
    assert_eq!(delete["review"]["request"], "DELETE FROM public.orders WHERE id = 1");
    let text = delete["text"].as_str().unwrap();
    assert!(text.contains("app asks to run on pg") && text.contains("dba"), "{text}");
    let link = delete["link"].as_str().unwrap();
    assert!(link.starts_with(&t.f.gw.url()) && link.ends_with(delete["review"]["id"].as_str().unwrap()), "{link}");
    let refund = received.iter().find(|n| n["request"] != delete["request"]).unwrap();
    assert_eq!(refund["review"]["approvers"], serde_json::json!([{"group": "finance", "quorum": 2}]));

    let verify = t.f.gw.cli_ok(&["audit", "verify"]).unwrap();
    assert!(verify.starts_with("ok"), "{verify}");
    assert!(!t.f.gw.log().contains("XyZzY"), "the webhook URL is not logged");
}

#[test]
fn an_approval_after_the_hold_runs_the_same_statement_once_on_retry_and_nothing_else() {
    let t = Reviewed::start(&[("GATEHOUSE_REVIEWS_HOLD_SECONDS", "1")], None);
    let update = "UPDATE public.orders SET price = price + 1 WHERE id = 1;\n";
    let out = t.psql(update);
    let err = stderr(&out);
    assert!(err.contains("NOTICE") && err.contains("ERROR"), "{err}");
    assert!(err.contains("waiting for approval"), "{err}");
    let id = review_id_in(err.split("ERROR").nth(1).unwrap());
    assert_eq!(t.price(1), "19.90");

    // The same statement again while it is pending joins the review instead of opening another.
    let again = stderr(&t.psql(update));
    assert!(again.contains(&format!("review {id} (already pending)")), "{again}");
    assert_eq!(t.reviews("dba1", "pending").len(), 1);

    assert!(t.vote("dba2", "approve", &id, "").status.success());
    // Another constant is another request: not covered.
    let other = stderr(&t.psql("UPDATE public.orders SET price = price + 1 WHERE id = 2;\n"));
    assert!(other.contains("ERROR") && !other.contains(&id), "{other}");
    // The exact statement runs, once.
    let retry = t.psql(update);
    assert!(!stderr(&retry).contains("ERROR"), "{}", stderr(&retry));
    assert_eq!(t.price(1), "20.90");
    let third = stderr(&t.psql(update));
    assert!(third.contains("ERROR") && !third.contains(&id), "the grant ran once: {third}");
    assert_eq!(t.price(1), "20.90");

    // psycopg, with bound parameters: the values are part of the request.
    let sql = "UPDATE public.orders SET price = price + 1 WHERE id = %s";
    let held = t.psycopg(sql, Some("[1]"));
    assert_eq!(held["ok"], false, "{held}");
    assert_eq!(held["sqlstate"], "42501", "{held}");
    assert!(held["notices"][0].as_str().unwrap().contains("needs approval by dba"), "{held}");
    let pid = review_id_in(held["message"].as_str().unwrap());
    let review: Value = serde_json::from_str(&stdout(&t.cli("dba1", &["reviews", "show", &pid, "--json"]))).unwrap();
    assert_eq!(review["params"], serde_json::json!(["1"]), "the values are shown to the approver");
    assert!(t.vote("dba1", "approve", &pid, "").status.success());
    let other = t.psycopg(sql, Some("[2]"));
    assert_eq!(other["ok"], false, "another value is another request: {other}");
    let retry = t.psycopg(sql, Some("[1]"));
    assert_eq!(retry["ok"], true, "{retry}");
    assert_eq!(retry["rowcount"], 1);
    assert_eq!(t.price(1), "21.90");
    assert_eq!(t.psycopg(sql, Some("[1]"))["ok"], false, "once");
    assert_eq!(t.price(1), "21.90");

    // psycopg held and approved during the hold: the extended protocol waits at Execute.
    let t2 = Reviewed::start(&[("GATEHOUSE_REVIEWS_HOLD_SECONDS", "30")], None);
    std::thread::scope(|s| {
        let held = s.spawn(|| t2.psycopg("DELETE FROM public.orders WHERE id = %s", Some("[2]")));
        let id = t2.wait_pending("dba1", 1)[0]["id"].as_str().unwrap().to_string();
        assert!(t2.vote("dba1", "approve", &id, "").status.success());
        let done = held.join().unwrap();
        assert_eq!(done["ok"], true, "{done}");
        assert_eq!(done["rowcount"], 1, "{done}");
    });
    assert_eq!(t2.f.direct("SELECT count(*) FROM public.orders").trim(), "1");
    assert!(t.f.gw.cli_ok(&["audit", "verify"]).unwrap().starts_with("ok"));
}

#[test]
fn denial_and_expiry_end_the_hold_with_clear_errors_and_a_held_transaction_is_failed() {
    let t =
        Reviewed::start(&[("GATEHOUSE_REVIEWS_HOLD_SECONDS", "30"), ("GATEHOUSE_REVIEWS_EXPIRE_AFTER", "3s")], None);
    std::thread::scope(|s| {
        let started = Instant::now();
        let held = s.spawn(|| {
            t.psql("BEGIN;\nINSERT INTO public.orders (id) VALUES (3);\nDELETE FROM public.orders WHERE id = 1;\nCOMMIT;\n")
        });
        let id = t.wait_pending("dba1", 1)[0]["id"].as_str().unwrap().to_string();
        assert!(t.vote("dba1", "deny", &id, "not during the freeze").status.success());
        let out = held.join().unwrap();
        let err = stderr(&out);
        assert!(err.contains(&format!("review {id} was denied by dba1: not during the freeze")), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20), "the denial ended the hold");
        // The transaction it was in was failed upstream too: COMMIT committed nothing.
        assert_eq!(t.f.direct("SELECT count(*) FROM public.orders WHERE id = 1").trim(), "1");
        assert_eq!(t.f.direct("SELECT count(*) FROM public.orders WHERE id = 3").trim(), "0", "{err}");
        let denied = t.vote("dba2", "approve", &id, "");
        assert!(!denied.status.success() && stderr(&denied).contains("already denied"), "{}", stderr(&denied));
    });

    let started = Instant::now();
    let out = t.psql("DELETE FROM public.orders WHERE id = 2;\n");
    let err = stderr(&out);
    assert!(err.contains("expired before it was approved"), "{err}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(20), "ended by expiry: {waited:?}");
    let expired = t.reviews("dba1", "expired");
    assert_eq!(expired.len(), 1);
    let late = t.vote("dba1", "approve", expired[0]["id"].as_str().unwrap(), "");
    assert!(!late.status.success() && stderr(&late).contains("expired"), "{}", stderr(&late));
    assert_eq!(t.f.direct("SELECT count(*) FROM public.orders").trim(), "2");
    assert!(t.f.gw.cli_ok(&["audit", "verify"]).unwrap().starts_with("ok"));
}

#[test]
fn a_time_bound_group_grant_allows_then_stops_allowing_and_only_requestable_groups_can_be_asked_for() {
    let config = "[access.groups.oncall]\napprovers = \"dba\"\nmax = \"1h\"\n";
    let t = Reviewed::start(&[("GATEHOUSE_REVIEWS_HOLD_SECONDS", "1")], Some(config));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // One session stays open throughout: the grant applies to it and ends on time in it.
        let session = client(&t.f.url(t.token("app"))).await;
        let read = "SELECT value FROM public.secrets";
        let denied = session.simple_query(read).await.unwrap_err();
        assert_eq!(sqlstate(&denied), "42501");

        let refused = t.cli("app", &["access", "request", "--group", "admins", "--for", "1h", "--reason", "x"]);
        assert!(!refused.status.success() && stderr(&refused).contains("cannot be requested"), "{}", stderr(&refused));
        let too_long = t.cli("app", &["access", "request", "--group", "oncall", "--for", "2h", "--reason", "x"]);
        assert!(!too_long.status.success() && stderr(&too_long).contains("at most 1h"), "{}", stderr(&too_long));

        let asked = t.cli("app", &["access", "request", "--group", "oncall", "--for", "4s", "--reason", "incident 42"]);
        assert!(asked.status.success(), "{}", stderr(&asked));
        let id = stdout(&asked).trim().to_string();
        let review: Value = serde_json::from_str(&stdout(&t.cli("dba1", &["reviews", "show", &id, "--json"]))).unwrap();
        assert_eq!((review["kind"].as_str(), review["group"].as_str()), (Some("access"), Some("oncall")));
        assert_eq!(review["reason"], "incident 42");
        assert!(session.simple_query(read).await.is_err(), "not before approval");
        assert!(!t.vote("app", "approve", &id, "").status.success(), "not by the requester");

        let approved = Instant::now();
        assert!(t.vote("dba1", "approve", &id, "go").status.success());
        let rows = rows(&session.simple_query(read).await);
        assert_eq!(rows, vec![vec![Some("top secret".to_string())]], "in group oncall now, in the open session");
        // A new session sees the grant too.
        let out = t.psql("SELECT value FROM public.secrets;\n");
        assert!(stdout(&out).contains("top secret"), "{}", stderr(&out));

        tokio::time::sleep(Duration::from_secs(4).saturating_sub(approved.elapsed()) + Duration::from_millis(300))
            .await;
        let after = session.simple_query(read).await.unwrap_err();
        assert_eq!(sqlstate(&after), "42501", "the window ended, for the open session too");
    });
    assert!(t.f.gw.cli_ok(&["audit", "verify"]).unwrap().starts_with("ok"));
}
