//! Walks one raw parse tree (libpg_query's, as JSON) and collects what policy needs.
//!
//! The walk is generic: every node is visited, so a table or function call inside a construct
//! this file does not name is still found. Only the nodes whose meaning matters are handled by
//! name: statements, `RangeVar` (a table), `FuncCall`, operators, `WITH` (whose names shadow
//! tables) and the clauses that decide the action (targets of writes, `SELECT … INTO`,
//! `FOR UPDATE`). A `RangeVar` in a field that is not a `Node` (the target of an `INSERT`, say)
//! is recognised by its shape.

use pg_query::protobuf as pb;
use serde_json::{Map, Value};

use crate::model::{Access, Action, CopyDirection, Object, StatementTag, TableRef};
use crate::rules::Rules;

type Obj = Map<String, Value>;

/// What one statement touches, collected during the walk.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    pub accesses: Vec<Access>,
    pub tables: Vec<TableRef>,
    pub functions: Vec<String>,
    pub admin: Vec<String>,
    /// An `UPDATE`/`DELETE`/`TRUNCATE` without `WHERE` was seen.
    pub write_without_where: bool,
    /// An `UPDATE`/`DELETE` with `WHERE` was seen.
    pub write_with_where: bool,
    /// A `SELECT … INTO` was seen.
    pub select_into: bool,
}

impl Facts {
    fn access(&mut self, action: Action, object: Object) {
        let access = Access::new(action, object);
        if !self.accesses.contains(&access) {
            self.accesses.push(access);
        }
    }

    fn table(&mut self, action: Option<Action>, table: TableRef) {
        if let Some(action) = action {
            self.access(action, Object::Table(table.clone()));
        }
        if !self.tables.contains(&table) {
            self.tables.push(table);
        }
    }

    fn admin(&mut self, reason: String) {
        if !self.admin.contains(&reason) {
            self.admin.push(reason);
        }
    }

    /// Makes sure the statement's own action is there: `CREATE FUNCTION … BEGIN ATOMIC SELECT …
    /// FROM t; END` reads `t` but is first of all `sql.ddl`. Decided on the connection when no
    /// object of the statement carries it.
    pub fn primary(&mut self, kind: &Kind) {
        if !kind.connect_only && !self.accesses.iter().any(|a| a.action == kind.on_connection) {
            self.access(kind.on_connection, Object::Connection);
        }
    }

    fn function(&mut self, name: String) {
        if !self.functions.contains(&name) {
            self.functions.push(name);
        }
    }
}

/// What a statement is, besides its facts.
#[derive(Debug)]
pub(crate) struct Kind {
    pub tag: StatementTag,
    pub connect_only: bool,
    /// The statement's own action: decided on the connection when no table carries it
    /// (`SELECT 1` is a select on the connection).
    pub on_connection: Action,
}

impl Kind {
    fn new(tag: StatementTag, on_connection: Action) -> Self {
        Kind { tag, connect_only: false, on_connection }
    }

    fn connect_only(tag: StatementTag) -> Self {
        Kind { tag, connect_only: true, on_connection: Action::Other }
    }

    fn other(name: &str, on_connection: Action) -> Self {
        Kind::new(StatementTag::Other(name.to_string()), on_connection)
    }
}

/// The walk's context: which action a table found here gets (none: only listed), and whether
/// rows read here are locked (`FOR UPDATE`, which the server lets only writers do).
#[derive(Debug, Clone, Copy)]
struct Cx {
    tables: Option<Action>,
    lock: bool,
}

impl Cx {
    const READ: Cx = Cx { tables: Some(Action::Select), lock: false };

    fn with(action: Option<Action>) -> Cx {
        Cx { tables: action, lock: false }
    }
}

pub(crate) struct Walker<'r> {
    rules: &'r Rules,
    /// Names of the `WITH` queries in scope, innermost last.
    scopes: Vec<Vec<String>>,
    /// How many statements enclose the current node (1 at the top level).
    depth: usize,
    /// For a `COPY`: its tokens say `FROM STDIN` or `TO STDOUT` (the tree cannot tell `''`).
    pub copy_with_client: bool,
    pub facts: Facts,
}

impl<'r> Walker<'r> {
    pub fn new(rules: &'r Rules) -> Self {
        Walker { rules, scopes: Vec::new(), depth: 0, copy_with_client: false, facts: Facts::default() }
    }

