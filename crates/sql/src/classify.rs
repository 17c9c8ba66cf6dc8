//! From statement text to a [`Batch`]: scanning, the cache key, parsing (on a thread with a
//! large stack), the constant-insensitivity check and statement texts.

use pg_query::protobuf::Token;

use crate::ClassifyError;
use crate::model::{Access, Action, Batch, Statement, StatementTag};
use crate::rules::Rules;
use crate::walk::{Facts, Kind, Walker, tagged};

/// Stack for the parsing thread. libpg_query refuses trees nested deeper than 10,000 protobuf
/// messages; decoding such a tree in Rust (prost recurses once per message, and so do the JSON
/// conversion and the walk) needs about 1.2 KiB per level in release builds and ten times that
/// in debug builds. The stack is reserved, not touched, unless a statement is that deep.
const PARSE_STACK: usize = if cfg!(debug_assertions) { 512 << 20 } else { 64 << 20 };

/// Inputs longer than this are classified but not cached, which bounds the cache's memory.
pub(crate) const MAX_CACHED_LEN: usize = 32 * 1024;

/// One token from the server's lexer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tok {
    start: usize,
    end: usize,
    kind: i32,
    /// A constant whose value cannot change the classification (see the crate docs).
    literal: bool,
    comment: bool,
}

impl Tok {
    pub(crate) fn is_comment(&self) -> bool {
        self.comment
    }

    pub(crate) fn text<'a>(&self, sql: &'a str) -> &'a str {
        &sql[self.start..self.end]
    }
}

/// Scans `sql` with libpg_query's copy of the server's lexer.
pub(crate) fn scan(sql: &str) -> Result<Vec<Tok>, ClassifyError> {
    // pg_query 18.1 builds a slice from a null pointer when there is no token at all (undefined
    // behaviour, an abort in debug builds), so input with nothing but whitespace is not passed.
    if sql.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)) {
        return Ok(Vec::new());
    }
    let raw = pg_query::scan_tokens(sql).map_err(ClassifyError::from_pg)?;
    let mut toks = Vec::with_capacity(raw.len());
    let mut after_uescape = false;
    for t in raw {
        let (start, end) = (usize::try_from(t.start), usize::try_from(t.end));
        let (Ok(start), Ok(end)) = (start, end) else {
            return Err(ClassifyError::Scan("token offsets out of range".into()));
        };
        if start > end || !sql.is_char_boundary(start) || !sql.is_char_boundary(end) {
            return Err(ClassifyError::Scan("token offsets out of range".into()));
        }
        let kind = Token::try_from(t.token).ok();
        let comment = matches!(kind, Some(Token::SqlComment | Token::CComment));
        // The string after UESCAPE is the escape character of a U&"…" identifier or U&'…'
        // string: it changes the identifier's name, so it is kept like an identifier.
        let literal = matches!(
            kind,
            Some(Token::Iconst | Token::Fconst | Token::Sconst | Token::Usconst | Token::Bconst | Token::Xconst)
        ) && !after_uescape;
        if !comment {
            after_uescape = kind == Some(Token::Uescape);
        }
        toks.push(Tok { start, end, kind: t.token, literal, comment });
    }
    Ok(toks)
}

/// The cache key: every token but comments (which the lexer drops before the grammar sees
/// anything), by kind, with its exact text unless it is a constant. Length-prefixed, so no two
/// token streams share a key. Whitespace is not in it: the grammar only sees tokens.
pub(crate) fn key(sql: &str, toks: &[Tok]) -> Vec<u8> {
    let mut key = Vec::with_capacity(sql.len() + 6 * toks.len());
    for t in toks.iter().filter(|t| !t.comment) {
        key.extend_from_slice(&t.kind.to_le_bytes());
        key.push(u8::from(t.literal));
        if !t.literal {
            let text = &sql.as_bytes()[t.start..t.end];
            key.extend_from_slice(&(text.len() as u64).to_le_bytes());
            key.extend_from_slice(text);
        }
    }
    key
}

