use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use gatehouse_keys::Keys;
use gatehouse_store::{AuditBatch, SessionChange, SessionRecord, Store, StoredEvent};
use std::collections::VecDeque;

use tokio::sync::{mpsc, oneshot};

use crate::chain::{ChainHead, HeadFile, chain_mac};
use crate::import::{Import, Progress};
use crate::journal::{AppendError, Journal, journal_dir};
use crate::{AuditError, now_ms};

/// Most events committed in one batch.
const MAX_BATCH: usize = 4096;
/// Requests waiting for the writer before new ones are turned away.
const QUEUE: usize = 65_536;

/// How often committed events are also forced to disk. Either way, callers proceed once their
/// events are committed to the audit journal (they survive the gateway being killed); forcing
/// to disk is what makes them survive an OS crash or a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After each batch, the journal and the chain head are forced to disk by a thread of
    /// their own, at most once per interval (the store's log is forced before a journal file
    /// is deleted): a batch is on disk within about one interval of its commit, and no caller
    /// waits for the disk. If forcing fails, the writer refuses new events (fail closed).
    Interval(std::time::Duration),
    /// Left to the operating system's write-back.
    Off,
}

/// The default interval of [`FsyncPolicy::Interval`].
pub const FSYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// One event to record.
#[derive(Debug, Clone)]
pub struct Entry {
    pub session_id: Option<String>,
    pub kind: String,
    /// A JSON object, serialised once when the entry is made: the event is stored and chained
    /// exactly as this text.
    pub payload: String,
    /// What this event does to the sessions table, committed in the same batch.
    pub session_change: Option<SessionChange>,
}

impl Entry {
    /// An event outside any session's counters (a server event, a management change's result).
    pub fn event(session_id: Option<&str>, kind: &str, payload: &serde_json::Value) -> Entry {
        Entry {
            session_id: session_id.map(String::from),
            kind: kind.into(),
            payload: payload.to_string(),
            session_change: None,
        }
    }

    /// A session's first event, opening its row in the sessions table.
    pub fn session_start(record: SessionRecord, payload: &serde_json::Value) -> Entry {
        Entry {
            session_id: Some(record.id.clone()),
            kind: "session.start".into(),
            payload: payload.to_string(),
            session_change: Some(SessionChange::Open(record)),
        }
    }

    /// A request of a session and its decision, counted in the session's row (as held for
    /// review when the payload's `decision` is `review`).
    pub fn request(session_id: &str, payload: &serde_json::Value, denied: bool) -> Entry {
        let reviewed = payload.get("decision").and_then(serde_json::Value::as_str) == Some("review");
        Self::request_serialized(session_id, payload.to_string(), denied, reviewed)
    }

    /// [`Entry::request`] with its payload already serialised (the data path builds it
    /// without an intermediate JSON value).
    pub fn request_serialized(session_id: &str, payload: String, denied: bool, reviewed: bool) -> Entry {
        Entry {
            session_id: Some(session_id.to_string()),
            kind: "request".into(),
            payload,
            session_change: Some(SessionChange::Request { id: session_id.to_string(), denied, reviewed }),
        }
    }

    /// The result of a request (`payload`, serialised). The values it says were masked are
    /// added to the session's row.
    pub fn result(session_id: &str, payload: String, masked_values: i64) -> Entry {
        Entry {
            session_id: Some(session_id.to_string()),
            kind: "request.result".into(),
            payload,
            session_change: (masked_values > 0)
                .then(|| SessionChange::Masked { id: session_id.to_string(), values: masked_values }),
        }
    }

    /// A session's last event, closing its row with the reason.
    pub fn session_end(session_id: &str, reason: &str) -> Entry {
        Entry {
            session_id: Some(session_id.to_string()),
            kind: "session.end".into(),
            payload: serde_json::json!({"reason": reason}).to_string(),
            session_change: Some(SessionChange::Close {
                id: session_id.to_string(),
                ended_at: crate::now_ms(),
                reason: reason.to_string(),
            }),
        }
    }
}

/// A new session's row: who, where, from where, since when; counters at zero.
pub fn session_record(
    id: &str,
    identity: &str,
    kind: gatehouse_core::IdentityKind,
    connection: Option<&str>,
    protocol: &str,
    client_addr: Option<String>,
) -> SessionRecord {
    SessionRecord {
        id: id.to_string(),
        identity: identity.to_string(),
        identity_kind: kind,
        connection: connection.map(String::from),
        protocol: protocol.to_string(),
        client_addr,
        started_at: crate::now_ms(),
        ended_at: None,
        end_reason: None,
        requests: 0,
        denied: 0,
        reviewed: 0,
        masked: 0,
    }
}

