//! The gateway's limits, each driven with stock clients and answered in the protocol's own
//! terms: connections per listener and per identity (53300), failed sign-ins per source and per
//! claimed name (28000 on the wire, 429 on the API), requests per second per identity (53400,
//! 429), and result bytes per statement (54000). Each refusal is counted in
//! `gatehouse_limited_total{limit}`, and nothing else breaks: other identities and addresses go
//! on, and so does the session whose statement was refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use pg::*;

/// `gatehouse_limited_total{limit="…"}` as served on `/metrics`.
fn limited(gw: &Gateway, limit: &str) -> u64 {
    let text = curl("GET", &format!("{}/metrics", gw.url()), None, None).body;
    let prefix = format!("gatehouse_limited_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// An identity `name` in group `apps`; returns its token.
fn add_app(f: &Fixture, name: &str) -> String {
    f.gw.cli_ok(&["identities", "add", name, "--groups", "apps"]).unwrap().trim().to_string()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn url_as(f: &Fixture, user: &str, token: &str) -> String {
    format!("host=127.0.0.1 port={} dbname=pg user={user} password={token} sslmode=disable", f.port)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn refused(result: Result<tokio_postgres::Client, tokio_postgres::Error>) -> (String, String) {
    let e = result.expect_err("the connection is refused");
    let db = e.as_db_error().unwrap_or_else(|| panic!("not a server error: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}

#[test]
fn connections_are_limited_per_listener_and_per_identity() {
    let f = Fixture::with_env(&[
        ("GATEHOUSE_POSTGRES_MAX_CONNECTIONS", "3"),
        ("GATEHOUSE_LIMITS_SESSIONS_PER_IDENTITY", "2"),
    ]);
    let bob = add_app(&f, "bob");
    let rt = rt();
    rt.block_on(async {
        let app = url_as(&f, "app", &f.token);
        let first = connect(&app).await.unwrap();
        let second = connect(&app).await.unwrap();
        // A third session of the same identity: PostgreSQL's "too many connections", naming it.
        let (code, message) = refused(connect(&app).await);
        assert_eq!(code, "53300", "{message}");
        assert!(message.contains("Service::\"app\"") && message.contains("sessions_per_identity"), "{message}");
        // Another identity still gets in, up to the listener's limit (once the refused
        // connection's place is given back: that happens as its task ends, just after the
        // caller read the refusal).
        let mut bobs = None;
        for _ in 0..50 {
            if let Ok(c) = connect(&url_as(&f, "bob", &bob)).await {
                bobs = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let bobs = bobs.expect("bob gets the listener's third place");
        let (code, message) = refused(connect(&url_as(&f, "bob", &bob)).await);
        assert_eq!(code, "53300", "{message}");
        assert!(message.contains("too many clients") && message.contains("max_connections"), "{message}");
        // The sessions already open are not disturbed.
        for c in [&first, &second, &bobs] {
            assert_eq!(rows(&c.simple_query("SELECT 'open'").await), vec![vec![Some("open".to_string())]]);
        }
        // A session that ends frees its place (the end reaches the gateway asynchronously).
        drop(first);
        let mut again = None;
        for _ in 0..50 {
            if let Ok(c) = connect(&app).await {
                again = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let again = again.expect("app may open a session again once one ended");
        assert!(again.simple_query("SELECT 1").await.is_ok());
    });
    // psql, a stock client, shows the listener's refusal.
    let out = f.psql("bob", &bob, "pg", "SELECT 1;");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("too many clients"), "{}", stderr(&out));
    assert!(limited(&f.gw, "listener_connections") >= 2);
    assert!(limited(&f.gw, "identity_sessions") >= 1);
    // The refused session is in the audit trail, with why.
    let sessions: serde_json::Value =
        serde_json::from_str(&f.gw.cli_ok(&["sessions", "list", "--identity", "app", "--json"]).unwrap()).unwrap();
    assert!(
        sessions
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["end_reason"].as_str().unwrap_or("").contains("too many connections")),
        "{sessions:#}"
    );
}

/// `curl` from a chosen loopback source address.
fn curl_from(source: &str, url: &str, token: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--interface", source, "-D", "-", "-H", &format!("Authorization: Bearer {token}"), url])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl failed: {}", stderr(&out));
    let text = stdout(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

#[test]
fn failed_sign_ins_lock_out_the_name_and_then_the_source() {
    let f = Fixture::with_env(&[
        ("GATEHOUSE_LIMITS_AUTH_FAILURES_PER_IDENTITY", "2"),
        ("GATEHOUSE_LIMITS_AUTH_FAILURES_PER_SOURCE", "5"),
        // Long enough that no lockout ends during the test.
        ("GATEHOUSE_LIMITS_AUTH_FAILURE_WINDOW", "1h"),
    ]);
    let bob = add_app(&f, "bob");
    let admin = f.gw.admin_token().to_string();
    let rt = rt();
    let sign_in = |user: &str, token: &str| rt.block_on(async { connect(&url_as(&f, user, token)).await.map(|_| ()) });
    let code = |r: Result<(), tokio_postgres::Error>| {
        let e = r.expect_err("refused");
        let db = e.as_db_error().unwrap_or_else(|| panic!("not a server error: {e}")).clone();
        (db.code().code().to_string(), db.message().to_string())
    };
    // Wrong passwords for "app": checked and refused, until the third failure locks the name.
    for _ in 0..3 {
        let (state, message) = code(sign_in("app", "ghs_wrong"));
        assert_eq!(state, "28P01", "{message}");
    }
    // Now even app's right token is not checked: the name is locked out, from any address.
    let (state, message) = code(sign_in("app", &f.token));
    assert_eq!(state, "28000", "{message}");
    assert!(message.contains("too many failed sign-ins for \"app\"; try again in"), "{message}");
    let out = f.app("SELECT 'in';");
    assert!(stderr(&out).contains("too many failed sign-ins"), "psql shows it: {}", stderr(&out));
    // Other names from the same address go on.
    sign_in("bob", &bob).unwrap();
    // Three more failures (six in all) lock the address itself out, whatever name it gives.
    for name in ["x1", "x2", "x3"] {
        let (state, message) = code(sign_in(name, "ghs_wrong"));
        assert_eq!(state, "28P01", "{message}");
    }
    let (state, message) = code(sign_in("bob", &bob));
    assert_eq!(state, "28000", "{message}");
    assert!(message.contains("too many failed sign-ins from 127.0.0.1"), "{message}");
    // The API answers the locked-out address with 429 and when to retry, even for a good token;
    // another address is not affected.
    let sessions = format!("{}/api/v1/sessions", f.gw.url());
    let (status, head, body) = curl_from("127.0.0.1", &sessions, &admin);
    assert_eq!(status, 429, "{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["code"], "rate_limited");
    let (status, _, body) = curl_from("127.0.0.2", &sessions, &admin);
    assert_eq!(status, 200, "{body}");
    // Each lockout is recorded in the audit trail when it begins; refused attempts are counted.
    let store = rusqlite::Connection::open(f.gw.data_dir().join("gatehouse.db")).unwrap();
    let mut query = store.prepare("SELECT payload FROM audit_events WHERE kind = 'auth.locked'").unwrap();
    let body: String =
        query.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap).collect::<Vec<_>>().join("\n");
    assert!(body.contains("auth_failures_identity") && body.contains("\"app\""), "{body}");
    assert!(body.contains("auth_failures_source") && body.contains("127.0.0.1"), "{body}");
    assert!(limited(&f.gw, "auth_failures_identity") >= 1);
    assert!(limited(&f.gw, "auth_failures_source") >= 2);
    // No credential reached the log.
    assert!(!f.gw.log().contains(&f.token));
}

#[test]
fn requests_are_limited_per_identity() {
    let f =
        Fixture::with_env(&[("GATEHOUSE_LIMITS_REQUESTS_PER_SECOND", "1"), ("GATEHOUSE_LIMITS_REQUEST_BURST", "3")]);
    let bob = add_app(&f, "bob");
    // Twelve statements at once: the burst runs, then about one a second; the rest are refused
    // with 53400 and the session goes on.
    let script: String = (1..=12).map(|n| format!("SELECT {n};\n")).collect();
    let started = Instant::now();
    let out = f.psql("app", &f.token, "pg", &format!("\\set VERBOSITY verbose\n{script}"));
    let elapsed = started.elapsed().as_secs();
    let answered: Vec<String> = stdout(&out).lines().map(String::from).collect();
    let refusals = stderr(&out).matches("53400").count();
    assert_eq!(answered.len() + refusals, 12, "{answered:?} {}", stderr(&out));
    assert!(answered.len() as u64 <= 3 + elapsed + 1, "{answered:?} in {elapsed}s");
    assert!(stderr(&out).contains("rate limit exceeded: Service::\"app\" may make 1 requests per second"));
    // Another identity has its own rate.
    assert_eq!(stdout(&f.psql("bob", &bob, "pg", "SELECT 'bob';")).trim(), "bob");
    assert!(limited(&f.gw, "requests") >= refusals as u64);
    // The exec API answers 429 with Retry-After once app is over its rate.
    let exec = format!("{}/api/v1/connections/pg/exec", f.gw.url());
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = curl("POST", &exec, Some(&f.token), Some(r#"{"sql": "SELECT 1"}"#));
        if r.status == 429 {
            assert_eq!(r.json()["error"]["code"], "rate_limited", "{}", r.body);
        }
        statuses.push(r.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // The refusals are in the audit trail as denied requests, with the limit that refused them.
    let events = session_events(&f.gw, "app");
    let limited_requests =
        events.iter().filter(|e| e["kind"] == "request" && e["data"]["refusal"] == "requests").count();
    assert!(limited_requests >= refusals, "{limited_requests} < {refusals}");
    // The rate refills: after a pause, app runs a statement again.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(stdout(&f.app("SELECT 'again';")).trim(), "again");
}

#[test]
fn a_result_over_the_limit_is_canceled_and_the_session_goes_on() {
    let f = Fixture::with_env(&[("GATEHOUSE_POSTGRES_MAX_RESULT_BYTES", "64KiB")]);
    let big = "SELECT repeat('x', 1000) FROM generate_series(1, 100000)";
    // Simple protocol, with psql: the statement fails with 54000, the next one runs.
    let out = f.app(&format!("\\set VERBOSITY verbose\n{big};\nSELECT 'still here';\n"));
    let err = stderr(&out);
    assert!(err.contains("54000") && err.contains("max_result_bytes"), "{err}");
    assert_eq!(stdout(&out), "still here\n", "no partial result is shown");
    // COPY … TO STDOUT is a result too.
    let out = f.app(&format!("\\set VERBOSITY verbose\nCOPY ({big}) TO STDOUT;\nSELECT 'after copy';\n"));
    assert!(stderr(&out).contains("54000"), "{}", stderr(&out));
    assert!(stdout(&out).ends_with("after copy\n"), "the session goes on after the copy");
    assert!(stdout(&out).len() < 1024 * 1024, "the copy stopped near the limit: {} bytes", stdout(&out).len());
    // Extended protocol, with tokio-postgres: the same, and small results pass.
    rt().block_on(async {
        let c = client(&f.url(&f.token)).await;
        let e = c.query("SELECT repeat($1, 1000) FROM generate_series(1, 100000)", &[&"y"]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "54000", "{e}");
        let small = c.query("SELECT repeat($1, 1000) FROM generate_series(1, 10)", &[&"z"]).await.unwrap();
        assert_eq!(small.len(), 10);
    });
    assert!(limited(&f.gw, "result_bytes") >= 3);
    // Recorded as the statement's error.
    let events = session_events(&f.gw, "app");
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "request.result" && e["data"]["error"].as_str().unwrap_or("").starts_with("54000")),
        "no 54000 result recorded"
    );
}