    /// Classifies one top-level statement (the `stmt` of a `RawStmt`).
    pub fn top(&mut self, stmt: &Value) -> Kind {
        match tagged(stmt) {
            Some((tag, body)) => self.statement(tag, body),
            None => {
                self.facts.admin("the statement is empty or not recognised".into());
                Kind::other("UNKNOWN", Action::Admin)
            }
        }
    }

    fn statement(&mut self, tag: &str, body: &Obj) -> Kind {
        self.depth += 1;
        let kind = self.statement_kind(tag, body);
        self.depth -= 1;
        kind
    }

    fn statement_kind(&mut self, tag: &str, body: &Obj) -> Kind {
        use pb::ObjectType as O;
        match tag {
            "SelectStmt" => {
                self.select(body, false);
                let tag = if self.facts.select_into { StatementTag::Ddl } else { StatementTag::Select };
                Kind::new(tag, Action::Select)
            }
            "InsertStmt" => {
                self.dml(tag, body);
                Kind::new(StatementTag::Insert, Action::Insert)
            }
            "UpdateStmt" => {
                self.dml(tag, body);
                Kind::new(StatementTag::Update, Action::Update)
            }
            "DeleteStmt" => {
                self.dml(tag, body);
                Kind::new(StatementTag::Delete, Action::Delete)
            }
            "MergeStmt" => {
                self.dml(tag, body);
                Kind::new(StatementTag::Merge, Action::Update)
            }
            "ExplainStmt" => {
                self.fields_except(body, &["query"], Cx::READ);
                let inner = self.inner_statement(body.get("query"));
                Kind { tag: StatementTag::Explain, ..inner }
            }
            "PrepareStmt" => {
                self.fields_except(body, &["query"], Cx::READ);
                let inner = self.inner_statement(body.get("query"));
                Kind { tag: StatementTag::Prepare { name: str_of(body, "name").to_string() }, ..inner }
            }
            "DeclareCursorStmt" => {
                self.fields_except(body, &["query"], Cx::READ);
                let inner = self.inner_statement(body.get("query"));
                Kind { tag: StatementTag::Other("DECLARE CURSOR".into()), ..inner }
            }
            "ExecuteStmt" => {
                // Decided as the prepared statement it runs (`Classifier::resolve_execute`); its
                // own facts are those of its parameters.
                let name = str_of(body, "name").to_string();
                self.fields_except(body, &["name"], Cx::READ);
                if self.depth > 1 {
                    self.facts.admin(format!("EXECUTE {name} inside another statement cannot be resolved"));
                }
                Kind::new(StatementTag::Execute { name }, Action::Admin)
            }
            "DeallocateStmt" => {
                let name = str_of(body, "name");
                let name = (!bool_of(body, "isall") && !name.is_empty()).then(|| name.to_string());
                Kind::connect_only(StatementTag::Deallocate { name })
            }
            "TransactionStmt" => {
                use pb::TransactionStmtKind as T;
                let kind = int_of(body, "kind");
                if [T::TransStmtPrepare, T::TransStmtCommitPrepared, T::TransStmtRollbackPrepared]
                    .iter()
                    .any(|k| *k as i64 == kind)
                {
                    self.facts.admin(
                        "two-phase commit (PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED) is sql.admin"
                            .into(),
                    );
                    return Kind::new(StatementTag::Transaction, Action::Admin);
                }
                Kind::connect_only(StatementTag::Transaction)
            }
            "ConstraintsSetStmt" => Kind::connect_only(StatementTag::Transaction),
            "VariableSetStmt" => self.set(body),
            "VariableShowStmt" => Kind::connect_only(StatementTag::Show),
            "DiscardStmt" => {
                let all = int_of(body, "target") == pb::DiscardMode::DiscardAll as i64;
                Kind::connect_only(StatementTag::Discard { all })
            }
            "FetchStmt" => {
                let name = if bool_of(body, "ismove") { "MOVE" } else { "FETCH" };
                Kind::connect_only(StatementTag::Other(name.into()))
            }
            "ClosePortalStmt" => Kind::connect_only(StatementTag::Other("CLOSE CURSOR".into())),
            "UnlistenStmt" => Kind::connect_only(StatementTag::Other("UNLISTEN".into())),
            "ListenStmt" => Kind::other("LISTEN", Action::Other),
            "NotifyStmt" => Kind::other("NOTIFY", Action::Other),
            "LockStmt" => {
                self.fields(body, Cx::with(Some(Action::Other)));
                Kind::other("LOCK TABLE", Action::Other)
            }
            "TruncateStmt" => {
                self.fields(body, Cx::with(Some(Action::Delete)));
                self.facts.write_without_where = true;
                Kind::other("TRUNCATE TABLE", Action::Delete)
            }
            "CopyStmt" => self.copy(body),
            "CreateTableAsStmt" => {
                if let Some(into) = body.get("into").and_then(Value::as_object) {
                    self.select_into(into);
                }
                self.fields_except(body, &["into"], Cx::READ);
                Kind::new(StatementTag::Ddl, Action::Ddl)
            }
            "CallStmt" => {
                if let Some(call) = body.get("funccall").and_then(Value::as_object) {
                    self.func_call(call, Cx::READ);
                }
                self.fields_except(body, &["funccall"], Cx::READ);
                self.facts.admin("CALL runs a procedure".into());
                Kind::other("CALL", Action::Admin)
            }
            "DoStmt" => self.admin_statement(body, "DO", "DO runs procedural code"),
            "LoadStmt" => self.admin_statement(body, "LOAD", "LOAD loads a shared library into the server"),
            "AlterSystemStmt" => {
                self.admin_statement(body, "ALTER SYSTEM", "ALTER SYSTEM changes the server's configuration")
            }
            "GrantStmt" | "GrantRoleStmt" | "AlterDefaultPrivilegesStmt" | "ReassignOwnedStmt" | "DropOwnedStmt" => {
                self.admin_statement(body, command_name(tag), "changing privileges or ownership is sql.admin")
            }
            "CreateRoleStmt" | "AlterRoleStmt" | "AlterRoleSetStmt" | "DropRoleStmt" => {
                self.admin_statement(body, command_name(tag), "creating, changing or dropping roles is sql.admin")
            }
            "VacuumStmt" | "ClusterStmt" | "ReindexStmt" | "CheckPointStmt" => {
                self.admin_statement(body, command_name(tag), "server maintenance is sql.admin")
            }
            "CreatedbStmt"
            | "AlterDatabaseStmt"
            | "AlterDatabaseRefreshCollStmt"
            | "AlterDatabaseSetStmt"
            | "DropdbStmt"
            | "CreateTableSpaceStmt"
            | "DropTableSpaceStmt"
            | "AlterTableSpaceOptionsStmt"
            | "AlterTableMoveAllStmt"
            | "CreateExtensionStmt"
            | "AlterExtensionStmt"
            | "AlterExtensionContentsStmt"
            | "CreateFdwStmt"
            | "AlterFdwStmt"
            | "CreateForeignServerStmt"
            | "AlterForeignServerStmt"
            | "CreateUserMappingStmt"
            | "AlterUserMappingStmt"
            | "DropUserMappingStmt"
            | "ImportForeignSchemaStmt"
            | "CreatePolicyStmt"
            | "AlterPolicyStmt"
            | "CreateAmStmt"
            | "CreateEventTrigStmt"
            | "AlterEventTrigStmt"
            | "CreatePlangStmt"
            | "SecLabelStmt"
            | "AlterOwnerStmt"
            | "CreatePublicationStmt"
            | "AlterPublicationStmt"
            | "CreateSubscriptionStmt"
            | "AlterSubscriptionStmt"
            | "DropSubscriptionStmt"
            | "CreateCastStmt"
            | "CreateTransformStmt"
            | "CreateConversionStmt" => self.admin_statement(
                body,
                command_name(tag),
                "it changes databases, extensions, foreign servers, row security, ownership or server-wide behaviour",
            ),
            "AlterTableStmt" => {
                use pb::AlterTableType as A;
                let admin_cmds = [
                    A::AtChangeOwner,
                    A::AtEnableRowSecurity,
                    A::AtDisableRowSecurity,
                    A::AtForceRowSecurity,
                    A::AtNoForceRowSecurity,
                ];
                for cmd in list_of(body, "cmds") {
                    if let Some(("AlterTableCmd", cmd)) = tagged(cmd) {
                        let subtype = int_of(cmd, "subtype");
                        if admin_cmds.iter().any(|a| *a as i64 == subtype) {
                            self.facts.admin("changing a table's owner or row security is sql.admin".into());
                        }
                    }
                }
                self.ddl(body)
            }
            "DropStmt" => {
                let remove_type = int_of(body, "remove_type");
                if is_admin_object(remove_type) {
                    self.facts.admin(format!("DROP {} is sql.admin", object_type_name(remove_type)));
                }
                if [O::ObjectTable, O::ObjectView, O::ObjectMatview, O::ObjectForeignTable, O::ObjectSequence]
                    .iter()
                    .any(|o| *o as i64 == remove_type)
                {
                    for object in list_of(body, "objects") {
                        if let Some(table) = name_list_table(object) {
                            self.facts.table(Some(Action::Ddl), table);
                        }
                    }
                    return Kind::new(StatementTag::Ddl, Action::Ddl);
                }
                self.ddl(body)
            }
            "RenameStmt" | "AlterObjectSchemaStmt" => {
                let object_type = int_of(body, if tag == "RenameStmt" { "rename_type" } else { "object_type" });
                if is_admin_object(object_type) {
                    self.facts.admin(format!("changing a {} is sql.admin", object_type_name(object_type)));
                }
                self.ddl(body)
            }
            "CreateSchemaStmt" => {
                if body.get("authrole").is_some_and(|r| !r.is_null()) {
                    self.facts.admin("CREATE SCHEMA … AUTHORIZATION gives a schema to another role".into());
                }
                self.ddl(body)
            }
            "CreateStmt"
            | "CreateForeignTableStmt"
            | "IndexStmt"
            | "CreateStatsStmt"
            | "AlterStatsStmt"
            | "CreateSeqStmt"
            | "AlterSeqStmt"
            | "DefineStmt"
            | "CreateDomainStmt"
            | "AlterDomainStmt"
            | "CompositeTypeStmt"
            | "CreateEnumStmt"
            | "CreateRangeStmt"
            | "AlterEnumStmt"
            | "AlterTypeStmt"
            | "CreateFunctionStmt"
            | "AlterFunctionStmt"
            | "CreateTrigStmt"
            | "RuleStmt"
            | "ViewStmt"
            | "RefreshMatViewStmt"
            | "CommentStmt"
            | "CreateOpClassStmt"
            | "CreateOpFamilyStmt"
            | "AlterOpFamilyStmt"
            | "AlterOperatorStmt"
            | "AlterCollationStmt"
            | "AlterTsdictionaryStmt"
            | "AlterTsconfigurationStmt"
            | "AlterObjectDependsStmt"
            | "ReplicaIdentityStmt" => self.ddl(body),
            other => {
                self.fields(body, Cx::with(None));
                self.facts.admin(format!("{other} statements are not recognised by the classifier"));
                Kind::other(command_name(other), Action::Admin)
            }
        }
    }

