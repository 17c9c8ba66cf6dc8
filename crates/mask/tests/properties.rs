//! Property tests: masked output never contains an original value, masking masked output
//! changes nothing, text without values is returned borrowed, and no input panics.

#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use gatehouse_mask::{CustomPattern, Detector, Masker, checks};
use proptest::prelude::*;

fn builtin() -> Masker {
    Masker::builtin().unwrap()
}

/// A value embedded in text: the full text to embed and the part that must never survive.
#[derive(Debug, Clone)]
struct Value {
    text: String,
    secret: String,
}

impl Value {
    fn whole(text: String) -> Value {
        Value { secret: text.clone(), text }
    }
}

fn digits(n: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(0u8..10, n).prop_map(|d| d.into_iter().map(|x| char::from(b'0' + x)).collect())
}

/// Appends the Luhn check digit.
fn with_luhn(body: &str) -> String {
    (0..10).map(|d| format!("{body}{d}")).find(|n| checks::luhn_valid(n)).unwrap()
}

fn card() -> impl Strategy<Value = Value> {
    let brands: Vec<(&'static str, usize)> = vec![
        ("4", 16),
        ("4", 13),
        ("51", 16),
        ("55", 16),
        ("2221", 16),
        ("34", 15),
        ("37", 15),
        ("6011", 16),
        ("65", 16),
        ("3530", 16),
        ("36", 14),
        ("62", 16),
        ("62", 19),
    ];
    (proptest::sample::select(brands), digits(18), 0u8..3).prop_map(|((prefix, len), rest, style)| {
        let body = format!("{prefix}{}", &rest[..len - 1 - prefix.len()]);
        let number = with_luhn(&body);
        assert!(checks::card_valid(&number), "{number}");
        let text = match (style, len) {
            (1, 16) | (2, 16) => {
                let sep = if style == 1 { " " } else { "-" };
                (0..4).map(|i| &number[i * 4..i * 4 + 4]).collect::<Vec<_>>().join(sep)
            }
            (1, 15) => format!("{} {} {}", &number[..4], &number[4..10], &number[10..]),
            _ => number,
        };
        Value::whole(text)
    })
}

fn iban() -> impl Strategy<Value = Value> {
    let countries: Vec<(&'static str, usize, &'static str)> = vec![
        ("DE", 22, ""),
        ("GB", 22, "WEST"),
        ("FR", 27, ""),
        ("NL", 18, "ABNA"),
        ("NO", 15, ""),
        ("IT", 27, "X"),
        ("MT", 31, "MALT"),
        ("CH", 21, ""),
    ];
    (proptest::sample::select(countries), digits(30), any::<bool>(), any::<bool>()).prop_map(
        |((cc, len, letters), rest, spaced, lower)| {
            let bban = format!("{letters}{}", &rest[..len - 4 - letters.len()]);
            let numeric: String =
                format!("{bban}{cc}00").chars().map(|c| c.to_digit(36).unwrap().to_string()).collect();
            let rem = numeric.bytes().fold(0u32, |acc, d| (acc * 10 + u32::from(d - b'0')) % 97);
            let mut iban = format!("{cc}{:02}{bban}", 98 - rem);
            assert!(checks::iban_valid(&iban), "{iban}");
            if spaced {
                iban = iban.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(" ");
            }
            if lower {
                iban = iban.to_lowercase();
            }
            Value::whole(iban)
        },
    )
}

fn ssn() -> impl Strategy<Value = Value> {
    (1u16..900, 1u8..100, 1u16..10000, any::<bool>()).prop_filter("666 is never issued", |(a, ..)| *a != 666).prop_map(
        |(a, g, s, spaced)| {
            let sep = if spaced { " " } else { "-" };
            Value::whole(format!("{a:03}{sep}{g:02}{sep}{s:04}"))
        },
    )
}

fn phone() -> impl Strategy<Value = Value> {
    prop_oneof![
        (1u16..100, digits(2), digits(8)).prop_map(|(cc, a, b)| Value::whole(format!("+{cc} {a} {b}"))),
        (digits(3), digits(3), digits(4)).prop_map(|(a, b, c)| Value::whole(format!("(5{}) {}-{c}", &a[1..], b))),
        (1u8..10, digits(8)).prop_map(|(a, b)| Value::whole(format!("0{a}{} {b}", a % 10))),
        (digits(4), 1u8..10).prop_map(|(d, a)| Value::whole(format!(
            "0{a} {} {} {} {}",
            &d[..2],
            &d[2..],
            &d[..2],
            &d[2..]
        ))),
    ]
}

fn email() -> impl Strategy<Value = Value> {
    ("[a-z][a-z0-9]{1,8}(\\.[a-z]{2,6})?", "[a-z]{3,10}", proptest::sample::select(vec!["com", "org", "de", "io"]))
        .prop_map(|(local, domain, tld)| Value::whole(format!("{local}@{domain}.{tld}")))
}

fn ip() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u32>().prop_map(|a| Value::whole(Ipv4Addr::from(a).to_string())),
        any::<u128>().prop_filter("not ::", |a| *a != 0).prop_map(|a| Value::whole(Ipv6Addr::from(a).to_string())),
    ]
}

