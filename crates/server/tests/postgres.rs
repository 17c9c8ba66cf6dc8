//! The PostgreSQL data path end to end: real PostgreSQL behind the built gateway, driven by the
//! stock `psql` client and by tokio-postgres (simple query protocol).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;
use gatehouse_testkit::Postgres;
use pg::*;

#[test]
fn psql_results_match_a_direct_connection() {
    let f = Fixture::new();
    let query = "SELECT id, item, price, shipped, tags, meta, item IS NULL FROM orders ORDER BY id;
                 SELECT 1::int2, 2::int8, 1.5::float8, 'x'::bytea, now() IS NOT NULL, NULL::text;";
    let through = f.app(query);
    assert!(through.status.success(), "{}", stderr(&through));
    assert_eq!(stdout(&through), f.direct(query) + "\n", "the gateway changes nothing in allowed results");
    // Server errors and notices pass through as the server sent them.
    let out = f.app("SELECT 1/0;\nDROP TABLE IF EXISTS scratch;\nSELECT 'still here';");
    let err = stderr(&out);
    assert!(err.contains("division by zero"), "{err}");
    assert!(err.contains("NOTICE:  table \"scratch\" does not exist, skipping"), "notices pass through: {err}");
    assert!(stdout(&out).contains("still here"), "the session goes on after a server error");
}

#[test]
fn denied_statements_error_and_the_session_goes_on() {
    let f = Fixture::new();
    let out = f.app("SELECT * FROM secrets;\nSELECT count(*) FROM orders;");
    let err = stderr(&out);
    assert!(err.contains("permission denied") && err.contains("no-secrets"), "{err}");
    assert_eq!(stdout(&out).trim(), "2", "the next statement runs");

    // A batch with one denied statement runs nothing.
    let out = f.app_batch("INSERT INTO orders VALUES (3, 'chair'); DELETE FROM secrets;");
    assert!(stderr(&out).contains("none of them ran"), "{}", stderr(&out));
    assert_eq!(f.direct("SELECT count(*) FROM orders"), "2");
    assert_eq!(f.direct("SELECT count(*) FROM secrets"), "1");

    // Inside a transaction, a denied statement fails the whole transaction, upstream too.
    let out = f.app("BEGIN;\nINSERT INTO orders VALUES (4, 'desk');\nSELECT * FROM secrets;\nCOMMIT;");
    assert!(stderr(&out).contains("permission denied"), "{}", stderr(&out));
    assert_eq!(f.direct("SELECT count(*) FROM orders WHERE id = 4"), "0", "nothing of the transaction was committed");

    // Context reaches policy: the WHERE clause and the caller's address.
    let out = f.app("DELETE FROM orders;");
    assert!(stderr(&out).contains("no-unbounded-deletes"), "{}", stderr(&out));
    assert_eq!(f.direct("SELECT count(*) FROM orders"), "2");
    let out = f.app("DELETE FROM orders WHERE id = 2;");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(f.direct("SELECT count(*) FROM orders"), "1");

    // Allowed writes go through.
    let out = f.app("INSERT INTO orders VALUES (5, 'shelf');");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(f.direct("SELECT item FROM orders WHERE id = 5"), "shelf");
}

