//! The classification cache: constants and comments share an entry, nothing else does.

mod common;

use std::sync::Arc;

use common::shape;
use gatehouse_sql::{Classifier, Rules, classify_uncached};
use proptest::prelude::*;

#[test]
fn statements_differing_only_in_constants_are_parsed_once() {
    let classifier = Classifier::new(64);
    for i in 0..1_000 {
        let sql = format!("SELECT * FROM t WHERE id = {i} AND name = 'n{i}' AND score > {i}.5");
        let batch = classifier.classify(&sql);
        assert_eq!(batch.statements.len(), 1);
        assert_eq!(batch.statements[0].text, sql);
        assert_eq!(common::accesses(&batch.statements[0]), vec!["select t"]);
    }
    assert_eq!(classifier.stats(), (999, 1));
}

#[test]
fn a_text_sent_again_is_kept_by_its_text_and_only_then() {
    let classifier = Classifier::new(64);
    for i in 0..100 {
        classifier.classify(&format!("SELECT * FROM t WHERE id = {i}"));
    }
    assert!(format!("{classifier:?}").contains("exact: 0"), "texts seen once are not kept: {classifier:?}");
    let sql = "SELECT a FROM t WHERE id = $1; DELETE FROM u WHERE id = $2";
    let first = classifier.classify(sql);
    for _ in 0..3 {
        let again = classifier.classify(sql);
        assert!(Arc::ptr_eq(&first, &again));
    }
    assert!(format!("{classifier:?}").contains("exact: 1"), "{classifier:?}");
    assert_eq!(*first, classify_uncached(sql, &Rules::default()));
    assert_eq!(classifier.stats(), (102, 2));
}

#[test]
fn differently_shaped_statements_never_share_an_entry() {
    let classifier = Classifier::new(64);
    let inputs = [
        "SELECT a FROM t",
        "SELECT b FROM t",
        "select a from \"T\"",
        "select a from T",
        "SELECT a FROM t WHERE x = $1",
        "SELECT a FROM t WHERE x = $2",
        "SELECT a FROM t WHERE x = 1",
        "SELECT a FROM t WHERE x = 1.5",
        "SELECT a FROM t WHERE x = '1'",
        "SELECT a FROM s.t",
        "COPY t FROM STDIN",
        "COPY t FROM '/etc/passwd'",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "SELECT * FROM U&\"d!0061ta\" UESCAPE '!'",
        "SELECT * FROM U&\"d!0061ta\" UESCAPE '#'",
    ];
    for sql in inputs {
        classifier.classify(sql);
    }
    assert_eq!(classifier.stats(), (0, inputs.len() as u64));
    // And each classification is its own.
    for sql in inputs {
        assert_eq!(*classifier.classify(sql), classify_uncached(sql, &Rules::default()), "{sql}");
    }
    let read_only = classifier.classify("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY");
    assert!(read_only.statements[0].connect_only);
    let read_write = classifier.classify("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE");
    assert!(read_write.statements[0].is_admin());
    let escaped = classifier.classify("SELECT * FROM U&\"d!0061ta\" UESCAPE '#'");
    assert_eq!(escaped.statements[0].tables[0].name, "d!0061ta");
}

#[test]
fn an_empty_file_name_does_not_pass_for_stdin() {
    let classifier = Classifier::new(64);
    for sql in ["COPY t FROM ''", "COPY t FROM '/etc/passwd'", "COPY t FROM ''"] {
        let batch = classifier.classify(sql);
        assert!(batch.statements[0].is_admin(), "{sql}");
    }
    assert!(!classifier.classify("COPY t FROM STDIN").statements[0].is_admin());
}

#[test]
fn a_hit_cuts_each_statement_text_from_the_new_input() {
    let classifier = Classifier::new(64);
    classifier.classify("SELECT 1; DELETE FROM t WHERE id = 5");
    let batch = classifier.classify("  SELECT 22 ;\n\n DELETE FROM t WHERE id = 77 -- trailing\n");
    assert_eq!(classifier.stats(), (1, 1));
    let texts: Vec<&str> = batch.statements.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts, ["SELECT 22", "DELETE FROM t WHERE id = 77"]);
    assert_eq!(batch.statements[1].has_where, Some(true));
}

