//! Email addresses: a practical subset of RFC 5322/6531 — a dot-atom local part of letters,
//! digits (any script) and `_%+-`, and a domain of at least two labels ending in an alphabetic
//! (or `xn--`) top-level domain. Quoted local parts, IP-literal domains and single-label domains
//! (`root@localhost`) are not detected.

use regex::Regex;

use super::Lazy;
use crate::scan::{Cand, Form, is_word, next_char};

pub(crate) static PATTERN: Lazy<Regex> = Lazy::new(|| {
    super::regex(
        r"[\p{L}\p{N}_%+-]+(?:\.[\p{L}\p{N}_%+-]+)*@(?:[\p{L}\p{N}](?:[\p{L}\p{N}-]*[\p{L}\p{N}])?\.)+(?:xn--[A-Za-z0-9-]+|\p{L}{2,})",
    )
});

pub(crate) fn find(re: &Regex, text: &str, out: &mut Vec<Cand>) {
    for m in re.find_iter(text) {
        // The domain must end the token: not `a@b.com1`, `a@b.com-x` or `a@b.com@c`.
        let glued = next_char(text, m.end()).is_some_and(|c| is_word(c) || c == '-' || c == '@');
        let local_len = m.as_str().find('@').unwrap_or(0);
        if !glued && local_len <= 64 {
            out.push(Cand::new(m.start(), m.end(), Form::Email));
        }
    }
}
