//! The Prometheus registry behind `/metrics`.
//!
//! One registry holds everything: llamactl's own metrics under the `llamactl_` prefix, and the
//! standard unprefixed `process_*` metrics, so a single scrape job covers the daemon. Values that
//! live in the kernel (process, host memory) are collectors read at scrape time rather than
//! gauges updated by a timer: they are never stale and cost nothing between scrapes.

use anyhow::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::host::HostPaths;

pub mod access;
pub mod build;
pub mod http;
pub mod llm;
pub mod log_shipping;
pub mod process;
pub mod profiling;
pub mod proxy;
pub mod resources;
pub mod runtime;
pub mod tally;
pub mod telemetry;

pub use self::process::ProcessCollector;
pub use self::resources::ResourceCollector;

use crate::config::MetricGroup;
use crate::stats::gpu::NoGpu;
use crate::stats::snapshot::Sampler;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use std::sync::Arc;

/// Upper bounds for API latency, 0.5 ms to 10 s in a 1-2.5-5 progression. Local API calls are
/// sub-millisecond; anything that touches systemd over D-Bus or proxies to a model server takes
/// tens of milliseconds to seconds, and the request timeout sits around 10 s.
const API_DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Exposition format of a scrape response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4, what every scraper understands.
    #[default]
    Prometheus,
    /// OpenMetrics 1.0 text, only sent to clients that ask for it.
    OpenMetrics,
}

