#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use gatehouse_core::{Approval, AuthzRequest, ConnectionInfo, Decision, Identity, IdentityKind, Outcome, Resource};
use proptest::prelude::*;
use serde_json::json;

use crate::{PolicyEngine, PolicyError, SCHEMA, validate};

fn user(name: &str, groups: &[&str]) -> Identity {
    Identity {
        kind: IdentityKind::User,
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        expires_at: None,
    }
}

fn res(text: &str) -> Resource {
    Resource::parse(text).unwrap()
}

fn request(who: Identity, action: &str, resources: &[&str], context: serde_json::Value) -> AuthzRequest {
    let serde_json::Value::Object(context) = context else { panic!("context must be an object") };
    AuthzRequest {
        principal: who,
        action: action.into(),
        resources: resources.iter().map(|r| res(r)).collect(),
        context,
    }
}

fn conn(name: &str, kind: &str, tags: &[(&str, &str)]) -> ConnectionInfo {
    ConnectionInfo {
        name: name.into(),
        kind: kind.into(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }
}

fn engine(text: &str) -> PolicyEngine {
    match PolicyEngine::with_text(text) {
        Ok(e) => e,
        Err(e) => panic!("policy text refused: {e}"),
    }
}

fn decide(e: &PolicyEngine, who: Identity, action: &str, resources: &[&str]) -> Decision {
    e.decide(&request(who, action, resources, json!({})), &[]).unwrap()
}

fn invalid(text: &str) -> String {
    match validate(text) {
        Ok(_) => panic!("accepted invalid text:\n{text}"),
        Err(e @ PolicyError::Invalid(_)) => e.to_string(),
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const BILLING: &str = r#"
@id("billing-read")
permit (
    principal in Group::"billing",
    action == Action::"sql.select",
    resource == Table::"pg-prod/public.invoices"
);
"#;

#[test]
fn schema_loads() {
    crate::schema::get().unwrap();
    assert!(PolicyEngine::schema_text().contains("entity Connection"));
    assert_eq!(PolicyEngine::schema_text(), SCHEMA);
}

#[test]
fn allow_names_the_permit() {
    let e = engine(BILLING);
    let d = decide(&e, user("alice", &["billing"]), "sql.select", &["Table::\"pg-prod/public.invoices\""]);
    assert_eq!(d, Decision::allow(ids(&["billing-read"])));
    assert_eq!(d.explain(), "allowed by policy billing-read");
}

#[test]
fn default_deny() {
    let e = engine(BILLING);
    let d = decide(&e, user("alice", &["billing"]), "sql.select", &["Table::\"pg-prod/public.payments\""]);
    assert_eq!(d, Decision::deny(vec![]));
    assert_eq!(d.explain(), "denied: no policy permits it");
    // Not in the group.
    let d = decide(&e, user("bob", &["support"]), "sql.select", &["Table::\"pg-prod/public.invoices\""]);
    assert_eq!(d.outcome, Outcome::Deny);
    // The empty engine denies everything.
    let d = decide(&PolicyEngine::new(), user("bob", &["admins"]), "connect", &["Connection::\"pg-prod\""]);
    assert_eq!(d, Decision::deny(vec![]));
}

#[test]
fn empty_text_is_an_empty_set() {
    let loaded = validate("").unwrap();
    assert!(loaded.is_empty());
    let loaded = validate("  // nothing here\n").unwrap();
    assert_eq!(loaded.len(), 0);
}

#[test]
fn forbid_beats_permit() {
    let e = engine(&format!(
        r#"{BILLING}
        @id("no-contractors")
        forbid (principal in Group::"contractors", action, resource in Connection::"pg-prod");
        "#
    ));
    let d =
        decide(&e, user("carol", &["billing", "contractors"]), "sql.select", &["Table::\"pg-prod/public.invoices\""]);
    assert_eq!(d, Decision::deny(ids(&["no-contractors"])));
    assert_eq!(d.explain(), "denied by policy no-contractors");
}

const APPROVAL: &str = r#"
@id("eng-sql")
permit (principal in Group::"engineers", action in Action::"sql", resource in Connection::"pg-prod");

@id("deletes-need-dba")
@approval("dba")
@quorum("2")
forbid (principal, action == Action::"sql.delete", resource in Connection::"pg-prod");

@id("payments-need-security")
@approval("security, dba")
forbid (principal, action == Action::"sql.delete", resource == Table::"pg-prod/public.payments");

@id("audit-never")
forbid (principal, action == Action::"sql.delete", resource == Table::"pg-prod/public.audit_log");

@id("audit-update-review")
@approval("dba")
forbid (principal, action == Action::"sql.update", resource in Connection::"pg-other");
"#;

#[test]
fn review_with_approvers_and_quorum() {
    let e = engine(APPROVAL);
    let d = decide(&e, user("dave", &["engineers"]), "sql.delete", &["Table::\"pg-prod/public.orders\""]);
    assert_eq!(d.outcome, Outcome::Review);
    assert_eq!(d.policies, ids(&["deletes-need-dba"]));
    assert_eq!(d.approvers, vec![Approval { group: "dba".into(), quorum: 2 }]);
    assert!(d.errors.is_empty());
    assert_eq!(d.explain(), "held for review by policy deletes-need-dba; approvers: dba (quorum 2)");

    // Two approval forbids: every group, the same group once with the larger quorum.
    let d = decide(&e, user("dave", &["engineers"]), "sql.delete", &["Table::\"pg-prod/public.payments\""]);
    assert_eq!(d.outcome, Outcome::Review);
    assert_eq!(d.policies, ids(&["deletes-need-dba", "payments-need-security"]));
    assert_eq!(
        d.approvers,
        vec![Approval { group: "dba".into(), quorum: 2 }, Approval { group: "security".into(), quorum: 1 }]
    );

    // Selects are not held.
    let d = decide(&e, user("dave", &["engineers"]), "sql.select", &["Table::\"pg-prod/public.orders\""]);
    assert_eq!(d, Decision::allow(ids(&["eng-sql"])));
}

#[test]
fn review_becomes_deny_without_a_permit() {
    let e = engine(APPROVAL);
    // Not an engineer: without the approval forbids nothing permits it, so no review.
    let d = decide(&e, user("eve", &["sales"]), "sql.delete", &["Table::\"pg-prod/public.orders\""]);
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.policies, ids(&["deletes-need-dba"]));
    assert!(d.approvers.is_empty());
    // No permit on pg-other at all.
    let d = decide(&e, user("dave", &["engineers"]), "sql.update", &["Table::\"pg-other/public.t\""]);
    assert_eq!(d.outcome, Outcome::Deny);
}

#[test]
fn plain_forbid_with_approval_forbid_denies() {
    let e = engine(APPROVAL);
    let d = decide(&e, user("dave", &["engineers"]), "sql.delete", &["Table::\"pg-prod/public.audit_log\""]);
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.policies, ids(&["deletes-need-dba", "audit-never"]));
    assert!(d.approvers.is_empty());
}

const OVERFLOW: &str = r#"
@id("big-bodies")
forbid (principal, action == Action::"http.post", resource)
when { context has body_size && context.body_size * 9223372036854775807 > 0 };
"#;

#[test]
fn evaluation_error_denies_and_names_the_policy() {
    let text = format!(
        r#"
        @id("post-anything")
        permit (principal, action == Action::"http.post", resource in Connection::"api");
        {OVERFLOW}"#
    );
    let e = engine(&text);
    let req = request(user("u", &[]), "http.post", &["Path::\"api/v1/x\""], json!({ "body_size": 2 }));
    let d = e.decide(&req, &[]).unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    assert!(d.errors[0].starts_with("policy \"big-bodies\": "), "{:?}", d.errors);
    assert!(d.errors[0].contains("overflow"), "{:?}", d.errors);
    assert!(d.explain().contains("big-bodies"));
    // Without the attribute the forbid does not error and the permit allows.
    let req = request(user("u", &[]), "http.post", &["Path::\"api/v1/x\""], json!({}));
    assert_eq!(e.decide(&req, &[]).unwrap(), Decision::allow(ids(&["post-anything"])));

    // An erroring permit next to one that allows still denies.
    let e = engine(
        r#"
        @id("post-anything")
        permit (principal, action == Action::"http.post", resource);
        @id("overflowing-permit")
        permit (principal, action == Action::"http.post", resource)
        when { context has time && context.time + 9223372036854775807 > 0 };
        "#,
    );
    let req = request(user("u", &[]), "http.post", &["Path::\"api/v1/x\""], json!({ "time": 1_700_000_000 }));
    let d = e.decide(&req, &[]).unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.errors[0].starts_with("policy \"overflowing-permit\""), "{:?}", d.errors);
}

