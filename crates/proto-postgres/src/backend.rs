//! What the resource sends: raw frames with accessors that decode only what is asked for.

use std::fmt;

use bytes::Bytes;
use tokio::io::AsyncRead;

use crate::upstream::BackendKey;
use crate::wire::{self, Tag, WireError};

/// The transaction status carried by `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (statements are refused until it ends).
    Failed,
}

impl TransactionStatus {
    /// The status byte on the wire.
    pub fn as_byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }

    /// The status for a wire byte, if it is one.
    pub fn from_byte(byte: u8) -> Option<TransactionStatus> {
        match byte {
            b'I' => Some(TransactionStatus::Idle),
            b'T' => Some(TransactionStatus::InTransaction),
            b'E' => Some(TransactionStatus::Failed),
            _ => None,
        }
    }
}

/// The fields of an `ErrorResponse` or `NoticeResponse`. Text is decoded as UTF-8, replacing
/// invalid sequences (the server writes in the session's `client_encoding`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    /// `V` (non-localised severity: `ERROR`, `FATAL`, `NOTICE`, …), else `S`.
    pub severity: String,
    /// `C`: the SQLSTATE code, such as `28P01`.
    pub code: String,
    /// `M`: the primary message.
    pub message: String,
    /// `D`: the detail, if any.
    pub detail: Option<String>,
    /// `H`: the hint, if any.
    pub hint: Option<String>,
    /// Every field in the order sent, as (field type byte, value).
    pub all: Vec<(u8, String)>,
}

impl ErrorFields {
    /// The value of field type `kind` (`b'P'` for the position, `b'n'` for a constraint, …).
    pub fn get(&self, kind: u8) -> Option<&str> {
        self.all.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.as_str())
    }
}

/// One column of a result, as a `RowDescription` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The table the column comes from (0 when it is not a plain table column).
    pub table_oid: u32,
    /// Its attribute number in that table (0 when none).
    pub column_number: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
    /// 0 text, 1 binary (always 0 in the answer to a `Describe` of a statement: the format is
    /// chosen at `Bind`).
    pub format: i16,
}

/// One message from the resource, kept as its complete original bytes (tag, length, body) so
/// it can be forwarded unchanged. Accessors decode on demand and fail with
/// [`WireError::UnexpectedTag`] on a frame of another type.
///
/// `Debug` shows only the tag and length: bodies carry data.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendFrame {
    raw: Bytes,
}

impl BackendFrame {
    /// Wraps complete frame bytes (tag, length, body), checking the length field matches.
    pub fn from_raw(raw: Bytes) -> Result<BackendFrame, WireError> {
        if raw.len() < 5 {
            return Err(WireError::Truncated);
        }
        let len = i32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
        let max = raw.len() - 1;
        if wire::checked_len(len, 4, max)? != max {
            return Err(WireError::BadLength { len: i64::from(len), min: max, max });
        }
        Ok(BackendFrame { raw })
    }