impl Format {
    /// Picks the format from a request's `Accept` header. OpenMetrics is chosen only when the
    /// client lists it (Prometheus does, with a higher q than text/plain); curl, browsers and
    /// older scrapers get the classic text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let wants_openmetrics = accept.split(',').any(|range| {
            let mut params = range.split(';').map(str::trim);
            let media_type = params.next().unwrap_or_default();
            // `q=0` means "not acceptable" (RFC 9110 §12.4.2).
            let refused = params.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media_type.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        });
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` to send with [`Metrics::encode`] output in this format.
    pub fn content_type(&self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    method: String,
    route: String,
}

type DurationFamily = Family<DurationLabels, Histogram, fn() -> Histogram>;

fn new_duration_histogram() -> Histogram {
    Histogram::new(API_DURATION_BUCKETS)
}

/// The daemon's metrics. Shared behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: DurationFamily,
    sampler: Arc<Sampler>,
    seen: Arc<std::sync::atomic::AtomicBool>,
    /// The series of the model front doors' requests, whose method and route are fixed
    /// strings, each looked up once (`observe_model_request`).
    hot: std::sync::Mutex<Vec<HotSeries>>,
    pub proxy: proxy::ProxyMetrics,
    pub access: access::AccessMetrics,
    pub http: http::HttpMetrics,
    /// The daemon's tokio runtimes and long-lived tasks (`llamactl_runtime_*`, the task dump).
    pub runtimes: runtime::Runtimes,
    pub profiling: profiling::ProfilingMetrics,
    /// The shipping log destinations' drop counters (`llamactl_log_shipping_dropped_total`).
    pub log_shipping: log_shipping::LogShippingMetrics,
}

/// A request's duration as the histogram takes it: a NaN would poison its sum for the life of
/// the process, and a negative value can only come from a clock mix-up, so either counts as
/// instantaneous.
fn sane_seconds(seconds: f64) -> f64 {
    if seconds.is_finite() && seconds >= 0.0 {
        seconds
    } else {
        0.0
    }
}

/// One label set's API request series, kept to count without a lookup.
#[derive(Debug)]
struct HotSeries {
    method: &'static str,
    route: &'static str,
    status: u16,
    count: Counter,
    duration: Histogram,
}

/// The API request families, left out of a scrape when `api_performance` is off.
#[derive(Debug)]
struct ApiCollector {
    requests: Family<RequestLabels, Counter>,
    durations: DurationFamily,
    sampler: Arc<Sampler>,
    /// Set by the first request: until then the families have no series and are left out.
    seen: Arc<std::sync::atomic::AtomicBool>,
}

impl Collector for ApiCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !self.seen.load(std::sync::atomic::Ordering::Relaxed)
            || !self.sampler.groups().contains(&MetricGroup::ApiPerformance)
        {
            return Ok(());
        }
        let m = enc.encode_descriptor(
            "api_requests",
            "HTTP API requests handled, by method, route template and status code",
            None,
            self.requests.metric_type(),
        )?;
        self.requests.encode(m)?;
        let m = enc.encode_descriptor(
            "api_request_duration",
            "Time to handle an HTTP API request, by method and route template",
            Some(&Unit::Seconds),
            self.durations.metric_type(),
        )?;
        self.durations.encode(m)
    }
}

impl Metrics {
    /// A registry without instances or GPUs (host and process metrics only).
    pub fn new(paths: HostPaths) -> Metrics {
        let groups = crate::config::MonitoringConfig::default().metrics;
        let sampler = Arc::new(Sampler::new(paths.clone(), None, Box::new(NoGpu), groups));
        Self::with_sampler(paths, sampler)
    }

    /// Builds the registry. `paths` is where the process collector reads procfs; `sampler`
    /// provides instance, host and GPU statistics and the enabled metric groups.
    pub fn with_sampler(paths: HostPaths, sampler: Arc<Sampler>) -> Metrics {
        Self::assemble(ProcessCollector::new(paths), build::THIS_BUILD, sampler)
    }

    /// [`Metrics::with_sampler`] with the process collector and build labels given (a test
    /// passes fixed ones so the whole exposition is reproducible).
    fn assemble(
        process: ProcessCollector,
        build: build::BuildLabels,
        sampler: Arc<Sampler>,
    ) -> Metrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: DurationFamily =
            Family::new_with_constructor(new_duration_histogram as fn() -> Histogram);

        let mut registry = Registry::default();
        // Unprefixed: process_* are standard names shared by every exporter.
        registry.register_collector(Box::new(process));

        let llamactl = registry.sub_registry_with_prefix("llamactl");
        build::register(llamactl, build);
        llamactl.register_collector(Box::new(ResourceCollector::new(sampler.clone())));
        let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        llamactl.register_collector(Box::new(ApiCollector {
            requests: requests.clone(),
            durations: durations.clone(),
            sampler: sampler.clone(),
            seen: seen.clone(),
        }));
        let proxy = proxy::ProxyMetrics::register(llamactl);
        let access = access::AccessMetrics::register(llamactl);
        let http = http::HttpMetrics::register(llamactl);
        let runtimes = runtime::Runtimes::default();
        llamactl.register_collector(Box::new(runtime::RuntimeCollector(runtimes.clone())));
        let profiling = profiling::ProfilingMetrics::default();
        llamactl.register_collector(Box::new(profiling::ProfilingCollector(profiling.clone())));
        llamactl.register_collector(Box::new(telemetry::TelemetryCollector));
        let log_shipping = log_shipping::LogShippingMetrics::default();
        llamactl.register_collector(Box::new(log_shipping::LogShippingCollector(
            log_shipping.clone(),
        )));

        Metrics {
            registry,
            requests,
            durations,
            sampler,
            seen,
            hot: std::sync::Mutex::new(Vec::new()),
            proxy,
            access,
            http,
            runtimes,
            profiling,
            log_shipping,
        }
    }

    /// The enabled `[monitoring] metrics` groups (re-applied on reload).
    pub fn set_groups(&self, groups: Vec<MetricGroup>) {
        self.sampler.set_groups(groups);
    }

    /// Records one handled API request.
    ///
    /// `route` must be the route template (axum's `MatchedPath`, e.g. `/v1/servers/{name}`), never
    /// the raw path: every distinct label value is a new time series kept forever.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.seen.store(true, std::sync::atomic::Ordering::Relaxed);
        self.durations
            .get_or_create(&DurationLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(sane_seconds(seconds));
    }

    /// [`Metrics::observe_request`] for the model front doors, the hot path: their method and
    /// route are fixed strings, so each label set's series are looked up once and kept, instead
    /// of four label strings made and two families searched for every request. (The series are
    /// the same ones, so a scrape sees one count.)
    pub fn observe_model_request(
        &self,
        method: &'static str,
        route: &'static str,
        status: u16,
        seconds: f64,
    ) {
        let mut hot = self
            .hot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = hot
            .iter()
            .position(|h| h.status == status && h.route == route && h.method == method);
        let series = match at {
            Some(i) => &hot[i],
            None => {
                let count = self
                    .requests
                    .get_or_create(&RequestLabels {
                        method: method.to_owned(),
                        route: route.to_owned(),
                        status,
                    })
                    .clone();
                let duration = self
                    .durations
                    .get_or_create(&DurationLabels {
                        method: method.to_owned(),
                        route: route.to_owned(),
                    })
                    .clone();
                hot.push(HotSeries {
                    method,
                    route,
                    status,
                    count,
                    duration,
                });
                &hot[hot.len() - 1]
            }
        };
        series.count.inc();
        series.duration.observe(sane_seconds(seconds));
        drop(hot);
        self.seen.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Renders every metric, reading the collectors' files now.
    pub fn encode(&self, format: Format) -> anyhow::Result<String> {
        let mut out = String::with_capacity(16 * 1024);
        match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
        }
        .with_context(|| format!("encoding metrics as {format:?}"))?;
        Ok(out)
    }
}

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
