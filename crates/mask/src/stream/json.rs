//! Streamed masking of JSON documents: a byte-at-a-time tokenizer that keeps only the current
//! string (or number) token and the path to it, masks string values with a [`Masker`] and
//! replaces values named by [`JsonPath`] rules whole, skipping their tokens as they come.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::path::{JsonPath, Step, write_path};
use crate::{Counts, MaskError, Masker, WHOLE_MASK};

/// What was masked in one JSON document: per location — the path with `[*]` for array elements,
/// such as `$.items[*].card` — the values masked per detector, with [`MaskTally::RULE`] (`rule`)
/// counting values masked whole by a rule. Never holds the values. Serialises as a JSON object
/// `{"$.items[*].card": {"credit_card": 2}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct MaskTally(BTreeMap<String, Counts>);

impl MaskTally {
    /// The detector name counting values masked whole by a [`JsonPath`] rule.
    pub const RULE: &'static str = "rule";

    /// Nothing masked.
    pub fn new() -> MaskTally {
        MaskTally(BTreeMap::new())
    }

    /// Whether nothing was masked.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Values masked at all locations, by all detectors and rules together.
    pub fn total(&self) -> u64 {
        self.0.values().fold(0, |acc, c| acc.saturating_add(c.total()))
    }

    /// The counts at one location (`$.items[*].card`), if anything was masked there.
    pub fn get(&self, path: &str) -> Option<&Counts> {
        self.0.get(path)
    }

    /// Adds `n` values masked by `detector` at `path`. Adding 0 records nothing.
    pub fn add(&mut self, path: &str, detector: &str, n: u64) {
        if n == 0 {
            return;
        }
        // Looked up first: a location is usually added to many times, its key allocated once.
        match self.0.get_mut(path) {
            Some(counts) => counts.add(detector, n),
            None => {
                let mut counts = Counts::new();
                counts.add(detector, n);
                self.0.insert(path.to_owned(), counts);
            }
        }
    }

    /// Adds every count of `counts` at `path`.
    pub fn add_counts(&mut self, path: &str, counts: &Counts) {
        if counts.is_empty() {
            return;
        }
        match self.0.get_mut(path) {
            Some(have) => have.merge(counts),
            None => {
                self.0.insert(path.to_owned(), counts.clone());
            }
        }
    }

    /// Adds every count of `other` to this one.
    pub fn merge(&mut self, other: &MaskTally) {
        for (path, counts) in &other.0 {
            self.add_counts(path, counts);
        }
    }

    /// The counts of all locations together, per detector.
    pub fn by_detector(&self) -> Counts {
        let mut all = Counts::new();
        for counts in self.0.values() {
            all.merge(counts);
        }
        all
    }

    /// The locations in order, each with its counts.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Counts)> + '_ {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The underlying map, location → counts.
    pub fn as_map(&self) -> &BTreeMap<String, Counts> {
        &self.0
    }
}

impl From<MaskTally> for BTreeMap<String, Counts> {
    fn from(value: MaskTally) -> Self {
        value.0
    }
}

/// Masks JSON documents as they stream: every string value through a [`Masker`], and values
/// named by [`JsonPath`] rules whole. Built once per configuration and shared (it is cheap to
/// clone); [`JsonMasker::stream`] starts one document. See the [module](crate::stream) for what
/// is masked and the limits.
#[derive(Debug, Clone)]
pub struct JsonMasker {
    masker: Option<Arc<Masker>>,
    rules: Arc<[JsonPath]>,
    max_string: usize,
    max_depth: usize,
    numbers: bool,
}

impl JsonMasker {
    /// Default limit on one string (or number) token, in bytes as written (escapes not
    /// decoded): 1 MiB.
    pub const DEFAULT_MAX_STRING: usize = 1 << 20;

    /// Default limit on nesting: objects and arrays inside each other, 256 deep.
    pub const DEFAULT_MAX_DEPTH: usize = 256;

