//! The schema shipped with the crate, parsed once.

use std::sync::OnceLock;

use cedar_policy::{Schema, Validator};

use crate::PolicyError;

/// The Cedar schema every policy is validated against (Cedar schema syntax, no namespace).
/// `gatehouse policies schema` prints it.
pub const SCHEMA: &str = include_str!("../schema.cedarschema");

pub(crate) struct Loaded {
    pub(crate) schema: Schema,
    pub(crate) validator: Validator,
}

static LOADED: OnceLock<Result<Loaded, String>> = OnceLock::new();

pub(crate) fn get() -> Result<&'static Loaded, PolicyError> {
    LOADED
        .get_or_init(|| {
            let (schema, warnings) = Schema::from_cedarschema_str(SCHEMA).map_err(|e| e.to_string())?;
            for w in warnings {
                tracing::warn!(warning = %w, "policy schema warning");
            }
            Ok(Loaded { validator: Validator::new(schema.clone()), schema })
        })
        .as_ref()
        .map_err(|e| PolicyError::Schema(e.clone()))
}