/// The one text every input with this key stands for: the same tokens separated by one space,
/// constants replaced by a fixed one of the same kind, comments dropped. (Tokens are as long as
/// the lexer could make them, so a space between two never changes them; the exception is the
/// `N` of `N'…'`, which the lexer only reads as `NCHAR` when a quote follows at once.)
fn canonical(sql: &str, toks: &[Tok]) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut prev: Option<&Tok> = None;
    for t in toks.iter().filter(|t| !t.comment) {
        if let Some(prev) = prev {
            let national = prev.kind == Token::Nchar as i32 && prev.end - prev.start == 1;
            if !national {
                out.push(' ');
            }
        }
        if t.literal {
            // Not empty or zero: an empty string is where proto3 cannot tell a constant from
            // its absence (`COPY t FROM ''`), and the check below should not meet such a case
            // on both sides.
            out.push_str(match Token::try_from(t.kind) {
                Ok(Token::Iconst) => "1",
                Ok(Token::Fconst) => "1.5",
                Ok(Token::Usconst) => "U&'?'",
                Ok(Token::Bconst) => "B'1'",
                Ok(Token::Xconst) => "X'1'",
                _ => "'?'",
            });
        } else {
            out.push_str(&sql[t.start..t.end]);
        }
        prev = Some(t);
    }
    out
}

/// A classification without its statement texts: what the cache keeps.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    /// The statements, with empty `text`.
    statements: Vec<Statement>,
    /// Each statement's first and last token, as indices among the non-comment tokens.
    ranges: Vec<(usize, usize)>,
}

impl Template {
    /// The batch for `sql`, whose tokens have this template's key.
    pub(crate) fn render(&self, sql: &str, toks: &[Tok]) -> Option<Batch> {
        let code: Vec<&Tok> = toks.iter().filter(|t| !t.comment).collect();
        let mut statements = Vec::with_capacity(self.statements.len());
        for (statement, (first, last)) in self.statements.iter().zip(&self.ranges) {
            let text = sql.get(code.get(*first)?.start..code.get(*last)?.end)?;
            statements.push(Statement { text: text.to_string(), ..statement.clone() });
        }
        Some(Batch { statements })
    }
}

/// A classification from scratch, and the template to cache when the classification is the same
/// for every input with this key.
pub(crate) fn fresh(sql: &str, toks: &[Tok], rules: &Rules) -> (Batch, Option<Template>) {
    if toks.iter().all(|t| t.comment) {
        // Nothing but whitespace and comments: an empty query.
        return (Batch { statements: Vec::new() }, Some(Template { statements: Vec::new(), ranges: Vec::new() }));
    }
    // Text too long to cache is not parsed a second time for the check.
    let canonical_text = (sql.len() <= MAX_CACHED_LEN).then(|| canonical(sql, toks));
    let canonical_text = canonical_text.as_deref();
    let analysis = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("gatehouse-sql-parse".into())
            .stack_size(PARSE_STACK)
            .spawn_scoped(scope, || analyse(sql, canonical_text, rules))
            .map_err(|e| ClassifyError::Internal(format!("cannot start the parser thread: {e}")))?
            .join()
            .map_err(|_| ClassifyError::Internal("the parser failed".into()))
    });
    let analysis = match analysis {
        Ok(analysis) => analysis,
        Err(e) => return (error_batch(sql, &e), None),
    };
    let parsed = match analysis.original {
        Ok(parsed) => parsed,
        Err(e) => return (error_batch(sql, &e), None),
    };

    let code: Vec<&Tok> = toks.iter().filter(|t| !t.comment).collect();
    let mut ranges = Vec::with_capacity(parsed.len());
    let mut statements = Vec::with_capacity(parsed.len());
    for (i, (location, len, mut statement)) in parsed.into_iter().enumerate() {
        let end = if len == 0 { sql.len() } else { location.saturating_add(len).min(sql.len()) };
        let range = token_range(&code, location, end);
        statement.text = match range {
            Some((first, last)) => sql[code[first].start..code[last].end].to_string(),
            None => sql.get(location..end).unwrap_or(sql).trim().to_string(),
        };
        statement.fingerprint = analysis.fingerprints.get(i).cloned().unwrap_or_default();
        ranges.push(range);
        statements.push(statement);
    }
    let batch = Batch { statements };

    let template = analysis.constant_insensitive && sql.len() <= MAX_CACHED_LEN;
    let ranges: Option<Vec<(usize, usize)>> = ranges.into_iter().collect();
    let template = match ranges {
        Some(ranges) if template => Some(Template {
            statements: batch.statements.iter().map(|s| Statement { text: String::new(), ..s.clone() }).collect(),
            ranges,
        }),
        _ => None,
    };
    (batch, template)
}

/// The first and last non-`;` token of the statement at `start..end`.
fn token_range(code: &[&Tok], start: usize, end: usize) -> Option<(usize, usize)> {
    let first = code.iter().position(|t| t.start >= start)?;
    let last = code.iter().rposition(|t| t.end <= end && t.kind != Token::Ascii59 as i32)?;
    (first <= last).then_some((first, last))
}

