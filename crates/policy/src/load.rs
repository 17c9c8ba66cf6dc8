//! Parsing and validating a policy text: Cedar syntax, Gatehouse's annotation rules, and strict
//! validation against the schema.

use std::collections::{HashMap, HashSet};

use cedar_policy::{Policy, PolicyId, PolicySet, ValidationError, ValidationMode, ValidationWarning};
use gatehouse_core::{Approval, validate_group_name};
use miette::Diagnostic;
use serde::{Deserialize, Serialize};

use crate::{PolicyError, Problem, schema};

/// Whether a policy permits or forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Permit,
    Forbid,
}

/// One loaded policy as the summary shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// The policy's `@id`.
    pub id: String,
    pub effect: Effect,
    /// For a forbid with `@approval`: the groups that can lift it, each with its quorum.
    pub approvers: Vec<Approval>,
    /// 1-based line where the policy starts in the text.
    pub line: Option<u32>,
}

/// What a loaded policy set contains, in text order, plus the validator's warnings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySummary {
    pub policies: Vec<PolicyInfo>,
    /// Validator warnings (suspicious but valid policies), each with its place and `@id`.
    pub warnings: Vec<String>,
}

impl PolicySummary {
    /// The `@id`s in text order.
    pub fn ids(&self) -> Vec<&str> {
        self.policies.iter().map(|p| p.id.as_str()).collect()
    }
}

/// A validated policy text, ready to evaluate. Policies are re-identified by their `@id`, so
/// every Cedar reason and error names an `@id`.
#[derive(Debug)]
pub struct LoadedPolicies {
    text: String,
    /// Every policy.
    pub(crate) full: PolicySet,
    /// Every policy without `@approval`: the set a review is decided against.
    pub(crate) without_approvals: PolicySet,
    summary: PolicySummary,
    /// `@id` → position in the text, to order reasons deterministically.
    order: HashMap<String, usize>,
    /// Every word of the text (runs of letters, digits and `_`).
    words: std::collections::HashSet<String>,
}

/// The words of a policy text.
fn words(text: &str) -> std::collections::HashSet<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).map(String::from).collect()
}

impl LoadedPolicies {
    /// Whether `word` occurs anywhere in the text. Cedar names attributes only literally
    /// (`context.time`, `context has time`, `context["time"]`), so a context attribute whose
    /// name is not a word of the text cannot change any decision of this set.
    pub fn mentions(&self, word: &str) -> bool {
        self.words.contains(word)
    }

    /// The empty set: everything is denied.
    pub fn empty() -> Self {
        LoadedPolicies {
            text: String::new(),
            full: PolicySet::new(),
            without_approvals: PolicySet::new(),
            summary: PolicySummary::default(),
            order: HashMap::new(),
            words: Default::default(),
        }
    }

    /// The text this set was loaded from, as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn summary(&self) -> &PolicySummary {
        &self.summary
    }

    pub fn len(&self) -> usize {
        self.summary.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.summary.policies.is_empty()
    }

    /// The loaded policy with this `@id`.
    pub fn policy(&self, id: &str) -> Option<&PolicyInfo> {
        self.order.get(id).and_then(|i| self.summary.policies.get(*i))
    }

    pub(crate) fn position(&self, id: &str) -> usize {
        self.order.get(id).copied().unwrap_or(usize::MAX)
    }
}

/// Annotations whose misspelling would silently weaken a policy (a forbid that never asks for
/// review, a quorum of 1). Other annotations (`@description`, `@owner`, …) are kept by Cedar and
/// ignored here, unless they look like a misspelling of one of these.
const GUARDED: [&str; 2] = ["approval", "quorum"];

