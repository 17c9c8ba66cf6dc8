//! DESIGN.md's classification rules, one table of cases per rule.

mod common;

use common::{expect, expect_admin, expect_connect_only, one};
use gatehouse_sql::{Action, Classifier, CopyDirection, Object, StatementTag, TableRef, classify_uncached};

#[test]
fn statements_without_tables_are_decided_on_the_connection() {
    for sql in [
        "SELECT 1",
        "SELECT now()",
        "SELECT current_timestamp, current_user, localtime, session_user",
        "SELECT coalesce(NULL, 1), nullif(1, 2), greatest(1, 2), least(1, 2)",
        "VALUES (1), (2)",
        "SELECT pg_sleep(0.1)",
        "SELECT pg_catalog.lower('A')",
        "SELECT current_setting('search_path')",
        "SELECT 'pg_catalog.pg_authid'::regclass",
        "SELECT * FROM generate_series(1, 10) AS g(i)",
        "SELECT $1::int + $2",
        "SELECT CASE WHEN 1 = 1 THEN 'a' ELSE 'b' END",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r",
    ] {
        expect(sql, &["select conn"]);
    }
}

#[test]
fn every_table_read_is_a_select() {
    let cases: &[(&str, &[&str])] = &[
        ("SELECT * FROM t", &["select t"]),
        ("TABLE t", &["select t"]),
        ("SELECT a FROM s.t", &["select s.t"]),
        ("SELECT a FROM db.s.t", &["select s.t"]),
        ("SELECT * FROM \"Weird Name\"", &["select Weird Name"]),
        (
            "SELECT * FROM t JOIN u USING (id) LEFT JOIN v ON v.id = t.id CROSS JOIN w",
            &["select t", "select u", "select v", "select w"],
        ),
        ("SELECT * FROM (SELECT * FROM t) x", &["select t"]),
        ("SELECT * FROM t, LATERAL (SELECT * FROM u WHERE u.id = t.id) x", &["select t", "select u"]),
        ("SELECT 1 FROM t WHERE id IN (SELECT id FROM u)", &["select t", "select u"]),
        ("SELECT 1 WHERE EXISTS (SELECT 1 FROM secrets)", &["select secrets"]),
        ("SELECT (SELECT max(x) FROM u) FROM t", &["select t", "select u"]),
        ("SELECT a FROM t GROUP BY a HAVING count(*) > (SELECT count(*) FROM u)", &["select t", "select u"]),
        ("SELECT a FROM t ORDER BY (SELECT b FROM u LIMIT 1)", &["select t", "select u"]),
        ("SELECT ARRAY(SELECT a FROM t)", &["select t"]),
        ("SELECT JSON_ARRAY(SELECT a FROM t)", &["select t"]),
        ("SELECT CASE WHEN EXISTS (SELECT 1 FROM u) THEN 1 END", &["select u"]),
        ("SELECT 1 = ANY (SELECT a FROM v)", &["select v"]),
        ("SELECT sum(a) OVER w FROM t WINDOW w AS (PARTITION BY b)", &["select t"]),
        ("SELECT a, b, count(*) FROM t GROUP BY GROUPING SETS ((a), (b))", &["select t"]),
        ("SELECT * FROM t TABLESAMPLE BERNOULLI (10) REPEATABLE (1)", &["select t"]),
        (
            "SELECT a FROM t UNION SELECT a FROM u INTERSECT SELECT a FROM v EXCEPT SELECT a FROM w",
            &["select t", "select u", "select v", "select w"],
        ),
        ("(SELECT a FROM t) UNION ALL (SELECT a FROM u ORDER BY a LIMIT 1)", &["select t", "select u"]),
        ("SELECT * FROM t WHERE a = $1 AND b = $2", &["select t"]),
        ("SELECT * FROM pg_catalog.pg_type", &["select pg_catalog.pg_type"]),
        ("SELECT oid FROM pg_class", &["select pg_class"]),
        ("SELECT * FROM information_schema.tables", &["select information_schema.tables"]),
        ("SELECT * FROM v_view_is_a_table", &["select v_view_is_a_table"]),
    ];
    for (sql, expected) in cases {
        let statement = expect(sql, expected);
        assert_eq!(statement.tag, StatementTag::Select, "{sql}");
        assert_eq!(statement.has_where, None, "{sql}");
    }
    let pg_class = one("SELECT oid FROM pg_class");
    assert_eq!(pg_class.tables, vec![TableRef { schema: None, name: "pg_class".into() }]);
    let pg_type = one("SELECT * FROM pg_catalog.pg_type");
    assert_eq!(pg_type.tables, vec![TableRef { schema: Some("pg_catalog".into()), name: "pg_type".into() }]);
}

