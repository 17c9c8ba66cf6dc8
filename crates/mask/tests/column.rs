//! `--mask-column` pattern parsing and matching.

#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test

use gatehouse_mask::{ColumnPattern, MaskError, NamePattern};

fn parse(s: &str) -> ColumnPattern {
    s.parse().unwrap()
}

fn reason(s: &str) -> String {
    match ColumnPattern::parse(s) {
        Err(MaskError::ColumnPattern { pattern, reason }) => {
            assert_eq!(pattern, s);
            reason
        }
        other => panic!("{s:?} should not parse: {other:?}"),
    }
}

#[test]
fn exact_names() {
    let p = parse("public.users.email");
    assert!(p.matches("public", "users", "email"));
    assert!(p.matches("PUBLIC", "Users", "EMAIL"), "unquoted names compare case-insensitively");
    assert!(!p.matches("public", "users", "email2"));
    assert!(!p.matches("public", "user", "email"));
    assert!(!p.matches("billing", "users", "email"));
    assert_eq!(p.schema, NamePattern::Name("public".into()));
}

#[test]
fn wildcards() {
    let any_ssn = parse("*.*.ssn");
    assert!(any_ssn.matches("public", "people", "ssn"));
    assert!(any_ssn.matches("hr", "employees", "SSN"));
    assert!(!any_ssn.matches("hr", "employees", "ssn_last4"));

    let users = parse("public.users.*");
    assert!(users.matches("public", "users", "anything"));
    assert!(!users.matches("public", "orders", "anything"));

    let all = parse("*.*.*");
    assert!(all.matches("a", "b", "c"));
    assert_eq!(all.column, NamePattern::Any);
}

#[test]
fn quoted_names() {
    let p = parse(r#""My.Schema".users."e*mail""#);
    assert_eq!(p.schema, NamePattern::Quoted("My.Schema".into()));
    assert!(p.matches("My.Schema", "users", "e*mail"));
    assert!(!p.matches("my.schema", "users", "e*mail"), "quoted names compare exactly");
    assert!(!p.matches("My.Schema", "users", "email"), "`*` inside quotes is literal");

    let q = parse(r#"public."say ""hi""".*"#);
    assert!(q.matches("public", r#"say "hi""#, "x"));
}

#[test]
fn display_round_trips() {
    for s in ["public.users.email", "*.*.ssn", "public.users.*", r#""My.Schema".users."say ""hi""""#] {
        let p = parse(s);
        assert_eq!(p.to_string(), s);
        assert_eq!(parse(&p.to_string()), p);
    }
}

#[test]
fn serde_uses_the_text() {
    let p: ColumnPattern = serde_json::from_str(r#""*.*.ssn""#).unwrap();
    assert_eq!(p, parse("*.*.ssn"));
    assert_eq!(serde_json::to_string(&p).unwrap(), r#""*.*.ssn""#);
    let err = serde_json::from_str::<ColumnPattern>(r#""users.ssn""#).unwrap_err();
    assert!(err.to_string().contains("3 dot-separated parts"), "{err}");
}

#[test]
fn parse_errors() {
    assert!(reason("users.email").contains("found 2"));
    assert!(reason("email").contains("found 1"));
    assert!(reason("a.b.c.d").contains("found more"));
    assert!(reason("public.users.email.").contains("found more"));
    assert!(reason("").contains("schema part is empty"));
    assert!(reason("public..email").contains("table part is empty"));
    assert!(reason("public.users.").contains("column part is empty"));
    assert!(reason(".users.email").contains("schema part is empty"));
    assert!(reason("public.us*rs.email").contains("`*` stands for a whole name"));
    assert!(reason("public.users.*mail").contains("`*mail`"));
    assert!(reason("public.**.email").contains("whole name"));
    assert!(reason("public. users.email").contains("spaces"));
    assert!(reason(r#"public."users.email"#).contains("not closed"));
    assert!(reason(r#"public."users"x.email"#).contains("after the quoted table"));
    assert!(reason(r#"public."".email"#).contains("table name is empty"));
    assert!(reason(r#"public.us"ers.email"#).contains("quote"));
}