struct Analysis {
    /// Each statement's location, length (0: to the end) and classification (without text and
    /// fingerprint), or why the text does not parse.
    original: Result<Vec<(usize, usize, Statement)>, ClassifyError>,
    /// Each statement's fingerprint.
    fingerprints: Vec<String>,
    /// The canonical text classifies exactly like the original.
    constant_insensitive: bool,
}

/// Runs on the parser thread: everything that holds a parse tree.
fn analyse(sql: &str, canonical_text: Option<&str>, rules: &Rules) -> Analysis {
    let original = classify_text(sql, rules);
    let Ok(parsed) = &original else {
        return Analysis { original, fingerprints: Vec::new(), constant_insensitive: false };
    };
    let canonical = canonical_text.and_then(|text| classify_text(text, rules).ok());
    let constant_insensitive = canonical.as_ref().is_some_and(|canonical| {
        canonical.len() == parsed.len() && canonical.iter().zip(parsed).all(|(c, o)| c.2 == o.2)
    });
    // Fingerprints of the canonical text when it stands for this input, so that inputs that
    // share a cache entry share fingerprints (libpg_query's fingerprint keeps some constants,
    // such as the precision in `current_time(3)` and the body of `DO`).
    let (text, statements) = match (&canonical, canonical_text) {
        (Some(canonical), Some(canonical_text)) if constant_insensitive => (canonical_text, canonical),
        _ => (sql, parsed),
    };
    let fingerprints = statements
        .iter()
        .map(|(location, len, _)| {
            let end = if *len == 0 { text.len() } else { location.saturating_add(*len).min(text.len()) };
            text.get(*location..end)
                .and_then(|s| pg_query::fingerprint(s, 0, 0).ok())
                .map(|f| f.hex)
                .unwrap_or_default()
        })
        .collect();
    Analysis { original, fingerprints, constant_insensitive }
}

/// Parses `sql` and classifies each statement (texts and fingerprints left empty).
fn classify_text(sql: &str, rules: &Rules) -> Result<Vec<(usize, usize, Statement)>, ClassifyError> {
    let parsed = pg_query::parse(sql, 0).map_err(ClassifyError::from_pg)?;
    let mut out = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let tree = serde_json::to_value(&raw.stmt).map_err(|e| ClassifyError::Internal(e.to_string()))?;
        let location = usize::try_from(raw.stmt_location).unwrap_or(0);
        let len = usize::try_from(raw.stmt_len).unwrap_or(0);
        let mut walker = Walker::new(rules);
        if tagged(&tree).is_some_and(|(tag, _)| tag == "CopyStmt") {
            let end = if len == 0 { sql.len() } else { location.saturating_add(len).min(sql.len()) };
            walker.copy_with_client = sql.get(location..end).is_some_and(copy_with_client);
        }
        let kind = walker.top(&tree);
        out.push((location, len, assemble(kind, walker.facts)));
    }
    Ok(out)
}

/// Whether a `COPY` reads from or writes to the client (`FROM STDIN`, `TO STDOUT`). The parse
/// tree cannot tell: `COPY t FROM ''` has an empty file name, like `FROM STDIN`. So the tokens
/// decide: the first `FROM` or `TO` outside parentheses is followed by the file name, `STDIN`,
/// `STDOUT` or `PROGRAM`.
fn copy_with_client(statement: &str) -> bool {
    let Ok(toks) = scan(statement) else { return false };
    let mut depth = 0i32;
    let mut code = toks.iter().filter(|t| !t.comment).map(|t| Token::try_from(t.kind).ok());
    while let Some(kind) = code.next() {
        match kind {
            Some(Token::Ascii40) => depth += 1,
            Some(Token::Ascii41) => depth -= 1,
            Some(Token::From | Token::To) if depth == 0 => {
                return matches!(code.next(), Some(Some(Token::Stdin | Token::Stdout)));
            }
            _ => {}
        }
    }
    false
}

/// The text that `EXECUTE name` has as its `error` when its parameters are harmless.
pub(crate) fn execute_placeholder(name: &str) -> String {
    format!(
        "EXECUTE {name} runs a statement prepared earlier and is decided as that statement; \
         without it, it is sql.admin"
    )
}