#[test]
fn with_queries_are_not_tables_where_they_are_in_scope() {
    let cases: &[(&str, &[&str])] = &[
        ("WITH x AS (SELECT * FROM t) SELECT * FROM x", &["select t"]),
        ("WITH x AS (SELECT * FROM t), y AS (SELECT * FROM x) SELECT * FROM y", &["select t"]),
        // Without RECURSIVE a query does not see itself: the inner x is the table x.
        ("WITH x AS (SELECT * FROM x) SELECT * FROM x", &["select x"]),
        // Nor the ones after it.
        ("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a", &["select b"]),
        ("WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a", &["select conn"]),
        // A WITH inside a subquery is not in scope outside it.
        ("SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x) a, x", &["select x"]),
        // A qualified name is never a WITH query.
        ("WITH t AS (SELECT 1) SELECT * FROM public.t", &["select public.t"]),
        ("WITH x AS (SELECT * FROM t) SELECT * FROM x UNION SELECT * FROM x", &["select t"]),
        (
            "WITH RECURSIVE tree AS (SELECT id, parent FROM nodes WHERE parent IS NULL \
             UNION ALL SELECT n.id, n.parent FROM nodes n JOIN tree ON n.parent = tree.id) SELECT * FROM tree",
            &["select nodes"],
        ),
    ];
    for (sql, expected) in cases {
        expect(sql, expected);
    }
}

#[test]
fn writes_and_what_they_read() {
    let cases: &[(&str, &[&str], StatementTag, Option<bool>)] = &[
        ("INSERT INTO t (a) VALUES (1)", &["insert t"], StatementTag::Insert, None),
        ("INSERT INTO t DEFAULT VALUES", &["insert t"], StatementTag::Insert, None),
        (
            "INSERT INTO s.t SELECT * FROM u JOIN v USING (id)",
            &["insert s.t", "select u", "select v"],
            StatementTag::Insert,
            None,
        ),
        ("INSERT INTO t VALUES ((SELECT max(a) FROM u))", &["insert t", "select u"], StatementTag::Insert, None),
        ("INSERT INTO t VALUES (1) RETURNING id", &["insert t", "select t"], StatementTag::Insert, None),
        (
            "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = excluded.a",
            &["insert t", "update t"],
            StatementTag::Insert,
            None,
        ),
        ("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", &["insert t"], StatementTag::Insert, None),
        ("UPDATE t SET a = 1 WHERE id = 2", &["update t"], StatementTag::Update, Some(true)),
        ("UPDATE t SET a = 1", &["update t"], StatementTag::Update, Some(false)),
        ("UPDATE t SET a = u.a FROM u WHERE t.id = u.id", &["update t", "select u"], StatementTag::Update, Some(true)),
        (
            "UPDATE t SET a = (SELECT b FROM u LIMIT 1) WHERE id = 1",
            &["update t", "select u"],
            StatementTag::Update,
            Some(true),
        ),
        ("UPDATE t SET a = 1 WHERE id = 1 RETURNING *", &["update t", "select t"], StatementTag::Update, Some(true)),
        ("DELETE FROM t WHERE id = 1", &["delete t"], StatementTag::Delete, Some(true)),
        ("DELETE FROM t", &["delete t"], StatementTag::Delete, Some(false)),
        ("DELETE FROM t USING u WHERE t.id = u.id", &["delete t", "select u"], StatementTag::Delete, Some(true)),
        ("DELETE FROM t WHERE id IN (SELECT id FROM u)", &["delete t", "select u"], StatementTag::Delete, Some(true)),
        ("DELETE FROM t WHERE CURRENT OF c", &["delete t"], StatementTag::Delete, Some(true)),
        ("DELETE FROM t RETURNING *", &["delete t", "select t"], StatementTag::Delete, Some(false)),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a \
             WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.a)",
            &["insert t", "update t", "delete t", "select s"],
            StatementTag::Merge,
            None,
        ),
        (
            "MERGE INTO t USING (SELECT * FROM s JOIN u USING (id)) q ON t.id = q.id WHEN MATCHED THEN DELETE",
            &["insert t", "update t", "delete t", "select s", "select u"],
            StatementTag::Merge,
            None,
        ),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE RETURNING merge_action(), t.*",
            &["insert t", "update t", "delete t", "select s", "select t"],
            StatementTag::Merge,
            None,
        ),
        ("TRUNCATE t, s.u", &["delete t", "delete s.u"], StatementTag::Other("TRUNCATE TABLE".into()), Some(false)),
    ];
    for (sql, expected, tag, has_where) in cases {
        let statement = expect(sql, expected);
        assert_eq!(&statement.tag, tag, "{sql}");
        assert_eq!(&statement.has_where, has_where, "{sql}");
    }
}

#[test]
fn writable_with_queries_are_the_write_they_perform() {
    let cases: &[(&str, &[&str], Option<bool>)] = &[
        (
            "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) INSERT INTO archive SELECT * FROM d",
            &["delete t", "select t", "insert archive"],
            Some(true),
        ),
        // A DELETE without WHERE hidden in a WITH still says so.
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", &["delete t", "select t"], Some(false)),
        (
            "WITH u AS (UPDATE t SET a = 1 WHERE id = 2 RETURNING a) SELECT * FROM u",
            &["update t", "select t"],
            Some(true),
        ),
        (
            "WITH a AS (UPDATE t SET a = 1 WHERE id = 2), b AS (DELETE FROM u) SELECT 1",
            &["update t", "delete u", "select conn"],
            Some(false),
        ),
        ("WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT * FROM i", &["insert t", "select t"], None),
        // The target of a write is always a table, even with a WITH query of that name.
        ("WITH t AS (SELECT 1) INSERT INTO t VALUES (1)", &["insert t"], None),
    ];
    for (sql, expected, has_where) in cases {
        let statement = one(sql);
        let mut got = common::accesses(&statement);
        // `select conn` only appears when nothing else does; it is listed above for clarity.
        let mut want = common::sorted(expected);
        want.retain(|a| a != "select conn" || got.contains(a));
        got.sort();
        assert_eq!(got, want, "{sql}: {statement:#?}");
        assert_eq!(&statement.has_where, has_where, "{sql}");
    }
}