    /// The statement inside `EXPLAIN`, `PREPARE`, `DECLARE`.
    fn inner_statement(&mut self, query: Option<&Value>) -> Kind {
        match query.and_then(tagged) {
            Some((tag, body)) => self.statement(tag, body),
            None => {
                self.facts.admin("the statement has no recognisable inner statement".into());
                Kind::other("UNKNOWN", Action::Admin)
            }
        }
    }

    fn admin_statement(&mut self, body: &Obj, command: &str, reason: &str) -> Kind {
        self.fields(body, Cx::with(None));
        self.facts.admin(format!("{command}: {reason}"));
        Kind::other(command, Action::Admin)
    }

    fn ddl(&mut self, body: &Obj) -> Kind {
        self.fields(body, Cx::with(Some(Action::Ddl)));
        Kind::new(StatementTag::Ddl, Action::Ddl)
    }

    fn set(&mut self, body: &Obj) -> Kind {
        use pb::VariableSetKind as V;
        let kind = int_of(body, "kind");
        let name = str_of(body, "name");
        if kind == V::VarResetAll as i64 {
            // RESET ALL restores every parameter to its value at the start of the session (role
            // and session authorization are not reset by it), like DISCARD ALL does.
            return Kind::connect_only(StatementTag::Set { param: "all".into(), changes_application_name: true });
        }
        let param = name.to_lowercase();
        let tag = StatementTag::Set { param: param.clone(), changes_application_name: param == "application_name" };
        if kind == V::VarSetMulti as i64 {
            // SET TRANSACTION …, SET SESSION CHARACTERISTICS AS TRANSACTION …, SET TRANSACTION SNAPSHOT.
            let read_write = list_of(body, "args").iter().filter_map(|a| tagged(a)).any(|(t, d)| {
                t == "DefElem" && str_of(d, "defname") == "transaction_read_only" && const_int(d.get("arg")) == Some(0)
            });
            if param == "session characteristics" && read_write {
                self.facts.admin(
                    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE changes default_transaction_read_only"
                        .into(),
                );
                return Kind::new(tag, Action::Admin);
            }
            return Kind::connect_only(tag);
        }
        if param == "role" || param == "session_authorization" {
            self.facts.admin(format!(
                "SET/RESET {} changes the role statements run as",
                if param == "role" { "ROLE" } else { "SESSION AUTHORIZATION" }
            ));
            return Kind::new(tag, Action::Admin);
        }
        if self.rules.parameter_allowed(&param) {
            return Kind::connect_only(tag);
        }
        self.facts.admin(format!("SET/RESET of parameter {name} is not on the allow-list"));
        Kind::new(tag, Action::Admin)
    }

