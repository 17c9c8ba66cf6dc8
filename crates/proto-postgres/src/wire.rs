//! What reading a frame can fail with, and the bounded reads shared by both directions.

use std::fmt;
use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::frontend::ProtocolVersion;

/// Largest piece read (and so allocated) at once: a frame's buffer grows with the bytes that
/// actually arrived, never with what its length prefix announced.
const READ_CHUNK: usize = 64 * 1024;

/// Why a frame could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer closed the connection cleanly, between two frames.
    #[error("connection closed")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// A length prefix outside what the protocol allows or what the reader accepts. Nothing
    /// was allocated for it.
    #[error("message length {len} out of range (allowed {min}..={max})")]
    BadLength {
        /// The announced length (it counts itself, not the tag byte).
        len: i64,
        /// Smallest length allowed here.
        min: usize,
        /// Largest length allowed here.
        max: usize,
    },
    /// A startup packet asking for a protocol version other than 3.0.
    #[error("unsupported frontend protocol version {0}: only 3.0 is supported")]
    UnsupportedVersion(ProtocolVersion),
    /// A frame whose content does not match its type.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A decode helper was called on a frame of another type.
    #[error("expected {} message, got {}", Tag(*expected), Tag(*got))]
    UnexpectedTag {
        /// The tag the helper decodes.
        expected: u8,
        /// The frame's tag.
        got: u8,
    },
    /// Reading from the stream failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// A tag byte shown as `'Q'` when printable, else as `0x00`.
pub(crate) struct Tag(pub(crate) u8);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() { write!(f, "'{}'", self.0 as char) } else { write!(f, "0x{:02x}", self.0) }
    }
}

/// Fills `buf` completely. EOF before the first byte is [`WireError::Closed`], after it
/// [`WireError::Truncated`].
pub(crate) async fn read_head<R: AsyncRead + Unpin>(stream: &mut R, buf: &mut [u8]) -> Result<(), WireError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(if filled == 0 { WireError::Closed } else { WireError::Truncated });
        }
        filled += n;
    }
    Ok(())
}

/// Appends exactly `len` bytes from `stream` to `buf`, growing it as data arrives.
pub(crate) async fn read_body<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    len: usize,
) -> Result<(), WireError> {
    let mut remaining = len;
    while remaining > 0 {
        let want = remaining.min(READ_CHUNK);
        buf.reserve(want);
        let n = (&mut *stream).take(want as u64).read_buf(buf).await?;
        if n == 0 {
            return Err(WireError::Truncated);
        }
        remaining -= n;
    }
    Ok(())
}

/// Reads one typed frame (tag byte, `i32` length counting itself, body) and returns all of its
/// bytes. The length is checked against `4..=max_len` before anything is allocated.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(stream: &mut R, max_len: usize) -> Result<Bytes, WireError> {
    let mut head = [0u8; 5];
    read_head(stream, &mut head).await?;
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let body_len = checked_len(len, 4, max_len)? - 4;
    let mut buf = BytesMut::with_capacity(5 + body_len.min(READ_CHUNK));
    buf.put_slice(&head);
    read_body(stream, &mut buf, body_len).await?;
    Ok(buf.freeze())
}

/// Reads frames (tag byte, `i32` length counting itself, body) from a stream through a buffer
/// of its own. [`next`](Self::next) is cancel-safe: dropping it (as `tokio::select!` does)
/// loses nothing, so one task can wait on several streams without a reader task for each. As
/// with [`read_frame`], a length outside `4..=max_len` is refused before anything is allocated,
/// and the buffer grows only with the bytes that actually arrive.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_len: usize,
}

impl<R> fmt::Debug for FrameReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Buffered bytes may carry SQL or passwords: only how many.
        f.debug_struct("FrameReader").field("buffered", &self.buf.len()).field("max_len", &self.max_len).finish()
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_len: usize) -> FrameReader<R> {
        FrameReader { inner, buf: BytesMut::with_capacity(8 * 1024), max_len }
    }

    /// The next complete frame's bytes.
    pub async fn next(&mut self) -> Result<Bytes, WireError> {
        loop {
            if let Some(frame) = self.buffered()? {
                return Ok(frame);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(READ_CHUNK);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Err(if self.buf.is_empty() { WireError::Closed } else { WireError::Truncated });
            }
        }
    }

    /// Whether a complete frame is already buffered (the next [`next`](Self::next) returns
    /// without reading).
    pub fn has_frame(&self) -> bool {
        self.frame_len().is_ok_and(|n| n.is_some_and(|n| self.buf.len() >= n))
    }

    /// The whole length of the frame at the front, once its header is in.
    fn frame_len(&self) -> Result<Option<usize>, WireError> {
        match self.buf.get(..5) {
            Some(h) => Ok(Some(1 + checked_len(i32::from_be_bytes([h[1], h[2], h[3], h[4]]), 4, self.max_len)?)),
            None => Ok(None),
        }
    }

    fn buffered(&mut self) -> Result<Option<Bytes>, WireError> {
        match self.frame_len()? {
            Some(n) if self.buf.len() >= n => Ok(Some(self.buf.split_to(n).freeze())),
            Some(n) => {
                // Room for the rest of this frame, a chunk at a time.
                let missing = n - self.buf.len();
                self.buf.reserve(missing.min(READ_CHUNK));
                Ok(None)
            }
            None => Ok(None),
        }
    }
}

/// `len` as a `usize` if it lies in `min..=max`.
pub(crate) fn checked_len(len: i32, min: usize, max: usize) -> Result<usize, WireError> {
    match usize::try_from(len) {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(WireError::BadLength { len: i64::from(len), min, max }),
    }
}

/// Splits a NUL-terminated string off the front of `buf`: `(string, rest)`.
pub(crate) fn split_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..end], &buf[end + 1..]))
}

/// The body of a message that is exactly one NUL-terminated UTF-8 string.
pub(crate) fn single_cstr<'a>(body: &'a [u8], what: &'static str) -> Result<&'a str, WireError> {
    let Some((text, rest)) = split_cstr(body) else {
        return Err(WireError::Malformed { what, reason: "missing NUL terminator" });
    };
    if !rest.is_empty() {
        return Err(WireError::Malformed { what, reason: "NUL byte inside the string" });
    }
    std::str::from_utf8(text).map_err(|_| WireError::Malformed { what, reason: "not valid UTF-8" })
}
