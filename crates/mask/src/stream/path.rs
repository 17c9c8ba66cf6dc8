//! JSON paths of whole-value rules (`$.customer.email`, `$.items[*].card`, `$..ssn`) and the
//! location of a value in a document they are matched against.

use std::fmt;
use std::str::FromStr;

use crate::MaskError;

/// One step from a JSON value down to one of its children: an object member, by its name as
/// decoded (escapes resolved), or an array element. Elements are not told apart by index, since
/// rules never name one (`[*]` only).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Step {
    /// A member of an object.
    Key(String),
    /// An element of an array.
    Index,
}

/// What one segment of a path selects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Selector {
    /// A member with exactly this name.
    Name(String),
    /// `*`: any one child, member or element. `bracket` only records how it was written
    /// (`[*]` or `.*`) so the path prints back as given.
    Any { bracket: bool },
}

impl Selector {
    fn matches(&self, step: &Step) -> bool {
        match (self, step) {
            (Selector::Any { .. }, _) => true,
            (Selector::Name(n), Step::Key(k)) => n == k,
            (Selector::Name(_), Step::Index) => false,
        }
    }
}

/// A path pattern as a sequence to match steps against, like a glob over steps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Tok {
    /// `..`: zero or more steps, any. Always followed by a [`Tok::One`].
    Deep,
    /// Exactly one step the selector matches.
    One(Selector),
}

/// A JSON path naming values to mask whole, in the dot and bracket notation of RFC 9535 minus
/// indices, slices and filters:
///
/// - `$` is the document itself; every path starts with it;
/// - `.name` is a member; a name is letters, digits (any script), `_` and `-`;
/// - `['odd key']` (or `["odd key"]`) is a member with any name, `\'`, `\"` and `\\` escaping a
///   quote or backslash in it;
/// - `*`, written `.*` or `[*]`, is any one child: any member of an object, any element of an
///   array (`$.items[*].card`, `$[*].ssn`, `$.a.*`);
/// - `..` before a name, `*` or bracket is recursive descent: the selector may match at any depth
///   below (`$..email` is every member named `email`, the top-level one included).
///
/// Names compare exactly (case-sensitively), against member names as decoded. Anything else —
/// array indices (`[0]`), slices, filters, spaces, an empty name — is refused with a
/// [`MaskError::JsonPath`] naming the pattern. Serialises as its text. Two paths are equal when
/// written alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JsonPath {
    toks: Vec<Tok>,
}

impl JsonPath {
    /// Parses a path such as `$.customer.email`, `$.items[*].card` or `$..email`.
    pub fn parse(pattern: &str) -> Result<JsonPath, MaskError> {
        parse(pattern)
            .map(|toks| JsonPath { toks })
            .map_err(|reason| MaskError::JsonPath { pattern: pattern.to_owned(), reason })
    }

    /// Whether the value at `path` (the steps from the document down to it; empty for the
    /// document itself) is one this pattern names. Allocates nothing.
    pub fn matches(&self, path: &[Step]) -> bool {
        // Glob matching with `..` as the star: on a mismatch, let the last `..` absorb one more
        // step and retry from there. Linear in practice, never worse than
        // `path.len() * toks.len()`.
        let toks = &self.toks;
        let (mut t, mut s) = (0, 0);
        let mut deep: Option<(usize, usize)> = None;
        while s < path.len() {
            match toks.get(t) {
                Some(Tok::Deep) => {
                    deep = Some((t, s));
                    t += 1;
                }
                Some(Tok::One(sel)) if sel.matches(&path[s]) => {
                    t += 1;
                    s += 1;
                }
                _ => match deep {
                    Some((dt, ds)) => {
                        deep = Some((dt, ds + 1));
                        t = dt + 1;
                        s = ds + 1;
                    }
                    None => return false,
                },
            }
        }
        toks[t..].iter().all(|k| *k == Tok::Deep)
    }
}

