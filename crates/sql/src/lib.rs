//! Classifies PostgreSQL statement text into what policy decides on, using the server's own
//! grammar (libpg_query, through the `pg_query` crate): each statement of a simple-Query string
//! becomes a [`Statement`] with its [`Access`]es (a `sql.*` [`Action`] on the connection or on a
//! [`TableRef`]), the tables and functions it names, whether its updates and deletes have a
//! `WHERE`, and a [`StatementTag`]. It follows DESIGN.md's rules and fails closed: anything it
//! cannot classify, and any function, operator or parameter not on an allow-list, is `sql.admin`.
//! It does no I/O and knows no policy, catalogue or session state: it does not resolve unqualified
//! names (the adapter does, against the server's catalogue and `search_path`), it does not track
//! prepared statements (the adapter keeps each `PREPARE`'s classification and calls
//! [`Classifier::resolve_execute`]), and it does not decide anything.
//!
//! # Rules
//!
//! - Kind → action: `SELECT`/`VALUES`/`TABLE` select; `INSERT`, `UPDATE`, `DELETE` their own;
//!   `INSERT … ON CONFLICT DO UPDATE` insert and update; `MERGE` insert, update and delete on its
//!   target; `RETURNING` adds a select on the target; `SELECT … FOR UPDATE/SHARE` adds an update on
//!   the tables it locks (the server asks for `UPDATE` privilege too); `TRUNCATE` delete with
//!   `has_where = Some(false)`; `SELECT … INTO`, `CREATE TABLE AS`, `CREATE VIEW` and other DDL
//!   `sql.ddl` on the objects they create or change, plus a select on every table their query reads
//!   (a view exposes what it reads); `LOCK` `sql.other` on its tables; `LISTEN` and `NOTIFY` (which
//!   carry data between sessions) `sql.other` on the connection.
//! - Every table counts wherever it is named: joins, subqueries in any clause, set operations,
//!   `WITH` queries (writable ones as the write they perform; a name defined by `WITH` is not a
//!   table where it is in scope), `INSERT … SELECT`, `MERGE … USING`, `UPDATE … FROM`,
//!   `DELETE … USING`, statements inside `CREATE SCHEMA`, `CREATE RULE` and `BEGIN ATOMIC` bodies.
//!   Views and catalogue tables are tables.
//! - `has_where`: `Some(false)` when any `UPDATE` or `DELETE` in the statement (also one inside a
//!   `WITH`) has no `WHERE`, or it is a `TRUNCATE`; `Some(true)` when all have one (`WHERE CURRENT
//!   OF` counts); `None` when it updates and deletes nothing.
//! - `EXPLAIN [ANALYZE] x`, `PREPARE p AS x` and `DECLARE c CURSOR FOR x` are `x`. `EXECUTE p` has no
//!   accesses of its own: it is `sql.admin` on the connection (with `error` saying so) until the
//!   adapter substitutes the prepared statement with [`Classifier::resolve_execute`].
//! - `COPY t FROM STDIN` inserts into `t`; `COPY t TO STDOUT` selects; `COPY (query) TO STDOUT` is
//!   the query; `COPY` to or from a file or `PROGRAM` is `sql.admin`.
//! - Connect-only (no accesses, `connect_only`): transaction control, `SET CONSTRAINTS`, `SHOW`,
//!   `DISCARD`, `DEALLOCATE`, `FETCH`/`MOVE`/`CLOSE` of a cursor (its `DECLARE` was decided),
//!   `UNLISTEN`, `SET TRANSACTION …`, and `SET`/`RESET` of a parameter on [`ALLOWED_PARAMETERS`].
//!   `RESET ALL` is connect-only like `DISCARD ALL`, which includes it: it returns every parameter
//!   to its value at the start of the session (never `role` or `session_authorization`, which it
//!   does not reset); its tag says `application_name` changed, so the adapter re-stamps it.
//! - `sql.admin` on the connection: `SET`/`RESET` of `role`, `session_authorization` and every
//!   parameter not on the allow-list (`search_path`, `session_replication_role`,
//!   `default_transaction_read_only`, `row_security`, …); `SET SESSION CHARACTERISTICS AS
//!   TRANSACTION READ WRITE`; two-phase commit; `DO`; `CALL`; `LOAD`; `ALTER SYSTEM`;
//!   `GRANT`/`REVOKE`; roles; databases, tablespaces, extensions, languages, foreign servers and
//!   user mappings, publications and subscriptions, event triggers, casts and conversions; row
//!   security policies and `ALTER TABLE … OWNER TO` or `… ROW LEVEL SECURITY`; `VACUUM`,
//!   `ANALYZE`, `CLUSTER`, `REINDEX`, `CHECKPOINT`; any statement kind it does not know.
//! - Functions: a call of a function not on [`ALLOWED_FUNCTIONS`] (matched after removing
//!   `pg_catalog.`) is `sql.admin` with `error` naming it, wherever it is (also in DDL: a column
//!   default or index expression runs when the DDL does); so is an operator not on
//!   [`BUILTIN_OPERATORS`] or qualified with another schema. `coalesce`, `nullif`, `greatest`,
//!   `least`, `CASE`, `current_timestamp` and the like are expressions, not calls.
//! - A statement's own action is always among its accesses, on the connection when no table
//!   carries it: `SELECT 1` and `SELECT now()` are selects on the connection, and `CREATE FUNCTION
//!   … BEGIN ATOMIC SELECT … FROM t; END` is `sql.ddl` on the connection besides a select on `t`.
//!   A `sql.admin` statement keeps its other accesses (`SELECT my_func(a) FROM t` is a select on
//!   `t` and `sql.admin` on the connection).
//! - Text that does not parse is one `sql.admin` statement whose `error` says so.
//!
//! # Cache
//!
//! Parsing is the expensive part, so [`Classifier`] keeps classifications in a bounded LRU cache
//! keyed on the token stream from the server's lexer (`pg_query::scan_tokens`, much cheaper than
//! a parse): every token's kind and exact text, except that the text of constants (integer,
//! numeric, string, bit-string and hex-string tokens) is left out, and comments and whitespace are
//! left out entirely (the lexer drops them; the grammar only ever sees tokens). Identifiers keep
//! their case and quoting, keywords, operators and `$n` parameters their text. On a hit the
//! cached classification is returned with each statement's text cut from the new input at the
//! same token positions. So statements that differ only in constants, comments or layout are
//! parsed once, and two inputs share an entry only if the grammar receives the same tokens.
//!
//! Why a constant's value cannot change the classification: tables, functions, operators and
//! parameters are named by identifiers and keywords, which are in the key; the kind of each
//! constant is in the key too (so `COPY t FROM STDIN` and `COPY t FROM 'file'` differ, as do `1`
//! and `1.5`); and no rule looks at a constant's value, nor does any message quote one. Where a
//! constant names a table it does not read it: `'pg_catalog.pg_authid'::regclass` only looks the
//! name up, `has_table_privilege('secrets', 'select')` reads metadata. Functions that run SQL or
//! open files given as a string (`query_to_xml`, `pg_read_file`, `dblink`) are `sql.admin`
//! whatever the string. The cases found where a constant's value does matter, and what is done:
//! - the string after `UESCAPE` in `U&"d!0061ta" UESCAPE '!'` changes an identifier's name: it is
//!   kept in the key like an identifier;
//! - `COPY t FROM ''` has an empty file name, which the parse tree cannot tell from `FROM STDIN`:
//!   whether a `COPY` talks to the client is read from its tokens (`STDIN`/`STDOUT` right after
//!   the first `FROM`/`TO` outside parentheses), never from the file name;
//! - `READ WRITE`/`READ ONLY` in `SET SESSION CHARACTERISTICS` become a constant in the tree, but
//!   they are keywords in the token stream, so they are in the key;
//! - libpg_query's fingerprint keeps some constants (`current_time(3)`, the body of `DO`), so
//!   fingerprints are taken from the canonical text (below), not from the input.
//!
//! As a check on this reasoning, an entry is stored only when the input's classification equals
//! that of its canonical text: the same tokens with every constant replaced by a fixed, non-empty
//! one of its kind. A construct nobody thought of would show up there and simply not be cached
//! (the property tests fill templates with random constants and compare against fresh, uncached
//! classifications; that is how the `COPY ''` case was found). Inputs longer than 32 KiB and text
//! that does not scan or parse are never cached.
//!
//! Parsing runs on a short-lived thread with a large stack: libpg_query accepts trees up to
//! 10,000 levels deep (a 5,000-term sum is one), and decoding one in Rust recurses once per
//! level, which would overflow an ordinary (2 MiB) async worker stack and abort the process.
//!
//! # What the adapter must guarantee
//!
//! The lexer here assumes `standard_conforming_strings = on` (the default; `SET` of it is
//! `sql.admin`) and UTF-8 text: the adapter passes the text the server will lex, converted from
//! the session's `client_encoding`, and refuses a session whose server reports
//! `standard_conforming_strings = off`.
//!
//! # Known limits
//!
//! - Overloads: an allow-listed name resolves, by argument types, to a user-defined function of
//!   that name if one exists in a schema on the `search_path`; creating one is `sql.ddl`.
//! - Attribute notation `t.f` calls a function `f(t)` taking the row type when `t` has no column
//!   `f`; the grammar cannot tell it from a column. Creating such a function is `sql.ddl`.
//! - Casts run the target type's input function and domain checks, which may be user-defined.
//! - Triggers, rules and row security policies run the code their owners defined.
//! - `EXPLAIN EXECUTE p` and `CREATE TABLE … AS EXECUTE p` are `sql.admin` (not resolved).

