//! What callers send: the untyped startup packet and the typed messages after it.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncRead;

use crate::wire::{self, Tag, WireError};

/// Request code of an `SSLRequest` (1234.5679).
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// Request code of a `GSSENCRequest` (1234.5680).
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// Request code of a `CancelRequest` (1234.5678).
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Largest startup packet accepted, whatever `max_len` says (PostgreSQL itself allows 10 000).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// A protocol version or request code, as `major.minor` (the high and low 16 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolVersion {
    /// High 16 bits.
    pub major: u16,
    /// Low 16 bits.
    pub minor: u16,
}

impl ProtocolVersion {
    /// Protocol 3.0, the only version this crate speaks.
    pub const V3_0: ProtocolVersion = ProtocolVersion { major: 3, minor: 0 };

    fn from_code(code: i32) -> ProtocolVersion {
        let code = code.cast_unsigned();
        ProtocolVersion { major: (code >> 16) as u16, minor: (code & 0xffff) as u16 }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The first packet of a caller's connection (it has no tag byte).
#[derive(Clone, PartialEq, Eq)]
pub enum Startup {
    /// `SSLRequest`: answer with [`messages::ssl_response`](crate::messages::ssl_response).
    Ssl,
    /// `GSSENCRequest`: answer `N` (GSSAPI encryption is not supported) and read again.
    GssEnc,
    /// `CancelRequest` for backend `pid` with secret `key`.
    Cancel {
        /// Process id from `BackendKeyData`.
        pid: i32,
        /// Secret key from `BackendKeyData`.
        key: i32,
    },
    /// `StartupMessage` for protocol 3.0.
    Startup {
        /// Always [`ProtocolVersion::V3_0`].
        version: ProtocolVersion,
        /// Parameters in the order sent (`user`, `database`, `application_name`, `options`, …);
        /// names are unique.
        params: Vec<(String, String)>,
    },
}

impl Startup {
    /// The value of startup parameter `name`, if this is a `StartupMessage` carrying it.
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            Startup::Startup { params, .. } => params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

impl fmt::Debug for Startup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Startup::Ssl => f.write_str("Ssl"),
            Startup::GssEnc => f.write_str("GssEnc"),
            Startup::Cancel { pid, .. } => {
                f.debug_struct("Cancel").field("pid", pid).field("key", &"<redacted>").finish()
            }
            Startup::Startup { version, params } => {
                f.debug_struct("Startup").field("version", version).field("params", params).finish()
            }
        }
    }
}

/// Reads the caller's first packet (or the one after an `SSLRequest`/`GSSENCRequest` was
/// answered). The length is checked against `8..=min(max_len, MAX_STARTUP_LEN)` before the
/// body is read. A `StartupMessage` must ask for protocol 3.0, carry NUL-terminated UTF-8
/// name/value pairs with unique names and end with a single NUL.
pub async fn read_startup<R: AsyncRead + Unpin>(stream: &mut R, max_len: usize) -> Result<Startup, WireError> {
    let mut head = [0u8; 4];
    wire::read_head(stream, &mut head).await?;
    let len = wire::checked_len(i32::from_be_bytes(head), 8, max_len.min(MAX_STARTUP_LEN))?;
    let mut body = BytesMut::with_capacity(len - 4);
    wire::read_body(stream, &mut body, len - 4).await?;
    parse_startup(&body)
}

