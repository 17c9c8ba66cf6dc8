//! The vocabulary every other Gatehouse crate speaks: who is calling ([`Identity`]), what they
//! touch ([`Resource`]), what they ask ([`AuthzRequest`]) and what the gateway answers
//! ([`Decision`]), plus the [`Blame`] carried by errors and what every listener shares
//! ([`admission`]: the accept loop and the connection count callers are admitted by). Beyond
//! that accept loop this crate does no I/O, and it knows no protocol, storage or policy
//! language; it defines the types the pipeline passes around.

#![forbid(unsafe_code)]

pub mod admission;
mod decision;
mod identity;
pub mod pipeline;
mod resource;

pub use decision::{Approval, AuthzRequest, Decision, Outcome};
pub use identity::{ADMIN_GROUP, Identity, IdentityKind, validate_group_name, validate_name};
pub use resource::{ConnectionInfo, Resource, ResourceError};

/// Who is at fault when something fails. Protocol edges turn this into the native refusal
/// (an `ErrorResponse`, an HTTP status, …); logs and recordings keep it for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blame {
    /// The caller sent something wrong (bad token, malformed input).
    Caller,
    /// The upstream resource failed or refused.
    Resource,
    /// The gateway itself failed (store down, bug).
    Gateway,
    /// Policy refused the request.
    Policy,
}
