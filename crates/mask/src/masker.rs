//! The masker: detectors compiled once, applied to any number of texts.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use regex::{Regex, RegexBuilder};

use crate::detect::{self, card, email, iban, ip, phone, secret, ssn};
use crate::detector::validate_custom_name;
use crate::forms::render;
use crate::scan::{Cand, Stats};
use crate::{Counts, CustomPattern, Detector, MaskError};

/// Passes after the first before a text whose masking does not settle is masked whole.
const MAX_PASSES: usize = 4;

/// Compiled size limit of one custom pattern.
const CUSTOM_SIZE_LIMIT: usize = 1 << 20;

/// Finds and masks sensitive values in text. Build it once per configuration (it compiles its
/// patterns) and share it: it is `Send + Sync` and cheap to clone.
///
/// **Overlaps.** Every detector reports its candidates first; then candidates are taken in this
/// order and a candidate overlapping one already taken is dropped, so no character is masked
/// twice:
///
/// 1. detector priority: `secret`, `email`, `iban`, `credit_card`, `ssn`, `phone`, `ip`, then
///    custom detectors in the order their patterns were given;
/// 2. longer value first;
/// 3. earlier value first.
///
/// A value whose masked form equals the value (text that is already masked, such as
/// `password=***`) is left alone and not counted, so masking masked text changes nothing —
/// except where values were glued together: masking one can change its neighbour's surroundings,
/// and a second pass may then mask more, never less.
#[derive(Clone)]
pub struct Masker {
    slots: Vec<Slot>,
}

#[derive(Clone)]
struct Slot {
    detector: Detector,
    name: String,
    engine: Engine,
}