    /// A JSON masker passing string values through `masker` (if any) and masking values at
    /// `rules` whole, with the default limits ([`JsonMasker::DEFAULT_MAX_STRING`],
    /// [`JsonMasker::DEFAULT_MAX_DEPTH`]).
    pub fn new(masker: Option<Arc<Masker>>, rules: Vec<JsonPath>) -> JsonMasker {
        JsonMasker {
            masker,
            rules: rules.into(),
            max_string: JsonMasker::DEFAULT_MAX_STRING,
            max_depth: JsonMasker::DEFAULT_MAX_DEPTH,
            numbers: true,
        }
    }

    /// Limits one string token (or number) to `bytes` bytes as written between its quotes,
    /// escapes not decoded. A longer one is an error ([`MaskError::JsonLimit`]), so a document
    /// never makes the stream hold more. Strings inside a value masked whole by a rule are not
    /// held and not limited.
    pub fn with_max_string(mut self, bytes: usize) -> JsonMasker {
        self.max_string = bytes;
        self
    }

    /// Limits nesting to `depth` objects and arrays inside each other; deeper is an error
    /// ([`MaskError::JsonLimit`]).
    pub fn with_max_depth(mut self, depth: usize) -> JsonMasker {
        self.max_depth = depth;
        self
    }

    /// Whether number values are passed through the masker too (the default): a card number
    /// written as a JSON number, `4242424242424242`, is then replaced by the string
    /// `"************4242"`. Numbers nothing detects stay numbers, byte for byte.
    pub fn with_numbers(mut self, mask: bool) -> JsonMasker {
        self.numbers = mask;
        self
    }

    /// The rules, as given.
    pub fn rules(&self) -> &[JsonPath] {
        &self.rules
    }

    /// The masker string values go through, if any.
    pub fn masker(&self) -> Option<&Arc<Masker>> {
        self.masker.as_ref()
    }

    /// Starts masking one document. The stream owns what it needs (`'static`, `Send`).
    pub fn stream(&self) -> JsonStream {
        let masker = self.masker.clone().filter(|m| !m.is_empty());
        JsonStream {
            numbers: self.numbers && masker.is_some(),
            masker,
            rules: self.rules.clone(),
            max_string: self.max_string,
            max_depth: self.max_depth,
            state: State::Value,
            open: Vec::new(),
            steps: Vec::new(),
            skip: None,
            token: Vec::new(),
            scratch: String::new(),
            at: String::new(),
            lex: StrLex::default(),
            offset: 0,
            tally: MaskTally::new(),
            failed: None,
        }
    }

    /// Masks a whole document at once: what one [`JsonStream`] makes of it in one chunk.
    pub fn mask(&self, document: &[u8]) -> Result<(Vec<u8>, MaskTally), MaskError> {
        let mut out = Vec::with_capacity(document.len() + 16);
        let mut stream = self.stream();
        stream.push(document, &mut out)?;
        let tally = stream.finish(&mut out)?;
        Ok((out, tally))
    }
}

/// One JSON document being masked: feed it with [`JsonStream::push`] in chunks split anywhere,
/// then call [`JsonStream::finish`]. After an error every further call returns that error; the
/// caller must then drop the document (what was already written to `out` is masked, but the
/// rest is not coming). Its `Debug` output shows no content of the document.
pub struct JsonStream {
    masker: Option<Arc<Masker>>,
    rules: Arc<[JsonPath]>,
    max_string: usize,
    max_depth: usize,
    /// Whether numbers are held and masked (the option is on and there is a masker).
    numbers: bool,
    state: State,
    /// Open containers, innermost last.
    open: Vec<Kind>,
    /// The path: `steps[..open.len()]` leads to the current value; entries beyond are kept so
    /// their key strings are reused.
    steps: Vec<Step>,
    /// Set while a value masked whole is skipped: the depth it started at.
    skip: Option<usize>,
    /// The current string's bytes as written (without quotes), or the current number.
    token: Vec<u8>,
    /// The current string decoded, when it has escapes.
    scratch: String,
    /// Where a value was masked, written out for the tally (kept to reuse its buffer).
    at: String,
    lex: StrLex,
    /// Bytes consumed by earlier calls to `push`.
    offset: u64,
    tally: MaskTally,
    failed: Option<MaskError>,
}

