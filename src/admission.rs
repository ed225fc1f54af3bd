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
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

/// Longest time one connection counts against `max_handshakes`.
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(2);

/// Handshake slot of one accepted connection. It travels with the
/// connection (in the first request's extensions, then into the connection
/// task) and frees the slot when its last clone is dropped: at the end of the
/// handshake, or when the HTTP connection ends without an upgrade. The gate
/// takes it back after [`MAX_HOLD`] if it is still held.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The slot's entry in its gate's table (`None`: no bound on slots).
    held: Option<(Arc<Mutex<Holds>>, Key)>,
}

/// An entry of [`Holds`]: its index, and the generation it was given under
/// (an index is reused once its connection let go of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    index: usize,
    generation: u32,
}

/// The slots held by admitted connections, in one table per gate rather
/// than a timer task and a shared cell per connection: a burst of accepts
/// leaves no per-connection allocations behind, only the table's entries,
/// which the next connections reuse.
#[derive(Debug, Default)]
struct Holds {
    entries: Vec<Hold>,
    /// Indexes of entries no connection uses.
    free: Vec<usize>,
    /// When each hold ends at the latest, oldest first (`MAX_HOLD` is the
    /// same for all, so admission order is deadline order).
    deadlines: VecDeque<(Instant, Key)>,
}

#[derive(Debug, Default)]
struct Hold {
    generation: u32,
    /// `None` once released or taken back after `MAX_HOLD`.
    permit: Option<OwnedSemaphorePermit>,
    /// Clones of the connection's [`Slot`] alive.
    clones: u32,
}

impl Holds {
    fn insert(&mut self, permit: OwnedSemaphorePermit, deadline: Instant) -> Key {
        let index = self.free.pop().unwrap_or_else(|| {
            self.entries.push(Hold::default());
            self.entries.len() - 1
        });
        let hold = &mut self.entries[index];
        hold.permit = Some(permit);
        hold.clones = 1;
        let key = Key {
            index,
            generation: hold.generation,
        };
        self.deadlines.push_back((deadline, key));
        key
    }

    fn live(&mut self, key: Key) -> Option<&mut Hold> {
        self.entries
            .get_mut(key.index)
            .filter(|hold| hold.generation == key.generation && hold.clones > 0)
    }

    /// Takes back the slots held past their deadline, and forgets the
    /// deadlines of holds already released.
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, key)) = self.deadlines.front() {
            match self.live(key) {
                Some(hold) if hold.permit.is_some() => {
                    if deadline > now {
                        break;
                    }
                    hold.permit = None;
                }
                _ => {}
            }
            self.deadlines.pop_front();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(deadline, _)| *deadline)
    }
}

fn lock(holds: &Mutex<Holds>) -> std::sync::MutexGuard<'_, Holds> {
    holds.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Clone for Slot {
    fn clone(&self) -> Self {
        if let Some((holds, key)) = &self.held {
            if let Some(hold) = lock(holds).live(*key) {
                hold.clones += 1;
            }
        }
        Self {
            held: self.held.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some((holds, key)) = &self.held else {
            return;
        };
        let mut holds = lock(holds);
        let Some(hold) = holds.live(*key) else {
            return;
        };
        hold.clones -= 1;
        if hold.clones == 0 {
            // Frees the slot (if the gate has not taken it back already).
            hold.permit = None;
            hold.generation = hold.generation.wrapping_add(1);
            holds.free.push(key.index);
        }
    }
}

/// The gate one accept loop waits on before each accept.
#[derive(Debug)]
pub(crate) struct Admission {
    /// `None`: handshakes in flight are not bounded.
    slots: Option<Arc<Semaphore>>,
    holds: Arc<Mutex<Holds>>,
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
            holds: Arc::default(),
            bucket: TokenBucket::new(rate, (rate / 10).max(1)),
            refill,
            max_hold: MAX_HOLD,
        }
    }

    /// Waits for a free handshake slot, then for a rate token. Cancel-safe:
    /// dropping the future gives back whatever it held.
    pub(crate) async fn admit(&mut self) -> Slot {
        let permit = match self.slots.clone() {
            Some(slots) => Some(self.free_slot(slots).await),
            None => None,
        };
        while !self.bucket.try_take() {
            // Sleeping one token's refill time (at least the timer's 1 ms
            // resolution) keeps the loop from spinning; the bucket counts
            // the time slept, so a 1 ms sleep still lets the rate through.
            tokio::time::sleep(self.refill).await;
        }
        let held = permit.map(|permit| {
            let deadline = Instant::now() + self.max_hold;
            let key = lock(&self.holds).insert(permit, deadline);
            (self.holds.clone(), key)
        });
        Slot { held }
    }

    /// Waits for a slot, taking back the slots of connections that held
    /// theirs longer than the hold while it waits.
    async fn free_slot(&mut self, slots: Arc<Semaphore>) -> OwnedSemaphorePermit {
        loop {
            let next = {
                let mut holds = lock(&self.holds);
                holds.expire(Instant::now());
                holds.next_deadline()
            };
            let acquire = slots.clone().acquire_owned();
            let acquired = match next {
                None => acquire.await,
                Some(deadline) => tokio::select! {
                    acquired = acquire => acquired,
                    () = tokio::time::sleep_until(deadline) => continue,
                },
            };
            // The semaphore is never closed.
            if let Ok(permit) = acquired {
                return permit;
            }
        }
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
    async fn finished_handshakes_leave_nothing_behind() {
        let mut gate = Admission::new(4, 0);
        for _ in 0..1_000 {
            let slot = gate.admit().await;
            let copy = slot.clone();
            drop(slot);
            drop(copy);
        }
        let holds = lock(&gate.holds);
        assert_eq!(holds.entries.len(), 1, "entries are reused");
        assert!(holds.deadlines.len() <= 1, "{}", holds.deadlines.len());
        drop(holds);
        assert_eq!(gate.free(), 4);
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