#[test]
fn evaluation_error_in_review_path_denies() {
    let e = engine(
        r#"
        @id("post")
        permit (principal, action == Action::"http.post", resource);
        @id("review-posts")
        @approval("finance")
        forbid (principal, action == Action::"http.post", resource);
        @id("overflow")
        forbid (principal, action == Action::"http.post", resource)
        when { context has body_size && context.body_size * 9223372036854775807 > 0 };
        "#,
    );
    let req = request(user("u", &[]), "http.post", &["Path::\"api/x\""], json!({ "body_size": 3 }));
    let d = e.decide(&req, &[]).unwrap();
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.policies, ids(&["review-posts"]));
    assert!(d.approvers.is_empty());
    assert!(d.errors[0].contains("\"overflow\""));
    let req = request(user("u", &[]), "http.post", &["Path::\"api/x\""], json!({}));
    assert_eq!(e.decide(&req, &[]).unwrap().outcome, Outcome::Review);
}

#[test]
fn several_objects_strictest_wins() {
    let e = engine(&format!("{BILLING}\n{APPROVAL}"));
    let who = user("alice", &["billing"]);
    let req = request(
        who.clone(),
        "sql.select",
        &["Table::\"pg-prod/public.invoices\"", "Table::\"pg-prod/public.payments\""],
        json!({}),
    );
    let detailed = e.decide_detailed(&req, &[]).unwrap();
    assert_eq!(detailed.decision.outcome, Outcome::Deny);
    assert_eq!(detailed.per_resource.len(), 2);
    assert_eq!(detailed.per_resource[0].1.outcome, Outcome::Allow);
    assert_eq!(detailed.per_resource[1].1.outcome, Outcome::Deny);
    let report = detailed.report();
    assert_eq!(report.lines().next(), Some("deny"));
    assert!(report.contains("Table::\"pg-prod/public.invoices\": allow"), "{report}");

    // Review and allow: review.
    let who = user("dave", &["engineers", "billing"]);
    let req = request(
        who,
        "sql.delete",
        &["Table::\"pg-prod/public.orders\"", "Table::\"pg-prod/public.payments\""],
        json!({}),
    );
    let d = e.decide(&req, &[]).unwrap();
    assert_eq!(d.outcome, Outcome::Review);
    assert_eq!(d.approvers.len(), 2);
}

