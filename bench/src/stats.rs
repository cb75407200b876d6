//! The report's arithmetic: fairness (Jain's index, max/min), latency percentiles from
//! an HdrHistogram, and medians across runs.
//!
//! Kept free of I/O so that every number printed by `handoff bench` can be checked by
//! the unit tests below against values worked out by hand.

use hdrhistogram::Histogram;

pub use handoff::__private::policy::jain;

/// The busiest worker's count over the idlest one's; `None` when some worker got
/// nothing (the ratio is infinite) or the list is empty.
pub fn max_min(xs: &[u64]) -> Option<f64> {
    let max = *xs.iter().max()?;
    let min = *xs.iter().min()?;
    (min > 0).then(|| max as f64 / min as f64)
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest request.
    pub max: f64,
}

/// A histogram of latencies recorded in microseconds, from 1 µs to 60 s at three
/// significant digits (0.1% error, well under the run-to-run noise).
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that HdrHistogram accepts; this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Records `us` microseconds, clamped into the histogram's range so that an outlier
/// never aborts a run.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, 60_000_000));
}

/// p50, p99, p99.9 and max of `h` (µs) in milliseconds; zeros for an empty histogram.
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles { p50: 0.0, p99: 0.0, p999: 0.0, max: 0.0 };
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Percentiles { p50: ms(0.50), p99: ms(0.99), p999: ms(0.999), max: h.max() as f64 / 1000.0 }
}

/// The median of `xs` (mean of the middle two for an even count); `None` if empty.
/// NaNs sort last, so a missing figure never becomes the median of present ones.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or_else(|| a.is_nan().cmp(&b.is_nan())));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn jain_is_one_when_even_and_one_over_n_when_one_takes_all() {
        assert!(close(jain(&[5, 5, 5, 5]), 1.0));
        assert!(close(jain(&[8, 0, 0, 0]), 0.25));
        assert!(close(jain(&[10, 0]), 0.5));
        // (1+2+3)² / (3·(1+4+9)) = 36/42
        assert!(close(jain(&[1, 2, 3]), 36.0 / 42.0));
        assert!(close(jain(&[]), 1.0));
        assert!(close(jain(&[0, 0]), 1.0));
    }

    #[test]
    fn max_min_ratio() {
        assert_eq!(max_min(&[10, 5, 8]), Some(2.0));
        assert_eq!(max_min(&[3, 3]), Some(1.0));
        assert_eq!(max_min(&[3, 0]), None);
        assert_eq!(max_min(&[]), None);
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        // 1..=1000 ms, one sample each: p50 = 500 ms, p99 = 990 ms, p99.9 = 999 ms.
        for ms in 1..=1000u64 {
            record(&mut h, ms * 1000);
        }
        let p = percentiles(&h);
        let near = |got: f64, want: f64| (got - want).abs() / want < 0.002;
        assert!(near(p.p50, 500.0), "{p:?}");
        assert!(near(p.p99, 990.0), "{p:?}");
        assert!(near(p.p999, 999.0), "{p:?}");
        assert!(near(p.max, 1000.0), "{p:?}");
        assert_eq!(percentiles(&new_histogram()).p99, 0.0);
    }

    #[test]
    fn tail_of_rare_slow_requests_shows_at_p999_not_p99() {
        // 1 in 500 requests takes 25 ms, the rest 1 ms: p99 stays at 1 ms.
        let mut h = new_histogram();
        for i in 0..10_000u64 {
            record(&mut h, if i % 500 == 0 { 25_000 } else { 1_000 });
        }
        let p = percentiles(&h);
        assert!((p.p99 - 1.0).abs() < 0.01, "{p:?}");
        assert!(p.max >= 24.9, "{p:?}");
    }

    #[test]
    fn out_of_range_samples_are_clamped() {
        let mut h = new_histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
