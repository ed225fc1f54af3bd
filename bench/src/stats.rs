//! Percentiles and medians. Pure functions, unit-tested.

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// The value at quantile `q` (0..=1) of `sorted` (ascending), by the
/// nearest-rank method: the smallest value with at least `q` of the samples
/// at or below it. `None` when empty or `q` is out of range.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let n = sorted.len();
    // Nearest rank: ceil(q * n), at least 1.
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    Some(sorted[rank - 1])
}

/// Sorts `samples` and summarises them; `None` when empty.
pub fn latency(mut samples: Vec<u64>) -> Option<Latency> {
    samples.sort_unstable();
    Some(Latency {
        samples: samples.len() as u64,
        p50_us: percentile(&samples, 0.50)? as f64,
        p99_us: percentile(&samples, 0.99)? as f64,
        p999_us: percentile(&samples, 0.999)? as f64,
    })
}

/// The median of `values` (mean of the middle two for an even count); NaNs
/// are ignored. `None` when no finite value is left.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 0.999), Some(100));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 0.99), Some(7));
    }

    #[test]
    fn percentile_rejects_empty_and_bad_quantiles() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[1, 2], 1.5), None);
        assert_eq!(percentile(&[1, 2], -0.1), None);
        assert_eq!(percentile(&[1, 2], f64::NAN), None);
    }

    #[test]
    fn latency_sorts_before_ranking() {
        let l = latency(vec![30, 10, 20, 1000]).expect("non-empty");
        assert_eq!(l.samples, 4);
        assert_eq!(l.p50_us, 20.0);
        assert_eq!(l.p99_us, 1000.0);
        assert!(latency(Vec::new()).is_none());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
    }
}
