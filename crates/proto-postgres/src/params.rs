//! Parameter values as the recording shows them: text-format values as sent, binary-format
//! values of common types decoded to their text form (so `149`, not `\x0095`), anything else as
//! hex; each capped.

/// How much of each parameter value is recorded.
pub(crate) const PARAM_RECORD_LIMIT: usize = 256;

// Type OIDs (pg_type.dat), for the binary formats decoded here.
const BOOL: u32 = 16;
const BYTEA: u32 = 17;
const NAME: u32 = 19;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const OID: u32 = 26;
const JSON: u32 = 114;
const XML: u32 = 142;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const UNKNOWN: u32 = 705;
const BPCHAR: u32 = 1042;
const VARCHAR: u32 = 1043;
const DATE: u32 = 1082;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const UUID: u32 = 2950;
const JSONB: u32 = 3802;

/// One parameter value for the recording. `type_oid` is its type as the statement declared or
/// the server described it (0 when unknown).
pub(crate) fn render(value: Option<&[u8]>, binary: bool, type_oid: u32) -> String {
    let Some(value) = value else { return "null".to_string() };
    let text = if binary { decode_binary(type_oid, value) } else { std::str::from_utf8(value).ok().map(String::from) };
    match text {
        Some(text) => cap(&text),
        None => as_hex(value),
    }
}

