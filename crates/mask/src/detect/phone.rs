//! Telephone numbers, in three shapes:
//!
//! - international: `+` and a country code (not 0), then digits with optional single
//!   separators (space, `-`, `.`) and parenthesised groups: `+49 30 12345678`,
//!   `+1 (555) 123-4567`, `+44 (0)20 7946 0958`, `+4915112345678`; 8–15 digits (E.164). The
//!   `00` prefix works the same when followed by a separator: `0049 30 12345678`.
//! - North American: `(555) 123-4567`, `555-123-4567`, `555.123.4567`, `555 123 4567`, with an
//!   optional leading `1-`; groups of 3, 3 and 4 digits, one separator throughout (after a
//!   parenthesised area code: a space or nothing).
//! - national with a trunk `0`: `030 12345678`, `06 12 34 56 78`, `(030) 1234567`,
//!   `020-7946-0958`; a first group of 2–5 digits starting with one `0`, further groups of
//!   2–8 digits, one separator throughout, 9–12 digits in all.
//!
//! A number is not taken out of the middle of a longer run of space-separated digit groups
//! (`3704 0532 043 0532 0432 045678` holds no phone number), so masking is stable.
//!
//! Not detected: national numbers without any separator (`03012345678`), numbers mixing
//! separators outside the shapes above (`030 1234-567`), vanity letters, extensions. Plain
//! digit runs, dates (`2024-01-15`, `01.02.2024`), versions and IPv4 addresses do not fit any
//! shape. Dotted digit groups starting with `0` (`06.12.34.56.78`) are taken as phone numbers.

use crate::scan::{Cand, Form, left_ok, right_ok};

const MAX_GROUPS: usize = 12;
const LEFT_JOINERS: &[u8] = b".-/:+";
const RIGHT_JOINERS: &[u8] = b".-/";

/// One digit group, possibly in parentheses.
#[derive(Debug, Clone, Copy, Default)]
struct Group {
    /// Start of the group (at `(` for a parenthesised group).
    start: usize,
    /// End of the group (after `)` for a parenthesised group).
    end: usize,
    /// Start of the digits.
    digits_start: usize,
    digits: usize,
    paren: bool,
    /// The separator before this group: `None` when adjacent (first group, or next to a
    /// parenthesis).
    sep: Option<u8>,
}