impl fmt::Debug for JsonStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the token: it holds a value not yet masked.
        f.debug_struct("JsonStream")
            .field("masker", &self.masker)
            .field("rules", &self.rules.len())
            .field("state", &self.state)
            .field("depth", &self.open.len())
            .field("skipping", &self.skip.is_some())
            .field("held", &self.token.len())
            .field("offset", &self.offset)
            .field("tally", &self.tally)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// A container being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Object,
    Array,
}

/// What the tokenizer expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A value: at the start, after `:`, after `,` in an array.
    Value,
    /// After `[`: a value or `]`.
    FirstElement,
    /// After `{`: a member name or `}`.
    FirstKey,
    /// After `,` in an object: a member name.
    Key,
    /// After a member name: `:`.
    Colon,
    /// After a value: `,` or the end of its container; at the top level, only whitespace.
    After,
    /// Inside a string, past its opening quote: a member name or a value.
    Str { key: bool },
    /// Inside a number.
    Num(Num),
    /// Inside `true`, `false` or `null`, `seen` bytes of it read.
    Lit { word: &'static [u8], seen: usize },
}

/// Where a number is in its grammar, `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Num {
    /// The state after `b`, or `None` when `b` is not part of the number.
    fn next(self, b: u8) -> Option<Num> {
        let digit = b.is_ascii_digit();
        Some(match (self, b) {
            (Num::Minus, b'0') => Num::Zero,
            (Num::Minus, _) if digit => Num::Int,
            (Num::Int, _) if digit => Num::Int,
            (Num::Zero | Num::Int, b'.') => Num::Dot,
            (Num::Dot | Num::Frac, _) if digit => Num::Frac,
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::Exp,
            (Num::Exp, b'+' | b'-') => Num::ExpSign,
            (Num::Exp | Num::ExpSign | Num::ExpDigits, _) if digit => Num::ExpDigits,
            _ => return None,
        })
    }

    /// Whether the number may end here.
    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }
}

