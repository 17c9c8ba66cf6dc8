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
        None => hex(value),
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

fn hex(value: &[u8]) -> String {
    let hex: String = value.iter().take(PARAM_RECORD_LIMIT / 2).map(|b| format!("{b:02x}")).collect();
    format!("\\x{hex}{}", if value.len() > PARAM_RECORD_LIMIT / 2 { "…" } else { "" })
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
            let h: String = v.iter().map(|b| format!("{b:02x}")).collect();
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