struct Job {
    entries: Vec<Entry>,
    reply: oneshot::Sender<Result<Vec<i64>, AuditError>>,
    /// Someone waits on this commit: commit without delay.
    urgent: bool,
    /// What it records already happened (a result, a session's end): if the commit fails, it
    /// is kept and tried again rather than answered with the error.
    kept: bool,
}

/// How long entries that nothing waits for (results of requests already forwarded) may wait
/// for company before they are committed on their own.
const LATER_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

/// How long entries that nothing waits for wait before another try, after a failed commit.
/// (Entries a request waits on are not retried: the request is refused instead.)
pub(crate) const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Called after each batch with how many events it held, how long the commit took, and whether
/// it succeeded.
pub type CommitObserver = Arc<dyn Fn(usize, std::time::Duration, bool) + Send + Sync>;

/// Counters for metrics and `/readyz`.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub queued: AtomicUsize,
    pub batches: AtomicU64,
    pub events: AtomicU64,
    pub failures: AtomicU64,
    pub last_commit_micros: AtomicU64,
    /// Times the store's log and the chain head were forced to disk.
    pub syncs: AtomicU64,
    /// Times the store's log was checkpointed in the background.
    pub checkpoints: AtomicU64,
    /// Events moved from the journal into the store.
    pub imported_events: AtomicU64,
    /// Why forcing them to disk failed (or the journal could not be repaired after a failed
    /// write), once it has: no event is recorded after that.
    fsync_failure: std::sync::Mutex<Option<String>>,
    /// Why the last batch failed, until one succeeds again.
    failing: std::sync::Mutex<Option<String>>,
    /// Why the store does not take the journaled events, until it does again.
    import_failing: std::sync::Mutex<Option<String>>,
    /// Why the chain head cannot be written (a full disk, a file size limit), until it can.
    head_failing: std::sync::Mutex<Option<String>>,
}