#[test]
fn empty_resources_is_a_request_error() {
    let e = engine(BILLING);
    let req = request(user("alice", &["billing"]), "sql.select", &[], json!({}));
    assert!(matches!(e.decide(&req, &[]), Err(PolicyError::Request(_))));
}

#[test]
fn path_prefixes_are_parents() {
    let e = engine(
        r#"
        @id("invoices")
        permit (principal, action == Action::"http.get", resource in Path::"api/v1/invoices");
        "#,
    );
    let who = user("u", &[]);
    for (path, outcome) in [
        ("api/v1/invoices", Outcome::Allow),
        ("api/v1/invoices/42", Outcome::Allow),
        ("api/v1/invoices/42/refund", Outcome::Allow),
        ("api/v1//invoices/42/refund", Outcome::Deny),
        ("api/v1/invoices/", Outcome::Allow),
        ("api/v1/invoices-archive", Outcome::Deny),
        ("api/v1", Outcome::Deny),
        ("api/v2/invoices/42", Outcome::Deny),
        ("other/v1/invoices/42", Outcome::Deny),
    ] {
        let d = decide(&e, who.clone(), "http.get", &[&format!("Path::\"{path}\"")]);
        assert_eq!(d.outcome, outcome, "{path}");
    }
    // A leading slash in the path is not part of the id.
    let req = AuthzRequest {
        principal: who.clone(),
        action: "http.get".into(),
        resources: vec![Resource::Path { connection: "api".into(), path: "/v1/invoices/7".into() }],
        context: serde_json::Map::new(),
    };
    assert_eq!(e.decide(&req, &[]).unwrap().outcome, Outcome::Allow);
    // Dot segments could climb out of the prefix: refused.
    for path in ["api/v1/invoices/../admin", "api/v1/invoices/%2e%2E/admin", "api/v1/invoices/./x"] {
        let req = request(who.clone(), "http.get", &[&format!("Path::\"{path}\"")], json!({}));
        assert!(matches!(e.decide(&req, &[]), Err(PolicyError::Request(_))), "{path}");
    }
}

#[test]
fn kube_object_prefixes_are_parents() {
    let e = engine(
        r#"
        @id("ns-read")
        permit (principal in Group::"dev", action in [Action::"k8s.get", Action::"k8s.list"],
                resource in KubeObject::"cluster/namespaces/dev");
        "#,
    );
    let d = decide(&e, user("u", &["dev"]), "k8s.get", &["KubeObject::\"cluster/namespaces/dev/pods/web-1\""]);
    assert_eq!(d.outcome, Outcome::Allow);
    let d = decide(&e, user("u", &["dev"]), "k8s.get", &["KubeObject::\"cluster/namespaces/prod/pods/web-1\""]);
    assert_eq!(d.outcome, Outcome::Deny);
    let d = decide(&e, user("u", &["dev"]), "k8s.delete", &["KubeObject::\"cluster/namespaces/dev/pods/web-1\""]);
    assert_eq!(d.outcome, Outcome::Deny);
}

#[test]
fn key_prefixes_are_parents() {
    let e = engine(
        r#"
        @id("sessions")
        permit (principal, action == Action::"redis.read", resource in Key::"cache/session");
        "#,
    );
    let who = user("u", &[]);
    for (key, outcome) in [
        ("cache/session", Outcome::Allow),
        ("cache/session:42", Outcome::Allow),
        ("cache/session:42:token", Outcome::Allow),
        ("cache/sessions:42", Outcome::Deny),
        ("cache/user:42", Outcome::Deny),
        ("other/session:42", Outcome::Deny),
    ] {
        let d = decide(&e, who.clone(), "redis.read", &[&format!("Key::\"{key}\"")]);
        assert_eq!(d.outcome, outcome, "{key}");
    }
}

#[test]
fn tables_and_columns_sit_in_their_connection() {
    let e = engine(
        r#"
        @id("pg-read")
        permit (principal, action == Action::"sql.select", resource in Connection::"pg-prod");
        @id("unmask-users")
        permit (principal in Group::"support", action == Action::"unmask", resource in Table::"pg-prod/public.users");
        @id("unmask-emails")
        permit (principal in Group::"marketing", action == Action::"unmask", resource is Column)
        when { resource.name == "email" && resource.schema == "public" && resource.table == "users" };
        "#,
    );
    let d = decide(&e, user("u", &[]), "sql.select", &["Connection::\"pg-prod\""]);
    assert_eq!(d.outcome, Outcome::Allow);
    let d = decide(&e, user("u", &[]), "sql.select", &["Table::\"pg-prod/pg_catalog.pg_type\""]);
    assert_eq!(d.outcome, Outcome::Allow);
    let d = decide(&e, user("u", &["support"]), "unmask", &["Column::\"pg-prod/public.users.email\""]);
    assert_eq!(d, Decision::allow(ids(&["unmask-users"])));
    let d = decide(&e, user("u", &["support"]), "unmask", &["Column::\"pg-prod/public.orders.email\""]);
    assert_eq!(d.outcome, Outcome::Deny);
    let d = decide(&e, user("u", &["marketing"]), "unmask", &["Column::\"pg-prod/public.users.email\""]);
    assert_eq!(d, Decision::allow(ids(&["unmask-emails"])));
    let d = decide(&e, user("u", &["marketing"]), "unmask", &["Column::\"pg-prod/public.users.phone\""]);
    assert_eq!(d.outcome, Outcome::Deny);
}

