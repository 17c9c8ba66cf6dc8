//! Masking bodies as they stream through, chunk by chunk, in bounded memory: JSON documents
//! ([`JsonMasker`] → [`JsonStream`]) and any other text ([`TextMasker`] → [`TextStream`]).
//! Chunks may be split anywhere — inside a string, an escape, a UTF-8 character, a number — and
//! the output does not depend on where: it is that of the whole body in one chunk (for text, with
//! the few exceptions listed below).
//!
//! # JSON
//!
//! - Every string **value** goes through the [`Masker`]: its escapes are decoded, the text is
//!   masked, and a changed string is written back as a JSON string (`"` and `\` escaped, control
//!   characters as `\n` or `\u00XX`, everything else as UTF-8); an unchanged string is written
//!   exactly as it came. Object keys are never masked.
//! - Numbers go through the masker too (a card number written as a number becomes a string such
//!   as `"************4242"`); [`JsonMasker::with_numbers`] turns that off. `true`, `false` and
//!   `null` are written as they come.
//! - A value — scalar, object or array — whose location matches a [`JsonPath`] rule becomes the
//!   string `"****"` ([`WHOLE_MASK`](crate::WHOLE_MASK)); its tokens are checked and skipped as
//!   they arrive, never held.
//! - Everything else, whitespace included, is written as it came, so the output has the same
//!   structure and is valid JSON.
//! - What was masked is tallied per location and detector ([`MaskTally`]).
//! - Invalid input is an error, and so is a document that is incomplete at
//!   [`JsonStream::finish`] or followed by anything but whitespace: the caller fails closed.
//!   Input must be UTF-8 without a byte order mark; escapes must be valid and surrogate escapes
//!   paired (`\ud83d\ude00`), as they must be to decode into text.
//!
//! **Limits.** A stream holds one string or number token (escaped, as written; at most
//! [`JsonMasker::DEFAULT_MAX_STRING`], 1 MiB, unless set with [`JsonMasker::with_max_string`])
//! and the path to it (at most [`JsonMasker::DEFAULT_MAX_DEPTH`], 256, nested objects and arrays,
//! see [`JsonMasker::with_max_depth`]). Over either is a
//! [`MaskError::JsonLimit`](crate::MaskError::JsonLimit). Strings inside a value masked whole are
//! not held, so not limited. Output is written as soon as each token ends.
//!
//! # Text
//!
//! A [`TextStream`] holds back the tail of what it has received that could still be part of a
//! value, and masks the rest with [`Masker::mask`]:
//!
//! 1. **Lines.** It masks and writes everything up to the last line break (`\n`) and holds the
//!    unfinished line. No built-in detector matches across a line break or looks past one, so
//!    masking line by line is the same as masking the whole text — except for a private key
//!    block, which spans lines:
//! 2. **Private keys.** From a line holding `-----BEGIN … PRIVATE KEY` with no matching
//!    `-----END … PRIVATE KEY` yet, everything is held until the END line arrives, so the block
//!    is masked as one. A block longer than the window is masked up to the window (the secret
//!    detector masks a block cut off before its END line) and the key material after it is
//!    dropped, up to the END line.
//! 3. **Long lines.** When the held text reaches the window ([`TextMasker::DEFAULT_WINDOW`],
//!    64 KiB; see [`TextMasker::with_window`]) without a line break, it is cut at a safe
//!    boundary. The cut is at least [`TextMasker::HOLD`] (1 KiB) before the end of what was
//!    received, and never inside a value the masker finds in the held text or inside a
//!    `-----BEGIN …` header. Candidates are tried latest first, in this order of preference:
//!    1. just after whitespace with no digit on either side;
//!    2. after any whitespace;
//!    3. at a character boundary.
//!
//!    For these three, the cut also stays out of the [`TextMasker::CONTEXT`] (256 bytes) before
//!    each value. That keeps the text a value is detected by with it: the `password =` of a
//!    `password = value` pair, `Bearer`, a URL's user name. When values are too dense for that,
//!    the same candidates are tried again merely outside every value. A candidate is taken only
//!    if masking the two sides apart gives exactly what masking them together gives. After
//!    16 failed checks the first candidate is taken. So a value shorter than 1 KiB is never cut,
//!    and its context almost never is; only a single value longer than that, in a line longer
//!    than the window, can be.
//! 4. **UTF-8.** Cuts never split a character. Invalid UTF-8 is not masked and not refused: the
//!    valid text between invalid sequences is masked on its own (as if each invalid sequence
//!    were a separator), and the invalid bytes are passed through as they are
//!    ([`TextStream::saw_invalid_utf8`] tells). Text in another encoding has its ASCII values
//!    masked; values written with non-ASCII characters in such text may be missed.
//!
//! Memory is bounded by the window. The output and counts equal those of [`Masker::mask`] on the
//! whole text, with these exceptions: a custom pattern that matches across a line break finds
//! only what lies within a line (or within a cut); a line of text whose masking does not settle
//! (see [`Masker`]) is masked whole (`****`) on its own rather than the whole text; and the two
//! lossy cases of rules 2 and 3.
//!
//! ```
//! use std::sync::Arc;
//!
//! use gatehouse_mask::{JsonMasker, JsonPath, Masker, TextMasker};
//!
//! let masker = Arc::new(Masker::builtin()?);
//! let json = JsonMasker::new(Some(masker.clone()), vec![JsonPath::parse("$..ssn")?]);
//! let mut stream = json.stream();
//! let mut out = Vec::new();
//! stream.push(br#"{"user": {"email": "jane@exa"#, &mut out)?;
//! stream.push(br#"mple.com", "ssn": {"value": "078-05-1120"}}}"#, &mut out)?;
//! let tally = stream.finish(&mut out)?;
//! assert_eq!(out, br#"{"user": {"email": "j***@example.com", "ssn": "****"}}"#);
//! assert_eq!(tally.get("$.user.email").map(|c| c.get("email")), Some(1));
//! assert_eq!(tally.get("$.user.ssn").map(|c| c.get("rule")), Some(1));
//!
//! let mut text = TextMasker::new(masker).stream();
//! let mut out = Vec::new();
//! text.push(b"paid with 4242 4242 ", &mut out);
//! text.push(b"4242 4242\n", &mut out);
//! let counts = text.finish(&mut out);
//! assert_eq!(out, b"paid with **** **** **** 4242\n");
//! assert_eq!(counts.get("credit_card"), 1);
//! # Ok::<(), gatehouse_mask::MaskError>(())
//! ```

