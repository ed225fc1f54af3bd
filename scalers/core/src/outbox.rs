//! The lossy, bounded hand-off from a backend's feed reader to the server's
//! dispatcher, shared by every backend whose reader is a task.
//!
//! Why lossy: a backend reader must never block on a slow dispatcher (it would
//! stall the backend connection for every topic). Publications and messages are
//! handed over with `try_send`; when the queue is full they are dropped and
//! counted, and [`FeedEvent::Overflowed`] with the count follows as soon as
//! there is room, so the server repairs channels from history. Connection events
//! (`Interrupted`/`Resumed`) are never dropped: they wait for room, in order, and
//! data arriving meanwhile is counted as dropped (it would otherwise overtake
//! them).
//!
//! The owner (one task) calls [`Outbox::flush`] when the queue has room again:
//! wait on `tx.reserve()` while [`Outbox::has_backlog`], drop the permit (only
//! this task sends, so the slot stays free) and flush.

use crate::FeedEvent;
use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};
use tokio::sync::mpsc::{self, error::TrySendError};

/// Counters an outbox keeps (shared, e.g. by every feed of one scaler).
#[derive(Debug, Default)]
pub struct OutboxCounters {
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// [`FeedEvent::Overflowed`] events delivered.
    pub overflows: AtomicU64,
}

/// The receiver is gone: the feed was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// A feed's side of its event queue. Never blocks.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::Sender<FeedEvent>,
    /// Connection events waiting for room (never dropped).
    pending: VecDeque<FeedEvent>,
    /// Events dropped and not yet reported with `Overflowed`.
    dropped: u64,
    counters: Arc<OutboxCounters>,
}

impl Outbox {
    /// An outbox sending on `tx`, counting into `counters`.
    pub fn new(tx: mpsc::Sender<FeedEvent>, counters: Arc<OutboxCounters>) -> Self {
        Self {
            tx,
            pending: VecDeque::new(),
            dropped: 0,
            counters,
        }
    }

    /// The queue's sender (to wait for room or for the receiver to close).
    pub fn sender(&self) -> &mpsc::Sender<FeedEvent> {
        &self.tx
    }

    /// Events dropped and not yet reported.
    pub fn unreported(&self) -> u64 {
        self.dropped
    }

    /// Something waits for room (a connection event or an overflow report).
    pub fn has_backlog(&self) -> bool {
        !self.pending.is_empty() || self.dropped > 0
    }

    /// Sends what waits for room, in order, as far as there is room.
    pub fn flush(&mut self) -> Result<(), Closed> {
        loop {
            let event = match self.pending.front() {
                Some(event) => event.clone(),
                None if self.dropped > 0 => FeedEvent::Overflowed {
                    dropped: self.dropped,
                },
                None => return Ok(()),
            };
            match self.tx.try_send(event) {
                Ok(()) => {
                    if self.pending.pop_front().is_none() {
                        self.dropped = 0;
                        self.counters.overflows.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(TrySendError::Full(_)) => return Ok(()),
                Err(TrySendError::Closed(_)) => return Err(Closed),
            }
        }
    }

    /// Hands over a publication or message, or drops and counts it.
    pub fn data(&mut self, event: FeedEvent) -> Result<(), Closed> {
        self.flush()?;
        if self.has_backlog() {
            self.lost(1);
            return Ok(());
        }
        match self.tx.try_send(event) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.lost(1);
                Ok(())
            }
            Err(TrySendError::Closed(_)) => Err(Closed),
        }
    }

    /// Counts `n` events lost elsewhere (e.g. by the client library) so they are
    /// reported with the next `Overflowed`.
    pub fn lost(&mut self, n: u64) {
        self.dropped += n;
        self.counters.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Queues a connection event; it is delivered before anything after it.
    pub fn control(&mut self, event: FeedEvent) -> Result<(), Closed> {
        self.pending.push_back(event);
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Topic;
    use bytes::Bytes;

    fn outbox(capacity: usize) -> (Outbox, mpsc::Receiver<FeedEvent>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Outbox::new(tx, Arc::default()), rx)
    }

    fn msg(n: u8) -> FeedEvent {
        FeedEvent::Message {
            topic: Topic::user("u"),
            payload: Bytes::from(vec![n]),
        }
    }

    #[test]
    fn overflow_is_counted_then_reported_when_there_is_room() {
        let (mut out, mut rx) = outbox(2);
        for n in 0..5 {
            assert!(out.data(msg(n)).is_ok());
        }
        assert_eq!(out.unreported(), 3);
        assert_eq!(rx.try_recv().ok(), Some(msg(0)));
        // Room for one: the report goes first, the new event is dropped too.
        assert!(out.data(msg(5)).is_ok());
        assert_eq!(rx.try_recv().ok(), Some(msg(1)));
        assert_eq!(
            rx.try_recv().ok(),
            Some(FeedEvent::Overflowed { dropped: 3 })
        );
        assert!(rx.try_recv().is_err());
        // msg 5 found no room after the report: it is reported next.
        assert!(out.data(msg(6)).is_ok());
        assert_eq!(
            rx.try_recv().ok(),
            Some(FeedEvent::Overflowed { dropped: 1 })
        );
        assert_eq!(rx.try_recv().ok(), Some(msg(6)));
        assert_eq!(out.unreported(), 0);
        assert_eq!(out.counters.dropped.load(Ordering::Relaxed), 4);
        assert_eq!(out.counters.overflows.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn connection_events_wait_for_room_and_keep_their_place() {
        let (mut out, mut rx) = outbox(1);
        assert!(out.data(msg(0)).is_ok());
        assert!(out.control(FeedEvent::Interrupted).is_ok());
        assert!(out.control(FeedEvent::Resumed).is_ok());
        assert!(out.data(msg(1)).is_ok(), "dropped: Resumed must come first");
        assert_eq!(rx.try_recv().ok(), Some(msg(0)));
        assert!(out.flush().is_ok());
        assert_eq!(rx.try_recv().ok(), Some(FeedEvent::Interrupted));
        assert!(out.flush().is_ok());
        assert_eq!(rx.try_recv().ok(), Some(FeedEvent::Resumed));
        assert!(out.flush().is_ok());
        assert_eq!(
            rx.try_recv().ok(),
            Some(FeedEvent::Overflowed { dropped: 1 })
        );
        out.lost(2);
        assert!(out.flush().is_ok());
        assert_eq!(
            rx.try_recv().ok(),
            Some(FeedEvent::Overflowed { dropped: 2 })
        );
        drop(rx);
        assert!(out.data(msg(2)).is_err(), "closed receiver is reported");
    }
}