#[test]
fn admin_statements_are_refused_under_a_select_only_policy() {
    let f = Fixture::new();
    for (stmt, why) in [
        ("SET search_path = secrets_schema", "search_path"),
        ("SET ROLE postgres", "role"),
        ("DO $$ BEGIN PERFORM 1; END $$", "DO"),
        ("SELECT set_config('role', 'postgres', false)", "set_config"),
        ("SELECT query_to_xml('select * from secrets', true, true, '')", "query_to_xml"),
        ("SELECT public.my_func()", "my_func"),
        ("SELECT my_func()", "my_func"),
    ] {
        let out = f.app(&format!("\\set VERBOSITY verbose\n{stmt};"));
        let err = stderr(&out);
        assert!(err.contains("ERROR:  42501: permission denied"), "{stmt}: {err}");
        assert!(err.contains(why), "{stmt}: the refusal says why: {err}");
    }
    let rows =
        f.direct("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%query_to_xml%' AND pid <> pg_backend_pid()");
    assert_eq!(rows, "0", "refused statements never reached the server");
    // Transaction control and harmless settings need no permit beyond connect.
    let out = f.app("BEGIN; SET statement_timeout = '5s'; SHOW statement_timeout; COMMIT;");
    assert!(out.status.success() && stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn refusals_at_connect_are_protocol_native_and_audited() {
    let f = Fixture::new();
    let out = f.psql("app", "ghs_wrong", "pg", "SELECT 1;");
    assert!(stderr(&out).contains("authentication failed"), "{}", stderr(&out));
    let out = f.psql("app", &f.token, "nosuch", "SELECT 1;");
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    let out = f.psql("someone-else", &f.token, "pg", "SELECT 1;");
    assert!(stderr(&out).contains("does not match"), "{}", stderr(&out));
    let outsider = f.gw.cli_ok(&["identities", "add", "outsider", "--groups", "nobody"]).unwrap();
    let out = f.psql("outsider", outsider.trim(), "pg", "SELECT 1;");
    assert!(stderr(&out).contains("permission denied to connect"), "{}", stderr(&out));
    // The SQLSTATE of each refusal, as a driver sees it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (user, token, db, code) in [
        ("app", "ghs_wrong", "pg", "28P01"),
        ("someone-else", f.token.as_str(), "pg", "28P01"),
        ("app", f.token.as_str(), "nosuch", "3D000"),
        ("outsider", outsider.trim(), "pg", "42501"),
    ] {
        let url = format!("host=127.0.0.1 port={} dbname={db} user={user} password={token} sslmode=disable", f.port);
        let e = rt.block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls)).err().expect("refused");
        assert_eq!(sqlstate(&e), code, "{user}@{db}: {e}");
    }
    let sessions: serde_json::Value =
        serde_json::from_str(&f.gw.cli_ok(&["sessions", "list", "--connection", "pg", "--json"]).unwrap()).unwrap();
    let refused = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["end_reason"].as_str().unwrap_or("").starts_with("refused"))
        .count();
    assert!(refused >= 2, "{sessions}");
}

