//! Detectors and maskers for sensitive values in text: email addresses, payment card numbers,
//! IBANs, US social security numbers, phone numbers, IP addresses, credentials (private keys,
//! access keys, tokens, JWTs, `password=` values) and custom regular expressions. A [`Masker`]
//! is built once from a list of [`Detector`]s and rewrites any text into a masked form that keeps
//! the value's shape (`j***@example.com`, `**** **** **** 4242`) but never the value, counting
//! what it masked per detector ([`Counts`]). [`ColumnPattern`] parses the `schema.table.column`
//! patterns of whole-column rules and [`mask_whole`] masks such a value. The [`stream`] module
//! masks bodies chunk by chunk in bounded memory: JSON documents ([`JsonMasker`], with
//! [`JsonPath`] rules masking whole values) and other text ([`TextMasker`]).
//!
//! Every protocol adapter (database rows, HTTP and MCP bodies, Redis replies, terminal output)
//! uses this crate unchanged. It does no I/O and knows no protocol, policy or configuration
//! format: deciding *whether* a caller sees a value unmasked, *which* detectors apply to a
//! connection and *where* in a message text sits is the caller's business. Detectors find
//! well-formed values only; masking is not access control.
//!
//! ```
//! use gatehouse_mask::{CustomPattern, Detector, Masker};
//!
//! let masker = Masker::new(
//!     &[Detector::Email, Detector::CreditCard],
//!     &[CustomPattern::new("order_id", r"ORD-[0-9]{6}")],
//! )?;
//! let masked = masker.mask("ORD-123456: jane@example.com paid with 4242 4242 4242 4242");
//! assert_eq!(masked.text(), "**********: j***@example.com paid with **** **** **** 4242");
//! assert_eq!(masked.counts().get("email"), 1);
//! assert!(!masker.mask("nothing to see").is_changed()); // borrowed, no allocation
//! # Ok::<(), gatehouse_mask::MaskError>(())
//! ```

#![forbid(unsafe_code)]

pub mod checks;
mod column;
mod counts;
mod detect;
mod detector;
mod error;
mod forms;
mod masker;
mod scan;
pub mod stream;

pub use column::{ColumnPattern, NamePattern};
pub use counts::Counts;
pub use detector::{CustomPattern, Detector};
pub use error::MaskError;
pub use forms::WHOLE_MASK;
pub use masker::{Finding, Masked, Masker};
pub use stream::{JsonMasker, JsonPath, JsonStream, MaskTally, Step, TextMasker, TextStream};

/// Builds a masker from a connection's detector list as it is written in settings: built-in
/// names (`email`, `credit_card`, …) and custom detectors as `custom:NAME=REGEX` (everything
/// after the first `=` is the pattern). A `custom:NAME` without a pattern is an error.
pub fn masker_from_settings(entries: &[String]) -> Result<Masker, MaskError> {
    let mut detectors = Vec::with_capacity(entries.len());
    let mut custom = Vec::new();
    for entry in entries {
        match entry.strip_prefix("custom:").and_then(|rest| rest.split_once('=')) {
            Some((name, pattern)) => {
                detectors.push(Detector::custom(name)?);
                custom.push(CustomPattern::new(name, pattern));
            }
            None => detectors.push(Detector::parse(entry)?),
        }
    }
    Masker::new(&detectors, &custom)
}

/// Masks a whole value whatever its content, for column rules: always [`WHOLE_MASK`] (`****`),
/// so neither the value nor its length (nor whether it was empty) shows.
pub fn mask_whole(_value: &str) -> String {
    WHOLE_MASK.to_owned()
}

#[cfg(test)]
mod settings_tests {
    use super::*;

    #[test]
    fn settings_name_builtins_and_custom_patterns() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let m = masker_from_settings(&list(&["email", "custom:order=ORD-[0-9]{6}"])).unwrap();
        let masked = m.mask("ORD-123456 for jane@example.com");
        assert_eq!(masked.text(), "********** for j***@example.com");
        assert_eq!(masked.counts().get("custom:order"), 1);
        assert!(masker_from_settings(&list(&["custom:order"])).is_err(), "a custom detector needs a pattern");
        assert!(masker_from_settings(&list(&["custom:order=("])).is_err(), "the pattern must compile");
        assert!(masker_from_settings(&list(&["emails"])).is_err());
    }
}
