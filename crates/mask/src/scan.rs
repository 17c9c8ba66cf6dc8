//! What detectors share: candidate spans, how each is masked, word and number boundaries, and the
//! one-pass statistics that let a detector skip a text it cannot match.

/// How a found value is rewritten; see `forms.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    Email,
    Card,
    Iban,
    Ssn,
    Phone,
    Ipv4,
    Ipv6,
    /// Every character becomes `*` (custom detectors).
    Stars,
    /// The value becomes `***` (values of `password=` pairs, URL passwords, bearer tokens).
    Hidden,
    /// The first `n` bytes (an ASCII prefix) stay, every other character becomes `*`.
    KeepPrefix(usize),
    Jwt,
    Pem,
}

/// A value a detector found: a byte range of the text (on character boundaries), how to mask
/// it, and a tie-breaker among candidates of one detector (lower wins).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cand {
    pub start: usize,
    pub end: usize,
    pub form: Form,
    pub sub: u8,
    /// Index of the masker slot (detector) that found it; set by the masker.
    pub slot: usize,
}

impl Cand {
    pub fn new(start: usize, end: usize, form: Form) -> Cand {
        Cand { start, end, form, sub: 0, slot: 0 }
    }

    pub fn with_sub(mut self, sub: u8) -> Cand {
        self.sub = sub;
        self
    }
}

/// A letter, digit (any script) or `_`: characters that glue into one token.
pub(crate) fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

pub(crate) fn prev_char(text: &str, i: usize) -> Option<char> {
    text.get(..i).and_then(|s| s.chars().next_back())
}

pub(crate) fn next_char(text: &str, i: usize) -> Option<char> {
    text.get(i..).and_then(|s| s.chars().next())
}

/// An ASCII digit, or `*`: a digit that was masked. Counting `*` keeps detection the same on
/// masked text (`…***/001-01-0001` is refused like `…000/001-01-0001` was), so masking twice
/// changes nothing.
fn digitish(b: &u8) -> bool {
    b.is_ascii_digit() || *b == b'*'
}

/// Whether a value may start at byte `start`: the character before it is not a word character,
/// and not one of `joiners` with a digit before it (so `3.4242…` or `1-555-…` do not start a
/// value in the middle of a number).
pub(crate) fn left_ok(text: &str, start: usize, joiners: &[u8]) -> bool {
    match prev_char(text, start) {
        None => true,
        Some(c) if is_word(c) => false,
        Some(c) if c.is_ascii() && joiners.contains(&(c as u8)) => {
            !start.checked_sub(2).and_then(|k| text.as_bytes().get(k)).is_some_and(digitish)
        }
        Some(_) => true,
    }
}

/// Whether a value may end at byte `end`: the character after it is not a word character, and
/// not one of `joiners` followed by a digit.
pub(crate) fn right_ok(text: &str, end: usize, joiners: &[u8]) -> bool {
    match next_char(text, end) {
        None => true,
        Some(c) if is_word(c) => false,
        Some(c) if c.is_ascii() && joiners.contains(&(c as u8)) => !text.as_bytes().get(end + 1).is_some_and(digitish),
        Some(_) => true,
    }
}

/// Counts gathered in one pass over the bytes, so detectors can skip texts they cannot match.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stats {
    pub len: usize,
    pub digits: usize,
    pub letters: usize,
    pub at: bool,
    pub dots: usize,
    pub colons: usize,
}

/// The class of each byte for [`Stats::of`]: an index into its counters.
const CLASS: [u8; 256] = {
    let mut table = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            b'0'..=b'9' => DIGIT,
            b'a'..=b'z' | b'A'..=b'Z' => LETTER,
            b'@' => AT,
            b'.' => DOT,
            b':' => COLON,
            _ => OTHER,
        };
        b += 1;
    }
    table
};
const OTHER: u8 = 0;
const DIGIT: u8 = 1;
const LETTER: u8 = 2;
const AT: u8 = 3;
const DOT: u8 = 4;
const COLON: u8 = 5;

impl Stats {
    pub fn of(text: &str) -> Stats {
        // Counted through a table, without a branch per byte.
        let mut n = [0usize; 6];
        for &b in text.as_bytes() {
            n[usize::from(CLASS[usize::from(b)])] += 1;
        }
        Stats {
            len: text.len(),
            digits: n[usize::from(DIGIT)],
            letters: n[usize::from(LETTER)],
            at: n[usize::from(AT)] > 0,
            dots: n[usize::from(DOT)],
            colons: n[usize::from(COLON)],
        }
    }
}
