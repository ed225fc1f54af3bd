//! Graceful shutdown: a guard per connection so the server can wait for every
//! connection to finish.
//!
//! Every connection task holds a [`DrainGuard`] (a clone of one `mpsc::Sender`);
//! when all guards are dropped the waiter's `recv()` returns `None`. That is the
//! whole mechanism: no counters to get wrong, and a panicking task still drops
//! its guard.

use tokio::sync::mpsc;

/// Held by each connection task until it ends.
#[derive(Debug, Clone)]
pub(crate) struct DrainGuard {
    _tx: mpsc::Sender<()>,
}

/// Resolves once every [`DrainGuard`] has dropped.
#[derive(Debug)]
pub(crate) struct DrainWaiter {
    rx: mpsc::Receiver<()>,
}

/// A root guard (clone it for each task, drop it when draining starts) and its
/// waiter.
pub(crate) fn drain_pair() -> (DrainGuard, DrainWaiter) {
    let (tx, rx) = mpsc::channel(1);
    (DrainGuard { _tx: tx }, DrainWaiter { rx })
}

impl DrainWaiter {
    /// Waits until every guard has dropped.
    pub(crate) async fn wait(mut self) {
        let _ = self.rx.recv().await;
    }
}