fn parse_startup(body: &[u8]) -> Result<Startup, WireError> {
    const WHAT: &str = "startup packet";
    let (code, rest) = body.split_at(4);
    let code = i32::from_be_bytes([code[0], code[1], code[2], code[3]]);
    let exact = |want: usize, startup: Startup| {
        if body.len() == want { Ok(startup) } else { Err(WireError::Malformed { what: WHAT, reason: "wrong length" }) }
    };
    match code {
        SSL_REQUEST_CODE => exact(4, Startup::Ssl),
        GSSENC_REQUEST_CODE => exact(4, Startup::GssEnc),
        CANCEL_REQUEST_CODE => {
            let pid = i32::from_be_bytes(rest.get(..4).and_then(|b| b.try_into().ok()).unwrap_or_default());
            let key = i32::from_be_bytes(rest.get(4..8).and_then(|b| b.try_into().ok()).unwrap_or_default());
            exact(12, Startup::Cancel { pid, key })
        }
        _ => {
            let version = ProtocolVersion::from_code(code);
            if version != ProtocolVersion::V3_0 {
                return Err(WireError::UnsupportedVersion(version));
            }
            Ok(Startup::Startup { version, params: parse_params(rest)? })
        }
    }
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    const WHAT: &str = "startup packet";
    let malformed = |reason| WireError::Malformed { what: WHAT, reason };
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        let (name, after) = wire::split_cstr(rest).ok_or(malformed("missing terminator"))?;
        if name.is_empty() {
            if !after.is_empty() {
                return Err(malformed("bytes after the terminator"));
            }
            return Ok(params);
        }
        let (value, after) = wire::split_cstr(after).ok_or(malformed("parameter without a value"))?;
        let name = std::str::from_utf8(name).map_err(|_| malformed("parameter name is not UTF-8"))?;
        let value = std::str::from_utf8(value).map_err(|_| malformed("parameter value is not UTF-8"))?;
        if params.iter().any(|(n, _)| n == name) {
            return Err(malformed("parameter given twice"));
        }
        params.push((name.to_owned(), value.to_owned()));
        rest = after;
    }
}

/// One typed message from a caller: its tag and its complete original bytes.
///
/// `Debug` shows only the tag and length: bodies carry SQL and passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct FrontendMessage {
    raw: Bytes,
}

impl FrontendMessage {
    /// Builds a message from its tag and body (the length is computed).
    ///
    /// Returns `None` if the body is too long to be framed (more than `i32::MAX - 4` bytes).
    pub fn new(tag: u8, body: &[u8]) -> Option<FrontendMessage> {
        let len = i32::try_from(body.len().checked_add(4)?).ok()?;
        let mut raw = BytesMut::with_capacity(body.len() + 5);
        raw.put_u8(tag);
        raw.put_i32(len);
        raw.put_slice(body);
        Some(FrontendMessage { raw: raw.freeze() })
    }

    /// The tag byte (`b'Q'`, `b'P'`, `b'p'`, `b'X'`, …).
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The body: everything after the tag and the length.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }

    /// The body as shared bytes (no copy).
    pub fn body_bytes(&self) -> Bytes {
        self.raw.slice(5..)
    }

    /// The whole message as received (tag, length, body), to forward unchanged.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// [`raw`](Self::raw), by value.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// The SQL text of a simple `Query` (`'Q'`) without its terminating NUL. Errors if the
    /// message is not a Query, the NUL is missing, another NUL precedes it (the server would
    /// reject the message, and the gateway must not judge a different text than the server
    /// runs), or the text is not UTF-8.
    pub fn query_text(&self) -> Result<&str, WireError> {
        self.expect(b'Q')?;
        wire::single_cstr(self.body(), "Query message")
    }

    /// The password of a cleartext `PasswordMessage` (`'p'`), with the same checks as
    /// [`query_text`](Self::query_text). (SASL responses share the tag but are not strings.)
    pub fn password(&self) -> Result<&str, WireError> {
        self.expect(b'p')?;
        wire::single_cstr(self.body(), "PasswordMessage")
    }

    fn expect(&self, tag: u8) -> Result<(), WireError> {
        if self.tag() == tag { Ok(()) } else { Err(WireError::UnexpectedTag { expected: tag, got: self.tag() }) }
    }
}

impl fmt::Debug for FrontendMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontendMessage")
            .field("tag", &format_args!("{}", Tag(self.tag())))
            .field("body_len", &self.body().len())
            .finish()
    }
}

/// Reads one typed message (tag byte, `i32` length counting itself, body). A length below 4 or
/// above `max_len` is refused before anything is allocated, and the buffer grows only with the
/// bytes that actually arrive. EOF before the tag is [`WireError::Closed`]; EOF later is
/// [`WireError::Truncated`].
///
/// Reads the stream with small reads; wrap it in a `tokio::io::BufReader` for throughput.
pub async fn read_message<R: AsyncRead + Unpin>(stream: &mut R, max_len: usize) -> Result<FrontendMessage, WireError> {
    Ok(FrontendMessage { raw: wire::read_frame(stream, max_len).await? })
}

/// [`read_message`] through a [`FrameReader`](crate::FrameReader) (cancel-safe).
pub async fn next_message<R: AsyncRead + Unpin>(
    reader: &mut wire::FrameReader<R>,
) -> Result<FrontendMessage, WireError> {
    Ok(FrontendMessage { raw: reader.next().await? })
}
