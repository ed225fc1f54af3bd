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
//!
//! A slot is held at most [`MAX_HOLD`]: a client that opens a socket and
//! then stays silent (or is slow) must not keep the gate shut for everyone
//! until its handshake timeout; past the hold it no longer counts, and the
//! handshake and header timeouts still close it.

use crate::rate_limit::TokenBucket;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Longest time one connection counts against `max_handshakes`.
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(2);

/// Handshake slot of one accepted connection. It travels with the
/// connection (in the first request's extensions, then into the connection
/// task) and frees the slot when dropped: at the end of the handshake, or
/// when the HTTP connection ends without an upgrade, or after the hold.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    // Shared because request extensions must be `Clone` and because the
    // hold timer may take the permit first; the slot is released when the
    // last clone is dropped or the timer fires. `None`: no bound on slots.
    _permit: Option<Arc<Mutex<Option<OwnedSemaphorePermit>>>>,
}

/// The gate one accept loop waits on before each accept.
#[derive(Debug)]
pub(crate) struct Admission {
    /// `None`: handshakes in flight are not bounded.
    slots: Option<Arc<Semaphore>>,
    bucket: TokenBucket,
    /// Pause when no token is left: the time one token takes to refill.
    refill: Duration,
    /// [`MAX_HOLD`], shorter in tests.
    max_hold: Duration,
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
            max_hold: MAX_HOLD,
        }
    }

    /// Waits for a free handshake slot, then for a rate token. Cancel-safe:
    /// dropping the future gives back whatever it held.
    pub(crate) async fn admit(&mut self) -> Slot {
        let permit = match &self.slots {
            // The semaphore is never closed, so `acquire_owned` cannot fail.
            Some(slots) => slots
                .clone()
                .acquire_owned()
                .await
                .ok()
                .map(|p| Arc::new(Mutex::new(Some(p)))),
            None => None,
        };
        while !self.bucket.try_take() {
            // Sleeping one token's refill time (at least the timer's 1 ms
            // resolution) keeps the loop from spinning; the bucket counts
            // the time slept, so a 1 ms sleep still lets the rate through.
            tokio::time::sleep(self.refill).await;
        }
        if let Some(permit) = &permit {
            // Weak: the timer must not keep a finished handshake's slot.
            let held = Arc::downgrade(permit);
            let max_hold = self.max_hold;
            tokio::spawn(async move {
                tokio::time::sleep(max_hold).await;
                if let Some(held) = held.upgrade() {
                    if let Ok(mut p) = held.lock() {
                        p.take();
                    }
                }
            });
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
    async fn a_silent_connection_holds_its_slot_only_so_long() {
        let mut gate = Admission::new(1, 0);
        gate.max_hold = Duration::from_millis(100);
        let silent = gate.admit().await;
        assert_eq!(gate.free(), 0);
        let start = Instant::now();
        let _next = tokio::time::timeout(Duration::from_secs(2), gate.admit())
            .await
            .expect("the hold ends");
        assert!(start.elapsed() >= Duration::from_millis(80));
        drop(silent);
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
