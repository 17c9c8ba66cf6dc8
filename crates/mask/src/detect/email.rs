//! Email addresses: a practical subset of RFC 5322/6531 — a dot-atom local part of letters,
//! digits (any script) and `_%+-`, and a domain of at least two labels ending in an alphabetic
//! (or `xn--`) top-level domain. Quoted local parts, IP-literal domains and single-label domains
//! (`root@localhost`) are not detected.
//!
//! [`PATTERN`] defines what matches. An ASCII text, by far the most common, is searched without
//! the regex, by [`ascii_matches`], which finds exactly the regex's matches (a property test
//! compares the two); other text goes through the regex.

use regex::Regex;

use super::Lazy;
use crate::scan::{Cand, Form, is_word, next_char};

pub(crate) static PATTERN: Lazy<Regex> = Lazy::new(|| {
    super::regex(
        r"[\p{L}\p{N}_%+-]+(?:\.[\p{L}\p{N}_%+-]+)*@(?:[\p{L}\p{N}](?:[\p{L}\p{N}-]*[\p{L}\p{N}])?\.)+(?:xn--[A-Za-z0-9-]+|\p{L}{2,})",
    )
});

pub(crate) fn find(re: &Regex, text: &str, out: &mut Vec<Cand>) {
    let mut found = |start: usize, end: usize| {
        // The domain must end the token: not `a@b.com1`, `a@b.com-x` or `a@b.com@c`.
        let glued = next_char(text, end).is_some_and(|c| is_word(c) || c == '-' || c == '@');
        let local_len = text[start..end].find('@').unwrap_or(0);
        if !glued && local_len <= 64 {
            out.push(Cand::new(start, end, Form::Email));
        }
    };
    if text.is_ascii() {
        ascii_matches(text.as_bytes(), found);
    } else {
        for m in re.find_iter(text) {
            found(m.start(), m.end());
        }
    }
}

/// A character of the local part's atoms (in ASCII).
fn is_atom(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'%' | b'+' | b'-')
}

/// A character of a domain label (in ASCII).
fn is_label(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// The length of the run of `text[from..]` whose bytes satisfy `f`.
fn run(text: &[u8], from: usize, f: impl Fn(u8) -> bool) -> usize {
    text.get(from..).map_or(0, |rest| rest.iter().position(|&b| !f(b)).unwrap_or(rest.len()))
}

/// Calls `found(start, end)` for every match of [`PATTERN`] in the ASCII `text`, in order, as
/// the regex's `find_iter` reports them (leftmost-first, not overlapping).
pub(crate) fn ascii_matches(text: &[u8], mut found: impl FnMut(usize, usize)) {
    // Matches never overlap: the next one starts at or after `from`, where the last one ended.
    let mut from = 0;
    let mut at = 0;
    while let Some(offset) = text.get(at..).and_then(|rest| rest.iter().position(|&b| b == b'@')) {
        let p = at + offset;
        match (local_start(text, from, p), domain_end(text, p + 1)) {
            (Some(start), Some(end)) => {
                found(start, end);
                (from, at) = (end, end);
            }
            _ => at = p + 1,
        }
    }
}

/// Where the leftmost local part ending at the `@` at `p` starts, not before `from`: atoms
/// separated by single dots, `[atom](\.[atom])*`.
fn local_start(text: &[u8], from: usize, p: usize) -> Option<usize> {
    if p <= from || !is_atom(text[p - 1]) {
        return None;
    }
    // Back over atom characters and dots; a start must come after the last `..`.
    let mut lowest = p - 1;
    let mut i = p - 1;
    while i > from {
        let b = text[i - 1];
        if b == b'.' && text[i] == b'.' {
            break;
        }
        if !is_atom(b) && b != b'.' {
            break;
        }
        i -= 1;
        if is_atom(b) {
            lowest = i;
        }
    }
    Some(lowest)
}

/// Where the domain starting at `d` ends: one or more labels, each followed by a dot, then a
/// top-level domain. As the regex does, takes as many labels as there are (greedy), giving
/// them back one at a time until a top-level domain follows; the `xn--` form is tried first.
fn domain_end(text: &[u8], d: usize) -> Option<usize> {
    // Past as many labels as there are, each followed by its dot.
    let mut i = d;
    loop {
        let n = run(text, i, is_label);
        let ok = n > 0
            && text[i].is_ascii_alphanumeric()
            && text[i + n - 1].is_ascii_alphanumeric()
            && text.get(i + n) == Some(&b'.');
        if !ok {
            break;
        }
        i += n + 1;
    }
    // A top-level domain may start after each of those dots, the last one first.
    let mut end = i;
    while end > d {
        if let Some(found) = top_level_end(text, end) {
            return Some(found);
        }
        // Back to just after the dot before: the dot ending the label before this one.
        end = text[d..end - 1].iter().rposition(|&b| b == b'.').map_or(d, |k| d + k + 1);
    }
    None
}

/// Where a top-level domain starting at `t` ends: `xn--` and at least one label character, or
/// at least two letters; each as long as it goes.
fn top_level_end(text: &[u8], t: usize) -> Option<usize> {
    if text.get(t..t + 4) == Some(b"xn--") {
        let n = run(text, t + 4, is_label);
        if n > 0 {
            return Some(t + 4 + n);
        }
    }
    let n = run(text, t, |b| b.is_ascii_alphabetic());
    (n >= 2).then_some(t + n)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn regex_matches(text: &str) -> Vec<(usize, usize)> {
        let re = crate::detect::compiled(&PATTERN, "email").unwrap();
        re.find_iter(text).map(|m| (m.start(), m.end())).collect()
    }

    fn ascii(text: &str) -> Vec<(usize, usize)> {
        let mut all = Vec::new();
        ascii_matches(text.as_bytes(), |s, e| all.push((s, e)));
        all
    }

    #[test]
    fn ascii_matches_agree_with_the_regex_on_examples() {
        for text in [
            "user0@example.com",
            "write to a.b-c+d@mail.example.org, or to x@y.co",
            "a..b@example.com .a@example.com a.@example.com",
            "a@b.com.x@c.org",
            "a@b.c a@b.com1 a@b.xn--p1ai a@b.xn-- a@xn--b.com a@-b.com a@b-.com",
            "@example.com a@ a@b @@ a@@b.com a@b.com@c.org",
            "x@sub.domain.example.museum. and 1@2.3.io",
            "",
        ] {
            assert_eq!(ascii(text), regex_matches(text), "{text:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// On any ASCII text built from the characters that matter, the hand-written search
        /// finds exactly what the regex finds.
        #[test]
        fn ascii_matches_agree_with_the_regex(pieces in prop::collection::vec(
            prop::sample::select(vec![
                "a", "b", "Z", "x", "n", "0", "9", "-", "--", ".", "..", "@", "_", "%", "+", " ", "*", ",",
                "xn--", "com", "example", "user1",
            ]),
            0..24,
        )) {
            let text = pieces.concat();
            prop_assert_eq!(ascii(&text), regex_matches(&text), "{:?}", text);
        }
    }
}
