//! The exec API and `gatehouse exec` against a real PostgreSQL: one statement per call through
//! the same policy, review, masking and recording as the wire path, driven with curl and the
//! binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg;

use common::*;
use pg::*;
use serde_json::{Value, json};

fn exec(f: &Fixture, token: &str, connection: &str, body: Value) -> Http {
    curl("POST", &format!("{}/api/v1/connections/{connection}/exec", f.gw.url()), Some(token), Some(&body.to_string()))
}

fn setup() -> Fixture {
    let f = Fixture::with_env(&[("GATEHOUSE_REVIEWS_HOLD_SECONDS", "1")]);
    f.direct(
        "CREATE TABLE public.people (id int PRIMARY KEY, email text);
         INSERT INTO public.people VALUES (1, 'ada@example.com'), (2, 'grace@example.org');",
    );
    f.gw.cli_ok(&["connections", "update", "pg", "--mask", "email"]).unwrap();
    f.policies(&format!(
        "{POLICIES}\n@id(\"order-deletes-need-dba\")\n@approval(\"dba\")\nforbid (principal, action == Action::\"sql.delete\", resource == Table::\"pg/public.orders\");"
    ));
    f
}

#[test]
fn exec_returns_masked_rows_refuses_what_policy_refuses_and_records_it_all() {
    let f = setup();
    let r = exec(&f, &f.token, "pg", json!({"sql": "SELECT id, email FROM public.people ORDER BY id"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["columns"], json!([{"name": "id", "type": "int4"}, {"name": "email", "type": "text"}]));
    assert_eq!(v["row_count"], 2);
    assert_eq!(v["truncated"], false);
    assert_eq!(v["command"], "SELECT 2");
    assert_eq!(v["rows"][0][0], "1");
    let email = v["rows"][0][1].as_str().unwrap();
    assert!(!email.contains("ada") && email.ends_with("@example.com"), "masked: {email}");
    assert_eq!(v["masked"], json!({"email": {"email": 2}}));
    let session = v["session_id"].as_str().unwrap().to_string();

    // Parameters, typed as JSON.
    let r = exec(&f, &f.token, "pg", json!({"sql": "SELECT item FROM public.orders WHERE id = $1", "params": [1]}));
    assert_eq!(r.json()["rows"], json!([["lamp"]]), "{}", r.body);
    let r = exec(&f, &f.token, "pg", json!({"sql": "SELECT $1::text IS NULL", "params": [null]}));
    assert_eq!(r.json()["rows"], json!([["t"]]), "{}", r.body);
    // A cap, said explicitly.
    let r = exec(&f, &f.token, "pg", json!({"sql": "SELECT id FROM public.people ORDER BY id", "max_rows": 1}));
    let v = r.json();
    assert_eq!((v["rows"].clone(), v["truncated"].clone()), (json!([["1"]]), json!(true)), "{}", r.body);
    // Writes report what they changed.
    let r = exec(&f, &f.token, "pg", json!({"sql": "UPDATE public.orders SET item = 'desk' WHERE id = 2"}));
    assert_eq!(
        (r.json()["command"].clone(), r.json()["row_count"].clone()),
        (json!("UPDATE 1"), json!(1)),
        "{}",
        r.body
    );

    // Refusals, each with its own status.
    let r = exec(&f, &f.token, "pg", json!({"sql": "SELECT * FROM public.secrets"}));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "forbidden");
    assert_eq!(r.json()["error"]["policies"], json!(["no-secrets"]));
    let r = exec(&f, &f.token, "pg", json!({"sql": "SELECT * FROM public.nope"}));
    assert_eq!((r.status, r.json()["error"]["sqlstate"].clone()), (422, json!("42P01")), "{}", r.body);
    assert_eq!(exec(&f, &f.token, "nope", json!({"sql": "SELECT 1"})).status, 404);
    assert_eq!(exec(&f, "wrong-token", "pg", json!({"sql": "SELECT 1"})).status, 401);
    assert_eq!(exec(&f, &f.token, "pg", json!({"sql": " "})).status, 422);
    assert_eq!(exec(&f, &f.token, "pg", json!({"sql": "SELECT 1", "max_rows": 0})).status, 422);

    // A statement that needs review: 403 review_pending naming the review; once approved, the
    // same request runs, once.
    let dba = f.gw.cli_ok(&["identities", "add", "dba1", "--groups", "dba"]).unwrap().trim().to_string();
    let delete = json!({"sql": "DELETE FROM public.orders WHERE id = $1", "params": [2]});
    let r = exec(&f, &f.token, "pg", delete.clone());
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "review_pending");
    let review = r.json()["error"]["review_id"].as_str().unwrap().to_string();
    assert!(f.gw.cli_as(&dba, &["reviews", "approve", &review]).unwrap().status.success());
    let r = exec(&f, &f.token, "pg", delete.clone());
    assert_eq!((r.status, r.json()["command"].clone()), (200, json!("DELETE 1")), "{}", r.body);
    assert_eq!(exec(&f, &f.token, "pg", delete).json()["error"]["code"], "review_pending", "once");

    // Each call is a recorded session of the caller, marked as coming through exec.
    let detail: Value = serde_json::from_str(&f.gw.cli_ok(&["sessions", "show", &session, "--json"]).unwrap()).unwrap();
    assert_eq!(detail["identity"], "app");
    assert_eq!(detail["connection"], "pg");
    let events = detail["events"].as_array().unwrap();
    assert_eq!(events[0]["data"]["via"], "exec");
    assert!(events.iter().any(|e| e["data"]["request"] == "SELECT id, email FROM public.people ORDER BY id"));
    assert!(events.iter().any(|e| e["data"]["masked"] == json!({"email": {"email": 2}})));
    assert!(f.gw.cli_ok(&["audit", "verify"]).unwrap().starts_with("ok"));
}

#[test]
fn gatehouse_exec_prints_a_table_or_json() {
    let f = setup();
    let out = f.gw.cli_as(&f.token, &["exec", "pg", "SELECT id, email FROM public.people ORDER BY id"]).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("id") && lines[0].contains("email"), "{text}");
    assert!(lines[1].starts_with('1') && lines[1].contains("@example.com") && !text.contains("ada@"), "{text}");
    assert_eq!(lines.last().unwrap().trim(), "(2 rows)");
    assert!(stderr(&out).contains("masked: email: 2 email"), "{}", stderr(&out));

    let out = f
        .gw
        .cli_as(&f.token, &["exec", "pg", "SELECT item FROM public.orders WHERE id = $1", "--param", "1", "--json"])
        .unwrap();
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["rows"], json!([["lamp"]]));

    let out = f.gw.cli_as(&f.token, &["exec", "pg", "SELECT * FROM public.secrets"]).unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-secrets"), "{}", stderr(&out));
    let out = f.gw.cli_as(&f.token, &["exec", "pg", "DELETE FROM public.orders WHERE id = 2"]).unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("gatehouse reviews approve"), "{}", stderr(&out));
}