#[derive(Clone)]
enum Engine {
    Secret(&'static secret::Patterns),
    Email(&'static Regex),
    Iban,
    Card,
    Ssn(&'static Regex),
    Phone,
    Ip(&'static Regex),
    Custom(Regex),
}

impl Engine {
    /// A quick test on the text's statistics: `false` when the detector cannot match.
    fn may_match(&self, s: &Stats) -> bool {
        match self {
            Engine::Secret(_) => s.len >= 8,
            Engine::Email(_) => s.at,
            Engine::Iban => s.len >= 15 && s.digits >= 2 && s.letters >= 2,
            Engine::Card => s.digits >= crate::checks::CARD_MIN_DIGITS,
            Engine::Ssn(_) => s.digits >= 9,
            Engine::Phone => s.digits >= 8,
            Engine::Ip(_) => (s.digits >= 4 && s.dots >= 3) || s.colons >= 2,
            Engine::Custom(_) => true,
        }
    }

    fn find(&self, text: &str, stats: &Stats, out: &mut Vec<Cand>) {
        match self {
            Engine::Secret(p) => secret::find(p, text, out),
            Engine::Email(re) => email::find(re, text, out),
            Engine::Iban => iban::find(text, out),
            Engine::Card => card::find(text, out),
            Engine::Ssn(re) => ssn::find(re, text, out),
            Engine::Phone => phone::find(text, out),
            Engine::Ip(re) => {
                if stats.dots >= 3 {
                    ip::find_v4(re, text, out);
                }
                if stats.colons >= 2 {
                    ip::find_v6(text, out);
                }
            }
            Engine::Custom(re) => {
                for m in re.find_iter(text).filter(|m| !m.is_empty()) {
                    out.push(Cand::new(m.start(), m.end(), crate::scan::Form::Stars));
                }
            }
        }
    }
}

impl Masker {
    /// A masker for `detectors`, plus every pattern in `custom`.
    ///
    /// Every custom pattern is active whether or not `custom:NAME` is listed in `detectors`;
    /// listing it is allowed, but a listed `custom:NAME` without a pattern is an error. Built-in
    /// detectors listed twice count once. Errors name the detector at fault: an invalid custom
    /// name, a pattern that does not compile or matches the empty string, a duplicate name.
    pub fn new(detectors: &[Detector], custom: &[CustomPattern]) -> Result<Masker, MaskError> {
        let mut slots = Vec::new();
        for builtin in Detector::BUILTIN {
            if detectors.contains(&builtin) {
                slots.push(builtin_slot(builtin)?);
            }
        }
        let mut seen: Vec<&str> = Vec::new();
        for c in custom {
            validate_custom_name(&c.name)?;
            if seen.contains(&c.name.as_str()) {
                return Err(MaskError::DuplicateCustom { name: c.name.clone() });
            }
            seen.push(&c.name);
            let detector = Detector::Custom(c.name.clone());
            slots.push(Slot { name: detector.to_string(), detector, engine: Engine::Custom(compile_custom(c)?) });
        }
        for d in detectors {
            if let Detector::Custom(name) = d
                && !seen.contains(&name.as_str())
            {
                validate_custom_name(name)?;
                return Err(MaskError::MissingCustomPattern { name: name.clone() });
            }
        }
        Ok(Masker { slots })
    }

    /// A masker with every built-in detector.
    pub fn builtin() -> Result<Masker, MaskError> {
        Masker::new(&Detector::BUILTIN, &[])
    }

    /// The active detectors, in overlap priority order.
    pub fn detectors(&self) -> impl Iterator<Item = &Detector> + '_ {
        self.slots.iter().map(|s| &s.detector)
    }

    /// Whether no detector is active (then [`Masker::mask`] never changes anything).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Masks every value found in `text`. When nothing is masked the result borrows `text` and
    /// nothing is allocated.
    pub fn mask<'a>(&self, text: &'a str) -> Masked<'a> {
        let mut counts = Counts::new();
        let text = self.mask_counted(text, |detector| counts.add(detector, 1));
        Masked { text, counts }
    }

    /// [`Masker::mask`] that reports each masked value to `counted` (with its detector's name,
    /// in text order) rather than gathering a [`Counts`]: for a caller that tallies values its
    /// own way, such as per location in a document, without a map per text.
    pub fn mask_counted<'a>(&self, text: &'a str, mut counted: impl FnMut(&str)) -> Cow<'a, str> {
        let found = self.resolve(text);
        if found.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = self.apply(text, found, &mut counted);
        // A masked form keeps a few characters (the last digits of a number, …), which can form
        // a new value with what follows. Mask again until nothing changes, so masking is stable
        // and nothing detectable is left; if that does not settle, nothing of the text is kept.
        for _ in 0..MAX_PASSES {
            let found = self.resolve(&out);
            if found.is_empty() {
                return Cow::Owned(out);
            }
            // What later passes mask are pieces of values already counted, not new values.
            let next = self.apply(&out, found, &mut |_: &str| {});
            if next == out {
                return Cow::Owned(out);
            }
            out = next;
        }
        Cow::Owned(crate::mask_whole(text))
    }

    /// `text` with the values `found` in it replaced by their masked forms, each counted.
    fn apply(&self, text: &str, found: Vec<(Cand, String)>, counted: &mut impl FnMut(&str)) -> String {
        let mut out = String::with_capacity(text.len() + 16);
        let mut copied = 0;
        for (cand, masked) in found {
            out.push_str(&text[copied..cand.start]);
            out.push_str(&masked);
            copied = cand.end;
            counted(&self.slots[cand.slot].name);
        }
        out.push_str(&text[copied..]);
        out
    }

    /// Masks `bytes` if they are valid UTF-8; `None` otherwise. Detectors work on text only:
    /// a caller holding bytes in another encoding or binary data decides itself whether to pass
    /// them through, mask them whole ([`mask_whole`](crate::mask_whole)) or mask a lossy UTF-8
    /// conversion (`String::from_utf8_lossy`), which replaces invalid sequences.
    pub fn mask_bytes<'a>(&self, bytes: &'a [u8]) -> Option<Masked<'a>> {
        std::str::from_utf8(bytes).ok().map(|text| self.mask(text))
    }

    /// The values [`Masker::mask`] would mask, in text order, as byte ranges of `text` (for a
    /// `password=` pair, the range of the value only). Useful for highlighting and tests.
    pub fn find(&self, text: &str) -> Vec<Finding<'_>> {
        self.resolve(text)
            .into_iter()
            .map(|(c, _)| Finding { detector: &self.slots[c.slot].detector, range: c.start..c.end })
            .collect()
    }

    /// Candidates of every detector, overlaps resolved, already-masked values dropped, in text
    /// order, each with its masked form.
    fn resolve(&self, text: &str) -> Vec<(Cand, String)> {
        if self.slots.is_empty() || text.is_empty() {
            return Vec::new();
        }
        let stats = Stats::of(text);
        let mut cands = Vec::new();
        for (slot, s) in self.slots.iter().enumerate() {
            if s.engine.may_match(&stats) {
                let before = cands.len();
                s.engine.find(text, &stats, &mut cands);
                for c in &mut cands[before..] {
                    c.slot = slot;
                }
            }
        }
        if cands.is_empty() {
            return Vec::new();
        }
        cands.sort_by_key(|c| (c.slot, std::cmp::Reverse(c.end - c.start), c.start, c.sub));
        // Taken spans, disjoint, in text order (few: a sorted vector beats a map).
        let mut taken: Vec<Cand> = Vec::with_capacity(cands.len());
        for c in cands {
            if c.start >= c.end || text.get(c.start..c.end).is_none() {
                continue;
            }
            // The first taken span starting at or after this one's start, and the one before.
            let at = taken.partition_point(|t| t.start < c.start);
            let before_ends_inside = at > 0 && taken[at - 1].end > c.start;
            let next_starts_inside = taken.get(at).is_some_and(|t| t.start < c.end);
            if !before_ends_inside && !next_starts_inside {
                taken.insert(at, c);
            }
        }
        taken
            .into_iter()
            .filter_map(|c| {
                let value = &text[c.start..c.end];
                let masked = render(c.form, value);
                (masked != value).then_some((c, masked))
            })
            .collect()
    }
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker").field("detectors", &self.slots.iter().map(|s| &s.name).collect::<Vec<_>>()).finish()
    }
}

