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
        // The writer creates the file before the first batch: empty means no head yet.
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The chain head's file, kept open by the writer and rewritten in place after batches: one
/// small write at offset 0 (padded to a fixed size), no new file or rename per batch, which
/// would cost more than the batch itself. A write torn by a crash leaves an unreadable head,
/// which `verify` reports; it never passes for a valid one.
#[derive(Debug)]
pub struct HeadFile {
    file: std::fs::File,
    /// The file has its fixed length already.
    sized: bool,
}

/// Every head record is padded to this many bytes (JSON, then spaces, then a newline).
const HEAD_RECORD: usize = 160;

impl HeadFile {
    pub fn open(path: &Path) -> std::io::Result<HeadFile> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        Ok(HeadFile { file: options.open(path)?, sized: false })
    }

    /// Forces what was written to disk.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Writes `head` in place (it reaches the disk when the OS writes it back or the file is
    /// forced to disk).
    pub fn write(&mut self, head: &ChainHead) -> std::io::Result<()> {
        let mut record = serde_json::to_string(head).map_err(std::io::Error::other)?;
        if record.len() >= HEAD_RECORD {
            return Err(std::io::Error::other("chain head record too long"));
        }
        record.extend(std::iter::repeat_n(' ', HEAD_RECORD - 1 - record.len()));
        record.push('\n');
        #[cfg(unix)]
        {
            // One positioned write: no seek of its own.
            use std::os::unix::fs::FileExt;
            self.file.write_all_at(record.as_bytes(), 0)?;
        }
        #[cfg(not(unix))]
        {
            use std::io::{Seek, SeekFrom, Write};
            self.file.seek(SeekFrom::Start(0))?;
            self.file.write_all(record.as_bytes())?;
        }
        if !self.sized {
            if self.file.metadata()?.len() != HEAD_RECORD as u64 {
                self.file.set_len(HEAD_RECORD as u64)?;
            }
            self.sized = true;
        }
        Ok(())
    }
}