#[test]
fn select_into_and_create_as_are_ddl_plus_their_reads() {
    let cases: &[(&str, &[&str])] = &[
        ("SELECT * INTO newt FROM t", &["ddl newt", "select t"]),
        ("SELECT a INTO TEMP newt FROM t UNION SELECT a FROM u", &["ddl newt", "select t", "select u"]),
        ("CREATE TABLE newt AS SELECT * FROM t JOIN u USING (id)", &["ddl newt", "select t", "select u"]),
        ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t", &["ddl mv", "select t"]),
        ("CREATE VIEW v AS SELECT * FROM secrets", &["ddl v", "select secrets"]),
        ("CREATE TABLE s.newt AS TABLE t WITH NO DATA", &["ddl s.newt", "select t"]),
    ];
    for (sql, expected) in cases {
        let statement = expect(sql, expected);
        assert_eq!(statement.tag, StatementTag::Ddl, "{sql}");
    }
}

#[test]
fn select_for_update_also_needs_update() {
    expect("SELECT * FROM t WHERE id = 1 FOR UPDATE", &["select t", "update t"]);
    expect("SELECT * FROM t JOIN u USING (id) FOR SHARE OF t", &["select t", "update t", "select u", "update u"]);
    // Only FROM is locked, not a subquery elsewhere.
    expect("SELECT *, (SELECT 1 FROM v LIMIT 1) FROM t FOR UPDATE", &["select t", "update t", "select v"]);
}

#[test]
fn explain_prepare_and_declare_are_their_statement() {
    let cases: &[(&str, &[&str], Option<bool>)] = &[
        ("EXPLAIN SELECT * FROM t", &["select t"], None),
        ("EXPLAIN ANALYZE DELETE FROM t", &["delete t"], Some(false)),
        ("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) UPDATE t SET a = 1 WHERE id = 1", &["update t"], Some(true)),
        ("EXPLAIN CREATE TABLE x AS SELECT * FROM t", &["ddl x", "select t"], None),
    ];
    for (sql, expected, has_where) in cases {
        let statement = expect(sql, expected);
        assert_eq!(statement.tag, StatementTag::Explain, "{sql}");
        assert_eq!(&statement.has_where, has_where, "{sql}");
    }
    let prepare = expect("PREPARE p (int) AS SELECT * FROM t WHERE id = $1", &["select t"]);
    assert_eq!(prepare.tag, StatementTag::Prepare { name: "p".into() });
    let prepare = expect("PREPARE q AS DELETE FROM t", &["delete t"]);
    assert_eq!(prepare.has_where, Some(false));
    let declare = expect("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", &["select t"]);
    assert_eq!(declare.tag, StatementTag::Other("DECLARE CURSOR".into()));
    for sql in ["FETCH 10 FROM c", "FETCH ALL c", "MOVE NEXT IN c", "CLOSE c", "CLOSE ALL"] {
        expect_connect_only(sql);
    }
}

#[test]
fn execute_is_admin_until_resolved_against_its_prepare() {
    let classifier = Classifier::new(16);
    let execute = expect_admin("EXECUTE p(1, 'x')", "EXECUTE p");
    assert_eq!(execute.tag, StatementTag::Execute { name: "p".into() });
    assert!(!execute.connect_only);
    assert_eq!(execute.accesses.len(), 1);

    let prepared = one("PREPARE p AS SELECT * FROM t WHERE id = $1 AND name = $2");
    let resolved = classifier.resolve_execute(&execute, &prepared).unwrap();
    assert_eq!(common::accesses(&resolved), vec!["select t"]);
    assert_eq!(resolved.text, "EXECUTE p(1, 'x')");
    assert_eq!(resolved.tag, StatementTag::Execute { name: "p".into() });
    assert_eq!(resolved.error, None);

    // Parameters that call something not allowed keep it sql.admin.
    let execute = one("EXECUTE p(my_func(), 'x')");
    let resolved = classifier.resolve_execute(&execute, &prepared).unwrap();
    assert_eq!(common::accesses(&resolved), vec!["admin conn", "select t"]);
    assert!(resolved.error.unwrap().contains("my_func"));

    // A prepared statement that is itself admin stays admin.
    let prepared = one("PREPARE d AS SELECT set_config('role', $1, false)");
    let resolved = classifier.resolve_execute(&one("EXECUTE d('postgres')"), &prepared).unwrap();
    assert!(resolved.is_admin());
    assert!(resolved.error.unwrap().contains("set_config"));

    // Only EXECUTE resolves.
    assert!(classifier.resolve_execute(&one("SELECT 1"), &prepared).is_none());
    // EXECUTE inside another statement cannot be resolved.
    expect_admin("CREATE TABLE x AS EXECUTE p(1)", "cannot be resolved");
    expect_admin("EXPLAIN EXECUTE p(1)", "cannot be resolved");
}

