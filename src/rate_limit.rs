//! A token bucket for per-connection publish rates.

use std::time::Instant;

/// `rate` tokens per second, bursts up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `rate == 0` means unlimited.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    fn try_take_at(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10, 20);
        b.last = start;
        let taken = (0..25).filter(|_| b.try_take_at(start)).count();
        assert_eq!(taken, 20);
        assert!(b.try_take_at(start + Duration::from_millis(100)));
        assert!(!b.try_take_at(start + Duration::from_millis(100)));
    }

    #[test]
    fn zero_is_unlimited() {
        let mut b = TokenBucket::new(0, 0);
        assert!((0..10_000).all(|_| b.try_take()));
    }
}
