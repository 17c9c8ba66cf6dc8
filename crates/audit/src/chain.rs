use std::io::Write;
use std::path::Path;

use gatehouse_keys::Keys;
use serde::{Deserialize, Serialize};

/// The chain head file's name inside the data directory.
pub const HEAD_FILE: &str = "audit.head";

/// The newest committed event's sequence number and MAC, kept outside the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub seq: i64,
    /// Hex of the event's MAC.
    pub mac: String,
}

/// The MAC of one event: over its place in the chain, its fields and the previous event's MAC.
pub fn chain_mac(
    keys: &Keys,
    prev_mac: &[u8],
    seq: i64,
    ts: i64,
    session_id: Option<&str>,
    kind: &str,
    payload: &str,
) -> [u8; 32] {
    keys.audit_mac(&[
        b"gatehouse audit v1",
        prev_mac,
        &seq.to_be_bytes(),
        &ts.to_be_bytes(),
        session_id.unwrap_or("").as_bytes(),
        kind.as_bytes(),
        payload.as_bytes(),
    ])
}

/// Reads the chain head, `None` if the file does not exist.
pub fn read_head(path: &Path) -> Result<Option<ChainHead>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Replaces the chain head atomically (write a temporary file, then rename over the old one).
pub fn write_head(path: &Path, head: &ChainHead, fsync: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("head.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string(head).map_err(std::io::Error::other)?.as_bytes())?;
        if fsync {
            f.sync_data()?;
        }
    }
    std::fs::rename(&tmp, path)?;
    if fsync && let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