#[test]
fn copy() {
    let cases: &[(&str, &[&str], CopyDirection, bool)] = &[
        ("COPY t FROM STDIN", &["insert t"], CopyDirection::From, false),
        ("COPY s.t (a, b) FROM STDIN WITH (FORMAT csv, HEADER true)", &["insert s.t"], CopyDirection::From, false),
        ("COPY t TO STDOUT", &["select t"], CopyDirection::To, false),
        (
            "COPY (SELECT * FROM t JOIN u USING (id)) TO STDOUT WITH (FORMAT binary)",
            &["select t", "select u"],
            CopyDirection::To,
            false,
        ),
        ("COPY (DELETE FROM t RETURNING *) TO STDOUT", &["delete t", "select t"], CopyDirection::To, false),
        ("COPY t TO '/tmp/x'", &["select t", "admin conn"], CopyDirection::To, true),
        ("COPY t FROM '/etc/passwd'", &["insert t", "admin conn"], CopyDirection::From, true),
        ("COPY t FROM PROGRAM 'cat /etc/passwd'", &["insert t", "admin conn"], CopyDirection::From, true),
        ("COPY (SELECT 1) TO PROGRAM 'sh -c id'", &["admin conn"], CopyDirection::To, true),
        // An empty file name looks like STDIN in the parse tree; the tokens tell them apart.
        ("COPY t FROM ''", &["insert t", "admin conn"], CopyDirection::From, true),
        ("COPY (SELECT * FROM stdin) TO ''", &["select stdin", "admin conn"], CopyDirection::To, true),
        ("COPY stdin (stdout) FROM STDIN", &["insert stdin"], CopyDirection::From, false),
        ("COPY /* x */ t TO /* y */ STDOUT", &["select t"], CopyDirection::To, false),
    ];
    for (sql, expected, direction, external) in cases {
        let statement = expect(sql, expected);
        assert_eq!(statement.tag, StatementTag::Copy { direction: *direction, to_program_or_file: *external }, "{sql}");
        if *external {
            assert!(statement.error.as_deref().unwrap_or("").contains("file or program"), "{sql}");
        }
    }
    expect_admin("COPY t FROM STDIN WHERE my_func(a)", "my_func");
}

#[test]
fn transaction_control_show_discard_deallocate_are_connect_only() {
    for sql in [
        "BEGIN",
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY",
        "BEGIN READ WRITE",
        "START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "COMMIT",
        "COMMIT AND CHAIN",
        "END",
        "ROLLBACK",
        "ABORT",
        "SAVEPOINT s1",
        "RELEASE SAVEPOINT s1",
        "ROLLBACK TO SAVEPOINT s1",
        "SET CONSTRAINTS ALL DEFERRED",
    ] {
        assert_eq!(expect_connect_only(sql).tag, StatementTag::Transaction, "{sql}");
    }
    for sql in ["SHOW search_path", "SHOW ALL", "SHOW TIME ZONE", "SHOW TRANSACTION ISOLATION LEVEL"] {
        assert_eq!(expect_connect_only(sql).tag, StatementTag::Show, "{sql}");
    }
    let discard = expect_connect_only("DISCARD ALL");
    assert_eq!(discard.tag, StatementTag::Discard { all: true });
    assert!(discard.changes_application_name());
    for sql in ["DISCARD PLANS", "DISCARD SEQUENCES", "DISCARD TEMP"] {
        assert_eq!(expect_connect_only(sql).tag, StatementTag::Discard { all: false });
    }
    assert_eq!(expect_connect_only("DEALLOCATE p").tag, StatementTag::Deallocate { name: Some("p".into()) });
    assert_eq!(expect_connect_only("DEALLOCATE PREPARE p").tag, StatementTag::Deallocate { name: Some("p".into()) });
    assert_eq!(expect_connect_only("DEALLOCATE ALL").tag, StatementTag::Deallocate { name: None });
    expect_connect_only("UNLISTEN *");
    for sql in ["PREPARE TRANSACTION 'tx1'", "COMMIT PREPARED 'tx1'", "ROLLBACK PREPARED 'tx1'"] {
        let statement = expect_admin(sql, "two-phase");
        assert_eq!(statement.tag, StatementTag::Transaction);
    }
}