impl WriterStats {
    /// Why forcing the audit trail to disk failed, if it has (the writer refuses events since).
    pub fn fsync_failure(&self) -> Option<String> {
        self.fsync_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Why events cannot be recorded, while that lasts (requests are refused meanwhile): the
    /// last batch could not be journaled, the chain head cannot be written, or the store does
    /// not take the journaled events. `None` once all work again.
    pub fn failing(&self) -> Option<String> {
        let journal = self.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        journal.or_else(|| self.head_failing()).or_else(|| self.import_failing())
    }

    fn head_failing(&self) -> Option<String> {
        self.head_failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_head_failing(&self, why: Option<String>) {
        *self.head_failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }

    fn set_failing(&self, why: Option<String>) {
        *self.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }

    pub(crate) fn import_failing(&self) -> Option<String> {
        self.import_failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) fn set_import_failing(&self, why: Option<String>) {
        *self.import_failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }

    fn set_fsync_failure(&self, why: String) {
        *self.fsync_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
    }
}

/// The single writer of the audit trail. Cloning shares the same writer.
///
/// Group commit without a writer thread: a caller that must wait for its events queues them
/// and, if no commit is under way, commits everything queued itself, on its own thread (one
/// append to the audit journal; forcing to disk and moving the events into the store happen
/// elsewhere, see [`crate::journal`]). Callers arriving meanwhile queue theirs, and whoever is
/// committing takes them next, so under load many requests share one commit, and with one
/// caller nothing is handed to another thread. Entries nothing waits for ride with the next
/// commit, or a background task commits them within [`LATER_WINDOW`].
#[derive(Debug, Clone)]
pub struct AuditWriter {
    shared: Arc<Shared>,
    /// Wakes the task that commits later entries; it stops once every clone is dropped.
    later: mpsc::Sender<()>,
}

struct Shared {
    queue: std::sync::Mutex<Pending>,
    /// Held by whoever is committing.
    chain: tokio::sync::Mutex<Task>,
    stats: Arc<WriterStats>,
    progress: Arc<Progress>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("stats", &self.stats).finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Pending {
    jobs: VecDeque<Job>,
    /// How many of the jobs someone waits on.
    urgent: usize,
}

impl AuditWriter {
    /// Starts the writer. First it moves into the store what the journal beside `head_path`
    /// still holds (see [`crate::replay_journal`]); then it continues the chain from the newer
    /// of the store's last event and the chain head file (so events deleted from the store stay
    /// a detectable gap). The handle finishes once every `AuditWriter` clone is dropped and
    /// what was queued is committed and moved into the store.
    pub async fn start(
        store: Arc<dyn Store>,
        keys: Arc<Keys>,
        head_path: PathBuf,
        fsync: FsyncPolicy,
    ) -> Result<(AuditWriter, tokio::task::JoinHandle<()>), AuditError> {
        Self::start_observed(store, keys, head_path, fsync, None).await
    }

    /// [`AuditWriter::start`], calling `observer` after every batch (for metrics).
    pub async fn start_observed(
        store: Arc<dyn Store>,
        keys: Arc<Keys>,
        head_path: PathBuf,
        fsync: FsyncPolicy,
        observer: Option<CommitObserver>,
    ) -> Result<(AuditWriter, tokio::task::JoinHandle<()>), AuditError> {
        let journal_dir = journal_dir(&head_path);
        crate::replay_journal(store.as_ref(), &journal_dir).await?;
        let last = store.last_event().await.map_err(|e| AuditError::Unavailable(e.to_string()))?;
        let head = crate::read_head(&head_path).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the audit chain head is unreadable; continuing from the store (verify reports it)");
            None
        });
        let (mut seq, mut prev) = last.unwrap_or((0, vec![0u8; 32]));
        if let Some(h) = head
            && h.seq > seq
        {
            tracing::error!(
                store_last = seq,
                head = h.seq,
                "the audit chain head is ahead of the store: events were deleted; continuing after the head so the gap stays visible"
            );
            seq = h.seq;
            prev = hex::decode(&h.mac).unwrap_or_else(|_| vec![0u8; 32]);
        }
        let stats = Arc::new(WriterStats::default());
        let head_file = HeadFile::open(&head_path)
            .map_err(|e| AuditError::Unavailable(format!("cannot open the chain head {}: {e}", head_path.display())))?;
        let journal = Journal::create(&journal_dir, seq + 1).map_err(|e| {
            AuditError::Unavailable(format!("cannot open the audit journal in {}: {e}", journal_dir.display()))
        })?;
        let journal_path = Arc::new(std::sync::Mutex::new(journal.path().to_path_buf()));
        let (sync, every) = match fsync {
            FsyncPolicy::Interval(every) => (Some(journal_path.clone()), every),
            FsyncPolicy::Off => (None, FSYNC_INTERVAL),
        };
        let syncer = Syncer::start(store.clone(), head_file, sync, every, stats.clone())?;
        // Events the store holds count as imported; so do those of a gap after them (the chain
        // continues after the head), which no import will fill.
        let progress = Arc::new(Progress::new(seq));
        let (import_tx, import_rx) = std::sync::mpsc::channel();
        let importer = crate::import::start(
            store,
            import_rx,
            progress.clone(),
            stats.clone(),
            matches!(fsync, FsyncPolicy::Interval(_)),
        )?;
        let task = Task {
            keys,
            journal,
            journal_path,
            import: Some(import_tx),
            progress: progress.clone(),
            syncer,
            seq,
            prev,
            stats: stats.clone(),
            observer,
            failed: false,
        };
        let shared = Arc::new(Shared {
            queue: std::sync::Mutex::new(Pending::default()),
            chain: tokio::sync::Mutex::new(task),
            stats,
            progress,
        });
        let (later, mut wake) = mpsc::channel::<()>(1);
        let flusher = shared.clone();
        let handle = tokio::spawn(async move {
            let mut retrying = false;
            loop {
                if retrying {
                    // The last commit failed and left entries to retry: try again after a pause,
                    // or at once when every writer is gone.
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                        woken = wake.recv() => if woken.is_none() { break },
                    }
                } else {
                    if wake.recv().await.is_none() {
                        break;
                    }
                    tokio::time::sleep(LATER_WINDOW).await;
                }
                let ok = flusher.commit_queued(false).await;
                retrying = !ok && !flusher.queue().jobs.is_empty();
            }
            // Every writer is gone: commit what is left, and wait for it to be in the store.
            flusher.commit_queued(false).await;
            let journal = {
                let mut task = flusher.chain.lock().await;
                task.import = None;
                task.journal.path().to_path_buf()
            };
            flusher.progress.stopping.store(true, Ordering::Release);
            if !matches!(tokio::task::spawn_blocking(move || importer.join()).await, Ok(Ok(()))) {
                tracing::error!("the audit importer stopped abnormally; the journal keeps what it did not import");
            }
            // The syncer writes the final chain head (and forces it to disk) as it stops.
            let syncer = flusher.chain.lock().await.syncer.stop();
            if let Some(thread) = syncer
                && !matches!(tokio::task::spawn_blocking(move || thread.join()).await, Ok(Ok(())))
            {
                tracing::error!("the audit fsync thread stopped abnormally; the chain head may be behind");
            }
            // Everything journaled is in the store: the journal has nothing left to keep.
            let progress = &flusher.progress;
            if *progress.imported.borrow() >= progress.journaled.load(Ordering::Acquire)
                && let Err(e) = std::fs::remove_file(&journal)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file = %journal.display(), error = %e, "the imported audit journal could not be deleted");
            }
        });
        Ok((AuditWriter { shared, later }, handle))
    }

    /// Records the entries, in order and atomically, and returns their sequence numbers once
    /// they are committed. An error means they were not recorded: do not forward the request.
    pub async fn record(&self, entries: Vec<Entry>) -> Result<Vec<i64>, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.shared.enqueue(Job { entries, reply, urgent: true, kept: false })?;
        if !self.shared.commit_queued(true).await {
            // Entries nothing waits for may have been put back: the background task retries.
            let _ = self.later.try_send(());
        }
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    /// Records entries that nothing waits for before acting (the result of a request already
    /// forwarded): they ride with the next commit, or are committed on their own within a few
    /// milliseconds, so they do not cost a commit of their own under load.
    pub async fn record_later(&self, entries: Vec<Entry>) -> Result<Vec<i64>, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue_later(Job { entries, reply, urgent: false, kept: true })?;
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    /// [`record_later`](Self::record_later) without waiting for the commit at all: for a
    /// caller with nothing to do on the outcome (a failed batch is logged). Errs only when the
    /// queue is full.
    pub fn record_detached(&self, entries: Vec<Entry>) -> Result<(), AuditError> {
        let (reply, _) = oneshot::channel();
        self.enqueue_later(Job { entries, reply, urgent: false, kept: true })
    }

    fn enqueue_later(&self, job: Job) -> Result<(), AuditError> {
        self.shared.enqueue(job)?;
        // Full: a wake-up is pending already, and it covers this job too.
        let _ = self.later.try_send(());
        Ok(())
    }

    /// Records entries of something that already happened (a session's end) without delay,
    /// and returns once they are committed. If the store fails, they are kept and tried again
    /// until it recovers, and this waits until then.
    pub async fn record_kept(&self, entries: Vec<Entry>) -> Result<Vec<i64>, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.shared.enqueue(Job { entries, reply, urgent: true, kept: true })?;
        if !self.shared.commit_queued(true).await {
            let _ = self.later.try_send(());
        }
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    /// Records one entry.
    pub async fn record_one(&self, entry: Entry) -> Result<i64, AuditError> {
        let seqs = self.record(vec![entry]).await?;
        seqs.first().copied().ok_or(AuditError::Stopped)
    }

    pub fn stats(&self) -> &WriterStats {
        &self.shared.stats
    }

    /// Waits (at most `limit`) until every event recorded before the call is in the store, so
    /// that a reader of the store sees them. Returns whether they all are.
    pub async fn settled(&self, limit: std::time::Duration) -> bool {
        self.shared.progress.settled(limit).await
    }
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn enqueue(&self, job: Job) -> Result<(), AuditError> {
        let mut q = self.queue();
        if q.jobs.len() >= QUEUE {
            return Err(AuditError::Unavailable("the audit queue is full".into()));
        }
        q.urgent += usize::from(job.urgent);
        q.jobs.push_back(job);
        self.stats.queued.store(q.jobs.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Up to [`MAX_BATCH`] events' worth of queued jobs, oldest first.
    fn take(&self) -> Vec<Job> {
        let mut q = self.queue();
        let mut jobs = Vec::new();
        let mut count = 0;
        while let Some(job) = q.jobs.front() {
            if count > 0 && count + job.entries.len() > MAX_BATCH {
                break;
            }
            count += job.entries.len();
            if let Some(job) = q.jobs.pop_front() {
                q.urgent -= usize::from(job.urgent);
                jobs.push(job);
            }
        }
        self.stats.queued.store(q.jobs.len(), Ordering::Relaxed);
        jobs
    }

    /// Puts jobs of a failed batch back at the head of the queue, in their order. They are no
    /// longer urgent: the background task retries them.
    fn requeue(&self, jobs: Vec<Job>) {
        let mut q = self.queue();
        for mut job in jobs.into_iter().rev() {
            job.urgent = false;
            q.jobs.push_front(job);
        }
        self.stats.queued.store(q.jobs.len(), Ordering::Relaxed);
    }

    /// Commits what is queued, unless a commit is under way: then whoever makes it takes what
    /// is queued next. With `only_if_urgent`, stops once no queued job is waited on (the rest
    /// rides with a later commit). After a failed commit, goes on only while jobs that are
    /// waited on remain (each is answered, with the error if the store still fails); entries
    /// nothing waits for stay queued for a later try. Returns whether every commit succeeded.
    async fn commit_queued(&self, only_if_urgent: bool) -> bool {
        let mut all_ok = true;
        loop {
            let Ok(mut chain) = self.chain.try_lock() else { return all_ok };
            loop {
                let jobs = self.take();
                if jobs.is_empty() {
                    break;
                }
                let retry = chain.commit(jobs).await;
                if chain.failed {
                    all_ok = false;
                    self.requeue(retry);
                    if self.queue().urgent == 0 {
                        break;
                    }
                }
            }
            drop(chain);
            // A job queued while this commit held the chain, whose caller found it busy, is
            // ours to commit: look again now that the chain is free.
            let q = self.queue();
            let more = if only_if_urgent || !all_ok { q.urgent > 0 } else { !q.jobs.is_empty() };
            drop(q);
            if !more {
                return all_ok;
            }
        }
    }
}

/// Commits one batch at a time; held by whoever is committing.
struct Task {
    keys: Arc<Keys>,
    journal: Journal,
    /// The journal file being appended to, for the thread that forces it to disk.
    journal_path: Arc<std::sync::Mutex<PathBuf>>,
    /// Hands journaled batches to the importer; `None` once the writer stops.
    import: Option<std::sync::mpsc::Sender<Import>>,
    progress: Arc<Progress>,
    syncer: Syncer,
    seq: i64,
    prev: Vec<u8>,
    stats: Arc<WriterStats>,
    observer: Option<CommitObserver>,
    /// The last batch failed.
    failed: bool,
}

impl Task {
    /// Commits one batch to the journal, hands it to the importer, and answers its jobs. If it
    /// fails, the jobs someone waits on get the error and the others (results of requests
    /// already forwarded, session ends) are returned to be tried again: they record what
    /// happened, so they must not be lost.
    async fn commit(&mut self, jobs: Vec<Job>) -> Vec<Job> {
        let started = Instant::now();
        if let Some(e) = self.syncer.failure() {
            // What was committed may not reach the disk: record nothing more (fail closed).
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            self.failed = true;
            let e = AuditError::Unavailable(format!("the audit trail cannot be forced to disk: {e}"));
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
            return Vec::new();
        }
        let mut batch = AuditBatch::default();
        let mut seqs: Vec<Vec<i64>> = Vec::with_capacity(jobs.len());
        let (mut seq, mut prev) = (self.seq, self.prev.clone());
        let ts = now_ms();
        for job in &jobs {
            let mut mine = Vec::with_capacity(job.entries.len());
            for entry in &job.entries {
                seq += 1;
                let payload = entry.payload.clone();
                let mac = chain_mac(&self.keys, &prev, seq, ts, entry.session_id.as_deref(), &entry.kind, &payload);
                prev = mac.to_vec();
                batch.events.push(StoredEvent {
                    seq,
                    ts,
                    session_id: entry.session_id.clone(),
                    kind: entry.kind.clone(),
                    payload,
                    mac: mac.to_vec(),
                });
                if let Some(change) = &entry.session_change {
                    batch.sessions.push(change.clone());
                }
                mine.push(seq);
            }
            seqs.push(mine);
        }
        let n = batch.events.len() as u64;
        let last = seq;
        // While the chain head cannot be written, nothing more is recorded: the head would not
        // cover it. The fsync thread retries the head and lifts this once it is written.
        let refusal = self.stats.head_failing().or_else(|| self.progress.refusal(&self.stats));
        let refused = refusal.is_some();
        let appended = match refusal {
            Some(why) => Err(AuditError::Unavailable(why)),
            None => self.journal.append(&batch).map_err(|e| match e {
                AppendError::Failed(e) => AuditError::Unavailable(format!("cannot write the audit journal: {e}")),
                AppendError::Broken(e) => {
                    let why = format!("the audit journal could not be repaired after a failed write: {e}");
                    tracing::error!(error = %why, "no event is recorded any more; restart the gateway once the disk is fixed");
                    self.stats.set_fsync_failure(why.clone());
                    AuditError::Unavailable(why)
                }
            }),
        };
        let result = appended.map(|()| {
            self.seq = seq;
            self.prev = prev;
            self.progress.journaled.store(seq, Ordering::Release);
            if let Some(import) = &self.import {
                let _ = import.send(Import::Batch(batch));
            }
            self.rotate_journal();
            self.syncer.committed(seq, &self.prev);
        });
        match &result {
            Ok(()) => {
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.events.fetch_add(n, Ordering::Relaxed);
                if self.failed {
                    tracing::info!("the audit trail is written again; requests are served");
                    self.stats.set_failing(None);
                }
            }
            // Refused while the store cannot take events: the importer reports that, and clears
            // it once the store takes them again.
            Err(_) if refused => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                self.stats.set_failing(Some(e.to_string()));
                tracing::error!(error = %e, events = n, "audit batch not recorded; its requests are refused");
            }
        }
        let elapsed = started.elapsed();
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.stats.last_commit_micros.store(micros, Ordering::Relaxed);
        if let Some(observe) = &self.observer {
            observe(usize::try_from(n).unwrap_or(usize::MAX), elapsed, result.is_ok());
        }
        self.failed = result.is_err();
        // Not journaled (the batch's last event is not there): worth another try.
        let unstored = result.is_err() && self.seq < last;
        let mut retry = Vec::new();
        for (job, mine) in jobs.into_iter().zip(seqs) {
            match &result {
                Err(_) if unstored && job.kept => retry.push(job),
                _ => {
                    let _ = job.reply.send(result.clone().map(|()| mine));
                }
            }
        }
        retry
    }

    /// Starts a new journal file once the current one is full; the importer deletes the full
    /// one once its events are in the store.
    fn rotate_journal(&mut self) {
        match self.journal.rotate_if_full(self.seq + 1) {
            Ok(None) => {}
            Ok(Some(full)) => {
                *self.journal_path.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    self.journal.path().to_path_buf();
                if let Some(import) = &self.import {
                    let _ = import.send(Import::Retire(full.0, full.1));
                }
            }
            // Not fatal: the current file takes the next batches too.
            Err(e) => {
                tracing::warn!(error = %e, "a new audit journal file could not be started; the current one grows on")
            }
        }
    }
}

