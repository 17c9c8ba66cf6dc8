//! Masking what the resource returns, with the connection's value detectors
//! (`gatehouse-mask`): values in `DataRow`s (text and binary format), `COPY … TO STDOUT` data,
//! the text fields of errors and notices, and notification payloads. A value whose type cannot
//! hold masked text (a number, a date, …) becomes NULL instead, so the caller's decoding never
//! breaks; a binary value the gateway cannot read (arrays, composites, ranges, …) becomes NULL
//! too, since it cannot be checked.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use gatehouse_mask::Masker;

use crate::Column;
use crate::params::binary_as_text;

/// How one result column is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnMask {
    /// The value detectors run on it.
    Detect,
    /// A whole-column rule names it: `****` or NULL.
    Whole,
    /// The caller may see it unmasked.
    Clear,
}

/// Values masked in one statement's results: column → detector → count.
pub(crate) type Tally = BTreeMap<String, BTreeMap<String, u64>>;

/// Types whose text form is free text: a masked value stays a valid value of the type.
fn free_text(oid: u32) -> bool {
    matches!(
        oid,
        18 | 19 | 25 | 114 | 142 | 705 | 1042 | 1043 | 3802
        // Arrays of those: `{a***@example.com,…}` is still a valid array literal.
        | 1002 | 1003 | 1009 | 1014 | 1015 | 199 | 143 | 3807
    )
}

/// Binary types that carry no text a detector could find.
fn opaque_binary(oid: u32) -> bool {
    // bytea, time, timetz, interval, money, point, box, …
    matches!(oid, 17 | 1083 | 1266 | 1186 | 790 | 600 | 601 | 602 | 603 | 604 | 628 | 718)
}

enum Value {
    Same,
    Text(String),
    Bytes(Vec<u8>),
    Null,
}

