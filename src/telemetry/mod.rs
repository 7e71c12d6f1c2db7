//! OpenTelemetry traces (`[telemetry]`): the spans the rest of the daemon opens — an API
//! request's, an instance operation's and its steps', a proxied model request's — and the W3C
//! `traceparent` they take from clients and pass to backends. The export (OTLP over HTTP or
//! gRPC, a bounded queue, drops counted) is `export`.
//!
//! Off by default, and then nothing here costs more than one atomic load: no tracer exists, so
//! every `OpSpan` is empty and no context is extracted or injected. Spans are made with the
//! OpenTelemetry API directly rather than through `tracing`: the journal's log lines and the
//! trace's spans are different records, and a log line must not open a span.

#[cfg(feature = "otlp")]
pub mod export;

use opentelemetry::global::BoxedTracer;
#[cfg(feature = "otlp")]
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    FutureExt as _, Span as _, SpanKind, Status, TraceContextExt, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub use opentelemetry::KeyValue as Attr;

/// The tracer, once `export::install` has set up the provider (never when telemetry is off).
static TRACER: OnceLock<BoxedTracer> = OnceLock::new();

/// Spans lost: the export queue was full, or the collector refused or did not answer a batch.
pub static SPANS_DROPPED: AtomicU64 = AtomicU64::new(0);
/// Spans the collector accepted.
pub static SPANS_EXPORTED: AtomicU64 = AtomicU64::new(0);

/// Whether spans are being made (telemetry enabled and its exporter installed).
#[inline]
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

#[cfg(feature = "otlp")]
fn set_tracer(t: BoxedTracer) {
    let _ = TRACER.set(t);
}

/// The W3C trace-context propagator (`traceparent`, `tracestate`). Without the `otlp` feature
/// no tracer exists and nothing is propagated.
#[cfg(feature = "otlp")]
fn propagator() -> opentelemetry_sdk::propagation::TraceContextPropagator {
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
}

/// A span in progress; empty when telemetry is off or the trace is not sampled. Ended (with
/// the status set so far) when dropped, so an operation cut short still reports its span.
#[derive(Default)]
pub struct OpSpan {
    cx: Option<Context>,
}

impl OpSpan {
    /// A span named `name`, a child of the current context (the caller's span, or a span of
    /// its own when there is none).
    pub fn start(name: impl Into<Cow<'static, str>>, kind: SpanKind, attrs: Vec<KeyValue>) -> Self {
        Self::start_in(&Context::current(), name, kind, attrs)
    }

    /// The same, under `parent`.
    pub fn start_in(
        parent: &Context,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attrs: Vec<KeyValue>,
    ) -> Self {
        let Some(tracer) = TRACER.get() else {
            return Self::default();
        };
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attrs)
            .start_with_context(tracer, parent);
        if !span.span_context().is_sampled() {
            return Self::default();
        }
        Self {
            cx: Some(parent.with_span(span)),
        }
    }

    /// A server span for a request, whose parent is the client's `traceparent` when it sent
    /// one (sampled or not: the sampler follows the parent's decision).
    pub fn server(
        name: impl Into<Cow<'static, str>>,
        headers: &axum::http::HeaderMap,
        attrs: Vec<KeyValue>,
    ) -> Self {
        if !enabled() {
            return Self::default();
        }
        #[cfg(feature = "otlp")]
        let parent = propagator().extract(&HeaderLookup(headers));
        #[cfg(not(feature = "otlp"))]
        let parent = {
            let _ = headers;
            Context::new()
        };
        Self::start_in(&parent, name, SpanKind::Server, attrs)
    }

    /// Whether this span is recorded (telemetry on and the trace sampled).
    pub fn is_recording(&self) -> bool {
        self.cx.is_some()
    }

    /// The context to run the span's work in, so that its steps become its children.
    pub fn context(&self) -> Option<&Context> {
        self.cx.as_ref()
    }

    pub fn set(&self, attr: KeyValue) {
        if let Some(cx) = &self.cx {
            cx.span().set_attribute(attr);
        }
    }

    /// Marks the span failed, with the error's message.
    pub fn fail(&self, message: impl Into<Cow<'static, str>>) {
        if let Some(cx) = &self.cx {
            let message = message.into();
            cx.span()
                .set_attribute(KeyValue::new("error.type", "llamactl.error"));
            cx.span().set_status(Status::error(message));
        }
    }

    /// Ends the span with `result` as its status.
    pub fn finish<T, E: std::fmt::Display>(self, result: &Result<T, E>) {
        if let Err(e) = result {
            self.fail(e.to_string());
        }
    }

    /// The `traceparent` header value that makes a callee's spans children of this one.
    pub fn traceparent(&self) -> Option<String> {
        let cx = self.cx.as_ref()?;
        #[cfg(feature = "otlp")]
        {
            let mut out = TraceParent(None);
            propagator().inject_context(cx, &mut out);
            out.0
        }
        #[cfg(not(feature = "otlp"))]
        {
            let _ = cx;
            None
        }
    }

    /// Runs `work` with this span as the current context (its spans become children; spawned
    /// work that should stay in the trace takes `Context::current()` along, see `in_current`).
    pub async fn run<F: Future>(&self, work: F) -> F::Output {
        match &self.cx {
            Some(cx) => work.with_context(cx.clone()).await,
            None => work.await,
        }
    }
}

impl Drop for OpSpan {
    fn drop(&mut self) {
        if let Some(cx) = self.cx.take() {
            cx.span().end();
        }
    }
}

/// `work`, to be spawned, carrying the current trace context with it (nothing when off).
pub fn in_current<F: Future + Send + 'static>(
    work: F,
) -> std::pin::Pin<Box<dyn Future<Output = F::Output> + Send>>
where
    F::Output: Send,
{
    if enabled() {
        let cx = Context::current();
        if cx.has_active_span() {
            return Box::pin(work.with_context(cx));
        }
    }
    Box::pin(work)
}

#[cfg(feature = "otlp")]
struct HeaderLookup<'a>(&'a axum::http::HeaderMap);

#[cfg(feature = "otlp")]
impl Extractor for HeaderLookup<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

#[cfg(feature = "otlp")]
struct TraceParent(Option<String>);

#[cfg(feature = "otlp")]
impl Injector for TraceParent {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// Counts for `/metrics`: `(exported, dropped)`.
pub fn counts() -> (u64, u64) {
    (
        SPANS_EXPORTED.load(Ordering::Relaxed),
        SPANS_DROPPED.load(Ordering::Relaxed),
    )
}
