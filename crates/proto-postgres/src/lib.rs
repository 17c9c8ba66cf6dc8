//! The PostgreSQL wire protocol (version 3.0) for Gatehouse's PostgreSQL adapter: bounded
//! reading of what callers send ([`read_startup`], [`read_message`]), builders for the messages
//! the gateway answers with itself ([`messages`]), bounded reading of what the resource sends
//! ([`read_backend`]) with cheap accessors that decode only what is asked for, and an upstream
//! client ([`connect`]) that opens a session on the real server — TCP with a deadline, TLS
//! through rustls (ring) as [`TlsMode`] says, trust/cleartext/MD5/SCRAM-SHA-256(-PLUS) login —
//! and forwards cancel requests ([`send_cancel`], [`CancelToken`]). Frames keep their original
//! bytes so the adapter forwards them unchanged unless a pipeline phase changed them.
//!
//! On top of the codec, [`serve`] is the adapter itself: it accepts callers (TLS on
//! `SSLRequest`, passwords only over TLS or on loopback), opens each session through the
//! [`Pipeline`](gatehouse_core::pipeline::Pipeline), logs in upstream, and relays the simple
//! query protocol with every statement decided and recorded before it is forwarded.
//!
//! This crate knows no policy, storage, recording or HTTP: the pipeline decides and records,
//! and statement text becomes requests through the [`Statements`] the caller provides. Length limits are enforced before any allocation, and
//! passwords and cancel keys never appear in `Debug` output or error messages.

#![forbid(unsafe_code)]

mod backend;
mod catalog;
mod classify;
mod digest;
mod exec;
mod extended;
mod frontend;
#[doc(hidden)]
pub mod fuzzing;
mod masking;
pub mod messages;
mod params;
mod session;
mod tls;
mod upstream;
mod wire;

pub use backend::{BackendFrame, Column, ErrorFields, TransactionStatus, next_backend, read_backend};
pub use classify::SqlStatements;
pub use exec::{ExecColumn, ExecError, ExecOutput, ExecStatement, exec, tables};
pub use frontend::{
    CANCEL_REQUEST_CODE, FrontendMessage, GSSENC_REQUEST_CODE, MAX_STARTUP_LEN, ProtocolVersion, SSL_REQUEST_CODE,
    Startup, next_message, read_message, read_startup,
};
pub use session::{ListenerConfig, StatementRequest, Statements, serve};
pub use upstream::{
    AuthMethod, BackendKey, CancelToken, TlsMode, Upstream, UpstreamConfig, UpstreamError, UpstreamStream, connect,
    send_cancel,
};
pub use wire::{FrameReader, WireError};

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
