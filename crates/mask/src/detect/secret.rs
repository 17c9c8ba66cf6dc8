//! Credentials:
//!
//! - PEM private key blocks (`-----BEGIN … PRIVATE KEY-----` to `-----END … PRIVATE KEY-----`,
//!   also `OPENSSH`, `ENCRYPTED`, `PGP … BLOCK`); a block cut off before its END line is masked to
//!   the end of its base64 body.
//! - AWS access key ids: `AKIA`, `ASIA`, `ABIA`, `ACCA`, `AGPA`, `AIDA`, `AIPA`, `ANPA`, `ANVA`,
//!   `APKA`, `AROA`, `ASCA` and 16 upper-case letters or digits.
//! - JWTs: `eyJ…` header, `.eyJ…` payload, `.` signature (base64url, signature may be empty).
//! - Prefixed API tokens: GitHub (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`), Slack
//!   (`xoxa-`, `xoxb-`, `xoxp-`, `xoxr-`, `xoxs-`, `xapp-`), Stripe (`sk_live_`, `sk_test_`,
//!   `rk_live_`, `rk_test_`, `whsec_`), GitLab (`glpat-`), Google (`AIza`), npm (`npm_`) and
//!   LLM provider keys (`sk-…`, `sk-proj-…`, `sk-ant-…`, at least 32 characters mixing
//!   upper case, lower case and digits).
//! - `key=value` pairs whose key ends in `password`, `passwd`, `passphrase`, `pwd`, `secret`,
//!   `token`, `api_key`/`apikey`/`api-key`, `access_key`, `secret_key`, `private_key` (any case,
//!   so `DB_PASSWORD`, `client_secret`, `github_token` count); `=`, `:`, `=>` or `:=` with
//!   optional spaces and quotes (JSON, YAML, env files, query strings, connection strings). Only
//!   the value is masked; a quoted value up to its closing quote, an unquoted one up to
//!   whitespace or one of ``"'`,;&)]}>``.
//! - the password of a URL (`postgres://user:PASSWORD@host/db`), the token after `Bearer `
//!   (16 characters or more) and the credentials after `Authorization: Basic`.

use regex::Regex;

use super::Lazy;
use crate::scan::{Cand, Form, is_word, left_ok, next_char};

/// Tie-breakers among overlapping secrets of the same length (lower wins): the more thorough
/// masking first.
const SUB_PEM: u8 = 0;
const SUB_PAIR: u8 = 1;
const SUB_URL: u8 = 2;
const SUB_BEARER: u8 = 3;
const SUB_JWT: u8 = 4;
const SUB_AWS: u8 = 5;
const SUB_TOKEN: u8 = 6;

pub(crate) struct Patterns {
    pem: Regex,
    pem_open: Regex,
    aws: Regex,
    jwt: Regex,
    token: Regex,
    pair: Regex,
    url: Regex,
    bearer: Regex,
}

const PEM_BEGIN: &str = r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----";