#[test]
fn set_of_allow_listed_parameters_is_connect_only() {
    let cases: &[(&str, &str)] = &[
        ("SET client_encoding = 'UTF8'", "client_encoding"),
        ("SET NAMES 'UTF8'", "client_encoding"),
        ("SET DateStyle = ISO, MDY", "datestyle"),
        ("SET datestyle TO 'ISO'", "datestyle"),
        ("SET TIME ZONE 'UTC'", "timezone"),
        ("SET TIME ZONE LOCAL", "timezone"),
        ("SET TimeZone TO 'Europe/Paris'", "timezone"),
        ("SET \"TimeZone\" = 'UTC'", "timezone"),
        ("SET IntervalStyle = postgres", "intervalstyle"),
        ("SET extra_float_digits = 3", "extra_float_digits"),
        ("SET statement_timeout = 0", "statement_timeout"),
        ("SET SESSION statement_timeout TO DEFAULT", "statement_timeout"),
        ("SET LOCAL lock_timeout = '1s'", "lock_timeout"),
        ("SET idle_in_transaction_session_timeout = 60000", "idle_in_transaction_session_timeout"),
        ("RESET statement_timeout", "statement_timeout"),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "transaction"),
        ("SET TRANSACTION READ WRITE", "transaction"),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED", "session characteristics"),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "session characteristics"),
    ];
    for (sql, param) in cases {
        let statement = expect_connect_only(sql);
        assert_eq!(
            statement.tag,
            StatementTag::Set { param: param.to_string(), changes_application_name: false },
            "{sql}"
        );
        assert!(!statement.changes_application_name());
    }
    for sql in ["SET application_name = 'psql'", "SET application_name TO DEFAULT", "RESET application_name"] {
        let statement = expect_connect_only(sql);
        assert_eq!(
            statement.tag,
            StatementTag::Set { param: "application_name".into(), changes_application_name: true }
        );
        assert!(statement.changes_application_name(), "{sql}");
    }
    let reset_all = expect_connect_only("RESET ALL");
    assert_eq!(reset_all.tag, StatementTag::Set { param: "all".into(), changes_application_name: true });
}

#[test]
fn set_of_anything_else_is_admin() {
    let cases: &[(&str, &str, &str)] = &[
        ("SET search_path = x", "search_path", "search_path"),
        ("SET search_path TO public, pg_temp", "search_path", "search_path"),
        ("SET \"search_path\" = x", "search_path", "search_path"),
        ("SET SCHEMA 'x'", "search_path", "search_path"),
        ("RESET search_path", "search_path", "search_path"),
        ("SET ROLE postgres", "role", "ROLE"),
        ("SET ROLE NONE", "role", "ROLE"),
        ("SET LOCAL ROLE 'postgres'", "role", "ROLE"),
        ("RESET ROLE", "role", "ROLE"),
        ("SET SESSION AUTHORIZATION postgres", "session_authorization", "SESSION AUTHORIZATION"),
        ("SET SESSION AUTHORIZATION DEFAULT", "session_authorization", "SESSION AUTHORIZATION"),
        ("RESET SESSION AUTHORIZATION", "session_authorization", "SESSION AUTHORIZATION"),
        ("SET session_replication_role = replica", "session_replication_role", "session_replication_role"),
        ("SET default_transaction_read_only = off", "default_transaction_read_only", "default_transaction_read_only"),
        ("SET transaction_read_only = off", "transaction_read_only", "transaction_read_only"),
        ("SET row_security = off", "row_security", "row_security"),
        ("SET work_mem = '1GB'", "work_mem", "work_mem"),
        ("SET standard_conforming_strings = off", "standard_conforming_strings", "standard_conforming_strings"),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            "session characteristics",
            "default_transaction_read_only",
        ),
    ];
    for (sql, param, reason) in cases {
        let statement = expect_admin(sql, reason);
        assert!(
            matches!(&statement.tag, StatementTag::Set { param: p, .. } if p == param),
            "{sql}: {:?}",
            statement.tag
        );
        assert_eq!(common::accesses(&statement), vec!["admin conn"], "{sql}");
    }
}

#[test]
fn admin_statements() {
    let cases: &[(&str, &str)] = &[
        ("DO $$ BEGIN PERFORM 1; END $$", "DO"),
        ("DO LANGUAGE plpgsql 'BEGIN NULL; END'", "DO"),
        ("CALL my_proc(1)", "CALL"),
        ("LOAD 'auto_explain'", "LOAD"),
        ("ALTER SYSTEM SET work_mem = '1GB'", "ALTER SYSTEM"),
        ("GRANT SELECT ON t TO bob", "GRANT"),
        ("REVOKE ALL ON t FROM bob", "GRANT"),
        ("GRANT admins TO bob", "GRANT"),
        ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", "ALTER DEFAULT PRIVILEGES"),
        ("CREATE ROLE x LOGIN", "roles"),
        ("CREATE USER x PASSWORD 'secret'", "roles"),
        ("ALTER ROLE x SUPERUSER", "roles"),
        ("ALTER USER x SET search_path = y", "roles"),
        ("DROP ROLE x", "roles"),
        ("DROP USER IF EXISTS x", "roles"),
        ("ALTER ROLE x RENAME TO y", "ROLE"),
        ("REASSIGN OWNED BY a TO b", "REASSIGN OWNED"),
        ("VACUUM", "maintenance"),
        ("VACUUM FULL t", "maintenance"),
        ("ANALYZE t", "maintenance"),
        ("CLUSTER t USING t_pkey", "maintenance"),
        ("REINDEX TABLE t", "maintenance"),
        ("CHECKPOINT", "maintenance"),
        ("CREATE DATABASE d", "CREATE DATABASE"),
        ("DROP DATABASE d", "DROP DATABASE"),
        ("CREATE EXTENSION dblink", "CREATE EXTENSION"),
        ("DROP EXTENSION dblink", "EXTENSION"),
        ("CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw", "CREATE SERVER"),
        ("CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'x', password 'y')", "USER MAPPING"),
        ("CREATE POLICY p ON t USING (true)", "CREATE POLICY"),
        ("DROP POLICY p ON t", "POLICY"),
        ("ALTER TABLE t DISABLE ROW LEVEL SECURITY", "row security"),
        ("ALTER TABLE t OWNER TO bob", "owner"),
        ("ALTER FUNCTION f() OWNER TO bob", "OWNER TO"),
        ("CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()", "EVENT TRIGGER"),
        ("CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p", "SUBSCRIPTION"),
        ("SECURITY LABEL ON TABLE t IS 'x'", "SECURITY LABEL"),
        ("CREATE SCHEMA s AUTHORIZATION bob", "AUTHORIZATION"),
        ("CREATE SCHEMA s CREATE TABLE x (a int) GRANT SELECT ON x TO bob", "GRANT"),
    ];
    for (sql, reason) in cases {
        expect_admin(sql, reason);
    }
    let grant = one("GRANT SELECT ON t, s.u TO bob");
    assert_eq!(grant.tables, vec![TableRef::new(None, "t"), TableRef::new(Some("s"), "u")]);
    assert_eq!(common::accesses(&grant), vec!["admin conn"]);
    let call = one("CALL my_proc(1)");
    assert_eq!(call.functions, vec!["my_proc"]);
    assert_eq!(call.tag, StatementTag::Other("CALL".into()));
}

