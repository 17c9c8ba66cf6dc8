use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A registered connection as policy sees it: its name, protocol type and tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub name: String,
    /// `postgres`, `mysql`, `redis`, `ssh`, `http` or `kubernetes`.
    pub kind: String,
    pub tags: BTreeMap<String, String>,
}

/// What a request touches. Finer resources live inside their connection; the policy crate turns
/// each into a Cedar entity with its parents (tables in connections, path and key prefixes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Resource {
    /// `Connection::"pg-prod"`.
    Connection { connection: String },
    /// `Table::"pg-prod/public.payments"`.
    Table { connection: String, schema: String, table: String },
    /// `Column::"pg-prod/public.users.email"`.
    Column { connection: String, schema: String, table: String, column: String },
    /// `Key::"redis-cache/session:42"`, inside its `:`-separated prefixes.
    Key { connection: String, key: String },
    /// `Path::"billing-api/v1/invoices"`, inside its `/`-separated prefixes.
    Path { connection: String, path: String },
    /// `KubeObject::"cluster/namespaces/ns/pods/name"`, inside its `/`-separated prefixes.
    KubeObject { connection: String, path: String },
    /// `Api::"identities"`: a part of the gateway's own management API.
    Api { area: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceError {
    #[error("resource {0:?} is not of the form Type::\"id\"")]
    Syntax(String),
    #[error("unknown resource type {0:?}; expected Connection, Table, Column, Key, Path, KubeObject or Api")]
    UnknownType(String),
    #[error("{kind} id {id:?} must look like {expected}")]
    BadId { kind: &'static str, id: String, expected: &'static str },
}

impl Resource {
    /// The connection this resource belongs to (none for management API areas).
    pub fn connection(&self) -> Option<&str> {
        match self {
            Resource::Connection { connection }
            | Resource::Table { connection, .. }
            | Resource::Column { connection, .. }
            | Resource::Key { connection, .. }
            | Resource::Path { connection, .. }
            | Resource::KubeObject { connection, .. } => Some(connection),
            Resource::Api { .. } => None,
        }
    }

    /// The Cedar entity type name.
    pub fn entity_type(&self) -> &'static str {
        match self {
            Resource::Connection { .. } => "Connection",
            Resource::Table { .. } => "Table",
            Resource::Column { .. } => "Column",
            Resource::Key { .. } => "Key",
            Resource::Path { .. } => "Path",
            Resource::KubeObject { .. } => "KubeObject",
            Resource::Api { .. } => "Api",
        }
    }

    /// The Cedar entity id, e.g. `pg-prod/public.payments`.
    pub fn entity_id(&self) -> String {
        self.id_pieces().concat()
    }

    /// `Type::"id"`, as written in policies (also what `Display` writes).
    pub fn entity_ref(&self) -> String {
        self.to_string()
    }

    /// The pieces the entity id is made of, in order.
    fn id_pieces(&self) -> [&str; 7] {
        match self {
            Resource::Connection { connection } => [connection, "", "", "", "", "", ""],
            Resource::Table { connection, schema, table } => [connection, "/", schema, ".", table, "", ""],
            Resource::Column { connection, schema, table, column } => {
                [connection, "/", schema, ".", table, ".", column]
            }
            Resource::Key { connection, key } => [connection, "/", key, "", "", "", ""],
            Resource::Path { connection, path } | Resource::KubeObject { connection, path } => {
                [connection, "/", path.trim_start_matches('/'), "", "", "", ""]
            }
            Resource::Api { area } => [area, "", "", "", "", "", ""],
        }
    }

    /// Parses `Type::"id"` as written in policies and on the command line.
    pub fn parse(text: &str) -> Result<Resource, ResourceError> {
        let text = text.trim();
        let (ty, rest) = text.split_once("::").ok_or_else(|| ResourceError::Syntax(text.into()))?;
        let id = rest
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .filter(|id| !id.contains('"') && !id.contains('\\'))
            .ok_or_else(|| ResourceError::Syntax(text.into()))?;
        let split_conn = |kind: &'static str, expected: &'static str| {
            id.split_once('/')
                .filter(|(c, r)| !c.is_empty() && !r.is_empty())
                .map(|(c, r)| (c.to_string(), r.to_string()))
                .ok_or(ResourceError::BadId { kind, id: id.into(), expected })
        };
        match ty.trim() {
            "Connection" if !id.is_empty() && !id.contains('/') => Ok(Resource::Connection { connection: id.into() }),
            "Connection" => Err(ResourceError::BadId { kind: "Connection", id: id.into(), expected: "NAME" }),
            "Table" => {
                const EXPECTED: &str = "CONNECTION/schema.table";
                let (connection, rest) = split_conn("Table", EXPECTED)?;
                let (schema, table) = rest
                    .split_once('.')
                    .filter(|(s, t)| !s.is_empty() && !t.is_empty() && !t.contains('.'))
                    .ok_or(ResourceError::BadId { kind: "Table", id: id.into(), expected: EXPECTED })?;
                Ok(Resource::Table { connection, schema: schema.into(), table: table.into() })
            }
            "Column" => {
                const EXPECTED: &str = "CONNECTION/schema.table.column";
                let (connection, rest) = split_conn("Column", EXPECTED)?;
                let parts: Vec<&str> = rest.split('.').collect();
                match parts.as_slice() {
                    [s, t, c] if !s.is_empty() && !t.is_empty() && !c.is_empty() => Ok(Resource::Column {
                        connection,
                        schema: (*s).into(),
                        table: (*t).into(),
                        column: (*c).into(),
                    }),
                    _ => Err(ResourceError::BadId { kind: "Column", id: id.into(), expected: EXPECTED }),
                }
            }
            "Key" => {
                let (connection, key) = split_conn("Key", "CONNECTION/key")?;
                Ok(Resource::Key { connection, key })
            }
            "Path" => {
                let (connection, path) = split_conn("Path", "CONNECTION/path")?;
                Ok(Resource::Path { connection, path })
            }
            "KubeObject" => {
                let (connection, path) = split_conn("KubeObject", "CONNECTION/path")?;
                Ok(Resource::KubeObject { connection, path })
            }
            "Api" if !id.is_empty() => Ok(Resource::Api { area: id.into() }),
            "Api" => Err(ResourceError::BadId { kind: "Api", id: id.into(), expected: "AREA" }),
            other => Err(ResourceError::UnknownType(other.into())),
        }
    }
}

