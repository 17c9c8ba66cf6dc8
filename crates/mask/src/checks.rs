//! The arithmetic behind the detectors: the Luhn check and issuer ranges of payment cards, the
//! IBAN length table and its mod-97 check. Exposed so callers can validate single values.

/// The issuer (brand) of a payment card number, from its leading digits and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CardBrand {
    /// Visa: prefix 4; 13, 16 or 19 digits.
    Visa,
    /// Mastercard: prefixes 51–55 and 2221–2720; 16 digits.
    Mastercard,
    /// American Express: prefixes 34 and 37; 15 digits.
    Amex,
    /// Discover: prefixes 6011, 644–649 and 65; 16–19 digits.
    Discover,
    /// JCB: prefixes 3528–3589; 16–19 digits.
    Jcb,
    /// Diners Club: prefixes 300–305, 3095, 36, 38 and 39; 14–19 digits.
    Diners,
    /// UnionPay: prefix 62; 16–19 digits.
    UnionPay,
    /// Mir: prefixes 2200–2204; 16–19 digits.
    Mir,
    /// Maestro: prefixes 50, 56–58, 63 and 67; 13–19 digits (12-digit Maestro numbers are not
    /// detected).
    Maestro,
}

/// The shortest and longest card numbers detected.
pub(crate) const CARD_MIN_DIGITS: usize = 13;
pub(crate) const CARD_MAX_DIGITS: usize = 19;

/// Whether `digits` (ASCII digits only, at least two) passes the Luhn check. Anything else is
/// `false`.
pub fn luhn_valid(digits: &str) -> bool {
    let bytes = digits.as_bytes();
    if bytes.len() < 2 || !bytes.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = bytes
        .iter()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The brand whose issuer range and lengths fit `digits` (ASCII digits only, no separators).
/// Does not run the Luhn check.
pub fn card_brand(digits: &str) -> Option<CardBrand> {
    let b = digits.as_bytes();
    let len = b.len();
    if !(CARD_MIN_DIGITS..=CARD_MAX_DIGITS).contains(&len) || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let prefix = |n: usize| b[..n].iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    let (p1, p2, p3, p4) = (prefix(1), prefix(2), prefix(3), prefix(4));
    let brand = if p1 == 4 && matches!(len, 13 | 16 | 19) {
        CardBrand::Visa
    } else if (p2 == 34 || p2 == 37) && len == 15 {
        CardBrand::Amex
    } else if ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16 {
        CardBrand::Mastercard
    } else if (p4 == 6011 || (644..=649).contains(&p3) || p2 == 65) && len >= 16 {
        CardBrand::Discover
    } else if (3528..=3589).contains(&p4) && len >= 16 {
        CardBrand::Jcb
    } else if ((300..=305).contains(&p3) || p4 == 3095 || matches!(p2, 36 | 38 | 39)) && len >= 14 {
        CardBrand::Diners
    } else if p2 == 62 && len >= 16 {
        CardBrand::UnionPay
    } else if (2200..=2204).contains(&p4) && len >= 16 {
        CardBrand::Mir
    } else if matches!(p2, 50 | 56 | 57 | 58 | 63 | 67) {
        CardBrand::Maestro
    } else {
        return None;
    };
    Some(brand)
}

/// Whether `digits` is a card number this crate detects: a known brand's range and length, and
/// Luhn-valid.
pub fn card_valid(digits: &str) -> bool {
    card_brand(digits).is_some() && luhn_valid(digits)
}

/// IBAN lengths per country, from the SWIFT IBAN registry (plus the French overseas territories
/// that use French IBANs under their own codes).
const IBAN_LENGTHS: &[(&str, u8)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BI", 27),
    ("BL", 27),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DJ", 27),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FK", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GF", 27),
    ("GI", 23),
    ("GL", 18),
    ("GP", 27),
    ("GR", 27),
    ("GT", 28),
    ("HN", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("LY", 25),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MF", 27),
    ("MK", 19),
    ("MN", 20),
    ("MQ", 27),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NC", 27),
    ("NI", 28),
    ("NL", 18),
    ("NO", 15),
    ("OM", 23),
    ("PF", 27),
    ("PK", 24),
    ("PL", 28),
    ("PM", 27),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RE", 27),
    ("RO", 24),
    ("RS", 22),
    ("RU", 33),
    ("SA", 24),
    ("SC", 31),
    ("SD", 18),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("SO", 23),
    ("ST", 25),
    ("SV", 28),
    ("TF", 27),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("WF", 27),
    ("XK", 20),
    ("YE", 30),
    ("YT", 27),
];

/// The IBAN length (country code and check digits included) for a two-letter country code, in
/// either case; `None` for countries without IBANs.
pub fn iban_length(country: &str) -> Option<usize> {
    let upper = country.as_bytes();
    if upper.len() != 2 {
        return None;
    }
    let key = [upper[0].to_ascii_uppercase(), upper[1].to_ascii_uppercase()];
    IBAN_LENGTHS
        .binary_search_by(|(code, _)| code.as_bytes().cmp(&key[..]))
        .ok()
        .map(|i| usize::from(IBAN_LENGTHS[i].1))
}

/// Whether `iban` is a valid IBAN: known country, that country's length, alphanumeric, and the
/// ISO 7064 mod-97 check equals 1. Case-insensitive; single spaces between characters are
/// ignored.
pub fn iban_valid(iban: &str) -> bool {
    let mut compact = [0u8; 34];
    let mut len = 0;
    for b in iban.bytes() {
        if b == b' ' {
            continue;
        }
        if !b.is_ascii_alphanumeric() || len == compact.len() {
            return false;
        }
        compact[len] = b.to_ascii_uppercase();
        len += 1;
    }
    iban_compact_valid(&compact[..len])
}

/// [`iban_valid`] on upper-case ASCII without spaces.
pub(crate) fn iban_compact_valid(iban: &[u8]) -> bool {
    if iban.len() < 5 || !iban[..2].iter().all(u8::is_ascii_uppercase) || !iban[2..4].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let Ok(country) = std::str::from_utf8(&iban[..2]) else {
        return false;
    };
    if iban_length(country) != Some(iban.len()) {
        return false;
    }
    mod97(iban[4..].iter().chain(&iban[..4])) == Some(1)
}

/// The remainder mod 97 of the number spelled by `chars`, letters counting as 10..=35.
fn mod97<'a>(chars: impl Iterator<Item = &'a u8>) -> Option<u32> {
    let mut rem = 0u32;
    for &c in chars {
        let value = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return None,
        };
        rem = if value >= 10 { (rem * 100 + value) % 97 } else { (rem * 10 + value) % 97 };
    }
    Some(rem)
}

