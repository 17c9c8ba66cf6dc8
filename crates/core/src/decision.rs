use serde::{Deserialize, Serialize};

use crate::{Identity, Resource};

/// One question to the policy engine: may this identity perform this action on these objects?
/// A request that covers several objects (a join, a batch) lists them all; the engine decides
/// each and the strictest outcome wins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthzRequest {
    pub principal: Identity,
    /// An action name from the schema, e.g. `sql.select`, `connect`, `api.write`.
    pub action: String,
    pub resources: Vec<Resource>,
    /// What the adapter learned about the request (statement, tables, client address, …), as a
    /// JSON object matching the schema's context type.
    pub context: serde_json::Map<String, serde_json::Value>,
}

/// The three outcomes, ordered from least to most strict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    Review,
    Deny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Review => "review",
            Outcome::Deny => "deny",
        }
    }
}

/// One approver group a review needs, and how many distinct members of it must approve.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Approval {
    pub group: String,
    pub quorum: u32,
}

/// What the gateway answers, with the reasons: the `@id`s of the deciding policies, the approver
/// groups of a review, and any evaluation errors (which always deny).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub outcome: Outcome,
    /// `@id`s of the policies that decided: the permits that allowed, the forbids that denied or
    /// asked for review. Empty for the default deny.
    pub policies: Vec<String>,
    /// For `Review`: every group that must approve, with its quorum.
    pub approvers: Vec<Approval>,
    /// Evaluation errors, each naming its policy. Any error makes the outcome `Deny`.
    pub errors: Vec<String>,
}

impl Decision {
    pub fn allow(policies: Vec<String>) -> Self {
        Decision { outcome: Outcome::Allow, policies, approvers: vec![], errors: vec![] }
    }

    pub fn deny(policies: Vec<String>) -> Self {
        Decision { outcome: Outcome::Deny, policies, approvers: vec![], errors: vec![] }
    }

    /// One line for error messages and logs, naming the deciding policies.
    pub fn explain(&self) -> String {
        let mut out = match (self.outcome, self.policies.is_empty()) {
            (Outcome::Deny, true) if self.errors.is_empty() => "denied: no policy permits it".to_string(),
            (Outcome::Deny, true) => "denied".to_string(),
            (o, true) => o.as_str().to_string(),
            (o, false) => format!("{} by policy {}", past_tense(o), self.policies.join(", ")),
        };
        if !self.approvers.is_empty() {
            let groups: Vec<String> =
                self.approvers.iter().map(|a| format!("{} (quorum {})", a.group, a.quorum)).collect();
            out.push_str(&format!("; approvers: {}", groups.join(", ")));
        }
        if !self.errors.is_empty() {
            out.push_str(&format!("; evaluation errors: {}", self.errors.join("; ")));
        }
        out
    }

    /// Combines the decisions for several objects: the strictest outcome wins, and the reasons
    /// of every decision with that outcome are kept.
    pub fn strictest(decisions: impl IntoIterator<Item = Decision>) -> Decision {
        let mut all: Vec<Decision> = decisions.into_iter().collect();
        let Some(worst) = all.iter().map(|d| d.outcome).max() else {
            return Decision::deny(vec![]);
        };
        all.retain(|d| d.outcome == worst);
        let mut out = Decision { outcome: worst, policies: vec![], approvers: vec![], errors: vec![] };
        for d in all {
            for p in d.policies {
                if !out.policies.contains(&p) {
                    out.policies.push(p);
                }
            }
            for a in d.approvers {
                match out.approvers.iter_mut().find(|x| x.group == a.group) {
                    Some(x) => x.quorum = x.quorum.max(a.quorum),
                    None => out.approvers.push(a),
                }
            }
            for e in d.errors {
                if !out.errors.contains(&e) {
                    out.errors.push(e);
                }
            }
        }
        out
    }
}

fn past_tense(o: Outcome) -> &'static str {
    match o {
        Outcome::Allow => "allowed",
        Outcome::Review => "held for review",
        Outcome::Deny => "denied",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictest_wins() {
        let review = Decision {
            outcome: Outcome::Review,
            policies: vec!["needs-dba".into()],
            approvers: vec![Approval { group: "dba".into(), quorum: 1 }],
            errors: vec![],
        };
        let d = Decision::strictest(vec![Decision::allow(vec!["a".into()]), review.clone()]);
        assert_eq!(d.outcome, Outcome::Review);
        assert_eq!(d.policies, vec!["needs-dba".to_string()]);
        let d = Decision::strictest(vec![review, Decision::deny(vec!["no".into()])]);
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!(d.policies, vec!["no".to_string()]);
        assert!(d.approvers.is_empty());
        assert_eq!(Decision::strictest(vec![]).outcome, Outcome::Deny);
    }
}
