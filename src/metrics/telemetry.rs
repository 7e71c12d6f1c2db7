//! `llamactl_telemetry_spans_{exported,dropped}_total`: what became of the trace spans
//! (`src/telemetry/`). Dropped counts spans lost to a full export queue or a failed export, so
//! a dead collector shows as a rising count rather than only its one log line. Absent while
//! telemetry is off.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

#[derive(Debug)]
pub struct TelemetryCollector;

impl Collector for TelemetryCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        if !crate::telemetry::enabled() {
            return Ok(());
        }
        let (exported, dropped) = crate::telemetry::counts();
        for (name, help, n) in [
            ("telemetry_spans_exported", "Trace spans the OTLP collector accepted", exported),
            ("telemetry_spans_dropped", "Trace spans lost: the export queue was full, or the collector failed, refused or timed out", dropped),
        ] {
            let f = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(n).encode(f)?;
        }
        Ok(())
    }
}