/// A binary-format array of a free-text element type with each element masked: the array
/// header is kept, element lengths recomputed. `None` if it does not read as such an array.
fn text_array_binary(v: &[u8], masker: &Masker) -> Option<(Vec<u8>, gatehouse_mask::Counts)> {
    let int = |at: usize| v.get(at..at + 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let ndim = usize::try_from(int(0)?).ok()?;
    let element = u32::try_from(int(8)?).ok()?;
    if ndim > 6 || !free_text(element) || text_array(element) {
        return None;
    }
    let header = 12 + 8 * ndim;
    let mut n: usize = 1;
    for d in 0..ndim {
        n = n.checked_mul(usize::try_from(int(12 + 8 * d)?).ok()?)?;
    }
    if ndim == 0 {
        n = 0;
    }
    let mut out = v.get(..header)?.to_vec();
    let mut counts = gatehouse_mask::Counts::new();
    let mut at = header;
    for _ in 0..n {
        let len = int(at)?;
        at += 4;
        if len < 0 {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            continue;
        }
        let raw = v.get(at..at + len as usize)?;
        at += len as usize;
        // jsonb elements carry a version byte before their text.
        let (prefix, text) = if element == 3802 { raw.split_first().map(|(p, t)| (Some(*p), t))? } else { (None, raw) };
        let masked = masker.mask_counted(std::str::from_utf8(text).ok()?, |detector| counts.add(detector, 1));
        let body = masked.as_bytes();
        out.extend_from_slice(&((body.len() + usize::from(prefix.is_some())) as i32).to_be_bytes());
        out.extend(prefix);
        out.extend_from_slice(body);
    }
    (at == v.len()).then_some((out, counts))
}

/// One value: what to send instead, if anything.
fn mask_value(v: &[u8], column: Option<&Column>, masker: &Masker, tally: &mut Tally, name: &str) -> Value {
    let (oid, binary) = column.map_or((0, false), |c| (c.type_oid, c.format == 1));
    if !binary {
        // Text format: the client encoding is UTF-8 unless the caller chose otherwise; what
        // cannot be read cannot be checked.
        let Ok(text) = std::str::from_utf8(v) else { return Value::Null };
        return match masker.mask_counted(text, |detector| add_count(tally, name, detector, 1)) {
            Cow::Borrowed(_) => Value::Same,
            Cow::Owned(masked) if free_text(oid) || oid == 0 => Value::Text(masked),
            Cow::Owned(_) => Value::Null,
        };
    }
    if opaque_binary(oid) {
        return Value::Same;
    }
    if oid == 3802 {
        // jsonb: a version byte, then its text.
        let Some((1, json)) = v.split_first() else { return Value::Null };
        let Ok(text) = std::str::from_utf8(json) else { return Value::Null };
        let Cow::Owned(masked) = masker.mask_counted(text, |detector| add_count(tally, name, detector, 1)) else {
            return Value::Same;
        };
        let mut out = String::from("\u{1}");
        out.push_str(&masked);
        return Value::Text(out);
    }
    if text_array(oid) {
        return match text_array_binary(v, masker) {
            Some((out, counts)) => {
                if counts.is_empty() {
                    Value::Same
                } else {
                    for (detector, n) in counts.iter() {
                        add_count(tally, name, detector, n);
                    }
                    Value::Bytes(out)
                }
            }
            None => Value::Null,
        };
    }
    let scalar_text = free_text(oid);
    let readable = if scalar_text { std::str::from_utf8(v).ok().map(String::from) } else { binary_as_text(oid, v) };
    let Some(text) = readable else {
        // Arrays, composites, ranges and types the gateway cannot read: what text they carry
        // is checked as it stands in the bytes; anything found makes the value NULL.
        let lossy = String::from_utf8_lossy(v);
        return match masker.mask_counted(&lossy, |detector| add_count(tally, name, detector, 1)) {
            Cow::Borrowed(_) => Value::Same,
            Cow::Owned(_) => Value::Null,
        };
    };
    match masker.mask_counted(&text, |detector| add_count(tally, name, detector, 1)) {
        Cow::Borrowed(_) => Value::Same,
        Cow::Owned(masked) if scalar_text => Value::Text(masked),
        Cow::Owned(_) => Value::Null,
    }
}

/// Adds `n` values of column `name` masked by `detector` to `tally`; the names are allocated
/// only the first time they are counted.
fn add_count(tally: &mut Tally, name: &str, detector: &str, n: u64) {
    match tally.get_mut(name) {
        Some(column) => match column.get_mut(detector) {
            Some(have) => *have += n,
            None => {
                column.insert(detector.to_string(), n);
            }
        },
        None => {
            tally.insert(name.to_string(), BTreeMap::from([(detector.to_string(), n)]));
        }
    }
}

fn text_array(oid: u32) -> bool {
    matches!(oid, 1002 | 1003 | 1009 | 1014 | 1015 | 199 | 143 | 3807)
}

/// A value a whole-column rule masks: `****` where the type holds free text, else NULL.
fn whole_value(column: Option<&Column>) -> Value {
    match column {
        Some(c) if free_text(c.type_oid) && !text_array(c.type_oid) && c.type_oid != 3802 => {
            Value::Text(gatehouse_mask::mask_whole(""))
        }
        Some(c) if c.type_oid == 3802 && c.format == 0 => Value::Text("\"****\"".into()),
        _ => Value::Null,
    }
}

/// A `DataRow` with its values masked, or `None` when nothing in it needed masking. Errs on a
/// malformed row (the relay refuses to forward it).
pub(crate) fn data_row(
    body: &[u8],
    columns: Option<&[Column]>,
    plan: &[ColumnMask],
    masker: Option<&Masker>,
    tally: &mut Tally,
) -> Result<Option<Bytes>, &'static str> {
    let count = body.get(..2).map(|b| i16::from_be_bytes([b[0], b[1]])).ok_or("DataRow too short")?;
    let count = usize::try_from(count).map_err(|_| "negative column count")?;
    let mut at = 2;
    // Each value: its bytes (None for NULL) and what to send instead.
    let mut values: Vec<(Option<&[u8]>, Value)> = Vec::with_capacity(count);
    let mut changed = false;
    for i in 0..count {
        let len =
            body.get(at..at + 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok_or("truncated DataRow")?;
        at += 4;
        if len < 0 {
            values.push((None, Value::Same));
            continue;
        }
        let end = at + len as usize;
        let v = body.get(at..end).ok_or("truncated DataRow")?;
        let column = columns.and_then(|c| c.get(i));
        let name: Cow<'_, str> =
            column.map_or_else(|| Cow::Owned(format!("column {}", i + 1)), |c| Cow::Borrowed(c.name.as_str()));
        let out = match (plan.get(i).copied().unwrap_or(ColumnMask::Detect), masker) {
            (ColumnMask::Whole, _) => {
                add_count(tally, &name, "column", 1);
                whole_value(column)
            }
            (ColumnMask::Detect, Some(m)) => mask_value(v, column, m, tally, &name),
            (ColumnMask::Detect, None) | (ColumnMask::Clear, _) => Value::Same,
        };
        changed |= !matches!(out, Value::Same);
        values.push((Some(v), out));
        at = end;
    }
    if at != body.len() {
        return Err("bytes after the last DataRow value");
    }
    if !changed {
        return Ok(None);
    }
    let mut out = BytesMut::with_capacity(body.len() + 16);
    out.put_u8(b'D');
    out.put_i32(0);
    out.put_i16(count as i16);
    for (original, value) in &values {
        match (original, value) {
            (None, _) | (_, Value::Null) => out.put_i32(-1),
            (Some(v), Value::Same) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v);
            }
            (Some(_), Value::Text(t)) => {
                out.put_i32(t.len() as i32);
                out.put_slice(t.as_bytes());
            }
            (Some(_), Value::Bytes(b)) => {
                out.put_i32(b.len() as i32);
                out.put_slice(b);
            }
        }
    }
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Ok(Some(out.freeze()))
}

