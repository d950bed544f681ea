//! Latency statistics: a log-linear histogram (about 3 % relative precision,
//! exact below 32 ns) that is cheap to record into from many tasks, and its
//! percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

fn index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = ((v >> (e - SUB_BITS)) as usize) - SUB;
    (e - SUB_BITS + 1) as usize * SUB + sub
}

/// The smallest and largest value of bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, i as u64);
    }
    let e = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = (i % SUB) as u64;
    let low = (SUB as u64 + sub) << (e - SUB_BITS);
    let width = 1u64 << (e - SUB_BITS);
    (low, low + (width - 1))
}

/// Values in nanoseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
            sum: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("max", &self.max)
            .finish()
    }
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    pub fn record_duration(&mut self, d: Duration) {
        self.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            (self.sum / u128::from(self.total)) as u64
        }
    }

    /// The value at quantile `q` (0..=1): the smallest bucket whose cumulative
    /// count reaches `ceil(q × count)`, reported as its midpoint (never above
    /// the maximum seen). 0 when empty.
    pub fn percentile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, high) = bounds(i);
                return (low + (high - low) / 2).min(self.max);
            }
        }
        self.max
    }

    pub fn summary(&self) -> Summary {
        Summary {
            count: self.total,
            p50_ms: ms(self.percentile(0.50)),
            p99_ms: ms(self.percentile(0.99)),
            max_ms: ms(self.max),
            mean_ms: ms(self.mean()),
        }
    }
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e6 * 1000.0).round() / 1000.0
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (n={})",
            self.p50_ms, self.p99_ms, self.max_ms, self.count
        )
    }
}

/// A [`Histogram`] many tasks record into at once (relaxed atomics).
pub struct AtomicHistogram {
    counts: Vec<AtomicU64>,
    max: AtomicU64,
    sum: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    pub fn record(&self, v: u64) {
        self.counts[index(v)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Histogram {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total = counts.iter().sum();
        Histogram {
            counts,
            total,
            max: self.max.load(Ordering::Relaxed),
            sum: u128::from(self.sum.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in [0u64, 1, 31, 32, 33, 63, 64, 65, 1000, 123_456, 1 << 40, u64::MAX] {
            let i = index(v);
            assert!(i >= last, "index must not decrease: {v}");
            last = i;
            let (low, high) = bounds(i);
            assert!(low <= v && v <= high, "{v} not in [{low}, {high}] (bucket {i})");
        }
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn relative_error_is_small() {
        for v in [100u64, 1_000, 12_345, 999_999, 50_000_000] {
            let (low, high) = bounds(index(v));
            assert!((high - low) as f64 / v as f64 <= 1.0 / 32.0 + 1e-9, "{v}");
        }
    }

    #[test]
    fn percentiles_of_a_uniform_sample() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000); // 1 µs .. 10 ms
        }
        let near = |got: u64, want: u64| (got as f64 - want as f64).abs() / want as f64 <= 0.03;
        assert!(near(h.percentile(0.5), 5_000_000), "{}", h.percentile(0.5));
        assert!(near(h.percentile(0.99), 9_900_000), "{}", h.percentile(0.99));
        assert_eq!(h.percentile(1.0), 10_000_000);
        assert_eq!(h.max(), 10_000_000);
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.mean(), 5_000_500);
    }

    #[test]
    fn percentile_of_small_and_empty_samples() {
        let h = Histogram::default();
        assert_eq!(h.percentile(0.99), 0);
        let mut h = Histogram::default();
        h.record(7);
        assert_eq!(h.percentile(0.0), 7);
        assert_eq!(h.percentile(0.99), 7);
        let mut h = Histogram::default();
        for _ in 0..99 {
            h.record(10);
        }
        h.record(1_000_000);
        assert_eq!(h.percentile(0.99), 10, "the 99th of 100 values is the last small one");
        assert!(h.percentile(0.999) > 900_000);
    }

    #[test]
    fn atomic_snapshot_and_merge_agree() {
        let a = AtomicHistogram::default();
        let mut plain = Histogram::default();
        for v in [5u64, 500, 50_000, 5_000_000] {
            a.record(v);
            plain.record(v);
        }
        let mut merged = Histogram::default();
        merged.merge(&a.snapshot());
        assert_eq!(merged.count(), 4);
        assert_eq!(merged.max(), 5_000_000);
        assert_eq!(merged.percentile(0.5), plain.percentile(0.5));
    }
}
