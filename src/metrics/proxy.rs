//! Series about proxied model requests: counts, latency, time to first byte, tokens; the LLM
//! latencies (time to first token, inter-token, queue) are described in `super::llm`.

use super::llm::{LlmMetrics, LlmSeries, MAX_MODELS_PER_INSTANCE, OTHER_MODEL};

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
    pub llm: LlmMetrics,
}

impl ProxyMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(hist as fn() -> Histogram),
            ttfb: Family::new_with_constructor(hist as fn() -> Histogram),
            tokens: Family::default(),
            tokens_per_second: Family::default(),
            llm: LlmMetrics::register(r),
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
}

/// One instance's proxy series, looked up in the families once per label set and then kept
/// (with the instance's handle), so a request records its metrics without building label sets
/// or hashing them. `endpoints` are the endpoint labels the caller uses, by index.
///
/// Dropped with the handle of a deleted instance (after its last request in flight), it takes
/// its series out of the families: otherwise a loop of create, request, delete would grow
/// `/metrics` without bound. (An instance deleted and created again under the same name while
/// a request to the old one is still running loses the series recorded between the two.)
pub struct InstanceSeries {
    metrics: ProxyMetrics,
    instance: String,
    endpoints: &'static [&'static str],
    per_endpoint: Vec<std::sync::OnceLock<EndpointSeries>>,
    prompt: std::sync::OnceLock<Counter>,
    completion: std::sync::OnceLock<Counter>,
    tokens_per_second: std::sync::OnceLock<Gauge<f64, AtomicU64>>,
    /// The LLM series of requests whose `model` is the instance's name.
    llm_own: std::sync::OnceLock<std::sync::Arc<LlmSeries>>,
    /// Those of other `model` values (aliases, `instance/model`), at most
    /// `MAX_MODELS_PER_INSTANCE` of them, then `OTHER_MODEL`.
    llm_models: std::sync::RwLock<Vec<(String, std::sync::Arc<LlmSeries>)>>,
}

struct EndpointSeries {
    duration: Histogram,
    ttfb: Histogram,
    /// `(status, counter)`: the few statuses an endpoint answers with.
    requests: std::sync::RwLock<Vec<(u16, Counter)>>,
}

impl InstanceSeries {
    pub fn new(metrics: &ProxyMetrics, instance: &str, endpoints: &'static [&'static str]) -> Self {
        Self {
            metrics: metrics.clone(),
            instance: instance.to_string(),
            endpoints,
            per_endpoint: endpoints
                .iter()
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            prompt: std::sync::OnceLock::new(),
            completion: std::sync::OnceLock::new(),
            tokens_per_second: std::sync::OnceLock::new(),
            llm_own: std::sync::OnceLock::new(),
            llm_models: std::sync::RwLock::new(Vec::new()),
        }
    }

    /// The LLM latency series of requests that named `model`.
    pub fn llm(&self, model: &str) -> std::sync::Arc<LlmSeries> {
        if model == self.instance {
            return self
                .llm_own
                .get_or_init(|| LlmSeries::new(&self.metrics.llm, &self.instance, model).into())
                .clone();
        }
        let find = |v: &[(String, std::sync::Arc<LlmSeries>)], m: &str| {
            v.iter().find(|(k, _)| k == m).map(|(_, s)| s.clone())
        };
        let read = self.llm_models.read().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = find(&read, model) {
            return s;
        }
        drop(read);
        let mut w = self.llm_models.write().unwrap_or_else(|p| p.into_inner());
        let key = if w.len() < MAX_MODELS_PER_INSTANCE {
            model
        } else {
            OTHER_MODEL
        };
        if let Some(s) = find(&w, key) {
            return s;
        }
        let s = std::sync::Arc::new(LlmSeries::new(&self.metrics.llm, &self.instance, key));
        w.push((key.to_string(), s.clone()));
        s
    }

    fn endpoint(&self, i: usize) -> Option<&EndpointSeries> {
        let label = *self.endpoints.get(i)?;
        Some(self.per_endpoint.get(i)?.get_or_init(|| {
            let l = EndpointLabels {
                instance_name: self.instance.clone(),
                endpoint: label.into(),
            };
            EndpointSeries {
                duration: self.metrics.duration.get_or_create(&l).clone(),
                ttfb: self.metrics.ttfb.get_or_create(&l).clone(),
                requests: std::sync::RwLock::new(Vec::new()),
            }
        }))
    }

    /// A finished (or abandoned) request on endpoint number `endpoint`.
    pub fn observe(&self, endpoint: usize, status: u16, seconds: f64, ttfb: Option<f64>) {
        let Some(e) = self.endpoint(endpoint) else {
            return;
        };
        let known = e
            .requests
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, c)| c.clone());
        let counter = known.unwrap_or_else(|| {
            let c = self
                .metrics
                .requests
                .get_or_create(&RequestLabels {
                    instance_name: self.instance.clone(),
                    endpoint: self.endpoints[endpoint].into(),
                    status,
                })
                .clone();
            let mut w = e.requests.write().unwrap_or_else(|p| p.into_inner());
            if !w.iter().any(|(s, _)| *s == status) {
                w.push((status, c.clone()));
            }
            c
        });
        counter.inc();
        e.duration.observe(seconds.max(0.0));
        if let Some(t) = ttfb {
            e.ttfb.observe(t.max(0.0));
        }
    }

    pub fn tokens(&self, prompt: u64, completion: u64, per_second: Option<f64>) {
        for (kind, n, slot) in [
            ("prompt", prompt, &self.prompt),
            ("completion", completion, &self.completion),
        ] {
            if n > 0 {
                slot.get_or_init(|| {
                    self.metrics
                        .tokens
                        .get_or_create(&TokenLabels {
                            instance_name: self.instance.clone(),
                            r#type: kind.into(),
                        })
                        .clone()
                })
                .inc_by(n);
            }
        }
        if let Some(tps) = per_second.filter(|t| t.is_finite() && *t >= 0.0) {
            self.tokens_per_second
                .get_or_init(|| {
                    self.metrics
                        .tokens_per_second
                        .get_or_create(&InstanceLabels {
                            instance_name: self.instance.clone(),
                        })
                        .clone()
                })
                .set(tps);
        }
    }
}