#[test]
fn connection_type_and_tags() {
    let e = engine(
        r#"
        @id("dev-anything")
        permit (principal in Group::"eng", action in Action::"sql", resource)
        when { resource.hasTag("env") && resource.getTag("env") == "dev" };
        @id("redis-read")
        permit (principal in Group::"eng", action == Action::"connect", resource)
        when { resource.type == "redis" };
        "#,
    );
    let conns = [
        conn("pg-dev", "postgres", &[("env", "dev")]),
        conn("pg-prod", "postgres", &[("env", "prod")]),
        conn("cache", "redis", &[]),
    ];
    let who = user("u", &["eng"]);
    let ask = |action: &str, r: &str, conns: &[ConnectionInfo]| {
        e.decide(&request(who.clone(), action, &[r], json!({})), conns).unwrap().outcome
    };
    // Tags of the connection, on the connection and on every table inside it.
    assert_eq!(ask("sql.delete", "Connection::\"pg-dev\"", &conns), Outcome::Allow);
    assert_eq!(ask("sql.delete", "Table::\"pg-dev/public.t\"", &conns), Outcome::Allow);
    assert_eq!(ask("sql.delete", "Table::\"pg-prod/public.t\"", &conns), Outcome::Deny);
    // Without the connection's info: no tags, type "".
    assert_eq!(ask("sql.delete", "Table::\"pg-dev/public.t\"", &[]), Outcome::Deny);
    assert_eq!(ask("connect", "Connection::\"cache\"", &conns), Outcome::Allow);
    assert_eq!(ask("connect", "Connection::\"pg-dev\"", &conns), Outcome::Deny);
    assert_eq!(ask("connect", "Connection::\"cache\"", &[]), Outcome::Deny);
}

#[test]
fn action_groups() {
    let e = engine(
        r#"
        @id("all-sql")
        permit (principal, action in Action::"sql", resource in Connection::"pg");
        @id("all-api-read")
        permit (principal in Group::"auditors", action in Action::"api", resource == Api::"audit")
        when { action == Action::"api.read" };
        "#,
    );
    let who = user("u", &["auditors"]);
    for action in ["sql.select", "sql.insert", "sql.update", "sql.delete", "sql.ddl", "sql.admin", "sql.other"] {
        assert_eq!(decide(&e, who.clone(), action, &["Table::\"pg/public.t\""]).outcome, Outcome::Allow, "{action}");
    }
    assert_eq!(decide(&e, who.clone(), "redis.read", &["Connection::\"pg\""]).outcome, Outcome::Deny);
    assert_eq!(decide(&e, who.clone(), "connect", &["Connection::\"pg\""]).outcome, Outcome::Deny);
    assert_eq!(decide(&e, who.clone(), "api.read", &["Api::\"audit\""]).outcome, Outcome::Allow);
    assert_eq!(decide(&e, who, "api.write", &["Api::\"audit\""]).outcome, Outcome::Deny);
}

#[test]
fn services_and_nested_groups_of_policy() {
    let e = engine(
        r#"
        @id("fn-billing")
        permit (principal == Service::"fn-billing", action == Action::"sql.select",
                resource == Table::"pg-prod/public.invoices");
        @id("users-only")
        permit (principal is User in Group::"billing", action == Action::"sql.insert", resource);
        "#,
    );
    let svc = Identity::service("fn-billing", vec!["billing".to_string()]);
    assert_eq!(decide(&e, svc.clone(), "sql.select", &["Table::\"pg-prod/public.invoices\""]).outcome, Outcome::Allow);
    assert_eq!(decide(&e, svc.clone(), "sql.insert", &["Table::\"pg-prod/public.invoices\""]).outcome, Outcome::Deny);
    // A user with the same name is another principal.
    let u = user("fn-billing", &["billing"]);
    assert_eq!(decide(&e, u.clone(), "sql.select", &["Table::\"pg-prod/public.invoices\""]).outcome, Outcome::Deny);
    assert_eq!(decide(&e, u, "sql.insert", &["Table::\"pg-prod/public.invoices\""]).outcome, Outcome::Allow);
}

