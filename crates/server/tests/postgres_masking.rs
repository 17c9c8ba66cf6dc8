//! Masking through the PostgreSQL adapter with real PostgreSQL and stock clients: value
//! detectors on a connection mask what comes back (rows in text and binary format, expressions,
//! `COPY`, error details, notifications) and what is recorded, unless policy lets the caller
//! `unmask`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg;

use common::*;
use pg::*;

const OPEN: &str = r#"
@id("apps-connect")
permit (principal in Group::"apps", action == Action::"connect", resource == Connection::"pg");

@id("apps-everything")
permit (principal in Group::"apps", action, resource in Connection::"pg") unless { action == Action::"unmask" };

@id("support-sees-clear")
permit (principal in Group::"support", action == Action::"unmask", resource in Connection::"pg");
"#;

fn fixture() -> (Fixture, String) {
    let f = Fixture::new();
    f.pg.psql(
        "postgres",
        "CREATE TABLE public.customers (id int PRIMARY KEY, email text UNIQUE, card text, card_num numeric, note jsonb, emails text[]);
         INSERT INTO public.customers VALUES
           (1, 'jane@example.com', '4242 4242 4242 4242', 4242424242424242, '{\"contact\": \"jane@example.com\"}', '{jane@example.com,bob@example.org}'),
           (2, 'nobody', 'none', 7, '{}', '{}');",
    )
    .unwrap();
    f.policies(OPEN);
    f.gw.cli_ok(&["connections", "update", "pg", "--mask", "email,credit_card"]).unwrap();
    let support = f.gw.cli_ok(&["identities", "add", "helper", "--groups", "apps,support"]).unwrap().trim().to_string();
    (f, support)
}

