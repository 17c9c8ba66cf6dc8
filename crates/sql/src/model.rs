//! What a classification says about a statement: the types the adapter and policy read.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The statements of one simple-Query string, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub statements: Vec<Statement>,
}

/// One statement and what policy decides on for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// This statement's own text, from its first token to its last, without the `;` that ends
    /// it (comments before its first or after its last token are not part of it). For text that
    /// does not parse, the whole input, trimmed.
    pub text: String,
    /// libpg_query's fingerprint (16 hex digits) of the statement with its constants removed:
    /// for grouping, search and caching, never for approvals. Empty for text that does not parse.
    pub fingerprint: String,
    /// What policy decides, each on its object; the strictest outcome wins. Empty only for
    /// connect-only statements.
    pub accesses: Vec<Access>,
    /// The statement touches no data and changes nothing policy cares about (transaction control,
    /// `SHOW`, `DISCARD`, `DEALLOCATE`, cursor `FETCH`/`CLOSE`, `SET`/`RESET` of an allow-listed
    /// parameter): covered by `connect`, recorded but needing no further permit.
    pub connect_only: bool,
    /// For statements that update or delete rows (`UPDATE`, `DELETE`, also inside writable CTEs,
    /// and `TRUNCATE`): whether every one of those has a `WHERE` clause. `None` when the statement
    /// updates or deletes nothing.
    pub has_where: Option<bool>,
    /// Every table (or view, sequence, catalogue table) the statement names, in order of first
    /// appearance, for the policy context.
    pub tables: Vec<TableRef>,
    /// Every function the statement calls, as written (`pg_catalog.` removed), in order of first
    /// appearance.
    pub functions: Vec<String>,
    /// Why the statement is `sql.admin`, when that is a reason to give the caller (text that does
    /// not parse, a function or operator not on the allow-list, `SET` of a parameter not on the
    /// allow-list, `DO`, `GRANT`, …). Several reasons are joined with `; `.
    pub error: Option<String>,
    /// What kind of statement this is.
    pub tag: StatementTag,
}

impl Statement {
    /// The actions this statement needs, without repeats, in order.
    pub fn actions(&self) -> Vec<Action> {
        let mut out = Vec::new();
        for access in &self.accesses {
            if !out.contains(&access.action) {
                out.push(access.action);
            }
        }
        out
    }

    /// Whether any access is `sql.admin`.
    pub fn is_admin(&self) -> bool {
        self.accesses.iter().any(|a| a.action == Action::Admin)
    }

    /// Whether running this statement changes `application_name` (`SET`/`RESET application_name`,
    /// `RESET ALL`, `DISCARD ALL`): an adapter that stamps the caller's identity into
    /// `application_name` re-applies its stamp afterwards.
    pub fn changes_application_name(&self) -> bool {
        match &self.tag {
            StatementTag::Set { changes_application_name, .. } => *changes_application_name,
            StatementTag::Discard { all } => *all,
            _ => false,
        }
    }
}

/// One thing policy decides: an action on an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Access {
    pub action: Action,
    pub object: Object,
}

impl Access {
    pub fn new(action: Action, object: Object) -> Self {
        Access { action, object }
    }

    pub fn table(action: Action, table: TableRef) -> Self {
        Access { action, object: Object::Table(table) }
    }

    pub fn connection(action: Action) -> Self {
        Access { action, object: Object::Connection }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.action, self.object)
    }
}

/// The SQL actions of the policy schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "sql.select")]
    Select,
    #[serde(rename = "sql.insert")]
    Insert,
    #[serde(rename = "sql.update")]
    Update,
    #[serde(rename = "sql.delete")]
    Delete,
    #[serde(rename = "sql.ddl")]
    Ddl,
    #[serde(rename = "sql.admin")]
    Admin,
    #[serde(rename = "sql.other")]
    Other,
}

impl Action {
    /// The action's name in policies, e.g. `sql.select`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Select => "sql.select",
            Action::Insert => "sql.insert",
            Action::Update => "sql.update",
            Action::Delete => "sql.delete",
            Action::Ddl => "sql.ddl",
            Action::Admin => "sql.admin",
            Action::Other => "sql.other",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an action is on: the connection itself, or a table inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Object {
    Connection,
    Table(TableRef),
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Connection => f.write_str("the connection"),
            Object::Table(t) => write!(f, "table {t}"),
        }
    }
}