pub(crate) fn find(text: &str, out: &mut Vec<Cand>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if (c == b'+' || c == b'(' || c.is_ascii_digit())
            && left_ok(text, i, LEFT_JOINERS)
            && (c == b'+' || !after_digit_group(b, i))
            && let Some(end) = parse_at(text, i)
        {
            out.push(Cand::new(i, end, Form::Phone));
            i = end;
            continue;
        }
        i += 1;
        if c.is_ascii_digit() {
            // Never start in the middle of a number.
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
}

/// Whether byte `i` follows a digit group and a space (`… 0532 0432 045678`): a phone number is
/// not taken out of the middle of a longer run of digit groups, which as a whole fits no shape.
/// Otherwise masking the tail would leave the rest as a new, shorter run that does fit a shape,
/// and masking twice would differ from masking once.
fn after_digit_group(b: &[u8], i: usize) -> bool {
    i >= 2 && b[i - 1] == b' ' && b[i - 2].is_ascii_digit()
}

/// The end of a phone number starting at byte `i`, if one does.
fn parse_at(text: &str, i: usize) -> Option<usize> {
    let b = text.as_bytes();
    let plus = b[i] == b'+';
    let start = if plus { i + 1 } else { i };
    if plus && !b.get(start).is_some_and(|d| (b'1'..=b'9').contains(d)) {
        return None;
    }
    let mut groups = [Group::default(); MAX_GROUPS];
    let n = tokenize(b, start, &mut groups);
    let groups = &groups[..n];
    let first = groups.first()?;
    let first_digits = &b[first.digits_start..first.digits_start + first.digits];
    let end = if plus {
        international(text, groups, 0)?
    } else if first_digits.starts_with(b"00") {
        if first.paren || !(3..=5).contains(&first.digits) || groups.len() < 2 {
            return None;
        }
        international(text, groups, 2)?
    } else if first_digits.starts_with(b"0") {
        trunk(groups)?
    } else {
        north_american(b, groups)?
    };
    right_ok(text, end, RIGHT_JOINERS).then_some(end)
}

/// Splits digit groups from `i` on; returns how many were found.
fn tokenize(b: &[u8], mut i: usize, groups: &mut [Group; MAX_GROUPS]) -> usize {
    let mut n = 0;
    let mut sep = None;
    while n < MAX_GROUPS {
        let paren = b.get(i) == Some(&b'(');
        let digits_start = if paren { i + 1 } else { i };
        let mut j = digits_start;
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        if j == digits_start {
            break;
        }
        let end = if paren {
            if b.get(j) != Some(&b')') {
                break;
            }
            j + 1
        } else {
            j
        };
        groups[n] = Group { start: i, end, digits_start, digits: j - digits_start, paren, sep };
        n += 1;
        i = end;
        match b.get(i) {
            Some(&c @ (b' ' | b'-' | b'.')) if b.get(i + 1).is_some_and(|d| d.is_ascii_digit() || *d == b'(') => {
                sep = Some(c);
                i += 1;
            }
            // `+44(0)20…` or `(555)123-4567`: a parenthesis may touch its neighbour.
            Some(b'(') => sep = None,
            Some(d) if d.is_ascii_digit() && paren => sep = None,
            _ => break,
        }
    }
    n
}

/// `+CC …` (skip = 0) or `00CC …` (skip = 2 digits of the prefix): the longest run of groups
/// with 8 to 15 digits that ends at a boundary (so `+49 30 1234567 123-45-6789` stops before
/// `123`).
fn international(text: &str, groups: &[Group], skip: usize) -> Option<usize> {
    if groups[0].paren {
        return None;
    }
    let mut digits = 0;
    let mut end = None;
    for g in groups {
        digits += g.digits;
        if digits - skip > 15 {
            break;
        }
        if digits - skip >= 8 && right_ok(text, g.end, RIGHT_JOINERS) {
            end = Some(g.end);
        }
    }
    end
}

/// `0AA BBBBBBB`-style national numbers.
fn trunk(groups: &[Group]) -> Option<usize> {
    let first = groups[0];
    if !(2..=5).contains(&first.digits) {
        return None;
    }
    // After a parenthesised area code the next separator is free (space or none); from then on
    // one separator throughout.
    let fixed_from = if first.paren { 2 } else { 1 };
    if first.paren && !matches!(groups.get(1).map(|g| g.sep), Some(None | Some(b' '))) {
        return None;
    }
    let sep = groups.get(fixed_from).map(|g| g.sep);
    let mut digits = first.digits;
    let mut count = 1;
    for (k, g) in groups.iter().enumerate().skip(1) {
        if g.paren || !(2..=8).contains(&g.digits) || (k >= fixed_from && Some(g.sep) != sep) {
            break;
        }
        if k >= fixed_from && g.sep.is_none() {
            break;
        }
        digits += g.digits;
        count += 1;
    }
    ((9..=12).contains(&digits) && count >= 2).then(|| groups[count - 1].end)
}

/// `(555) 123-4567`, `555-123-4567`, `1-555-123-4567`.
fn north_american(b: &[u8], groups: &[Group]) -> Option<usize> {
    let lead =
        usize::from(groups.len() >= 4 && !groups[0].paren && groups[0].digits == 1 && b[groups[0].start] == b'1');
    let g = groups.get(lead..lead + 3)?;
    if g[0].digits != 3 || g[1].digits != 3 || g[2].digits != 4 || g[1].paren || g[2].paren {
        return None;
    }
    let separators_ok = if g[0].paren {
        matches!(g[1].sep, None | Some(b' ')) && g[2].sep.is_some()
    } else {
        g[1].sep.is_some() && g[1].sep == g[2].sep
    };
    if !separators_ok {
        return None;
    }
    // More digits joined by `-` or `.` means a longer number, not a phone number.
    if let Some(next) = groups.get(lead + 3)
        && next.sep != Some(b' ')
    {
        return None;
    }
    Some(g[2].end)
}