    fn copy(&mut self, body: &Obj) -> Kind {
        let from = bool_of(body, "is_from");
        let external = bool_of(body, "is_program") || !str_of(body, "filename").is_empty() || !self.copy_with_client;
        if let Some(rel) = body.get("relation").and_then(Value::as_object).filter(|r| is_range_var(r)) {
            let action = if from { Action::Insert } else { Action::Select };
            self.facts.table(Some(action), range_var(rel));
        }
        self.fields_except(body, &["relation"], Cx::READ);
        if external {
            self.facts.admin("COPY to or from a file or program runs on the database server".into());
        }
        let (direction, action) =
            if from { (CopyDirection::From, Action::Insert) } else { (CopyDirection::To, Action::Select) };
        Kind::new(StatementTag::Copy { direction, to_program_or_file: external }, action)
    }

    /// A `SELECT` (also a set operation, `VALUES`, or a subquery). `lock`: the rows it reads
    /// in `FROM` are locked by an enclosing `FOR UPDATE`.
    fn select(&mut self, body: &Obj, lock: bool) {
        let pushed = self.with_clause(body.get("with_clause").and_then(Value::as_object));
        let lock = lock || !list_of(body, "locking_clause").is_empty();
        for (key, value) in sorted(body) {
            match key.as_str() {
                // `FOR UPDATE OF a` names FROM items already counted.
                "with_clause" | "locking_clause" => {}
                "into_clause" => {
                    if let Some(into) = value.as_object() {
                        self.select_into(into);
                    }
                }
                "from_clause" => self.value(value, Cx { tables: Some(Action::Select), lock }),
                "larg" | "rarg" => {
                    if let Some(arm) = value.as_object() {
                        self.select(arm, false);
                    }
                }
                _ => self.value(value, Cx::READ),
            }
        }
        self.pop(pushed);
    }