#[test]
fn tokio_postgres_sessions_follow_policy_kill_and_rotation() {
    let f = Fixture::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client(&f.url(&f.token)).await;
        assert_eq!(
            rows(&c.simple_query("SELECT item FROM orders WHERE id = 1").await),
            vec![vec![Some("lamp".to_string())]]
        );
        // A policy change applies to the next statement of an open session.
        f.policies(&POLICIES.replace(
            "permit (principal in Group::\"apps\", action == Action::\"sql.select\"",
            "permit (principal in Group::\"nobody\", action == Action::\"sql.select\"",
        ));
        let e = c.simple_query("SELECT item FROM orders WHERE id = 1").await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501");
        f.policies(POLICIES);
        assert_eq!(rows(&c.simple_query("SELECT 1").await).len(), 1);

        // Cancel of a long statement.
        let cancel = c.cancel_token();
        let sleeper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cancel.cancel_query(tokio_postgres::NoTls).await
        });
        let e = c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
        assert_eq!(sqlstate(&e), "57014", "{e}");
        sleeper.await.unwrap().unwrap();
        assert_eq!(rows(&c.simple_query("SELECT 2").await).len(), 1, "the session survives a cancel");

        // Kill ends the session with a clear error.
        let sessions: serde_json::Value =
            serde_json::from_str(&f.gw.cli_ok(&["sessions", "list", "--identity", "app", "--json"]).unwrap()).unwrap();
        let live = sessions.as_array().unwrap().iter().find(|s| s["live"] == true).unwrap();
        f.gw.cli_ok(&["sessions", "kill", live["id"].as_str().unwrap()]).unwrap();
        assert!(ends(&c).await, "the killed session ended");

        // Rotation ends the identity's sessions.
        let c2 = client(&f.url(&f.token)).await;
        assert_eq!(rows(&c2.simple_query("SELECT 1").await).len(), 1);
        let new_token = f.gw.cli_ok(&["identities", "rotate", "app"]).unwrap().trim().to_string();
        assert!(ends(&c2).await, "the rotated token's session ended");

        // Removal ends the identity's sessions too.
        let c3 = client(&f.url(&new_token)).await;
        assert_eq!(rows(&c3.simple_query("SELECT 1").await).len(), 1);
        f.gw.cli_ok(&["identities", "rm", "app"]).unwrap();
        assert!(ends(&c3).await, "the removed identity's session ended");
    });
    let list: serde_json::Value =
        serde_json::from_str(&f.gw.cli_ok(&["sessions", "list", "--identity", "app", "--json"]).unwrap()).unwrap();
    let reasons: Vec<&str> = list.as_array().unwrap().iter().filter_map(|s| s["end_reason"].as_str()).collect();
    assert!(reasons.contains(&"the identity's token was rotated"), "{reasons:?}");
    assert!(reasons.contains(&"the identity was removed"), "{reasons:?}");
    let first = list.as_array().unwrap().last().unwrap();
    assert_eq!(first["protocol"], "postgres");
    assert_eq!(first["end_reason"].as_str().unwrap(), format!("terminated by Service::\"admin\""));
    let show = f.gw.cli_ok(&["sessions", "show", first["id"].as_str().unwrap()]).unwrap();
    assert!(show.contains("SELECT item FROM orders WHERE id = 1 -> allow [apps-read]"), "{show}");
    assert!(show.contains("-> deny"), "{show}");
    let detail: serde_json::Value =
        serde_json::from_str(&f.gw.cli_ok(&["sessions", "show", first["id"].as_str().unwrap(), "--json"]).unwrap())
            .unwrap();
    let results: Vec<&serde_json::Value> =
        detail["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "request.result").collect();
    assert!(results.iter().any(|r| r["data"]["rows"] == 1 && r["data"]["command"] == "SELECT 1"), "{detail}");
    assert!(results.iter().any(|r| r["data"]["error"].as_str().unwrap_or("").starts_with("57014")), "{detail}");
}

#[test]
fn startup_options_are_filtered_and_idle_sessions_end() {
    let f = Fixture::with_env(&[("GATEHOUSE_POSTGRES_IDLE_TIMEOUT", "1s")]);
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "SELECT current_setting('search_path'), current_user"])
        .arg(format!(
            "host=127.0.0.1 port={} dbname=pg user=app sslmode=disable options='-csearch_path=evil -crole=nobody'",
            f.port
        ))
        .env("PGPASSWORD", &f.token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("\"$user\", public|{}", f.pg.superuser()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client(&f.url(&f.token)).await;
        assert_eq!(rows(&c.simple_query("SELECT 1").await).len(), 1);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(c.simple_query("SELECT 1").await.is_err(), "the idle session was ended");
    });
    // A caller that never authenticates is cut at the deadline.
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(format!("127.0.0.1:{}", f.port)).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    let _ = silent.read_to_end(&mut buf);
    assert!(started.elapsed() < Duration::from_secs(15), "closed by the authentication deadline");
}

#[test]
fn bad_input_closes_only_its_own_connection() {
    let f = Fixture::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let healthy = rt.block_on(client(&f.url(&f.token)));
    let addr = format!("127.0.0.1:{}", f.port);
    let expect_closed = |mut s: TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf
    };
    // Garbage bytes.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answer = expect_closed(s);
    assert!(answer.is_empty() || answer[0] == b'E', "a protocol-native error or nothing: {answer:?}");
    // A 1 GiB length prefix, as a startup packet and as a message of an authenticated session,
    // is refused without being read.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&[0x40, 0, 0, 0, 0, 3, 0, 0]).unwrap();
    let answer = expect_closed(s);
    assert!(answer.is_empty() || answer[0] == b'E', "{answer:?}");
    let mut s = Raw::login(f.port, "app", "pg", &f.token).stream;
    s.write_all(&[b'Q', 0x40, 0, 0, 0]).unwrap();
    let answer = expect_closed(s);
    assert_eq!(answer.first(), Some(&b'E'), "a protocol-native error: {answer:?}");
    assert!(String::from_utf8_lossy(&answer).contains("too large"), "{}", String::from_utf8_lossy(&answer));
    // A half-sent message and a client that never authenticates.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&[0, 0, 0, 100, 0, 3, 0, 0]).unwrap();
    let half = s;
    let silent = TcpStream::connect(&addr).unwrap();
    // Everyone else is unaffected.
    let r = rt.block_on(healthy.simple_query("SELECT count(*) FROM orders"));
    assert_eq!(rows(&r), vec![vec![Some("2".to_string())]]);
    drop(half);
    drop(silent);
    let out = f.app("SELECT 1;");
    assert!(out.status.success(), "{}", stderr(&out));
    let verify = f.gw.cli(&["audit", "verify"]).unwrap();
    assert!(verify.status.success(), "{}", stdout(&verify));
}

