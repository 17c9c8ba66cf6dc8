//! One module per built-in detector. Each finds candidate values in a text and pushes them, with
//! their masked form, onto a list; the masker resolves overlaps.

pub(crate) mod card;
pub(crate) mod email;
pub(crate) mod iban;
pub(crate) mod ip;
pub(crate) mod phone;
pub(crate) mod secret;
pub(crate) mod ssn;

use std::sync::LazyLock;

use regex::Regex;

use crate::MaskError;

/// A lazily compiled built-in pattern.
pub(crate) type Lazy<T> = LazyLock<Result<T, regex::Error>>;

/// The compiled pattern behind `lazy`, or the error naming the detector (compilation of a
/// built-in pattern only fails if this crate has a bug; tests compile every one).
pub(crate) fn compiled<T>(lazy: &'static Lazy<T>, detector: &'static str) -> Result<&'static T, MaskError> {
    lazy.as_ref().map_err(|e| MaskError::Builtin { detector, message: e.to_string() })
}

/// Compiles a built-in pattern.
pub(crate) fn regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(pattern)
}
