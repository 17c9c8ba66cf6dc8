//! Service identities end to end: the bootstrap token, tokens made with the CLI, and every way a
//! token stops working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[test]
fn bootstrap_token_is_private_and_works() {
    let gw = gateway();
    let path = gw.data_dir().join("admin.token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let who = curl("GET", &format!("{}/api/v1/whoami", gw.url()), Some(gw.admin_token()), None);
    assert_eq!(who.status, 200, "{}", who.body);
    assert_eq!(who.json()["principal"], "Service::\"admin\"");
    assert_eq!(who.json()["groups"], serde_json::json!(["admins"]));
    // The log names the file, never the token.
    assert!(gw.log().contains("admin.token"));
    assert!(!gw.log().contains(gw.admin_token()));
}

fn status_with(gw: &Gateway, token: &str) -> (u16, String) {
    let r = curl("GET", &format!("{}/api/v1/whoami", gw.url()), Some(token), None);
    let code = if r.status == 200 {
        String::new()
    } else {
        r.json()["error"]["code"].as_str().unwrap_or_default().to_string()
    };
    (r.status, code)
}

#[test]
fn cli_identity_authenticates_and_bad_tokens_get_401() {
    let gw = gateway();
    let token = gw.cli_ok(&["identities", "add", "fn-billing", "--groups", "billing,ops"]).unwrap();
    let token = token.trim();
    assert!(token.starts_with("ghs_") && token.len() >= 47, "{token:?}");
    assert_eq!(status_with(&gw, token), (200, String::new()));

    // Wrong token, a malformed header, no header.
    assert_eq!(status_with(&gw, "ghs_not-a-real-token"), (401, "unauthenticated".into()));
    assert_eq!(curl("GET", &format!("{}/api/v1/whoami", gw.url()), None, None).status, 401);

    // Rotate: the old token stops, the new one works.
    let new = gw.cli_ok(&["identities", "rotate", "fn-billing"]).unwrap();
    let new = new.trim();
    assert_ne!(new, token);
    assert_eq!(status_with(&gw, token).0, 401);
    assert_eq!(status_with(&gw, new).0, 200);

    // Delete: the token stops.
    gw.cli_ok(&["identities", "rm", "fn-billing"]).unwrap();
    assert_eq!(status_with(&gw, new).0, 401);
    let out = gw.cli(&["identities", "show", "fn-billing"]).unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
}

#[test]
fn expired_token_is_refused_and_list_shows_expiry_and_last_use() {
    let gw = gateway();
    let short = gw.cli_ok(&["identities", "add", "short-lived", "--groups", "x", "--ttl", "2s"]).unwrap();
    let long = gw.cli_ok(&["identities", "add", "long-lived", "--ttl", "90d"]).unwrap();
    assert_eq!(status_with(&gw, short.trim()).0, 200);
    assert_eq!(status_with(&gw, long.trim()).0, 200);
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let (status, _) = status_with(&gw, short.trim());
    assert_eq!(status, 401);
    let r = curl("GET", &format!("{}/api/v1/whoami", gw.url()), Some(short.trim()), None);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("expired"), "{}", r.body);

    let list: serde_json::Value = serde_json::from_str(&gw.cli_ok(&["identities", "list", "--json"]).unwrap()).unwrap();
    let by_name = |n: &str| list.as_array().unwrap().iter().find(|i| i["name"] == n).unwrap().clone();
    assert_eq!(by_name("short-lived")["expired"], true);
    assert_eq!(by_name("long-lived")["expired"], false);
    assert!(by_name("long-lived")["expires_at"].as_str().unwrap().starts_with("20"));
    assert!(by_name("long-lived")["last_used_at"].is_string(), "last use is recorded");
    let text = gw.cli_ok(&["identities", "list"]).unwrap();
    assert!(text.contains("(expired)") && text.contains("LAST USED"), "{text}");
}

#[test]
fn identity_input_is_validated() {
    let gw = gateway();
    for (args, needle) in [
        (vec!["identities", "add", "bad/name"], "contains"),
        (vec!["identities", "add", "ok", "--groups", "has space"], "group name"),
        (vec!["identities", "add", "ok", "--ttl", "soon"], "ttl"),
        (vec!["identities", "add", "admin"], "already exists"),
    ] {
        let out = gw.cli(&args).unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "nothing on stdout for a failure");
    }
}

#[test]
fn rotation_keeps_the_lifetime_or_takes_a_new_one() {
    let gw = gateway();
    gw.cli_ok(&["identities", "add", "svc", "--ttl", "1h"]).unwrap();
    // Compared as times: RFC 3339 text drops trailing zeros of the fraction, so it does not sort.
    let expiry = |gw: &Gateway| -> time::OffsetDateTime {
        let v: serde_json::Value =
            serde_json::from_str(&gw.cli_ok(&["identities", "show", "svc", "--json"]).unwrap()).unwrap();
        time::OffsetDateTime::parse(v["expires_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let first = expiry(&gw);
    std::thread::sleep(std::time::Duration::from_millis(50));
    gw.cli_ok(&["identities", "rotate", "svc"]).unwrap();
    assert!(expiry(&gw) > first, "a rotated token gets a full lifetime from now");
    gw.cli_ok(&["identities", "rotate", "svc", "--ttl", "30d"]).unwrap();
    let year_month = expiry(&gw);
    assert!(year_month > first + time::Duration::days(29), "{year_month} vs {first}");
    gw.cli_ok(&["identities", "add", "forever"]).unwrap();
    gw.cli_ok(&["identities", "rotate", "forever"]).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["identities", "show", "forever", "--json"]).unwrap()).unwrap();
    assert!(v["expires_at"].is_null());
}