#[test]
fn comments_share_an_entry() {
    let classifier = Classifier::new(64);
    classifier.classify("SELECT * FROM t /* traceparent='00-aaa-01' */");
    let batch = classifier.classify("SELECT * FROM t /* traceparent='00-bbb-01' */");
    assert_eq!(classifier.stats(), (1, 1));
    assert_eq!(batch.statements[0].text, "SELECT * FROM t");
    // Whitespace is not part of the key either: the grammar only sees tokens.
    classifier.classify("SELECT a/**/FROM s.t WHERE b=1");
    let batch = classifier.classify("SELECT a\n  FROM s . t\n WHERE b = 2");
    assert_eq!(classifier.stats(), (2, 2));
    assert_eq!(batch.statements[0].text, "SELECT a\n  FROM s . t\n WHERE b = 2");
    assert_eq!(batch.statements[0].tables[0].to_string(), "s.t");
    // N'…' is a national character constant only when the quote follows at once.
    classifier.classify("SELECT N'x'");
    assert_eq!(*classifier.classify("SELECT N'y'"), classify_uncached("SELECT N'y'", &Rules::default()));
    assert_eq!(classifier.stats(), (3, 3));
}

#[test]
fn the_same_input_returns_the_same_batch() {
    let classifier = Classifier::new(64);
    let first = classifier.classify("SELECT * FROM t WHERE id = 1");
    let second = classifier.classify("SELECT * FROM t WHERE id = 1");
    assert!(Arc::ptr_eq(&first, &second));
}

#[test]
fn fingerprints_follow_the_entry() {
    let classifier = Classifier::new(64);
    // libpg_query's own fingerprint keeps these constants; the classifier's does not, so inputs
    // that share an entry share a fingerprint whichever came first.
    for (a, b) in [
        ("SELECT current_time(3)", "SELECT current_time(6)"),
        ("DO $$ BEGIN NULL; END $$", "DO $$ BEGIN PERFORM 1; END $$"),
    ] {
        let first = classifier.classify(a);
        let second = classifier.classify(b);
        assert_eq!(first.statements[0].fingerprint, second.statements[0].fingerprint, "{a} / {b}");
        assert_eq!(*second, classify_uncached(b, &Rules::default()));
    }
    let batch = classifier.classify("SELECT * FROM t WHERE id = 1");
    let other = classifier.classify("SELECT * FROM u WHERE id = 1");
    assert_ne!(batch.statements[0].fingerprint, other.statements[0].fingerprint);
}

#[test]
fn failures_are_not_cached() {
    let classifier = Classifier::new(64);
    for _ in 0..3 {
        assert!(classifier.classify("SELEKT 1").statements[0].is_admin());
        assert!(classifier.classify("SELECT 'open").statements[0].is_admin());
    }
    assert_eq!(classifier.stats(), (0, 6));
}

#[test]
fn long_inputs_are_not_cached() {
    let classifier = Classifier::new(64);
    let sql = format!("SELECT * FROM t WHERE a IN ({})", vec!["1"; 20_000].join(", "));
    assert!(sql.len() > 32 * 1024);
    classifier.classify(&sql);
    classifier.classify(&sql);
    assert_eq!(classifier.stats(), (0, 2));
}

#[test]
fn the_cache_is_bounded() {
    let classifier = Classifier::new(2);
    classifier.classify("SELECT a FROM t");
    classifier.classify("SELECT b FROM t");
    classifier.classify("SELECT c FROM t");
    classifier.classify("SELECT a FROM t");
    assert_eq!(classifier.stats(), (0, 4));
    classifier.classify("SELECT c FROM t");
    assert_eq!(classifier.stats(), (1, 4));

    let uncached = Classifier::new(0);
    uncached.classify("SELECT 1");
    uncached.classify("SELECT 1");
    assert_eq!(uncached.stats(), (0, 2));
}

