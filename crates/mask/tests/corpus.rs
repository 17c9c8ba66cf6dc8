//! True and false positives per detector, the masked forms, overlaps and the masker's API.

#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test

use std::borrow::Cow;

use gatehouse_mask::{Counts, CustomPattern, Detector, MaskError, Masker, WHOLE_MASK, mask_whole};

fn masker(d: Detector) -> Masker {
    Masker::new(&[d], &[]).unwrap()
}

/// The substrings `d` alone finds in `text`.
fn found(d: &Detector, text: &str) -> Vec<String> {
    masker(d.clone()).find(text).into_iter().map(|f| text[f.range].to_owned()).collect()
}

/// Each `(text, value)`: `d` finds exactly `value` in `text`, and the masked text no longer
/// contains it.
fn positives(d: Detector, cases: &[(&str, &str)]) {
    let m = masker(d.clone());
    for (text, value) in cases {
        assert_eq!(found(&d, text), vec![value.to_string()], "{d} should find {value:?} in {text:?}");
        let masked = m.mask(text);
        assert!(!masked.text().contains(value), "{d}: {text:?} masked as {:?}", masked.text());
        assert_eq!(masked.counts().get(&d.name()), 1, "{d}: {text:?}");
    }
}

/// `d` finds nothing in any of `texts`, and masking returns them borrowed.
fn negatives(d: Detector, texts: &[&str]) {
    let m = masker(d.clone());
    for text in texts {
        assert_eq!(found(&d, text), Vec::<String>::new(), "{d} should find nothing in {text:?}");
        assert!(matches!(m.mask(text).as_cow(), Cow::Borrowed(_)), "{d}: {text:?}");
    }
}

/// `text` masked by every built-in detector.
fn masked_all(text: &str) -> String {
    Masker::builtin().unwrap().mask(text).text().to_owned()
}

// ---------------------------------------------------------------------------------------------
// credit_card

#[test]
fn cards_found() {
    let numbers = [
        "4242424242424242",
        "4111111111111111",
        "4000056655665556",
        "4012888888881881",
        "4222222222222",
        "5555555555554444",
        "5105105105105100",
        "2223003122003222",
        "5200828282828210",
        "378282246310005",
        "371449635398431",
        "6011111111111117",
        "6011000990139424",
        "3056930009020004",
        "36227206271667",
        "38520000023237",
        "3530111333300000",
        "3566002020360505",
        "6200000000000005",
        "6205500000000000004",
        "6759649826438453",
        "6304000000000000",
        "5018000000000009",
        "2200000000000004",
    ];
    let mut cases = Vec::new();
    for n in numbers {
        cases.push((format!("card {n} on file"), n.to_owned()));
        if n.len() == 16 {
            let groups: Vec<&str> = (0..4).map(|i| &n[i * 4..i * 4 + 4]).collect();
            let spaced = groups.join(" ");
            let dashed = groups.join("-");
            cases.push((format!("pan={spaced};"), spaced));
            cases.push((format!("({dashed})"), dashed));
        }
    }
    cases.push(("amex 3782 822463 10005.".into(), "3782 822463 10005".into()));
    cases.push(("amex 3714-496353-98431".into(), "3714-496353-98431".into()));
    cases.push(("diners 3622 720627 1667".into(), "3622 720627 1667".into()));
    cases.push(("unionpay 6205 5000 0000 0000 004".into(), "6205 5000 0000 0000 004".into()));
    // Card followed by expiry and CVV: the card is found, the rest left alone.
    cases.push(("4242 4242 4242 4242 12/27 123".into(), "4242 4242 4242 4242".into()));
    cases.push(("4242424242424242\t".into(), "4242424242424242".into()));
    cases.push(("\"4242424242424242\"".into(), "4242424242424242".into()));
    cases.push(("id,pan\n7,4242424242424242,12,2027".into(), "4242424242424242".into()));
    let cases: Vec<(&str, &str)> = cases.iter().map(|(t, v)| (t.as_str(), v.as_str())).collect();
    positives(Detector::CreditCard, &cases);
}