/// An `ErrorResponse` or `NoticeResponse` with its text fields masked, or `None` if unchanged.
pub(crate) fn error_fields(tag: u8, body: &[u8], masker: &Masker) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(body.len() + 16);
    out.put_u8(tag);
    out.put_i32(0);
    let mut changed = false;
    let mut rest = body;
    while let [kind, tail @ ..] = rest {
        if *kind == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0)?;
        let value = &tail[..end];
        rest = &tail[end + 1..];
        out.put_u8(*kind);
        // Severity, code, position, and the server's source location carry no data.
        let text_field = !matches!(kind, b'S' | b'V' | b'C' | b'P' | b'p' | b'F' | b'L' | b'R');
        match std::str::from_utf8(value) {
            Ok(text) if text_field => {
                let masked = masker.mask(text);
                changed |= masked.is_changed();
                out.put_slice(masked.text().as_bytes());
            }
            _ => out.put_slice(value),
        }
        out.put_u8(0);
    }
    out.put_u8(0);
    if !changed {
        return None;
    }
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out.freeze())
}

/// A `NotificationResponse` with its payload masked, or `None` if unchanged.
pub(crate) fn notification(body: &[u8], masker: &Masker) -> Option<Bytes> {
    let pid = body.get(..4)?;
    let rest = &body[4..];
    let end = rest.iter().position(|b| *b == 0)?;
    let (channel, payload) = (&rest[..end], &rest[end + 1..]);
    let payload = payload.strip_suffix(&[0])?;
    let masked = masker.mask(std::str::from_utf8(payload).ok()?);
    if !masked.is_changed() {
        return None;
    }
    let mut out = BytesMut::with_capacity(body.len() + 16);
    out.put_u8(b'A');
    out.put_i32(0);
    out.put_slice(pid);
    out.put_slice(channel);
    out.put_u8(0);
    out.put_slice(masked.text().as_bytes());
    out.put_u8(0);
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out.freeze())
}