/// Whether `c` may appear in a member name written after a dot.
fn name_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

fn parse(pattern: &str) -> Result<Vec<Tok>, String> {
    let Some(rest) = pattern.strip_prefix('$') else {
        return Err("a JSON path starts with `$`".to_owned());
    };
    let mut toks = Vec::new();
    let mut s = rest;
    while let Some(c) = s.chars().next() {
        match c {
            '.' => {
                let deep = s.starts_with("..");
                s = &s[if deep { 2 } else { 1 }..];
                let dots = if deep { "`..`" } else { "`.`" };
                if deep {
                    toks.push(Tok::Deep);
                }
                let sel = match s.chars().next() {
                    None => return Err(format!("it ends after {dots}; a name, `*` or `[…]` must follow")),
                    Some('*') => {
                        s = &s[1..];
                        Selector::Any { bracket: false }
                    }
                    Some('[') if deep => {
                        let (sel, after) = bracket(s)?;
                        s = after;
                        sel
                    }
                    Some('[') => return Err("`.[` is not a path step: write `[…]` without the dot".to_owned()),
                    Some('.') => return Err("three dots in a row".to_owned()),
                    Some(_) => {
                        let end = s.find(|c: char| !name_char(c)).unwrap_or(s.len());
                        if end == 0 {
                            return Err(format!(
                                "unexpected {} after {dots}; write a name of letters, digits, `_` and `-`, \
                                 or quote it as `['…']`",
                                shown(s)
                            ));
                        }
                        let name = &s[..end];
                        s = &s[end..];
                        Selector::Name(name.to_owned())
                    }
                };
                toks.push(Tok::One(sel));
            }
            '[' => {
                let (sel, after) = bracket(s)?;
                s = after;
                toks.push(Tok::One(sel));
            }
            _ => return Err(format!("unexpected {}; expected `.`, `..` or `[`", shown(s))),
        }
    }
    Ok(toks)
}

/// A bracketed selector at the start of `s` (which starts with `[`): `[*]` or a quoted name.
/// Returns it and the text after the closing `]`.
fn bracket(s: &str) -> Result<(Selector, &str), String> {
    let inner = &s[1..];
    if let Some(after) = inner.strip_prefix("*]") {
        return Ok((Selector::Any { bracket: true }, after));
    }
    let mut chars = inner.char_indices();
    let quote = match chars.next() {
        Some((_, q @ ('\'' | '"'))) => q,
        Some((_, c)) if c.is_ascii_digit() || c == '-' || c == ':' => {
            return Err("array indices and slices are not supported; use `[*]` for any element".to_owned());
        }
        Some((_, '?')) => return Err("filters (`[?…]`) are not supported".to_owned()),
        _ => return Err("a bracket holds `*` or a quoted name (`['name']`)".to_owned()),
    };
    let mut name = String::new();
    loop {
        match chars.next() {
            None => return Err("a quoted name is not closed".to_owned()),
            Some((_, '\\')) => match chars.next() {
                Some((_, c @ ('\\' | '\'' | '"'))) => name.push(c),
                _ => return Err("in a quoted name, `\\` escapes only `\\`, `'` and `\"`".to_owned()),
            },
            Some((i, c)) if c == quote => {
                let after = &inner[i + 1..];
                return match after.strip_prefix(']') {
                    Some(after) => Ok((Selector::Name(name), after)),
                    None => Err("a quoted name must be followed by `]`".to_owned()),
                };
            }
            Some((_, c)) => name.push(c),
        }
    }
}

/// The character at the start of `s`, quoted for an error message.
fn shown(s: &str) -> String {
    match s.chars().next() {
        Some(c) if c.is_whitespace() || c.is_control() => format!("{c:?}"),
        Some(c) => format!("`{c}`"),
        None => "end".to_owned(),
    }
}

