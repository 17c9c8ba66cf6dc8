//! Connections end to end: registration and update, extra credentials, reachability against a
//! real PostgreSQL, and the guarantee that a credential never comes back out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;
use gatehouse_testkit::Postgres;

const PASSWORD: &str = "pg-Sup3r-S3cret-Value-9731";
const NARROW: &str = "ro-Other-S3cret-Value-2468";

#[test]
fn credentials_are_write_only_everywhere() {
    let mut gw = gateway();
    let pg = Postgres::start().unwrap();
    let port = pg.port().to_string();
    let mut responses = String::new();
    let mut run = |args: &[&str], env: &[(&str, &str)]| {
        let out =
            gw.client().env("GATEHOUSE_TOKEN", gw.admin_token()).envs(env.iter().copied()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        responses.push_str(&stdout(&out));
        responses.push_str(&stderr(&out));
        stdout(&out)
    };
    run(
        &[
            "connections",
            "add",
            "pg-prod",
            "--type",
            "postgres",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--database",
            "postgres",
            "--user",
            "postgres",
            "--tls",
            "disable",
            "--password-env",
            "PGPW",
            "--tag",
            "env=prod",
            "--description",
            "orders database",
            "--mask",
            "email,credit_card",
            "--mask-column",
            "*.*.ssn",
        ],
        &[("PGPW", PASSWORD)],
    );
    // Password from standard input for the narrower credential.
    let mut child = gw
        .client()
        .env("GATEHOUSE_TOKEN", gw.admin_token())
        .args([
            "connections",
            "credential",
            "add",
            "pg-prod",
            "readonly",
            "--groups",
            "analysts",
            "--user",
            "reader",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{NARROW}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let shown = run(&["connections", "show", "pg-prod", "--json"], &[]);
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["credential"], serde_json::json!({"kind": "password"}));
    assert_eq!(v["credentials"][0]["name"], "readonly");
    assert_eq!(v["credentials"][0]["groups"], serde_json::json!(["analysts"]));
    assert_eq!(v["tags"]["env"], "prod");
    run(&["connections", "list"], &[]);
    run(&["connections", "list", "--json"], &[]);
    run(&["connections", "update", "pg-prod", "--description", "orders (primary)"], &[]);
    let v: serde_json::Value = serde_json::from_str(&run(&["connections", "show", "pg-prod", "--json"], &[])).unwrap();
    assert_eq!(v["description"], "orders (primary)");
    assert_eq!(v["credential"]["kind"], "password", "an update without a secret flag keeps the credential");

    // The gateway reaches the real PostgreSQL the test kit started.
    let test = run(&["connections", "test", "pg-prod"], &[]);
    assert!(test.starts_with(&format!("reachable: 127.0.0.1:{port}")), "{test}");

    // Every session timeline, over the API.
    let sessions: serde_json::Value = serde_json::from_str(&run(&["sessions", "list", "--json"], &[])).unwrap();
    for s in sessions.as_array().unwrap() {
        run(&["sessions", "show", s["id"].as_str().unwrap(), "--json"], &[]);
    }
    let raw = curl("GET", &format!("{}/api/v1/connections", gw.url()), Some(gw.admin_token()), None);
    responses.push_str(&raw.body);

    for secret in [PASSWORD, NARROW] {
        assert!(!responses.contains(secret), "a credential came back in an API response");
        assert!(!gw.log().contains(secret), "a credential reached the log");
    }
    // Nothing in the data directory holds it in clear, while running (WAL, audit journal) or
    // after a drain.
    fn scan(dir: &std::path::Path) -> usize {
        let mut files = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files += scan(&path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            for secret in [PASSWORD, NARROW] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "credential in clear in {path:?}"
                );
            }
            files += 1;
        }
        files
    }
    let journal = gw.data_dir().join(gatehouse_audit::JOURNAL_DIR);
    assert!(scan(&journal) > 0, "the audit journal was scanned while the gateway runs");
    scan(&gw.data_dir());
    gw.terminate().unwrap();
    scan(&gw.data_dir());
}

#[test]
fn unreachable_connection_and_bad_input_are_reported() {
    let gw = gateway();
    let closed = gatehouse_testkit::common::net::pick_free_port().unwrap().to_string();
    gw.cli_ok(&["connections", "add", "dead", "--type", "redis", "--host", "127.0.0.1", "--port", &closed]).unwrap();
    let out = gw.cli(&["connections", "test", "dead"]).unwrap();
    assert!(!out.status.success());
    assert!(stdout(&out).starts_with("unreachable:"), "{}", stdout(&out));

    for (args, needle) in [
        (vec!["connections", "add", "x", "--type", "oracle", "--host", "h"], "type"),
        (vec!["connections", "add", "x", "--type", "postgres"], "--host"),
        (vec!["connections", "add", "x", "--type", "http", "--url", "ftp://h"], "http"),
        (vec!["connections", "add", "x", "--type", "http", "--url", "https://user:pw@h"], "not in the URL"),
        (vec!["connections", "add", "x", "--type", "postgres", "--host", "h", "--tls", "maybe"], "tls"),
        (vec!["connections", "add", "x", "--type", "postgres", "--host", "h", "--mask", "emails"], "detector"),
        (
            vec!["connections", "add", "x", "--type", "postgres", "--host", "h", "--mask-column", "users.ssn"],
            "schema.table.column",
        ),
        (vec!["connections", "add", "x", "--type", "postgres", "--host", "h", "--mask", "custom:order"], "no pattern"),
        (
            vec!["connections", "add", "x", "--type", "postgres", "--host", "h", "--mask", "custom:order=("],
            "custom:order",
        ),
        (
            vec!["connections", "add", "x", "--type", "postgres", "--host", "h", "--mask-column", "public.us*rs.ssn"],
            "column",
        ),
        (vec!["connections", "add", "x", "--type", "redis", "--host", "h", "--mask-column", "a.b.c"], "no columns"),
        (vec!["connections", "add", "dead", "--type", "redis", "--host", "h"], "already exists"),
        (vec!["connections", "update", "dead", "--type", "postgres"], "cannot change"),
        (vec!["connections", "show", "missing"], "not found"),
    ] {
        let out = gw.cli(&args).unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    // Valid masking settings are stored and shown as given.
    gw.cli_ok(&[
        "connections",
        "add",
        "masked",
        "--type",
        "postgres",
        "--host",
        "h",
        "--mask",
        "email,credit_card",
        "--mask-column",
        "public.users.*",
        "--mask-column",
        "*.*.ssn",
    ])
    .unwrap();
    let shown: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["connections", "show", "masked", "--json"]).unwrap()).unwrap();
    assert_eq!(shown["mask"], serde_json::json!(["email", "credit_card"]));
    assert_eq!(shown["mask_columns"], serde_json::json!(["public.users.*", "*.*.ssn"]));
    gw.cli_ok(&["connections", "add", "api", "--type", "http", "--url", "https://api.example.com/v1"]).unwrap();
    gw.cli_ok(&["connections", "rm", "api"]).unwrap();
    assert!(!gw.cli(&["connections", "show", "api"]).unwrap().status.success());
}