/// Parses and validates a policy text. Every policy must carry a unique, non-empty `@id`;
/// `@approval("group[, group…]")` is allowed only on `forbid`; `@quorum("N")` (N ≥ 1) only with
/// `@approval`; templates are refused; the set must pass Cedar's strict validation against
/// [`SCHEMA`](crate::SCHEMA). An empty text is a valid empty set (everything denied).
///
/// On failure every problem found is returned, each with its line and column and, where known,
/// the policy's `@id`.
pub fn validate(text: &str) -> Result<LoadedPolicies, PolicyError> {
    let schema = schema::get()?;
    let parsed: PolicySet = text.parse().map_err(|e: cedar_policy::ParseErrors| {
        PolicyError::Invalid(e.iter().map(|d| problem_from_diagnostic(text, d, None, None)).collect())
    })?;

    // Cedar names parsed policies `policy0`, `policy1`, … in text order; put them back in that
    // order and find where each starts.
    enum Item<'a> {
        Static(&'a Policy),
        Template(&'a cedar_policy::Template),
    }
    let mut items: Vec<(usize, Item<'_>)> = Vec::new();
    for p in parsed.policies() {
        items.push((generated_index(p.id()), Item::Static(p)));
    }
    for t in parsed.templates() {
        items.push((generated_index(t.id()), Item::Template(t)));
    }
    items.sort_by_key(|(i, _)| *i);
    let mut cursor = 0usize;
    let mut starts: Vec<Option<usize>> = Vec::with_capacity(items.len());
    for (_, item) in &items {
        let src = match item {
            Item::Static(p) => p.to_cedar(),
            Item::Template(t) => Some(t.to_cedar()),
        };
        let start = src.and_then(|s| {
            let found = text.get(cursor..)?.find(s.as_str())? + cursor;
            cursor = found + s.len();
            Some(found)
        });
        starts.push(start);
    }

    let mut problems: Vec<(Option<usize>, Problem)> = Vec::new();
    let mut problem = |offset: Option<usize>, policy: Option<&str>, message: String| {
        let (line, column) = offset.map(|o| line_col(text, o)).unzip();
        problems.push((offset, Problem { line, column, policy: policy.map(str::to_string), message }));
    };

    let mut full = PolicySet::new();
    let mut without_approvals = PolicySet::new();
    let mut summary = PolicySummary::default();
    let mut order = HashMap::new();
    let mut first_seen: HashMap<String, Option<usize>> = HashMap::new();

    for ((_, item), start) in items.iter().zip(starts) {
        let policy = match item {
            Item::Template(_) => {
                problem(
                    start,
                    None,
                    "policy templates (`?principal`, `?resource`) are not supported; name the \
                     entity in the policy"
                        .into(),
                );
                continue;
            }
            Item::Static(p) => *p,
        };
        let id = match policy.annotation("id") {
            None => {
                problem(start, None, "policy has no @id(\"…\"); every policy needs a unique @id".into());
                continue;
            }
            Some(id) if id.trim().is_empty() => {
                problem(start, None, "@id must not be empty".into());
                continue;
            }
            Some(id) if id.trim() != id || id.chars().any(char::is_control) => {
                problem(start, Some(id), "@id must not start or end with spaces or contain control characters".into());
                continue;
            }
            Some(id) => id.to_string(),
        };
        if let Some(prev) = first_seen.get(&id) {
            let where_ = prev
                .map(|o| {
                    let (l, c) = line_col(text, o);
                    format!(" (first used at line {l}, column {c})")
                })
                .unwrap_or_default();
            problem(start, Some(&id), format!("duplicate @id {id:?}{where_}; every @id must be unique"));
            continue;
        }
        first_seen.insert(id.clone(), start);

        let effect = match policy.effect() {
            cedar_policy::Effect::Permit => Effect::Permit,
            cedar_policy::Effect::Forbid => Effect::Forbid,
        };
        let approvers = match approvers(policy, effect) {
            Ok(a) => Some(a),
            Err(messages) => {
                for m in messages {
                    problem(start, Some(&id), m);
                }
                None
            }
        };
        let renamed = policy.new_id(PolicyId::new(&id));
        if full.add(renamed.clone()).is_err() {
            // Unreachable: ids are unique by now. Report rather than panic.
            problem(start, Some(&id), "could not add the policy to the set".into());
            continue;
        }
        let Some(approvers) = approvers else { continue };
        if approvers.is_empty() && without_approvals.add(renamed).is_err() {
            problem(start, Some(&id), "could not add the policy to the set".into());
            continue;
        }
        order.insert(id.clone(), summary.policies.len());
        summary.policies.push(PolicyInfo { id, effect, approvers, line: start.map(|o| line_col(text, o).0) });
    }

    let result = schema.validator.validate(&full, ValidationMode::Strict);
    // An unknown action or entity type also makes the scope inapplicable and the policy
    // impossible; report only the cause.
    let unknown_names: HashSet<&PolicyId> = result
        .validation_errors()
        .filter(|e| matches!(e, ValidationError::UnrecognizedActionId(_) | ValidationError::UnrecognizedEntityType(_)))
        .map(ValidationError::policy_id)
        .collect();
    let mut with_errors: HashSet<&PolicyId> = HashSet::new();
    for e in result.validation_errors() {
        with_errors.insert(e.policy_id());
        if matches!(e, ValidationError::InvalidActionApplication(_)) && unknown_names.contains(e.policy_id()) {
            continue;
        }
        let fallback = first_seen.get(&e.policy_id().to_string()).copied().flatten();
        let d = problem_from_diagnostic(text, e, Some(e.policy_id().to_string()), fallback);
        problems.push((first_label(e).or(fallback), d));
    }
    let mut warnings = Vec::new();
    for w in result.validation_warnings() {
        let fallback = first_seen.get(&w.policy_id().to_string()).copied().flatten();
        let p = problem_from_diagnostic(text, w, Some(w.policy_id().to_string()), fallback);
        if refused_warning(w) {
            let mut p = p;
            if matches!(w, ValidationWarning::ImpossiblePolicy(_) | ValidationWarning::InvalidActionApplication(_)) {
                p.message.push_str(" (this policy could never apply; Gatehouse refuses it)");
            }
            let inapplicable = || {
                result.validation_warnings().any(|o| {
                    matches!(o, ValidationWarning::InvalidActionApplication(_)) && o.policy_id() == w.policy_id()
                })
            };
            if with_errors.contains(w.policy_id())
                || (matches!(w, ValidationWarning::ImpossiblePolicy(_)) && inapplicable())
            {
                continue;
            }
            problems.push((first_label(w).or(fallback), p));
        } else {
            warnings.push(p.to_string());
        }
    }
    if !problems.is_empty() {
        // Cedar reports some problems once per action the policy could apply to; say it once.
        for (_, p) in &mut problems {
            p.message = without_action_name(&p.message);
        }
        problems.sort_by_key(|(o, _)| o.unwrap_or(usize::MAX));
        let mut seen = HashSet::new();
        problems.retain(|(_, p)| seen.insert(p.clone()));
        return Err(PolicyError::Invalid(problems.into_iter().map(|(_, p)| p).collect()));
    }
    summary.warnings = warnings;

    let words = words(text);
    Ok(LoadedPolicies { text: text.to_string(), full, without_approvals, summary, order, words })
}

/// Checks `@approval`, `@quorum` and look-alikes of them; returns the approver groups (empty
/// for a policy without `@approval`) or what is wrong.
fn approvers(policy: &Policy, effect: Effect) -> Result<Vec<Approval>, Vec<String>> {
    let mut wrong = Vec::new();
    for (key, _) in policy.annotations() {
        if !GUARDED.contains(&key)
            && let Some(known) = GUARDED.iter().find(|k| edit_distance(&key.to_lowercase(), k) <= 2)
        {
            wrong.push(format!("unknown annotation @{key}; did you mean @{known}?"));
        }
    }
    let approval = policy.annotation("approval");
    let groups: Vec<&str> = match approval {
        None => vec![],
        Some(_) if effect == Effect::Permit => {
            wrong.push(
                "@approval is only allowed on forbid policies: a forbid with @approval asks for review, \
                 a permit cannot"
                    .into(),
            );
            vec![]
        }
        Some(list) => {
            let groups: Vec<&str> = list.split(',').map(str::trim).filter(|g| !g.is_empty()).collect();
            if groups.is_empty() {
                wrong.push("@approval needs at least one group, e.g. @approval(\"dba\")".into());
            }
            for g in &groups {
                if let Err(e) = validate_group_name(g) {
                    wrong.push(format!("@approval: {e}"));
                }
            }
            groups
        }
    };
    let quorum = match policy.annotation("quorum") {
        None => 1,
        Some(_) if approval.is_none() => {
            wrong.push("@quorum is only allowed together with @approval".into());
            1
        }
        Some(q) => match q.trim().parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => {
                wrong.push(format!("@quorum must be a whole number of at least 1, not {q:?}"));
                1
            }
        },
    };
    if !wrong.is_empty() {
        return Err(wrong);
    }
    let mut out: Vec<Approval> = Vec::new();
    for group in groups {
        // `@approval("dba, dba")` is one group.
        if !out.iter().any(|a| a.group == group) {
            out.push(Approval { group: group.to_string(), quorum });
        }
    }
    Ok(out)
}

/// Warnings Cedar only warns about but Gatehouse refuses: a policy that can never apply is a
/// mistake (and a forbid that never applies fails open), and bidirectional-text characters can
/// make a policy read differently from what it does.
fn refused_warning(w: &ValidationWarning) -> bool {
    matches!(
        w,
        ValidationWarning::ImpossiblePolicy(_)
            | ValidationWarning::InvalidActionApplication(_)
            | ValidationWarning::BidiCharsInString(_)
            | ValidationWarning::BidiCharsInIdentifier(_)
    )
}

/// `… in context for Action::"k8s.get"; …` → `… in context; …`.
fn without_action_name(message: &str) -> String {
    const MARK: &str = " for Action::\"";
    let Some(start) = message.find(MARK) else { return message.to_string() };
    let after = start + MARK.len();
    match message.get(after..).and_then(|rest| rest.find('"')) {
        Some(end) => format!(
            "{}{}",
            message.get(..start).unwrap_or_default(),
            message.get(after + end + 1..).unwrap_or_default()
        ),
        None => message.to_string(),
    }
}

/// `policy7` → 7 (Cedar's generated ids); anything else sorts last.
fn generated_index(id: &PolicyId) -> usize {
    id.to_string().strip_prefix("policy").and_then(|n| n.parse().ok()).unwrap_or(usize::MAX)
}

fn first_label(d: &dyn Diagnostic) -> Option<usize> {
    d.labels().and_then(|mut l| l.next()).map(|l| l.offset())
}

/// A problem from a Cedar diagnostic: its first label (else `fallback`, the policy's start)
/// gives the place, its help is appended.
fn problem_from_diagnostic(text: &str, d: &dyn Diagnostic, policy: Option<String>, fallback: Option<usize>) -> Problem {
    let (line, column) = first_label(d).or(fallback).map(|o| line_col(text, o)).unzip();
    let mut message = d.to_string();
    if let Some(help) = d.help() {
        let help = help.to_string();
        if !help.is_empty() {
            message.push_str("; ");
            message.push_str(&help);
        }
    }
    // The place and the `@id` are given apart; do not repeat Cedar's own "for policy `x`, ".
    if let Some(id) = &policy {
        message = message.replace(&format!("for policy `{id}`, "), "");
    }
    Problem { line, column, policy, message }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = text.get(..end).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (u32::try_from(line).unwrap_or(u32::MAX), u32::try_from(column).unwrap_or(u32::MAX))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