/// Writes a member name as a path step: `.name` when it is a plain name, `['…']` otherwise.
fn write_name(out: &mut impl fmt::Write, name: &str) -> fmt::Result {
    if !name.is_empty() && name.chars().all(name_char) {
        out.write_char('.')?;
        out.write_str(name)
    } else {
        out.write_str("['")?;
        for c in name.chars() {
            if c == '\'' || c == '\\' {
                out.write_char('\\')?;
            }
            out.write_char(c)?;
        }
        out.write_str("']")
    }
}

/// The location `path` written as a path, elements as `[*]`: `$.items[*].card`. This is how
/// [`MaskTally`](crate::MaskTally) names where values were masked.
#[cfg(test)]
pub(crate) fn path_string(path: &[Step]) -> String {
    let mut s = String::new();
    write_path(&mut s, path);
    s
}

/// Writes the location `path` into `s`, replacing what it held (see `path_string`).
pub(crate) fn write_path(s: &mut String, path: &[Step]) {
    s.clear();
    s.push('$');
    for step in path {
        // Writing to a String cannot fail.
        let _ = match step {
            Step::Key(k) => write_name(s, k),
            Step::Index => {
                s.push_str("[*]");
                Ok(())
            }
        };
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        let mut deep = false;
        for tok in &self.toks {
            let Tok::One(sel) = tok else {
                deep = true;
                continue;
            };
            if deep {
                f.write_str("..")?;
            }
            match sel {
                Selector::Any { bracket: true } => f.write_str("[*]")?,
                Selector::Any { bracket: false } => f.write_str(if deep { "*" } else { ".*" })?,
                Selector::Name(n) => {
                    let mut step = String::new();
                    write_name(&mut step, n)?;
                    // After `..` a plain name goes without its dot: `$..email`.
                    f.write_str(if deep { step.strip_prefix('.').unwrap_or(&step) } else { &step })?;
                }
            }
            deep = false;
        }
        Ok(())
    }
}

impl FromStr for JsonPath {
    type Err = MaskError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JsonPath::parse(s)
    }
}

impl TryFrom<String> for JsonPath {
    type Error = MaskError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        JsonPath::parse(&value)
    }
}

impl From<JsonPath> for String {
    fn from(value: JsonPath) -> Self {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> JsonPath {
        JsonPath::parse(s).unwrap()
    }

    fn k(s: &str) -> Step {
        Step::Key(s.to_owned())
    }

    #[test]
    fn display_round_trips() {
        for s in ["$", "$.a.b", "$.items[*].card", "$[*].ssn", "$.a.*", "$['odd key']", "$..email", "$..*", "$..[*]"] {
            assert_eq!(p(s).to_string(), s);
        }
        assert_eq!(p(r"$['it\'s']").to_string(), r"$['it\'s']");
        assert_eq!(p(r#"$["a b"]"#).to_string(), "$['a b']");
        assert_eq!(p("$['plain']").to_string(), "$.plain");
        // `..` before a quoted name keeps the brackets.
        let odd = p("$..['odd key']");
        assert_eq!(odd.to_string(), "$..['odd key']");
        assert_eq!(p(&odd.to_string()), odd);
    }

    #[test]
    fn descent_backtracks() {
        let r = p("$..a..b.c");
        assert!(r.matches(&[k("a"), k("b"), k("c")]));
        assert!(r.matches(&[k("x"), k("a"), Step::Index, k("b"), k("c")]));
        assert!(r.matches(&[k("a"), k("b"), k("c"), k("a"), k("b"), k("c")]));
        assert!(!r.matches(&[k("a"), k("b"), k("c"), k("d")]));
        assert!(!r.matches(&[k("b"), k("c")]));
    }

    #[test]
    fn path_strings() {
        assert_eq!(path_string(&[]), "$");
        assert_eq!(path_string(&[k("items"), Step::Index, k("card")]), "$.items[*].card");
        assert_eq!(path_string(&[k("odd key"), k("it's"), k("")]), r"$['odd key']['it\'s']['']");
    }
}