#[test]
fn context_with_client_ip() {
    let e = engine(
        r#"
        @id("office-only")
        permit (principal, action == Action::"connect", resource)
        when { context has client_ip && context.client_ip.isInRange(ip("10.0.0.0/8")) };
        "#,
    );
    let who = user("u", &[]);
    let ask = |ctx: serde_json::Value| e.decide(&request(who.clone(), "connect", &["Connection::\"pg\""], ctx), &[]);
    assert_eq!(
        ask(json!({ "client_ip": { "__extn": { "fn": "ip", "arg": "10.1.2.3" } } })).unwrap().outcome,
        Outcome::Allow
    );
    assert_eq!(ask(json!({ "client_ip": "10.1.2.3" })).unwrap().outcome, Outcome::Allow);
    assert_eq!(ask(json!({ "client_ip": "192.168.1.1" })).unwrap().outcome, Outcome::Deny);
    assert_eq!(ask(json!({ "client_ip": "::1", "protocol": "postgres" })).unwrap().outcome, Outcome::Deny);
    assert_eq!(ask(json!({})).unwrap().outcome, Outcome::Deny);
    assert_eq!(ask(json!({ "client_ip": null })).unwrap().outcome, Outcome::Deny);
    // A full context of the schema's shape is accepted.
    let full = json!({
        "protocol": "postgres", "client_ip": "10.0.0.1", "time": 1_700_000_000,
        "statement": "SELECT 1", "fingerprint": "SELECT ?", "tables": ["public.t"], "has_where": false,
        "command": "GET", "path": "/v1", "method": "GET", "segments": ["v1"], "query_keys": ["q"],
        "content_type": "application/json", "body_size": 10, "namespace": "dev", "tool": "query",
    });
    assert_eq!(ask(full).unwrap().outcome, Outcome::Allow);
    // Malformed contexts are request errors.
    for bad in [
        json!({ "client_ip": "not-an-ip" }),
        json!({ "client_ip": 42 }),
        json!({ "time": "yesterday" }),
        json!({ "unknown_attribute": 1 }),
    ] {
        assert!(matches!(ask(bad.clone()), Err(PolicyError::Request(_))), "{bad}");
    }
}

#[test]
fn malformed_requests() {
    let e = engine(BILLING);
    let who = user("u", &[]);
    let err = e.decide(&request(who.clone(), "sql.drop", &["Connection::\"pg\""], json!({})), &[]).unwrap_err();
    assert!(err.to_string().contains("unknown action \"sql.drop\""), "{err}");
    // An action group is not an action a request can ask for.
    assert!(e.decide(&request(who.clone(), "sql", &["Connection::\"pg\""], json!({})), &[]).is_err());
    // A resource type the action does not apply to.
    let err = e.decide(&request(who.clone(), "sql.select", &["Path::\"api/x\""], json!({})), &[]).unwrap_err();
    assert!(matches!(err, PolicyError::Request(_)), "{err}");
    let err = e.decide(&request(who, "connect", &["Table::\"pg/public.t\""], json!({})), &[]).unwrap_err();
    assert!(matches!(err, PolicyError::Request(_)), "{err}");
}

#[test]
fn ids_replace_cedar_positions() {
    let loaded = validate(&format!("{BILLING}\n{APPROVAL}")).unwrap();
    let summary = loaded.summary();
    assert_eq!(
        summary.ids(),
        vec![
            "billing-read",
            "eng-sql",
            "deletes-need-dba",
            "payments-need-security",
            "audit-never",
            "audit-update-review"
        ]
    );
    assert_eq!(summary.policies[0].line, Some(2));
    let p = loaded.policy("payments-need-security").unwrap();
    assert_eq!(
        p.approvers,
        vec![Approval { group: "security".into(), quorum: 1 }, Approval { group: "dba".into(), quorum: 1 }]
    );
    assert!(loaded.full.policies().all(|p| !p.id().to_string().starts_with("policy")));
}

// ---------------------------------------------------------------- refused texts

#[test]
fn syntax_error_has_line_and_column() {
    let text =
        "@id(\"a\")\npermit (principal, action, resource);\n\n@id(\"b\")\npermit (principal, action resource);\n";
    let msg = invalid(text);
    assert!(msg.starts_with("invalid policy set: line 5, column "), "{msg}");
    let e = validate(text).unwrap_err();
    let p = &e.problems()[0];
    assert_eq!(p.line, Some(5));
    assert!(p.column.unwrap() >= 18, "{p}");
}

#[test]
fn missing_id_is_refused() {
    let msg = invalid("@id(\"a\")\npermit (principal, action, resource);\npermit (principal, action, resource);");
    assert!(msg.contains("line 3, column 1: policy has no @id"), "{msg}");
}

#[test]
fn empty_id_is_refused() {
    let msg = invalid("@id(\"\")\npermit (principal, action, resource);");
    assert!(msg.contains("line 1, column 1: @id must not be empty"), "{msg}");
}

#[test]
fn duplicate_id_is_refused() {
    let msg = invalid(
        "@id(\"a\")\npermit (principal, action, resource);\n  @id(\"a\")\nforbid (principal, action, resource);",
    );
    assert!(
        msg.contains("line 3, column 3: policy \"a\": duplicate @id \"a\" (first used at line 1, column 1)"),
        "{msg}"
    );
}

#[test]
fn approval_on_permit_is_refused() {
    let msg = invalid("@id(\"a\")\n@approval(\"dba\")\npermit (principal, action, resource);");
    assert!(msg.contains("policy \"a\": @approval is only allowed on forbid"), "{msg}");
}

