//! Streamed masking: JSON documents and text bodies pushed in chunks split anywhere give the same
//! output and counts as in one chunk; JSON paths parse and match; invalid JSON and documents over
//! the limits are refused.

#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test

use std::sync::Arc;

use gatehouse_mask::{Counts, JsonMasker, JsonPath, MaskError, MaskTally, Masker, Step, TextMasker};
use proptest::prelude::*;

fn builtin() -> Arc<Masker> {
    Arc::new(Masker::builtin().unwrap())
}

fn rules(paths: &[&str]) -> Vec<JsonPath> {
    paths.iter().map(|p| JsonPath::parse(p).unwrap()).collect()
}

/// `doc` pushed in the chunks `doc[..cuts[0]]`, `doc[cuts[0]..cuts[1]]`, …
fn json_chunked(m: &JsonMasker, doc: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, MaskTally), MaskError> {
    let mut stream = m.stream();
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain([doc.len()].iter()) {
        stream.push(&doc[from..cut], &mut out)?;
        from = cut;
    }
    let tally = stream.finish(&mut out)?;
    Ok((out, tally))
}

fn text_chunked(m: &TextMasker, text: &[u8], cuts: &[usize]) -> (Vec<u8>, Counts) {
    let mut stream = m.stream();
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain([text.len()].iter()) {
        stream.push(&text[from..cut], &mut out);
        from = cut;
    }
    let counts = stream.finish(&mut out);
    (out, counts)
}

fn s(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

fn parses(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("output is not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// A masker for string values with the rules used by the chunking tests.
fn json_masker() -> JsonMasker {
    JsonMasker::new(Some(builtin()), rules(&["$.customer.address", "$.items[*].card", "$..ssn", "$['odd key']"]))
}

const DOCS: &[&str] = &[
    r#"{"customer": {"name": "Jane", "email": "jane.doe@example.com",
   "address": {"street": "1 Main St", "zip": 12345, "tags": ["a", {"b": null}]}},
 "items": [{"card": "4242 4242 4242 4242", "note": "paid by 5555555555554444"},
   {"card": 4242424242424242, "qty": -1.5e+3}],
 "ssn": "078-05-1120", "deep": [[{"ssn": {"x": "\"quoted\""}}]], "odd key": true, "ok": false}"#,
    r#"[ "caf\u00e9 jan\u00e9@example.com", "say \"hi\" to jane@example.com\n", "\ud83d\ude00 x@example.org",
  "plain \u00e9\t\\ \/" , {"k\u00e9y": "v", "mail@example.com": "key untouched"}, 0, -0.0, 1E9, true, null, "" ]"#,
    "\"jane@example.com\"",
    "4242424242424242",
    "  {\"odd key\": [1, 2, {\"a\": \"4242-4242-4242-4242\"}], \"ssn\": 5, \"b\": \"é😀 jane@example.com\"}  \n",
];

#[test]
fn json_masks_string_values_not_keys() {
    let m = JsonMasker::new(Some(builtin()), Vec::new());
    let doc = concat!(
        r#"{"jane@example.com": {"list": ["a", "4242 4242 4242 4242", "#,
        r#"{"mail": "Mail bob@example.org now"}]}, "n": 1}"#
    )
    .as_bytes();
    let (out, tally) = m.mask(doc).unwrap();
    assert_eq!(
        s(&out),
        r#"{"jane@example.com": {"list": ["a", "**** **** **** 4242", {"mail": "Mail b***@example.org now"}]}, "n": 1}"#
    );
    assert_eq!(tally.get("$['jane@example.com'].list[*]").unwrap().get("credit_card"), 1);
    assert_eq!(tally.get("$['jane@example.com'].list[*].mail").unwrap().get("email"), 1);
    assert_eq!(tally.total(), 2);
    assert_eq!(tally.by_detector().get("email"), 1);
    // Serialised like `Counts`: location → detector → count.
    let json = serde_json::to_value(&tally).unwrap();
    assert_eq!(json["$['jane@example.com'].list[*]"]["credit_card"], 1);
}

