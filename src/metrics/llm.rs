//! LLM serving latencies measured at the proxy, named and bucketed as the field does so a
//! dashboard built for vLLM or OpenTelemetry GenAI reads them the same way:
//!
//! | llamactl | vLLM | OpenTelemetry GenAI |
//! |---|---|---|
//! | `llamactl_proxy_time_to_first_token_seconds` | `vllm:time_to_first_token_seconds` | `gen_ai.server.time_to_first_token` |
//! | `llamactl_proxy_inter_token_latency_seconds` | `vllm:inter_token_latency_seconds` | `gen_ai.server.time_per_output_token` |
//! | `llamactl_proxy_queue_time_seconds` | `vllm:request_queue_time_seconds` | — |
//! | `llamactl_proxy_request_tokens{type}` | `vllm:request_prompt_tokens`, `…generation_tokens` | `gen_ai.client.token.usage{gen_ai.token.type}` |
//!
//! (End-to-end latency is `llamactl_proxy_request_duration_seconds`, older than these.)
//! Labels: `instance_name`, and `model`, the request's `model` field — which differs from the
//! instance name for an alias or for `instance/model` on a backend that serves several.

use super::tally::TallyHistogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

/// vLLM's `time_to_first_token` buckets; OpenTelemetry GenAI's are the first sixteen of them.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// vLLM's `inter_token_latency` buckets; OpenTelemetry GenAI's `time_per_output_token` are the
/// first thirteen of them.
pub const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];

/// vLLM's request latency buckets, which it also uses for `request_queue_time`.
pub const QUEUE_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// OpenTelemetry GenAI's `gen_ai.client.token.usage` buckets (powers of 4).
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// Distinct `model` values kept per instance; later ones are counted as `model="other"`. The
/// value comes from clients (`instance/anything` routes), so it must not grow `/metrics`
/// without bound.
pub const MAX_MODELS_PER_INSTANCE: usize = 16;

/// The `model` label of requests beyond `MAX_MODELS_PER_INSTANCE`.
pub const OTHER_MODEL: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub instance_name: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelTokenLabels {
    pub instance_name: String,
    pub model: String,
    /// `prompt` or `completion`.
    pub r#type: String,
}

type Fam<L> = Family<L, TallyHistogram, fn() -> TallyHistogram>;

#[derive(Clone, Debug)]
pub struct LlmMetrics {
    pub ttft: Fam<ModelLabels>,
    pub itl: Fam<ModelLabels>,
    pub queue: Fam<ModelLabels>,
    pub tokens: Fam<ModelTokenLabels>,
}

fn ttft() -> TallyHistogram {
    TallyHistogram::new(TTFT_BUCKETS)
}
fn itl() -> TallyHistogram {
    TallyHistogram::new(ITL_BUCKETS)
}
fn queue() -> TallyHistogram {
    TallyHistogram::new(QUEUE_BUCKETS)
}
fn tokens() -> TallyHistogram {
    TallyHistogram::new(TOKEN_BUCKETS)
}

impl LlmMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            ttft: Family::new_with_constructor(ttft as fn() -> TallyHistogram),
            itl: Family::new_with_constructor(itl as fn() -> TallyHistogram),
            queue: Family::new_with_constructor(queue as fn() -> TallyHistogram),
            tokens: Family::new_with_constructor(tokens as fn() -> TallyHistogram),
        };
        r.register_with_unit(
            "proxy_time_to_first_token",
            "Time from receiving a streamed model request to the first event that carries generated text (not the first byte: a role-only first chunk does not count)",
            Unit::Seconds,
            m.ttft.clone(),
        );
        r.register_with_unit(
            "proxy_inter_token_latency",
            "Time between streamed events that carry generated text; events read together share the interval since the previous read",
            Unit::Seconds,
            m.itl.clone(),
        );
        r.register_with_unit(
            "proxy_queue_time",
            "Time a model request waited before it was sent to the backend: for an on-demand start, or for its instance to become ready",
            Unit::Seconds,
            m.queue.clone(),
        );
        r.register(
            "proxy_request_tokens",
            "Tokens per proxied request (type prompt or completion), from the response's usage or llama.cpp timings",
            m.tokens.clone(),
        );
        m
    }
}

/// One (instance, model)'s histograms, looked up once and kept.
#[derive(Debug)]
pub struct LlmSeries {
    pub ttft: TallyHistogram,
    pub itl: TallyHistogram,
    pub queue: TallyHistogram,
    pub prompt_tokens: TallyHistogram,
    pub completion_tokens: TallyHistogram,
}

impl LlmSeries {
    pub fn new(m: &LlmMetrics, instance: &str, model: &str) -> Self {
        let l = ModelLabels {
            instance_name: instance.into(),
            model: model.into(),
        };
        let t = |kind: &str| {
            m.tokens
                .get_or_create(&ModelTokenLabels {
                    instance_name: instance.into(),
                    model: model.into(),
                    r#type: kind.into(),
                })
                .clone()
        };
        Self {
            ttft: m.ttft.get_or_create(&l).clone(),
            itl: m.itl.get_or_create(&l).clone(),
            queue: m.queue.get_or_create(&l).clone(),
            prompt_tokens: t("prompt"),
            completion_tokens: t("completion"),
        }
    }

    /// Takes the series of (instance, model) out of the families.
    pub fn remove(m: &LlmMetrics, instance: &str, model: &str) {
        let l = ModelLabels {
            instance_name: instance.into(),
            model: model.into(),
        };
        m.ttft.remove(&l);
        m.itl.remove(&l);
        m.queue.remove(&l);
        for kind in ["prompt", "completion"] {
            m.tokens.remove(&ModelTokenLabels {
                instance_name: instance.into(),
                model: model.into(),
                r#type: kind.into(),
            });
        }
    }
}
