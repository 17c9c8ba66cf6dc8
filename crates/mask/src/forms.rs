//! The masked forms. Each keeps enough of the shape to be useful (a domain, the last digits, a
//! country, a key name) and never the whole value; where keeping a part of a short value would
//! reveal it, more is masked.

use crate::scan::Form;

/// What replaces a column value masked as a whole.
pub const WHOLE_MASK: &str = "****";

/// The masked form of `value`, found by a detector as `form`.
pub(crate) fn render(form: Form, value: &str) -> String {
    match form {
        Form::Email => email(value),
        Form::Card => keep_last_digits(value, 4),
        Form::Iban => iban(value),
        Form::Ssn => keep_last_digits(value, 4),
        Form::Phone => keep_last_digits(value, 2),
        Form::Ipv4 => ipv4(value),
        Form::Ipv6 => ipv6(value),
        Form::Stars => value.chars().map(|_| '*').collect(),
        Form::Hidden => "***".to_owned(),
        Form::KeepPrefix(n) => keep_prefix(value, n),
        Form::Jwt => "eyJ***.***.***".to_owned(),
        Form::Pem => pem(value),
    }
}

/// `john.doe@example.com` → `j***@example.com`: the first character of the local part (only if
/// it is alphanumeric and the local part is longer than one character), `***`, the domain.
fn email(value: &str) -> String {
    let Some((local, domain)) = value.rsplit_once('@') else {
        return "***".to_owned();
    };
    let mut chars = local.chars();
    let mut out = String::with_capacity(domain.len() + 8);
    if let (Some(first), Some(_)) = (chars.next(), chars.next())
        && first.is_alphanumeric()
    {
        out.push(first);
    }
    out.push_str("***@");
    out.push_str(domain);
    out
}

/// Every ASCII digit but the last `keep` becomes `*`; separators stay.
fn keep_last_digits(value: &str, keep: usize) -> String {
    let digits = value.bytes().filter(u8::is_ascii_digit).count();
    let hide = digits.saturating_sub(keep);
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if c.is_ascii_digit() {
                seen += 1;
                if seen <= hide { '*' } else { c }
            } else {
                c
            }
        })
        .collect()
}

/// `DE89 3704 0044 0532 0130 00` → `DE** **** **** **** **** **`: the country code stays,
/// every other character becomes `*`, spaces stay.
fn iban(value: &str) -> String {
    value.char_indices().map(|(i, c)| if i < 2 || c == ' ' { c } else { '*' }).collect()
}

/// `192.168.1.20` → `192.*.*.*`.
fn ipv4(value: &str) -> String {
    let first = value.split('.').next().unwrap_or_default();
    format!("{first}.*.*.*")
}

/// `2001:db8::1` → `2001:*::*`: the first group stays, every other written group becomes `*`
/// (empty groups of `::` stay empty). If no other group is written (`fe80::`), the first one is
/// masked too.
fn ipv6(value: &str) -> String {
    let groups: Vec<&str> = value.split(':').collect();
    let others_written = groups.iter().skip(1).any(|g| !g.is_empty());
    groups
        .iter()
        .enumerate()
        .map(|(i, g)| if g.is_empty() || (i == 0 && others_written) { *g } else { "*" })
        .collect::<Vec<_>>()
        .join(":")
}

/// `AKIAIOSFODNN7EXAMPLE` → `AKIA****************`: the first `n` bytes (an ASCII prefix) stay.
fn keep_prefix(value: &str, n: usize) -> String {
    let (prefix, rest) = value.split_at_checked(n).unwrap_or(("", value));
    let mut out = String::with_capacity(value.len());
    out.push_str(prefix);
    out.extend(rest.chars().map(|_| '*'));
    out
}

/// A PEM private key block: the BEGIN and END lines stay, the body becomes `[masked]`, keeping
/// the line breaks (real or `\n`-escaped, as inside a JSON string) around it.
fn pem(value: &str) -> String {
    const DASHES: &str = "-----";
    // The BEGIN line ends at the second run of five dashes.
    let header_end =
        value.get(DASHES.len()..).and_then(|rest| rest.find(DASHES)).map_or(value.len(), |i| i + 2 * DASHES.len());
    let footer_start = value.rfind("-----END").filter(|&i| i >= header_end).unwrap_or(value.len());
    let (header, footer) = (&value[..header_end], &value[footer_start..]);
    let body = &value[header_end..footer_start];
    let lead = &body[..body.len() - trim_breaks_start(body).len()];
    let after_lead = &body[lead.len()..];
    let trail = &after_lead[trim_breaks_end(after_lead).len()..];
    format!("{header}{lead}[masked]{trail}{footer}")
}

/// Whitespace and escaped line breaks (`\n`, `\r`, `\t` written as two characters).
fn trim_breaks_start(mut s: &str) -> &str {
    loop {
        let t = s.trim_start();
        let t = ["\\n", "\\r", "\\t"].iter().find_map(|e| t.strip_prefix(e)).unwrap_or(t);
        if t.len() == s.len() {
            return s;
        }
        s = t;
    }
}

fn trim_breaks_end(mut s: &str) -> &str {
    loop {
        let t = s.trim_end();
        let t = ["\\n", "\\r", "\\t"].iter().find_map(|e| t.strip_suffix(e)).unwrap_or(t);
        if t.len() == s.len() {
            return s;
        }
        s = t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(email("john.doe@example.com"), "j***@example.com");
        assert_eq!(email("a@example.com"), "***@example.com");
        assert_eq!(email("_x@example.com"), "***@example.com");
        assert_eq!(keep_last_digits("4242 4242 4242 4242", 4), "**** **** **** 4242");
        assert_eq!(keep_last_digits("123-45-6789", 4), "***-**-6789");
        assert_eq!(keep_last_digits("+49 30 12345678", 2), "+** ** ******78");
        assert_eq!(iban("DE89 3704 0044 0532 0130 00"), "DE** **** **** **** **** **");
        assert_eq!(ipv4("10.1.2.3"), "10.*.*.*");
        assert_eq!(ipv6("2001:db8::1"), "2001:*::*");
        assert_eq!(ipv6("fe80::"), "*::");
        assert_eq!(ipv6("::1"), "::*");
        assert_eq!(keep_prefix("AKIAIOSFODNN7EXAMPLE", 4), "AKIA****************");
        assert_eq!(render(Form::Stars, "ab€"), "***");
    }

    #[test]
    fn pem_keeps_lines() {
        let block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAAAA\n-----END RSA PRIVATE KEY-----";
        assert_eq!(pem(block), "-----BEGIN RSA PRIVATE KEY-----\n[masked]\n-----END RSA PRIVATE KEY-----");
        let json = r"-----BEGIN PRIVATE KEY-----\nMIIEow\nAAAA\n-----END PRIVATE KEY-----";
        assert_eq!(pem(json), r"-----BEGIN PRIVATE KEY-----\n[masked]\n-----END PRIVATE KEY-----");
        let cut = "-----BEGIN PRIVATE KEY-----\r\nMIIEow\r\nAAAA";
        assert_eq!(pem(cut), "-----BEGIN PRIVATE KEY-----\r\n[masked]");
    }
}