/// A table as written in the statement. `schema` is `None` when the name was written
/// unqualified: the adapter resolves it the way the server would (its `search_path`, with
/// `pg_catalog` first), so `pg_class` becomes `pg_catalog.pg_class`. Names are as the server sees
/// them: unquoted identifiers lower-cased, quoted ones exact.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableRef {
    pub schema: Option<String>,
    pub name: String,
}

impl TableRef {
    pub fn new(schema: Option<&str>, name: &str) -> Self {
        TableRef { schema: schema.map(str::to_string), name: name.to_string() }
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Which way a `COPY` moves rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyDirection {
    /// `COPY … FROM`: rows go into a table.
    From,
    /// `COPY … TO`: rows come out of a table or query.
    To,
}

/// The kind of statement. Names (`Prepare`, `Execute`, `Deallocate`) are identifiers from the
/// statement, never constants.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementTag {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    /// `CREATE`/`ALTER`/`DROP` of schema objects, `SELECT … INTO`, `CREATE TABLE AS`, `COMMENT`.
    Ddl,
    Copy {
        direction: CopyDirection,
        /// `COPY … TO/FROM 'file'` or `PROGRAM '…'`: runs on the database server (`sql.admin`).
        to_program_or_file: bool,
    },
    /// `SET`, `SET LOCAL`, `RESET`, `SET TRANSACTION …` (`param` is `transaction`),
    /// `SET SESSION CHARACTERISTICS …` (`session characteristics`), `RESET ALL` (`all`).
    Set {
        /// The parameter, lower-cased (`timezone` for `SET TIME ZONE`, `role` for `SET ROLE`,
        /// `session_authorization` for `SET SESSION AUTHORIZATION`).
        param: String,
        /// `application_name` changes (`SET`/`RESET application_name`, `RESET ALL`).
        changes_application_name: bool,
    },
    /// `BEGIN`, `START TRANSACTION`, `COMMIT`, `ROLLBACK`, `SAVEPOINT`, `RELEASE`, `SET CONSTRAINTS`,
    /// and the two-phase `PREPARE TRANSACTION`/`COMMIT PREPARED`/`ROLLBACK PREPARED` (`sql.admin`).
    Transaction,
    Show,
    /// `PREPARE name AS x`: classified as `x`.
    Prepare {
        name: String,
    },
    /// `EXECUTE name`: has no accesses of its own; see [`crate::Classifier::resolve_execute`].
    Execute {
        name: String,
    },
    /// `DEALLOCATE name` (`None` for `DEALLOCATE ALL`).
    Deallocate {
        name: Option<String>,
    },
    /// `DISCARD ALL|PLANS|SEQUENCES|TEMP`.
    Discard {
        all: bool,
    },
    /// `EXPLAIN [ANALYZE] x`: classified as `x`.
    Explain,
    /// Anything else, by its command name: `DO`, `CALL`, `GRANT`, `VACUUM`, `TRUNCATE TABLE`,
    /// `LOCK TABLE`, `LISTEN`, `NOTIFY`, `DECLARE CURSOR`, `FETCH`, …; `UNPARSEABLE` for text
    /// that does not parse.
    Other(String),
}

impl StatementTag {
    /// A short command name for logs and the policy context, e.g. `SELECT`, `SET`, `COPY`.
    pub fn command(&self) -> &str {
        match self {
            StatementTag::Select => "SELECT",
            StatementTag::Insert => "INSERT",
            StatementTag::Update => "UPDATE",
            StatementTag::Delete => "DELETE",
            StatementTag::Merge => "MERGE",
            StatementTag::Ddl => "DDL",
            StatementTag::Copy { .. } => "COPY",
            StatementTag::Set { .. } => "SET",
            StatementTag::Transaction => "TRANSACTION",
            StatementTag::Show => "SHOW",
            StatementTag::Prepare { .. } => "PREPARE",
            StatementTag::Execute { .. } => "EXECUTE",
            StatementTag::Deallocate { .. } => "DEALLOCATE",
            StatementTag::Discard { .. } => "DISCARD",
            StatementTag::Explain => "EXPLAIN",
            StatementTag::Other(name) => name,
        }
    }
}
