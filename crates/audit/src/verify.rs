use std::path::Path;

use gatehouse_keys::Keys;
use gatehouse_store::Store;
use serde::Serialize;

use crate::chain::{chain_mac, read_head};

const PAGE: usize = 2048;

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// Events checked and found good, in chain order.
    pub events: i64,
    /// How many of them were found in the journal only, not (yet) in the store: moved there
    /// within milliseconds while the gateway runs, or at its next start.
    pub journal_only: i64,
    /// The sequence number of the first bad or missing event.
    pub first_bad: Option<i64>,
    pub problem: Option<String>,
    /// When the check finished (Unix milliseconds).
    pub checked_at: i64,
}

impl VerifyReport {
    /// `ok: N events`, or `bad: event S: problem`, as `gatehouse audit verify` prints it.
    pub fn line(&self) -> String {
        match (&self.first_bad, &self.problem) {
            (Some(seq), Some(p)) => format!("bad: event {seq}: {p}"),
            (None, Some(p)) => format!("bad: {p}"),
            _ if self.journal_only > 0 => {
                format!(
                    "ok: {} events ({} of them in the journal, not yet in the store)",
                    self.events, self.journal_only
                )
            }
            _ => format!("ok: {} events", self.events),
        }
    }

    fn bad(events: i64, seq: Option<i64>, problem: String) -> Self {
        VerifyReport {
            ok: false,
            events,
            journal_only: 0,
            first_bad: seq,
            problem: Some(problem),
            checked_at: crate::now_ms(),
        }
    }
}

/// Walks the whole chain, in the store and then in the journal beside the head file (events
/// not moved into the store yet, or left there by a gateway that stopped), and checks it
/// against the head file at `head_path`. Detects an edited event (its MAC no longer matches),
/// a deleted one (a gap in the sequence), reordered events (MACs cover the sequence number and
/// the previous MAC) and deleted newest events (the head records more than the trail holds).
pub async fn verify(store: &dyn Store, keys: &Keys, head_path: &Path) -> Result<VerifyReport, String> {
    // The head is read first: events committed while we walk only make it older, never newer.
    verify_with_head(store, keys, read_head(head_path), None, head_path).await
}

/// [`verify`] against a chain head read earlier, checking events up to `until` only: at
/// start-up, the head and the last sequence number are taken before this run writes anything.
pub async fn verify_with_head(
    store: &dyn Store,
    keys: &Keys,
    head: Result<Option<crate::ChainHead>, String>,
    until: Option<i64>,
    head_path: &Path,
) -> Result<VerifyReport, String> {
    let head = match head {
        Ok(head) => head,
        Err(e) => {
            return Ok(VerifyReport::bad(
                0,
                None,
                format!("the chain head is unreadable ({e}); the newest events cannot be checked"),
            ));
        }
    };
    let mut expected = 1i64;
    let mut prev = vec![0u8; 32];
    let mut head_seen = false;
    let journal = crate::journal_dir(head_path);
    let mut journal_only = 0;
    loop {
        let mut page = store.events_after(expected - 1, PAGE).await.map_err(|e| e.to_string())?;
        let from_journal = page.is_empty();
        if from_journal {
            // Where the store ends, the journal goes on (until its events are imported). Once
            // its events are checked, the store is looked at again: the importer may have moved
            // more there meanwhile.
            page = journal_events_after(&journal, expected - 1)?;
        }
        if let Some(until) = until {
            page.retain(|e| e.seq <= until);
        }
        if page.is_empty() {
            break;
        }
        if from_journal {
            journal_only += i64::try_from(page.len()).unwrap_or(i64::MAX);
        }
        for e in &page {
            if e.seq != expected {
                let problem = if e.seq > expected {
                    if e.seq == expected + 1 {
                        "missing (deleted from the store)".to_string()
                    } else {
                        format!("missing, with the {} events after it (deleted from the store)", e.seq - expected - 1)
                    }
                } else {
                    "out of sequence".to_string()
                };
                return Ok(VerifyReport::bad(expected - 1, Some(expected), problem));
            }
            let mac = chain_mac(keys, &prev, e.seq, e.ts, e.session_id.as_deref(), &e.kind, &e.payload);
            if mac.as_slice() != e.mac.as_slice() {
                return Ok(VerifyReport::bad(
                    expected - 1,
                    Some(e.seq),
                    format!("{} event does not match its MAC (edited, reordered or forged)", e.kind),
                ));
            }
            if let Some(h) = &head
                && h.seq == e.seq
            {
                head_seen = true;
                if hex::encode(&e.mac) != h.mac {
                    return Ok(VerifyReport::bad(
                        expected - 1,
                        Some(e.seq),
                        "does not match the chain head kept outside the store (replaced)".into(),
                    ));
                }
            }
            prev = e.mac.clone();
            expected += 1;
        }
    }
    let count = expected - 1;
    match head {
        Some(h) if h.seq > count => Ok(VerifyReport::bad(
            count,
            Some(count + 1),
            format!(
                "missing: the chain head records {} events but the store ends at {count} (newest events deleted)",
                h.seq
            ),
        )),
        Some(_) if !head_seen && count > 0 => {
            Ok(VerifyReport::bad(count, None, "the chain head does not match the store".into()))
        }
        None if count > 0 => Ok(VerifyReport::bad(
            count,
            None,
            format!("the chain head file {} is missing; the newest events cannot be checked", head_path.display()),
        )),
        _ => Ok(VerifyReport {
            ok: true,
            events: count,
            journal_only,
            first_bad: None,
            problem: None,
            checked_at: crate::now_ms(),
        }),
    }
}

/// The journal's events after sequence number `after`, in chain order.
fn journal_events_after(dir: &Path, after: i64) -> Result<Vec<gatehouse_store::StoredEvent>, String> {
    let contents =
        crate::read_journal(dir).map_err(|e| format!("cannot read the audit journal {}: {e}", dir.display()))?;
    Ok(contents.batches.into_iter().flat_map(|b| b.events).filter(|e| e.seq > after).collect())
}