/// `Type::"id"`, as written in policies: the id quoted and escaped as Rust's `{:?}` does.
impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pieces = self.id_pieces();
        // `{:?}` writes printable ASCII other than `"` and `\` as it is: the common case is
        // written piece by piece, with no escaping pass and no id built first.
        let plain = |p: &&str| p.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
        if pieces.iter().all(plain) {
            f.write_str(self.entity_type())?;
            f.write_str("::\"")?;
            pieces.iter().try_for_each(|p| f.write_str(p))?;
            return f.write_str("\"");
        }
        write!(f, "{}::{:?}", self.entity_type(), self.entity_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for text in [
            "Connection::\"pg-prod\"",
            "Table::\"pg-prod/public.payments\"",
            "Table::\"pg-prod/pg_catalog.pg_type\"",
            "Column::\"pg-prod/public.users.email\"",
            "Key::\"redis-cache/session:42\"",
            "Path::\"billing-api/v1/invoices/42/refund\"",
            "Api::\"identities\"",
        ] {
            let r = Resource::parse(text).unwrap();
            assert_eq!(r.entity_ref(), text);
        }
    }

    #[test]
    fn entity_refs_escape_the_id_as_policies_quote_it() {
        for table in ["payments", "it's", "say \"hi\"", "back\\slash", "tab\there", "café", "\u{7f}", "\u{301}x"] {
            let r = Resource::Table { connection: "c".into(), schema: "s".into(), table: table.into() };
            assert_eq!(r.entity_ref(), format!("Table::{:?}", format!("c/s.{table}")), "{table}");
        }
        let key = Resource::Key { connection: "redis".into(), key: "a\nb".into() };
        assert_eq!(key.entity_ref(), "Key::\"redis/a\\nb\"");
        let every = [
            Resource::Connection { connection: "c\"".into() },
            Resource::Column { connection: "c".into(), schema: "s".into(), table: "t".into(), column: "é".into() },
            Resource::Path { connection: "api".into(), path: "/v1/x".into() },
            Resource::KubeObject { connection: "k".into(), path: "ns/\\".into() },
            Resource::Api { area: "identities".into() },
        ];
        for r in every {
            assert_eq!(r.to_string(), format!("{}::{:?}", r.entity_type(), r.entity_id()));
        }
    }

    #[test]
    fn rejects_malformed() {
        assert!(Resource::parse("Table::\"pg-prod/payments\"").is_err());
        assert!(Resource::parse("Table::pg-prod/public.t").is_err());
        assert!(Resource::parse("Widget::\"x\"").is_err());
        assert!(Resource::parse("Connection::\"a/b\"").is_err());
        assert!(Resource::parse("Column::\"c/a.b\"").is_err());
    }
}
