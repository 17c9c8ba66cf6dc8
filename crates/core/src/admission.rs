//! Listener connection limits, the same for every adapter: each accepted connection is counted
//! until its [`Counted`] guard is dropped; over the limit, a connection is refused in the
//! protocol's own terms, and past a bounded number of such refusals in progress it is closed at
//! once (so a flood costs neither memory nor tasks).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Callers over the limit that are still told so; beyond these, more are closed at once.
pub const REFUSING_AT_MOST: usize = 128;

/// The open connections of one listener, against its limit.
#[derive(Debug, Clone)]
pub struct Admission {
    open: Arc<AtomicUsize>,
    max: Option<usize>,
}

/// One open connection, counted until dropped.
#[derive(Debug)]
pub struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What to do with a connection just accepted.
#[derive(Debug)]
pub enum Admit {
    /// Serve it.
    Serve(Counted),
    /// Over the limit of `max`: tell the caller so, then close.
    Refuse { counted: Counted, max: usize },
    /// Over the limit with too many refusals in progress: close it at once.
    Drop,
}

impl Admit {
    /// Whether the connection is over the limit (refused or dropped), for metrics.
    pub fn is_over(&self) -> bool {
        !matches!(self, Admit::Serve(_))
    }
}

impl Admission {
    /// `max`: connections kept open at once (`None`: no limit).
    pub fn new(max: Option<usize>) -> Admission {
        Admission { open: Arc::default(), max }
    }

    /// Counts a connection just accepted and says what to do with it.
    pub fn admit(&self) -> Admit {
        let count = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let counted = Counted(self.open.clone());
        match self.max {
            Some(max) if count > max.saturating_add(REFUSING_AT_MOST) => Admit::Drop,
            Some(max) if count > max => Admit::Refuse { counted, max },
            _ => Admit::Serve(counted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_served_refused_then_dropped_and_counted_until_gone() {
        let a = Admission::new(Some(2));
        let first = a.admit();
        let second = a.admit();
        assert!(matches!((&first, &second), (Admit::Serve(_), Admit::Serve(_))));
        let refused: Vec<Admit> = (0..REFUSING_AT_MOST).map(|_| a.admit()).collect();
        assert!(refused.iter().all(|r| matches!(r, Admit::Refuse { max: 2, .. })));
        assert!(matches!(a.admit(), Admit::Drop));
        drop(refused);
        drop(first);
        assert!(matches!(a.admit(), Admit::Serve(_)), "a closed connection frees its place");
        assert!(!Admission::new(None).admit().is_over());
    }
}