#![forbid(unsafe_code)]

mod cache;
mod classify;
mod copy;
mod model;
mod rules;
mod walk;

pub use cache::{Classifier, classify_uncached};
pub use copy::{CopyFormat, CopyOut, copy_out};
pub use model::{Access, Action, Batch, CopyDirection, Object, Statement, StatementTag, TableRef};
pub use rules::{ALLOWED_FUNCTIONS, ALLOWED_PARAMETERS, BUILTIN_OPERATORS, Rules};

/// Why text could not be classified; its message becomes the statement's `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error("the text contains a NUL byte, which PostgreSQL does not accept (sql.admin)")]
    Nul,
    #[error("the text could not be scanned, so it is sql.admin: {0}")]
    Scan(String),
    #[error("the text could not be parsed, so it is sql.admin: {0}")]
    Parse(String),
    #[error("the classifier failed, so the text is sql.admin: {0}")]
    Internal(String),
}

impl ClassifyError {
    fn from_pg(error: pg_query::Error) -> Self {
        match error {
            pg_query::Error::Conversion(_) => ClassifyError::Nul,
            pg_query::Error::Scan(message) => ClassifyError::Scan(message),
            pg_query::Error::Parse(message) | pg_query::Error::Split(message) => ClassifyError::Parse(message),
            other => ClassifyError::Internal(other.to_string()),
        }
    }
}
