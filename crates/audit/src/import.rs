//! Moves journaled batches into the store, off the data path: a thread of its own wakes when a
//! batch is journaled, waits [`IMPORT_EVERY`] for more, and commits all of them to the store in
//! one transaction. Journal files whose every event is in the store are deleted, after the store's
//! log is forced to disk (when the writer forces to disk at all). Also the start-up replay of
//! what a stopped gateway left in the journal.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use gatehouse_store::{AuditBatch, Store};
use tokio::sync::watch;

use crate::writer::{RETRY_AFTER, WriterStats, force_to_disk};
use crate::{AuditError, read_journal};

/// How long the importer lets batches gather before it takes them. Each import is one store
/// transaction, whose cost hardly depends on how many events it carries; readers that must see
/// the newest events wait for it (see [`Progress::settled`]).
pub(crate) const IMPORT_EVERY: Duration = Duration::from_millis(20);

/// Most events moved into the store in one transaction.
const IMPORT_MAX: usize = 16_384;

/// Journaled events not yet in the store beyond which new events are refused (fail closed):
/// the store has fallen too far behind, and the importer's queue must not grow without bound.
pub(crate) const MAX_BACKLOG: i64 = 200_000;

pub(crate) enum Import {
    Batch(AuditBatch),
    /// A full journal file, whose last event is the `i64`: delete it once that is in the store.
    Retire(PathBuf, i64),
}

/// Where journaled and imported events stand, shared by the writer, the importer and readers.
#[derive(Debug)]
pub(crate) struct Progress {
    /// The last event journaled.
    pub(crate) journaled: AtomicI64,
    /// The last event in the store, for reading and for waiting on.
    pub(crate) imported: watch::Sender<i64>,
    /// The writer has stopped: the importer gives up on a store that still fails.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
}

impl Progress {
    pub(crate) fn new(last: i64) -> Progress {
        Progress {
            journaled: AtomicI64::new(last),
            imported: watch::Sender::new(last),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Why new events must be refused now: the store cannot take events, or is too far behind.
    pub(crate) fn refusal(&self, stats: &WriterStats) -> Option<String> {
        if let Some(e) = stats.import_failing() {
            return Some(format!("the audit store cannot take events: {e}"));
        }
        let behind = self.journaled.load(Ordering::Relaxed) - *self.imported.borrow();
        (behind > MAX_BACKLOG).then(|| format!("the audit store is {behind} events behind the journal"))
    }

    /// Waits until every event journaled before the call is in the store, for at most `limit`.
    /// Returns whether it is.
    pub(crate) async fn settled(&self, limit: Duration) -> bool {
        let target = self.journaled.load(Ordering::Acquire);
        let mut rx = self.imported.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|imported| *imported >= target)).await.is_ok_and(|r| r.is_ok())
    }
}

/// Starts the importer thread. It stops once `rx`'s senders are gone and it has imported
/// everything sent (or the store fails then: the journal keeps it).
pub(crate) fn start(
    store: Arc<dyn Store>,
    rx: mpsc::Receiver<Import>,
    progress: Arc<Progress>,
    stats: Arc<WriterStats>,
    force: bool,
) -> Result<std::thread::JoinHandle<()>, AuditError> {
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("audit-import".into())
        .spawn(move || run(&runtime, store.as_ref(), &rx, &progress, &stats, force))
        .map_err(|e| AuditError::Unavailable(format!("cannot start the audit importer: {e}")))
}