/// A `CopyData` row of a text or CSV `COPY … TO STDOUT`, masked, or `None` if unchanged.
pub(crate) fn copy_data(body: &[u8], masker: &Masker, tally: &mut Tally) -> Option<Bytes> {
    let text = std::str::from_utf8(body).ok()?;
    let Cow::Owned(masked) = masker.mask_counted(text, |detector| add_count(tally, "copy", detector, 1)) else {
        return None;
    };
    let mut out = BytesMut::with_capacity(body.len() + 16);
    out.put_u8(b'd');
    out.put_i32((masked.len() + 4) as i32);
    out.put_slice(masked.as_bytes());
    Some(out.freeze())
}

/// The masker for a list of detectors, built once per distinct list (compiling the detectors'
/// patterns is not free) and shared by every session that uses it. `None` for no detectors.
fn for_detectors(names: &[String]) -> Result<Option<std::sync::Arc<Masker>>, String> {
    use std::collections::HashMap;
    use std::sync::{Arc, LazyLock, Mutex};
    static BUILT: LazyLock<Mutex<HashMap<Vec<String>, Arc<Masker>>>> = LazyLock::new(Default::default);
    if names.is_empty() {
        return Ok(None);
    }
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(m) = built.get(names) {
        return Ok(Some(m.clone()));
    }
    let masker = Arc::new(gatehouse_mask::masker_from_settings(names).map_err(|e| e.to_string())?);
    built.insert(names.to_vec(), masker.clone());
    Ok(Some(masker))
}