#[test]
fn losing_the_upstream_gives_that_caller_a_clean_error() {
    let f = Fixture::new();
    // A second resource, whose session must not notice the first one dying.
    let other = Postgres::start().unwrap();
    add_connection(&f.gw, "other", &other);
    f.policies(&format!(
        "{POLICIES}\n@id(\"apps-other\")\npermit (principal in Group::\"apps\", action in [Action::\"connect\", Action::\"sql.select\"], resource in Connection::\"other\");"
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client(&f.url(&f.token)).await;
        let bystander = client(&f.url(&f.token).replace("dbname=pg", "dbname=other")).await;
        assert_eq!(rows(&c.simple_query("SELECT 1").await).len(), 1);
        f.pg.kill_postmaster().unwrap();
        let e = c.simple_query("SELECT 1").await.unwrap_err();
        assert!(!e.to_string().is_empty());
        assert_eq!(
            rows(&bystander.simple_query("SELECT 7").await),
            vec![vec![Some("7".to_string())]],
            "other sessions go on"
        );
        f.pg.restart().unwrap();
        let c2 = client(&f.url(&f.token)).await;
        assert_eq!(rows(&c2.simple_query("SELECT 1").await).len(), 1, "new sessions work once the resource is back");
    });
    let (ok, line) = {
        let out = f.gw.cli(&["audit", "verify"]).unwrap();
        (out.status.success(), stdout(&out))
    };
    assert!(ok, "{line}");
}

#[test]
fn tls_with_the_generated_certificate_and_a_big_row() {
    let f = Fixture::new();
    let ca = f.gw.data_dir().join("tls").join("ca.crt");
    assert!(ca.exists(), "the listener generated its certificate");
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "SELECT length(repeat('x', 50*1024*1024)), current_setting('application_name')"])
        .arg(format!(
            "host=localhost port={} dbname=pg user=app sslmode=verify-full sslrootcert={}",
            f.port,
            ca.display()
        ))
        .env("PGPASSWORD", &f.token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("52428800|gatehouse:Service::app"), "{text}");
    let big = f.app("SELECT repeat('y', 50*1024*1024);");
    assert!(big.status.success(), "{}", stderr(&big));
    assert_eq!(stdout(&big).trim().len(), 50 * 1024 * 1024, "a 50 MB value passes whole");
}

