//! The PostgreSQL data path with more stock clients and with what they do beyond plain queries:
//! psycopg 3 (text and binary results, server-side prepared statements, `executemany`, pipeline
//! mode), pgbench in the extended protocol, psql `COPY` and `\copy`, and the messages no stock
//! client sends (`FunctionCall`, an extended-protocol exchange without `Describe`, a replication
//! startup) written byte by byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg;

use std::process::Command;

use common::*;
use pg::*;

fn python_with_psycopg() -> String {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).args(["-c", "import psycopg"]).output().unwrap();
    assert!(
        probe.status.success(),
        "psycopg 3 is needed (the test command installs it: pip install 'psycopg[binary]'): {}",
        stderr(&probe)
    );
    python
}

#[test]
fn psycopg_results_prepared_statements_executemany_and_pipelines_match_a_direct_connection() {
    let f = Fixture::new();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/psycopg_checks.py");
    let gateway = format!("{} connect_timeout=10", f.url(&f.token));
    let direct = f.pg.url("postgres");
    let out = Command::new(python_with_psycopg()).arg(script).arg(&gateway).arg(&direct).output().unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("all psycopg checks passed"), "{}", stdout(&out));
    // The refused DELETE was decided at Parse and recorded; the executemany rows with their values.
    let events = session_events(&f.gw, "app");
    assert!(
        events
            .iter()
            .any(|e| e["data"]["request"] == "DELETE FROM secrets WHERE id = $1" && e["data"]["decision"] == "deny"),
        "the refused prepared DELETE is in the audit trail"
    );
    assert!(
        // psycopg sends these integers in binary (int2, declared at Parse): recorded as numbers.
        events.iter().any(|e| e["data"]["params"] == serde_json::json!(["149", "item 49", "49"])),
        "executions are recorded with their values"
    );
    let verify = f.gw.cli(&["audit", "verify"]).unwrap();
    assert!(verify.status.success(), "{}", stdout(&verify));
}

fn pgbench(f: &Fixture, args: &[&str], script: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new("pgbench");
    cmd.args(["-n", "-h", "127.0.0.1", "-p", &f.port.to_string(), "-U", "app"])
        .args(args)
        .env("PGPASSWORD", &f.token)
        .env("PGSSLMODE", "disable");
    let file = f.gw.data_dir().join("bench.sql");
    if let Some(script) = script {
        std::fs::write(&file, script).unwrap();
        cmd.arg("-f").arg(&file);
    }
    cmd.arg("pg").output().unwrap()
}

#[test]
fn pgbench_runs_in_the_extended_and_prepared_protocols_and_a_denied_script_stops() {
    let f = Fixture::new();
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", &f.pg.port().to_string(), "-U", f.pg.superuser()])
        .env("PGPASSWORD", f.pg.superuser_password())
        .arg("postgres")
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    let policies = format!(
        "{POLICIES}\n@id(\"bench-writes\")\npermit (principal in Group::\"apps\", action in [Action::\"sql.update\", Action::\"sql.insert\"], resource in Connection::\"pg\");"
    );
    f.policies(&policies);
    for mode in ["extended", "prepared"] {
        // The built-in read-only and read-write (TPC-B-like) scripts.
        for builtin in [["-S"], ["-N"]] {
            let out = pgbench(&f, &["-M", mode, "-c", "2", "-t", "40", builtin[0]], None);
            assert!(out.status.success(), "pgbench -M {mode} {}: {}\n{}", builtin[0], stdout(&out), stderr(&out));
            assert!(
                stdout(&out).contains("number of transactions actually processed: 80/80"),
                "pgbench -M {mode}: {}",
                stdout(&out)
            );
        }
    }
    // Each transaction was decided and recorded: 2 clients × 40 × (1 read + 4 statements of -N)
    // per mode, at least.
    let metrics = curl("GET", &format!("{}/metrics", f.gw.url()), None, None).body;
    let allowed: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("gatehouse_requests_total")
                && l.contains("protocol=\"postgres\"")
                && l.contains("decision=\"allow\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(allowed >= 800.0, "requests allowed: {allowed}\n{metrics}");
    // A script with a statement policy denies: pgbench reports the refusal and fails.
    let out = pgbench(&f, &["-M", "extended", "-t", "5"], Some("SELECT 1;\nDELETE FROM pgbench_history;\n"));
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("no-unbounded-deletes"), "{}", stderr(&out));
    assert_ne!(f.direct("SELECT count(*) FROM pgbench_history"), "0", "nothing was deleted");
}