/// The lexer's place inside a string.
#[derive(Debug, Clone, Copy, Default)]
struct StrLex {
    esc: Esc,
    /// UTF-8 continuation bytes still expected, and the range the next one must be in.
    need: u8,
    lo: u8,
    hi: u8,
    /// A high surrogate escape (`\uD800`–`\uDBFF`) was read: a low one must follow at once.
    need_low: bool,
    /// Whether the string has any escape.
    escaped: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Esc {
    #[default]
    None,
    /// After `\`.
    Backslash,
    /// Inside `\uXXXX`, `n` hex digits read.
    Hex { n: u8, value: u16 },
}

/// Why a document was refused, before the offset is known.
enum Fault {
    Invalid(&'static str),
    Limit(String),
}

const BAD_UTF8: Fault = Fault::Invalid("invalid UTF-8 in a string");
const UNPAIRED: Fault = Fault::Invalid("an unpaired UTF-16 surrogate in a \\u escape");
const BAD_ESCAPE: Fault = Fault::Invalid("an invalid escape in a string");

impl Fault {
    fn at(self, offset: u64) -> MaskError {
        match self {
            Fault::Invalid(reason) => MaskError::InvalidJson { offset, reason: reason.to_owned() },
            Fault::Limit(reason) => MaskError::JsonLimit { offset, reason },
        }
    }
}

/// The path to the value about to start (or being read): the steps of the `depth` open
/// containers. (A free function, so the tally's buffer can be borrowed beside it.)
fn open_path(steps: &[Step], depth: usize) -> &[Step] {
    steps.get(..depth).unwrap_or(&[])
}

/// Counts a value's masked parts at its location, whose path is written out only once
/// something there is masked.
struct Located<'s> {
    at: &'s mut String,
    tally: &'s mut MaskTally,
    path: &'s [Step],
    written: bool,
}

impl<'s> Located<'s> {
    fn new(at: &'s mut String, tally: &'s mut MaskTally, path: &'s [Step]) -> Located<'s> {
        Located { at, tally, path, written: false }
    }

    fn add(&mut self, detector: &str) {
        if !self.written {
            write_path(self.at, self.path);
            self.written = true;
        }
        self.tally.add(self.at, detector, 1);
    }
}

/// A string byte that changes nothing in the lexer's state: printable ASCII but `"` and `\\`.
fn is_plain(b: u8) -> bool {
    (0x20..0x80).contains(&b) && b != b'"' && b != b'\\'
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl JsonStream {
    /// Consumes the next `chunk` of the document and appends the masked output so far to `out`.
    /// A string (or number) split by the chunk is held until it ends; everything else is written
    /// at once. Invalid JSON or a document over a limit is an error, naming the byte offset.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), MaskError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut i = 0;
        let result = self.run(chunk, &mut i, out);
        self.offset = self.offset.saturating_add(i as u64);
        result.map_err(|fault| {
            let e = fault.at(self.offset);
            self.failed = Some(e.clone());
            e
        })
    }

    /// Checks that the document is complete — one value, nothing but whitespace after it — and
    /// returns what was masked. A number ending the document is written now.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<MaskTally, MaskError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if let State::Num(num) = self.state
            && num.complete()
        {
            self.end_number(out);
        }
        if self.state == State::After && self.open.is_empty() {
            return Ok(self.tally);
        }
        let reason = if self.state == State::Value && self.open.is_empty() {
            "the document holds no JSON value"
        } else {
            "the document ends before its value is complete"
        };
        Err(MaskError::InvalidJson { offset: self.offset, reason: reason.to_owned() })
    }

