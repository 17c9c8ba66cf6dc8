//! IBANs: two letters of a country that has IBANs, two check digits and the BBAN, exactly that
//! country's length ([`crate::checks::iban_length`]) and passing the mod-97 check. Written
//! without spaces (`DE89370400440532013000`) or in the paper format, groups of four separated by
//! single spaces (`DE89 3704 0044 0532 0130 00`). Case-insensitive. A value glued to a word
//! character on either side is not detected. The BBAN's per-country structure is not checked.

use crate::checks::{iban_compact_valid, iban_length};
use crate::scan::{Cand, Form, is_word, left_ok, next_char};

const MAX_IBAN: usize = 34;

pub(crate) fn find(text: &str, out: &mut Vec<Cand>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i + 4 < b.len() {
        if let Some(end) = candidate_at(text, i) {
            out.push(Cand::new(i, end, Form::Iban));
            i = end;
        } else {
            i += 1;
        }
    }
}

/// The end of a valid IBAN starting at byte `i`, if there is one.
fn candidate_at(text: &str, i: usize) -> Option<usize> {
    let b = text.as_bytes();
    let head = b.get(i..i + 4)?;
    let shape = head[0].is_ascii_alphabetic()
        && head[1].is_ascii_alphabetic()
        && head[2].is_ascii_digit()
        && head[3].is_ascii_digit();
    if !shape || !left_ok(text, i, b"") {
        return None;
    }
    let country = [head[0].to_ascii_uppercase(), head[1].to_ascii_uppercase()];
    let len = iban_length(std::str::from_utf8(&country).ok()?)?;
    let mut compact = [0u8; MAX_IBAN];
    compact[..4].copy_from_slice(head);
    let mut n = 4;
    let mut pos = i + 4;
    // Paper format: a space after every fourth character, decided by what follows the first four.
    let spaced = b.get(pos) == Some(&b' ');
    while n < len {
        if spaced && n % 4 == 0 {
            if b.get(pos) != Some(&b' ') {
                return None;
            }
            pos += 1;
        }
        let c = *b.get(pos)?;
        if !c.is_ascii_alphanumeric() {
            return None;
        }
        compact[n] = c;
        n += 1;
        pos += 1;
    }
    if next_char(text, pos).is_some_and(is_word) {
        return None;
    }
    let compact = &mut compact[..n];
    compact.make_ascii_uppercase();
    iban_compact_valid(compact).then_some(pos)
}
