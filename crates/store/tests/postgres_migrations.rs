//! The PostgreSQL migrations must stay loadable until the PostgreSQL back-end uses them: apply
//! every one, in order, to a real PostgreSQL and check that the tables match SQLite's.

use gatehouse_testkit::Postgres;

#[test]
fn postgres_migrations_apply_to_a_real_server_and_match_sqlite() {
    let pg = Postgres::start().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(dir.join("postgres")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty());
    for file in &files {
        let sql = std::fs::read_to_string(file).unwrap();
        pg.psql("postgres", &format!("BEGIN;\n{sql}\nCOMMIT;")).unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
        let sqlite_twin = dir.join("sqlite").join(file.file_name().unwrap());
        assert!(sqlite_twin.exists(), "every migration exists for both back-ends: {}", sqlite_twin.display());
    }
    let pg_tables = pg
        .psql("postgres", "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'public'")
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { gatehouse_store::SqliteStore::open(&tmp.path().join("g.db"), false).unwrap() });
    let conn = rusqlite::Connection::open(tmp.path().join("g.db")).unwrap();
    let sqlite_tables: String = conn
        .query_row(
            "SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' AND name != 'refinery_schema_history' ORDER BY name)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pg_tables.trim(), sqlite_tables);
}