    /// `INSERT`, `UPDATE`, `DELETE`, `MERGE`, at the top or inside a `WITH`.
    fn dml(&mut self, tag: &str, body: &Obj) {
        let pushed = self.with_clause(body.get("with_clause").and_then(Value::as_object));
        let target = body.get("relation").and_then(Value::as_object).filter(|r| is_range_var(r)).map(range_var);
        let actions: &[Action] = match tag {
            "InsertStmt" => &[Action::Insert],
            "UpdateStmt" => &[Action::Update],
            "DeleteStmt" => &[Action::Delete],
            _ => &[Action::Insert, Action::Update, Action::Delete],
        };
        match &target {
            Some(table) => {
                for action in actions {
                    self.facts.table(Some(*action), table.clone());
                }
                let upsert = body
                    .get("on_conflict_clause")
                    .and_then(Value::as_object)
                    .is_some_and(|c| int_of(c, "action") == pb::OnConflictAction::OnconflictUpdate as i64);
                if upsert {
                    self.facts.table(Some(Action::Update), table.clone());
                }
                let returning = body
                    .get("returning_clause")
                    .and_then(Value::as_object)
                    .is_some_and(|r| !list_of(r, "exprs").is_empty());
                if returning {
                    self.facts.table(Some(Action::Select), table.clone());
                }
            }
            None => self.facts.admin("a write without a recognisable target table".into()),
        }
        if tag == "UpdateStmt" || tag == "DeleteStmt" {
            if body.get("where_clause").is_some_and(|w| !w.is_null()) {
                self.facts.write_with_where = true;
            } else {
                self.facts.write_without_where = true;
            }
        }
        self.fields_except(body, &["with_clause", "relation"], Cx::READ);
        self.pop(pushed);
    }

    /// `SELECT … INTO t` and `CREATE TABLE t AS`: creates `t`.
    fn select_into(&mut self, into: &Obj) {
        self.facts.select_into = true;
        if let Some(rel) = into.get("rel").and_then(Value::as_object).filter(|r| is_range_var(r)) {
            self.facts.table(Some(Action::Ddl), range_var(rel));
        }
        self.fields_except(into, &["rel"], Cx::READ);
    }

