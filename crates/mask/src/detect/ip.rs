//! IP addresses.
//!
//! - IPv4: four decimal octets 0–255 without leading zeros (`10.0.0.1`, as `std` parses them).
//!   A dotted run of more than four numbers (`1.2.3.4.5`, OIDs, long version strings) and an
//!   address glued to a word character (`v1.2.3.4`) are not detected; a port (`10.0.0.1:5432`) or
//!   prefix length (`10.0.0.0/8`) after it is left as is.
//! - IPv6: a run of hex digits, colons and dots with at least two colons that `std` parses as an
//!   IPv6 address (`2001:db8::1`, `fe80::1`, `::ffff:192.0.2.1`), not glued to a word character
//!   or `*`. Runs without a decimal digit (`a::b`, `dead::beef`, as in code) and runs mixing
//!   upper- and lower-case letters (`Ab::Cd`) are not taken.
//!   A zone (`%eth0`) is left as is. Time stamps and MAC addresses do not parse as IPv6.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use regex::Regex;

use super::Lazy;
use crate::scan::{Cand, Form, is_word, left_ok, next_char, prev_char, right_ok};

pub(crate) static V4: Lazy<Regex> = Lazy::new(|| super::regex(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"));

/// The longest textual IPv6 address: `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`.
const V6_MAX: usize = 45;

pub(crate) fn find_v4(re: &Regex, text: &str, out: &mut Vec<Cand>) {
    for m in re.find_iter(text) {
        if left_ok(text, m.start(), b".") && right_ok(text, m.end(), b".") && Ipv4Addr::from_str(m.as_str()).is_ok() {
            out.push(Cand::new(m.start(), m.end(), Form::Ipv4));
        }
    }
}

pub(crate) fn find_v6(text: &str, out: &mut Vec<Cand>) {
    let b = text.as_bytes();
    let in_run = |c: u8| c.is_ascii_hexdigit() || c == b':' || c == b'.';
    let mut i = 0;
    while i < b.len() {
        if !in_run(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        let mut colons = 0;
        while i < b.len() && in_run(b[i]) {
            colons += usize::from(b[i] == b':');
            i += 1;
        }
        if colons >= 2
            && let Some(end) = v6_candidate(text, start, i)
        {
            out.push(Cand::new(start, end, Form::Ipv6));
        }
    }
}

/// The end of an IPv6 address in the run `start..end`, trimming a trailing `.` or `:` that
/// belongs to the sentence.
fn v6_candidate(text: &str, start: usize, end: usize) -> Option<usize> {
    let glued = |c: Option<char>| c.is_some_and(|c| is_word(c) || c == '*');
    if glued(prev_char(text, start)) || glued(next_char(text, end)) {
        return None;
    }
    let run = text.get(start..end)?;
    let trimmed = run.trim_end_matches('.');
    let candidates = [trimmed, trimmed.strip_suffix(':').filter(|t| !t.ends_with(':')).unwrap_or("")];
    let addr = candidates.into_iter().find(|c| is_v6(c))?;
    Some(start + addr.len())
}

fn is_v6(s: &str) -> bool {
    if s.len() < 3 || s.len() > V6_MAX || s == "::" || Ipv6Addr::from_str(s).is_err() {
        return false;
    }
    let upper = s.bytes().any(|c| c.is_ascii_uppercase());
    let lower = s.bytes().any(|c| c.is_ascii_lowercase());
    let digit = s.bytes().any(|c| c.is_ascii_digit());
    digit && !(upper && lower)
}
