//! Payment card numbers: 13–19 digits, written plain (`4242424242424242`) or in groups joined by
//! single spaces or dashes (`4242 4242 4242 4242`, `3782-822463-10005`), that pass the Luhn check
//! and fall in a known issuer range with that issuer's length ([`crate::checks::card_brand`]).
//!
//! A run of digit groups is split into windows of whole groups: a window is one group of 13–19
//! digits, or several groups with one separator throughout, a first group of four digits and
//! further groups of three to six digits. The longest valid window from the earliest group wins.
//! A value glued to a letter, or part of a decimal number (`0.4242…`, `…4242.00`), is not
//! detected; comma-separated values (`4242424242424242,5555555555554444`) are.

use crate::checks::{CARD_MAX_DIGITS, CARD_MIN_DIGITS, card_valid};
use crate::scan::{Cand, Form, left_ok, right_ok};

/// A `.` glued to a digit run makes it part of a decimal number (`0.4242424242424242`). A `,` does
/// not: comma-separated values are more common than 16-digit amounts.
const DECIMAL: &[u8] = b".";

#[derive(Debug, Clone, Copy)]
struct Group {
    start: usize,
    end: usize,
    /// The separator before this group (`None` for the first group of a run).
    sep: Option<u8>,
}

impl Group {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

pub(crate) fn find(text: &str, out: &mut Vec<Cand>) {
    let b = text.as_bytes();
    let mut groups: Vec<Group> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        groups.clear();
        let mut sep = None;
        loop {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            groups.push(Group { start, end: i, sep });
            match (b.get(i), b.get(i + 1)) {
                (Some(&s @ (b' ' | b'-')), Some(d)) if d.is_ascii_digit() => {
                    sep = Some(s);
                    i += 1;
                }
                _ => break,
            }
        }
        windows(text, &groups, out);
    }
}

/// Finds card numbers among one run of digit groups.
fn windows(text: &str, groups: &[Group], out: &mut Vec<Cand>) {
    let (Some(first), Some(last)) = (groups.first(), groups.last()) else {
        return;
    };
    let total: usize = groups.iter().map(Group::len).sum();
    if total < CARD_MIN_DIGITS {
        return;
    }
    let left_tainted = !left_ok(text, first.start, DECIMAL);
    let right_tainted = !right_ok(text, last.end, DECIMAL);
    let mut s = if left_tainted { 1 } else { 0 };
    while s < groups.len() {
        let mut best = None;
        let mut digits = 0;
        for e in s..groups.len() {
            digits += groups[e].len();
            if digits > CARD_MAX_DIGITS || (e + 1 == groups.len() && right_tainted) {
                break;
            }
            if digits >= CARD_MIN_DIGITS && shape_ok(groups, s, e) && number_ok(text, &groups[s..=e]) {
                best = Some(e);
            }
        }
        match best {
            Some(e) => {
                out.push(Cand::new(groups[s].start, groups[e].end, Form::Card));
                s = e + 1;
            }
            None => s += 1,
        }
    }
}

/// Whether groups `s..=e` are laid out like a card number.
fn shape_ok(groups: &[Group], s: usize, e: usize) -> bool {
    if s == e {
        return true; // one plain group; its length was checked by the caller
    }
    let sep = groups[s + 1].sep;
    let inner = &groups[s + 1..=e];
    groups[s].len() == 4
        && inner.iter().all(|g| g.sep == sep && (3..=6).contains(&g.len()))
        // A group joined by another separator belongs to another value (`4242 … 4242 123-45-6789`).
        && groups[s].sep.is_none_or(|before| Some(before) == sep)
        && groups.get(e + 1).is_none_or(|after| after.sep == sep)
}

/// Whether the digits of `groups` are a valid card number.
fn number_ok(text: &str, groups: &[Group]) -> bool {
    let mut digits = [0u8; CARD_MAX_DIGITS];
    let mut n = 0;
    for g in groups {
        for &d in &text.as_bytes()[g.start..g.end] {
            if n == digits.len() {
                return false;
            }
            digits[n] = d;
            n += 1;
        }
    }
    std::str::from_utf8(&digits[..n]).is_ok_and(card_valid)
}