#[test]
fn listen_notify_and_lock_are_other() {
    assert_eq!(expect("LISTEN ch", &["other conn"]).tag, StatementTag::Other("LISTEN".into()));
    assert_eq!(expect("NOTIFY ch, 'payload'", &["other conn"]).tag, StatementTag::Other("NOTIFY".into()));
    assert_eq!(
        expect("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", &["other t"]).tag,
        StatementTag::Other("LOCK TABLE".into())
    );
    expect("LOCK t, s.u", &["other t", "other s.u"]);
}

#[test]
fn ddl() {
    let cases: &[(&str, &[&str])] = &[
        ("CREATE TABLE t (id int PRIMARY KEY, a text DEFAULT now()::text)", &["ddl t"]),
        ("CREATE TABLE t2 (LIKE t INCLUDING ALL)", &["ddl t2", "ddl t"]),
        ("CREATE TABLE child () INHERITS (parent)", &["ddl child", "ddl parent"]),
        ("CREATE TABLE o (id int REFERENCES s.customers (id))", &["ddl o", "ddl s.customers"]),
        ("ALTER TABLE t ADD COLUMN b int", &["ddl t"]),
        ("ALTER TABLE t RENAME TO u", &["ddl t"]),
        ("DROP TABLE t, s.u", &["ddl t", "ddl s.u"]),
        ("DROP VIEW IF EXISTS v CASCADE", &["ddl v"]),
        ("DROP SEQUENCE s.seq", &["ddl s.seq"]),
        ("CREATE INDEX ON t (lower(a))", &["ddl t"]),
        ("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", &["ddl t"]),
        ("CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql", &["ddl conn"]),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1 + 1", &["ddl conn"]),
        // A body is not run when the function is made, but what it will touch counts.
        (
            "CREATE FUNCTION f() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM t; END",
            &["ddl conn", "select t"],
        ),
        ("CREATE SCHEMA s", &["ddl conn"]),
        ("CREATE TYPE mood AS ENUM ('sad', 'ok')", &["ddl conn"]),
        ("DROP FUNCTION f()", &["ddl conn"]),
        ("COMMENT ON TABLE t IS 'x'", &["ddl conn"]),
        ("REFRESH MATERIALIZED VIEW mv", &["ddl mv"]),
        ("CREATE SEQUENCE s START 5", &["ddl s"]),
        ("CREATE RULE r AS ON INSERT TO t DO ALSO INSERT INTO log VALUES (1)", &["ddl t", "insert log"]),
        ("CREATE RULE r AS ON INSERT TO t DO ALSO NOTIFY ch", &["ddl t", "other conn"]),
    ];
    for (sql, expected) in cases {
        let statement = expect(sql, expected);
        assert_eq!(statement.tag, StatementTag::Ddl, "{sql}");
    }
    // Functions in DDL can run when it does (defaults of new columns, checks, index expressions).
    expect_admin("CREATE TABLE t (id int DEFAULT my_func())", "my_func");
    expect_admin("ALTER TABLE t ADD COLUMN n bigint DEFAULT nextval('s')", "nextval");
}