/// A connection's masking as settings give it: its detectors' masker (built once per distinct
/// list, see [`for_detectors`]) and its whole-column rules.
pub(crate) fn for_connection(
    detectors: &[String],
    columns: &[String],
) -> Result<(Option<std::sync::Arc<Masker>>, Vec<gatehouse_mask::ColumnPattern>), String> {
    let rules = columns
        .iter()
        .map(|p| gatehouse_mask::ColumnPattern::parse(p).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((for_detectors(detectors)?, rules))
}

/// `text` with what the masker finds masked (for what the gateway records).
pub(crate) fn text(masker: Option<&Masker>, text: String) -> String {
    match masker {
        Some(m) => match m.mask(&text).into_text() {
            std::borrow::Cow::Borrowed(_) => text,
            std::borrow::Cow::Owned(masked) => masked,
        },
        None => text,
    }
}

/// How the rows of a `COPY … TO STDOUT` are masked field by field.
#[derive(Debug, Clone)]
pub(crate) struct CopyPlan {
    pub csv: bool,
    pub delimiter: u8,
    /// The next row is the CSV header (column names): passed on.
    pub header: bool,
    /// Each field: its column's name, how it is masked, and whether its type holds free text.
    pub columns: Vec<(String, ColumnMask, bool)>,
}

impl CopyPlan {
    /// Whether a whole-masked field of this type becomes `****` (else NULL): free text, but not
    /// JSON, which `****` is not.
    pub(crate) fn free_text(oid: u32) -> bool {
        free_text(oid) && !text_array(oid) && !matches!(oid, 114 | 3802)
    }
}

/// Splits a `COPY` row into its fields (without the line end), honouring backslash escapes
/// (text) or quotes (CSV).
fn copy_fields(row: &[u8], csv: bool, delimiter: u8) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let (mut start, mut i, mut quoted) = (0, 0, false);
    while i < row.len() {
        let b = row[i];
        if !csv && b == b'\\' {
            i += 2;
            continue;
        }
        if csv && b == b'"' {
            if quoted && row.get(i + 1) == Some(&b'"') {
                i += 2;
                continue;
            }
            quoted = !quoted;
        } else if b == delimiter && !quoted {
            fields.push(&row[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    fields.push(&row[start.min(row.len())..]);
    fields
}

/// A `CopyData` row masked by the plan; `Ok(None)` if unchanged; `Err` if its fields do not
/// match the plan's columns (the caller refuses the copy).
pub(crate) fn copy_row(
    body: &[u8],
    plan: &CopyPlan,
    masker: Option<&Masker>,
    tally: &mut Tally,
) -> Result<Option<Bytes>, &'static str> {
    let (row, end) = match body.strip_suffix(b"\n") {
        Some(row) => (row, &b"\n"[..]),
        None => (body, &b""[..]),
    };
    let fields = copy_fields(row, plan.csv, plan.delimiter);
    if fields.len() != plan.columns.len() {
        return Err("a COPY row does not have the columns expected");
    }
    let mut changed = false;
    let mut out: Vec<u8> = Vec::with_capacity(body.len() + 16);
    for (i, (field, (name, mask, free))) in fields.iter().zip(&plan.columns).enumerate() {
        if i > 0 {
            out.push(plan.delimiter);
        }
        let null = if plan.csv { field.is_empty() } else { *field == b"\\N" };
        match mask {
            ColumnMask::Whole if !null => {
                add_count(tally, name, "column", 1);
                changed = true;
                match (free, plan.csv) {
                    (true, _) => out.extend_from_slice(b"****"),
                    (false, true) => {}
                    (false, false) => out.extend_from_slice(b"\\N"),
                }
            }
            ColumnMask::Detect if !null => match (masker, std::str::from_utf8(field)) {
                (Some(m), Ok(text)) => {
                    let masked = m.mask_counted(text, |detector| add_count(tally, name, detector, 1));
                    changed |= matches!(masked, Cow::Owned(_));
                    out.extend_from_slice(masked.as_bytes());
                }
                (Some(_), Err(_)) => return Err("a COPY field is not UTF-8"),
                (None, _) => out.extend_from_slice(field),
            },
            _ => out.extend_from_slice(field),
        }
    }
    out.extend_from_slice(end);
    if !changed {
        return Ok(None);
    }
    let mut frame = BytesMut::with_capacity(out.len() + 5);
    frame.put_u8(b'd');
    frame.put_i32((out.len() + 4) as i32);
    frame.put_slice(&out);
    Ok(Some(frame.freeze()))
}

#[cfg(test)]
mod copy_tests {
    use super::*;

    #[test]
    fn copy_fields_split_like_the_server_writes_them() {
        assert_eq!(copy_fields(b"1\ta\\tb\t\\N", false, b'\t'), vec![&b"1"[..], b"a\\tb", b"\\N"]);
        assert_eq!(copy_fields(b"1,\"a,\"\"b\",", true, b','), vec![&b"1"[..], b"\"a,\"\"b\"", b""]);
        assert_eq!(copy_fields(b"", false, b'\t'), vec![&b""[..]]);
    }

    #[test]
    fn copy_rows_mask_whole_columns_and_detector_matches() {
        let masker = Masker::new(&[gatehouse_mask::Detector::Email], &[]).unwrap();
        let plan = CopyPlan {
            csv: false,
            delimiter: b'\t',
            header: false,
            columns: vec![
                ("id".into(), ColumnMask::Detect, false),
                ("email".into(), ColumnMask::Detect, true),
                ("ssn".into(), ColumnMask::Whole, true),
                ("card".into(), ColumnMask::Whole, false),
            ],
        };
        let mut tally = Tally::new();
        let row =
            copy_row(b"1\tjane@example.com\t123-45-6789\t4242\n", &plan, Some(&masker), &mut tally).unwrap().unwrap();
        assert_eq!(&row[5..], b"1\tj***@example.com\t****\t\\N\n");
        assert_eq!(tally["ssn"]["column"], 1);
        assert_eq!(copy_row(b"2\tnobody\t\\N\t\\N\n", &plan, Some(&masker), &mut tally).unwrap(), None);
        assert!(copy_row(b"1\t2\n", &plan, Some(&masker), &mut tally).is_err());
    }
}
