//! The audit journal: where a batch of events is committed before its requests are forwarded.
//!
//! A commit is one append to a plain file of the data directory, so the data path pays one
//! `write` per batch, not a database transaction. A background importer then moves the batches
//! into the store in large transactions, and a journal file is deleted once every event in it
//! is in the store and forced to disk there. At start-up, batches a stopped gateway left in the
//! journal are imported before anything else, and `verify` reads the journal after the store,
//! so an event is part of the trail from the moment it is journaled.
//!
//! The journal is a directory of files named by the sequence number of their first event (20
//! digits, so names sort in chain order). Each record is one batch:
//!
//! ```text
//! u32 length of the rest (little-endian)
//! u32 events, then per event:
//!     i64 seq, i64 ts, u8 has-session (then u16 length + session id), u16 length + kind,
//!     u32 length + payload, u8 length + MAC
//! u32 session changes, then per change: u32 length + JSON
//! ```
//!
//! A record cut short (a write torn by an OS crash) ends the file: what follows it is ignored
//! and reported. Appends that fail are undone by cutting the file back to its length before.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use gatehouse_store::{AuditBatch, SessionChange, StoredEvent};

/// The journal's directory, beside the chain head in the data directory.
pub const JOURNAL_DIR: &str = "audit-journal";

/// A journal file holding more than this is closed and a new one started with the next batch.
pub(crate) const ROTATE_AT: u64 = 64 * 1024 * 1024;

/// The largest record a journal may hold; a longer one is taken for a corrupt length.
const MAX_RECORD: usize = 1 << 30;

/// The journal directory that sits beside the chain head file `head_path`.
pub fn journal_dir(head_path: &Path) -> PathBuf {
    head_path.with_file_name(JOURNAL_DIR)
}

/// The journal file being appended to.
#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    len: u64,
    /// The last event appended to this file, if any.
    last_seq: Option<i64>,
}

