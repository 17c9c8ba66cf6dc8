use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The group whose members may always use the management API, whatever the policy set says.
pub const ADMIN_GROUP: &str = "admins";

/// Whether an identity is a person (from OIDC) or a machine (a service account).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    /// A person, authenticated by the company's identity provider: `User::"alice@example.com"`.
    User,
    /// A service account, authenticated by a gateway-issued token: `Service::"fn-billing"`.
    Service,
}

impl IdentityKind {
    /// The Cedar entity type name for this kind of principal.
    pub fn entity_type(self) -> &'static str {
        match self {
            IdentityKind::User => "User",
            IdentityKind::Service => "Service",
        }
    }
}

/// An authenticated caller. Every part of the gateway sees callers only through this type,
/// whichever way they authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub kind: IdentityKind,
    pub name: String,
    pub groups: BTreeSet<String>,
    /// Unix milliseconds after which the credential that produced this identity is no longer valid.
    pub expires_at: Option<i64>,
}

impl Identity {
    pub fn service(name: impl Into<String>, groups: impl IntoIterator<Item = String>) -> Self {
        Identity {
            kind: IdentityKind::Service,
            name: name.into(),
            groups: groups.into_iter().collect(),
            expires_at: None,
        }
    }

    /// Members of [`ADMIN_GROUP`] hold the built-in management rights.
    pub fn is_admin(&self) -> bool {
        self.groups.contains(ADMIN_GROUP)
    }

    /// `Service::"name"` / `User::"name"`, as written in policies.
    pub fn entity_ref(&self) -> String {
        format!("{}::{:?}", self.kind.entity_type(), self.name)
    }
}

/// Names of identities, connections and credentials: 1–128 characters from letters, digits and
/// `.`, `_`, `-`, `@`, starting with a letter or digit. Safe in paths, URLs and Cedar ids.
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if name.is_empty() || name.len() > 128 {
        return Err(format!("{what} name must be 1 to 128 characters long"));
    }
    if !name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("{what} name {name:?} must start with a letter or digit"));
    }
    if let Some(bad) = name.chars().find(|c| !ok_char(*c)) {
        return Err(format!("{what} name {name:?} contains {bad:?}; use letters, digits, '.', '_', '-' or '@'"));
    }
    Ok(())
}

/// Group names follow the same rules as other names.
pub fn validate_group_name(name: &str) -> Result<(), String> {
    validate_name("group", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("identity", "fn-billing").is_ok());
        assert!(validate_name("identity", "alice@example.com").is_ok());
        assert!(validate_name("identity", "").is_err());
        assert!(validate_name("identity", "-x").is_err());
        assert!(validate_name("identity", "a/b").is_err());
        assert!(validate_name("identity", "a\"b").is_err());
        assert!(validate_name("identity", &"a".repeat(129)).is_err());
    }

    #[test]
    fn entity_ref_quotes() {
        let id = Identity::service("fn", vec!["admins".to_string()]);
        assert_eq!(id.entity_ref(), "Service::\"fn\"");
        assert!(id.is_admin());
    }
}
