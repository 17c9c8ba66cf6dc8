//! The [`Classifier`]: classification behind a bounded LRU cache keyed on the token stream, and
//! a second one keyed on the exact text of statements sent more than once.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

use crate::classify::{self, MAX_CACHED_LEN, Template};
use crate::model::{Access, Action, Batch, Statement, StatementTag};
use crate::rules::Rules;

/// Token-stream key → classification.
type Cache = Mutex<LruCache<Box<[u8]>, Arc<Entry>>>;
/// Exact text → its batch.
type Exact = Mutex<LruCache<Box<str>, Arc<Batch>>>;

/// Classifies statement text; share one per process (it is `Send + Sync`).
pub struct Classifier {
    rules: Rules,
    cache: Option<Cache>,
    /// Texts seen again, exactly (a prepared statement's text, sent with each `Parse`): found
    /// without scanning them. A text enters only on its second sighting, so a stream of texts
    /// that differ in their constants does not churn it.
    exact: Option<Exact>,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct Entry {
    template: Template,
    /// The input the entry was made from, and its batch, returned as is for the same input.
    source: Box<str>,
    batch: Arc<Batch>,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (hits, misses) = self.stats();
        f.debug_struct("Classifier")
            .field("capacity", &self.cache.as_ref().map(|c| lock(c).cap().get()).unwrap_or(0))
            .field("exact", &self.exact.as_ref().map(|c| lock(c).len()).unwrap_or(0))
            .field("hits", &hits)
            .field("misses", &misses)
            .finish_non_exhaustive()
    }
}

impl Classifier {
    /// A classifier with the built-in allow-lists that caches up to `capacity` distinct
    /// statement shapes (0: no cache).
    pub fn new(capacity: usize) -> Self {
        Self::with_rules(capacity, Rules::default())
    }

    /// A classifier with these allow-lists.
    pub fn with_rules(capacity: usize, rules: Rules) -> Self {
        Classifier {
            rules,
            cache: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
            exact: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Splits a simple-Query string into statements and classifies each. Never fails: text that
    /// does not parse yields one statement, classified as `sql.admin`, with `error` set.
    pub fn classify(&self, sql: &str) -> Arc<Batch> {
        if let Some(exact) = &self.exact
            && let Some(batch) = lock(exact).get(sql).cloned()
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return batch;
        }
        let toks = match classify::scan(sql) {
            Ok(toks) => toks,
            Err(e) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                return Arc::new(classify::error_batch(sql, &e));
            }
        };
        let key = (self.cache.is_some() && sql.len() <= MAX_CACHED_LEN).then(|| classify::key(sql, &toks));
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            let entry = lock(cache).get(key.as_slice()).cloned();
            if let Some(entry) = entry {
                if *entry.source == *sql {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    if let Some(exact) = &self.exact {
                        lock(exact).put(sql.into(), entry.batch.clone());
                    }
                    return entry.batch.clone();
                }
                if let Some(batch) = entry.template.render(sql, &toks) {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Arc::new(batch);
                }
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let (batch, template) = classify::fresh(sql, &toks, &self.rules);
        let batch = Arc::new(batch);
        if let (Some(cache), Some(key), Some(template)) = (&self.cache, key, template) {
            let entry = Entry { template, source: sql.into(), batch: batch.clone() };
            lock(cache).put(key.into_boxed_slice(), Arc::new(entry));
        }
        batch
    }

    /// `(hits, misses)` of the cache since the classifier was made.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    /// The statement `EXECUTE name (…)` stands for, given the statement `PREPARE name AS …`
    /// prepared (the `Prepare` statement's classification): that statement's accesses, tables
    /// and functions, with the text and tag of the `EXECUTE`. If the `EXECUTE`'s own parameters
    /// call something not on the allow-list, it stays `sql.admin`. `None` when `execute` is not
    /// an `EXECUTE`.
    pub fn resolve_execute(&self, execute: &Statement, prepared: &Statement) -> Option<Statement> {
        let StatementTag::Execute { name } = &execute.tag else { return None };
        let clean = execute.error.as_deref() == Some(classify::execute_placeholder(name).as_str());
        let mut out = prepared.clone();
        out.text = execute.text.clone();
        out.fingerprint = execute.fingerprint.clone();
        out.tag = execute.tag.clone();
        for function in &execute.functions {
            if !out.functions.contains(function) {
                out.functions.push(function.clone());
            }
        }
        for table in &execute.tables {
            if !out.tables.contains(table) {
                out.tables.push(table.clone());
            }
        }
        let admin = Access::connection(Action::Admin);
        for access in &execute.accesses {
            if (!clean || *access != admin) && !out.accesses.contains(access) {
                out.accesses.push(access.clone());
            }
        }
        if !clean {
            out.connect_only = false;
            out.error = Some(match (&prepared.error, &execute.error) {
                (Some(p), Some(e)) => format!("{e}; {p}"),
                (p, e) => e.clone().or_else(|| p.clone()).unwrap_or_default(),
            });
        }
        Some(out)
    }
}

/// A classification that bypasses every cache: what [`Classifier::classify`] returns for `sql`
/// on a miss.
pub fn classify_uncached(sql: &str, rules: &Rules) -> Batch {
    match classify::scan(sql) {
        Ok(toks) => classify::fresh(sql, &toks, rules).0,
        Err(e) => classify::error_batch(sql, &e),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The cache holds no invariant a panic elsewhere could break.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
