//! Detector names: the stable identifiers used in configuration, counts and messages.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::MaskError;

/// The list of valid names, as shown in error messages.
pub(crate) const VALID_NAMES: &str = "email, credit_card, iban, ssn, phone, ip, secret, custom:NAME";

const CUSTOM_PREFIX: &str = "custom:";
const CUSTOM_NAME_MAX: usize = 64;

/// One kind of sensitive value. Built-in detectors have fixed names; custom detectors are named
/// `custom:NAME` and carry a regular expression given per connection (see [`CustomPattern`]).
///
/// The variants are listed in overlap priority order: when two detectors find overlapping values,
/// the one listed first wins (see [`crate::Masker`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Detector {
    /// Credentials: private keys, access keys, tokens, JWTs, `password=` values. Name `secret`.
    Secret,
    /// Email addresses. Name `email`.
    Email,
    /// International bank account numbers. Name `iban`.
    Iban,
    /// Payment card numbers. Name `credit_card`.
    CreditCard,
    /// US social security numbers. Name `ssn`.
    Ssn,
    /// Telephone numbers. Name `phone`.
    Phone,
    /// IPv4 and IPv6 addresses. Name `ip`.
    Ip,
    /// A user-defined regular expression, named `custom:NAME`; the variant holds NAME.
    Custom(String),
}

impl Detector {
    /// Every built-in detector, in overlap priority order.
    pub const BUILTIN: [Detector; 7] = [
        Detector::Secret,
        Detector::Email,
        Detector::Iban,
        Detector::CreditCard,
        Detector::Ssn,
        Detector::Phone,
        Detector::Ip,
    ];

    /// A custom detector named `custom:NAME`, after checking NAME: 1 to 64 characters from
    /// `[A-Za-z0-9_.-]`.
    pub fn custom(name: &str) -> Result<Detector, MaskError> {
        validate_custom_name(name)?;
        Ok(Detector::Custom(name.to_owned()))
    }

    /// The stable name: `email`, `credit_card`, `iban`, `ssn`, `phone`, `ip`, `secret` or
    /// `custom:NAME`.
    pub fn name(&self) -> Cow<'static, str> {
        match self {
            Detector::Custom(name) => Cow::Owned(format!("{CUSTOM_PREFIX}{name}")),
            builtin => Cow::Borrowed(builtin.builtin_name().unwrap_or("custom")),
        }
    }

    /// The name of a built-in detector; `None` for custom detectors.
    pub fn builtin_name(&self) -> Option<&'static str> {
        Some(match self {
            Detector::Secret => "secret",
            Detector::Email => "email",
            Detector::Iban => "iban",
            Detector::CreditCard => "credit_card",
            Detector::Ssn => "ssn",
            Detector::Phone => "phone",
            Detector::Ip => "ip",
            Detector::Custom(_) => return None,
        })
    }

    /// NAME of a `custom:NAME` detector; `None` for built-in detectors.
    pub fn custom_name(&self) -> Option<&str> {
        match self {
            Detector::Custom(name) => Some(name),
            _ => None,
        }
    }

    /// Parses a detector name. Same as [`str::parse`].
    pub fn parse(name: &str) -> Result<Detector, MaskError> {
        if let Some(custom) = name.strip_prefix(CUSTOM_PREFIX) {
            return Detector::custom(custom);
        }
        Detector::BUILTIN
            .into_iter()
            .find(|d| d.builtin_name() == Some(name))
            .ok_or_else(|| MaskError::UnknownDetector { name: name.to_owned() })
    }
}

impl FromStr for Detector {
    type Err = MaskError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Detector::parse(s)
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detector::Custom(name) => write!(f, "{CUSTOM_PREFIX}{name}"),
            builtin => f.write_str(builtin.builtin_name().unwrap_or("custom")),
        }
    }
}

impl TryFrom<String> for Detector {
    type Error = MaskError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Detector::parse(&value)
    }
}

impl From<Detector> for String {
    fn from(value: Detector) -> Self {
        value.to_string()
    }
}

/// The definition of a custom detector: its NAME (as in `custom:NAME`) and its regular
/// expression (Rust `regex` syntax, no look-around or back-references; add `(?i)` for
/// case-insensitive matching). Every match is masked as `*` characters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CustomPattern {
    /// NAME, without the `custom:` prefix.
    pub name: String,
    /// The regular expression.
    pub pattern: String,
}

impl CustomPattern {
    /// A custom pattern. Nothing is checked until [`crate::Masker::new`] compiles it.
    pub fn new(name: impl Into<String>, pattern: impl Into<String>) -> CustomPattern {
        CustomPattern { name: name.into(), pattern: pattern.into() }
    }
}

pub(crate) fn validate_custom_name(name: &str) -> Result<(), MaskError> {
    let reason = if name.is_empty() {
        "the name is empty"
    } else if name.len() > CUSTOM_NAME_MAX {
        "the name is longer than 64 characters"
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
        "use only letters, digits, `_`, `-` and `.`"
    } else {
        return Ok(());
    };
    Err(MaskError::InvalidCustomName { name: name.to_owned(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Detector::BUILTIN {
            assert_eq!(d.name().parse::<Detector>().unwrap(), d);
            assert_eq!(d.to_string(), d.name());
        }
        let c: Detector = "custom:order_id".parse().unwrap();
        assert_eq!(c, Detector::Custom("order_id".into()));
        assert_eq!(c.to_string(), "custom:order_id");
        assert_eq!(c.custom_name(), Some("order_id"));
    }

    #[test]
    fn unknown_names_list_valid_ones() {
        let err = "creditcard".parse::<Detector>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("creditcard") && msg.contains("credit_card") && msg.contains("custom:NAME"), "{msg}");
        assert!(matches!("custom:".parse::<Detector>(), Err(MaskError::InvalidCustomName { .. })));
        assert!(matches!("custom:a b".parse::<Detector>(), Err(MaskError::InvalidCustomName { .. })));
        assert!("Email".parse::<Detector>().is_err());
    }
}