/// Forces `files` to disk (a file that does not exist yet holds nothing).
pub(crate) fn force_to_disk(files: &[PathBuf]) -> std::io::Result<()> {
    files.iter().try_for_each(|f| match std::fs::File::open(f) {
        Ok(file) => file.sync_data(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    })
}

/// How often the store's log is checkpointed (moved to its final place) while commits go on.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The newest committed batch's chain head: its last sequence number and MAC.
type Latest = Arc<std::sync::Mutex<Option<(i64, Vec<u8>)>>>;

/// The writer's background thread, so that no caller waits for the disk. After commits, at
/// most once per interval, it forces the journal to disk (with [`FsyncPolicy::Interval`]),
/// then writes the chain head of what it forced and forces that too; it also checkpoints the
/// store's log at most once per [`CHECKPOINT_EVERY`]. The head on disk thus never claims more
/// than the journal holds there, and the data path makes no write for it. While the gateway
/// runs, the head may lag the newest batch by about one interval; when the writer stops, it is
/// brought up to date.
struct Syncer {
    /// `None` once stopping.
    tx: Option<std::sync::mpsc::SyncSender<()>>,
    latest: Latest,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<WriterStats>,
}

impl Syncer {
    /// `journal`: the journal file being appended to, when it and the head are to be forced
    /// to disk.
    fn start(
        store: Arc<dyn Store>,
        mut head_file: HeadFile,
        journal: Option<Arc<std::sync::Mutex<PathBuf>>>,
        every: std::time::Duration,
        stats: Arc<WriterStats>,
    ) -> Result<Syncer, AuditError> {
        // One pending signal is enough: a sync that has not started yet covers every commit
        // before it.
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let latest: Latest = Arc::default();
        let (shared, newest) = (stats.clone(), latest.clone());
        let thread = std::thread::Builder::new()
            .name("audit-fsync".into())
            .spawn(move || {
                let mut last: Option<Instant> = None;
                let mut checkpointed = Instant::now();
                let mut written = None;
                loop {
                    // Closed: the writer stops; bring the head up to date one last time. While
                    // the head cannot be written, try again without waiting for a commit (none
                    // comes: the writer refuses events meanwhile).
                    let stopping = if stats.head_failing().is_some() {
                        matches!(rx.recv_timeout(RETRY_AFTER), Err(std::sync::mpsc::RecvTimeoutError::Disconnected))
                    } else {
                        rx.recv().is_err()
                    };
                    if !stopping {
                        if let Some(wait) = last.and_then(|l| every.checked_sub(l.elapsed())) {
                            std::thread::sleep(wait);
                        }
                        // Signals that arrived meanwhile are covered by this sync.
                        while rx.try_recv().is_ok() {}
                    }
                    last = Some(Instant::now());
                    // Taken before the journal is forced: the journal holds at least this much.
                    let head = newest.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                    match sync_once(&mut head_file, journal.as_deref(), head, &mut written) {
                        Ok(forced) => {
                            if forced {
                                stats.syncs.fetch_add(1, Ordering::Relaxed);
                            }
                            if stats.head_failing().is_some() {
                                tracing::info!("the audit chain head is written again; requests are served");
                                stats.set_head_failing(None);
                            }
                        }
                        Err(SyncError::HeadWrite(e)) => {
                            if stats.head_failing().is_none() {
                                tracing::error!(error = %e, "the audit chain head cannot be written; new requests are refused until it can");
                            }
                            stats.set_head_failing(Some(e));
                            if stopping {
                                break;
                            }
                            continue;
                        }
                        Err(SyncError::Fsync(e)) => {
                            tracing::error!(error = %e, "the audit trail could not be forced to disk; new requests are refused");
                            stats.set_fsync_failure(e);
                            break;
                        }
                    }
                    if stopping {
                        break;
                    }
                    if checkpointed.elapsed() >= CHECKPOINT_EVERY {
                        checkpointed = Instant::now();
                        match store.checkpoint() {
                            Ok(()) => {
                                stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                            }
                            // Not fatal: the commits checkpoint by themselves past a bound.
                            Err(e) => tracing::warn!(error = %e, "the audit store could not be checkpointed; trying again later"),
                        }
                    }
                }
            })
            .map_err(|e| AuditError::Unavailable(format!("cannot start the audit fsync thread: {e}")))?;
        Ok(Syncer { tx: Some(tx), latest, thread: Some(thread), stats: shared })
    }

    /// A batch was committed, ending at `seq` with `mac`: write its head and force it to disk
    /// soon.
    fn committed(&self, seq: i64, mac: &[u8]) {
        *self.latest.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((seq, mac.to_vec()));
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(());
        }
    }

    fn failure(&self) -> Option<String> {
        self.stats.fsync_failure()
    }

    /// Asks the thread to write the newest head and stop; its handle, to wait for that.
    fn stop(&mut self) -> Option<std::thread::JoinHandle<()>> {
        self.tx = None;
        self.thread.take()
    }
}