    /// What was masked so far.
    pub fn tally(&self) -> &MaskTally {
        &self.tally
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn run(&mut self, chunk: &[u8], i: &mut usize, out: &mut Vec<u8>) -> Result<(), Fault> {
        while *i < chunk.len() {
            match self.state {
                State::Str { key } => self.string(chunk, i, key, out)?,
                State::Num(num) => {
                    let b = chunk[*i];
                    match num.next(b) {
                        Some(next) => {
                            self.number_byte(b, out)?;
                            self.state = State::Num(next);
                            *i += 1;
                        }
                        // The byte after the number is read again in the next state.
                        None if num.complete() => self.end_number(out),
                        None => return Err(Fault::Invalid("an invalid number")),
                    }
                }
                _ => {
                    self.byte(chunk[*i], out)?;
                    *i += 1;
                }
            }
        }
        Ok(())
    }

    /// One byte outside strings and numbers.
    fn byte(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), Fault> {
        match self.state {
            State::Value | State::FirstElement => {
                if is_ws(b) {
                    self.emit(out, b);
                } else if b == b']' && self.state == State::FirstElement {
                    self.close(b, out);
                } else {
                    self.start_value(b, out)?;
                }
            }
            State::FirstKey | State::Key => {
                if is_ws(b) {
                    self.emit(out, b);
                } else if b == b'"' {
                    self.begin_string(true);
                } else if b == b'}' && self.state == State::FirstKey {
                    self.close(b, out);
                } else {
                    return Err(Fault::Invalid("expected a member name (a string)"));
                }
            }
            State::Colon => {
                if is_ws(b) {
                    self.emit(out, b);
                } else if b == b':' {
                    self.emit(out, b);
                    self.state = State::Value;
                } else {
                    return Err(Fault::Invalid("expected `:` after a member name"));
                }
            }
            State::After => {
                if is_ws(b) {
                    self.emit(out, b);
                    return Ok(());
                }
                match (self.open.last(), b) {
                    (None, _) => return Err(Fault::Invalid("unexpected characters after the JSON value")),
                    (Some(Kind::Array), b',') => {
                        self.emit(out, b);
                        self.state = State::Value;
                    }
                    (Some(Kind::Object), b',') => {
                        self.emit(out, b);
                        self.state = State::Key;
                    }
                    (Some(Kind::Array), b']') | (Some(Kind::Object), b'}') => self.close(b, out),
                    (Some(Kind::Array), _) => return Err(Fault::Invalid("expected `,` or `]` after an array element")),
                    (Some(Kind::Object), _) => return Err(Fault::Invalid("expected `,` or `}` after a member value")),
                }
            }
            State::Lit { word, seen } => {
                if word.get(seen) != Some(&b) {
                    return Err(Fault::Invalid("an invalid literal (expected `true`, `false` or `null`)"));
                }
                self.emit(out, b);
                if seen + 1 == word.len() {
                    self.end_value();
                } else {
                    self.state = State::Lit { word, seen: seen + 1 };
                }
            }
            State::Str { .. } | State::Num(_) => return Err(Fault::Invalid("internal tokenizer error")),
        }
        Ok(())
    }

    /// Writes `b` unless a value masked whole is being skipped.
    fn emit(&self, out: &mut Vec<u8>, b: u8) {
        if self.skip.is_none() {
            out.push(b);
        }
    }

    /// The first byte of a value: checks the rules, then starts the token.
    fn start_value(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), Fault> {
        if self.skip.is_none() && !self.rules.is_empty() {
            let path = open_path(&self.steps, self.open.len());
            if self.rules.iter().any(|r| r.matches(path)) {
                write_json_string(out, WHOLE_MASK);
                write_path(&mut self.at, path);
                self.tally.add(&self.at, MaskTally::RULE, 1);
                self.skip = Some(self.open.len());
            }
        }
        match b {
            b'{' => self.open_container(Kind::Object, b, out)?,
            b'[' => self.open_container(Kind::Array, b, out)?,
            b'"' => self.begin_string(false),
            b'-' => self.begin_number(Num::Minus, b, out)?,
            b'0' => self.begin_number(Num::Zero, b, out)?,
            b'1'..=b'9' => self.begin_number(Num::Int, b, out)?,
            b't' => self.begin_literal(b"true", b, out),
            b'f' => self.begin_literal(b"false", b, out),
            b'n' => self.begin_literal(b"null", b, out),
            _ => return Err(Fault::Invalid("expected a value")),
        }
        Ok(())
    }

    fn open_container(&mut self, kind: Kind, b: u8, out: &mut Vec<u8>) -> Result<(), Fault> {
        let depth = self.open.len();
        if depth >= self.max_depth {
            return Err(Fault::Limit(format!("objects and arrays nested deeper than {} levels", self.max_depth)));
        }
        self.emit(out, b);
        self.open.push(kind);
        match (self.steps.get_mut(depth), kind) {
            (Some(Step::Key(name)), Kind::Object) => name.clear(),
            (Some(slot), Kind::Object) => *slot = Step::Key(String::new()),
            (Some(slot), Kind::Array) => *slot = Step::Index,
            (None, Kind::Object) => self.steps.push(Step::Key(String::new())),
            (None, Kind::Array) => self.steps.push(Step::Index),
        }
        self.state = match kind {
            Kind::Object => State::FirstKey,
            Kind::Array => State::FirstElement,
        };
        Ok(())
    }

    /// The end of an object or array.
    fn close(&mut self, b: u8, out: &mut Vec<u8>) {
        self.emit(out, b);
        self.open.pop();
        self.end_value();
    }

    /// A value is complete: a skipped value that started at this depth ends with it.
    fn end_value(&mut self) {
        if self.skip == Some(self.open.len()) {
            self.skip = None;
        }
        self.state = State::After;
    }

    fn begin_literal(&mut self, word: &'static [u8], b: u8, out: &mut Vec<u8>) {
        self.emit(out, b);
        self.state = State::Lit { word, seen: 1 };
    }

    fn begin_number(&mut self, num: Num, b: u8, out: &mut Vec<u8>) -> Result<(), Fault> {
        self.token.clear();
        self.state = State::Num(num);
        self.number_byte(b, out)
    }

    /// One byte of a number: held when numbers are masked, written at once otherwise.
    fn number_byte(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), Fault> {
        if self.skip.is_some() {
            return Ok(());
        }
        if !self.numbers {
            out.push(b);
            return Ok(());
        }
        if self.token.len() >= self.max_string {
            return Err(Fault::Limit(format!("a number longer than {} bytes", self.max_string)));
        }
        self.token.push(b);
        Ok(())
    }

    fn end_number(&mut self, out: &mut Vec<u8>) {
        if self.skip.is_none() && self.numbers {
            // A number is ASCII.
            let text = std::str::from_utf8(&self.token).unwrap_or_default();
            match &self.masker {
                Some(masker) => {
                    let mut tally =
                        Located::new(&mut self.at, &mut self.tally, open_path(&self.steps, self.open.len()));
                    match masker.mask_counted(text, |detector| tally.add(detector)) {
                        Cow::Owned(masked) => write_json_string(out, &masked),
                        Cow::Borrowed(_) => out.extend_from_slice(&self.token),
                    }
                }
                None => out.extend_from_slice(&self.token),
            }
        }
        self.end_value();
    }

    fn begin_string(&mut self, key: bool) {
        self.token.clear();
        self.lex = StrLex::default();
        self.state = State::Str { key };
    }

    /// Reads string bytes from `chunk[*i..]`, up to and including the closing quote if it is
    /// there. Holds them unless the string is being skipped.
    fn string(&mut self, chunk: &[u8], i: &mut usize, key: bool, out: &mut Vec<u8>) -> Result<(), Fault> {
        let start = *i;
        let mut closed = false;
        while *i < chunk.len() {
            let lex = &mut self.lex;
            if lex.need == 0 && lex.esc == Esc::None && !lex.need_low {
                // Most of a string is plain ASCII, which needs no state: skip it in one run.
                let plain = chunk[*i..].iter().position(|&b| !is_plain(b)).unwrap_or(chunk.len() - *i);
                *i += plain;
                if *i == chunk.len() {
                    break;
                }
            }
            let b = chunk[*i];
            if lex.need > 0 {
                if b < lex.lo || b > lex.hi {
                    return Err(BAD_UTF8);
                }
                lex.need -= 1;
                (lex.lo, lex.hi) = (0x80, 0xBF);
                *i += 1;
                continue;
            }
            match lex.esc {
                Esc::None => {
                    if lex.need_low && b != b'\\' {
                        return Err(UNPAIRED);
                    }
                    match b {
                        b'"' => {
                            closed = true;
                            break;
                        }
                        b'\\' => {
                            lex.esc = Esc::Backslash;
                            lex.escaped = true;
                        }
                        0..=0x1F => return Err(Fault::Invalid("a control character in a string (it must be escaped)")),
                        0x80..=0xFF => (lex.need, lex.lo, lex.hi) = utf8_lead(b).ok_or(BAD_UTF8)?,
                        _ => {}
                    }
                }
                Esc::Backslash => {
                    if lex.need_low && b != b'u' {
                        return Err(UNPAIRED);
                    }
                    lex.esc = match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Esc::None,
                        b'u' => Esc::Hex { n: 0, value: 0 },
                        _ => return Err(BAD_ESCAPE),
                    };
                }
                Esc::Hex { n, value } => {
                    let digit = hex_digit(b).ok_or(Fault::Invalid("an invalid \\u escape in a string"))?;
                    let value = value << 4 | u16::from(digit);
                    if n < 3 {
                        lex.esc = Esc::Hex { n: n + 1, value };
                    } else {
                        lex.esc = Esc::None;
                        let high = (0xD800..0xDC00).contains(&value);
                        let low = (0xDC00..0xE000).contains(&value);
                        if lex.need_low {
                            if !low {
                                return Err(UNPAIRED);
                            }
                            lex.need_low = false;
                        } else if high {
                            lex.need_low = true;
                        } else if low {
                            return Err(UNPAIRED);
                        }
                    }
                }
            }
            *i += 1;
        }
        if self.skip.is_none() {
            let run = &chunk[start..*i];
            if self.token.len() + run.len() > self.max_string {
                return Err(Fault::Limit(format!("a string longer than {} bytes", self.max_string)));
            }
            self.token.extend_from_slice(run);
        }
        if closed {
            *i += 1; // the closing quote
            self.end_string(key, out)?;
        }
        Ok(())
    }