fn cap(text: &str) -> String {
    if text.len() <= PARAM_RECORD_LIMIT {
        return text.to_string();
    }
    let mut end = PARAM_RECORD_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

fn as_hex(value: &[u8]) -> String {
    let shown = &value[..value.len().min(PARAM_RECORD_LIMIT / 2)];
    format!("\\x{}{}", hex::encode(shown), if shown.len() < value.len() { "…" } else { "" })
}

/// The text form of a binary-format value of a type decoded here; `None` for other types or a
/// value of the wrong size (recorded as hex then).
fn decode_binary(type_oid: u32, v: &[u8]) -> Option<String> {
    let int = |v: &[u8]| -> Option<i64> {
        Some(match v.len() {
            2 => i64::from(i16::from_be_bytes(v.try_into().ok()?)),
            4 => i64::from(i32::from_be_bytes(v.try_into().ok()?)),
            8 => i64::from_be_bytes(v.try_into().ok()?),
            _ => return None,
        })
    };
    match type_oid {
        BOOL => match v {
            [0] => Some("false".into()),
            [1] => Some("true".into()),
            _ => None,
        },
        INT2 if v.len() == 2 => int(v).map(|n| n.to_string()),
        INT4 if v.len() == 4 => int(v).map(|n| n.to_string()),
        INT8 if v.len() == 8 => int(v).map(|n| n.to_string()),
        OID => Some(u32::from_be_bytes(v.try_into().ok()?).to_string()),
        FLOAT4 => Some(f32::from_be_bytes(v.try_into().ok()?).to_string()),
        FLOAT8 => Some(f64::from_be_bytes(v.try_into().ok()?).to_string()),
        TEXT | VARCHAR | BPCHAR | NAME | JSON | XML | UNKNOWN => std::str::from_utf8(v).ok().map(String::from),
        JSONB => match v.split_first() {
            Some((1, json)) => std::str::from_utf8(json).ok().map(String::from),
            _ => None,
        },
        UUID if v.len() == 16 => {
            let h = hex::encode(v);
            Some(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
        }
        DATE => {
            let days = i32::from_be_bytes(v.try_into().ok()?);
            let date = epoch().date().checked_add(time::Duration::days(i64::from(days)))?;
            Some(date.to_string())
        }
        TIMESTAMP | TIMESTAMPTZ => {
            let micros = i64::from_be_bytes(v.try_into().ok()?);
            let at = epoch().checked_add(time::Duration::microseconds(micros))?;
            let suffix = if type_oid == TIMESTAMPTZ { "+00" } else { "" };
            Some(format!("{} {}{suffix}", at.date(), at.time()))
        }
        BYTEA => None,
        _ => None,
    }
}

/// PostgreSQL's binary date and time epoch, 2000-01-01 00:00.
fn epoch() -> time::PrimitiveDateTime {
    time::macros::datetime!(2000-01-01 0:00)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_values_of_common_types_read_as_text() {
        let b = |oid, v: &[u8]| render(Some(v), true, oid);
        assert_eq!(b(INT2, &149i16.to_be_bytes()), "149");
        assert_eq!(b(INT4, &(-7i32).to_be_bytes()), "-7");
        assert_eq!(b(INT8, &9_000_000_000i64.to_be_bytes()), "9000000000");
        assert_eq!(b(BOOL, &[1]), "true");
        assert_eq!(b(FLOAT8, &1.5f64.to_be_bytes()), "1.5");
        assert_eq!(b(TEXT, "héllo".as_bytes()), "héllo");
        assert_eq!(b(JSONB, b"\x01{\"a\": 1}"), "{\"a\": 1}");
        assert_eq!(b(UUID, &[0x12; 16]), "12121212-1212-1212-1212-121212121212");
        assert_eq!(b(DATE, &0i32.to_be_bytes()), "2000-01-01");
        assert_eq!(b(DATE, &9497i32.to_be_bytes()), "2026-01-01");
        assert_eq!(b(TIMESTAMP, &1_500_000i64.to_be_bytes()), "2000-01-01 0:00:01.5");
        assert_eq!(b(TIMESTAMPTZ, &(-86_400_000_000i64).to_be_bytes()), "1999-12-31 0:00:00.0+00");
        // Unknown types, wrong sizes and invalid text fall back to hex; bytea is hex.
        assert_eq!(b(0, &[0, 0x95]), "\\x0095");
        assert_eq!(b(INT4, &[0, 0x95]), "\\x0095");
        assert_eq!(b(TEXT, &[0xff]), "\\xff");
        assert_eq!(b(BYTEA, b"ab"), "\\x6162");
        assert_eq!(b(DATE, &i32::MAX.to_be_bytes()), "\\x7fffffff", "out of range dates are hex, not a panic");
        assert_eq!(render(None, true, INT4), "null");
        assert_eq!(render(Some(b"42"), false, INT4), "42");
    }

    #[test]
    fn long_values_are_capped() {
        let long = "é".repeat(200);
        let shown = render(Some(long.as_bytes()), false, 0);
        assert!(shown.ends_with("… (400 bytes)"), "{shown}");
        assert!(shown.len() < 300);
        let bytes = vec![0xab; 1000];
        let shown = render(Some(&bytes), true, BYTEA);
        assert_eq!(shown.len(), 2 + PARAM_RECORD_LIMIT + "…".len());
    }
}

/// `numeric` in binary: digit count, weight, sign, display scale, then base-10000 digits.
pub(crate) fn decode_numeric(v: &[u8]) -> Option<String> {
    let word = |i: usize| v.get(i * 2..i * 2 + 2).map(|b| i16::from_be_bytes([b[0], b[1]]));
    let (ndigits, weight, sign, dscale) = (word(0)?, word(1)?, word(2)? as u16, word(3)?);
    if ndigits < 0 || dscale < 0 || v.len() != 8 + 2 * ndigits as usize {
        return None;
    }
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    let digit =
        |i: i32| -> i16 { if i >= 0 && i < i32::from(ndigits) { word(4 + i as usize).unwrap_or(0) } else { 0 } };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=i32::from(weight) {
            let d = digit(i);
            if !(0..10000).contains(&d) {
                return None;
            }
            if i == 0 { out.push_str(&d.to_string()) } else { out.push_str(&format!("{d:04}")) }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::new();
        let mut i = i32::from(weight) + 1;
        while frac.len() < dscale as usize {
            let d = digit(i);
            if !(0..10000).contains(&d) {
                return None;
            }
            frac.push_str(&format!("{d:04}"));
            i += 1;
        }
        out.push_str(&frac[..dscale as usize]);
    }
    Some(out)
}

/// The text form of a binary value the masking can inspect (`None`: it cannot).
pub(crate) fn binary_as_text(type_oid: u32, v: &[u8]) -> Option<String> {
    if type_oid == 1700 { decode_numeric(v) } else { decode_binary(type_oid, v) }
}

#[cfg(test)]
mod numeric_tests {
    use super::decode_numeric;

    fn numeric(ndigits: i16, weight: i16, sign: u16, dscale: i16, digits: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [ndigits, weight, sign as i16, dscale] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_read_as_postgres_prints_them() {
        assert_eq!(decode_numeric(&numeric(2, 0, 0, 2, &[19, 9000])).as_deref(), Some("19.90"));
        assert_eq!(
            decode_numeric(&numeric(4, 3, 0, 0, &[4242, 4242, 4242, 4242])).as_deref(),
            Some("4242424242424242")
        );
        assert_eq!(decode_numeric(&numeric(1, -1, 0x4000, 4, &[5])).as_deref(), Some("-0.0005"));
        assert_eq!(decode_numeric(&numeric(0, 0, 0, 0, &[])).as_deref(), Some("0"));
        assert_eq!(decode_numeric(&numeric(0, 0, 0xC000, 0, &[])).as_deref(), Some("NaN"));
        assert_eq!(decode_numeric(&numeric(2, 0, 0, 0, &[1])), None, "length mismatch");
        assert_eq!(decode_numeric(&numeric(1, 0, 0, 0, &[10000])), None, "digit out of range");
    }
}
