//! `llamactl_profiling_uploads_total{result}`: the pushes of continuous profiling
//! (`src/debug/pyroscope.rs`), so a Pyroscope that is down shows as a rising `error` count
//! rather than only as a log line. The family is absent until profiling is switched on.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The push counters; clones share them.
#[derive(Clone, Debug, Default)]
pub struct ProfilingMetrics {
    enabled: Arc<AtomicBool>,
    /// Profiles the server accepted (2xx).
    pub ok: Counter,
    /// Pushes that failed: connection, timeout, or a non-2xx answer.
    pub failed: Counter,
    /// Windows not profiled or not pushed (the profiler busy with an on-demand profile, or
    /// the profile could not be built).
    pub skipped: Counter,
}

impl ProfilingMetrics {
    /// Makes the family appear on `/metrics` (all three series, from 0).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct ProfilingCollector(pub ProfilingMetrics);

impl Collector for ProfilingCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let m = &self.0;
        if !m.enabled.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut f = enc.encode_descriptor(
            "profiling_uploads",
            "Continuous profiling pushes to Pyroscope, by result (ok; error: unreachable, timed out or refused; skipped: a window not profiled or not pushed)",
            None,
            MetricType::Counter,
        )?;
        for (result, c) in [("ok", &m.ok), ("error", &m.failed), ("skipped", &m.skipped)] {
            ConstCounter::new(c.get()).encode(f.encode_family(&[("result", result)])?)?;
        }
        Ok(())
    }
}