mod json;
mod path;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

pub use json::{JsonMasker, JsonStream, MaskTally};
pub use path::{JsonPath, Step};

use crate::{Counts, Masker};

/// Candidate cuts of a long line checked before taking the best unchecked one.
const MAX_TRIES: usize = 16;

/// Masks text bodies as they stream: built once per masker and shared (it is cheap to clone);
/// [`TextMasker::stream`] starts one body. See the [module](self) for what is held back.
#[derive(Debug, Clone)]
pub struct TextMasker {
    masker: Arc<Masker>,
    window: usize,
}

impl TextMasker {
    /// Default window: the most text a stream holds back, 64 KiB.
    pub const DEFAULT_WINDOW: usize = 64 * 1024;

    /// When a line longer than the window is cut, at least this much of what was received is
    /// held back, so no value shorter than this is cut: 1 KiB.
    pub const HOLD: usize = 1024;

    /// When a line longer than the window is cut, the cut is first sought at least this far
    /// before any value the masker finds, so the text a value is detected by stays with it (the
    /// key of `password=…`, `Bearer`, a URL's user name): 256 bytes.
    pub const CONTEXT: usize = 256;

    /// The smallest window [`TextMasker::with_window`] accepts: 4 KiB.
    pub const MIN_WINDOW: usize = 4 * TextMasker::HOLD;

    /// A text masker with the default window ([`TextMasker::DEFAULT_WINDOW`]).
    pub fn new(masker: Arc<Masker>) -> TextMasker {
        TextMasker { masker, window: TextMasker::DEFAULT_WINDOW }
    }