impl Journal {
    /// Starts a new journal file whose first event will be `next_seq`.
    pub(crate) fn create(dir: &Path, next_seq: i64) -> std::io::Result<Journal> {
        create_dir(dir)?;
        let path = dir.join(format!("{next_seq:020}.journal"));
        let mut options = OpenOptions::new();
        // A file of that name could only hold events not replayed yet: never write over one.
        options.append(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&path)?;
        Ok(Journal { dir: dir.to_path_buf(), path, file, len: 0, last_seq: None })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one batch. On error, nothing of it stays in the file (or the error says the
    /// journal could not be repaired, and no further append may be trusted).
    pub(crate) fn append(&mut self, batch: &AuditBatch) -> Result<(), AppendError> {
        let record = encode(batch).map_err(AppendError::Failed)?;
        match self.file.write_all(&record) {
            Ok(()) => {
                self.len += record.len() as u64;
                if let Some(last) = batch.events.last() {
                    self.last_seq = Some(last.seq);
                }
                Ok(())
            }
            Err(e) => match self.file.set_len(self.len) {
                Ok(()) => Err(AppendError::Failed(e)),
                Err(cut) => {
                    Err(AppendError::Broken(format!("{e}; the partial record could not be removed either: {cut}")))
                }
            },
        }
    }

    /// Once this file is full: forces it to disk, starts a new file at `next_seq`, and returns
    /// the full file and the last event it holds, for the importer to delete once that event
    /// is in the store.
    pub(crate) fn rotate_if_full(&mut self, next_seq: i64) -> std::io::Result<Option<(PathBuf, i64)>> {
        if self.len < ROTATE_AT {
            return Ok(None);
        }
        self.file.sync_data()?;
        let next = Journal::create(&self.dir, next_seq)?;
        let full = std::mem::replace(self, next);
        Ok(Some((full.path, full.last_seq.unwrap_or(next_seq - 1))))
    }
}

/// Why an append failed.
#[derive(Debug)]
pub(crate) enum AppendError {
    /// Nothing was written (or what was is removed again): the journal is as before.
    Failed(std::io::Error),
    /// A partial record may remain: the journal cannot take another batch safely.
    Broken(String),
}

fn create_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn encode(batch: &AuditBatch) -> std::io::Result<Vec<u8>> {
    let too_long = |what: &str| std::io::Error::other(format!("audit {what} too long for the journal"));
    let mut out = Vec::with_capacity(64 + batch.events.iter().map(|e| e.payload.len() + 128).sum::<usize>());
    out.extend_from_slice(&[0; 4]);
    put_u32(&mut out, batch.events.len()).map_err(|()| too_long("batch"))?;
    for e in &batch.events {
        out.extend_from_slice(&e.seq.to_le_bytes());
        out.extend_from_slice(&e.ts.to_le_bytes());
        match &e.session_id {
            Some(id) => {
                out.push(1);
                put_u16(&mut out, id.as_bytes()).map_err(|()| too_long("session id"))?;
            }
            None => out.push(0),
        }
        put_u16(&mut out, e.kind.as_bytes()).map_err(|()| too_long("event kind"))?;
        put_u32(&mut out, e.payload.len()).map_err(|()| too_long("payload"))?;
        out.extend_from_slice(e.payload.as_bytes());
        let mac_len = u8::try_from(e.mac.len()).map_err(|_| too_long("MAC"))?;
        out.push(mac_len);
        out.extend_from_slice(&e.mac);
    }
    put_u32(&mut out, batch.sessions.len()).map_err(|()| too_long("batch"))?;
    for change in &batch.sessions {
        let json = serde_json::to_vec(change).map_err(std::io::Error::other)?;
        put_u32(&mut out, json.len()).map_err(|()| too_long("session change"))?;
        out.extend_from_slice(&json);
    }
    let body = out.len() - 4;
    if body > MAX_RECORD {
        return Err(too_long("batch"));
    }
    let len = u32::try_from(body).map_err(|_| too_long("batch"))?;
    out[..4].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

fn put_u32(out: &mut Vec<u8>, n: usize) -> Result<(), ()> {
    out.extend_from_slice(&u32::try_from(n).map_err(|_| ())?.to_le_bytes());
    Ok(())
}

fn put_u16(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), ()> {
    out.extend_from_slice(&u16::try_from(bytes.len()).map_err(|_| ())?.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Reads fields off a record, failing on anything short or malformed.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2).and_then(|b| b.try_into().ok()).map(|b| usize::from(u16::from_le_bytes(b)))
    }
    fn u32(&mut self) -> Option<usize> {
        self.take(4).and_then(|b| b.try_into().ok()).and_then(|b| usize::try_from(u32::from_le_bytes(b)).ok())
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(i64::from_le_bytes)
    }
    fn text(&mut self, n: usize) -> Option<String> {
        self.take(n).and_then(|b| String::from_utf8(b.to_vec()).ok())
    }
}

fn decode(body: &[u8]) -> Option<AuditBatch> {
    let mut r = Reader(body);
    let events = r.u32()?;
    let mut batch = AuditBatch { events: Vec::with_capacity(events.min(4096)), sessions: Vec::new() };
    for _ in 0..events {
        let seq = r.i64()?;
        let ts = r.i64()?;
        let session_id = match r.u8()? {
            0 => None,
            1 => {
                let n = r.u16()?;
                Some(r.text(n)?)
            }
            _ => return None,
        };
        let n = r.u16()?;
        let kind = r.text(n)?;
        let n = r.u32()?;
        let payload = r.text(n)?;
        let n = usize::from(r.u8()?);
        let mac = r.take(n)?.to_vec();
        batch.events.push(StoredEvent { seq, ts, session_id, kind, payload, mac });
    }
    let changes = r.u32()?;
    for _ in 0..changes {
        let n = r.u32()?;
        let change: SessionChange = serde_json::from_slice(r.take(n)?).ok()?;
        batch.sessions.push(change);
    }
    r.0.is_empty().then_some(batch)
}

/// What the journal directory holds: its files in chain order, the batches they hold, and
/// what could not be read (a torn or corrupt record, after which a file's rest is ignored).
#[derive(Debug, Default)]
pub struct JournalContents {
    pub files: Vec<PathBuf>,
    pub batches: Vec<AuditBatch>,
    pub problems: Vec<String>,
}

/// Reads every journal file in `dir` (none if it does not exist).
pub fn read_journal(dir: &Path) -> std::io::Result<JournalContents> {
    let mut contents = JournalContents::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(contents),
        Err(e) => return Err(e),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "journal"))
        .collect();
    files.sort();
    for path in files {
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            // Deleted meanwhile by the importer: everything in it is in the store.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let record = (rest.len() >= 4)
                .then(|| u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]))
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n <= MAX_RECORD && rest.len() >= 4 + n)
                .and_then(|n| decode(&rest[4..4 + n]).map(|batch| (n, batch)));
            match record {
                Some((n, batch)) => {
                    contents.batches.push(batch);
                    rest = &rest[4 + n..];
                }
                None => {
                    contents.problems.push(format!(
                        "{}: the last {} bytes are not a whole journal record (a write cut short); ignored",
                        path.display(),
                        rest.len()
                    ));
                    break;
                }
            }
        }
        contents.files.push(path);
    }
    Ok(contents)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(seq: i64, session: Option<&str>) -> StoredEvent {
        StoredEvent {
            seq,
            ts: 1_700_000_000_000 + seq,
            session_id: session.map(String::from),
            kind: "request".into(),
            payload: format!(r#"{{"request":"SELECT {seq}","note":"é \u0000"}}"#),
            mac: vec![u8::try_from(seq).unwrap(); 32],
        }
    }

    fn batch(seqs: std::ops::RangeInclusive<i64>) -> AuditBatch {
        AuditBatch {
            events: seqs.clone().map(|s| event(s, if s % 2 == 0 { Some("s1") } else { None })).collect(),
            sessions: seqs
                .map(|s| SessionChange::Request { id: "s1".into(), denied: s % 3 == 0, reviewed: false })
                .collect(),
        }
    }

    #[test]
    fn batches_read_back_exactly_in_order_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join(JOURNAL_DIR);
        let mut j = Journal::create(&jdir, 1).unwrap();
        j.append(&batch(1..=3)).unwrap();
        j.append(&batch(4..=4)).unwrap();
        // An empty batch is a valid record too.
        j.append(&AuditBatch::default()).unwrap();
        let mut k = Journal::create(&jdir, 5).unwrap();
        k.append(&batch(5..=9)).unwrap();
        let read = read_journal(&jdir).unwrap();
        assert_eq!(read.problems, Vec::<String>::new());
        assert_eq!(read.files, vec![jdir.join(format!("{:020}.journal", 1)), jdir.join(format!("{:020}.journal", 5))]);
        assert_eq!(read.batches, vec![batch(1..=3), batch(4..=4), AuditBatch::default(), batch(5..=9)]);
    }

    #[test]
    fn a_torn_last_record_is_reported_and_what_precedes_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), 1).unwrap();
        j.append(&batch(1..=2)).unwrap();
        j.append(&batch(3..=4)).unwrap();
        let path = j.path().to_path_buf();
        let whole = std::fs::read(&path).unwrap();
        for cut in [whole.len() - 1, whole.len() - 40, encode(&batch(1..=2)).unwrap().len() + 3] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let read = read_journal(dir.path()).unwrap();
            assert_eq!(read.batches, vec![batch(1..=2)], "cut at {cut}");
            assert_eq!(read.problems.len(), 1, "{:?}", read.problems);
            assert!(read.problems[0].contains("not a whole journal record"), "{:?}", read.problems);
        }
        // Zeros where a record should be (a file extended but never written) are no record.
        let mut zeroed = whole.clone();
        zeroed.extend_from_slice(&[0; 512]);
        std::fs::write(&path, &zeroed).unwrap();
        let read = read_journal(dir.path()).unwrap();
        assert_eq!(read.batches, vec![batch(1..=2), batch(3..=4)]);
        assert_eq!(read.problems.len(), 1);
    }

    #[test]
    fn a_full_file_is_rotated_to_one_named_by_the_next_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), 1).unwrap();
        j.append(&batch(1..=2)).unwrap();
        assert!(j.rotate_if_full(3).unwrap().is_none(), "not full yet");
        j.len = ROTATE_AT;
        let (full, last) = j.rotate_if_full(3).unwrap().unwrap();
        assert_eq!((full, last), (dir.path().join(format!("{:020}.journal", 1)), 2));
        assert_eq!(j.path(), dir.path().join(format!("{:020}.journal", 3)));
        j.append(&batch(3..=3)).unwrap();
        assert_eq!(read_journal(dir.path()).unwrap().batches, vec![batch(1..=2), batch(3..=3)]);
    }

    #[test]
    fn a_missing_directory_is_an_empty_journal() {
        let dir = tempfile::tempdir().unwrap();
        let read = read_journal(&dir.path().join("nothing")).unwrap();
        assert!(read.files.is_empty() && read.batches.is_empty() && read.problems.is_empty());
    }
}