    /// Puts a `WITH` clause's names in scope (walking each query in the scope it sees) and
    /// returns how many scopes to pop afterwards.
    fn with_clause(&mut self, with: Option<&Obj>) -> usize {
        let Some(with) = with else { return 0 };
        let ctes: Vec<(&str, &Obj)> = list_of(with, "ctes")
            .iter()
            .filter_map(tagged)
            .filter(|(tag, _)| *tag == "CommonTableExpr")
            .map(|(_, body)| (str_of(body, "ctename"), body))
            .collect();
        if bool_of(with, "recursive") {
            self.scopes.push(ctes.iter().map(|(name, _)| name.to_string()).collect());
            for (_, body) in &ctes {
                self.fields(body, Cx::READ);
            }
        } else {
            // Each query sees the ones before it, not itself.
            self.scopes.push(Vec::new());
            for (name, body) in &ctes {
                self.fields(body, Cx::READ);
                if let Some(scope) = self.scopes.last_mut() {
                    scope.push(name.to_string());
                }
            }
        }
        1
    }

    fn pop(&mut self, pushed: usize) {
        for _ in 0..pushed {
            self.scopes.pop();
        }
    }

    fn is_cte(&self, name: &str) -> bool {
        self.scopes.iter().any(|scope| scope.iter().any(|n| n == name))
    }

    fn value(&mut self, value: &Value, cx: Cx) {
        match value {
            Value::Array(items) => {
                for item in items {
                    self.value(item, cx);
                }
            }
            Value::Object(obj) => {
                if let Some((tag, body)) = tagged(value) {
                    self.node(tag, body, cx);
                } else if is_range_var(obj) {
                    self.table_read(obj, cx);
                } else {
                    self.fields(obj, cx);
                }
            }
            _ => {}
        }
    }

    fn fields(&mut self, obj: &Obj, cx: Cx) {
        for (_, value) in sorted(obj) {
            self.value(value, cx);
        }
    }

    fn fields_except(&mut self, obj: &Obj, skip: &[&str], cx: Cx) {
        for (key, value) in sorted(obj) {
            if !skip.contains(&key.as_str()) {
                self.value(value, cx);
            }
        }
    }

    fn node(&mut self, tag: &str, body: &Obj, cx: Cx) {
        match tag {
            "RangeVar" => self.table_read(body, cx),
            "SelectStmt" => self.select(body, cx.lock),
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => self.dml(tag, body),
            "FuncCall" => self.func_call(body, cx),
            "AExpr" => {
                use pb::AExprKind as K;
                let kind = int_of(body, "kind");
                let keyword_kinds = [K::AexprBetween, K::AexprNotBetween, K::AexprBetweenSym, K::AexprNotBetweenSym];
                if !keyword_kinds.iter().any(|k| *k as i64 == kind) {
                    self.operator(list_of(body, "name"));
                }
                self.fields_except(body, &["name"], Cx { lock: false, ..cx });
            }
            "SubLink" => {
                self.operator(list_of(body, "oper_name"));
                self.fields_except(body, &["oper_name"], Cx { lock: false, ..cx });
            }
            "SortBy" => {
                self.operator(list_of(body, "use_op"));
                self.fields_except(body, &["use_op"], Cx { lock: false, ..cx });
            }
            "RangeTableSample" => {
                let method = names(list_of(body, "method"));
                self.call(&method);
                self.fields_except(body, &["method"], cx);
            }
            "IntoClause" => self.select_into(body),
            // The names in `FOR UPDATE OF a` are FROM items, counted where they are defined.
            "LockingClause" => {}
            "WithClause" => {
                let pushed = self.with_clause(Some(body));
                self.pop(pushed);
            }
            // `RETURN expr` of a SQL-standard function body: an expression.
            "ReturnStmt" => self.fields(body, Cx::READ),
            // A statement inside another one: the elements of `CREATE SCHEMA`, the actions of
            // `CREATE RULE`, the body of a `BEGIN ATOMIC` function, `EXECUTE` in
            // `CREATE TABLE AS`. Its accesses count; if it names nothing, its action is decided
            // on the connection.
            _ if tag.ends_with("Stmt") => {
                let kind = self.statement(tag, body);
                self.facts.primary(&kind);
            }
            // Joins and subqueries in FROM keep the lock of an enclosing `FOR UPDATE`;
            // expressions (calls, operators, subquery expressions) drop it above.
            _ => self.fields(body, cx),
        }
    }