    /// Sets the window, the most text a stream holds back, in bytes; at least
    /// [`TextMasker::MIN_WINDOW`] (a smaller value is raised to it).
    pub fn with_window(mut self, bytes: usize) -> TextMasker {
        self.window = bytes.max(TextMasker::MIN_WINDOW);
        self
    }

    /// The masker.
    pub fn masker(&self) -> &Arc<Masker> {
        &self.masker
    }

    /// Starts masking one body. The stream owns what it needs (`'static`, `Send`).
    pub fn stream(&self) -> TextStream {
        TextStream {
            masker: self.masker.clone(),
            window: self.window,
            pending: Vec::new(),
            counts: Counts::new(),
            skip_key: false,
            invalid_utf8: false,
        }
    }
}

/// One text body being masked: feed it with [`TextStream::push`], then call
/// [`TextStream::finish`] to write what is held back. Never fails. Its `Debug` output shows no
/// content of the body.
pub struct TextStream {
    masker: Arc<Masker>,
    window: usize,
    /// Received, not yet written; shorter than the window between calls.
    pending: Vec<u8>,
    counts: Counts,
    /// Dropping the key material of a private key block longer than the window.
    skip_key: bool,
    invalid_utf8: bool,
}

impl fmt::Debug for TextStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the text held back: it is not masked yet.
        f.debug_struct("TextStream")
            .field("masker", &self.masker)
            .field("window", &self.window)
            .field("held", &self.pending.len())
            .field("counts", &self.counts)
            .field("dropping_key", &self.skip_key)
            .field("invalid_utf8", &self.invalid_utf8)
            .finish_non_exhaustive()
    }
}

