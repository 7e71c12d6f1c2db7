//! A histogram that takes a request's observations in one step: `Tally` counts them locally
//! (no atomics, no lock, no allocation) while a response streams, and `TallyHistogram::add`
//! merges the tally with a few atomic adds when the request ends.
//!
//! Why not `prometheus_client`'s `Histogram`: its `observe` takes a mutex, and the
//! inter-token latency is observed once per streamed token — hundreds of locks per request on
//! the hottest path, shared by every worker streaming from the same instance. The exposition is
//! the same classic histogram (`_bucket`, `_sum`, `_count`).

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The most buckets a `Tally` holds (bounds + `+Inf`); longer bound lists are cut here.
pub const MAX_BUCKETS: usize = 24;

/// Observations made while a request runs, not yet visible on `/metrics`. Inline (no
/// allocation): one lives in every streamed response.
#[derive(Clone, Debug, PartialEq)]
pub struct Tally {
    bounds: &'static [f64],
    /// One count per bound, then the `+Inf` bucket (not cumulative).
    counts: [u64; MAX_BUCKETS],
    sum: f64,
    count: u64,
}

impl Tally {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds: &bounds[..bounds.len().min(MAX_BUCKETS - 1)],
            counts: [0; MAX_BUCKETS],
            sum: 0.0,
            count: 0,
        }
    }

    /// One observation. A value that is not a finite, non-negative number is ignored (a clock
    /// step cannot make a negative duration reach the histogram).
    pub fn observe(&mut self, v: f64) {
        self.observe_n(v, 1);
    }

    /// `n` observations of the same value (tokens that arrived together share their interval).
    pub fn observe_n(&mut self, v: f64, n: u64) {
        if n == 0 || !v.is_finite() || v < 0.0 {
            return;
        }
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] = self.counts[i].saturating_add(n);
        self.sum += v * n as f64;
        self.count = self.count.saturating_add(n);
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The shared histogram a `Tally` is merged into: atomics, no lock, so requests finishing on
/// different workers at once do not wait for each other.
#[derive(Clone, Debug)]
pub struct TallyHistogram {
    bounds: &'static [f64],
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Per bucket (not cumulative), the last `+Inf`.
    counts: Vec<AtomicU64>,
    /// The sum's `f64` bits. (No count of its own: it is the buckets' total.)
    sum: AtomicU64,
}

impl TallyHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        let bounds = &bounds[..bounds.len().min(MAX_BUCKETS - 1)];
        Self {
            bounds,
            inner: Arc::new(Inner {
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    /// An empty tally with this histogram's bounds.
    pub fn tally(&self) -> Tally {
        Tally::new(self.bounds)
    }

    /// One observation straight away (for series observed once per request).
    pub fn observe(&self, v: f64) {
        if !v.is_finite() || v < 0.0 {
            return;
        }
        let i = self.bounds.partition_point(|b| *b < v);
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        self.add_sum(v);
    }

    fn add_sum(&self, v: f64) {
        let _ = self
            .inner
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// Merges a request's observations. A tally made for other bounds is ignored.
    pub fn add(&self, t: &Tally) {
        if t.is_empty() || t.bounds != self.bounds {
            return;
        }
        for (slot, n) in self.inner.counts.iter().zip(&t.counts) {
            if *n > 0 {
                slot.fetch_add(*n, Ordering::Relaxed);
            }
        }
        self.add_sum(t.sum);
    }

    /// `(sum, per-bucket counts with the last bound +Inf)` as read now.
    fn read(&self) -> (f64, Vec<(f64, u64)>) {
        let buckets = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.inner.counts)
            .map(|(b, n)| (b, n.load(Ordering::Relaxed)))
            .collect();
        (
            f64::from_bits(self.inner.sum.load(Ordering::Relaxed)),
            buckets,
        )
    }

    /// `(sum, count, cumulative bucket counts)`, for tests.
    pub fn get(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let (sum, buckets) = self.read();
        let mut acc = 0;
        let cumulative = buckets
            .into_iter()
            .map(|(b, n)| {
                acc += n;
                (b, acc)
            })
            .collect();
        (sum, acc, cumulative)
    }
}

impl TypedMetric for TallyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for TallyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, buckets) = self.read();
        // The count from the buckets read, so `_count` always equals the `+Inf` bucket.
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    const B: &[f64] = &[0.1, 1.0];

    #[test]
    fn a_tally_lands_in_the_same_buckets_as_single_observations() {
        let h = TallyHistogram::new(B);
        let mut t = h.tally();
        for v in [0.05, 0.1, 0.5, 2.0] {
            t.observe(v);
        }
        t.observe_n(0.2, 3);
        t.observe(-1.0);
        t.observe(f64::NAN);
        h.add(&t);
        h.observe(0.01);
        let (sum, count, buckets) = h.get();
        assert_eq!(count, 8);
        assert!((sum - (0.05 + 0.1 + 0.5 + 2.0 + 0.6 + 0.01)).abs() < 1e-9);
        assert_eq!(buckets, vec![(0.1, 3), (1.0, 7), (f64::INFINITY, 8)]);
        let mut r = Registry::default();
        r.register("x_seconds", "x", h);
        let mut s = String::new();
        encode(&mut s, &r).expect("encode");
        assert!(s.contains("x_seconds_bucket{le=\"0.1\"} 3"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"+Inf\"} 8"), "{s}");
        assert!(s.contains("x_seconds_count 8"), "{s}");
    }
}
