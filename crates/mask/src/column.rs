//! `--mask-column` patterns: which database columns are masked whole.

use std::fmt;
use std::str::FromStr;

use crate::MaskError;

/// One part of a [`ColumnPattern`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamePattern {
    /// `*`: any name.
    Any,
    /// An unquoted name, compared ASCII-case-insensitively (`Users` matches `users`).
    Name(String),
    /// A double-quoted name (`"Order.Items"`), compared exactly; it may contain `.` and `*`.
    Quoted(String),
}

impl NamePattern {
    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Any => true,
            NamePattern::Name(n) => n.eq_ignore_ascii_case(name),
            NamePattern::Quoted(n) => n == name,
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Any => f.write_str("*"),
            NamePattern::Name(n) => f.write_str(n),
            NamePattern::Quoted(n) => write!(f, "\"{}\"", n.replace('"', "\"\"")),
        }
    }
}

/// A pattern naming database columns, `schema.table.column`, where `*` stands for one whole
/// name: `public.users.email`, `*.*.ssn`, `billing.cards.*`. Unquoted names match
/// ASCII-case-insensitively; a name in double quotes (`"Order.Items"`, `""` for a quote inside)
/// matches exactly and may contain `.` and `*`. For MySQL the schema is the database.
///
/// Serialises as its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ColumnPattern {
    /// The schema part.
    pub schema: NamePattern,
    /// The table part.
    pub table: NamePattern,
    /// The column part.
    pub column: NamePattern,
}

const PARTS: [&str; 3] = ["schema", "table", "column"];

impl ColumnPattern {
    /// Parses `schema.table.column`.
    pub fn parse(pattern: &str) -> Result<ColumnPattern, MaskError> {
        let err = |reason: String| MaskError::ColumnPattern { pattern: pattern.to_owned(), reason };
        let parts = split(pattern).map_err(err)?;
        let count = parts.len();
        let [schema, table, column]: [NamePattern; 3] = parts
            .try_into()
            .map_err(|_| err(format!("expected 3 dot-separated parts (schema.table.column), found {count}")))?;
        Ok(ColumnPattern { schema, table, column })
    }

    /// Whether the column `schema.table.column` matches.
    pub fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        self.schema.matches(schema) && self.table.matches(table) && self.column.matches(column)
    }
}

/// Splits on unquoted dots and checks each part.
fn split(pattern: &str) -> Result<Vec<NamePattern>, String> {
    let mut parts = Vec::new();
    let mut chars = pattern.chars().peekable();
    loop {
        let index = parts.len();
        let Some(&what) = PARTS.get(index) else {
            return Err("expected 3 dot-separated parts (schema.table.column), found more".to_owned());
        };
        let part = if chars.peek() == Some(&'"') {
            chars.next();
            let mut name = String::new();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    Some('"') => break,
                    Some(c) => name.push(c),
                    None => return Err(format!("the quoted {what} name is not closed")),
                }
            }
            if name.is_empty() {
                return Err(format!("the {what} name is empty"));
            }
            if chars.peek().is_some_and(|c| *c != '.') {
                return Err(format!("unexpected text after the quoted {what} name"));
            }
            NamePattern::Quoted(name)
        } else {
            let mut name = String::new();
            while let Some(c) = chars.peek().copied().filter(|c| *c != '.') {
                name.push(c);
                chars.next();
            }
            if name.is_empty() {
                return Err(format!("the {what} part is empty"));
            }
            if name.trim() != name {
                return Err(format!("the {what} part `{name}` has spaces around it"));
            }
            if name.contains('"') {
                return Err(format!("the {what} part `{name}` has a quote inside; quote the whole name"));
            }
            if name == "*" {
                NamePattern::Any
            } else if name.contains('*') {
                return Err(format!("`*` stands for a whole name, not part of one (`{name}`)"));
            } else {
                NamePattern::Name(name)
            }
        };
        parts.push(part);
        match chars.next() {
            Some('.') => continue,
            _ => return Ok(parts),
        }
    }
}

impl FromStr for ColumnPattern {
    type Err = MaskError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ColumnPattern::parse(s)
    }
}

impl fmt::Display for ColumnPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.schema, self.table, self.column)
    }
}

impl TryFrom<String> for ColumnPattern {
    type Error = MaskError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        ColumnPattern::parse(&value)
    }
}

impl From<ColumnPattern> for String {
    fn from(value: ColumnPattern) -> Self {
        value.to_string()
    }
}
