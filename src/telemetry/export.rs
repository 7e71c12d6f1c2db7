//! The trace export: the OpenTelemetry SDK's tracer provider (parent-based ratio sampler,
//! resource `service.name=llamactl`, `host.name`, `service.version`) and its OTLP exporter
//! (`http/protobuf` or `grpc`), fed through a bounded queue of our own.
//!
//! Why our own span processor rather than the SDK's batch processor: it must count what it
//! loses (`llamactl_telemetry_spans_dropped_total`), and the SDK's keeps that count to itself.
//! Ending a span only tries to put it in the queue: a full queue drops the span, so a slow or
//! dead collector never delays a request. One thread drains the queue in batches and exports
//! them with a timeout; a failing collector is logged once (and again once it recovers), the
//! lost spans counted.

use super::{SPANS_DROPPED, SPANS_EXPORTED};
use crate::config::{OtlpProtocol, TelemetryConfig};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, Span, SpanData, SpanExporter as _, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::Duration;
use tracing::{info, warn};

/// Spans waiting for export; more are dropped.
pub const QUEUE: usize = 2048;
/// Spans per export request.
const MAX_BATCH: usize = 512;
/// How long a span waits for a batch to fill before it is sent anyway.
const SCHEDULE_DELAY: Duration = Duration::from_secs(1);
/// One export request, retries included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

enum Msg {
    Span(Box<SpanData>),
    Resource(Resource),
    Flush(mpsc::Sender<()>),
    Shutdown(mpsc::Sender<()>),
}

#[derive(Debug)]
struct QueueProcessor {
    tx: SyncSender<Msg>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Msg::Span(Box::new(span)))
        {
            SPANS_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (ack, done) = mpsc::channel();
        self.tx
            .send(Msg::Flush(ack))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        done.recv_timeout(EXPORT_TIMEOUT)
            .map_err(|_| OTelSdkError::Timeout(EXPORT_TIMEOUT))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let (ack, done) = mpsc::channel();
        if self.tx.send(Msg::Shutdown(ack)).is_err() {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let r = done
            .recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout));
        if r.is_ok() {
            if let Some(w) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = w.join();
            }
        }
        r
    }

    fn set_resource(&mut self, resource: &Resource) {
        let _ = self.tx.try_send(Msg::Resource(resource.clone()));
    }
}

/// Holds the provider; `shutdown` sends what is queued (bounded by a timeout) at daemon stop.
pub struct Installed {
    provider: SdkTracerProvider,
}

impl Installed {
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            warn!(error = %e, "the trace export did not finish sending its queue");
        }
    }
}

/// Sets up the export and the tracer from a validated `[telemetry]` (enabled). Fails when the
/// exporter cannot be built (an endpoint the exporter refuses).
pub fn install(cfg: &TelemetryConfig) -> Result<Installed, String> {
    let (url, note) = cfg.otlp.effective_endpoint();
    if let Some(note) = note {
        warn!("{note}");
    }
    let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
    let (built_tx, built_rx) = mpsc::channel::<Result<(), String>>();
    let otlp = cfg.otlp.clone();
    let target = url.clone();
    let worker = std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = built_tx.send(Err(format!("a runtime for the exporter: {e}")));
                    return;
                }
            };
            let exporter = {
                let _in_rt = rt.enter();
                build_exporter(&otlp, &target)
            };
            match exporter {
                Ok(exporter) => {
                    let _ = built_tx.send(Ok(()));
                    drain(&rt, exporter, rx, &target);
                }
                Err(e) => {
                    let _ = built_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| format!("starting the export thread: {e}"))?;
    built_rx
        .recv()
        .map_err(|_| "the export thread ended at start".to_string())??;
    let processor = QueueProcessor {
        tx,
        worker: Mutex::new(Some(worker)),
    };
    let resource = Resource::builder()
        .with_service_name("llamactl")
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("host.name", host_name()),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sampling_rate,
        ))))
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    super::set_tracer(opentelemetry::global::tracer_provider().tracer("llamactl"));
    info!(
        endpoint = %url,
        protocol = cfg.otlp.protocol.as_str(),
        sampling_rate = cfg.sampling_rate,
        "exporting traces"
    );
    Ok(Installed { provider })
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn build_exporter(
    otlp: &crate::config::OtlpConfig,
    url: &str,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let headers = otlp
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_string()));
    let built = match otlp.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(headers.collect())
            .build(),
        OtlpProtocol::Grpc => {
            let mut map = axum::http::HeaderMap::new();
            for (k, v) in headers {
                let name = axum::http::HeaderName::try_from(k.as_str())
                    .map_err(|e| format!("[telemetry.otlp.headers] {k:?}: {e}"))?;
                let value = axum::http::HeaderValue::try_from(v.as_str()).map_err(|_| {
                    format!("[telemetry.otlp.headers] {k:?}: not a valid header value")
                })?;
                map.insert(name, value);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(url)
                .with_timeout(EXPORT_TIMEOUT)
                .with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map),
                )
                .build()
        }
    };
    // The error names the endpoint, never the headers (they hold secrets).
    built.map_err(|e| format!("the OTLP exporter for {url}: {e}"))
}

/// The export thread: batches, exports, counts.
fn drain(
    rt: &tokio::runtime::Runtime,
    mut exporter: opentelemetry_otlp::SpanExporter,
    rx: mpsc::Receiver<Msg>,
    url: &str,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_BATCH);
    let mut failing = false;
    let mut send = |batch: &mut Vec<SpanData>, exporter: &opentelemetry_otlp::SpanExporter| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let spans = std::mem::replace(batch, Vec::with_capacity(MAX_BATCH));
        // The timer is made inside the runtime (a `Sleep` needs its reactor).
        let r = rt
            .block_on(async { tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await });
        match r {
            Ok(Ok(())) => {
                SPANS_EXPORTED.fetch_add(n, Ordering::Relaxed);
                if std::mem::take(&mut failing) {
                    info!(endpoint = %url, "trace export works again");
                }
            }
            Ok(Err(e)) => {
                SPANS_DROPPED.fetch_add(n, Ordering::Relaxed);
                if !std::mem::replace(&mut failing, true) {
                    warn!(endpoint = %url, error = %e, "trace export failed; spans are dropped and counted (llamactl_telemetry_spans_dropped_total) until it works again");
                }
            }
            Err(_) => {
                SPANS_DROPPED.fetch_add(n, Ordering::Relaxed);
                if !std::mem::replace(&mut failing, true) {
                    warn!(endpoint = %url, timeout_s = EXPORT_TIMEOUT.as_secs(), "trace export timed out; spans are dropped and counted (llamactl_telemetry_spans_dropped_total) until it works again");
                }
            }
        }
    };
    loop {
        match rx.recv_timeout(SCHEDULE_DELAY) {
            Ok(Msg::Span(s)) => {
                batch.push(*s);
                if batch.len() >= MAX_BATCH {
                    send(&mut batch, &exporter);
                }
            }
            Ok(Msg::Resource(r)) => exporter.set_resource(&r),
            Err(RecvTimeoutError::Timeout) => send(&mut batch, &exporter),
            Ok(Msg::Flush(ack)) => {
                send(&mut batch, &exporter);
                let _ = ack.send(());
            }
            Ok(Msg::Shutdown(ack)) => {
                send(&mut batch, &exporter);
                let _ = exporter.shutdown();
                let _ = ack.send(());
                return;
            }
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch, &exporter);
                return;
            }
        }
    }
}