    /// The closing quote of a string was read.
    fn end_string(&mut self, key: bool, out: &mut Vec<u8>) -> Result<(), Fault> {
        if self.skip.is_some() {
            if key {
                self.state = State::Colon;
            } else {
                self.end_value();
            }
            return Ok(());
        }
        if key {
            let depth = self.open.len();
            // A member name is only read inside an object, whose step exists.
            let Some(Step::Key(name)) = depth.checked_sub(1).and_then(|d| self.steps.get_mut(d)) else {
                return Err(Fault::Invalid("internal tokenizer error"));
            };
            name.clear();
            if self.lex.escaped {
                unescape(&self.token, name)?;
            } else {
                name.push_str(std::str::from_utf8(&self.token).map_err(|_| BAD_UTF8)?);
            }
            write_quoted_raw(out, &self.token);
            self.state = State::Colon;
            return Ok(());
        }
        if let Some(masker) = &self.masker {
            let text = if self.lex.escaped {
                self.scratch.clear();
                unescape(&self.token, &mut self.scratch)?;
                self.scratch.as_str()
            } else {
                std::str::from_utf8(&self.token).map_err(|_| BAD_UTF8)?
            };
            let mut tally = Located::new(&mut self.at, &mut self.tally, open_path(&self.steps, self.open.len()));
            match masker.mask_counted(text, |detector| tally.add(detector)) {
                Cow::Owned(masked) => write_json_string(out, &masked),
                Cow::Borrowed(_) => write_quoted_raw(out, &self.token),
            }
        } else {
            write_quoted_raw(out, &self.token);
        }
        self.end_value();
        Ok(())
    }
}

/// The number of continuation bytes after UTF-8 lead byte `b` and the range the first one must
/// be in (which excludes overlong forms, surrogates and values past U+10FFFF).
fn utf8_lead(b: u8) -> Option<(u8, u8, u8)> {
    Some(match b {
        0xC2..=0xDF => (1, 0x80, 0xBF),
        0xE0 => (2, 0xA0, 0xBF),
        0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
        0xED => (2, 0x80, 0x9F),
        0xF0 => (3, 0x90, 0xBF),
        0xF1..=0xF3 => (3, 0x80, 0xBF),
        0xF4 => (3, 0x80, 0x8F),
        _ => return None,
    })
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The four hex digits of a `\u` escape.
fn hex4(digits: Option<&[u8]>) -> Result<u32, Fault> {
    let digits = digits.ok_or(BAD_ESCAPE)?;
    digits.iter().try_fold(0u32, |acc, &b| hex_digit(b).map(|d| acc << 4 | u32::from(d)).ok_or(BAD_ESCAPE))
}

/// Decodes the escapes of a string as written (without quotes, already checked) into `out`.
fn unescape(raw: &[u8], out: &mut String) -> Result<(), Fault> {
    let mut i = 0;
    while i < raw.len() {
        let next = raw[i..].iter().position(|&b| b == b'\\').map_or(raw.len(), |p| i + p);
        out.push_str(std::str::from_utf8(&raw[i..next]).map_err(|_| BAD_UTF8)?);
        if next == raw.len() {
            break;
        }
        let escape = *raw.get(next + 1).ok_or(BAD_ESCAPE)?;
        i = next + 2;
        let c = match escape {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = hex4(raw.get(i..i + 4))?;
                i += 4;
                if (0xD800..0xDC00).contains(&unit) {
                    if raw.get(i..i + 2) != Some(b"\\u".as_slice()) {
                        return Err(UNPAIRED);
                    }
                    let low = hex4(raw.get(i + 2..i + 6))?;
                    i += 6;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(UNPAIRED);
                    }
                    char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)).ok_or(UNPAIRED)?
                } else {
                    char::from_u32(unit).ok_or(UNPAIRED)?
                }
            }
            _ => return Err(BAD_ESCAPE),
        };
        out.push(c);
    }
    Ok(())
}

