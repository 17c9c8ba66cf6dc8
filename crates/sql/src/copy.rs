//! The shape of a `COPY table [(columns)] TO STDOUT`: which table, which columns in which
//! order, and the data format, for a proxy that must find each column in the rows.

use pg_query::NodeEnum;

use crate::ClassifyError;

/// How `COPY … TO STDOUT` writes its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    /// Tab-separated (or `DELIMITER`), backslash escapes, `\N` for NULL.
    Text,
    /// Comma-separated (or `DELIMITER`), `"` quoting, empty for NULL.
    Csv,
    Binary,
}

/// A `COPY table [(columns)] TO STDOUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOut {
    pub schema: Option<String>,
    pub table: String,
    /// The columns listed, in order; empty: all of the table's, in their order.
    pub columns: Vec<String>,
    pub format: CopyFormat,
    /// The field separator, if `DELIMITER` gave one (one byte).
    pub delimiter: Option<u8>,
    /// `HEADER` (CSV): the first row names the columns.
    pub header: bool,
    /// Options beyond `FORMAT`, `DELIMITER` and `HEADER` (`NULL`, `QUOTE`, `ESCAPE`,
    /// `FORCE_QUOTE`, `ENCODING`, …), which change how rows are written.
    pub other_options: bool,
}

/// The shape of `sql` if it is a single `COPY table … TO STDOUT` (not `COPY (query)`), else
/// `None`. Only such a statement is parsed: it has no nesting, so it is parsed on the caller's
/// thread.
pub fn copy_out(sql: &str) -> Result<Option<CopyOut>, ClassifyError> {
    let toks = crate::classify::scan(sql)?;
    let code: Vec<&str> = toks.iter().filter(|t| !t.is_comment()).map(|t| t.text(sql)).collect();
    if !code.first().is_some_and(|t| t.eq_ignore_ascii_case("copy")) || code.get(1) == Some(&"(") {
        return Ok(None);
    }
    let parsed = pg_query::parse(sql, 0).map_err(ClassifyError::from_pg)?;
    let [raw] = &parsed.protobuf.stmts[..] else { return Ok(None) };
    let Some(NodeEnum::CopyStmt(copy)) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else { return Ok(None) };
    let Some(relation) = &copy.relation else { return Ok(None) };
    if copy.is_from || copy.is_program || !copy.filename.is_empty() || copy.query.is_some() {
        return Ok(None);
    }
    let columns = copy
        .attlist
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect();
    let mut out = CopyOut {
        schema: (!relation.schemaname.is_empty()).then(|| relation.schemaname.clone()),
        table: relation.relname.clone(),
        columns,
        format: CopyFormat::Text,
        delimiter: None,
        header: false,
        other_options: false,
    };
    for option in &copy.options {
        let Some(NodeEnum::DefElem(def)) = &option.node else {
            out.other_options = true;
            continue;
        };
        let arg = def.arg.as_ref().and_then(|a| a.node.as_ref());
        let text = match arg {
            Some(NodeEnum::String(s)) => Some(s.sval.to_ascii_lowercase()),
            Some(NodeEnum::Boolean(b)) => Some(b.boolval.to_string()),
            Some(NodeEnum::Integer(i)) => Some(i.ival.to_string()),
            _ => None,
        };
        match (def.defname.as_str(), text.as_deref()) {
            ("format", Some("text")) => out.format = CopyFormat::Text,
            ("format", Some("csv")) => out.format = CopyFormat::Csv,
            ("format", Some("binary")) => out.format = CopyFormat::Binary,
            ("delimiter", Some(d)) if d.len() == 1 => out.delimiter = d.bytes().next(),
            ("header", Some("true" | "on" | "1")) | ("header", None) => out.header = true,
            ("header", Some("false" | "off" | "0")) => out.header = false,
            _ => out.other_options = true,
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_of_copy_to_stdout() {
        let c = copy_out("COPY public.users (id, email) TO STDOUT WITH (FORMAT csv, HEADER, DELIMITER ';')")
            .unwrap()
            .unwrap();
        assert_eq!(c.schema.as_deref(), Some("public"));
        assert_eq!((c.table.as_str(), c.columns.clone()), ("users", vec!["id".to_string(), "email".to_string()]));
        assert_eq!((c.format, c.delimiter, c.header, c.other_options), (CopyFormat::Csv, Some(b';'), true, false));
        let c = copy_out("copy users to stdout").unwrap().unwrap();
        assert_eq!((c.schema, c.columns.len(), c.format), (None, 0, CopyFormat::Text));
        assert!(copy_out("COPY users TO STDOUT (FORMAT text, NULL 'x')").unwrap().unwrap().other_options);
        assert_eq!(copy_out("COPY users TO STDOUT WITH BINARY").unwrap().unwrap().format, CopyFormat::Binary);
        for other in ["COPY (SELECT 1) TO STDOUT", "COPY users FROM STDIN", "SELECT 1", "COPY users TO '/tmp/x'"] {
            assert_eq!(copy_out(other).unwrap(), None, "{other}");
        }
    }
}