#[test]
fn functions_not_on_the_allow_list_are_admin() {
    let cases: &[(&str, &str)] = &[
        ("SELECT set_config('role', 'x', false)", "set_config"),
        ("SELECT pg_catalog.set_config('search_path', '', false)", "pg_catalog.set_config"),
        ("SELECT query_to_xml('select * from secrets', true, true, '')", "query_to_xml"),
        ("SELECT table_to_xml('secrets', true, true, '')", "table_to_xml"),
        ("SELECT my_func()", "my_func"),
        ("SELECT public.my_func()", "public.my_func"),
        ("SELECT \"LOWER\"('a')", "LOWER"),
        ("SELECT pg_read_file('/etc/passwd')", "pg_read_file"),
        ("SELECT pg_read_binary_file('/etc/passwd')", "pg_read_binary_file"),
        ("SELECT * FROM pg_ls_dir('.')", "pg_ls_dir"),
        ("SELECT nextval('s')", "nextval"),
        ("SELECT setval('s', 1)", "setval"),
        ("SELECT pg_terminate_backend(1)", "pg_terminate_backend"),
        ("SELECT pg_cancel_backend(1)", "pg_cancel_backend"),
        ("SELECT lo_import('/etc/passwd')", "lo_import"),
        ("SELECT lo_export(1, '/tmp/x')", "lo_export"),
        ("SELECT * FROM dblink('host=x', 'select 1') AS t(a int)", "dblink"),
        ("SELECT dblink_exec('host=x', 'drop table t')", "dblink_exec"),
        ("SELECT pg_notify('ch', 'x')", "pg_notify"),
        ("SELECT pg_advisory_lock(1)", "pg_advisory_lock"),
        ("SELECT ts_stat('select v from t')", "ts_stat"),
        ("SELECT * FROM t WHERE id = (SELECT my_func())", "my_func"),
        ("SELECT * FROM ROWS FROM (generate_series(1, 2), my_srf()) AS x(a, b)", "my_srf"),
        ("INSERT INTO t VALUES (my_func())", "my_func"),
        ("UPDATE t SET a = my_func() WHERE id = 1", "my_func"),
        ("SELECT a FROM t ORDER BY my_func(a)", "my_func"),
        ("SELECT count(*) FILTER (WHERE my_func(a)) FROM t", "my_func"),
        ("SELECT * FROM t TABLESAMPLE system_rows(10)", "system_rows"),
        ("SELECT 1 ### 2", "operator ###"),
        ("SELECT a OPERATOR(public.=) b FROM t", "operator public.="),
        ("SELECT a FROM t ORDER BY a USING ###", "operator ###"),
        ("SELECT 1 WHERE 1 ### ANY (SELECT 1)", "operator ###"),
    ];
    for (sql, name) in cases {
        expect_admin(sql, name);
    }
    let statement = one("SELECT my_func(a) FROM t");
    assert_eq!(common::accesses(&statement), vec!["admin conn", "select t"]);
    assert_eq!(statement.functions, vec!["my_func"]);
    assert_eq!(
        statement.error.as_deref(),
        Some("function my_func is not on the allow-list of side-effect-free built-in functions")
    );
}

#[test]
fn allow_listed_functions_and_expressions_are_harmless() {
    let cases: &[(&str, &[&str])] = &[
        (
            "SELECT count(*), sum(a), avg(a), max(a), min(a), string_agg(b, ',') FROM t",
            &["count", "sum", "avg", "max", "min", "string_agg"],
        ),
        ("SELECT pg_catalog.lower(a), pg_catalog.upper(a) FROM t", &["lower", "upper"]),
        ("SELECT coalesce(a, 1), nullif(a, 2), greatest(a, 1), least(a, 2) FROM t", &[]),
        (
            "SELECT extract(year FROM d), substring(b FROM 2), position('b' IN b), trim(both ' ' FROM b), \
             d AT TIME ZONE 'UTC' FROM t",
            &["extract", "substring", "position", "btrim", "timezone"],
        ),
        ("SELECT b LIKE 'x%' ESCAPE '!', b SIMILAR TO 'x' FROM t", &["like_escape", "similar_to_escape"]),
        ("SELECT row_number() OVER (ORDER BY a), lag(a) OVER (PARTITION BY b) FROM t", &["row_number", "lag"]),
        (
            "SELECT json_agg(t), jsonb_build_object('a', 1) ->> 'a', to_jsonb(t) FROM t",
            &["json_agg", "jsonb_build_object", "to_jsonb"],
        ),
        ("SELECT array_agg(a ORDER BY a) FILTER (WHERE a > 0), unnest(ARRAY[1, 2]) FROM t", &["array_agg", "unnest"]),
        ("SELECT CAST('1' AS int), '2'::numeric(10, 2), interval '1 day', date '2024-01-01' FROM t", &[]),
        ("SELECT a FROM t WHERE b ~ '^x' AND b !~* 'y' AND a OPERATOR(pg_catalog.=) 1 AND c @> '{1}'", &[]),
        (
            "SELECT to_char(now(), 'YYYY'), date_trunc('day', now()), age(now())",
            &["to_char", "now", "date_trunc", "age"],
        ),
        ("SELECT format('%s', 1), md5('x'), gen_random_uuid()", &["format", "md5", "gen_random_uuid"]),
    ];
    for (sql, functions) in cases {
        let statement = one(sql);
        assert!(!statement.is_admin(), "{sql}: {statement:#?}");
        assert_eq!(statement.functions, functions.iter().map(|f| f.to_string()).collect::<Vec<_>>(), "{sql}");
    }
}

#[test]
fn unicode_escaped_identifiers_are_decoded() {
    expect("SELECT * FROM U&\"d\\0061ta\"", &["select data"]);
    expect("SELECT * FROM U&\"d!0061ta\" UESCAPE '!'", &["select data"]);
    expect("SELECT * FROM U&\"d!0061ta\" UESCAPE '#'", &["select d!0061ta"]);
}