#[test]
fn bad_approval_and_quorum_are_refused() {
    for (text, expect) in [
        (
            "@id(\"a\") @approval(\"dba\") @quorum(\"0\") forbid (principal, action, resource);",
            "@quorum must be a whole number",
        ),
        ("@id(\"a\") @approval(\"dba\") @quorum(\"two\") forbid (principal, action, resource);", "not \"two\""),
        ("@id(\"a\") @approval(\"dba\") @quorum(\"-1\") forbid (principal, action, resource);", "@quorum must be"),
        (
            "@id(\"a\") @quorum(\"2\") forbid (principal, action, resource);",
            "@quorum is only allowed together with @approval",
        ),
        ("@id(\"a\") @approval(\"\") forbid (principal, action, resource);", "@approval needs at least one group"),
        ("@id(\"a\") @approval(\"d b a\") forbid (principal, action, resource);", "@approval: group name"),
        (
            "@id(\"a\") @aproval(\"dba\") forbid (principal, action, resource);",
            "unknown annotation @aproval; did you mean @approval?",
        ),
        ("@id(\"a\") @approval(\"dba\") @Quorum(\"2\") forbid (principal, action, resource);", "did you mean @quorum?"),
    ] {
        let msg = invalid(text);
        assert!(msg.contains(expect), "{text}\n=> {msg}");
        assert!(msg.contains("line 1, column 1: policy \"a\": "), "{msg}");
    }
    // Other annotations are fine.
    validate("@id(\"a\") @description(\"why\") @owner(\"dba\") forbid (principal, action, resource);").unwrap();
}

#[test]
fn schema_violations_are_refused_with_id_and_place() {
    let text = "@id(\"ok\")\npermit (principal, action == Action::\"connect\", resource);\n\n@id(\"typo\")\npermit (principal, action == Action::\"sql.selec\", resource);\n";
    let msg = invalid(text);
    assert!(msg.contains("line 5, column 30: policy \"typo\": unrecognized action"), "{msg}");
    assert!(msg.contains("sql.selec"), "{msg}");
    assert!(msg.contains("did you mean"), "{msg}");
    assert!(!msg.contains("policy0") && !msg.contains("policy1"), "{msg}");

    for (text, expect) in [
        ("@id(\"x\") permit (principal in Team::\"a\", action, resource);", "Team"),
        (
            "@id(\"x\") permit (principal, action == Action::\"connect\", resource) when { context.statement == \"\" };",
            "statement",
        ),
        (
            "@id(\"x\") permit (principal, action == Action::\"connect\", resource) when { resource.owner == \"a\" };",
            "owner",
        ),
        (
            "@id(\"x\") permit (principal, action == Action::\"connect\", resource) when { resource.getTag(\"env\") == \"a\" };",
            "x",
        ),
        (
            "@id(\"x\") permit (principal, action == Action::\"connect\", resource == Table::\"pg/public.t\");",
            "could never apply",
        ),
        ("@id(\"x\") forbid (principal, action == Action::\"sql.delete\", resource is Path);", "could never apply"),
        (
            "@id(\"x\") permit (principal, action, resource) when { context has path && context.path == \"/a\u{202e}b\" };",
            "x",
        ),
    ] {
        let msg = invalid(text);
        assert!(msg.contains("policy \"x\""), "{msg}");
        assert!(msg.contains(expect), "{msg}");
        assert!(msg.contains("line 1, column "), "{msg}");
    }
}

#[test]
fn templates_are_refused() {
    let msg = invalid("@id(\"t\")\npermit (principal == ?principal, action, resource);");
    assert!(msg.contains("line 1, column 1: policy templates"), "{msg}");
}

#[test]
fn every_problem_is_reported() {
    let text = "permit (principal, action, resource);\n@id(\"b\") @approval(\"dba\") permit (principal, action, resource);\n@id(\"c\") permit (principal, action == Action::\"nope\", resource);";
    let e = validate(text).unwrap_err();
    let lines: Vec<Option<u32>> = e.problems().iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![Some(1), Some(2), Some(3)], "{e}");
}

#[test]
fn set_keeps_the_old_set_after_a_bad_one() {
    let e = engine(BILLING);
    let before = e.text();
    let err = e.set("@id(\"x\") permit (principal, action == Action::\"nope\", resource);").unwrap_err();
    assert!(matches!(err, PolicyError::Invalid(_)));
    assert_eq!(e.text(), before);
    assert_eq!(e.summary().ids(), vec!["billing-read"]);
    let d = decide(&e, user("alice", &["billing"]), "sql.select", &["Table::\"pg-prod/public.invoices\""]);
    assert_eq!(d.outcome, Outcome::Allow);

    let summary = e.set(APPROVAL).unwrap();
    assert_eq!(summary.policies.len(), 5);
    assert_eq!(e.text(), APPROVAL);
    let d = decide(&e, user("alice", &["billing"]), "sql.select", &["Table::\"pg-prod/public.invoices\""]);
    assert_eq!(d.outcome, Outcome::Deny);

    // A snapshot taken before a set is unaffected by it.
    let snapshot = e.current();
    e.set("").unwrap();
    assert_eq!(snapshot.len(), 5);
    assert!(e.summary().policies.is_empty());
}

#[test]
fn line_col_counts_characters() {
    use crate::load::line_col;
    let text = "ab\nçd\n";
    assert_eq!(line_col(text, 0), (1, 1));
    assert_eq!(line_col(text, 3), (2, 1));
    assert_eq!(line_col(text, 5), (2, 2)); // after the two-byte ç
    assert_eq!(line_col(text, 4), (2, 1)); // inside ç: taken as its start
    assert_eq!(line_col(text, 100), (3, 1));
}

// ---------------------------------------------------------------- examples

fn examples_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies")
}