#[test]
fn copy_in_both_directions_follows_policy() {
    let f = Fixture::new();
    // COPY … TO STDOUT returns exactly what a direct connection returns.
    for copy in [
        "COPY orders TO STDOUT",
        "COPY orders (id, item) TO STDOUT WITH (FORMAT csv, HEADER)",
        "COPY (SELECT id, price FROM orders ORDER BY id) TO STDOUT WITH (FORMAT binary)",
    ] {
        let through = f.app(&format!("{copy};\n"));
        assert!(through.status.success(), "{copy}: {}", stderr(&through));
        let direct =
            Command::new("psql").args(["-X", "-A", "-t", "-q", "-c", copy]).arg(f.pg.url("postgres")).output().unwrap();
        assert_eq!(through.stdout, direct.stdout, "{copy}");
        assert!(!through.stdout.is_empty(), "{copy}");
    }
    // COPY … FROM STDIN and \copy … from stdin, with enough rows to stream.
    let mut script = String::from("COPY orders (id, item) FROM STDIN;\n");
    for i in 1000..6000 {
        script.push_str(&format!("{i}\tcopied {i}\n"));
    }
    script
        .push_str("\\.\n\\copy orders (id, item) from stdin with (format csv)\n7000,\"from \\copy\"\n7001,two\n\\.\n");
    let out = f.app(&script);
    assert!(out.status.success() && stderr(&out).is_empty(), "{}", stderr(&out));
    assert_eq!(f.direct("SELECT count(*) FROM orders WHERE id >= 1000"), "5002");
    assert_eq!(f.direct("SELECT item FROM orders WHERE id = 7000"), "from \\copy");
    // A forbidden table, in both directions, and COPY to or from a file or program (sql.admin):
    // refused before the resource sees them, and the session goes on.
    let out = f.app(
        "COPY secrets TO STDOUT;\n\\copy secrets to stdout\nCOPY secrets FROM STDIN;\n2\tsneaked\n\\.\n\
         COPY orders FROM '/etc/hostname';\nCOPY orders TO PROGRAM 'cat';\nSELECT 'still here';\n",
    );
    let err = stderr(&out);
    assert_eq!(err.matches("no-secrets").count(), 3, "{err}");
    assert_eq!(err.matches("permission denied").count(), 5, "{err}");
    assert!(!stdout(&out).contains("top secret"), "{}", stdout(&out));
    assert!(stdout(&out).contains("still here"), "{}", stdout(&out));
    assert_eq!(f.direct("SELECT count(*) FROM secrets"), "1", "nothing was copied into secrets");
    // The copies were recorded with their row counts.
    let events = session_events(&f.gw, "app");
    assert!(events.iter().any(|e| e["data"]["command"] == "COPY 5000" && e["data"]["rows"] == 5000), "{events:?}");
    let verify = f.gw.cli(&["audit", "verify"]).unwrap();
    assert!(verify.status.success(), "{}", stdout(&verify));
}

#[test]
fn function_call_is_refused_and_the_session_goes_on() {
    let f = Fixture::new();
    let mut raw = Raw::login(f.port, "app", "pg", &f.token);
    let oid = f.direct("SELECT 'public.my_func'::regproc::oid");
    // FunctionCall: function oid, no argument formats, no arguments, text result.
    let mut body = oid.parse::<i32>().unwrap().to_be_bytes().to_vec();
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    raw.send(&frame(b'F', &body));
    let answer = raw.until_ready();
    assert_eq!(tags(&answer), "EZ");
    let errs = errors(&answer);
    assert_eq!(errs[0].0, "42501", "{errs:?}");
    assert!(errs[0].1.contains("FunctionCall"), "{errs:?}");
    raw.send(&frame(b'Q', &cstring("SELECT 41 + 1")));
    let answer = raw.until_ready();
    assert_eq!(data_rows(&answer), vec![vec![Some("42".to_string())]], "{:?}", errors(&answer));
}