#[test]
fn batches_split_into_statements_with_their_own_text() {
    let batch = classify_uncached("SELECT 1; DELETE FROM t", &Default::default());
    let texts: Vec<&str> = batch.statements.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts, ["SELECT 1", "DELETE FROM t"]);
    assert_eq!(common::accesses(&batch.statements[0]), vec!["select conn"]);
    assert_eq!(common::accesses(&batch.statements[1]), vec!["delete t"]);
    assert_eq!(batch.statements[1].has_where, Some(false));

    let sql = "  /* lead */ BEGIN ;UPDATE t SET a = 'x;y' WHERE id = 1;\n-- note\nCOMMIT;; SELECT $$;$$ /* in */ , 2 -- tail\n";
    let batch = classify_uncached(sql, &Default::default());
    let texts: Vec<&str> = batch.statements.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts, ["BEGIN", "UPDATE t SET a = 'x;y' WHERE id = 1", "COMMIT", "SELECT $$;$$ /* in */ , 2"]);
    assert!(batch.statements[0].connect_only);
    assert_eq!(batch.statements[1].tag, StatementTag::Update);
    assert!(batch.statements[2].connect_only);
    for statement in &batch.statements {
        assert_eq!(statement.fingerprint.len(), 16, "{statement:?}");
    }

    for empty in ["", "   ", ";", " ; ;; ", "-- only a comment", "/* c */"] {
        assert!(classify_uncached(empty, &Default::default()).statements.is_empty(), "{empty:?}");
    }
}

#[test]
fn text_that_does_not_parse_is_one_admin_statement() {
    for (sql, reason) in [
        ("SELEKT * FROM t", "could not be parsed"),
        ("SELECT 1; garbage here", "could not be parsed"),
        ("SELECT 'unterminated", "could not be scanned"),
        ("SELECT 1\0", "NUL"),
        ("DELETE FROM", "could not be parsed"),
    ] {
        let batch = classify_uncached(sql, &Default::default());
        assert_eq!(batch.statements.len(), 1, "{sql:?}");
        let statement = &batch.statements[0];
        assert_eq!(statement.text, sql.trim());
        assert_eq!(statement.accesses, vec![gatehouse_sql::Access::connection(Action::Admin)]);
        assert_eq!(statement.tag, StatementTag::Other("UNPARSEABLE".into()));
        assert!(statement.error.as_deref().unwrap_or("").contains(reason), "{sql:?}: {:?}", statement.error);
        assert!(statement.error.as_deref().unwrap_or("").contains("sql.admin"));
    }
}

#[test]
fn deep_nesting() {
    // 60 nested scalar subqueries, each reading its own table.
    let depth = 60;
    let mut sql = String::from("1");
    for i in (0..depth).rev() {
        sql = format!("(SELECT {sql} FROM t{i})");
    }
    let statement = one(&format!("SELECT {sql}"));
    assert_eq!(statement.tables.len(), depth);
    assert!(statement.accesses.iter().all(|a| a.action == Action::Select));

    // Nested FROM subqueries, set operations and WITH queries.
    let mut sql = String::from("SELECT * FROM base");
    for i in 0..40 {
        sql = format!("WITH w{i} AS ({sql}) SELECT * FROM w{i} UNION ALL SELECT * FROM (SELECT * FROM u{i}) x");
    }
    let statement = one(&sql);
    assert_eq!(statement.tables.len(), 41);
    assert!(statement.tables.iter().all(|t| t.name == "base" || t.name.starts_with('u')));

    // Long operator chains (a tree as deep as the chain is long) and a 3,000-way UNION ALL.
    expect(&format!("SELECT 1{}", " + 1".repeat(4_900)), &["select conn"]);
    let union: Vec<String> = (0..3_000).map(|i| format!("SELECT a FROM t{}", i % 3)).collect();
    expect(&union.join(" UNION ALL "), &["select t0", "select t1", "select t2"]);

    // Near the deepest tree libpg_query serialises (10,000 levels): 1,600 nested subqueries.
    expect(&format!("SELECT {}a FROM t{}", "(SELECT ".repeat(1_600), ")".repeat(1_600)), &["select t"]);

    // Deeper than libpg_query serialises: refused, and the process survives.
    let statement = one(&format!("SELECT {}true", "NOT ".repeat(20_000)));
    assert!(statement.is_admin());
    assert!(statement.error.unwrap().contains("could not be parsed"));
}

#[test]
fn table_refs_keep_the_names_the_server_sees() {
    let statement = one("SELECT * FROM Public.Users u JOIN \"Orders\" o ON o.uid = u.id");
    assert_eq!(statement.tables, vec![TableRef::new(Some("public"), "users"), TableRef::new(None, "Orders")]);
    assert_eq!(statement.accesses[0].object, Object::Table(TableRef::new(Some("public"), "users")));
    assert_eq!(TableRef::new(Some("public"), "users").to_string(), "public.users");
    assert_eq!(Action::Select.as_str(), "sql.select");
    assert_eq!(Action::Admin.to_string(), "sql.admin");
}

#[test]
fn serialises_for_the_policy_context() {
    let statement = one("SELECT * FROM t");
    let json = serde_json::to_value(&statement).unwrap();
    assert_eq!(json["accesses"][0]["action"], "sql.select");
    assert_eq!(json["accesses"][0]["object"]["table"]["name"], "t");
    assert_eq!(json["tag"], "select");
    let back: gatehouse_sql::Statement = serde_json::from_value(json).unwrap();
    assert_eq!(back, statement);
}
