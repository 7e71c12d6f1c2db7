//! Host memory gauges, read at scrape time.
//!
//! Whether another model fits is the question operators ask most, so total and available memory
//! are exported next to the daemon's own metrics instead of requiring node_exporter on every host.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::host::{read_meminfo, HostPaths};

/// Emits `system_memory_total_bytes` and `system_memory_available_bytes` (prefixed by the
/// registry it is registered in). When meminfo cannot be read both series are left out of that
/// scrape: a missing series is visible to `absent()` alerts, a made-up zero is not.
#[derive(Debug)]
pub struct SystemCollector {
    paths: HostPaths,
}

impl SystemCollector {
    pub fn new(paths: HostPaths) -> Self {
        Self { paths }
    }
}

impl Collector for SystemCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = match read_meminfo(&self.paths) {
            Ok(info) => info,
            Err(err) => {
                tracing::debug!(error = format!("{err:#}"), "skipping system memory metrics");
                return Ok(());
            }
        };
        for (name, help, value) in [
            (
                "system_memory_total",
                "Total usable physical memory of the host (MemTotal) in bytes.",
                info.total_bytes,
            ),
            (
                "system_memory_available",
                "Memory available for new workloads without swapping (MemAvailable) in bytes.",
                info.available_bytes,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            let metric =
                encoder.encode_descriptor(name, help, Some(&Unit::Bytes), gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fixture_paths;
    use prometheus_client::registry::Registry;

    fn scrape(paths: HostPaths) -> String {
        let mut registry = Registry::with_prefix("llamactl");
        registry.register_collector(Box::new(SystemCollector::new(paths)));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn fixture_memory_is_exported_in_bytes() {
        let out = scrape(fixture_paths("v2"));
        assert!(
            out.contains("\nllamactl_system_memory_total_bytes 67320008704\n"),
            "{out}"
        );
        assert!(
            out.contains("\nllamactl_system_memory_available_bytes 52550291456\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE llamactl_system_memory_total_bytes gauge\n"),
            "{out}"
        );
    }

    #[test]
    fn unreadable_meminfo_drops_the_series_without_failing() {
        assert_eq!(scrape(fixture_paths("malformed")), "");
        assert_eq!(scrape(fixture_paths("does-not-exist")), "");
    }
}
