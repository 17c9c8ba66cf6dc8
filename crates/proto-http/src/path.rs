//! Request paths, normalised before they are decided and forwarded, so the path policy decides
//! is the path the upstream serves. `/CONNECTION/rest/of/path`: dot segments (`.`, `..`, also
//! percent-encoded) are resolved, empty segments (`//`) dropped; an encoded `/` or `\`, a
//! backslash, a NUL or a control character in a segment, and a `..` that would leave the
//! connection are refused.

use percent_encoding::percent_decode_str;

/// A request path split into its connection and the normalised rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedPath {
    pub connection: String,
    /// The rest, decoded, one entry per segment (for policy).
    pub segments: Vec<String>,
    /// The rest as the caller encoded it, normalised, with its leading `/` (for forwarding).
    pub encoded: String,
}

impl RoutedPath {
    /// The rest, decoded, with its leading `/`: what policy's `context.path` holds.
    pub fn decoded(&self) -> String {
        let mut out = String::with_capacity(self.encoded.len());
        for s in &self.segments {
            out.push('/');
            out.push_str(s);
        }
        if out.is_empty() || self.encoded.ends_with('/') && !out.ends_with('/') {
            out.push('/');
        }
        out
    }
}

/// Why a path is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with /CONNECTION/")]
    NoConnection,
    #[error("the path leaves its connection with \"..\"")]
    Escapes,
    #[error("the path has an encoded \"/\" or \"\\\" in a segment, which servers read differently")]
    EncodedSeparator,
    #[error("the path has a backslash, a NUL or a control character")]
    BadCharacter,
    #[error("the path is not valid percent-encoded UTF-8")]
    BadEncoding,
}

/// Splits and normalises a request's path (without its query).
pub fn route(raw: &str) -> Result<RoutedPath, PathError> {
    let Some(rest) = raw.strip_prefix('/') else { return Err(PathError::NoConnection) };
    let trailing = raw.len() > 1 && raw.ends_with('/');
    // (decoded, as encoded)
    let mut kept: Vec<(String, &str)> = Vec::new();
    for segment in rest.split('/') {
        let lower = segment.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") {
            return Err(PathError::EncodedSeparator);
        }
        let decoded = percent_decode_str(segment).decode_utf8().map_err(|_| PathError::BadEncoding)?;
        if decoded.chars().any(|c| c == '\\' || c.is_control()) {
            return Err(PathError::BadCharacter);
        }
        match decoded.as_ref() {
            "" | "." => {}
            ".." => {
                // The first segment is the connection: a `..` that pops it leaves the connection.
                if kept.len() <= 1 {
                    return Err(PathError::Escapes);
                }
                kept.pop();
            }
            _ => kept.push((decoded.into_owned(), segment)),
        }
    }
    let mut iter = kept.into_iter();
    let Some((connection, _)) = iter.next() else { return Err(PathError::NoConnection) };
    let mut segments = Vec::new();
    let mut encoded = String::new();
    for (decoded, raw) in iter {
        encoded.push('/');
        encoded.push_str(raw);
        segments.push(decoded);
    }
    if encoded.is_empty() || trailing {
        encoded.push('/');
    }
    Ok(RoutedPath { connection, segments, encoded })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, String, String) {
        let r = route(raw).unwrap();
        let decoded = r.decoded();
        (r.connection, r.encoded, decoded)
    }

    #[test]
    fn normal_paths_keep_their_encoding() {
        assert_eq!(ok("/api/v1/invoices"), ("api".into(), "/v1/invoices".into(), "/v1/invoices".into()));
        assert_eq!(ok("/api/v1/invoices/"), ("api".into(), "/v1/invoices/".into(), "/v1/invoices/".into()));
        assert_eq!(ok("/api"), ("api".into(), "/".into(), "/".into()));
        assert_eq!(ok("/api/"), ("api".into(), "/".into(), "/".into()));
        assert_eq!(ok("/api/a%20b/c"), ("api".into(), "/a%20b/c".into(), "/a b/c".into()));
    }

    #[test]
    fn dot_segments_and_empty_segments_are_resolved() {
        assert_eq!(ok("/api/v1/public/../admin").1, "/v1/admin");
        assert_eq!(ok("/api/v1/./x//y").1, "/v1/x/y");
        assert_eq!(ok("/api/v1/public/%2e%2e/admin").1, "/v1/admin");
        assert_eq!(ok("/api/v1/public/%2E%2E/admin").1, "/v1/admin");
        assert_eq!(ok("/api/v1/public/.%2e/admin").1, "/v1/admin");
        assert_eq!(ok("//api//v1").0, "api");
    }

    #[test]
    fn escapes_and_ambiguous_encodings_are_refused() {
        assert_eq!(route("/api/.."), Err(PathError::Escapes));
        assert_eq!(route("/api/v1/../../other/x"), Err(PathError::Escapes));
        assert_eq!(route("/api/%2e%2e/other"), Err(PathError::Escapes));
        assert_eq!(route("/api/v1%2Fadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(route("/api/v1%2fadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(route("/api/v1%5cadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(route("/api/v1\\admin"), Err(PathError::BadCharacter));
        assert_eq!(route("/api/v1%00"), Err(PathError::BadCharacter));
        assert_eq!(route("/api/%ff"), Err(PathError::BadEncoding));
        assert_eq!(route("/"), Err(PathError::NoConnection));
        assert_eq!(route(""), Err(PathError::NoConnection));
        assert_eq!(route("/.."), Err(PathError::Escapes));
    }
}