#[test]
fn example_files_validate() {
    let mut n = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cedar") {
            let text = std::fs::read_to_string(&path).unwrap();
            let loaded = validate(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!loaded.is_empty(), "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 4, "expected the example policy files, found {n}");
}

fn example(name: &str) -> PolicyEngine {
    engine(&std::fs::read_to_string(examples_dir().join(name)).unwrap())
}

#[test]
fn example_basic() {
    let e = example("basic.cedar");
    let alice = user("alice", &["billing"]);
    assert_eq!(decide(&e, alice.clone(), "connect", &["Connection::\"pg-prod\""]).outcome, Outcome::Allow);
    assert_eq!(decide(&e, alice.clone(), "sql.select", &["Connection::\"pg-prod\""]).outcome, Outcome::Allow);
    assert_eq!(
        decide(&e, alice.clone(), "sql.select", &["Table::\"pg-prod/public.payments\""]).outcome,
        Outcome::Allow
    );
    assert_eq!(decide(&e, alice, "sql.update", &["Table::\"pg-prod/public.payments\""]).outcome, Outcome::Deny);
    let svc = Identity::service("fn-billing", vec![]);
    assert_eq!(decide(&e, svc.clone(), "sql.select", &["Table::\"pg-prod/public.invoices\""]).outcome, Outcome::Allow);
    assert_eq!(decide(&e, svc, "sql.select", &["Table::\"pg-prod/public.payments\""]).outcome, Outcome::Deny);
    let oncall = user("o", &["oncall"]);
    let staging = [conn("pg-staging", "postgres", &[("env", "staging")])];
    let req = request(oncall, "sql.select", &["Table::\"pg-staging/public.payments\""], json!({}));
    assert_eq!(e.decide(&req, &staging).unwrap().outcome, Outcome::Allow);
    assert_eq!(e.decide(&req, &[]).unwrap().outcome, Outcome::Deny);
}

#[test]
fn example_catalog() {
    let e = example("catalog.cedar");
    let eng = user("e", &["engineers"]);
    let ask = |t: &str| decide(&e, eng.clone(), "sql.select", &[&format!("Table::\"{t}\"")]);
    assert_eq!(ask("pg-prod/pg_catalog.pg_class"), Decision::allow(ids(&["catalog-read"])));
    assert_eq!(ask("pg-prod/pg_catalog.pg_attribute").outcome, Outcome::Allow);
    assert_eq!(ask("pg-prod/information_schema.columns").outcome, Outcome::Allow);
    assert_eq!(ask("pg-prod/pg_catalog.pg_authid"), Decision::deny(ids(&["catalog-secrets"])));
    assert_eq!(ask("pg-prod/public.payments").outcome, Outcome::Deny);
    assert_eq!(ask("pg-other/pg_catalog.pg_class").outcome, Outcome::Deny);
    // A join of the catalogue with an application table is decided per table.
    let req = request(
        eng.clone(),
        "sql.select",
        &["Table::\"pg-prod/pg_catalog.pg_class\"", "Table::\"pg-prod/public.payments\""],
        json!({}),
    );
    assert_eq!(e.decide(&req, &[]).unwrap().outcome, Outcome::Deny);
}

#[test]
fn example_approval() {
    let e = example("approval.cedar");
    let eng = user("e", &["engineers"]);
    let ask = |action: &str, t: &str, ctx: serde_json::Value| {
        e.decide(&request(eng.clone(), action, &[&format!("Table::\"{t}\"")], ctx), &[]).unwrap()
    };
    let d = ask("sql.delete", "pg-prod/public.orders", json!({ "has_where": true }));
    assert_eq!(d.outcome, Outcome::Review);
    assert_eq!(d.approvers, vec![Approval { group: "dba".into(), quorum: 2 }]);
    assert_eq!(ask("sql.update", "pg-prod/public.orders", json!({ "has_where": true })).outcome, Outcome::Allow);
    let d = ask("sql.update", "pg-prod/public.orders", json!({ "has_where": false }));
    assert_eq!(d, Decision::deny(ids(&["no-update-without-where"])));
    assert_eq!(ask("sql.update", "pg-prod/public.orders", json!({})).outcome, Outcome::Deny);
    let d = ask("sql.update", "pg-prod/public.payments", json!({ "has_where": true }));
    assert_eq!(d.outcome, Outcome::Review);
    assert_eq!(
        d.approvers,
        vec![Approval { group: "dba".into(), quorum: 1 }, Approval { group: "security".into(), quorum: 1 }]
    );
    assert_eq!(ask("sql.update", "pg-prod/public.payments", json!({ "has_where": false })).outcome, Outcome::Deny);
    assert_eq!(ask("sql.select", "pg-prod/public.payments", json!({})).outcome, Outcome::Allow);
}

#[test]
fn example_http() {
    let e = example("http.cedar");
    let support = user("s", &["support"]);
    let ask = |action: &str, path: &str| {
        let req = request(
            support.clone(),
            action,
            &[&format!("Path::\"billing-api{path}\"")],
            json!({ "path": path, "method": action.trim_start_matches("http.").to_uppercase() }),
        );
        e.decide(&req, &[]).unwrap()
    };
    assert_eq!(ask("http.get", "/v1/invoices").outcome, Outcome::Allow);
    assert_eq!(ask("http.get", "/v1/invoices/42").outcome, Outcome::Allow);
    assert_eq!(ask("http.get", "/v1/customers/42").outcome, Outcome::Deny);
    let d = ask("http.post", "/v1/invoices/42/refund");
    assert_eq!(d.outcome, Outcome::Review);
    assert_eq!(d.approvers, vec![Approval { group: "finance".into(), quorum: 1 }]);
    assert_eq!(ask("http.post", "/v1/invoices/42").outcome, Outcome::Deny);
    assert_eq!(ask("http.post", "/v1/invoices").outcome, Outcome::Deny);
    assert_eq!(ask("http.delete", "/v1/invoices/42").outcome, Outcome::Deny);
}

// ---------------------------------------------------------------- properties

const GROUPS: [&str; 6] = ["g0", "g1", "g2", "g3", "g4", "g5"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Allow exactly when the principal is in a group some permit names; never without one.
    #[test]
    fn allow_only_with_a_matching_permit(
        permitted in proptest::collection::btree_set(0usize..6, 0..4),
        member_of in proptest::collection::btree_set(0usize..6, 0..6),
        forbidden in proptest::option::of(0usize..6),
    ) {
        let mut text = String::new();
        for g in &permitted {
            text.push_str(&format!(
                "@id(\"p-{g}\") permit (principal in Group::\"{}\", action == Action::\"sql.select\", resource in Connection::\"pg\");\n",
                GROUPS[*g]
            ));
        }
        if let Some(g) = forbidden {
            text.push_str(&format!(
                "@id(\"f-{g}\") forbid (principal in Group::\"{}\", action, resource);\n",
                GROUPS[g]
            ));
        }
        let e = engine(&text);
        let who = user("u", &member_of.iter().map(|g| GROUPS[*g]).collect::<Vec<_>>());
        let d = decide(&e, who, "sql.select", &["Table::\"pg/public.t\""]);
        let matching: Vec<String> = permitted.intersection(&member_of).map(|g| format!("p-{g}")).collect();
        let forbids = forbidden.is_some_and(|g| member_of.contains(&g));
        if forbids {
            prop_assert_eq!(d.outcome, Outcome::Deny);
            prop_assert_eq!(d.policies, vec![format!("f-{}", forbidden.unwrap_or_default())]);
        } else if matching.is_empty() {
            prop_assert_eq!(d, Decision::deny(vec![]));
        } else {
            prop_assert_eq!(d, Decision::allow(matching));
        }
    }

    /// A permit on a path prefix covers exactly the paths below it, segment-wise.
    #[test]
    fn path_prefix_covers_exactly_descendants(
        prefix in proptest::collection::vec("[a-c]{1,2}", 1..4),
        path in proptest::collection::vec("[a-c]{1,2}", 1..6),
    ) {
        let e = engine(&format!(
            "@id(\"p\") permit (principal, action == Action::\"http.get\", resource in Path::\"api/{}\");",
            prefix.join("/")
        ));
        let d = decide(&e, user("u", &[]), "http.get", &[&format!("Path::\"api/{}\"", path.join("/"))]);
        let below = path.len() >= prefix.len() && path[..prefix.len()] == prefix[..];
        prop_assert_eq!(d.outcome == Outcome::Allow, below);
    }
}

#[test]
fn summary_lists_approvers_and_warnings() {
    let loaded = validate(
        "@id(\"twice\") @approval(\"dba, dba , sre\") @quorum(\"3\")\nforbid (principal, action, resource);\n\
         @id(\"mixed\") permit (principal, action == Action::\"connect\", resource)\n\
         when { context has tool && context.tool == \"p\u{0430}yp\u{0430}l\" };",
    )
    .unwrap();
    let p = loaded.policy("twice").unwrap();
    assert_eq!(
        p.approvers,
        vec![Approval { group: "dba".into(), quorum: 3 }, Approval { group: "sre".into(), quorum: 3 }]
    );
    assert_eq!(p.line, Some(1));
    assert_eq!(loaded.policy("mixed").unwrap().line, Some(3));
    let warnings = &loaded.summary().warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("line 4, column "), "{warnings:?}");
    assert!(warnings[0].contains("policy \"mixed\""), "{warnings:?}");
}