#[test]
fn json_rules_mask_whole_values() {
    let doc = DOCS[0].as_bytes();
    let (out, tally) = json_masker().mask(doc).unwrap();
    let v = parses(&out);
    assert_eq!(v["customer"]["address"], "****");
    assert_eq!(v["customer"]["email"], "j***@example.com");
    assert_eq!(v["customer"]["name"], "Jane");
    assert_eq!(v["items"][0]["card"], "****");
    assert_eq!(v["items"][1]["card"], "****", "a number is masked whole too");
    assert_eq!(v["items"][0]["note"], "paid by ************4444");
    assert_eq!(v["items"][1]["qty"], -1500.0);
    assert_eq!(v["ssn"], "****");
    assert_eq!(v["deep"][0][0]["ssn"], "****", "`..` reaches any depth");
    assert_eq!(v["odd key"], "****");
    assert_eq!(v["ok"], false);
    let text = s(&out);
    for gone in ["1 Main St", "12345", "tags", "quoted", "078-05-1120"] {
        assert!(!text.contains(gone), "{gone} must be skipped: {text}");
    }
    assert_eq!(tally.get("$.items[*].card").unwrap().get("rule"), 2);
    assert_eq!(tally.get("$.customer.address").unwrap().get("rule"), 1);
    assert_eq!(tally.get("$.deep[*][*].ssn").unwrap().get("rule"), 1);
    assert_eq!(tally.get("$['odd key']").unwrap().get("rule"), 1);
    assert_eq!(tally.get("$.items[*].note").unwrap().get("credit_card"), 1);
    assert_eq!(tally.by_detector().get(MaskTally::RULE), 6);

    // Without a masker only the rules apply, and the rest is written byte for byte.
    let rules_only = JsonMasker::new(None, rules(&["$.a.*", "$[*]"]));
    let (out, tally) = rules_only.mask(br#"{"a": {"x": 1, "y": [2]}, "b": "jane@example.com"}"#).unwrap();
    assert_eq!(s(&out), r#"{"a": "****", "b": "****"}"#, "`$[*]` names every child of the root");
    assert_eq!(tally.get("$.a").unwrap().get("rule"), 1, "`$.a.*` is not checked inside a masked value");
    assert_eq!(tally.total(), 2);
    let (out, _) = JsonMasker::new(None, rules(&["$.a.*"]))
        .mask(br#"{"a": {"x": 1, "y": [2, 3]}, "b": "jane@example.com"}"#)
        .unwrap();
    assert_eq!(s(&out), r#"{"a": {"x": "****", "y": "****"}, "b": "jane@example.com"}"#);
    let (out, _) = JsonMasker::new(None, rules(&["$"])).mask(b" [1, {\"a\": 2}] ").unwrap();
    assert_eq!(s(&out), " \"****\" ");
}

#[test]
fn json_escapes_and_unicode() {
    let m = JsonMasker::new(Some(builtin()), rules(&["$.name"]));
    let doc = concat!(
        r#"{"na\u006de": "secret", "a": "jan\u00e9@example.com", "b": "say \"jane@example.com\"\n", "#,
        r#""c": "\ud83d\ude00 jane@example.com", "d": "caf\u00e9 \"x\" \ud83d\ude00", "e": "é😀 jane@example.com"}"#
    );
    let (out, tally) = m.mask(doc.as_bytes()).unwrap();
    let v = parses(&out);
    assert_eq!(v["name"], "****", "rules match member names as decoded");
    assert_eq!(v["a"], "j***@example.com");
    assert_eq!(v["b"], "say \"j***@example.com\"\n");
    assert_eq!(v["c"], "😀 j***@example.com");
    assert_eq!(v["e"], "é😀 j***@example.com");
    // A string with escapes that nothing changes is written as it came.
    assert!(s(&out).contains(r#""d": "caf\u00e9 \"x\" \ud83d\ude00""#), "{}", s(&out));
    assert!(s(&out).contains(r#""b": "say \"j***@example.com\"\n""#), "{}", s(&out));
    assert_eq!(tally.by_detector().get("email"), 4);
}

#[test]
fn json_without_values_is_written_byte_for_byte() {
    let m = JsonMasker::new(Some(builtin()), rules(&["$.nothing"]));
    let doc = b"\r\n{ \"a\" :[ 1 ,2.50, -0e-0, \"x\\ty\" , {} , [ ] ],\t\"b\":null }\n";
    let (out, tally) = m.mask(doc).unwrap();
    assert_eq!(out, doc);
    assert!(tally.is_empty());
}

/// Every split of every document into 2 chunks, every split into 3 chunks with a middle chunk of
/// 1 to 12 bytes, and 1-byte chunks give the output and tally of one chunk, and valid JSON.
#[test]
fn json_chunking_invariance() {
    let m = json_masker();
    for doc in DOCS {
        let doc = doc.as_bytes();
        let (whole, tally) = m.mask(doc).unwrap();
        parses(&whole);
        for i in 0..=doc.len() {
            assert_eq!(json_chunked(&m, doc, &[i]).unwrap(), (whole.clone(), tally.clone()), "split at {i}");
            for j in (i + 1..=doc.len()).take(12) {
                assert_eq!(json_chunked(&m, doc, &[i, j]).unwrap(), (whole.clone(), tally.clone()), "split {i},{j}");
            }
        }
        let bytes: Vec<usize> = (1..doc.len()).collect();
        assert_eq!(json_chunked(&m, doc, &bytes).unwrap(), (whole.clone(), tally.clone()), "1-byte chunks");
    }
}

fn cuts(len: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0..=len, 0..8).prop_map(|mut v| {
        v.sort_unstable();
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn json_random_splits(doc in 0..DOCS.len(), raw in cuts(400)) {
        let m = json_masker();
        let doc = DOCS[doc].as_bytes();
        let cuts: Vec<usize> = raw.into_iter().map(|c| c.min(doc.len())).collect();
        prop_assert_eq!(json_chunked(&m, doc, &cuts).unwrap(), m.mask(doc).unwrap());
    }
}

/// String contents mixing the plain ASCII the lexer skips in runs with every byte that needs its
/// attention: quotes, backslashes, escapes, control characters, UTF-8 (valid and not).
fn string_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => "[a-z0-9 .@_-]{0,12}".prop_map(String::into_bytes),
        1 => prop::sample::select(vec![
            &b"\\"[..], b"\\\"", b"\\n", b"\\u00e9", b"\\ud83d\\ude00", b"\\ud83d", b"\\x", b"\"",
            b"\n", b"\x01", b"\x7f", "é".as_bytes(), "😀".as_bytes(), b"\xc3", b"\xe2\x82", b"\xff", b"\xed\xa0\x80",
        ])
        .prop_map(<[u8]>::to_vec),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever a string holds, the streamed masker accepts the document exactly when serde_json
    /// does, in any chunking, and without a masker writes it back byte for byte.
    #[test]
    fn json_strings_are_validated_like_serde(content in string_bytes(), raw in cuts(40)) {
        let doc = [&b"{\"k\": [\""[..], &content, b"\"]}"].concat();
        let cuts: Vec<usize> = raw.into_iter().map(|c| c.min(doc.len())).collect();
        let plain = JsonMasker::new(None, Vec::new());
        let ours = json_chunked(&plain, &doc, &cuts);
        let serde = serde_json::from_slice::<serde_json::Value>(&doc);
        prop_assert_eq!(ours.is_ok(), serde.is_ok(), "{:?}: ours {:?}, serde {:?}", String::from_utf8_lossy(&doc), ours, serde);
        if let Ok((out, _)) = ours {
            prop_assert_eq!(out, doc);
        }
    }
}

fn json_error(m: &JsonMasker, doc: &[u8]) -> MaskError {
    match m.mask(doc) {
        Ok((out, _)) => panic!("{:?} should be refused, got {:?}", String::from_utf8_lossy(doc), s(&out)),
        Err(e) => e,
    }
}

#[test]
fn json_invalid_documents_are_refused() {
    let m = JsonMasker::new(Some(builtin()), rules(&["$.skip"]));
    let invalid: &[&[u8]] = &[
        b"",
        b"   ",
        b"{",
        b"[1, 2",
        b"\"open",
        b"\"escape \\",
        b"\"\\u12",
        b"-",
        b"1.",
        b"1e+",
        b"tru",
        b"{\"a\": 1}}",
        b"{\"a\": 1} x",
        b"[1] [2]",
        b"01",
        b"[1,]",
        b"{,}",
        b"{\"a\" 1}",
        b"{\"a\": 1,}",
        b"{1: 2}",
        b"[1 2]",
        b"[True]",
        b"'single'",
        b"\"tab\tinside\"",
        b"\"bad \\x escape\"",
        b"\"lone \\ud83d high\"",
        b"\"lone \\ude00 low\"",
        b"\"\\ud83d\\u0041 not low\"",
        b"\"invalid \xff utf-8\"",
        b"\"overlong \xc0\xaf\"",
        b"\"surrogate \xed\xa0\x80 in utf-8\"",
        b"\xef\xbb\xbf{}",
        b"{\"skip\": {\"a\": [1, }]}",
        b"{\"skip\": \"\\q\"}",
    ];
    for doc in invalid {
        assert!(matches!(json_error(&m, doc), MaskError::InvalidJson { .. }), "{:?}", String::from_utf8_lossy(doc));
    }
    match json_error(&m, b"[1, 2] garbage") {
        MaskError::InvalidJson { offset, reason } => {
            assert_eq!(offset, 7);
            assert!(reason.contains("after the JSON value"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    match json_error(&m, b"{\"a\": [1") {
        MaskError::InvalidJson { offset, reason } => {
            assert_eq!(offset, 8);
            assert!(reason.contains("ends before"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    // An error sticks: the stream refuses everything after it.
    let mut stream = m.stream();
    let mut out = Vec::new();
    assert!(stream.push(b"[1,,", &mut out).is_err());
    assert!(stream.push(b"2]", &mut out).is_err());
    assert!(stream.finish(&mut out).is_err());
}

#[test]
fn json_limits() {
    let m = JsonMasker::new(Some(builtin()), rules(&["$.skipped"])).with_max_string(16);
    assert!(m.mask(br#"["0123456789abcdef", {"0123456789abcdef": 1234567890123456}]"#).is_ok());
    assert!(m.mask(br#"["\"\"\"\"\"\"\"\""]"#).is_ok(), "16 bytes as written");
    for doc in [
        &br#"["0123456789abcdefg"]"#[..],
        br#"{"0123456789abcdefg": 1}"#,
        b"[12345678901234567]",
        br#"["\"\"\"\"\"\"\"\"x"]"#,
    ] {
        match json_error(&m, doc) {
            MaskError::JsonLimit { reason, .. } => assert!(reason.contains("longer than 16 bytes"), "{reason}"),
            e => panic!("{e:?}"),
        }
    }
    // Split across chunks, the limit still holds.
    let long = br#"["0123456789abcdefg"]"#;
    assert!(matches!(json_chunked(&m, long, &[5, 10, 15]), Err(MaskError::JsonLimit { .. })));
    // A value masked whole is skipped, not held: no limit inside it.
    let (out, _) = m.mask(br#"{"skipped": ["a string much longer than sixteen bytes"], "b": 1}"#).unwrap();
    assert_eq!(s(&out), r#"{"skipped": "****", "b": 1}"#);

    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let m = JsonMasker::new(None, Vec::new());
    assert!(m.mask(deep(JsonMasker::DEFAULT_MAX_DEPTH).as_bytes()).is_ok());
    match json_error(&m, deep(JsonMasker::DEFAULT_MAX_DEPTH + 1).as_bytes()) {
        MaskError::JsonLimit { offset, reason } => {
            assert_eq!(offset, 256);
            assert!(reason.contains("deeper than 256"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    let shallow = JsonMasker::new(None, Vec::new()).with_max_depth(2);
    assert!(shallow.mask(br#"{"a": [1]}"#).is_ok());
    assert!(matches!(json_error(&shallow, br#"{"a": [{}]}"#), MaskError::JsonLimit { .. }));
}

#[test]
fn json_paths_parse() {
    for ok in [
        "$",
        "$.customer.email",
        "$.items[*].card",
        "$[*].ssn",
        "$.a.*",
        "$['odd key']",
        "$[\"dq\"]",
        "$..email",
        "$..*",
        "$..['a b']",
        "$.x-request-id",
        "$.ünï_cödé",
        "$['']",
    ] {
        let p = JsonPath::parse(ok).unwrap();
        assert_eq!(JsonPath::parse(&p.to_string()).unwrap(), p, "{ok} prints back as {p}");
    }
    let cases = [
        ("", "starts with `$`"),
        ("customer.email", "starts with `$`"),
        ("$.", "ends after `.`"),
        ("$..", "ends after `..`"),
        ("$...a", "three dots"),
        ("$.a b", "unexpected ' '"),
        ("$.a[0]", "indices"),
        ("$.a[-1]", "indices"),
        ("$.a[1:2]", "indices"),
        ("$.a[?(@.x)]", "filters"),
        ("$.a[x]", "a bracket holds"),
        ("$.a['x'", "followed by `]`"),
        ("$.a['x", "not closed"),
        ("$.a['x\\n']", "escapes only"),
        ("$.['a']", "without the dot"),
        ("$.a.b*", "unexpected `*`"),
        ("$.@", "unexpected `@`"),
        ("$a", "unexpected `a`"),
        (" $.a", "starts with `$`"),
    ];
    for (pattern, why) in cases {
        match JsonPath::parse(pattern) {
            Err(e @ MaskError::JsonPath { .. }) => {
                let message = e.to_string();
                assert!(message.contains(&format!("`{pattern}`")), "{message}");
                assert!(message.contains(why), "{pattern}: {message}");
            }
            other => panic!("{pattern:?} should not parse: {other:?}"),
        }
    }
    // Paths serialise as their text.
    let p: JsonPath = serde_json::from_str(r#""$.items[*].card""#).unwrap();
    assert_eq!(serde_json::to_string(&p).unwrap(), r#""$.items[*].card""#);
    assert!(serde_json::from_str::<JsonPath>(r#""$.a[0]""#).is_err());
}

#[test]
fn json_paths_match() {
    let k = |s: &str| Step::Key(s.to_owned());
    let p = |s: &str| JsonPath::parse(s).unwrap();
    assert!(p("$").matches(&[]));
    assert!(!p("$").matches(&[k("a")]));
    assert!(p("$.customer.email").matches(&[k("customer"), k("email")]));
    assert!(!p("$.customer.email").matches(&[k("customer")]));
    assert!(!p("$.customer.email").matches(&[k("customer"), k("email"), k("x")]));
    assert!(!p("$.customer.email").matches(&[k("Customer"), k("email")]), "names are case-sensitive");
    assert!(p("$.items[*].card").matches(&[k("items"), Step::Index, k("card")]));
    assert!(p("$.items[*].card").matches(&[k("items"), k("id1"), k("card")]), "`[*]` is any child");
    assert!(!p("$.items[*].card").matches(&[k("items"), k("card")]));
    assert!(p("$[*].ssn").matches(&[Step::Index, k("ssn")]));
    assert!(p("$.a.*").matches(&[k("a"), k("x")]));
    assert!(p("$.a.*").matches(&[k("a"), Step::Index]));
    assert!(!p("$.a.*").matches(&[k("a")]));
    assert!(p("$['odd key']").matches(&[k("odd key")]));
    assert!(p("$..email").matches(&[k("email")]));
    assert!(p("$..email").matches(&[k("a"), Step::Index, k("b"), k("email")]));
    assert!(!p("$..email").matches(&[k("email"), k("x")]));
    assert!(!p("$..email").matches(&[]));
    assert!(p("$.a..b[*]").matches(&[k("a"), k("x"), k("b"), Step::Index]));
    assert!(!p("$.a..b[*]").matches(&[k("x"), k("a"), k("b"), Step::Index]));
}

/// Texts whose values span chunk boundaries wherever the text is cut.
const TEXTS: &[&str] = &[
    concat!(
        "Dear Jane,\nyour card 4242 4242 4242 4242 was charged; ",
        "reply to jane.doe@example.com or call +49 30 12345678.\n",
        "SSN 078-05-1120, IBAN DE89 3704 0044 0532 0130 00, from 10.1.2.3\n",
    ),
    "no newline at the end: token=s3cr3t-value and jane@example.com 5555555555554444",
    concat!(
        "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1234567890abcdef\nAAAAB3NzaC1yc2EAAAADAQABAAAB\n",
        "-----END RSA PRIVATE KEY-----\nafter bob@example.org\n",
    ),
    "ünïcödé 😀 jane@example.com — über 4242-4242-4242-4242\r\nBearer abcdefghijklmnopqrstuvwxyz123456\r\n",
];

#[test]
fn text_value_split_across_chunks_is_masked() {
    let m = TextMasker::new(builtin());
    let text = b"paid with 4242 4242 4242 4242 by jane@example.com";
    for i in 0..=text.len() {
        let (out, counts) = text_chunked(&m, text, &[i]);
        assert_eq!(s(&out), "paid with **** **** **** 4242 by j***@example.com", "split at {i}");
        assert_eq!(counts.get("credit_card"), 1);
        assert_eq!(counts.get("email"), 1);
    }
}

#[test]
fn text_chunking_equals_whole_masking() {
    let masker = builtin();
    let m = TextMasker::new(masker.clone());
    for text in TEXTS {
        let whole = masker.mask(text);
        let bytes = text.as_bytes();
        for i in 0..=bytes.len() {
            let (out, counts) = text_chunked(&m, bytes, &[i]);
            assert_eq!(s(&out), whole.text(), "split at {i}");
            assert_eq!(&counts, whole.counts(), "split at {i}");
        }
        let every: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(s(&text_chunked(&m, bytes, &every).0), whole.text(), "1-byte chunks");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn text_random_splits(text in 0..TEXTS.len(), raw in cuts(300)) {
        let masker = builtin();
        let bytes = TEXTS[text].as_bytes();
        let cuts: Vec<usize> = raw.into_iter().map(|c| c.min(bytes.len())).collect();
        let (out, counts) = text_chunked(&TextMasker::new(masker.clone()), bytes, &cuts);
        let whole = masker.mask(TEXTS[text]);
        prop_assert_eq!(s(&out), whole.text());
        prop_assert_eq!(&counts, whole.counts());
    }

    /// Lines longer than the window are cut at safe boundaries: no value is cut, and the output
    /// is that of masking the whole text.
    #[test]
    fn text_long_lines(seed in proptest::collection::vec(0usize..12, 500..800), raw in cuts(20_000)) {
        let words = [
            "lorem", "ipsum 12", "jane.doe@example.com", "4242 4242 4242 4242", "+49 30 12345678",
            "10.1.2.3", "token=abc123def", "ünïcödé😀", "password = hunter2hunter2",
            "Authorization: Bearer abcdefghijklmnop1234", "postgres://user:pw1234@db/x", "dolor sit amet,",
        ];
        let text = seed.iter().map(|&i| words[i]).collect::<Vec<_>>().join(" ");
        let masker = builtin();
        let m = TextMasker::new(masker.clone()).with_window(TextMasker::MIN_WINDOW);
        let cuts: Vec<usize> = raw.into_iter().map(|c| c.min(text.len())).collect();
        let (out, counts) = text_chunked(&m, text.as_bytes(), &cuts);
        let whole = masker.mask(&text);
        prop_assert_eq!(s(&out), whole.text());
        prop_assert_eq!(&counts, whole.counts());
    }
}

#[test]
fn text_is_written_before_the_end() {
    let m = TextMasker::new(builtin()).with_window(TextMasker::MIN_WINDOW);
    let mut stream = m.stream();
    let mut out = Vec::new();
    stream.push(b"first line jane@example.com\nsecond ", &mut out);
    assert_eq!(s(&out), "first line j***@example.com\n", "up to the last line break");
    out.clear();
    for _ in 0..1000 {
        stream.push(b"word word word ", &mut out);
    }
    let held = "second ".len() + 15_000 - out.len();
    assert!(out.len() > 10_000, "a long line is written once the window is full");
    assert!((TextMasker::HOLD..TextMasker::MIN_WINDOW).contains(&held), "{held} bytes held");
    let counts = stream.finish(&mut out);
    assert_eq!(counts.get("email"), 1);
}

#[test]
fn text_private_key_longer_than_the_window() {
    let masker = builtin();
    let m = TextMasker::new(masker.clone()).with_window(TextMasker::MIN_WINDOW);
    let mut text = String::from("key:\n-----BEGIN PRIVATE KEY-----\n");
    for i in 0..400 {
        text.push_str(&format!("MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC{i:05}\n"));
    }
    text.push_str("-----END PRIVATE KEY-----\nafter jane@example.com\n");
    assert!(text.len() > 4 * TextMasker::MIN_WINDOW);
    for chunk in [1, 7, 100, 5000] {
        let cuts: Vec<usize> = (chunk..text.len()).step_by(chunk).collect();
        let (out, counts) = text_chunked(&m, text.as_bytes(), &cuts);
        let out = s(&out);
        assert!(!out.contains("MIIE"), "no key material: {out}");
        assert!(out.starts_with("key:\n-----BEGIN PRIVATE KEY-----\n[masked]"), "{out}");
        assert!(out.ends_with("-----END PRIVATE KEY-----\nafter j***@example.com\n"), "{out}");
        assert_eq!(counts.get("secret"), 1);
        assert_eq!(counts.get("email"), 1);
    }
    // Shorter than the window, the block is masked as a whole, as by the masker.
    let short = TEXTS[2];
    let (out, _) = text_chunked(&m, short.as_bytes(), &[40, 60]);
    assert_eq!(s(&out), masker.mask(short).text());
    assert!(!s(&out).contains("MIIE"));
}

#[test]
fn text_invalid_utf8_is_passed_through() {
    let m = TextMasker::new(builtin());
    let text = b"caf\xe9 jane@example.com \xff\xfe 4242 4242 4242 4242\n\xf0\x9f\x98\x80 ok";
    // A character split across chunks is not invalid.
    for i in 0..=text.len() {
        let mut stream = m.stream();
        let mut out = Vec::new();
        stream.push(&text[..i], &mut out);
        stream.push(&text[i..], &mut out);
        assert!(stream.saw_invalid_utf8());
        let counts = stream.finish(&mut out);
        assert_eq!(out, b"caf\xe9 j***@example.com \xff\xfe **** **** **** 4242\n\xf0\x9f\x98\x80 ok", "split at {i}");
        assert_eq!(counts.total(), 2);
    }
    let mut stream = m.stream();
    let mut out = Vec::new();
    stream.push(b"\xf0\x9f", &mut out);
    stream.push(b"\x98\x80\n", &mut out);
    assert!(!stream.saw_invalid_utf8());
    assert_eq!(out, "😀\n".as_bytes());
}
