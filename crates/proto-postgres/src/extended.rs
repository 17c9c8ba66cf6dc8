//! The extended query protocol's bookkeeping: prepared statements and portals the caller made,
//! and what the resource still owes an answer for, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use crate::Column;
use crate::session::StatementRequest;

/// An answer the resource owes, in the order the messages were forwarded.
#[derive(Debug)]
pub(crate) enum Expect {
    Parse,
    Bind,
    /// A `Describe`; `own` when the gateway sent it itself (its answer is not relayed).
    Describe {
        target: Described,
        own: bool,
    },
    Close,
    Sync,
    /// An `Execute`, with the recorded request it runs and the portal it runs (for the shape of
    /// its rows).
    Execute {
        seq: Option<i64>,
        started: Instant,
        rows: u64,
        bytes: u64,
        portal: Option<Arc<Portal>>,
        /// Values masked in its results.
        masked: crate::masking::Tally,
        /// How each of its columns is masked (worked out at its first row).
        whole: Option<Vec<crate::masking::ColumnMask>>,
    },
    /// A statement the gateway sent in place of a refused message so that the resource fails
    /// (and discards until `Sync`) at exactly that point: its error is replaced by this refusal.
    Injected(Bytes),
}

/// What a `Describe` describes.
#[derive(Debug)]
pub(crate) enum Described {
    Statement(Arc<Prepared>),
    Portal(Arc<Portal>),
    /// A name the gateway does not know: the resource answers with its own error.
    Unknown,
}

impl Described {
    /// Keeps the server's `ParameterDescription` of a described statement.
    pub fn parameters(&self, types: Vec<u32>) {
        if let Described::Statement(p) = self {
            p.set_param_types(types);
        }
    }

    /// Keeps the answer (`None` for `NoData`) where later phases find it.
    pub fn answered(&self, columns: Vec<Column>) {
        let (slot, pending) = match self {
            Described::Statement(p) => (&p.columns, &p.describing),
            Described::Portal(p) => (&p.columns, &p.describing),
            Described::Unknown => return,
        };
        *lock(slot) = Some(columns.into());
        pending.store(false, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A statement prepared with `Parse`: its requests and, once described, its columns.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub requests: Vec<StatementRequest>,
    /// Each parameter's type: as `Parse` declared it, then as the server described it.
    pub param_types: Mutex<Vec<u32>>,
    /// Policy said "needs review" at `Parse`: decided again at `Bind`, with the values.
    pub decide_at_bind: bool,
    pub columns: Mutex<Option<Arc<[Column]>>>,
    /// A `Describe` of it is on its way.
    pub describing: AtomicBool,
}

impl Prepared {
    pub fn new(requests: Vec<StatementRequest>, decide_at_bind: bool) -> Prepared {
        Prepared {
            requests,
            param_types: Mutex::new(Vec::new()),
            decide_at_bind,
            columns: Mutex::new(None),
            describing: AtomicBool::new(false),
        }
    }

    /// Parameter types to read binary values by (0 where unknown).
    pub fn param_types(&self) -> Vec<u32> {
        lock(&self.param_types).clone()
    }

    pub fn set_param_types(&self, types: Vec<u32>) {
        *lock(&self.param_types) = types;
    }
}

/// A portal opened with `Bind`: its statement, parameter values, and result formats.
#[derive(Debug)]
pub(crate) struct Portal {
    pub prepared: Arc<Prepared>,
    pub params: Vec<String>,
    /// The digest of the parameter values as sent, if there were any.
    pub values_digest: Option<String>,
    /// The result format codes as `Bind` gave them (none: all text; one: for every column).
    pub formats: Vec<i16>,
    pub columns: Mutex<Option<Arc<[Column]>>>,
    pub describing: AtomicBool,
}

impl Portal {
    pub fn new(
        prepared: Arc<Prepared>,
        params: Vec<String>,
        values_digest: Option<String>,
        formats: Vec<i16>,
    ) -> Portal {
        Portal {
            prepared,
            params,
            values_digest,
            formats,
            columns: Mutex::new(None),
            describing: AtomicBool::new(false),
        }
    }

    /// Its statement's request as run with this portal's values.
    pub fn request(&self, statement: &gatehouse_core::pipeline::Request) -> gatehouse_core::pipeline::Request {
        let mut request = statement.clone();
        request.params = self.params.clone();
        if let Some(values) = &self.values_digest {
            request.digest = crate::digest::with_values(&statement.digest, values);
        }
        request
    }

    /// The columns its rows have, in the formats it returns them: from a `Describe` of the
    /// portal, else from one of its statement with the portal's formats applied.
    pub fn columns(&self) -> Option<Arc<[Column]>> {
        if let Some(c) = lock(&self.columns).clone() {
            return Some(c);
        }
        let statement = lock(&self.prepared.columns).clone()?;
        let formatted: Vec<Column> = statement
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let format = match self.formats.len() {
                    0 => 0,
                    1 => self.formats[0],
                    _ => self.formats.get(i).copied().unwrap_or(0),
                };
                Column { format, ..c.clone() }
            })
            .collect();
        Some(formatted.into())
    }