/// Writes a string token as it was read: its bytes between quotes.
fn write_quoted_raw(out: &mut Vec<u8>, raw: &[u8]) {
    out.reserve(raw.len() + 2);
    out.push(b'"');
    out.extend_from_slice(raw);
    out.push(b'"');
}

/// Writes `s` as a JSON string: `"` and `\` escaped, control characters as `\n`, `\t`, … or
/// `\u00XX`, everything else as is (UTF-8).
pub(crate) fn write_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xF)]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> JsonMasker {
        JsonMasker::new(None, Vec::new())
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = Vec::new();
        write_json_string(&mut out, "a\"b\\c\nd\u{1}é\u{7f}");
        assert_eq!(String::from_utf8(out.clone()).unwrap(), "\"a\\\"b\\\\c\\nd\\u0001é\u{7f}\"");
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é\u{7f}");
    }

    #[test]
    fn unescapes_like_serde() {
        for raw in [r"plain", r"\u00e9\n\t\/\\\u0022", r"\ud83d\ude00 smile", r"\uD834\uDD1E"] {
            let mut out = String::new();
            unescape(raw.as_bytes(), &mut out).ok().unwrap();
            let expected: String = serde_json::from_str(&format!("\"{raw}\"")).unwrap();
            assert_eq!(out, expected, "{raw}");
        }
    }

    #[test]
    fn validates_without_a_masker() {
        let ok = br#" {"a": [1, -0.5e+3, true, false, null, "x\u00e9"], "b": {}} "#;
        let (out, tally) = plain().mask(ok).unwrap();
        assert_eq!(out, ok);
        assert!(tally.is_empty());
        for bad in [&b"01"[..], b"[1,]", b"{\"a\" 1}", b"-", b"1.", b"1e", b"tru", b"nul", b"\"\\x\"", b"[1 2]"] {
            assert!(plain().mask(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn streams_are_send_and_static() {
        fn check<T: Send + 'static>() {}
        check::<JsonStream>();
        check::<super::super::TextStream>();
    }

    #[test]
    fn debug_shows_no_content() {
        let m = JsonMasker::new(Some(Arc::new(Masker::builtin().unwrap())), Vec::new());
        let mut stream = m.stream();
        stream.push(br#"{"a": "jane@exam"#, &mut Vec::new()).unwrap();
        assert!(!format!("{stream:?}").contains("jane"), "{stream:?}");
    }

    #[test]
    fn numbers_are_literal_when_not_masked() {
        let m = JsonMasker::new(Some(Arc::new(Masker::builtin().unwrap())), Vec::new());
        let doc = br#"[4242424242424242, 12, 3.5]"#;
        let (out, tally) = m.mask(doc).unwrap();
        assert_eq!(out, br#"["************4242", 12, 3.5]"#);
        assert_eq!(tally.get("$[*]").unwrap().get("credit_card"), 1);
        let (out, tally) = m.clone().with_numbers(false).mask(doc).unwrap();
        assert_eq!(out, doc);
        assert!(tally.is_empty());
    }
}