    /// The tag byte (`b'D'`, `b'C'`, `b'Z'`, …).
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The body: everything after the tag and the length.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }

    /// The whole frame as received, to forward unchanged.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// [`raw`](Self::raw), by value.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// The transaction status of a `ReadyForQuery` (`'Z'`).
    pub fn ready_status(&self) -> Result<TransactionStatus, WireError> {
        self.expect(b'Z')?;
        match self.body() {
            [status] => TransactionStatus::from_byte(*status)
                .ok_or(WireError::Malformed { what: "ReadyForQuery", reason: "unknown transaction status" }),
            _ => Err(WireError::Malformed { what: "ReadyForQuery", reason: "body is not one byte" }),
        }
    }

    /// The command tag of a `CommandComplete` (`'C'`), such as `SELECT 1` or `INSERT 0 3`.
    pub fn command_tag(&self) -> Result<&str, WireError> {
        self.expect(b'C')?;
        wire::single_cstr(self.body(), "CommandComplete")
    }

    /// The fields of an `ErrorResponse` (`'E'`) or `NoticeResponse` (`'N'`).
    pub fn error_fields(&self) -> Result<ErrorFields, WireError> {
        if !matches!(self.tag(), b'E' | b'N') {
            return Err(WireError::UnexpectedTag { expected: b'E', got: self.tag() });
        }
        parse_error_fields(self.body())
    }

    /// The number of columns of a `DataRow` (`'D'`).
    pub fn data_row_columns(&self) -> Result<u16, WireError> {
        self.expect(b'D')?;
        match self.body() {
            [hi, lo, ..] if *hi < 0x80 => Ok(u16::from_be_bytes([*hi, *lo])),
            [_, _, ..] => Err(WireError::Malformed { what: "DataRow", reason: "negative column count" }),
            _ => Err(WireError::Malformed { what: "DataRow", reason: "too short" }),
        }
    }

    /// The columns of a `RowDescription` (`'T'`), in order.
    pub fn row_description(&self) -> Result<Vec<Column>, WireError> {
        const WHAT: &str = "RowDescription";
        let bad = |reason| WireError::Malformed { what: WHAT, reason };
        self.expect(b'T')?;
        let body = self.body();
        let count = match body {
            [hi, lo, ..] => i16::from_be_bytes([*hi, *lo]),
            _ => return Err(bad("too short")),
        };
        let count = usize::try_from(count).map_err(|_| bad("negative column count"))?;
        let mut rest = &body[2..];
        let mut columns = Vec::with_capacity(count.min(1600));
        for _ in 0..count {
            let (name, after) = wire::split_cstr(rest).ok_or(bad("column name without NUL"))?;
            let fixed: &[u8; 18] = after.get(..18).and_then(|f| f.try_into().ok()).ok_or(bad("truncated column"))?;
            let u32_at = |i: usize| u32::from_be_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
            let i16_at = |i: usize| i16::from_be_bytes([fixed[i], fixed[i + 1]]);
            columns.push(Column {
                name: String::from_utf8_lossy(name).into_owned(),
                table_oid: u32_at(0),
                column_number: i16_at(4),
                type_oid: u32_at(6),
                type_size: i16_at(10),
                type_modifier: i32::from_be_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]),
                format: i16_at(16),
            });
            rest = &after[18..];
        }
        if !rest.is_empty() {
            return Err(bad("bytes after the last column"));
        }
        Ok(columns)
    }

    /// The name and value of a `ParameterStatus` (`'S'`).
    pub fn parameter_status(&self) -> Result<(&str, &str), WireError> {
        const WHAT: &str = "ParameterStatus";
        self.expect(b'S')?;
        let (name, rest) =
            wire::split_cstr(self.body()).ok_or(WireError::Malformed { what: WHAT, reason: "missing NUL" })?;
        let name = std::str::from_utf8(name).map_err(|_| WireError::Malformed { what: WHAT, reason: "not UTF-8" })?;
        Ok((name, wire::single_cstr(rest, WHAT)?))
    }

    /// The process id and secret key of a `BackendKeyData` (`'K'`).
    pub fn backend_key(&self) -> Result<BackendKey, WireError> {
        self.expect(b'K')?;
        match self.body() {
            [a, b, c, d, e, f, g, h] => {
                Ok(BackendKey { pid: i32::from_be_bytes([*a, *b, *c, *d]), key: i32::from_be_bytes([*e, *f, *g, *h]) })
            }
            _ => Err(WireError::Malformed { what: "BackendKeyData", reason: "body is not 8 bytes" }),
        }
    }

    fn expect(&self, tag: u8) -> Result<(), WireError> {
        if self.tag() == tag { Ok(()) } else { Err(WireError::UnexpectedTag { expected: tag, got: self.tag() }) }
    }
}

impl fmt::Debug for BackendFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendFrame")
            .field("tag", &format_args!("{}", Tag(self.tag())))
            .field("body_len", &self.body().len())
            .finish()
    }
}

fn parse_error_fields(mut body: &[u8]) -> Result<ErrorFields, WireError> {
    const WHAT: &str = "ErrorResponse";
    let mut fields = ErrorFields::default();
    let mut localized_severity = None;
    loop {
        match body {
            [0] => break,
            [] => return Err(WireError::Malformed { what: WHAT, reason: "missing terminator" }),
            [0, ..] => return Err(WireError::Malformed { what: WHAT, reason: "bytes after the terminator" }),
            [kind, rest @ ..] => {
                let (value, after) =
                    wire::split_cstr(rest).ok_or(WireError::Malformed { what: WHAT, reason: "field without NUL" })?;
                let value = String::from_utf8_lossy(value).into_owned();
                match kind {
                    b'S' => localized_severity = Some(value.clone()),
                    b'V' => fields.severity = value.clone(),
                    b'C' => fields.code = value.clone(),
                    b'M' => fields.message = value.clone(),
                    b'D' => fields.detail = Some(value.clone()),
                    b'H' => fields.hint = Some(value.clone()),
                    _ => {}
                }
                fields.all.push((*kind, value));
                body = after;
            }
        }
    }
    if fields.severity.is_empty()
        && let Some(severity) = localized_severity
    {
        fields.severity = severity;
    }
    Ok(fields)
}

/// Reads one message from the resource (tag byte, `i32` length counting itself, body) and
/// returns its complete bytes. A length below 4 or above `max_len` is refused before anything
/// is allocated; EOF before the tag is [`WireError::Closed`], later [`WireError::Truncated`].
///
/// Reads the stream with small reads; wrap it in a `tokio::io::BufReader` for throughput.
pub async fn read_backend<R: AsyncRead + Unpin>(stream: &mut R, max_len: usize) -> Result<BackendFrame, WireError> {
    Ok(BackendFrame { raw: wire::read_frame(stream, max_len).await? })
}

/// [`read_backend`] through a [`FrameReader`](crate::FrameReader) (cancel-safe).
pub async fn next_backend<R: AsyncRead + Unpin>(reader: &mut wire::FrameReader<R>) -> Result<BackendFrame, WireError> {
    Ok(BackendFrame { raw: reader.next().await? })
}
