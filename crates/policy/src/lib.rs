//! Gatehouse's policy engine: the Cedar schema the project ships ([`SCHEMA`]), loading and
//! strict validation of a policy text ([`validate`]), and the evaluator that turns Cedar's
//! allow/deny into Gatehouse's three outcomes — `Allow`, `Review` (with approver groups and
//! quorums taken from `@approval`/`@quorum` on forbids) and `Deny` — for every object a request
//! touches ([`PolicyEngine::decide`]). It builds the Cedar entities itself from a core
//! [`AuthzRequest`](gatehouse_core::AuthzRequest): the principal with its groups, the resource
//! with its parents (tables in connections, path and key prefixes) and the connection with its
//! type and tags. It does no I/O: it does not read policy files, store policies, hold requests
//! for review, record decisions or know any wire protocol; callers hand it text and requests and
//! act on the [`Decision`](gatehouse_core::Decision) it returns.

#![forbid(unsafe_code)]

mod engine;
mod entities;
mod load;
mod schema;

pub use engine::{DetailedDecision, PolicyEngine};
pub use load::{Effect, LoadedPolicies, PolicyInfo, PolicySummary, validate};
pub use schema::SCHEMA;

/// One thing wrong with a policy text: where it is, which policy, and what.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// 1-based line in the policy text, when the problem has a place.
    pub line: Option<u32>,
    /// 1-based column (in characters), when the problem has a place.
    pub column: Option<u32>,
    /// The `@id` of the policy concerned, when known.
    pub policy: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, "line {line}, column {column}: ")?;
        }
        if let Some(id) = &self.policy {
            write!(f, "policy {id:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a policy text was refused or a request could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The policy text does not parse, breaks a Gatehouse rule (`@id`, `@approval`, `@quorum`)
    /// or does not validate against the schema. Every problem found is listed.
    #[error("invalid policy set: {}", join_problems(.0))]
    Invalid(Vec<Problem>),
    /// The request cannot be decided as asked: unknown action, a resource the action does not
    /// apply to, a context that does not match the schema, no resource at all. A caller bug,
    /// never a policy outcome.
    #[error("malformed authorization request: {0}")]
    Request(String),
    /// The schema shipped with the crate does not load (a build defect).
    #[error("the built-in policy schema does not load: {0}")]
    Schema(String),
}

impl PolicyError {
    /// The problems of an [`PolicyError::Invalid`] text (empty for other errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            PolicyError::Invalid(p) => p,
            _ => &[],
        }
    }
}

fn join_problems(problems: &[Problem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests;
