//! Helpers shared by the integration tests.

#![allow(dead_code)]

use gatehouse_sql::{Action, Classifier, Object, Statement, classify_uncached};

/// The only statement of `sql`, classified without a cache.
pub fn one(sql: &str) -> Statement {
    let batch = classify_uncached(sql, &Default::default());
    match batch.statements.as_slice() {
        [statement] => statement.clone(),
        other => panic!("{sql:?} should be one statement: {other:#?}"),
    }
}

/// `["select t", "insert s.u", "admin conn"]`, sorted.
pub fn accesses(statement: &Statement) -> Vec<String> {
    let mut out: Vec<String> = statement
        .accesses
        .iter()
        .map(|a| {
            let action = a.action.as_str().trim_start_matches("sql.");
            match &a.object {
                Object::Connection => format!("{action} conn"),
                Object::Table(t) => format!("{action} {t}"),
            }
        })
        .collect();
    out.sort();
    out
}

pub fn sorted(expected: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

/// Asserts the accesses of the single statement `sql`.
#[track_caller]
pub fn expect(sql: &str, expected: &[&str]) -> Statement {
    let statement = one(sql);
    assert_eq!(accesses(&statement), sorted(expected), "accesses of {sql:?}: {statement:#?}");
    if statement.is_admin() {
        assert!(statement.error.is_some(), "sql.admin without a reason for {sql:?}");
    }
    assert_eq!(statement.connect_only, statement.accesses.is_empty(), "{sql:?}");
    statement
}

/// Asserts `sql` is one `sql.admin` statement whose error mentions `reason`.
#[track_caller]
pub fn expect_admin(sql: &str, reason: &str) -> Statement {
    let statement = one(sql);
    assert!(statement.is_admin(), "{sql:?} should be sql.admin: {statement:#?}");
    let error = statement.error.clone().unwrap_or_default();
    assert!(error.contains(reason), "error of {sql:?} should mention {reason:?}: {error:?}");
    statement
}

#[track_caller]
pub fn expect_connect_only(sql: &str) -> Statement {
    let statement = one(sql);
    assert!(statement.connect_only, "{sql:?} should be connect-only: {statement:#?}");
    assert!(statement.accesses.is_empty());
    assert_eq!(statement.error, None);
    statement
}

/// A statement's classification without its text: what must not depend on constants.
pub fn shape(statement: &Statement) -> Statement {
    Statement { text: String::new(), ..statement.clone() }
}

pub fn has_action(statement: &Statement, action: Action) -> bool {
    statement.accesses.iter().any(|a| a.action == action)
}

pub fn classifier() -> Classifier {
    Classifier::new(1024)
}
