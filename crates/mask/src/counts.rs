//! How many values each detector masked.

use std::collections::BTreeMap;
use std::ops::{Add, AddAssign};

/// Number of values masked, per detector name (`email`, `custom:order_id`, …). Never holds the
/// values themselves. Serialises as a JSON object `{"email": 2, "phone": 1}` with names in
/// sorted order; detectors that masked nothing are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Counts(BTreeMap<String, u64>);

impl Counts {
    /// No values masked.
    pub fn new() -> Counts {
        Counts(BTreeMap::new())
    }

    /// Whether nothing was masked.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The count for one detector name; 0 if it masked nothing.
    pub fn get(&self, detector: &str) -> u64 {
        self.0.get(detector).copied().unwrap_or(0)
    }

    /// Values masked by all detectors together.
    pub fn total(&self) -> u64 {
        self.0.values().fold(0, |acc, n| acc.saturating_add(*n))
    }

    /// Adds `n` values for `detector`. Adding 0 records nothing.
    pub fn add(&mut self, detector: &str, n: u64) {
        if n == 0 {
            return;
        }
        match self.0.get_mut(detector) {
            Some(count) => *count = count.saturating_add(n),
            None => {
                self.0.insert(detector.to_owned(), n);
            }
        }
    }

    /// Adds every count of `other` to this one.
    pub fn merge(&mut self, other: &Counts) {
        for (name, n) in &other.0 {
            self.add(name, *n);
        }
    }

    /// The counts in detector name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// The underlying map, detector name → count.
    pub fn as_map(&self) -> &BTreeMap<String, u64> {
        &self.0
    }
}

impl AddAssign<&Counts> for Counts {
    fn add_assign(&mut self, rhs: &Counts) {
        self.merge(rhs);
    }
}

impl AddAssign for Counts {
    fn add_assign(&mut self, rhs: Counts) {
        self.merge(&rhs);
    }
}

impl Add for Counts {
    type Output = Counts;

    fn add(mut self, rhs: Counts) -> Counts {
        self.merge(&rhs);
        self
    }
}

impl From<Counts> for BTreeMap<String, u64> {
    fn from(value: Counts) -> Self {
        value.0
    }
}
