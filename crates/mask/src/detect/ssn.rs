//! US social security numbers written `AAA-GG-SSSS` or `AAA GG SSSS`, outside the never-issued
//! ranges ([`crate::checks::ssn_valid`]). Nine digits without separators are not detected: too
//! many order numbers, phone numbers and ids look the same. A value glued to a word character, or
//! continuing a number (`1-123-45-6789`, `123-45-6789-1`), is not detected.

use regex::Regex;

use super::Lazy;
use crate::checks::ssn_valid;
use crate::scan::{Cand, Form, left_ok, right_ok};

pub(crate) static PATTERN: Lazy<Regex> =
    Lazy::new(|| super::regex(r"[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4}"));

const DASHED_JOINERS: &[u8] = b"-./";
const SPACED_JOINERS: &[u8] = b" -./";

pub(crate) fn find(re: &Regex, text: &str, out: &mut Vec<Cand>) {
    for m in re.find_iter(text) {
        let s = m.as_str();
        let joiners = if s.as_bytes()[3] == b' ' { SPACED_JOINERS } else { DASHED_JOINERS };
        if !left_ok(text, m.start(), joiners) || !right_ok(text, m.end(), joiners) {
            continue;
        }
        let field = |r: std::ops::Range<usize>| s.get(r).and_then(|f| f.parse::<u16>().ok());
        let (Some(area), Some(group), Some(serial)) = (field(0..3), field(4..6), field(7..11)) else {
            continue;
        };
        if ssn_valid(area, u8::try_from(group).unwrap_or(0), serial) {
            out.push(Cand::new(m.start(), m.end(), Form::Ssn));
        }
    }
}