#[test]
fn sigterm_ends_open_sessions_after_the_grace_period() {
    let mut f = Fixture::with_env(&[("GATEHOUSE_SERVER_SHUTDOWN_GRACE", "1s")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = rt.block_on(client(&f.url(&f.token)));
    assert_eq!(rows(&rt.block_on(c.simple_query("SELECT 1"))).len(), 1);
    assert_eq!(f.gw.terminate().unwrap(), Some(0), "a drained gateway exits 0");
    assert!(rt.block_on(c.simple_query("SELECT 1")).is_err());
    assert!(f.gw.log().contains("ending the remaining sessions"), "{}", f.gw.log());
    let out = f.gw.client().args(["audit", "verify", "--data-dir"]).arg(f.gw.data_dir()).output().unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    let conn = rusqlite::Connection::open(f.gw.data_dir().join("gatehouse.db")).unwrap();
    let reason: String = conn
        .query_row("SELECT end_reason FROM sessions WHERE protocol = 'postgres' AND identity = 'app' ORDER BY started_at DESC LIMIT 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(reason, "the gateway is shutting down");
}

#[test]
fn callers_in_a_mapped_group_reach_the_resource_with_the_narrower_credential() {
    let f = Fixture::new();
    f.pg.create_role("reader", "reader-Pw-4711", gatehouse_testkit::PgAuth::ScramSha256).unwrap();
    f.direct("GRANT SELECT ON public.orders TO reader");
    let out =
        f.gw.client()
            .env("GATEHOUSE_TOKEN", f.gw.admin_token())
            .env("READER_PW", "reader-Pw-4711")
            .args(["connections", "credential", "add", "pg", "readonly", "--groups", "analysts", "--user", "reader"])
            .args(["--password-env", "READER_PW"])
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let analyst = f.gw.cli_ok(&["identities", "add", "ana", "--groups", "apps,analysts"]).unwrap();
    let out = f.psql("ana", analyst.trim(), "pg", "SELECT current_user;\nSELECT count(*) FROM orders;");
    assert_eq!(stdout(&out), "reader\n2\n", "{}", stderr(&out));
    // Policy would allow this insert; the resource's own grants refuse the narrower role.
    let out = f.psql("ana", analyst.trim(), "pg", "INSERT INTO orders VALUES (9, 'x');");
    assert!(stderr(&out).contains("permission denied for table orders"), "{}", stderr(&out));
    // Everyone else keeps the connection's own credential.
    let out = f.app("SELECT current_user;");
    assert_eq!(stdout(&out).trim(), f.pg.superuser());
}

#[test]
fn extended_protocol_prepared_statements_follow_policy() {
    let f = Fixture::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client(&f.url(&f.token)).await;
        // Parameters, typed results, no separate Describe needed by the caller.
        let row = c.query_one("SELECT item, price::text, id FROM orders WHERE id = $1", &[&1i32]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "lamp");
        assert_eq!(row.get::<_, String>(1), "19.90");
        assert_eq!(row.get::<_, i32>(2), 1);
        let nulls = c.query_one("SELECT item FROM orders WHERE id = $1", &[&2i32]).await.unwrap();
        assert_eq!(nulls.get::<_, Option<String>>(0), None);

        // A prepared DELETE is caught like a simple one, at Parse.
        let e = c.prepare("DELETE FROM secrets WHERE id = $1").await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{e}");
        assert!(e.to_string().contains("no-secrets") || e.as_db_error().unwrap().message().contains("no-secrets"));
        assert_eq!(
            c.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get::<_, i64>(0),
            2,
            "the session goes on"
        );

        // Policy changed between Parse and Execute is checked again at Execute.
        let stmt = c.prepare("SELECT item FROM orders WHERE id = $1").await.unwrap();
        f.policies(&POLICIES.replace(
            "permit (principal in Group::\"apps\", action == Action::\"sql.select\"",
            "permit (principal in Group::\"nobody\", action == Action::\"sql.select\"",
        ));
        let e = c.query(&stmt, &[&1i32]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{e}");
        f.policies(POLICIES);
        assert_eq!(c.query(&stmt, &[&1i32]).await.unwrap().len(), 1);

        // Pipelined statements: the refused one errors, the others still run.
        let (a, b, d) = tokio::join!(
            c.query("SELECT 1::int4", &[]),
            c.query("SELECT value FROM secrets", &[]),
            c.query("SELECT 3::int4", &[]),
        );
        assert_eq!(a.unwrap()[0].get::<_, i32>(0), 1);
        assert_eq!(sqlstate(&b.unwrap_err()), "42501");
        assert_eq!(d.unwrap()[0].get::<_, i32>(0), 3);
    });
    // Inside a transaction, a refused prepared statement fails the transaction upstream too.
    rt.block_on(async {
        let mut c = client(&f.url(&f.token)).await;
        let tx = c.transaction().await.unwrap();
        tx.execute("INSERT INTO orders VALUES ($1, $2)", &[&7i32, &"vase"]).await.unwrap();
        assert_eq!(sqlstate(&tx.query("SELECT * FROM secrets", &[]).await.unwrap_err()), "42501");
        // The resource answers COMMIT of a failed transaction with ROLLBACK.
        let _ = tx.commit().await;
    });
    assert_eq!(f.direct("SELECT count(*) FROM orders WHERE id = 7"), "0", "nothing of the transaction was committed");
    // Executions are recorded with their parameters.
    let list: serde_json::Value =
        serde_json::from_str(&f.gw.cli_ok(&["sessions", "list", "--identity", "app", "--json"]).unwrap()).unwrap();
    let id = list.as_array().unwrap().last().unwrap()["id"].as_str().unwrap().to_string();
    let detail: serde_json::Value =
        serde_json::from_str(&f.gw.cli_ok(&["sessions", "show", &id, "--json"]).unwrap()).unwrap();
    let found = detail["events"].as_array().unwrap().iter().any(|e| {
        e["data"]["request"] == "SELECT item, price::text, id FROM orders WHERE id = $1"
            // Sent in binary; read by the type the server described for the parameter.
            && e["data"]["params"] == serde_json::json!(["1"])
    });
    assert!(found, "{detail}");
    let verify = f.gw.cli(&["audit", "verify"]).unwrap();
    assert!(verify.status.success(), "{}", stdout(&verify));
}

#[test]
fn an_oidc_jwt_is_a_password_and_its_expiry_ends_the_session() {
    let idp = gatehouse_testkit::OidcProvider::start().unwrap();
    let f =
        Fixture::with_env(&[("GATEHOUSE_OIDC_ISSUER", idp.issuer()), ("GATEHOUSE_OIDC_AUDIENCE", "gatehouse-test")]);
    let claims = serde_json::json!({"aud": "gatehouse-test", "email": "alice@example.com", "groups": ["apps"]});
    let jwt = idp.token_expiring_in(claims, 3).unwrap();
    let out = f.psql("alice@example.com", &jwt, "pg", "SELECT item FROM orders WHERE id = 1;");
    assert_eq!(stdout(&out).trim(), "lamp", "{}", stderr(&out));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url =
            format!("host=127.0.0.1 port={} dbname=pg user=alice@example.com password={jwt} sslmode=disable", f.port);
        let c = client(&url).await;
        assert_eq!(rows(&c.simple_query("SELECT 1").await).len(), 1);
        tokio::time::sleep(Duration::from_millis(3000)).await;
        assert!(ends(&c).await, "the session ended with the token");
    });
    let list: serde_json::Value =
        serde_json::from_str(&f.gw.cli_ok(&["sessions", "list", "--identity", "alice@example.com", "--json"]).unwrap())
            .unwrap();
    assert_eq!(list[0]["identity_kind"], "user");
    assert_eq!(list[0]["end_reason"], "the caller's credential expired");
}

#[test]
fn decisions_follow_the_statement_text_when_a_policy_reads_it() {
    let f = Fixture::new();
    // A policy that reads the statement: decisions in one session differ by a constant.
    f.policies(&format!(
        "{POLICIES}\n@id(\"not-order-two\")\nforbid (principal, action, resource) when {{ context has statement && context.statement like \"*id = 2*\" }};"
    ));
    let out = f.app(
        "SELECT item FROM orders WHERE id = 1;\nSELECT item FROM orders WHERE id = 2;\nSELECT item FROM orders WHERE id = 1;\n",
    );
    assert_eq!(stdout(&out), "lamp\nlamp\n", "{}", stderr(&out));
    assert_eq!(stderr(&out).matches("not-order-two").count(), 1, "{}", stderr(&out));
    // The same with prepared statements: the text has a parameter, not the constant.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client(&f.url(&f.token)).await;
        for id in [1i32, 2, 1] {
            let rows = c.query("SELECT item FROM orders WHERE id = $1", &[&id]).await.unwrap();
            assert_eq!(rows.len(), 1);
        }
        let e = c.simple_query("SELECT item FROM orders WHERE id = 2").await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501");
    });
}
