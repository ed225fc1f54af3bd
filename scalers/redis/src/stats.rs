//! Counters of one [`crate::RedisScaler`] and all its feeds.

use scaled_sockets_scaler::outbox::OutboxCounters;
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

/// A snapshot of a scaler's counters ([`crate::RedisScaler::stats`]). Counters
/// only grow, except `feeds_open`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Feeds whose subscriber task is running.
    pub feeds_open: u64,
    /// Events dropped because a feed's queue was full.
    pub feed_events_dropped: u64,
    /// [`scaled_sockets_scaler::FeedEvent::Overflowed`] events emitted.
    pub feed_overflows: u64,
    /// Subscriber connections lost (each followed by `Interrupted`).
    pub feed_interruptions: u64,
    /// Subscriber connections restored (each followed by `Resumed`).
    pub feed_resumptions: u64,
    /// Liveness probes published.
    pub probes_sent: u64,
    /// Probes that did not come back in time (the connection was then replaced).
    pub probe_failures: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) feeds_open: AtomicU64,
    /// Dropped events and overflow reports, counted by the feeds' outboxes.
    pub(crate) outbox: Arc<OutboxCounters>,
    pub(crate) feed_interruptions: AtomicU64,
    pub(crate) feed_resumptions: AtomicU64,
    pub(crate) probes_sent: AtomicU64,
    pub(crate) probe_failures: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RedisStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RedisStats {
            feeds_open: get(&self.feeds_open),
            feed_events_dropped: get(&self.outbox.dropped),
            feed_overflows: get(&self.outbox.overflows),
            feed_interruptions: get(&self.feed_interruptions),
            feed_resumptions: get(&self.feed_resumptions),
            probes_sent: get(&self.probes_sent),
            probe_failures: get(&self.probe_failures),
        }
    }
}