pub(crate) static PATTERNS: Lazy<Patterns> = Lazy::new(|| {
    Ok(Patterns {
        pem: super::regex(&format!(r"{PEM_BEGIN}(?s:.*?)-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"))?,
        pem_open: super::regex(&format!(r"{PEM_BEGIN}(?:Proc-Type|DEK-Info|[A-Za-z0-9+/=\s:,]|\\[rnt])+"))?,
        aws: super::regex(r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z0-9]{16}")?,
        jwt: super::regex(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")?,
        token: super::regex(concat!(
            r"github_pat_[A-Za-z0-9_]{22,255}",
            r"|gh[pousr]_[A-Za-z0-9]{36,255}",
            r"|xox[abprs]-[A-Za-z0-9-]{10,250}",
            r"|xapp-[A-Za-z0-9-]{10,250}",
            r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,247}",
            r"|whsec_[A-Za-z0-9+/=]{24,}",
            r"|glpat-[A-Za-z0-9_-]{20,}",
            r"|AIza[0-9A-Za-z_-]{35}",
            r"|npm_[A-Za-z0-9]{36}",
            r"|sk-(?:proj-|ant-)?[A-Za-z0-9_-]{32,}",
        ))?,
        pair: super::regex(concat!(
            r"(?i:passw(?:or)?d|passphrase|pwd|secret|token|api[_-]?key|access[_-]?key|secret[_-]?key|private[_-]?key)",
            r#"(?:\\?["'])?[ \t]*(?:=>|:=|[:=])[ \t]*"#,
            r#"(?:\\"([^"\\\r\n]*)\\"|"([^"\r\n]*)"|'([^'\r\n]*)'|([^\s"'`,;&)\]}>=][^\s"'`,;&)\]}>]*))"#,
        ))?,
        url: super::regex(r#"[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s:/?#@"'<>]*:([^\s@/?#"'<>]+)@"#)?,
        bearer: super::regex(concat!(
            r"(?:Bearer|bearer|BEARER)[ \t]+([A-Za-z0-9._~+/-]{16,}=*)",
            r#"|(?i:authorization)["']?[ \t]*[:=][ \t]*["']?(?i:basic)[ \t]+([A-Za-z0-9+/]{8,}=*)"#,
        ))?,
    })
});

/// Prefixes kept when a prefixed token is masked; longer first where one starts another.
const TOKEN_PREFIXES: &[&str] = &[
    "github_pat_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "xoxa-",
    "xoxb-",
    "xoxp-",
    "xoxr-",
    "xoxs-",
    "xapp-",
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "rk_test_",
    "whsec_",
    "glpat-",
    "AIza",
    "npm_",
    "sk-proj-",
    "sk-ant-",
    "sk-",
];

/// Whether a PEM block cut off before its END line has anything after its BEGIN line. A bare
/// header (as a masked block keeps it, before `[masked]`) holds no key.
fn holds_key_material(block: &str) -> bool {
    let body = block.get(5..).and_then(|rest| rest.find("-----")).and_then(|i| block.get(i + 10..)).unwrap_or("");
    body.replace("\\n", "")
        .replace("\\r", "")
        .replace("\\t", "")
        .chars()
        .any(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
}

/// A token character: what a credential may be glued to without being a separate token.
fn tokenish(c: char) -> bool {
    is_word(c) || c == '-'
}

pub(crate) fn find(p: &Patterns, text: &str, out: &mut Vec<Cand>) {
    if text.contains("PRIVATE KEY") {
        for m in p.pem.find_iter(text) {
            out.push(Cand::new(m.start(), m.end(), Form::Pem).with_sub(SUB_PEM));
        }
        for m in p.pem_open.find_iter(text).filter(|m| holds_key_material(m.as_str())) {
            out.push(Cand::new(m.start(), m.end(), Form::Pem).with_sub(SUB_PEM));
        }
    }
    for caps in p.pair.captures_iter(text) {
        if let Some(v) = (1..=4).find_map(|g| caps.get(g)).filter(|v| !v.is_empty()) {
            out.push(Cand::new(v.start(), v.end(), Form::Hidden).with_sub(SUB_PAIR));
        }
    }
    if text.contains("://") {
        for caps in p.url.captures_iter(text) {
            if let Some(v) = caps.get(1) {
                out.push(Cand::new(v.start(), v.end(), Form::Hidden).with_sub(SUB_URL));
            }
        }
    }
    for caps in p.bearer.captures_iter(text) {
        let whole = caps.get(0).map_or(0, |m| m.start());
        if let Some(v) = caps.get(1).or_else(|| caps.get(2))
            && left_ok(text, whole, b"")
        {
            out.push(Cand::new(v.start(), v.end(), Form::Hidden).with_sub(SUB_BEARER));
        }
    }
    if text.contains("eyJ") {
        for m in p.jwt.find_iter(text) {
            if bounded(text, m.start(), m.end()) {
                out.push(Cand::new(m.start(), m.end(), Form::Jwt).with_sub(SUB_JWT));
            }
        }
    }
    for m in p.aws.find_iter(text) {
        if bounded(text, m.start(), m.end()) {
            out.push(Cand::new(m.start(), m.end(), Form::KeepPrefix(4)).with_sub(SUB_AWS));
        }
    }
    for m in p.token.find_iter(text) {
        let s = m.as_str();
        let Some(prefix) = TOKEN_PREFIXES.iter().find(|p| s.starts_with(**p)) else {
            continue;
        };
        if prefix.starts_with("sk-") && !mixed(&s[prefix.len()..]) {
            continue;
        }
        if bounded(text, m.start(), m.end()) {
            out.push(Cand::new(m.start(), m.end(), Form::KeepPrefix(prefix.len())).with_sub(SUB_TOKEN));
        }
    }
}

/// Not glued to other token characters on either side.
fn bounded(text: &str, start: usize, end: usize) -> bool {
    !crate::scan::prev_char(text, start).is_some_and(tokenish) && !next_char(text, end).is_some_and(tokenish)
}

/// Upper case, lower case and digits all present: random key material, not a slug.
fn mixed(s: &str) -> bool {
    s.bytes().any(|c| c.is_ascii_uppercase())
        && s.bytes().any(|c| c.is_ascii_lowercase())
        && s.bytes().any(|c| c.is_ascii_digit())
}
