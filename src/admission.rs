//! The accept-path gate: at most `max_handshakes` connections between their
//! TCP accept and the end of their handshake (`welcome` sent, or the
//! handshake failed), and at most `handshake_rate` accepts per second.
//!
//! A connection beyond either bound is not refused: the accept loop simply
//! stops taking connections from the listen backlog until a slot and a token
//! are free, so a reconnect storm (thousands of clients losing their
//! instance at once) turns into waiting, never into errors. The kernel holds
//! the waiting connections in the listen backlog (and clients retry their
//! SYN when that is full), which costs the server nothing.

use crate::rate_limit::TokenBucket;
use std::{sync::Arc, time::Duration};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Handshake slot of one accepted connection. It travels with the
/// connection (in the first request's extensions, then into the connection
/// task) and frees the slot when dropped: at the end of the handshake, or
/// when the HTTP connection ends without an upgrade.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    // Shared only because request extensions must be `Clone`; the slot is
    // released when the last clone is dropped. `None`: no bound on slots.
    _permit: Option<Arc<OwnedSemaphorePermit>>,
}

/// The gate one accept loop waits on before each accept.
#[derive(Debug)]
pub(crate) struct Admission {
    /// `None`: handshakes in flight are not bounded.
    slots: Option<Arc<Semaphore>>,
    bucket: TokenBucket,
    /// Pause when no token is left: the time one token takes to refill.
    refill: Duration,
}

impl Admission {
    /// `max_handshakes` slots (0 = no bound) and `rate` accepts per second
    /// (0 = no limit), with a burst of a tenth of a second's worth, so a
    /// storm starts flowing at once but never faster than the rate for long.
    pub(crate) fn new(max_handshakes: usize, rate: u32) -> Self {
        let slots = (max_handshakes > 0)
            .then(|| Arc::new(Semaphore::new(max_handshakes.min(Semaphore::MAX_PERMITS))));
        let refill = if rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(1.0 / f64::from(rate)).max(Duration::from_millis(1))
        };
        Self {
            slots,
            bucket: TokenBucket::new(rate, (rate / 10).max(1)),
            refill,
        }
    }

    /// Waits for a free handshake slot, then for a rate token. Cancel-safe:
    /// dropping the future gives back whatever it held.
    pub(crate) async fn admit(&mut self) -> Slot {
        let permit = match &self.slots {
            // The semaphore is never closed, so `acquire_owned` cannot fail.
            Some(slots) => slots.clone().acquire_owned().await.ok().map(Arc::new),
            None => None,
        };
        while !self.bucket.try_take() {
            // Sleeping one token's refill time (at least the timer's 1 ms
            // resolution) keeps the loop from spinning; the bucket counts
            // the time slept, so a 1 ms sleep still lets the rate through.
            tokio::time::sleep(self.refill).await;
        }
        Slot { _permit: permit }
    }

    /// Slots free right now (for tests).
    #[cfg(test)]
    fn free(&self) -> usize {
        self.slots
            .as_ref()
            .map_or(usize::MAX, |s| s.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn slots_bound_handshakes_in_flight() {
        let mut gate = Admission::new(2, 0);
        let a = gate.admit().await;
        let _b = gate.admit().await;
        assert_eq!(gate.free(), 0);
        let waiting = tokio::time::timeout(Duration::from_millis(50), gate.admit()).await;
        assert!(waiting.is_err(), "a third handshake must wait");
        let copy = a.clone();
        drop(a);
        assert_eq!(gate.free(), 0, "a clone still holds the slot");
        drop(copy);
        assert_eq!(gate.free(), 1);
        let _c = tokio::time::timeout(Duration::from_millis(50), gate.admit())
            .await
            .expect("a freed slot admits at once");
    }

    #[tokio::test]
    async fn rate_spreads_admissions_over_time() {
        // 200/s with a burst of 20: 60 admissions take about 0.2 s.
        let mut gate = Admission::new(0, 200);
        let start = Instant::now();
        for _ in 0..60 {
            drop(gate.admit().await);
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(150), "took {took:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }

    #[tokio::test]
    async fn zero_means_unbounded() {
        let mut gate = Admission::new(0, 0);
        let start = Instant::now();
        let held: Vec<Slot> = {
            let mut v = Vec::new();
            for _ in 0..10_000 {
                v.push(gate.admit().await);
            }
            v
        };
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(held.len(), 10_000);
    }
}
