//! Reconnection delays: exponential growth with jitter.

use std::time::Duration;

use rand::Rng;

/// Delay before reconnect attempt `n` (counting from 0) is drawn uniformly
/// from `[min, min(max, min * 2^(n+1))]`: the first attempt waits between
/// `min` and `2 * min`, and the ceiling doubles with each failure up to `max`.
/// The random spread keeps a fleet of clients dropped at once (e.g. by an
/// instance restart) from reconnecting in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The ceiling for attempt `attempt`.
    pub(crate) fn cap(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_add(1).min(30);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt; each call counts one attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let cap = self.cap(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let lo = self.min.as_micros() as u64;
        let hi = cap.as_micros() as u64;
        if hi <= lo {
            return self.min;
        }
        Duration::from_micros(rand::rng().random_range(lo..=hi))
    }

    /// Back to the first attempt's delays (after a connection proved stable).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_stay_within_bounds() {
        let (min, max) = (100 * MS, 10_000 * MS);
        let mut b = Backoff::new(min, max);
        for attempt in 0..64u32 {
            let cap = b.cap(attempt);
            assert!(cap >= min && cap <= max, "cap {cap:?}");
            let d = b.next_delay();
            assert!(
                d >= min && d <= cap,
                "attempt {attempt}: {d:?} not in [{min:?}, {cap:?}]"
            );
        }
        assert_eq!(b.cap(0), 200 * MS);
        assert_eq!(b.cap(1), 400 * MS);
        assert_eq!(b.cap(6), max);
        assert_eq!(b.cap(u32::MAX), max);
    }

    #[test]
    fn reset_restarts_growth() {
        let mut b = Backoff::new(10 * MS, 1000 * MS);
        for _ in 0..20 {
            b.next_delay();
        }
        b.reset();
        let d = b.next_delay();
        assert!(d >= 10 * MS && d <= 20 * MS, "{d:?}");
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(100 * MS, 10_000 * MS);
            for _ in 0..5 {
                b.next_delay();
            }
            seen.insert(b.next_delay());
        }
        assert!(seen.len() > 1, "no jitter at all");
    }

    #[test]
    fn degenerate_bounds_are_fixed() {
        let mut b = Backoff::new(50 * MS, 10 * MS);
        for _ in 0..5 {
            assert_eq!(b.next_delay(), 50 * MS);
        }
        let mut z = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(z.next_delay(), MS);
    }
}