#[test]
fn report_of_a_default_deny() {
    let e = engine(BILLING);
    let req = request(user("u", &[]), "sql.select", &["Table::\"pg-prod/public.invoices\""], json!({}));
    let report = e.decide_detailed(&req, &[]).unwrap().report();
    assert_eq!(report, "deny\npolicies: none (default deny: no policy permits it)");
    let req = request(user("u", &["billing"]), "sql.select", &["Table::\"pg-prod/public.invoices\""], json!({}));
    assert_eq!(e.decide_detailed(&req, &[]).unwrap().report(), "allow\npolicies: billing-read");
}

#[test]
fn a_set_mentions_the_context_attributes_its_policies_read() {
    let engine = PolicyEngine::new();
    let g0 = engine.generation();
    assert!(!engine.current().mentions("time"));
    engine
        .set(
            r#"@id("office-hours")
permit (principal, action == Action::"sql.select", resource) when { context has time && context has statement && context["statement"] like "*x*" };"#,
        )
        .unwrap();
    assert_ne!(engine.generation(), g0, "installing a set changes the generation");
    let set = engine.current();
    for word in ["time", "statement", "context", "permit"] {
        assert!(set.mentions(word), "{word}");
    }
    for word in ["has_where", "tables", "tim", "x*"] {
        assert!(!set.mentions(word), "{word}");
    }
}