fn secret() -> impl Strategy<Value = Value> {
    prop_oneof![
        "(AKIA|ASIA)[A-Z0-9]{16}".prop_map(Value::whole),
        "gh[pousr]_[A-Za-z0-9]{36}".prop_map(Value::whole),
        "glpat-[A-Za-z0-9]{20}".prop_map(Value::whole),
        "eyJ[A-Za-z0-9_-]{10,30}\\.eyJ[A-Za-z0-9_-]{10,40}\\.[A-Za-z0-9_-]{10,43}".prop_map(Value::whole),
        ("(password|api_key|DB_PASSWORD|client_secret)", "(=|: |=\")", "[A-Za-z0-9!#%]{6,16}[0-9]").prop_map(
            |(key, sep, value)| {
                let close = if sep.ends_with('"') { "\"" } else { "" };
                Value { text: format!("{key}{sep}{value}{close}"), secret: value }
            }
        ),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![card(), iban(), ssn(), phone(), email(), ip(), secret()]
}

fn filler() -> impl Strategy<Value = String> {
    "[a-z]{1,8}( [a-z]{1,8}){0,3}"
}

/// Filler words and values, always with a filler word between two values.
fn embedded() -> impl Strategy<Value = (String, Vec<Value>)> {
    (
        filler(),
        proptest::collection::vec((value(), filler(), proptest::sample::select(vec![" ", "\n", ", ", "; "])), 1..6),
    )
        .prop_map(|(head, parts)| {
            let mut text = head;
            let mut values = Vec::new();
            for (v, tail, sep) in parts {
                text.push(' ');
                text.push_str(&v.text);
                text.push_str(sep);
                text.push_str(&tail);
                values.push(v);
            }
            (text, values)
        })
}

/// Values joined by short separators, or none, so that boundaries between values get exercised.
/// Glued values may legitimately go undetected (`4242…4242x` is not a card).
fn glued() -> impl Strategy<Value = (String, Vec<Value>)> {
    proptest::collection::vec(
        (value(), proptest::sample::select(vec!["", " ", "-", ".", ",", ":", "@", "=", "/", "x", "0"])),
        1..6,
    )
    .prop_map(|parts| {
        let text = parts.iter().map(|(v, sep)| format!("{}{sep}", v.text)).collect();
        (text, parts.into_iter().map(|(v, _)| v).collect())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn masked_output_never_contains_an_original((text, values) in embedded()) {
        let m = builtin();
        let masked = m.mask(&text);
        for v in &values {
            prop_assert!(!masked.text().contains(&v.secret), "{:?} survived in {:?}", v.secret, masked.text());
        }
        prop_assert!(masked.counts().total() >= values.len() as u64, "{:?}: {:?}", text, masked.counts());
    }

    #[test]
    fn each_detector_masks_its_own_values(v in value(), head in filler(), tail in filler()) {
        let text = format!("{head} {} {tail}", v.text);
        let masked = builtin().mask(&text);
        prop_assert!(!masked.text().contains(&v.secret), "{:?} -> {:?}", text, masked.text());
        prop_assert_eq!(masked.counts().total(), 1, "{:?}: {:?}", text, masked.counts());
    }

    #[test]
    fn masking_masked_text_changes_nothing((text, _) in embedded()) {
        let m = builtin();
        let once = m.mask(&text);
        let twice = m.mask(once.text());
        prop_assert_eq!(twice.text(), once.text());
        prop_assert!(!twice.is_changed(), "re-masked {:?}: {:?}", once.text(), twice.counts());
    }

    /// Masked text masked again never shows more than it did: a value hidden once stays hidden.
    /// (Masking can change what surrounds a glued neighbour, so the second pass may mask more.)
    #[test]
    fn masking_glued_values_twice_reveals_nothing((text, values) in glued()) {
        let m = builtin();
        check_any(&text);
        let once = m.mask(&text);
        let twice = m.mask(once.text());
        check_any(once.text());
        for v in &values {
            if !once.text().contains(&v.secret) {
                prop_assert!(!twice.text().contains(&v.secret), "{:?} -> {:?} -> {:?}", text, once.text(), twice.text());
            }
        }
    }

    #[test]
    fn text_without_values_is_borrowed(text in "[a-zA-Z ,.!?'()\n-]{0,200}") {
        let masked = builtin().mask(&text);
        prop_assert!(matches!(masked.as_cow(), Cow::Borrowed(s) if std::ptr::eq(*s, text.as_str())));
        prop_assert!(masked.counts().is_empty());
    }

    #[test]
    fn arbitrary_unicode_never_panics(text in "\\PC*") {
        check_any(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let m = builtin();
        if let Some(masked) = m.mask_bytes(&bytes) {
            prop_assert!(std::str::from_utf8(&masked.into_bytes()).is_ok());
        }
        check_any(&String::from_utf8_lossy(&bytes));
    }

    /// Dense in the characters detectors look at, so that their edge cases get exercised.
    #[test]
    fn detector_alphabet_never_panics(text in "[0-9a-fA-F:.@+()\\- *=\"'/\\\\_xkAIzE€é\n]{0,120}") {
        check_any(&text);
    }
}

/// Masking any text: no panic, valid output, `Borrowed` exactly when nothing was counted, and
/// findings agree with counts.
fn check_any(text: &str) {
    let m = Masker::new(&Detector::BUILTIN, &[CustomPattern::new("word", "(?i)secret[0-9]+")]).unwrap();
    let masked = m.mask(text);
    let changed = masked.is_changed();
    assert_eq!(changed, !masked.counts().is_empty(), "{text:?}");
    assert_eq!(m.find(text).len() as u64, masked.counts().total(), "{text:?}");
    let out = masked.into_text();
    if !changed {
        assert_eq!(out, text);
    }
    for f in m.find(text) {
        assert!(text.get(f.range.clone()).is_some(), "{text:?} {f:?}");
    }
}
