//! Column names for whole-column masking rules: a `RowDescription` names each column's table
//! by OID and the column by number; the names come from the resource's catalogue, read on a
//! connection of their own (the session's may be in the middle of a result), and kept per
//! connection until a DDL statement through the gateway may have changed them.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use tokio::io::AsyncWriteExt;

use crate::{UpstreamConfig, read_backend};

/// A column's schema, table and name.
pub(crate) type Named = (String, String, String);

type Tables = HashMap<u32, Arc<HashMap<i16, Named>>>;

/// A table as the catalogue spells it (schema, name) and its columns (name, type OID) in order.
pub(crate) type TableColumns = (String, String, Vec<(String, u32)>);

static KNOWN: LazyLock<Mutex<HashMap<String, Tables>>> = LazyLock::new(Default::default);

fn known() -> std::sync::MutexGuard<'static, HashMap<String, Tables>> {
    KNOWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Forgets what is known of `connection`'s tables (after DDL).
pub(crate) fn forget(connection: &str) {
    known().remove(connection);
}

/// The names of the columns of `tables` (OIDs) on `connection`, reading the catalogue for the
/// ones not known yet.
pub(crate) async fn columns(
    cfg: &UpstreamConfig,
    connection: &str,
    tables: &[u32],
    max: usize,
) -> Result<HashMap<u32, Arc<HashMap<i16, Named>>>, String> {
    let mut out = HashMap::new();
    let mut missing = Vec::new();
    {
        let known = known();
        let cached = known.get(connection);
        for oid in tables {
            match cached.and_then(|t| t.get(oid)) {
                Some(c) => {
                    out.insert(*oid, c.clone());
                }
                None => missing.push(*oid),
            }
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    missing.sort_unstable();
    missing.dedup();
    let list: Vec<String> = missing.iter().map(u32::to_string).collect();
    let sql = format!(
        "SELECT a.attrelid::pg_catalog.int8, n.nspname, c.relname, a.attnum, a.attname \
         FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE a.attrelid IN ({}) AND a.attnum > 0",
        list.join(",")
    );
    let mut read: HashMap<u32, HashMap<i16, Named>> = missing.iter().map(|o| (*o, HashMap::new())).collect();
    for v in query(cfg, &sql, max).await? {
        let [Some(oid), Some(schema), Some(table), Some(num), Some(name)] = &v[..] else {
            return Err("unexpected catalogue row".into());
        };
        let (Ok(oid), Ok(num)) = (oid.parse::<u32>(), num.parse::<i16>()) else {
            return Err("unexpected catalogue row".into());
        };
        read.entry(oid).or_default().insert(num, (schema.clone(), table.clone(), name.clone()));
    }
    let mut known = known();
    let tables = known.entry(connection.to_string()).or_default();
    for (oid, columns) in read {
        let columns = Arc::new(columns);
        tables.insert(oid, columns.clone());
        out.insert(oid, columns);
    }
    Ok(out)
}

/// The values of a text-format `DataRow`.
pub(crate) fn text_values(body: &[u8]) -> Option<Vec<Option<String>>> {
    let n = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..n {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let v = body.get(at..at + len as usize)?;
        at += len as usize;
        out.push(Some(String::from_utf8_lossy(v).into_owned()));
    }
    Some(out)
}

/// A table's schema and name as the catalogue spells them, and its columns (name and type) in
/// order, for `COPY` rows; `None` if there is no such table. `schema` absent: resolved by the
/// search path of a fresh session of the same user.
pub(crate) async fn table_columns(
    cfg: &UpstreamConfig,
    schema: Option<&str>,
    table: &str,
    max: usize,
) -> Result<Option<TableColumns>, String> {
    let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let name = match schema {
        Some(schema) => format!("{}.{}", ident(schema), ident(table)),
        None => ident(table),
    };
    if name.contains('\\') {
        return Err("table names with a backslash are not looked up".into());
    }
    let sql = format!(
        "SELECT n.nspname, c.relname, a.attname, a.atttypid::pg_catalog.int8 \
         FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = pg_catalog.to_regclass('{}') AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        name.replace('\'', "''")
    );
    let mut found: Option<TableColumns> = None;
    for v in query(cfg, &sql, max).await? {
        let [Some(schema), Some(table), Some(column), Some(oid)] = &v[..] else {
            return Err("unexpected catalogue row".into());
        };
        let oid = oid.parse::<u32>().map_err(|_| "unexpected catalogue row")?;
        found.get_or_insert_with(|| (schema.clone(), table.clone(), Vec::new())).2.push((column.clone(), oid));
    }
    Ok(found)
}

/// The tables and views of the database a session reaches (outside the system schemas), as
/// (schema, name), read with the session's own upstream login.
pub(crate) async fn tables(cfg: &UpstreamConfig, max: usize) -> Result<Vec<(String, String)>, String> {
    let sql = "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
               WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2 LIMIT 500";
    let mut found = Vec::new();
    for v in query(cfg, sql, max).await? {
        match &v[..] {
            [Some(schema), Some(table)] => found.push((schema.clone(), table.clone())),
            _ => return Err("unexpected catalogue row".into()),
        }
    }
    Ok(found)
}

/// Runs one catalogue query on a fresh upstream login and returns its rows as text.
async fn query(cfg: &UpstreamConfig, sql: &str, max: usize) -> Result<Vec<Vec<Option<String>>>, String> {
    let mut upstream = crate::connect(cfg).await.map_err(|e| format!("cannot read the catalogue: {e}"))?;
    let stream = upstream.stream();
    stream.write_all(&crate::session::frontend_query(sql)).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    loop {
        let frame = read_backend(stream, max).await.map_err(|e| e.to_string())?;
        match frame.tag() {
            b'D' => rows.push(text_values(frame.body()).ok_or("malformed catalogue row")?),
            b'E' => return Err(frame.error_fields().map(|f| f.message).unwrap_or_default()),
            b'Z' => break,
            _ => {}
        }
    }
    let _ = stream.write_all(&[b'X', 0, 0, 0, 4]).await;
    Ok(rows)
}