    fn table_read(&mut self, rv: &Obj, cx: Cx) {
        let table = range_var(rv);
        if table.schema.is_none() && self.is_cte(&table.name) {
            return;
        }
        self.facts.table(cx.tables, table.clone());
        if cx.lock {
            self.facts.table(Some(Action::Update), table);
        }
    }

    fn func_call(&mut self, body: &Obj, cx: Cx) {
        let name = names(list_of(body, "funcname"));
        self.call(&name);
        self.fields_except(body, &["funcname"], Cx { lock: false, ..cx });
    }

    fn call(&mut self, parts: &[String]) {
        let written = parts.join(".");
        let name = match parts {
            [schema, name] if schema == "pg_catalog" => name.clone(),
            _ => written.clone(),
        };
        if !self.rules.function_allowed(&name) {
            self.facts
                .admin(format!("function {written} is not on the allow-list of side-effect-free built-in functions"));
        }
        self.facts.function(name);
    }

    fn operator(&mut self, name: &[Value]) {
        if name.is_empty() {
            return;
        }
        let parts = names(name);
        let op = match parts.as_slice() {
            [op] => Some(op.as_str()),
            [schema, op] if schema == "pg_catalog" => Some(op.as_str()),
            _ => None,
        };
        if !op.is_some_and(|op| self.rules.operator_allowed(op)) {
            self.facts.admin(format!("operator {} is not a built-in operator", parts.join(".")));
        }
    }
}

/// `{"node": {"Tag": {…}}}` → `("Tag", {…})`.
pub(crate) fn tagged(value: &Value) -> Option<(&str, &Obj)> {
    let outer = value.as_object()?;
    if outer.len() != 1 {
        return None;
    }
    let inner = outer.get("node")?.as_object()?;
    if inner.len() != 1 {
        return None;
    }
    let (tag, body) = inner.iter().next()?;
    Some((tag.as_str(), body.as_object()?))
}

fn is_range_var(obj: &Obj) -> bool {
    obj.contains_key("relname") && obj.contains_key("relpersistence") && obj.contains_key("schemaname")
}

fn range_var(rv: &Obj) -> TableRef {
    let schema = str_of(rv, "schemaname");
    TableRef::new((!schema.is_empty()).then_some(schema), str_of(rv, "relname"))
}

/// `DROP TABLE a.b` names its tables as lists of strings.
fn name_list_table(object: &Value) -> Option<TableRef> {
    let (tag, body) = tagged(object)?;
    if tag != "List" {
        return None;
    }
    let parts = names(list_of(body, "items"));
    match parts.as_slice() {
        [name] => Some(TableRef::new(None, name)),
        [schema, name] | [_, schema, name] => Some(TableRef::new(Some(schema), name)),
        _ => None,
    }
}

/// The `sval`s of a list of `String` nodes (function and operator names).
fn names(list: &[Value]) -> Vec<String> {
    list.iter()
        .filter_map(tagged)
        .map(|(tag, body)| if tag == "String" { str_of(body, "sval").to_string() } else { format!("<{tag}>") })
        .collect()
}

fn const_int(value: Option<&Value>) -> Option<i64> {
    let (tag, body) = tagged(value?)?;
    if tag != "AConst" {
        return None;
    }
    body.get("val")?.get("Ival")?.get("ival")?.as_i64()
}

fn str_of<'a>(obj: &'a Obj, key: &str) -> &'a str {
    obj.get(key).and_then(Value::as_str).unwrap_or("")
}

fn int_of(obj: &Obj, key: &str) -> i64 {
    obj.get(key).and_then(Value::as_i64).unwrap_or(0)
}

fn bool_of(obj: &Obj, key: &str) -> bool {
    obj.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn list_of<'a>(obj: &'a Obj, key: &str) -> &'a [Value] {
    obj.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn is_admin_object(object_type: i64) -> bool {
    use pb::ObjectType as O;
    [
        O::ObjectAccessMethod,
        O::ObjectDatabase,
        O::ObjectDefacl,
        O::ObjectEventTrigger,
        O::ObjectExtension,
        O::ObjectFdw,
        O::ObjectForeignServer,
        O::ObjectLanguage,
        O::ObjectParameterAcl,
        O::ObjectPolicy,
        O::ObjectPublication,
        O::ObjectPublicationNamespace,
        O::ObjectPublicationRel,
        O::ObjectRole,
        O::ObjectSubscription,
        O::ObjectTablespace,
        O::ObjectUserMapping,
        O::ObjectCast,
        O::ObjectTransform,
        O::ObjectConversion,
    ]
    .iter()
    .any(|o| *o as i64 == object_type)
}

