//! Statement text to pipeline requests, with the server's own grammar (`gatehouse-sql`), and
//! unqualified table names resolved the way the server would resolve them.

use std::collections::BTreeSet;

use gatehouse_core::Resource;
use gatehouse_core::pipeline::Request;
use gatehouse_sql::{Classifier, Object, StatementTag, TableRef};
use serde_json::json;

use crate::session::{StatementRequest, Statements};

/// [`Statements`] backed by the SQL classifier and its cache.
#[derive(Debug)]
pub struct SqlStatements {
    classifier: Classifier,
}

impl SqlStatements {
    pub fn new(cache: usize) -> Self {
        SqlStatements { classifier: Classifier::new(cache) }
    }
}

/// Every table an unqualified name could mean. The server searches `pg_catalog` first (all its
/// relations are named `pg_…`), then the session's schemas in order; deciding on each candidate
/// (strictest wins) can only refuse more, never less, than deciding on the one the server uses.
fn candidates(t: &TableRef, search_path: &[String]) -> Vec<(String, String)> {
    if let Some(schema) = &t.schema {
        return vec![(schema.clone(), t.name.clone())];
    }
    let mut out = Vec::new();
    if t.name.starts_with("pg_") {
        out.push(("pg_catalog".to_string(), t.name.clone()));
    }
    if search_path.is_empty() {
        out.push(("public".to_string(), t.name.clone()));
    }
    for schema in search_path {
        out.push((schema.clone(), t.name.clone()));
    }
    out
}

impl Statements for SqlStatements {
    fn requests(&self, sql: &str, connection: &str, search_path: &[String]) -> Vec<StatementRequest> {
        let batch = self.classifier.classify(sql);
        batch
            .statements
            .iter()
            .map(|s| {
                let mut accesses = Vec::new();
                let mut tables = BTreeSet::new();
                for a in &s.accesses {
                    match &a.object {
                        Object::Connection => accesses
                            .push((a.action.as_str().to_string(), Resource::Connection { connection: connection.into() })),
                        Object::Table(t) => {
                            for (schema, table) in candidates(t, search_path) {
                                tables.insert(format!("{schema}.{table}"));
                                accesses.push((
                                    a.action.as_str().to_string(),
                                    Resource::Table { connection: connection.into(), schema, table },
                                ));
                            }
                        }
                    }
                }
                accesses.dedup();
                let mut context = serde_json::Map::new();
                context.insert("statement".into(), json!(s.text));
                context.insert("fingerprint".into(), json!(s.fingerprint));
                context.insert("tables".into(), json!(tables));
                if let Some(w) = s.has_where {
                    context.insert("has_where".into(), json!(w));
                }
                let refuse = match &s.tag {
                    StatementTag::Set { param, .. } if param == "application_name" => Some(
                        "application_name carries the caller's identity for the resource's logs and cannot be changed in a session; set it when connecting"
                            .to_string(),
                    ),
                    _ => None,
                };
                let restamp = s.changes_application_name();
                StatementRequest {
                    request: Request {
                        text: s.text.clone(),
                        fingerprint: Some(s.fingerprint.clone()),
                        accesses,
                        note: s.error.clone(),
                        context,
                        params: Vec::new(),
                        digest: crate::digest::statement(&s.text),
                    },
                    refuse,
                    restamp,
                }
            })
            .collect()
    }
}
