//! The crate's one error type.

/// Everything that can go wrong while configuring masking, and the ways a streamed JSON document
/// can be refused ([`JsonStream`](crate::JsonStream) fails closed). Masking text never fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    /// A detector name that is none of the built-in names and not `custom:NAME`.
    #[error("unknown detector `{name}`; valid detectors are {valid}", valid = crate::detector::VALID_NAMES)]
    UnknownDetector {
        /// The name as given.
        name: String,
    },
    /// A custom detector name that is empty, too long or uses characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid custom detector name `{name}`: {reason}")]
    InvalidCustomName {
        /// The name as given (without the `custom:` prefix).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A custom detector's regular expression does not compile or matches the empty string.
    #[error("detector `custom:{name}`: invalid pattern: {message}")]
    CustomPattern {
        /// The custom detector's name.
        name: String,
        /// Why the pattern was refused.
        message: String,
    },
    /// `custom:NAME` was listed among the detectors but no pattern named NAME was given.
    #[error("detector `custom:{name}` is listed but no pattern was given for it")]
    MissingCustomPattern {
        /// The custom detector's name.
        name: String,
    },
    /// Two custom patterns share a name.
    #[error("detector `custom:{name}` is defined more than once")]
    DuplicateCustom {
        /// The custom detector's name.
        name: String,
    },
    /// A `--mask-column` pattern that does not parse.
    #[error("column pattern `{pattern}`: {reason}")]
    ColumnPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A JSON path of a whole-value rule that does not parse ([`JsonPath`](crate::JsonPath)).
    #[error("JSON path `{pattern}`: {reason}")]
    JsonPath {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A streamed JSON document that is not valid JSON: a syntax error, invalid UTF-8, an
    /// unpaired surrogate, trailing characters after the value, or an end before the value is
    /// complete. The reason never quotes the document.
    #[error("invalid JSON at byte {offset}: {reason}")]
    InvalidJson {
        /// Bytes of the document consumed before the error (0-based offset of the offending byte,
        /// or the document's length when it ends early).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A streamed JSON document beyond the limits that keep streamed masking's memory bounded:
    /// a string (or number) longer than the string limit, or nesting deeper than the depth limit.
    #[error("JSON document over a limit at byte {offset}: {reason}")]
    JsonLimit {
        /// Bytes of the document consumed before the limit was hit.
        offset: u64,
        /// Which limit.
        reason: String,
    },
    /// A built-in detector's own pattern failed to compile. This is a bug in this crate.
    #[error("built-in detector `{detector}` failed to compile (a bug): {message}")]
    Builtin {
        /// The built-in detector's name.
        detector: &'static str,
        /// The compiler's message.
        message: String,
    },
}
