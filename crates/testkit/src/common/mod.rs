//! Building blocks shared by every server the kit starts: loopback ports ([`net`]), running
//! commands with captured output and a deadline ([`cmd`]), dropping privileges when the tests run
//! as root ([`user`]), per-server temporary directories ([`dir`]), looking at processes by pid
//! ([`process`]) and, crate-internal, the line protocol of the node scripts behind
//! [`crate::oidc`] and [`crate::browser`] (`lineproto`).
//!
//! Each server module (today [`crate::postgres`]; later MariaDB, Redis and sshd) is a thin layer
//! over these: find the binaries, make a directory, write a config naming a port from
//! [`net::start_on_free_port`], start, wait with [`net::wait_for_port`], and undo it all on Drop.

pub mod cmd;
pub mod dir;
pub(crate) mod lineproto;
pub mod net;
pub mod process;
pub mod user;

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};

/// `len` random bytes from `/dev/urandom`, hex-encoded (so `2 * len` characters, safe to put in
/// URLs, config files and SQL literals without quoting).
pub fn random_hex(len: usize) -> Result<String> {
    let mut buf = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading random bytes from /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The last `max_lines` lines of a log file, for error messages. Never fails: a missing or
/// unreadable file yields a note saying so.
pub fn log_tail(path: &Path, max_lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(max_lines);
            lines[start..].join("\n")
        }
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}