impl TextStream {
    /// Consumes the next `chunk` and appends to `out` what can be masked already; holds back the
    /// rest (see the [module](self)).
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut chunk = chunk;
        while !chunk.is_empty() {
            if self.skip_key {
                let n = key_material_len(chunk);
                chunk = &chunk[n..];
                if chunk.is_empty() {
                    break;
                }
                self.skip_key = false;
            }
            let room = self.window.saturating_sub(self.pending.len()).max(1);
            let (now, later) = chunk.split_at(room.min(chunk.len()));
            self.pending.extend_from_slice(now);
            chunk = later;
            // Without a new line break nothing can be written until the window is full.
            if now.contains(&b'\n') || self.pending.len() >= self.window {
                self.flush(out);
            }
        }
    }

    /// Masks and writes everything held back, and returns the values masked in the whole body,
    /// per detector.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Counts {
        if !self.pending.is_empty() {
            self.emit(self.pending.len(), out);
        }
        self.counts
    }

    /// Values masked so far, per detector.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Whether invalid UTF-8 was passed through (unmasked) so far.
    pub fn saw_invalid_utf8(&self) -> bool {
        self.invalid_utf8
    }

    /// Writes what the hold-back rules allow.
    fn flush(&mut self, out: &mut Vec<u8>) {
        let p = &self.pending;
        let mut cut = line_start(p, p.len());
        if let Some(begin) = open_private_key(&p[..cut]) {
            cut = line_start(p, begin);
        }
        if cut == 0 && p.len() >= self.window {
            cut = match open_private_key(p) {
                Some(begin) if begin > 0 => begin,
                Some(_) => p.len(),
                None => self.long_line_cut(),
            };
        }
        if cut > 0 {
            self.emit(cut, out);
        }
    }

    /// Masks and writes `pending[..cut]`.
    fn emit(&mut self, cut: usize, out: &mut Vec<u8>) {
        let segment = &self.pending[..cut];
        self.invalid_utf8 |= mask_into(&self.masker, segment, out, Some(&mut self.counts));
        let skip = key_open_to_end(segment);
        self.pending.drain(..cut);
        if skip {
            let n = key_material_len(&self.pending);
            self.pending.drain(..n);
            self.skip_key = self.pending.is_empty();
        }
    }

    /// Where to cut a window full of text without a line break (rule 3 of the module).
    fn long_line_cut(&self) -> usize {
        let p = &self.pending;
        let limit = p.len().saturating_sub(TextMasker::HOLD).max(1);
        let values = self.blocked(p);
        let wide = widen(&values, TextMasker::CONTEXT);
        let after_space = |i: usize| matches!(p[i - 1], b' ' | b'\t' | b'\r' | 0x0B | 0x0C);
        let clear = |i: usize| after_space(i) && !p[i].is_ascii_digit() && !(i >= 2 && p[i - 2].is_ascii_digit());
        let boundary = |i: usize| !(0x80..0xC0).contains(&p[i]);
        /// Spans a cut must stay out of, and the test a cut must pass.
        type Pass<'a> = (&'a [Range<usize>], &'a dyn Fn(usize) -> bool);
        let passes: [Pass<'_>; 5] =
            [(&wide, &clear), (&wide, &after_space), (&wide, &boundary), (&values, &after_space), (&values, &boundary)];
        let mut tried: Vec<usize> = Vec::with_capacity(MAX_TRIES);
        let mut together = None;
        for (spans, ok) in passes {
            for i in (1..=limit).rev().filter(|&i| ok(i) && containing(spans, i).is_none()) {
                if tried.contains(&i) {
                    continue;
                }
                if self.splits_cleanly(p, i, &mut together) {
                    return i;
                }
                tried.push(i);
                if tried.len() == MAX_TRIES {
                    return tried[0];
                }
            }
        }
        // No candidate passed the check: the best one. No candidate at all (every boundary is
        // inside one value): cut after that value.
        tried.first().copied().unwrap_or_else(|| containing(&values, limit).map_or(limit, |s| s.end))
    }

    /// Whether masking `p[..cut]` and `p[cut..]` apart gives what masking `p` does (`together`,
    /// computed once).
    fn splits_cleanly(&self, p: &[u8], cut: usize, together: &mut Option<Vec<u8>>) -> bool {
        let together = together.get_or_insert_with(|| {
            let mut all = Vec::with_capacity(p.len());
            mask_into(&self.masker, p, &mut all, None);
            all
        });
        let mut apart = Vec::with_capacity(together.len());
        mask_into(&self.masker, &p[..cut], &mut apart, None);
        if !together.starts_with(&apart) {
            return false;
        }
        mask_into(&self.masker, &p[cut..], &mut apart, None);
        apart == *together
    }

    /// Byte ranges of `p` a cut must not fall strictly inside, sorted and disjoint: the values
    /// the masker finds and `-----BEGIN …` headers.
    fn blocked(&self, p: &[u8]) -> Vec<Range<usize>> {
        let mut spans = Vec::new();
        let mut at = 0;
        for piece in p.utf8_chunks() {
            spans.extend(self.masker.find(piece.valid()).into_iter().map(|f| at + f.range.start..at + f.range.end));
            at += piece.valid().len() + piece.invalid().len();
        }
        let mut from = 0;
        while let Some(k) = find(p, b"-----BEGIN", from) {
            let run = header_run(p, k + b"-----BEGIN".len());
            let end = if p[run..].starts_with(b"-----") { run + 5 } else { run };
            spans.push(k..end);
            from = end.max(k + 1);
        }
        widen(&spans, 0)
    }
}

/// Masks `bytes` into `out`: each run of valid UTF-8 on its own, invalid sequences as they are.
/// Adds to `counts` if given; returns whether there was invalid UTF-8.
fn mask_into(masker: &Masker, bytes: &[u8], out: &mut Vec<u8>, mut counts: Option<&mut Counts>) -> bool {
    let mut invalid = false;
    for piece in bytes.utf8_chunks() {
        let masked = masker.mask(piece.valid());
        out.extend_from_slice(masked.text().as_bytes());
        if let Some(counts) = counts.as_deref_mut() {
            counts.merge(masked.counts());
        }
        if !piece.invalid().is_empty() {
            invalid = true;
            out.extend_from_slice(piece.invalid());
        }
    }
    invalid
}

