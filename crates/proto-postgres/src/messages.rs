//! Messages the gateway itself sends to a caller, as complete frames ready to write.
//!
//! Text arguments are made safe for the wire: NUL bytes (which would end a field early and
//! desynchronise the caller) are replaced by U+FFFD, and each field is cut to at most
//! [`MAX_FIELD_LEN`] bytes on a character boundary, so every frame has a valid length.

use bytes::{BufMut, Bytes, BytesMut};

use crate::backend::TransactionStatus;

/// Longest text field written, in bytes.
pub const MAX_FIELD_LEN: usize = 64 * 1024;

/// The answer to an `SSLRequest` that accepts it (start the TLS handshake next).
pub const SSL_ACCEPT: u8 = b'S';
/// The answer to an `SSLRequest` or `GSSENCRequest` that refuses it.
pub const SSL_REFUSE: u8 = b'N';

/// Severity of an `ErrorResponse` or `NoticeResponse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// `ERROR`: the statement failed; the session goes on.
    Error,
    /// `FATAL`: the session ends.
    Fatal,
    /// `PANIC`: every session ends (never sent by a gateway; here for completeness).
    Panic,
    /// `WARNING`.
    Warning,
    /// `NOTICE`.
    Notice,
    /// `DEBUG`.
    Debug,
    /// `INFO`.
    Info,
    /// `LOG`.
    Log,
}

impl Severity {
    /// The (non-localised) name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }
}

/// A frame with `tag` whose body `write` produces; the length is filled in afterwards.
fn frame(tag: u8, write: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u8(tag);
    buf.put_i32(0);
    write(&mut buf);
    // Bounded by MAX_FIELD_LEN per field and a handful of fields, far below i32::MAX.
    let len = i32::try_from(buf.len() - 1).unwrap_or(i32::MAX);
    buf[1..5].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// Writes `text` as a NUL-terminated field, NUL bytes replaced and cut to [`MAX_FIELD_LEN`].
fn put_cstr(buf: &mut BytesMut, text: &str) {
    let mut end = text.len().min(MAX_FIELD_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = &text[..end];
    if text.contains('\0') {
        buf.put_slice(text.replace('\0', "\u{FFFD}").as_bytes());
    } else {
        buf.put_slice(text.as_bytes());
    }
    buf.put_u8(0);
}

/// `sqlstate` if it is five ASCII digits or upper-case letters, else `XX000` (internal_error).
fn valid_sqlstate(sqlstate: &str) -> &str {
    if sqlstate.len() == 5 && sqlstate.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()) {
        sqlstate
    } else {
        "XX000"
    }
}

fn error_or_notice(
    tag: u8,
    severity: Severity,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> Bytes {
    frame(tag, |buf| {
        buf.put_u8(b'S');
        put_cstr(buf, severity.as_str());
        buf.put_u8(b'V');
        put_cstr(buf, severity.as_str());
        buf.put_u8(b'C');
        put_cstr(buf, valid_sqlstate(sqlstate));
        buf.put_u8(b'M');
        put_cstr(buf, message);
        for (kind, value) in [(b'D', detail), (b'H', hint)] {
            if let Some(value) = value {
                buf.put_u8(kind);
                put_cstr(buf, value);
            }
        }
        buf.put_u8(0);
    })
}

/// `ErrorResponse` with fields S and V (`severity`), C (`sqlstate`; an invalid code becomes
/// `XX000`), M (`message`), and D/H when `detail`/`hint` are given. A refusal by policy is
/// `error_response(Severity::Error, "42501", …)`.
pub fn error_response(
    severity: Severity,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> Bytes {
    error_or_notice(b'E', severity, sqlstate, message, detail, hint)
}

/// `NoticeResponse`, with the same fields as [`error_response`].
pub fn notice_response(
    severity: Severity,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> Bytes {
    error_or_notice(b'N', severity, sqlstate, message, detail, hint)
}

/// `ReadyForQuery` with `status`.
pub fn ready_for_query(status: TransactionStatus) -> Bytes {
    frame(b'Z', |buf| buf.put_u8(status.as_byte()))
}

/// `AuthenticationOk`.
pub fn authentication_ok() -> Bytes {
    frame(b'R', |buf| buf.put_i32(0))
}

/// `AuthenticationCleartextPassword`: asks the caller for a password (send it over TLS only).
pub fn authentication_cleartext_password() -> Bytes {
    frame(b'R', |buf| buf.put_i32(3))
}

/// `BackendKeyData` with process id `pid` and secret `key`.
pub fn backend_key_data(pid: i32, key: i32) -> Bytes {
    frame(b'K', |buf| {
        buf.put_i32(pid);
        buf.put_i32(key);
    })
}

/// `ParameterStatus` reporting `name = value`.
pub fn parameter_status(name: &str, value: &str) -> Bytes {
    frame(b'S', |buf| {
        put_cstr(buf, name);
        put_cstr(buf, value);
    })
}

/// `CommandComplete` with command tag `tag` (`SELECT 3`, `BEGIN`, …).
pub fn command_complete(tag: &str) -> Bytes {
    frame(b'C', |buf| put_cstr(buf, tag))
}

/// `EmptyQueryResponse` (the answer to a Query with no statement).
pub fn empty_query_response() -> Bytes {
    frame(b'I', |_| {})
}

/// The one-byte answer to an `SSLRequest`: [`SSL_ACCEPT`] or [`SSL_REFUSE`]. Also the answer
/// to a `GSSENCRequest` with `accept = false`.
pub fn ssl_response(accept: bool) -> Bytes {
    Bytes::from_static(if accept { &[SSL_ACCEPT] } else { &[SSL_REFUSE] })
}
