//! What every listener does the same way: accepting connections until told to stop
//! ([`accept_until`], [`Admission::accept`]), and limiting how many are open: each accepted
//! connection is counted until its [`Counted`] guard is dropped; over the limit, a connection is refused in the
//! protocol's own terms, and past a bounded number of such refusals in progress it is closed at
//! once (so a flood costs neither memory nor tasks).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long a listener waits after a failed accept (out of file descriptors, say) before it
/// tries again, rather than spinning or giving up.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// The next connection on `listener`, or `None` once `stop` completes. A failed accept is
/// logged and retried; it never ends the listener.
pub async fn accept_until(listener: &TcpListener, stop: impl Future<Output = ()>) -> Option<(TcpStream, SocketAddr)> {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return None,
            accepted = listener.accept() => match accepted {
                Ok(connection) => return Some(connection),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
        }
    }
}

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

    /// The next connection on a listener of this admission, with `TCP_NODELAY` set and counted,
    /// or `None` once `shutdown` turns true. `over_limit` is told of each connection over the
    /// limit (for the metric).
    pub async fn accept(
        &self,
        listener: &TcpListener,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
        over_limit: impl FnOnce(),
    ) -> Option<(TcpStream, SocketAddr, Admit)> {
        let stopping = async {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        let (stream, peer) = accept_until(listener, stopping).await?;
        let _ = stream.set_nodelay(true);
        let admitted = self.admit();
        if admitted.is_over() {
            over_limit();
        }
        Some((stream, peer, admitted))
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
