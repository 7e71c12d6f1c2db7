//! `llamactl_log_shipping_dropped_total{destination}`: log lines a shipping destination
//! (`[[logging.destinations]]` of type `syslog` or `elasticsearch`, `src/logging/`) never
//! delivered: its queue was full (the destination slow or down), the destination refused them,
//! or they were still waiting when the daemon stopped. One series per such destination, labelled
//! with its `name` (default: its type); the family is absent when there is none.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::MetricType;
use std::sync::{Arc, RwLock};

/// The destinations' drop counters (the counters themselves are the senders'); clones share them.
#[derive(Clone, Debug, Default)]
pub struct LogShippingMetrics {
    destinations: Arc<RwLock<Vec<(String, Counter)>>>,
}

impl LogShippingMetrics {
    /// Adds a destination's series (at start, from the logging set-up).
    pub fn add(&self, destination: &str, dropped: Counter) {
        self.destinations
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((destination.to_string(), dropped));
    }
}

#[derive(Debug)]
pub struct LogShippingCollector(pub LogShippingMetrics);

impl Collector for LogShippingCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let d = self
            .0
            .destinations
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if d.is_empty() {
            return Ok(());
        }
        let mut f = enc.encode_descriptor(
            "log_shipping_dropped",
            "Log lines a syslog or Elasticsearch destination never delivered (queue full, refused, or unsent at stop), by destination",
            None,
            MetricType::Counter,
        )?;
        for (name, c) in d.iter() {
            ConstCounter::new(c.get())
                .encode(f.encode_family(&[("destination", name.as_str())])?)?;
        }
        Ok(())
    }
}