#[test]
fn cards_not_found() {
    negatives(
        Detector::CreditCard,
        &[
            "4242424242424241",        // Luhn-invalid
            "4242 4242 4242 4241",     // Luhn-invalid, grouped
            "1234567812345670",        // Luhn-valid, no issuer starts with 1
            "20240101123045",          // timestamp
            "1704067200000",           // epoch milliseconds
            "order 100234987",         // order number
            "INV-2024-000123",         // invoice number
            "+1 555 123 4567",         // phone
            "94242424242424242",       // 17 digits: embedded in a longer run
            "42424242424242424242",    // 20 digits
            "X4242424242424242",       // glued to a letter
            "4242424242424242kg",      // glued to a letter
            "12.4242424242424242",     // decimal part
            "4242424242424242.50",     // decimal
            "0.4242424242424242",      // decimal
            "4242-4242 4242-4242",     // mixed separators
            "4242  4242  4242  4242",  // double spaces
            "42 42 42 42 42 42 42 42", // pairs of digits
            "3782822463100050",        // Amex prefix, wrong length
            "5555555555554444555",     // Mastercard prefix, wrong length
            "978-3-16-148410-0",       // ISBN
            "uuid 550e8400-e29b-41d4-a716-446655440000",
            "",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// iban

#[test]
fn ibans_found() {
    positives(
        Detector::Iban,
        &[
            ("GB82WEST12345698765432", "GB82WEST12345698765432"),
            ("iban: GB82 WEST 1234 5698 7654 32.", "GB82 WEST 1234 5698 7654 32"),
            ("DE89370400440532013000", "DE89370400440532013000"),
            ("pay to DE89 3704 0044 0532 0130 00 today", "DE89 3704 0044 0532 0130 00"),
            ("de89370400440532013000", "de89370400440532013000"),
            ("FR1420041010050500013M02606", "FR1420041010050500013M02606"),
            ("fr14 2004 1010 0505 0001 3m02 606", "fr14 2004 1010 0505 0001 3m02 606"),
            ("NL91ABNA0417164300", "NL91ABNA0417164300"),
            ("BE68539007547034", "BE68539007547034"),
            ("CH9300762011623852957", "CH9300762011623852957"),
            ("ES9121000418450200051332", "ES9121000418450200051332"),
            ("IT60X0542811101000000123456", "IT60X0542811101000000123456"),
            ("NO9386011117947", "NO9386011117947"),
            ("MT84MALT011000012345MTLCAST001S", "MT84MALT011000012345MTLCAST001S"),
            ("AT611904300234573201", "AT611904300234573201"),
            ("PL61109010140000071219812874", "PL61109010140000071219812874"),
            ("(SE4550000000058398257466)", "SE4550000000058398257466"),
            ("{\"iban\":\"DE89370400440532013000\"}", "DE89370400440532013000"),
        ],
    );
}

#[test]
fn ibans_not_found() {
    negatives(
        Detector::Iban,
        &[
            "GB83WEST12345698765432",      // check digits wrong
            "DE89370400440532013001",      // checksum wrong
            "DE8937040044053201300",       // too short for DE
            "DE893704004405320130001",     // too long for DE
            "XX89370400440532013000",      // no such country
            "US64SVBKUS6S3300958879",      // the US has no IBANs
            "DE89 3704 0044 0532 0130 0",  // short, grouped
            "DE89 37040044 0532 0130 00",  // irregular grouping
            "IDDE89370400440532013000",    // glued on the left
            "DE89370400440532013000X",     // glued on the right
            "DE89-3704-0044-0532-0130-00", // dashes are not IBAN grouping
            "ab12 some words here to fill",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// ssn

#[test]
fn ssns_found() {
    positives(
        Detector::Ssn,
        &[
            ("123-45-6789", "123-45-6789"),
            ("SSN: 123 45 6789.", "123 45 6789"),
            ("ssn=078-05-1120&x=1", "078-05-1120"),
            ("665-12-3456", "665-12-3456"),
            ("899-99-9999", "899-99-9999"),
            ("(001-01-0001)", "001-01-0001"),
            ("7,123-45-6789,12", "123-45-6789"),
        ],
    );
}

#[test]
fn ssns_not_found() {
    negatives(
        Detector::Ssn,
        &[
            "000-12-3456",   // area 000
            "666-12-3456",   // area 666
            "900-12-3456",   // area 9xx
            "999-12-3456",   // area 9xx
            "123-00-4567",   // group 00
            "123-45-0000",   // serial 0000
            "123456789",     // unformatted: not detected, on purpose
            "1123-45-6789",  // longer number
            "123-45-67890",  // longer number
            "1-123-45-6789", // continues a number
            "123-45-6789-1", // continues a number
            "123-45 6789",   // mixed separators
            "2024-01-15",
            "a123-45-6789",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// phone

#[test]
fn phones_found() {
    positives(
        Detector::Phone,
        &[
            ("call +49 30 12345678", "+49 30 12345678"),
            ("+1 (555) 123-4567", "+1 (555) 123-4567"),
            ("+44 20 7946 0958", "+44 20 7946 0958"),
            ("+44 (0)20 7946 0958", "+44 (0)20 7946 0958"),
            ("tel:+4915112345678", "+4915112345678"),
            ("+33 6 12 34 56 78", "+33 6 12 34 56 78"),
            ("+1-555-123-4567", "+1-555-123-4567"),
            ("+1.555.123.4567", "+1.555.123.4567"),
            ("0049 30 12345678", "0049 30 12345678"),
            ("(555) 123-4567", "(555) 123-4567"),
            ("(555)123-4567", "(555)123-4567"),
            ("phone: 555-123-4567.", "555-123-4567"),
            ("555.123.4567", "555.123.4567"),
            ("555 123 4567", "555 123 4567"),
            ("1-800-555-0199", "1-800-555-0199"),
            ("030 12345678", "030 12345678"),
            ("06 12 34 56 78", "06 12 34 56 78"),
            ("020 7946 0958", "020 7946 0958"),
            ("0151 12345678", "0151 12345678"),
            ("(030) 1234567", "(030) 1234567"),
            ("020-7946-0958", "020-7946-0958"),
            ("\"+49 30 12345678\"", "+49 30 12345678"),
            ("7,555-123-4567,12", "555-123-4567"),
        ],
    );
}

#[test]
fn phones_not_found() {
    negatives(
        Detector::Phone,
        &[
            "2024-01-15",
            "2024-01-15 10:30:00",
            "15.01.2024",
            "01.02.2024",
            "01/02/2024",
            "1.2.3",
            "v1.2.3",
            "10.0.0.1",
            "192.168.100.200",
            "4242 4242 4242 4242",
            "4242-4242-4242-4242",
            "378282246310005",
            "123456",
            "12345678901",
            "03012345678",      // national, unformatted
            "030-1234",         // too short
            "123-45-6789",      // SSN shape
            "555-123-4567-89",  // longer number
            "x555-123-4567",    // glued
            "+123",             // too short
            "+0 30 12345678",   // country code 0
            "1+49 30 12345678", // arithmetic
            "12:30:45",
            "price 1 234 567",
            "0.5 0.25 0.125",
            // A run of digit groups too long for any shape holds no shorter number inside it
            // (found by fuzzing: masking its tail left a new match, so masking was not stable).
            "3704 0532 043 0532 0432 045678",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// ip

#[test]
fn ips_found() {
    positives(
        Detector::Ip,
        &[
            ("10.0.0.1", "10.0.0.1"),
            ("from 192.168.1.20,", "192.168.1.20"),
            ("dns 8.8.8.8:53", "8.8.8.8"),
            ("255.255.255.255", "255.255.255.255"),
            ("net 10.0.0.0/8", "10.0.0.0"),
            ("end of sentence 172.16.0.1.", "172.16.0.1"),
            ("2001:db8::1", "2001:db8::1"),
            ("fe80::1%eth0", "fe80::1"),
            ("::1", "::1"),
            ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
            ("[2001:db8::2]:443", "2001:db8::2"),
            ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
            ("FE80::1", "FE80::1"),
            ("addr fe80::.", "fe80::"),
        ],
    );
}

#[test]
fn ips_not_found() {
    negatives(
        Detector::Ip,
        &[
            "999.1.1.1",
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "v1.2.3.4",
            "1.2.3.4a",
            "01.02.03.04",
            "12:30:45",
            "00:1a:2b:3c:4d:5e",
            "std::vector",
            "Foo::Bar",
            "Ab::Cd",
            "a::b",
            "dead::beef",
            "::",
            "2024-01-15T10:30:00",
            "version 2.0",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// secret

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

#[test]
fn secrets_found() {
    let ghp = format!("ghp_{}", "aB3".repeat(12));
    let pat = format!("github_pat_11AAAAAAA0{}", "x".repeat(60));
    let stripe = format!("sk_live_{}", "4eC39HqLyjWDarjtT1zdp7dc");
    let google = format!("AIza{}", "SyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY".get(..35).unwrap());
    let npm = format!("npm_{}", "a1B2".repeat(9));
    let openai = format!("sk-proj-{}", "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z");
    positives(
        Detector::Secret,
        &[
            ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
            ("aws_access_key_id ASIAY34FZKBOKMUTVV7A", "ASIAY34FZKBOKMUTVV7A"),
            (&format!("Authorization: {JWT}"), JWT),
            ("password=hunter2", "hunter2"),
            ("DB_PASSWORD=s3cr3t!", "s3cr3t!"),
            ("{\"client_secret\": \"abc123xyz\"}", "abc123xyz"),
            ("api_key: 'k-123-456'", "k-123-456"),
            ("X-Api-Key=abcdef0123", "abcdef0123"),
            ("token:abc", "abc"),
            ("Passwd = \"with spaces inside\"", "with spaces inside"),
            ("host=db;Password=p@ss;User=app", "p@ss"),
            ("?user=a&access_key=xyz987&x=1", "xyz987"),
            ("'password' => 'hunter2'", "hunter2"),
            (r#"{\"password\":\"hunter2\"}"#, "hunter2"),
            ("postgres://app:hunter2@db.internal:5432/app", "hunter2"),
            ("redis://:hunter2@cache:6379", "hunter2"),
            ("Authorization: Bearer abcdefghijklmnop1234", "abcdefghijklmnop1234"),
            ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
            (&ghp, &ghp),
            (&pat, &pat),
            ("xoxb-123456789012-1234567890123-AbCdEfGhIjKl", "xoxb-123456789012-1234567890123-AbCdEfGhIjKl"),
            (&stripe, &stripe),
            ("glpat-abcdefghij0123456789", "glpat-abcdefghij0123456789"),
            (&google, &google),
            (&npm, &npm),
            (&openai, &openai),
        ],
    );
}

#[test]
fn pem_blocks_found() {
    let m = masker(Detector::Secret);
    let block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi\nZ1BjP5CE/Wm/Rr500P\n-----END RSA PRIVATE KEY-----";
    let text = format!("key:\n{block}\ndone");
    let masked = m.mask(&text);
    assert_eq!(masked.text(), "key:\n-----BEGIN RSA PRIVATE KEY-----\n[masked]\n-----END RSA PRIVATE KEY-----\ndone");
    assert_eq!(masked.counts().get("secret"), 1);

    let openssh =
        "-----BEGIN OPENSSH PRIVATE KEY-----\r\nb3BlbnNzaC1rZXktdjEAAAAA\r\n-----END OPENSSH PRIVATE KEY-----";
    assert_eq!(
        m.mask(openssh).text(),
        "-----BEGIN OPENSSH PRIVATE KEY-----\r\n[masked]\r\n-----END OPENSSH PRIVATE KEY-----"
    );

    // Inside a JSON string: escaped line breaks stay escaped.
    let json =
        r#"{"key":"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"}"#;
    assert_eq!(m.mask(json).text(), r#"{"key":"-----BEGIN PRIVATE KEY-----\n[masked]\n-----END PRIVATE KEY-----\n"}"#);

    // Cut off before its END line.
    let cut = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY/PuoAoGCCqGSM49";
    assert_eq!(m.mask(cut).text(), "-----BEGIN EC PRIVATE KEY-----\n[masked]");

    for kind in ["ENCRYPTED PRIVATE KEY", "PGP PRIVATE KEY BLOCK", "PRIVATE KEY"] {
        let block = format!("-----BEGIN {kind}-----\nlQOYBGXyz0kBCAC\n=abcd\n-----END {kind}-----");
        let want = format!("-----BEGIN {kind}-----\n[masked]\n-----END {kind}-----");
        assert_eq!(m.mask(&block).text(), want);
    }

    // Encrypted legacy PEM headers are part of the body.
    let enc = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----";
    assert!(!m.mask(enc).text().contains("AES-128-CBC"));
}

#[test]
fn secrets_not_found() {
    negatives(
        Detector::Secret,
        &[
            "password",
            "password reset requested",
            "passwordless=true",
            "password_hash is stored",
            "password=",
            "password=\"\"",
            "password == expected",
            "tokens=5",
            "max_tokens: 100",
            "token_type=bearer",
            "AKIA1234",
            "AKIAIOSFODNN7EXAMPLEX",
            "XAKIAIOSFODNN7EXAMPLE",
            "ghp_short",
            "eyJhbGciOiJIUzI1NiJ9",
            "sk-learn-is-a-python-library-for-machine-learning",
            "task-abcdefghijklmnopqrstuvwxyz0123456789ABCD",
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\n-----END PUBLIC KEY-----",
            "-----BEGIN CERTIFICATE-----\nMIIBIjANBgkq\n-----END CERTIFICATE-----",
            "https://example.com:8080/path",
            "the bearer of this letter",
            "basic usage",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// email

#[test]
fn emails_found() {
    positives(
        Detector::Email,
        &[
            ("john.doe@example.com", "john.doe@example.com"),
            ("JOHN@EXAMPLE.COM", "JOHN@EXAMPLE.COM"),
            ("a+tag@sub.example.co.uk", "a+tag@sub.example.co.uk"),
            ("<john@example.com>", "john@example.com"),
            ("mailto:john@example.com?subject=x", "john@example.com"),
            ("\"o.connor_99@mail-server.example.org\",", "o.connor_99@mail-server.example.org"),
            ("josé@exämple.de", "josé@exämple.de"),
            ("x1@xn--80ak6aa92e.xn--p1ai", "x1@xn--80ak6aa92e.xn--p1ai"),
            ("end of sentence john@example.com.", "john@example.com"),
        ],
    );
}

#[test]
fn emails_not_found() {
    negatives(
        Detector::Email,
        &[
            "john@localhost",
            "@example.com",
            "john@",
            "john@example",
            "john@example.c",
            "john@@example.com",
            "john@-example.com",
            "name@1.2.3.4",
            "john@example.com1",
            "user at example dot com",
            "@handle on social media",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// masked forms

#[test]
fn masked_forms() {
    let cases = [
        ("contact john.doe@example.com", "contact j***@example.com"),
        ("contact a@example.com", "contact ***@example.com"),
        ("card 4242 4242 4242 4242 exp", "card **** **** **** 4242 exp"),
        ("card 4242-4242-4242-4242", "card ****-****-****-4242"),
        ("card 378282246310005", "card ***********0005"),
        ("iban DE89 3704 0044 0532 0130 00", "iban DE** **** **** **** **** **"),
        ("iban NO9386011117947", "iban NO*************"),
        ("ssn 123-45-6789", "ssn ***-**-6789"),
        ("tel +49 30 12345678", "tel +** ** ******78"),
        ("tel (555) 123-4567", "tel (***) ***-**67"),
        ("from 10.1.2.3:5432", "from 10.*.*.*:5432"),
        ("from 2001:db8::1", "from 2001:*::*"),
        ("password=hunter2 user=bob", "password=*** user=bob"),
        ("AKIAIOSFODNN7EXAMPLE", "AKIA****************"),
        (JWT, "eyJ***.***.***"),
        ("glpat-abcdefghij0123456789", "glpat-********************"),
        ("postgres://app:hunter2@db/app", "postgres://app:***@db/app"),
    ];
    for (text, want) in cases {
        assert_eq!(masked_all(text), want, "{text}");
    }
    assert_eq!(mask_whole("anything at all"), WHOLE_MASK);
    assert_eq!(mask_whole(""), "****");
}

#[test]
fn custom_detectors() {
    let m = Masker::new(
        &[Detector::CreditCard, "custom:order_id".parse().unwrap()],
        &[CustomPattern::new("order_id", r"ORD-\d{6}"), CustomPattern::new("employee", r"(?i)emp[0-9]{4}")],
    )
    .unwrap();
    let masked = m.mask("ORD-123456 by EMP0042 paid 4242424242424242");
    assert_eq!(masked.text(), "********** by ******* paid ************4242");
    assert_eq!(masked.counts().get("custom:order_id"), 1);
    assert_eq!(masked.counts().get("custom:employee"), 1);
    assert_eq!(masked.counts().get("credit_card"), 1);
    let names: Vec<String> = m.detectors().map(|d| d.to_string()).collect();
    assert_eq!(names, ["credit_card", "custom:order_id", "custom:employee"]);
}

// ---------------------------------------------------------------------------------------------
// overlaps

#[test]
fn overlaps_follow_priority() {
    let m = Masker::builtin().unwrap();

    // secret > email
    let r = m.mask("password=john@example.com");
    assert_eq!(r.text(), "password=***");
    assert_eq!(r.counts().get("secret"), 1);
    assert_eq!(r.counts().get("email"), 0);

    // iban > credit_card (the IBAN contains card-looking digit groups)
    let r = m.mask("DE89 3704 0044 0532 0130 00");
    assert_eq!(r.counts().total(), 1);
    assert_eq!(r.counts().get("iban"), 1);

    // ssn > phone (`012-34-5678` is also a national phone shape)
    let r = m.mask("012-34-5678");
    assert_eq!(r.text(), "***-**-5678");
    assert_eq!(r.counts().get("ssn"), 1);

    // secret (URL password) > email (`pw@host.example.com` looks like an address)
    let r = m.mask("mysql://root:pw@host.example.com/db");
    assert_eq!(r.text(), "mysql://root:***@host.example.com/db");

    // built-in > custom
    let m2 = Masker::new(&[Detector::CreditCard], &[CustomPattern::new("digits", r"\d{4}")]).unwrap();
    let r = m2.mask("4242424242424242 1234");
    // The card's kept last four digits are four digits too: a custom pattern that broad masks
    // them as well (nothing it would find is left).
    assert_eq!(r.text(), "**************** ****");
    assert_eq!(r.counts().get("credit_card"), 1);
    assert_eq!(r.counts().get("custom:digits"), 1, "the card's digits were counted as a card");

    // Within one detector the longer value wins: IPv6 with an embedded IPv4 address.
    let ip = Masker::new(&[Detector::Ip], &[]).unwrap();
    assert_eq!(ip.mask("::ffff:192.0.2.1").text(), "::*:*");
}

#[test]
fn several_values_in_one_text() {
    let text = "Jane <jane@example.org>, card 5555 5555 5555 4444, IBAN GB82 WEST 1234 5698 7654 32, \
                SSN 123-45-6789, tel +44 20 7946 0958, ip 192.168.0.7, token=abc123";
    let r = Masker::builtin().unwrap().mask(text);
    assert_eq!(
        r.text(),
        "Jane <j***@example.org>, card **** **** **** 4444, IBAN GB** **** **** **** **** **, \
         SSN ***-**-6789, tel +** ** **** **58, ip 192.*.*.*, token=***"
    );
    for name in ["email", "credit_card", "iban", "ssn", "phone", "ip", "secret"] {
        assert_eq!(r.counts().get(name), 1, "{name}");
    }
    assert_eq!(r.counts().total(), 7);
    // Deterministic.
    assert_eq!(Masker::builtin().unwrap().mask(text), r);
}

// ---------------------------------------------------------------------------------------------
// API

#[test]
fn no_match_borrows() {
    let m = Masker::builtin().unwrap();
    for text in ["", "hello world", "SELECT id FROM users WHERE id = 42", "12345", "ünïcødé ✓"] {
        let r = m.mask(text);
        assert!(matches!(r.as_cow(), Cow::Borrowed(s) if std::ptr::eq(*s, text)), "{text}");
        assert!(!r.is_changed());
        assert!(r.counts().is_empty());
    }
}

#[test]
fn masked_text_is_stable() {
    let m = Masker::builtin().unwrap();
    let once = m.mask("john@example.com 4242424242424242 password=x1 AKIAIOSFODNN7EXAMPLE 10.0.0.1 fe80::1");
    let twice = m.mask(once.text());
    assert_eq!(twice.text(), once.text());
    assert!(!twice.is_changed(), "{:?}", twice.counts());
}

#[test]
fn bytes() {
    let m = Masker::builtin().unwrap();
    assert!(m.mask_bytes(b"\xff\xfe john@example.com").is_none());
    let r = m.mask_bytes(b"mail john@example.com").unwrap();
    assert_eq!(r.into_bytes().as_ref(), b"mail j***@example.com");
    let r = m.mask_bytes(b"nothing").unwrap();
    assert!(matches!(r.into_bytes(), Cow::Borrowed(_)));
}

#[test]
fn debug_shows_names_only() {
    let m = Masker::new(&[Detector::Email], &[CustomPattern::new("internal", "TOPSECRET-[0-9]+")]).unwrap();
    let dbg = format!("{m:?}");
    assert!(dbg.contains("email") && dbg.contains("custom:internal"), "{dbg}");
    assert!(!dbg.contains("TOPSECRET"), "{dbg}");
}

#[test]
fn configuration_errors() {
    let err = Masker::new(&[], &[CustomPattern::new("bad", "([a-z")]).unwrap_err();
    assert!(matches!(&err, MaskError::CustomPattern { name, .. } if name == "bad"));
    assert!(err.to_string().contains("custom:bad"), "{err}");

    let err = Masker::new(&[], &[CustomPattern::new("loose", "x*")]).unwrap_err();
    assert!(err.to_string().contains("empty string"), "{err}");

    let err = Masker::new(&["custom:nope".parse().unwrap()], &[]).unwrap_err();
    assert_eq!(err, MaskError::MissingCustomPattern { name: "nope".into() });

    let err = Masker::new(&[], &[CustomPattern::new("a", "x"), CustomPattern::new("a", "y")]).unwrap_err();
    assert_eq!(err, MaskError::DuplicateCustom { name: "a".into() });

    let err = Masker::new(&[], &[CustomPattern::new("has space", "x")]).unwrap_err();
    assert!(matches!(err, MaskError::InvalidCustomName { .. }));

    let err = "cc".parse::<Detector>().unwrap_err();
    assert!(err.to_string().contains("email, credit_card, iban, ssn, phone, ip, secret, custom:NAME"), "{err}");

    let empty = Masker::new(&[], &[]).unwrap();
    assert!(empty.is_empty());
    assert!(!empty.mask("john@example.com").is_changed());
}

#[test]
fn detectors_deserialize_from_names() {
    let ds: Vec<Detector> = serde_json::from_str(r#"["email","credit_card","custom:x"]"#).unwrap();
    assert_eq!(ds, [Detector::Email, Detector::CreditCard, Detector::Custom("x".into())]);
    assert!(serde_json::from_str::<Detector>(r#""emial""#).is_err());
    assert_eq!(serde_json::to_string(&Detector::Ip).unwrap(), r#""ip""#);
}

#[test]
fn counts_merge_and_serialise() {
    let m = Masker::builtin().unwrap();
    let mut total = Counts::new();
    total += m.mask("a john@example.com b jane@example.com").counts();
    total += m.mask("10.0.0.1").counts();
    total.merge(m.mask("ann@example.com").counts());
    assert_eq!(total.get("email"), 3);
    assert_eq!(total.get("ip"), 1);
    assert_eq!(total.total(), 4);
    assert_eq!(serde_json::to_string(&total).unwrap(), r#"{"email":3,"ip":1}"#);
    let back: Counts = serde_json::from_str(r#"{"email":3,"ip":1}"#).unwrap();
    assert_eq!(back, total);
    let sum = back.clone() + total.clone();
    assert_eq!(sum.get("email"), 6);
    let mut c = Counts::new();
    c.add("phone", 0);
    assert!(c.is_empty());
}