#[test]
fn psql_results_copy_errors_and_notifications_are_masked_unless_unmask_is_permitted() {
    let (f, support) = fixture();
    let query = "SELECT email, card, card_num, note->>'contact', emails, lower(email) FROM customers ORDER BY id;\n";
    let out = f.app(query);
    assert_eq!(
        stdout(&out),
        "j***@example.com|**** **** **** 4242||j***@example.com|{j***@example.com,b***@example.org}|j***@example.com\n\
         nobody|none|7||{}|nobody\n",
        "{}",
        stderr(&out)
    );
    // The same through a caller that may unmask: exactly what a direct connection returns.
    let clear = f.psql("helper", &support, "pg", query);
    let direct = std::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-q", "-c", query.trim()])
        .arg(f.pg.url("postgres"))
        .output()
        .unwrap();
    assert_eq!(stdout(&clear), stdout(&direct), "{}", stderr(&clear));
    assert!(stdout(&clear).contains("jane@example.com"));

    // COPY out in text and CSV is masked row by row; binary COPY cannot be, and is refused.
    let out = f.app("COPY customers (id, email, card) TO STDOUT WITH (FORMAT csv);\nCOPY customers TO STDOUT WITH (FORMAT binary);\nSELECT 'after';\n");
    let text = stdout(&out);
    assert!(text.starts_with("1,j***@example.com,**** **** **** 4242\n2,nobody,none\n"), "{text}");
    assert!(!text.contains("jane@"), "{text}");
    assert!(stderr(&out).contains("COPY output cannot be masked"), "{}", stderr(&out));
    assert!(text.contains("after"), "the session goes on: {text}");

    // A unique violation's detail carries the value: masked too.
    let out = f.app("INSERT INTO customers (id, email) VALUES (3, 'jane@example.com');\n");
    let err = stderr(&out);
    assert!(err.contains("duplicate key") && err.contains("j***@example.com"), "{err}");
    assert!(!err.contains("jane@example.com"), "{err}");

    // A custom detector, set as custom:NAME=REGEX.
    f.gw.cli_ok(&["connections", "update", "pg", "--mask", "email,credit_card,custom:ticket=TCK-[0-9]{4}"]).unwrap();
    let out = f.app("SELECT 'see TCK-1234 and jane@example.com';\n");
    assert_eq!(stdout(&out), "see ******** and j***@example.com\n", "{}", stderr(&out));

    // Notification payloads.
    let out = f.app("LISTEN news;\nNOTIFY news, 'write to jane@example.com';\nSELECT 1;\n");
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("write to j***@example.com"), "{all}");
    assert!(!all.contains("jane@example.com"), "{all}");

    // What was recorded says how much was masked, and no original value is in the store.
    let events = session_events(&f.gw, "app");
    assert!(
        events
            .iter()
            .any(|e| e["data"]["masked"]["email"]["email"] == 1 && e["data"]["masked"]["card"]["credit_card"] == 1),
        "{events:?}"
    );
    for file in ["gatehouse.db", "gatehouse.db-wal"] {
        let bytes = std::fs::read(f.gw.data_dir().join(file)).unwrap_or_default();
        assert!(
            !bytes.windows(b"jane@example.com".len()).any(|w| w == b"jane@example.com"),
            "an original value reached {file}"
        );
    }
    let metrics = curl("GET", &format!("{}/metrics", f.gw.url()), None, None).body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gatehouse_masked_values_total{detector=\"email\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[test]
fn prepared_statements_in_binary_format_are_masked_and_parameters_recorded_masked() {
    let (f, _) = fixture();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client(&f.url(&f.token)).await;
        // tokio-postgres asks for binary results and sends no Describe with Execute.
        let stmt = c.prepare("SELECT email, card_num::int8, note, id FROM customers WHERE email = $1").await.unwrap();
        let row = c.query_one(&stmt, &[&"jane@example.com"]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "j***@example.com");
        assert_eq!(row.get::<_, Option<i64>>(1), None, "a number that is a card cannot hold the masked text: NULL");
        let note: Jsonb = row.get(2);
        let note: serde_json::Value = serde_json::from_str(&note.0).unwrap();
        assert_eq!(note, serde_json::json!({"contact": "j***@example.com"}));
        assert_eq!(row.get::<_, i32>(3), 1, "values with nothing to mask are untouched");
        let other = c.query_one("SELECT email, card_num::int8 FROM customers WHERE id = $1", &[&2i32]).await.unwrap();
        assert_eq!((other.get::<_, String>(0), other.get::<_, Option<i64>>(1)), ("nobody".to_string(), Some(7)));
    });
    let events = session_events(&f.gw, "app");
    let params: Vec<_> =
        events.iter().filter(|e| e["data"]["params"].as_array().is_some_and(|p| !p.is_empty())).collect();
    assert!(params.iter().any(|e| e["data"]["params"] == serde_json::json!(["j***@example.com"])), "{params:?}");
    assert!(!serde_json::to_string(&events).unwrap().contains("jane@example.com"));
}

/// A jsonb value as its binary format carries it: a version byte, then the text.
struct Jsonb(String);

impl<'a> tokio_postgres::types::FromSql<'a> for Jsonb {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        assert_eq!(raw.first(), Some(&1), "jsonb version 1");
        Ok(Jsonb(String::from_utf8(raw[1..].to_vec())?))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSONB
    }
}

