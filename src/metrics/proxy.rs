//! Series about proxied model requests: counts, latency, time to first byte, tokens.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// Model requests run from milliseconds (embeddings, cached prompts) to minutes (long generations).
const BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub instance_name: String,
    pub endpoint: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub instance_name: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub instance_name: String,
    /// `prompt` or `completion`.
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub instance_name: String,
}

type Hist = Family<EndpointLabels, Histogram, fn() -> Histogram>;

fn hist() -> Histogram {
    Histogram::new(BUCKETS)
}

#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Hist,
    pub ttfb: Hist,
    pub tokens: Family<TokenLabels, Counter>,
    pub tokens_per_second: Family<InstanceLabels, Gauge<f64, AtomicU64>>,
}

impl ProxyMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(hist as fn() -> Histogram),
            ttfb: Family::new_with_constructor(hist as fn() -> Histogram),
            tokens: Family::default(),
            tokens_per_second: Family::default(),
        };
        r.register(
            "proxy_requests",
            "Requests proxied to instances, by instance, endpoint and HTTP status",
            m.requests.clone(),
        );
        r.register_with_unit(
            "proxy_request_duration",
            "Time from receiving a proxied request to the end of the backend's response",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register_with_unit(
            "proxy_time_to_first_byte",
            "Time from receiving a proxied request to the first byte of the backend's response body",
            Unit::Seconds,
            m.ttfb.clone(),
        );
        r.register(
            "instance_tokens",
            "Tokens processed by an instance (type prompt or completion), from responses' usage or llama.cpp timings",
            m.tokens.clone(),
        );
        r.register(
            "instance_tokens_per_second",
            "Generation speed of the instance's last completed request, in tokens per second",
            m.tokens_per_second.clone(),
        );
        m
    }

    pub fn observe(
        &self,
        instance: &str,
        endpoint: &str,
        status: u16,
        seconds: f64,
        ttfb: Option<f64>,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                instance_name: instance.into(),
                endpoint: endpoint.into(),
                status,
            })
            .inc();
        let l = EndpointLabels {
            instance_name: instance.into(),
            endpoint: endpoint.into(),
        };
        self.duration.get_or_create(&l).observe(seconds.max(0.0));
        if let Some(t) = ttfb {
            self.ttfb.get_or_create(&l).observe(t.max(0.0));
        }
    }

    pub fn tokens(&self, instance: &str, prompt: u64, completion: u64, per_second: Option<f64>) {
        for (kind, n) in [("prompt", prompt), ("completion", completion)] {
            if n > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        instance_name: instance.into(),
                        r#type: kind.into(),
                    })
                    .inc_by(n);
            }
        }
        if let Some(tps) = per_second.filter(|t| t.is_finite() && *t >= 0.0) {
            self.tokens_per_second
                .get_or_create(&InstanceLabels {
                    instance_name: instance.into(),
                })
                .set(tps);
        }
    }
}
