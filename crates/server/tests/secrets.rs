//! Secrets stay secret: after a run that uses every kind of credential the gateway handles (the
//! bootstrap token, service tokens before and after rotation, a resource password, a credential
//! for a group, an OIDC JWT), the gateway's log, every file of its store and the answers its API
//! and CLI gave are searched for each of them. Any hit fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg;

use common::*;
use gatehouse_testkit::OidcProvider;
use pg::*;

#[test]
fn no_credential_or_token_reaches_logs_the_store_or_api_answers() {
    let oidc = OidcProvider::start().unwrap();
    let f = Fixture::with_env(&[
        ("GATEHOUSE_OIDC_ISSUER", oidc.issuer()),
        ("GATEHOUSE_OIDC_AUDIENCE", "gatehouse"),
        ("GATEHOUSE_LOG_LEVEL", "debug"),
    ]);
    let mut said: Vec<String> = Vec::new();

    // A second credential for a group, with its own password.
    let group_password = "gr0up-Secret-pa55word-7731";
    keep(
        &mut said,
        f.gw.client()
            .env("GATEHOUSE_TOKEN", f.gw.admin_token())
            .env("GROUP_PW", group_password)
            .args(["connections", "credential", "add", "pg", "readers", "--groups", "readers", "--user", "nobody"])
            .args(["--password-env", "GROUP_PW"])
            .output()
            .unwrap(),
    );
    // A token used, then rotated away.
    let old = f.gw.cli_ok(&["identities", "add", "rotating", "--groups", "apps"]).unwrap().trim().to_string();
    keep(&mut said, f.psql("rotating", &old, "pg", "SELECT 1;"));
    let new = f.gw.cli_ok(&["identities", "rotate", "rotating"]).unwrap().trim().to_string();
    keep(&mut said, f.psql("rotating", &new, "pg", "SELECT 2;"));
    keep(&mut said, f.psql("rotating", &old, "pg", "SELECT 3;"));
    // A wrong token, and the right one.
    keep(&mut said, f.psql("app", "not-the-token", "pg", "SELECT 4;"));
    keep(&mut said, f.app("SELECT 'x';"));
    // An OIDC user through the API and the data path.
    let jwt = oidc
        .token(serde_json::json!({"aud": "gatehouse", "sub": "u-1", "email": "ada@example.com", "groups": ["apps"]}))
        .unwrap();
    keep(&mut said, f.gw.cli_as(&jwt, &["identities", "list"]).unwrap());
    keep(&mut said, f.psql("ada@example.com", &jwt, "pg", "SELECT 5;"));
    // The exec API, and every read-out a user could ask for.
    let exec = curl(
        "POST",
        &format!("{}/api/v1/connections/pg/exec", f.gw.url()),
        Some(&f.token),
        Some(r#"{"sql": "SELECT 6"}"#),
    );
    said.push(exec.body.clone());
    for args in [
        vec!["connections", "list", "--json"],
        vec!["connections", "show", "pg", "--json"],
        vec!["identities", "list", "--json"],
        vec!["sessions", "list", "--json"],
        vec!["audit", "verify"],
        vec!["config", "check"],
    ] {
        keep(&mut said, f.gw.cli(&args).unwrap());
    }
    let sessions: serde_json::Value =
        serde_json::from_str(&f.gw.cli_ok(&["sessions", "list", "--json", "--limit", "1000"]).unwrap()).unwrap();
    for s in sessions.as_array().unwrap() {
        said.push(f.gw.cli_ok(&["sessions", "show", s["id"].as_str().unwrap(), "--json"]).unwrap());
    }
    said.push(curl("GET", &format!("{}/api/v1/openapi.json", f.gw.url()), None, None).body);
    said.push(curl("GET", &format!("{}/metrics", f.gw.url()), None, None).body);
    // Everything above worked, so the search below is over a real run.
    assert_eq!(exec.status, 200, "exec ran: {}", exec.body);
    assert!(said.iter().any(|s| s.contains("ok:")), "audit verify ran");
    assert!(said.iter().any(|s| s.contains("ada@example.com")), "the OIDC user's session was recorded");

    let secrets = [
        ("the bootstrap admin token", f.gw.admin_token().to_string()),
        ("a service token", f.token.clone()),
        ("a rotated-away token", old),
        ("a current token", new),
        ("the resource password", f.pg.superuser_password().to_string()),
        ("a group credential's password", group_password.to_string()),
        ("an OIDC JWT", jwt.clone()),
        ("an OIDC JWT's signature", jwt.rsplit('.').next().unwrap().to_string()),
    ];
    // Everything the gateway wrote: its log and every file of its data directory but the two
    // that exist to hold a secret (the master key, and the bootstrap token for its operator).
    let mut places: Vec<(String, Vec<u8>)> = vec![("the gateway log".into(), f.gw.log().into_bytes())];
    for entry in walk(&f.gw.data_dir()) {
        let name = entry.file_name().unwrap().to_string_lossy().to_string();
        if name == "master.key" || name == "admin.token" {
            continue;
        }
        places.push((entry.display().to_string(), std::fs::read(&entry).unwrap()));
    }
    for (i, text) in said.iter().enumerate() {
        places.push((format!("API/CLI answer #{i}"), text.clone().into_bytes()));
    }
    let master = std::fs::read(f.gw.data_dir().join("master.key")).unwrap();
    let master = String::from_utf8_lossy(&master).trim().to_string();
    let mut hits = Vec::new();
    for (what, secret) in secrets.iter().chain(std::iter::once(&("the master key", master))) {
        assert!(secret.len() >= 12, "{what} is long enough to search for");
        for (place, bytes) in &places {
            if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                hits.push(format!("{what} found in {place}"));
            }
        }
    }
    assert!(hits.is_empty(), "{}", hits.join("\n"));
    // The search reads what the run wrote: the OIDC user's statement is in the store's files.
    let found = |needle: &str| {
        places
            .iter()
            .any(|(p, b)| p.contains("gatehouse.db") && b.windows(needle.len()).any(|w| w == needle.as_bytes()))
    };
    assert!(found("SELECT 5"), "the store files were searched");
    assert!(found("ada@example.com"));
}

/// Keeps what a command printed, to search it.
fn keep(said: &mut Vec<String>, out: std::process::Output) {
    said.push(stdout(&out));
    said.push(stderr(&out));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