/// `spans` each extended `before` bytes to the left, sorted and merged into disjoint ranges.
fn widen(spans: &[Range<usize>], before: usize) -> Vec<Range<usize>> {
    let mut wide: Vec<Range<usize>> = spans.iter().map(|s| s.start.saturating_sub(before)..s.end).collect();
    wide.sort_by_key(|s| s.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(wide.len());
    for s in wide {
        match merged.last_mut() {
            Some(m) if s.start < m.end => m.end = m.end.max(s.end),
            _ => merged.push(s),
        }
    }
    merged
}

/// The span of sorted, disjoint `spans` that holds `i` strictly inside (a cut at `i` would
/// split it).
fn containing(spans: &[Range<usize>], i: usize) -> Option<&Range<usize>> {
    let k = spans.partition_point(|s| s.start < i);
    spans[..k].last().filter(|s| s.end > i)
}

/// The start of the line holding byte `i` (just after the line break before it), or 0.
fn line_start(p: &[u8], i: usize) -> usize {
    p[..i].iter().rposition(|&b| b == b'\n').map_or(0, |k| k + 1)
}

/// The first occurrence of `needle` in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|k| from + k)
}

/// The end of the run of `[A-Z0-9 ]` starting at `i`: the words of a PEM header.
fn header_run(p: &[u8], i: usize) -> usize {
    i + p[i..].iter().take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || **b == b' ').count()
}

/// If `p[at..]` starts with `marker` (`-----BEGIN ` or `-----END `) and a private key's header
/// words (`RSA PRIVATE KEY`), the end of those words.
fn key_header(p: &[u8], at: usize, marker: &[u8]) -> Option<usize> {
    let words = at + marker.len();
    if !p.get(at..)?.starts_with(marker) {
        return None;
    }
    let end = header_run(p, words);
    find(&p[..end], b"PRIVATE KEY", words).map(|_| end)
}

/// The start of the last private key block in `p` that has no END line after it.
fn open_private_key(p: &[u8]) -> Option<usize> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const END: &[u8] = b"-----END ";
    let mut last = None;
    let mut from = 0;
    while let Some(k) = find(p, BEGIN, from) {
        if key_header(p, k, BEGIN).is_some() {
            last = Some(k);
        }
        from = k + 1;
    }
    let begin = last?;
    let mut from = begin;
    while let Some(k) = find(p, END, from) {
        if key_header(p, k, END).is_some() {
            return None;
        }
        from = k + 1;
    }
    Some(begin)
}

/// Whether `segment` ends inside the key material of an open private key block (after its
/// complete header), so what follows it is more of the key.
fn key_open_to_end(segment: &[u8]) -> bool {
    let Some(begin) = open_private_key(segment) else {
        return false;
    };
    let words = header_run(segment, begin + b"-----BEGIN ".len());
    let Some(body) = segment[words..].strip_prefix(b"-----") else {
        return false;
    };
    key_material_len(body) == body.len()
}

/// The length of the run at the start of `p` that can be a private key's body: base64, headers
/// such as `Proc-Type: 4,ENCRYPTED` without their dashes, whitespace and `\n`-style escapes.
fn key_material_len(p: &[u8]) -> usize {
    p.iter().take_while(|&&b| b.is_ascii_alphanumeric() || b.is_ascii_whitespace() || b"+/=:,\\".contains(&b)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_key_blocks() {
        let block = b"x\n-----BEGIN RSA PRIVATE KEY-----\nMIIE\nAAAA\n";
        assert_eq!(open_private_key(block), Some(2));
        assert!(key_open_to_end(block));
        let closed = b"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(open_private_key(closed), None);
        assert_eq!(open_private_key(b"-----BEGIN CERTIFICATE-----\nMIIE\n"), None);
        assert!(!key_open_to_end(b"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n\"}"));
    }

    #[test]
    fn debug_shows_no_content() {
        let mut stream = TextMasker::new(Arc::new(Masker::builtin().unwrap())).stream();
        stream.push(b"jane@exam", &mut Vec::new());
        assert!(!format!("{stream:?}").contains("jane"), "{stream:?}");
    }

    #[test]
    fn window_is_at_least_the_minimum() {
        let m = Arc::new(Masker::builtin().unwrap());
        assert_eq!(TextMasker::new(m.clone()).with_window(10).window, TextMasker::MIN_WINDOW);
        assert_eq!(TextMasker::new(m).window, TextMasker::DEFAULT_WINDOW);
    }
}
