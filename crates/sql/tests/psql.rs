//! psql's own catalogue queries (captured with `psql -E` from psql 15 for `\d t`, `\dt`, `\df`,
//! `\l+`, `\z` and others) are selects on `pg_catalog` tables calling allow-listed functions, so
//! a policy that permits reading the catalogue lets psql describe the database.

mod common;

use gatehouse_sql::{Action, Classifier, Object};

const QUERIES: &str = include_str!("data/psql15_catalogue_queries.txt");

/// `(psql command, query)` pairs from the capture.
fn queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut command = String::new();
    for chunk in QUERIES.split("\n---\n") {
        let mut query = String::new();
        for line in chunk.lines() {
            match line.strip_prefix("### ") {
                Some(c) => command = c.to_string(),
                None => {
                    query.push_str(line);
                    query.push('\n');
                }
            }
        }
        if !query.trim().is_empty() {
            out.push((command.clone(), query));
        }
    }
    out
}

#[test]
fn psql_describes_with_catalogue_selects_only() {
    let queries = queries();
    assert!(queries.len() >= 50, "{} queries", queries.len());
    let classifier = Classifier::new(256);
    for (command, query) in &queries {
        let batch = classifier.classify(query);
        assert_eq!(batch.statements.len(), 1, "{command}: {query}");
        let statement = &batch.statements[0];
        assert_eq!(statement.error, None, "{command}: {query}");
        for access in &statement.accesses {
            assert_eq!(access.action, Action::Select, "{command}: {query}");
            if let Object::Table(table) = &access.object {
                assert!(
                    table.schema.as_deref() == Some("pg_catalog") || table.name.starts_with("pg_"),
                    "{command}: {table} is not a catalogue table"
                );
            }
        }
    }
}

#[test]
fn psql_d_table() {
    let (_, query) = queries().into_iter().find(|(c, q)| c == "\\d t" && q.contains("format_type")).unwrap();
    let statement = common::one(&query);
    let tables: Vec<String> = statement.tables.iter().map(|t| t.to_string()).collect();
    assert_eq!(
        tables,
        ["pg_catalog.pg_attribute", "pg_catalog.pg_attrdef", "pg_catalog.pg_collation", "pg_catalog.pg_type"]
    );
    assert_eq!(statement.functions, ["format_type", "pg_get_expr"]);
}

#[test]
fn hand_written_catalogue_queries() {
    // What `\dt` sends.
    common::expect(
        "SELECT n.nspname as \"Schema\", c.relname as \"Name\", \
         CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table' END as \"Type\", \
         pg_catalog.pg_get_userbyid(c.relowner) as \"Owner\" \
         FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r','p','') AND n.nspname <> 'pg_catalog' AND n.nspname !~ '^pg_toast' \
         AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1,2;",
        &["select pg_catalog.pg_class", "select pg_catalog.pg_namespace"],
    );
    // A driver's type lookup (pgjdbc, psycopg) and an unqualified catalogue read.
    common::expect(
        "SELECT t.oid, t.typname, format_type(t.oid, NULL), array_to_string(ARRAY(SELECT e.enumlabel FROM pg_enum e \
         WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder), ',') FROM pg_type t WHERE t.typname = $1",
        &["select pg_type", "select pg_enum"],
    );
    common::expect(
        "SELECT obj_description('t'::regclass, 'pg_class'), col_description('t'::regclass, 1), \
         pg_get_viewdef('v'::regclass, true), pg_get_serial_sequence('t', 'id'), \
         has_table_privilege('t', 'SELECT'), pg_relation_size('t'), pg_size_pretty(pg_total_relation_size('t'))",
        &["select conn"],
    );
}