    /// Whether nothing tells the gateway yet what its rows look like: neither an answered nor
    /// a pending `Describe` of the portal or of its statement.
    pub fn shape_unknown(&self) -> bool {
        lock(&self.columns).is_none()
            && !self.describing.load(Ordering::Relaxed)
            && lock(&self.prepared.columns).is_none()
            && !self.prepared.describing.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Extended {
    pub statements: HashMap<String, Arc<Prepared>>,
    pub portals: HashMap<String, Arc<Portal>>,
    pub expects: VecDeque<Expect>,
    /// After a refusal: the caller's messages are dropped until its `Sync`, as the server does
    /// after an error.
    pub discarding: bool,
}

/// A `Bind` as the gateway reads it.
#[derive(Debug)]
pub(crate) struct BindMessage {
    pub portal: String,
    /// Each parameter as recorded: text-format values as sent, binary ones of common types read
    /// by the statement's parameter types, anything else as hex; capped; `NULL` as `null`.
    pub params: Vec<String>,
    /// The digest of the values exactly as sent, if there were any.
    pub values_digest: Option<String>,
    pub result_formats: Vec<i16>,
}

fn cstr(body: &[u8], at: &mut usize) -> Result<String, String> {
    let rest = body.get(*at..).ok_or("truncated message")?;
    let end = rest.iter().position(|b| *b == 0).ok_or("missing string terminator")?;
    let s = std::str::from_utf8(&rest[..end]).map_err(|_| "string is not UTF-8")?.to_string();
    *at += end + 1;
    Ok(s)
}

fn int16(body: &[u8], at: &mut usize) -> Result<i16, String> {
    let b = body.get(*at..*at + 2).ok_or("truncated message")?;
    *at += 2;
    Ok(i16::from_be_bytes([b[0], b[1]]))
}

fn int32(body: &[u8], at: &mut usize) -> Result<i32, String> {
    let b = body.get(*at..*at + 4).ok_or("truncated message")?;
    *at += 4;
    Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// `Parse`: statement name, query text, and the parameter types it declares (0: unspecified).
pub(crate) fn parse_message(body: &[u8]) -> Result<(String, String, Vec<u32>), String> {
    let mut at = 0;
    let name = cstr(body, &mut at)?;
    let query = cstr(body, &mut at)?;
    let n = int16(body, &mut at)?;
    if n < 0 || body.len() != at + 4 * n as usize {
        return Err("bad parameter type list".into());
    }
    let types = (0..n).map(|_| int32(body, &mut at).map(|t| t as u32)).collect::<Result<_, _>>()?;
    Ok((name, query, types))
}

/// `ParameterDescription` (`t`): the type of each parameter, as the server resolved them.
pub(crate) fn parameter_description(body: &[u8]) -> Option<Vec<u32>> {
    let mut at = 0;
    let n = int16(body, &mut at).ok()?;
    let types = (0..n.max(0)).map(|_| int32(body, &mut at).map(|t| t as u32)).collect::<Result<Vec<_>, _>>().ok()?;
    (at == body.len()).then_some(types)
}

/// `Bind`: portal, statement, parameters and result formats.
pub(crate) fn bind_message(body: &[u8], types: &[u32]) -> Result<BindMessage, String> {
    let mut at = 0;
    let portal = cstr(body, &mut at)?;
    cstr(body, &mut at)?;
    let nformats = int16(body, &mut at)?;
    if nformats < 0 {
        return Err("bad format count".into());
    }
    let mut formats = Vec::with_capacity(nformats as usize);
    for _ in 0..nformats {
        formats.push(int16(body, &mut at)?);
    }
    let nparams = int16(body, &mut at)?;
    if nparams < 0 {
        return Err("bad parameter count".into());
    }
    let mut params = Vec::with_capacity(nparams as usize);
    let mut digest = crate::digest::Values::new();
    for i in 0..nparams as usize {
        // No codes: all text; one code: for every parameter; else one per parameter.
        let binary = match formats.len() {
            0 => false,
            1 => formats[0] == 1,
            _ => formats.get(i).is_some_and(|f| *f == 1),
        };
        let len = int32(body, &mut at)?;
        let value = if len < 0 {
            None
        } else {
            let v = body.get(at..at + len as usize).ok_or("truncated parameter")?;
            at += len as usize;
            Some(v)
        };
        digest.push(value, binary);
        params.push(crate::params::render(value, binary, types.get(i).copied().unwrap_or(0)));
    }
    let nresults = int16(body, &mut at)?;
    if nresults < 0 || body.len() != at + 2 * nresults as usize {
        return Err("bad result format list".into());
    }
    let mut result_formats = Vec::with_capacity(nresults as usize);
    for _ in 0..nresults {
        result_formats.push(int16(body, &mut at)?);
    }
    Ok(BindMessage { portal, params, values_digest: digest.finish(), result_formats })
}

/// The statement a `Bind` names (read before the rest, which needs the statement's types).
pub(crate) fn bind_statement(body: &[u8]) -> Result<String, String> {
    let mut at = 0;
    cstr(body, &mut at)?;
    cstr(body, &mut at)
}

/// `Execute`: the portal.
pub(crate) fn execute_message(body: &[u8]) -> Result<String, String> {
    let mut at = 0;
    let portal = cstr(body, &mut at)?;
    let _max_rows = int32(body, &mut at)?;
    Ok(portal)
}

/// `Close` / `Describe`: `S` or `P`, and the name.
pub(crate) fn target_message(body: &[u8]) -> Result<(u8, String), String> {
    let kind = *body.first().ok_or("truncated message")?;
    if kind != b'S' && kind != b'P' {
        return Err(format!("unknown target {:?}", kind as char));
    }
    let mut at = 1;
    Ok((kind, cstr(body, &mut at)?))
}

/// A `Describe` of a statement (`S`) or portal (`P`).
pub(crate) fn describe_message(kind: u8, name: &str) -> Bytes {
    let mut out = Vec::with_capacity(name.len() + 7);
    out.push(b'D');
    out.extend_from_slice(&((4 + 1 + name.len() + 1) as i32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    Bytes::from(out)
}

/// A `Parse` of text the server cannot parse: it fails where the refused message stood.
pub(crate) fn failing_parse() -> Bytes {
    let text = b"GATEHOUSE REFUSED THIS REQUEST";
    let mut out = Vec::with_capacity(text.len() + 10);
    out.push(b'P');
    out.extend_from_slice(&((4 + 1 + text.len() + 1 + 2) as i32).to_be_bytes());
    out.push(0);
    out.extend_from_slice(text);
    out.push(0);
    out.extend_from_slice(&0i16.to_be_bytes());
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_parses_and_records_parameters() {
        let mut body = b"p1\0s1\0".to_vec();
        body.extend_from_slice(&3i16.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&3i16.to_be_bytes());
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"42");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(&[0xff, 0x00]);
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        let bind = bind_message(&body, &[]).unwrap();
        assert_eq!((bind.portal.as_str(), bind_statement(&body).unwrap().as_str()), ("p1", "s1"));
        assert_eq!(bind.params, vec!["42".to_string(), "null".to_string(), "\\xff00".to_string()]);
        assert_eq!(bind.result_formats, vec![1]);
        assert!(bind_message(&body[..body.len() - 3], &[]).is_err());
        // With the types known, the binary int4 reads as a number.
        let mut typed = b"p1\0s1\0".to_vec();
        typed.extend_from_slice(&1i16.to_be_bytes());
        typed.extend_from_slice(&1i16.to_be_bytes());
        typed.extend_from_slice(&1i16.to_be_bytes());
        typed.extend_from_slice(&4i32.to_be_bytes());
        typed.extend_from_slice(&42i32.to_be_bytes());
        typed.extend_from_slice(&0i16.to_be_bytes());
        assert_eq!(bind_message(&typed, &[23]).unwrap().params, vec!["42".to_string()]);
        assert_eq!(bind_message(&typed, &[]).unwrap().params, vec!["\\x0000002a".to_string()]);
    }

    #[test]
    fn parse_and_targets() {
        let mut body = b"s\0SELECT 1\0".to_vec();
        body.extend_from_slice(&0i16.to_be_bytes());
        assert_eq!(parse_message(&body).unwrap(), ("s".into(), "SELECT 1".into(), vec![]));
        let mut typed = b"s\0SELECT $1\0".to_vec();
        typed.extend_from_slice(&1i16.to_be_bytes());
        typed.extend_from_slice(&23u32.to_be_bytes());
        assert_eq!(parse_message(&typed).unwrap().2, vec![23]);
        let mut description = 2i16.to_be_bytes().to_vec();
        description.extend_from_slice(&23u32.to_be_bytes());
        description.extend_from_slice(&25u32.to_be_bytes());
        assert_eq!(parameter_description(&description), Some(vec![23, 25]));
        assert_eq!(parameter_description(&description[..5]), None);
        assert!(parse_message(b"s\0SELECT 1").is_err());
        assert_eq!(target_message(b"Sname\0").unwrap(), (b'S', "name".into()));
        assert!(target_message(b"Xname\0").is_err());
        let f = failing_parse();
        assert_eq!(f[0], b'P');
        assert_eq!(i32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize, f.len() - 1);
    }
}