fn object_type_name(object_type: i64) -> String {
    i32::try_from(object_type)
        .ok()
        .and_then(|o| pb::ObjectType::try_from(o).ok())
        .map(|o| o.as_str_name().trim_start_matches("OBJECT_").replace('_', " "))
        .unwrap_or_else(|| "object".into())
}

/// `GrantRoleStmt` → `GRANT ROLE`, for tags and messages.
fn command_name(tag: &str) -> &str {
    match tag {
        "GrantStmt" => "GRANT/REVOKE",
        "GrantRoleStmt" => "GRANT/REVOKE ROLE",
        "AlterDefaultPrivilegesStmt" => "ALTER DEFAULT PRIVILEGES",
        "ReassignOwnedStmt" => "REASSIGN OWNED",
        "DropOwnedStmt" => "DROP OWNED",
        "CreateRoleStmt" => "CREATE ROLE",
        "AlterRoleStmt" | "AlterRoleSetStmt" => "ALTER ROLE",
        "DropRoleStmt" => "DROP ROLE",
        "VacuumStmt" => "VACUUM/ANALYZE",
        "ClusterStmt" => "CLUSTER",
        "ReindexStmt" => "REINDEX",
        "CheckPointStmt" => "CHECKPOINT",
        "CreatedbStmt" => "CREATE DATABASE",
        "AlterDatabaseStmt" | "AlterDatabaseRefreshCollStmt" | "AlterDatabaseSetStmt" => "ALTER DATABASE",
        "DropdbStmt" => "DROP DATABASE",
        "CreateTableSpaceStmt" => "CREATE TABLESPACE",
        "DropTableSpaceStmt" => "DROP TABLESPACE",
        "AlterTableSpaceOptionsStmt" | "AlterTableMoveAllStmt" => "ALTER TABLESPACE",
        "CreateExtensionStmt" => "CREATE EXTENSION",
        "AlterExtensionStmt" | "AlterExtensionContentsStmt" => "ALTER EXTENSION",
        "CreateFdwStmt" => "CREATE FOREIGN DATA WRAPPER",
        "AlterFdwStmt" => "ALTER FOREIGN DATA WRAPPER",
        "CreateForeignServerStmt" => "CREATE SERVER",
        "AlterForeignServerStmt" => "ALTER SERVER",
        "CreateUserMappingStmt" => "CREATE USER MAPPING",
        "AlterUserMappingStmt" => "ALTER USER MAPPING",
        "DropUserMappingStmt" => "DROP USER MAPPING",
        "ImportForeignSchemaStmt" => "IMPORT FOREIGN SCHEMA",
        "CreatePolicyStmt" => "CREATE POLICY",
        "AlterPolicyStmt" => "ALTER POLICY",
        "CreateAmStmt" => "CREATE ACCESS METHOD",
        "CreateEventTrigStmt" => "CREATE EVENT TRIGGER",
        "AlterEventTrigStmt" => "ALTER EVENT TRIGGER",
        "CreatePlangStmt" => "CREATE LANGUAGE",
        "SecLabelStmt" => "SECURITY LABEL",
        "AlterOwnerStmt" => "ALTER … OWNER TO",
        "CreatePublicationStmt" => "CREATE PUBLICATION",
        "AlterPublicationStmt" => "ALTER PUBLICATION",
        "CreateSubscriptionStmt" => "CREATE SUBSCRIPTION",
        "AlterSubscriptionStmt" => "ALTER SUBSCRIPTION",
        "DropSubscriptionStmt" => "DROP SUBSCRIPTION",
        "CreateCastStmt" => "CREATE CAST",
        "CreateTransformStmt" => "CREATE TRANSFORM",
        "CreateConversionStmt" => "CREATE CONVERSION",
        other => other,
    }
}

/// A parse-tree object's fields in key order. `serde_json` keeps insertion order when another
/// crate in the build enables its `preserve_order` feature; walking in key order keeps the
/// order of `tables` and `functions` the same in every build.
fn sorted(obj: &Obj) -> Vec<(&String, &Value)> {
    let mut fields: Vec<(&String, &Value)> = obj.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    fields
}