/// Why a pass of the syncer failed.
enum SyncError {
    /// Forcing to disk failed: what was written may be lost, so nothing more is recorded.
    Fsync(String),
    /// The chain head could not be written (a full disk, say): tried again until it is.
    HeadWrite(String),
}

/// One pass of the syncer: forces the journal to disk (if `journal`), then writes `head` if it
/// is not the head written last and forces it too (if `journal`). Returns whether it forced.
fn sync_once(
    head_file: &mut HeadFile,
    journal: Option<&std::sync::Mutex<PathBuf>>,
    head: Option<(i64, Vec<u8>)>,
    written: &mut Option<i64>,
) -> Result<bool, SyncError> {
    if let Some(journal) = journal {
        let path = journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        force_to_disk(&[path]).map_err(|e| SyncError::Fsync(format!("cannot force the audit journal to disk: {e}")))?;
    }
    if let Some((seq, mac)) = head
        && *written != Some(seq)
    {
        head_file
            .write(&ChainHead { seq, mac: hex::encode(mac) })
            .map_err(|e| SyncError::HeadWrite(format!("cannot write the chain head: {e}")))?;
        *written = Some(seq);
        if journal.is_some() {
            head_file.sync().map_err(|e| SyncError::Fsync(format!("cannot force the chain head to disk: {e}")))?;
        }
    }
    Ok(journal.is_some())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn wait_for(what: impl Fn() -> bool) -> bool {
        for _ in 0..200 {
            if what() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    fn store_in(dir: &std::path::Path) -> Arc<dyn Store> {
        Arc::new(gatehouse_store::SqliteStore::open(&dir.join("g.db"), false).unwrap())
    }

    fn head_seq(path: &std::path::Path) -> Option<i64> {
        crate::read_head(path).unwrap().map(|h| h.seq)
    }

    #[test]
    fn the_syncer_forces_commits_to_disk_writes_the_head_and_reports_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, b"x").unwrap();
        let head_path = dir.path().join("head");
        let stats = Arc::new(WriterStats::default());
        assert!(
            force_to_disk(&[log.clone(), dir.path().join("not-yet")]).is_ok(),
            "a file not there yet holds nothing"
        );
        let journal = Arc::new(std::sync::Mutex::new(log));
        let store = store_in(dir.path());
        let head = HeadFile::open(&head_path).unwrap();
        let mut syncer = Syncer::start(store.clone(), head, Some(journal), FSYNC_INTERVAL, stats.clone()).unwrap();
        assert_eq!(stats.syncs.load(Ordering::Relaxed), 0, "nothing committed, nothing forced");
        assert_eq!(head_seq(&head_path), None);
        syncer.committed(1, &[1; 32]);
        assert!(wait_for(|| stats.syncs.load(Ordering::Relaxed) == 1));
        assert_eq!(head_seq(&head_path), Some(1));
        // Commits in quick succession share syncs, at most one per interval.
        for seq in 2..102 {
            syncer.committed(seq, &[2; 32]);
        }
        assert!(wait_for(|| stats.syncs.load(Ordering::Relaxed) >= 2));
        assert!(stats.syncs.load(Ordering::Relaxed) <= 3, "{}", stats.syncs.load(Ordering::Relaxed));
        assert!(wait_for(|| head_seq(&head_path) == Some(101)));
        assert_eq!(syncer.failure(), None);
        // Stopping writes the newest head, however soon it comes after the commit.
        syncer.committed(102, &[3; 32]);
        syncer.stop().unwrap().join().unwrap();
        let head = crate::read_head(&head_path).unwrap().unwrap();
        assert_eq!((head.seq, head.mac), (102, hex::encode([3; 32])));
        // A journal that cannot be opened (its parent is a file): the failure is kept for the
        // writer, and the head is not moved past what reached the disk.
        let broken = Arc::new(std::sync::Mutex::new(head_path.join("journal")));
        let stats = Arc::new(WriterStats::default());
        let head = HeadFile::open(&head_path).unwrap();
        let syncer = Syncer::start(store, head, Some(broken), FSYNC_INTERVAL, stats.clone()).unwrap();
        syncer.committed(103, &[4; 32]);
        assert!(wait_for(|| stats.fsync_failure().is_some()));
        assert_eq!(syncer.failure(), stats.fsync_failure());
        assert_eq!(head_seq(&head_path), Some(102));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_head_that_cannot_be_written_is_reported_as_failing_not_as_lost_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        let stats = Arc::new(WriterStats::default());
        // Every write to /dev/full fails with "no space left on device".
        let head = HeadFile::open(std::path::Path::new("/dev/full")).unwrap();
        let mut syncer = Syncer::start(store, head, None, FSYNC_INTERVAL, stats.clone()).unwrap();
        syncer.committed(1, &[1; 32]);
        assert!(wait_for(|| stats.failing().is_some()));
        assert!(stats.failing().unwrap().contains("cannot write the chain head"), "{:?}", stats.failing());
        assert_eq!(stats.fsync_failure(), None, "a full disk is waited out, not taken as lost data");
        syncer.stop().unwrap().join().unwrap();
    }

    #[test]
    fn the_syncer_checkpoints_the_store_at_most_once_a_second_even_without_forcing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path());
        let stats = Arc::new(WriterStats::default());
        let head_path = dir.path().join("head");
        let head = HeadFile::open(&head_path).unwrap();
        let syncer = Syncer::start(store, head, None, FSYNC_INTERVAL, stats.clone()).unwrap();
        syncer.committed(1, &[1; 32]);
        std::thread::sleep(FSYNC_INTERVAL * 5);
        assert_eq!(stats.checkpoints.load(Ordering::Relaxed), 0, "too soon after the start");
        assert_eq!(head_seq(&head_path), Some(1), "the head is written without forcing too");
        std::thread::sleep(CHECKPOINT_EVERY);
        syncer.committed(2, &[1; 32]);
        assert!(wait_for(|| stats.checkpoints.load(Ordering::Relaxed) == 1));
        for seq in 3..23 {
            syncer.committed(seq, &[1; 32]);
            std::thread::sleep(FSYNC_INTERVAL);
        }
        assert_eq!(stats.checkpoints.load(Ordering::Relaxed), 1, "at most one a second");
        assert_eq!(stats.syncs.load(Ordering::Relaxed), 0, "nothing forced to disk under FsyncPolicy::Off");
    }
}