#[test]
fn shared_between_threads() {
    let classifier = Arc::new(Classifier::new(64));
    let handles: Vec<_> = (0..4)
        .map(|n| {
            let classifier = classifier.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let batch = classifier.classify(&format!("UPDATE t SET a = {i} WHERE id = {n}"));
                    assert_eq!(common::accesses(&batch.statements[0]), vec!["update t"]);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let (hits, misses) = classifier.stats();
    assert_eq!(hits + misses, 800);
    assert!(misses <= 4, "{misses} misses");
}

#[test]
fn widened_rules_apply() {
    let classifier = Classifier::with_rules(16, Rules::default().allow_functions(["crypt"]));
    assert!(!classifier.classify("SELECT crypt('a', 'b')").statements[0].is_admin());
    assert!(Classifier::new(16).classify("SELECT crypt('a', 'b')").statements[0].is_admin());
}

/// Statement templates with holes for constants: `{i}` integer, `{f}` numeric, `{s}` string,
/// `{c}` comment text. Integers stay below 2^31 and numbers stay positive, so that the tokens
/// are the same kind (a larger integer is a numeric token; a negative number is `-` and a
/// number): the cache is asserted to be hit.
const TEMPLATES: &[&str] = &[
    "SELECT * FROM t WHERE id = {i}",
    "SELECT a, b FROM s.t WHERE name = {s} AND score > {f} ORDER BY 1 LIMIT {i}",
    "INSERT INTO t (a, b, c) VALUES ({i}, {s}, {f}) ON CONFLICT (a) DO UPDATE SET b = {s}",
    "UPDATE t SET a = {s} WHERE id = {i} RETURNING *",
    "DELETE FROM t WHERE created < now() - interval {s} AND id <> {i}",
    "WITH x AS (SELECT * FROM t WHERE a = {i}) SELECT * FROM x JOIN u ON u.id = x.id WHERE u.b = {s}",
    "SELECT {s}::regclass, has_table_privilege({s}, 'select'), pg_sleep({f})",
    "SELECT set_config({s}, {s}, false)",
    "SELECT query_to_xml({s}, true, true, {s})",
    "SET application_name = {s}; SET statement_timeout = {i}; SELECT {i}",
    "SET search_path = {s}",
    "COPY t FROM {s}",
    "DO {s}",
    "SELECT current_time({i}), {i} + {f}, B'1010', X'ff', E'\\n', lower({s})",
    "BEGIN; UPDATE t SET a = a + {i} WHERE id = {i}; COMMIT",
    "SELECT * FROM t WHERE a IN ({i}, {i}, {i}) AND b = ANY(ARRAY[{s}, {s}]) /* {c} */",
    "SELECT jsonb_build_object({s}, {i}) ->> {s}, to_char(now(), {s}) FROM t WHERE x ~ {s}",
    "EXPLAIN ANALYZE SELECT * FROM t WHERE id = {i}",
    "PREPARE p AS SELECT * FROM t WHERE id = $1 AND b = {s}",
    "EXECUTE p({i}, {s})",
];

fn fill(template: &str, ints: &[u64], floats: &[f64], strings: &[String], comment: &str) -> String {
    let mut out = String::new();
    let (mut i, mut f, mut s) = (0, 0, 0);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let hole = &rest[start..start + 3];
        match hole {
            "{i}" => {
                out.push_str(&ints[i % ints.len()].to_string());
                i += 1;
            }
            "{f}" => {
                out.push_str(&format!("{:.3}", floats[f % floats.len()]));
                f += 1;
            }
            "{s}" => {
                let value = &strings[s % strings.len()];
                // Alternate between standard and dollar quoting.
                if s % 2 == 0 {
                    out.push('\'');
                    out.push_str(&value.replace('\'', "''"));
                    out.push('\'');
                } else {
                    out.push_str("$q$");
                    out.push_str(&value.replace('$', ""));
                    out.push_str("$q$");
                }
                s += 1;
            }
            _ => out.push_str(&comment.replace("*/", "").replace("/*", "")),
        }
        rest = &rest[start + 3..];
    }
    out.push_str(rest);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever constants fill a template, the classification is the same, and what the cache
    /// returns equals a fresh classification of the very same text.
    #[test]
    fn constants_never_change_the_classification(
        template in 0..TEMPLATES.len(),
        first in (prop::collection::vec(0..=i32::MAX as u64, 1..4), prop::collection::vec(0f64..1e9, 1..3),
            prop::collection::vec("[ -~]{0,24}", 1..4), "[ -~]{0,16}"),
        second in (prop::collection::vec(0..=i32::MAX as u64, 1..4), prop::collection::vec(0f64..1e9, 1..3),
            prop::collection::vec("[ -~]{0,24}", 1..4), "[ -~]{0,16}"),
    ) {
        let template = TEMPLATES[template];
        let a = fill(template, &first.0, &first.1, &first.2, &first.3);
        let b = fill(template, &second.0, &second.1, &second.2, &second.3);
        let rules = Rules::default();
        let classifier = Classifier::new(8);
        let cached_a = classifier.classify(&a);
        let cached_b = classifier.classify(&b);
        let fresh_a = classify_uncached(&a, &rules);
        let fresh_b = classify_uncached(&b, &rules);
        prop_assert_eq!(&*cached_a, &fresh_a);
        prop_assert_eq!(&*cached_b, &fresh_b);
        prop_assert_eq!(fresh_a.statements.len(), fresh_b.statements.len());
        for (x, y) in fresh_a.statements.iter().zip(&fresh_b.statements) {
            prop_assert_eq!(shape(x), shape(y));
            prop_assert!(b.contains(&y.text));
            prop_assert!(!x.accesses.is_empty() || x.connect_only);
        }
        prop_assert_eq!(classifier.stats(), (1, 1));
    }

    /// Arbitrary text never panics, and whatever it is, the cache agrees with a fresh look.
    #[test]
    fn arbitrary_text_is_classified_consistently(sql in "[ -~\n]{0,80}", other in "[ -~\n]{0,80}") {
        let classifier = Classifier::new(8);
        let rules = Rules::default();
        for text in [&sql, &other, &sql] {
            let batch = classifier.classify(text);
            prop_assert_eq!(&*batch, &classify_uncached(text, &rules));
            for statement in &batch.statements {
                prop_assert!(!statement.accesses.is_empty() || statement.connect_only);
                prop_assert_eq!(statement.is_admin(), statement.error.is_some());
            }
        }
    }
}

/// A random query over tables `t0`…`t9`, nesting subqueries, joins, set operations, `EXISTS`,
/// scalar subqueries and `WITH`.
#[derive(Clone, Debug)]
enum Query {
    Table(u8, i32),
    From(Box<Query>),
    Join(Box<Query>, Box<Query>),
    Union(Box<Query>, Box<Query>),
    Exists(Box<Query>, Box<Query>),
    Scalar(Box<Query>, Box<Query>),
    With(Box<Query>, Box<Query>),
}

fn query() -> impl Strategy<Value = Query> {
    let leaf = (0u8..10, 0..i32::MAX).prop_map(|(t, c)| Query::Table(t, c));
    leaf.prop_recursive(5, 48, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|q| Query::From(Box::new(q))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Query::Join(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Query::Union(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Query::Exists(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Query::Scalar(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| Query::With(Box::new(a), Box::new(b))),
        ]
    })
}

/// The SQL of `q` (constants shifted by `shift`), and the tables it reads.
fn render(q: &Query, shift: i32, tables: &mut std::collections::BTreeSet<String>) -> String {
    match q {
        Query::Table(t, c) => {
            tables.insert(format!("t{t}"));
            format!("SELECT * FROM t{t} WHERE a = {}", c.wrapping_add(shift).unsigned_abs())
        }
        Query::From(a) => format!("SELECT * FROM ({}) s", render(a, shift, tables)),
        Query::Join(a, b) => {
            format!("SELECT * FROM ({}) x JOIN ({}) y ON true", render(a, shift, tables), render(b, shift, tables))
        }
        Query::Union(a, b) => format!("({}) UNION ALL ({})", render(a, shift, tables), render(b, shift, tables)),
        Query::Exists(a, b) => {
            format!("SELECT * FROM ({}) x WHERE EXISTS ({})", render(a, shift, tables), render(b, shift, tables))
        }
        Query::Scalar(a, b) => {
            format!("SELECT ({} LIMIT 1) AS v FROM ({}) x", render(b, shift, tables), render(a, shift, tables))
        }
        Query::With(a, b) => {
            format!("WITH c AS ({}) SELECT * FROM c, ({}) y", render(a, shift, tables), render(b, shift, tables))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// However a query nests, every table it reads is reported as a select (and nothing else),
    /// `WITH` names are not tables, and the cache agrees with a fresh classification.
    #[test]
    fn nested_queries_report_every_table(q in query(), shift in 1..1000i32) {
        let mut tables = std::collections::BTreeSet::new();
        let sql = render(&q, 0, &mut tables);
        let other = render(&q, shift, &mut std::collections::BTreeSet::new());
        let classifier = Classifier::new(8);
        classifier.classify(&sql);
        let batch = classifier.classify(&other);
        prop_assert_eq!(classifier.stats(), (1, 1));
        prop_assert_eq!(&*batch, &classify_uncached(&other, &Rules::default()));
        let statement = &batch.statements[0];
        let found: std::collections::BTreeSet<String> = statement.tables.iter().map(|t| t.to_string()).collect();
        prop_assert_eq!(&found, &tables);
        let mut expected = tables.iter().map(|t| format!("select {t}")).collect::<Vec<_>>();
        expected.sort();
        prop_assert_eq!(common::accesses(statement), expected);
    }
}