#[test]
fn extended_protocol_without_describe_relays_only_what_the_caller_asked_for() {
    let f = Fixture::new();
    let mut raw = Raw::login(f.port, "app", "pg", &f.token);
    // Parse, Bind, Execute, Sync and no Describe: the gateway asks for the row shape itself,
    // and the caller sees exactly the answers to its own messages.
    let mut batch = parse("", "SELECT item, price FROM orders WHERE id = $1");
    batch.extend(bind("", "", &["1"]));
    batch.extend(execute(""));
    batch.extend(sync());
    raw.send(&batch);
    let answer = raw.until_ready();
    assert_eq!(tags(&answer), "12DCZ", "{:?}", errors(&answer));
    assert_eq!(data_rows(&answer), vec![vec![Some("lamp".to_string()), Some("19.90".to_string())]]);
    // The same with a named statement bound twice, and a Describe of the statement by the
    // caller: its answer is relayed once.
    let mut batch = parse("s1", "SELECT id FROM orders WHERE id <= $1 ORDER BY id");
    batch.extend(frame(b'D', &[b"S".to_vec(), cstring("s1")].concat()));
    batch.extend(bind("p1", "s1", &["1"]));
    batch.extend(execute("p1"));
    batch.extend(bind("", "s1", &["2"]));
    batch.extend(execute(""));
    batch.extend(sync());
    raw.send(&batch);
    let answer = raw.until_ready();
    assert_eq!(tags(&answer), "1tT2DC2DDCZ", "{:?}", errors(&answer));
    // A portal the gateway never saw bound (a statement prepared in SQL) is refused at
    // Execute; a Bind of a statement that does not exist gets the server's own error.
    raw.send(&frame(b'Q', &cstring("PREPARE q AS SELECT 1")));
    let prepared = raw.until_ready();
    let mut batch = bind("", "nope", &[]);
    batch.extend(execute(""));
    batch.extend(sync());
    raw.send(&batch);
    let answer = raw.until_ready();
    assert_eq!(tags(&answer), "EZ");
    assert_eq!(errors(&answer)[0].0, "26000", "{:?}", errors(&answer));
    if errors(&prepared).is_empty() {
        let mut batch = bind("", "q", &[]);
        batch.extend(execute(""));
        batch.extend(sync());
        raw.send(&batch);
        let answer = raw.until_ready();
        assert_eq!(tags(&answer), "2EZ");
        assert_eq!(errors(&answer)[0].0, "42501", "{:?}", errors(&answer));
    }
    // A pipelined batch with a denied statement: nothing after it runs, the statement before
    // it is rolled back with the implicit transaction, exactly as the server does for its own
    // errors, and the connection stays usable.
    let mut batch = Vec::new();
    for (id, sql) in [
        ("30", "INSERT INTO orders (id, item) VALUES ($1, 'before')"),
        ("1", "DELETE FROM secrets WHERE id = $1"),
        ("31", "INSERT INTO orders (id, item) VALUES ($1, 'after')"),
    ] {
        batch.extend(parse("", sql));
        batch.extend(bind("", "", &[id]));
        batch.extend(execute(""));
    }
    batch.extend(sync());
    raw.send(&batch);
    let answer = raw.until_ready();
    assert_eq!(tags(&answer), "12CEZ", "{:?}", errors(&answer));
    assert_eq!(errors(&answer)[0].0, "42501");
    assert_eq!(f.direct("SELECT count(*) FROM orders WHERE id IN (30, 31)"), "0");
    assert_eq!(f.direct("SELECT count(*) FROM secrets"), "1");
    raw.send(&frame(b'Q', &cstring("SELECT count(*) FROM orders")));
    assert_eq!(data_rows(&raw.until_ready()), vec![vec![Some("2".to_string())]]);
    // The results were recorded with their columns, including where the caller never asked.
    let events = last_session_events(&f.gw, "app");
    let columns: Vec<_> = events.iter().filter_map(|e| e["data"]["columns"].as_array()).collect();
    assert!(columns.iter().any(|c| **c == vec![serde_json::json!("item"), serde_json::json!("price")]), "{events:?}");
    assert!(columns.iter().any(|c| **c == vec![serde_json::json!("id")]), "{events:?}");
}

#[test]
fn a_statement_needing_review_passes_parse_is_decided_at_bind_and_held_at_execute() {
    let f = Fixture::with_env(&[("GATEHOUSE_REVIEWS_HOLD_SECONDS", "1")]);
    f.policies(&format!(
        "{POLICIES}\n@id(\"big-orders-need-review\")\n@approval(\"dba\")\nforbid (principal, action == Action::\"sql.update\", resource == Table::\"pg/public.orders\");"
    ));
    let mut raw = Raw::login(f.port, "app", "pg", &f.token);
    let mut batch = parse("upd", "UPDATE orders SET item = $1 WHERE id = 1");
    batch.extend(sync());
    raw.send(&batch);
    assert_eq!(tags(&raw.until_ready()), "1Z", "prepared: it is decided once its values are known");
    let mut batch = bind("", "upd", &["changed"]);
    batch.extend(execute(""));
    batch.extend(sync());
    raw.send(&batch);
    let answer = raw.until_ready();
    // Told at once that it is held; bound; then, unapproved when the hold ends, refused at Execute.
    assert_eq!(tags(&answer), "N2EZ");
    let (code, message) = &errors(&answer)[0];
    assert_eq!(code, "42501");
    assert!(message.contains("waiting for approval (review "), "{message}");
    assert_eq!(f.direct("SELECT item FROM orders WHERE id = 1"), "lamp");
    let events = last_session_events(&f.gw, "app");
    assert!(
        events
            .iter()
            .any(|e| e["data"]["decision"] == "review" && e["data"]["params"] == serde_json::json!(["changed"])),
        "the held Execute is recorded with its values: {events:?}"
    );
}

#[test]
fn a_replication_startup_is_refused() {
    let f = Fixture::new();
    for mode in ["database", "true"] {
        let out = Command::new("psql")
            .args(["-X", "-c", "IDENTIFY_SYSTEM"])
            .arg(format!("host=127.0.0.1 port={} dbname=pg user=app sslmode=disable replication={mode}", f.port))
            .env("PGPASSWORD", &f.token)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains("replication connections are not supported"), "{}", stderr(&out));
    }
    let out = f.app("SELECT 'fine';");
    assert!(stdout(&out).contains("fine"), "{}", stderr(&out));
}
