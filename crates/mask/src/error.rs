//! The crate's one error type.

/// Everything that can go wrong while configuring masking. Masking itself never fails.
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
    /// A built-in detector's own pattern failed to compile. This is a bug in this crate.
    #[error("built-in detector `{detector}` failed to compile (a bug): {message}")]
    Builtin {
        /// The built-in detector's name.
        detector: &'static str,
        /// The compiler's message.
        message: String,
    },
}
