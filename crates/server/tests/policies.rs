//! Policy end to end: `policies set` / `show` / `check` through the binary, the three outcomes,
//! evaluation errors, several objects, and the built-in rights of `admins`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

const POLICIES: &str = r#"
@id("billing-reads")
permit (principal in Group::"billing", action == Action::"sql.select", resource in Connection::"pg-prod");

@id("no-secrets-table")
forbid (principal, action, resource == Table::"pg-prod/public.secrets");

@id("billing-deletes")
permit (principal in Group::"billing", action == Action::"sql.delete", resource in Connection::"pg-prod");

@id("deletes-need-dba")
@approval("dba")
@quorum("2")
forbid (principal, action == Action::"sql.delete", resource in Connection::"pg-prod");

@id("big-bodies")
forbid (principal, action == Action::"sql.select", resource)
when { context has body_size && context.body_size * 9223372036854775807 > 0 };
"#;

fn set_policies(gw: &Gateway, text: &str) -> std::process::Output {
    let file = gw.data_dir().join("test-policies.cedar");
    std::fs::write(&file, text).unwrap();
    gw.cli(&["policies", "set", file.to_str().unwrap()]).unwrap()
}

fn check(gw: &Gateway, action: &str, resources: &[&str], context: Option<&str>) -> Vec<String> {
    let mut args = vec!["policies", "check", "--principal", "Service::\"fn-billing\"", "--action", action];
    for r in resources {
        args.extend(["--resource", r]);
    }
    if let Some(c) = context {
        args.extend(["--context", c]);
    }
    gw.cli_ok(&args).unwrap().lines().map(String::from).collect()
}