/// Whether the three fields of a US social security number are outside the never-issued ranges:
/// area 000, 666 and 900–999, group 00, serial 0000.
pub fn ssn_valid(area: u16, group: u8, serial: u16) -> bool {
    area != 0 && area != 666 && area < 900 && group != 0 && group < 100 && serial != 0 && serial < 10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn() {
        assert!(luhn_valid("4242424242424242"));
        assert!(luhn_valid("79927398713"));
        assert!(!luhn_valid("4242424242424241"));
        assert!(!luhn_valid("4242 4242"));
        assert!(!luhn_valid("0"));
    }

    #[test]
    fn brands() {
        assert_eq!(card_brand("4242424242424242"), Some(CardBrand::Visa));
        assert_eq!(card_brand("5555555555554444"), Some(CardBrand::Mastercard));
        assert_eq!(card_brand("2223003122003222"), Some(CardBrand::Mastercard));
        assert_eq!(card_brand("378282246310005"), Some(CardBrand::Amex));
        assert_eq!(card_brand("6011111111111117"), Some(CardBrand::Discover));
        assert_eq!(card_brand("3530111333300000"), Some(CardBrand::Jcb));
        assert_eq!(card_brand("36227206271667"), Some(CardBrand::Diners));
        assert_eq!(card_brand("6200000000000005"), Some(CardBrand::UnionPay));
        assert_eq!(card_brand("2200000000000004"), Some(CardBrand::Mir));
        assert_eq!(card_brand("6759649826438453"), Some(CardBrand::Maestro));
        // Amex is 15 digits only; Mastercard 16 only.
        assert_eq!(card_brand("3782822463100050"), None);
        assert_eq!(card_brand("555555555555444"), None);
        // No brand starts with 1, 7, 8, 9 or 0.
        assert_eq!(card_brand("1234567812345670"), None);
        assert_eq!(card_brand("20240101123045"), None);
    }

    #[test]
    fn iban_table_is_sorted_and_sane() {
        assert!(IBAN_LENGTHS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(IBAN_LENGTHS.iter().all(|(c, l)| c.len() == 2 && (15..=34).contains(l)));
        assert_eq!(iban_length("de"), Some(22));
        assert_eq!(iban_length("NO"), Some(15));
        assert_eq!(iban_length("US"), None);
    }

    #[test]
    fn iban_check() {
        assert!(iban_valid("GB82WEST12345698765432"));
        assert!(iban_valid("GB82 WEST 1234 5698 7654 32"));
        assert!(iban_valid("de89370400440532013000"));
        assert!(!iban_valid("GB83WEST12345698765432"));
        assert!(!iban_valid("GB82WEST1234569876543"));
        assert!(!iban_valid("XX82WEST12345698765432"));
        assert!(!iban_valid("GB82-WEST12345698765432"));
    }

    #[test]
    fn ssn_ranges() {
        assert!(ssn_valid(123, 45, 6789));
        assert!(!ssn_valid(0, 45, 6789));
        assert!(!ssn_valid(666, 45, 6789));
        assert!(!ssn_valid(900, 45, 6789));
        assert!(!ssn_valid(123, 0, 6789));
        assert!(!ssn_valid(123, 45, 0));
    }
}