impl Drop for InstanceSeries {
    fn drop(&mut self) {
        for (i, slot) in self.per_endpoint.iter().enumerate() {
            let Some(e) = slot.get() else { continue };
            let endpoint = self.endpoints[i].to_string();
            for (status, _) in e.requests.read().unwrap_or_else(|p| p.into_inner()).iter() {
                self.metrics.requests.remove(&RequestLabels {
                    instance_name: self.instance.clone(),
                    endpoint: endpoint.clone(),
                    status: *status,
                });
            }
            let l = EndpointLabels {
                instance_name: self.instance.clone(),
                endpoint,
            };
            self.metrics.duration.remove(&l);
            self.metrics.ttfb.remove(&l);
        }
        for (kind, slot) in [("prompt", &self.prompt), ("completion", &self.completion)] {
            if slot.get().is_some() {
                self.metrics.tokens.remove(&TokenLabels {
                    instance_name: self.instance.clone(),
                    r#type: kind.into(),
                });
            }
        }
        if self.tokens_per_second.get().is_some() {
            self.metrics.tokens_per_second.remove(&InstanceLabels {
                instance_name: self.instance.clone(),
            });
        }
        if self.llm_own.get().is_some() {
            LlmSeries::remove(&self.metrics.llm, &self.instance, &self.instance);
        }
        for (model, _) in self
            .llm_models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            LlmSeries::remove(&self.metrics.llm, &self.instance, model);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn text(r: &Registry) -> String {
        let mut s = String::new();
        encode(&mut s, r).expect("encode");
        s
    }

    #[test]
    fn an_instance_series_takes_its_series_away_when_dropped() {
        let mut r = Registry::default();
        let m = ProxyMetrics::register(&mut r);
        let keep = InstanceSeries::new(&m, "keep", &["chat", "embeddings"]);
        keep.observe(0, 200, 0.1, Some(0.01));
        for round in 0..3 {
            let gone = InstanceSeries::new(&m, "gone", &["chat", "embeddings"]);
            gone.observe(0, 200, 0.1, Some(0.01));
            gone.observe(0, 502, 0.1, None);
            gone.observe(1, 200, 0.1, None);
            gone.tokens(10, 20, Some(5.0));
            gone.llm("gone").ttft.observe(0.5);
            gone.llm("gone/lora-a").itl.observe(0.5);
            assert!(text(&r).contains("instance_name=\"gone\""), "round {round}");
            drop(gone);
            let after = text(&r);
            assert!(!after.contains("\"gone\""), "round {round}: {after}");
            assert!(after.contains("instance_name=\"keep\""), "{after}");
        }
    }

    #[test]
    fn the_model_label_is_bounded_per_instance() {
        let mut r = Registry::default();
        let m = ProxyMetrics::register(&mut r);
        let s = InstanceSeries::new(&m, "vllm", &["chat"]);
        for i in 0..100 {
            s.llm(&format!("vllm/adapter-{i}")).queue.observe(0.0);
        }
        s.llm("vllm").queue.observe(0.0);
        let t = text(&r);
        let models: std::collections::BTreeSet<_> = t
            .lines()
            .filter(|l| l.starts_with("proxy_queue_time_seconds_count"))
            .collect();
        assert_eq!(models.len(), MAX_MODELS_PER_INSTANCE + 2, "{t}");
        assert!(
            t.contains("proxy_queue_time_seconds_count{instance_name=\"vllm\",model=\"other\"} 84")
        );
    }
}
