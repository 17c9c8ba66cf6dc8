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
    assert!(stderr(&out).contains("binary COPY output cannot be masked"), "{}", stderr(&out));
    assert!(text.contains("after"), "the session goes on: {text}");

    // A unique violation's detail carries the value: masked too.
    let out = f.app("INSERT INTO customers (id, email) VALUES (3, 'jane@example.com');\n");
    let err = stderr(&out);
    assert!(err.contains("duplicate key") && err.contains("j***@example.com"), "{err}");
    assert!(!err.contains("jane@example.com"), "{err}");

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