#[test]
fn check_gives_each_outcome_naming_policies() {
    let gw = gateway();
    gw.cli_ok(&["identities", "add", "fn-billing", "--groups", "billing"]).unwrap();
    let invoices = "Table::\"pg-prod/public.invoices\"";
    let secrets = "Table::\"pg-prod/public.secrets\"";

    // Before any policy: default deny.
    let out = check(&gw, "sql.select", &[invoices], None);
    assert_eq!(out[0], "deny", "{out:?}");

    let set = set_policies(&gw, POLICIES);
    assert!(set.status.success(), "{}", stderr(&set));
    assert!(stdout(&set).contains("5 policies"), "{}", stdout(&set));

    // Allow, naming the permit.
    let out = check(&gw, "sql.select", &[invoices], None);
    assert_eq!(out[0], "allow", "{out:?}");
    assert!(out[1].contains("billing-reads"), "{out:?}");

    // Deny by a forbid, naming it.
    let out = check(&gw, "sql.select", &[secrets], None);
    assert_eq!(out[0], "deny", "{out:?}");
    assert!(out[1].contains("no-secrets-table"), "{out:?}");

    // Default deny: nothing permits an update.
    let out = check(&gw, "sql.update", &[invoices], None);
    assert_eq!(out[0], "deny", "{out:?}");
    assert!(out.join("\n").contains("default deny"), "{out:?}");

    // Review: only @approval forbids matched and the rest of the set allows.
    let out = check(&gw, "sql.delete", &[invoices], None);
    assert_eq!(out[0], "review", "{out:?}");
    let text = out.join("\n");
    assert!(text.contains("deletes-need-dba") && text.contains("dba (quorum 2)"), "{text}");

    // An erroring policy denies, naming the policy and the error.
    let out = check(&gw, "sql.select", &[invoices], Some(r#"{"body_size": 2}"#));
    assert_eq!(out[0], "deny", "{out:?}");
    let text = out.join("\n");
    assert!(text.contains("big-bodies") && text.contains("overflow"), "{text}");

    // Two objects: the strictest wins, and each object's decision is shown.
    let out = check(&gw, "sql.select", &[invoices, secrets], None);
    assert_eq!(out[0], "deny", "{out:?}");
    let text = out.join("\n");
    assert!(text.contains("no-secrets-table"), "{text}");
    assert!(text.contains(&format!("{invoices}: allow")) && text.contains(&format!("{secrets}: deny")), "{text}");

    // A two-object request with one object needing review is held for review.
    let out = check(&gw, "sql.delete", &[invoices, "Table::\"pg-prod/public.orders\""], None);
    assert_eq!(out[0], "review", "{out:?}");

    // The JSON form carries the same decision.
    let json: serde_json::Value = serde_json::from_str(
        &gw.cli_ok(&[
            "policies",
            "check",
            "--principal",
            "Service::\"fn-billing\"",
            "--action",
            "sql.delete",
            "--resource",
            invoices,
            "--json",
        ])
        .unwrap(),
    )
    .unwrap();
    assert_eq!(json["decision"], "review");
    assert_eq!(json["approvers"], serde_json::json!([{"group": "dba", "quorum": 2}]));
}

#[test]
fn invalid_set_is_refused_with_position_and_old_set_kept() {
    let gw = gateway();
    assert!(set_policies(&gw, POLICIES).status.success());
    let before = gw.cli_ok(&["policies", "show"]).unwrap();

    let out = set_policies(
        &gw,
        "@id(\"x\")\npermit (principal, action == Action::\"sql.select\", resource)\nwhen { ??? };\n",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("line 3"), "position is reported: {err}");

    let out = set_policies(&gw, "permit (principal, action, resource);");
    assert!(stderr(&out).contains("@id"), "{}", stderr(&out));

    let out = set_policies(&gw, "@id(\"typo\")\npermit (principal, action == Action::\"sql.selct\", resource);");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("typo"), "{}", stderr(&out));

    assert_eq!(gw.cli_ok(&["policies", "show"]).unwrap(), before, "the old set stays in force");
    assert!(gw.cli_ok(&["policies", "schema"]).unwrap().contains("sql.select"));
}

#[test]
fn new_set_applies_without_restart_and_admins_cannot_be_locked_out() {
    let gw = gateway();
    let ops = gw.cli_ok(&["identities", "add", "ops-bot", "--groups", "ops"]).unwrap();
    let ops = ops.trim().to_string();

    // Nothing permits ops-bot to manage anything yet.
    let r = curl("GET", &format!("{}/api/v1/identities", gw.url()), Some(&ops), None);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "forbidden");

    // A policy lets ops read identities, applied at once, without a restart.
    assert!(
        set_policies(
            &gw,
            r#"@id("ops-reads-identities")
permit (principal in Group::"ops", action == Action::"api.read", resource == Api::"identities");"#
        )
        .status
        .success()
    );
    assert_eq!(curl("GET", &format!("{}/api/v1/identities", gw.url()), Some(&ops), None).status, 200);
    let out = gw.cli_as(&ops, &["identities", "add", "sneaky"]).unwrap();
    assert!(!out.status.success(), "reading is not writing");
    assert!(stderr(&out).contains("api.write"), "{}", stderr(&out));

    // Lock everything down: the forbid names itself to ops, and admins keep every right.
    assert!(
        set_policies(
            &gw,
            r#"@id("ops-reads-identities")
permit (principal in Group::"ops", action == Action::"api.read", resource == Api::"identities");
@id("lockdown")
forbid (principal, action, resource);"#
        )
        .status
        .success()
    );
    let r = curl("GET", &format!("{}/api/v1/identities", gw.url()), Some(&ops), None);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["policies"], serde_json::json!(["lockdown"]));
    gw.cli_ok(&["identities", "list"]).unwrap();
    gw.cli_ok(&["identities", "add", "still-admin-can", "--groups", "x"]).unwrap();
    gw.cli_ok(&["connections", "list"]).unwrap();
    gw.cli_ok(&["sessions", "list"]).unwrap();
    assert!(set_policies(&gw, "").status.success(), "admins can still replace the policy set");
}