#[test]
fn whole_column_rules_mask_by_name_per_column_unmask_and_follow_renames() {
    let (f, support) = fixture();
    f.pg.psql("postgres", "ALTER TABLE public.customers ADD COLUMN label text DEFAULT 'hello';").unwrap();
    f.policies(&format!(
        "{OPEN}\n@id(\"billing-sees-cards\")\npermit (principal in Group::\"billing\", action == Action::\"unmask\", resource == Column::\"pg/public.customers.card_num\");"
    ));
    f.gw.cli_ok(&[
        "connections",
        "update",
        "pg",
        "--mask-column",
        "public.customers.card_num",
        "--mask-column",
        "*.*.note",
        "--mask-column",
        "public.customers.secret_col",
    ])
    .unwrap();
    let billing = f.gw.cli_ok(&["identities", "add", "biller", "--groups", "apps,billing"]).unwrap().trim().to_string();
    let query = "SELECT id, card_num, note, label, card_num + 0 FROM customers ORDER BY id;\n";
    // A whole-column rule: free text becomes ****, other types NULL. An expression over a
    // masked column is not a column the rule names (the detectors still apply to it).
    let out = f.app(query);
    assert_eq!(stdout(&out), "1||\"****\"|hello|\n2||\"****\"|hello|7\n", "{}", stderr(&out));
    // Unmask granted on one column shows that column only.
    let out = f.psql("biller", &billing, "pg", query);
    assert_eq!(stdout(&out), "1|4242424242424242|\"****\"|hello|\n2|7|\"****\"|hello|7\n", "{}", stderr(&out));
    // Unmask on the connection shows everything.
    let out = f.psql("helper", &support, "pg", query);
    assert!(stdout(&out).contains("{\"contact\": \"jane@example.com\"}"), "{}", stdout(&out));
    // Extended protocol, binary format, no Describe with Execute.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client(&f.url(&f.token)).await;
        let row = c.query_one("SELECT label, note::text, id FROM customers WHERE id = $1", &[&1i32]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "hello");
        assert_eq!(row.get::<_, i32>(2), 1);
        // A rename through the gateway is DDL: the column names are read again.
        c.batch_execute("ALTER TABLE customers RENAME COLUMN label TO secret_col").await.unwrap();
        let row = c.query_one("SELECT secret_col FROM customers WHERE id = $1", &[&1i32]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "****");
    });
    // COPY of a table: its columns come from the statement and the catalogue, and each field
    // is masked like the column (text and CSV); a COPY of a query names no table columns and is
    // refused under column rules, unless the caller may unmask the connection.
    let out = f.app(
        "COPY customers (id, email, card_num, note) TO STDOUT;\nCOPY customers (card_num, id) TO STDOUT WITH (FORMAT csv, HEADER);\n",
    );
    assert_eq!(
        stdout(&out),
        "1\tj***@example.com\t\\N\t\\N\n2\tnobody\t\\N\t\\N\ncard_num,id\n,1\n,2\n",
        "{}",
        stderr(&out)
    );
    let out = f.psql("biller", &billing, "pg", "COPY customers (card_num) TO STDOUT;\n");
    assert_eq!(stdout(&out), "4242424242424242\n7\n", "{}", stderr(&out));
    let out = f.app("COPY (SELECT card_num FROM customers) TO STDOUT;\nSELECT 'after';\n");
    assert!(stderr(&out).contains("cannot be masked"), "{}", stderr(&out));
    assert_eq!(stdout(&out), "after\n");
    let out = f.psql("helper", &support, "pg", "COPY (SELECT card_num FROM customers ORDER BY id) TO STDOUT;\n");
    assert_eq!(stdout(&out), "4242424242424242\n7\n", "{}", stderr(&out));
    let events = session_events(&f.gw, "app");
    assert!(events.iter().any(|e| e["data"]["masked"]["card_num"]["column"] == 2), "{events:?}");
}

#[test]
fn psycopg_text_and_binary_results_are_masked() {
    let (f, _) = fixture();
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    for binary in (False, True):
        cur = conn.cursor(binary=binary)
        rows = cur.execute("SELECT email, card, emails, note FROM customers WHERE id = %s", (1,)).fetchall()
        print(binary, rows)
"#;
    let out = std::process::Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-c", script])
        .arg(format!("{} connect_timeout=10", f.url(&f.token)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let masked = "[('j***@example.com', '**** **** **** 4242', ['j***@example.com', 'b***@example.org'], {'contact': 'j***@example.com'})]";
    assert_eq!(text, format!("False {masked}\nTrue {masked}\n"), "{}", stderr(&out));
}