fn builtin_slot(detector: Detector) -> Result<Slot, MaskError> {
    let name = detector.builtin_name().unwrap_or("custom");
    let engine = match detector {
        Detector::Secret => Engine::Secret(detect::compiled(&secret::PATTERNS, name)?),
        Detector::Email => Engine::Email(detect::compiled(&email::PATTERN, name)?),
        Detector::Iban => Engine::Iban,
        Detector::CreditCard => Engine::Card,
        Detector::Ssn => Engine::Ssn(detect::compiled(&ssn::PATTERN, name)?),
        Detector::Phone => Engine::Phone,
        Detector::Ip => Engine::Ip(detect::compiled(&ip::V4, name)?),
        Detector::Custom(name) => return Err(MaskError::MissingCustomPattern { name }),
    };
    Ok(Slot { name: name.to_owned(), detector, engine })
}

fn compile_custom(c: &CustomPattern) -> Result<Regex, MaskError> {
    let err = |message: String| MaskError::CustomPattern { name: c.name.clone(), message };
    let re = RegexBuilder::new(&c.pattern).size_limit(CUSTOM_SIZE_LIMIT).build().map_err(|e| err(e.to_string()))?;
    if re.is_match("") {
        return Err(err("it matches the empty string, so it would match everywhere".to_owned()));
    }
    Ok(re)
}

/// The result of [`Masker::mask`]: the text (borrowed when nothing was masked) and how many
/// values each detector masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masked<'a> {
    text: Cow<'a, str>,
    counts: Counts,
}

impl<'a> Masked<'a> {
    /// `text` unchanged, nothing counted.
    pub fn unchanged(text: &'a str) -> Masked<'a> {
        Masked { text: Cow::Borrowed(text), counts: Counts::new() }
    }

    /// The masked text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The masked text; `Cow::Borrowed` exactly when nothing was masked.
    pub fn as_cow(&self) -> &Cow<'a, str> {
        &self.text
    }

    /// Whether anything was masked.
    pub fn is_changed(&self) -> bool {
        matches!(self.text, Cow::Owned(_))
    }

    /// Values masked per detector.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The masked text.
    pub fn into_text(self) -> Cow<'a, str> {
        self.text
    }

    /// The masked text as UTF-8 bytes (borrowed when nothing was masked), for callers that
    /// started from [`Masker::mask_bytes`].
    pub fn into_bytes(self) -> Cow<'a, [u8]> {
        match self.text {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        }
    }

    /// The masked text and the counts.
    pub fn into_parts(self) -> (Cow<'a, str>, Counts) {
        (self.text, self.counts)
    }
}

/// A value found by [`Masker::find`]: which detector, and where (a byte range of the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding<'m> {
    /// The detector that found it.
    pub detector: &'m Detector,
    /// Its byte range in the text.
    pub range: Range<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_pattern_compiles() {
        let m = Masker::builtin().unwrap();
        assert_eq!(m.detectors().count(), Detector::BUILTIN.len());
    }

    #[test]
    fn mask_counted_reports_each_masked_value_in_text_order() {
        let m = Masker::builtin().unwrap();
        let mut seen = Vec::new();
        let text = "card 4242 4242 4242 4242, mail jane@example.com, again bob@example.org";
        let masked = m.mask_counted(text, |detector| seen.push(detector.to_string()));
        assert_eq!(seen, ["credit_card", "email", "email"]);
        assert_eq!(masked, m.mask(text).text());
        assert!(!masked.contains("jane@") && !masked.contains("4242 4242 4242 4242"));

        let mut none = 0;
        assert!(matches!(m.mask_counted("nothing to see", |_| none += 1), Cow::Borrowed("nothing to see")));
        assert_eq!(none, 0);
    }

    #[test]
    fn masker_is_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Masker>();
    }
}