fn assemble(kind: Kind, mut facts: Facts) -> Statement {
    let mut error = (!facts.admin.is_empty()).then(|| facts.admin.join("; "));
    if let StatementTag::Execute { name } = &kind.tag {
        error.get_or_insert_with(|| execute_placeholder(name));
    }
    if error.is_none() {
        facts.primary(&kind);
    }
    let Facts { mut accesses, tables, functions, write_without_where, write_with_where, .. } = facts;
    if error.is_some() {
        accesses.push(Access::connection(Action::Admin));
    }
    let has_where = if write_without_where {
        Some(false)
    } else if write_with_where {
        Some(true)
    } else {
        None
    };
    Statement {
        text: String::new(),
        fingerprint: String::new(),
        connect_only: kind.connect_only && accesses.is_empty(),
        accesses,
        has_where,
        tables,
        functions,
        error,
        tag: kind.tag,
    }
}

/// One `sql.admin` statement standing for the whole input.
pub(crate) fn error_batch(sql: &str, error: &ClassifyError) -> Batch {
    Batch {
        statements: vec![Statement {
            text: sql.trim().to_string(),
            fingerprint: String::new(),
            accesses: vec![Access::connection(Action::Admin)],
            connect_only: false,
            has_where: None,
            tables: Vec::new(),
            functions: Vec::new(),
            error: Some(error.to_string()),
            tag: StatementTag::Other("UNPARSEABLE".into()),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(sql: &str) -> Vec<u8> {
        key(sql, &scan(sql).unwrap())
    }

    fn canonical_of(sql: &str) -> String {
        canonical(sql, &scan(sql).unwrap())
    }

    #[test]
    fn keys_keep_everything_but_constants_comments_and_layout() {
        assert_eq!(key_of("SELECT * FROM t WHERE a = 1"), key_of("SELECT  *\nFROM t /* c */ WHERE a=22 -- x"));
        assert_eq!(key_of("SELECT 'a', E'b', $$c$$"), key_of("SELECT '', E'\\n', $x$y$x$"));
        for (a, b) in [
            ("SELECT a FROM t", "SELECT b FROM t"),
            ("SELECT a FROM t", "select a from \"t\""),
            ("SELECT a FROM t", "SELECT a FROM T"),
            ("SELECT a FROM t", "select a from t"),
            ("SELECT $1", "SELECT $2"),
            ("SELECT 1", "SELECT 1.0"),
            ("SELECT 1", "SELECT '1'"),
            ("SELECT B'1'", "SELECT X'1'"),
            ("COPY t FROM STDIN", "COPY t FROM 'stdin'"),
            ("SELECT U&\"a\" UESCAPE '!'", "SELECT U&\"a\" UESCAPE '#'"),
            ("SELECT ab", "SELECT a b"),
        ] {
            assert_ne!(key_of(a), key_of(b), "{a} / {b}");
        }
    }

    #[test]
    fn canonical_text_depends_on_the_key_only() {
        assert_eq!(
            canonical_of("SELECT * FROM t WHERE a = 1 AND b = 'x' -- c"),
            "SELECT * FROM t WHERE a = 1 AND b = '?'"
        );
        assert_eq!(canonical_of("select 2.5,B'01',X'FF',U&'x', N'y'"), "select 1.5 , B'1' , X'1' , U&'?' , N'?'");
        assert_eq!(canonical_of("SELECT U&\"d!0061\" UESCAPE '!'"), "SELECT U&\"d!0061\" UESCAPE '!'");
        assert_eq!(canonical_of("SELECT 1;SELECT/**/2"), canonical_of("SELECT 3 ; SELECT 4"));
    }

    #[test]
    fn statement_texts_come_from_token_positions() {
        let sql = "  SELECT 1 /* a */ ; /* b */ SELECT 2 -- c\n";
        let toks = scan(sql).unwrap();
        let (batch, template) = fresh(sql, &toks, &Rules::default());
        let texts: Vec<&str> = batch.statements.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, ["SELECT 1", "SELECT 2"]);
        let template = template.unwrap();
        let other = "SELECT 7;SELECT 8";
        let rendered = template.render(other, &scan(other).unwrap()).unwrap();
        let texts: Vec<&str> = rendered.statements.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, ["SELECT 7", "SELECT 8"]);
    }

    #[test]
    fn copy_with_client_reads_the_tokens() {
        assert!(copy_with_client("COPY t FROM STDIN"));
        assert!(copy_with_client("COPY t (a, b) FROM STDIN WITH (FORMAT csv)"));
        assert!(copy_with_client("COPY (SELECT * FROM stdin) TO STDOUT"));
        assert!(!copy_with_client("COPY (SELECT * FROM stdin) TO ''"));
        assert!(!copy_with_client("COPY t FROM ''"));
        assert!(!copy_with_client("COPY t TO PROGRAM 'x'"));
    }
}