fn run(
    runtime: &tokio::runtime::Handle,
    store: &dyn Store,
    rx: &mpsc::Receiver<Import>,
    progress: &Progress,
    stats: &WriterStats,
    force: bool,
) {
    let mut retired: Vec<(PathBuf, i64)> = Vec::new();
    let mut open = true;
    while open {
        // Idle, it sleeps until a batch comes. Then it lets the batches of the next few
        // milliseconds join that one: the data path does not wake it per commit (a wake-up per
        // commit would cost more than the whole import does).
        let Ok(first) = rx.recv() else { break };
        std::thread::sleep(IMPORT_EVERY);
        let mut batch = AuditBatch::default();
        absorb(first, &mut batch, &mut retired);
        while batch.events.len() < IMPORT_MAX {
            match rx.try_recv() {
                Ok(message) => absorb(message, &mut batch, &mut retired),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        // Only a full file to retire: nothing to import yet (every session change comes with
        // an event).
        let Some(last) = batch.events.last().map(|e| e.seq) else { continue };
        // What the journal holds is recorded already: keep trying until the store takes it.
        // Meanwhile the writer refuses new events (`Progress::refusal`). When the writer stops
        // while the store still fails, the journal keeps the events for the next start.
        loop {
            match runtime.block_on(store.append_audit_inline(&batch)) {
                Ok(()) => break,
                Err(e) if !open || progress.stopping.load(Ordering::Acquire) => {
                    tracing::error!(error = %e, events = batch.events.len(), "the audit store cannot take the last journaled events; the journal keeps them for the next start");
                    return;
                }
                Err(e) => {
                    if stats.import_failing().is_none() {
                        tracing::error!(error = %e, events = batch.events.len(), "the audit store cannot take the journaled events; new requests are refused until it can");
                    }
                    stats.set_import_failing(Some(e.to_string()));
                    std::thread::sleep(RETRY_AFTER);
                }
            }
        }
        if stats.import_failing().is_some() {
            tracing::info!("the audit store takes events again; requests are served");
            stats.set_import_failing(None);
        }
        // The store's log needs forcing to disk only before the journal stops holding these
        // events: before a full journal file is deleted, and at the end (the writer deletes
        // the last file then). Until then, the journal is what survives an OS crash.
        let deleting = !open || retired.iter().any(|(_, upto)| *upto <= last);
        let forced = !(force && deleting)
            || force_to_disk(&store.log_files())
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "the audit store's log could not be forced to disk; the journal is kept");
                })
                .is_ok();
        if !forced && !open {
            // The writer keeps the last journal file when not everything is imported.
            return;
        }
        stats.imported_events.fetch_add(batch.events.len() as u64, Ordering::Relaxed);
        progress.imported.send_replace(last);
        if forced {
            retired.retain(|(path, upto)| {
                if *upto > last {
                    return true;
                }
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(file = %path.display(), error = %e, "an imported audit journal file could not be deleted");
                }
                false
            });
        }
    }
}

fn absorb(message: Import, batch: &mut AuditBatch, retired: &mut Vec<(PathBuf, i64)>) {
    match message {
        Import::Batch(b) => {
            batch.events.extend(b.events);
            batch.sessions.extend(b.sessions);
        }
        Import::Retire(path, last) => retired.push((path, last)),
    }
}

/// Imports into the store what the journal in `dir` holds beyond the store's last event (left
/// by a gateway that stopped before its importer caught up), forces it to disk, and deletes
/// the journal files. Returns how many events it imported. Run before the writer starts.
pub async fn replay_journal(store: &dyn Store, dir: &Path) -> Result<usize, AuditError> {
    let unavailable = AuditError::Unavailable;
    let contents = read_journal(dir).map_err(|e| unavailable(format!("cannot read the audit journal: {e}")))?;
    for problem in &contents.problems {
        tracing::error!(%problem, "the audit journal has a damaged record; the events after it are lost");
    }
    if contents.files.is_empty() {
        return Ok(0);
    }
    let last = store.last_event().await.map_err(|e| unavailable(e.to_string()))?.map_or(0, |(seq, _)| seq);
    let mut missing = AuditBatch::default();
    for batch in contents.batches {
        if batch.events.last().is_none_or(|e| e.seq <= last) {
            continue;
        }
        missing.events.extend(batch.events.into_iter().filter(|e| e.seq > last));
        missing.sessions.extend(batch.sessions);
    }
    let imported = missing.events.len();
    if imported > 0 {
        store.append_audit_inline(&missing).await.map_err(|e| unavailable(e.to_string()))?;
        force_to_disk(&store.log_files())
            .map_err(|e| unavailable(format!("cannot force the replayed audit events to disk: {e}")))?;
        tracing::info!(events = imported, "audit events left in the journal were moved into the store");
    }
    for file in &contents.files {
        std::fs::remove_file(file)
            .map_err(|e| unavailable(format!("cannot delete the replayed journal file {}: {e}", file.display())))?;
    }
    Ok(imported)
}
