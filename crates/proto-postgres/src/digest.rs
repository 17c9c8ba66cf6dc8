//! Request digests: what makes two requests "the same request" for a review's grant. A
//! statement's digest covers its exact text; with parameters, their values and formats as sent
//! are added, so a grant for one set of values never covers another.

use ring::digest::{Context, SHA256};

/// The digest of a statement's exact text.
pub(crate) fn statement(text: &str) -> String {
    let mut ctx = Context::new(&SHA256);
    ctx.update(b"postgres statement\0");
    ctx.update(text.as_bytes());
    to_hex(&ctx.finish())
}

/// The digest of a statement run with parameter values (`values` from [`Values::finish`]).
pub(crate) fn with_values(statement: &str, values: &str) -> String {
    let mut ctx = Context::new(&SHA256);
    ctx.update(b"postgres statement with values\0");
    ctx.update(statement.as_bytes());
    ctx.update(b"\0");
    ctx.update(values.as_bytes());
    to_hex(&ctx.finish())
}

/// A digest in lowercase hex, written in one pass (`hex::encode` goes character by character,
/// which showed in profiles of the data path).
fn to_hex(digest: &ring::digest::Digest) -> String {
    let bytes = digest.as_ref();
    let mut out = vec![0u8; bytes.len() * 2];
    match hex::encode_to_slice(bytes, &mut out) {
        Ok(()) => String::from_utf8(out).unwrap_or_else(|_| hex::encode(bytes)),
        Err(_) => hex::encode(bytes),
    }
}

/// Parameter values as a `Bind` sends them, digested one by one.
pub(crate) struct Values {
    ctx: Context,
    count: usize,
}

impl Values {
    pub fn new() -> Values {
        Values { ctx: Context::new(&SHA256), count: 0 }
    }

    /// One value (`None`: SQL NULL), in text or binary format.
    pub fn push(&mut self, value: Option<&[u8]>, binary: bool) {
        self.count += 1;
        self.ctx.update(&[u8::from(binary)]);
        match value {
            None => self.ctx.update(&(-1i64).to_be_bytes()),
            Some(v) => {
                self.ctx.update(&(v.len() as i64).to_be_bytes());
                self.ctx.update(v);
            }
        }
    }

    /// The values' digest; `None` when there were none (the statement alone is the request).
    pub fn finish(self) -> Option<String> {
        (self.count > 0).then(|| to_hex(&self.ctx.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(vs: &[(Option<&[u8]>, bool)]) -> Option<String> {
        let mut d = Values::new();
        for (v, b) in vs {
            d.push(*v, *b);
        }
        d.finish()
    }

    #[test]
    fn digests_are_lowercase_hex_of_sha256() {
        let expected = hex::encode(ring::digest::digest(&SHA256, b"postgres statement\0SELECT 1"));
        assert_eq!(statement("SELECT 1"), expected);
    }

    #[test]
    fn equal_only_for_the_same_text_and_values() {
        assert_eq!(statement("DELETE FROM t WHERE id = 1"), statement("DELETE FROM t WHERE id = 1"));
        assert_ne!(statement("DELETE FROM t WHERE id = 1"), statement("DELETE FROM t WHERE id = 2"));
        assert_eq!(values(&[]), None);
        let one = values(&[(Some(b"1"), false)]);
        assert_eq!(one, values(&[(Some(b"1"), false)]));
        assert_ne!(one, values(&[(Some(b"2"), false)]));
        assert_ne!(one, values(&[(Some(b"1"), true)]), "format counts");
        assert_ne!(values(&[(None, false)]), values(&[(Some(b""), false)]), "NULL is not empty");
        // Value boundaries count: ("ab", "c") is not ("a", "bc").
        assert_ne!(
            values(&[(Some(b"ab"), false), (Some(b"c"), false)]),
            values(&[(Some(b"a"), false), (Some(b"bc"), false)])
        );
        let s = statement("DELETE FROM t WHERE id = $1");
        assert_ne!(with_values(&s, one.as_deref().unwrap_or_default()), s);
    }
}
