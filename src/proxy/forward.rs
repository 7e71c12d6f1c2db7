//! A backend's answer on its way to the client: passed through as it is read (never
//! buffered), watched on the way for token counts, and the metrics recorded when it ends — or
//! when the client goes away, which drops the upstream connection and so cancels the generation.
//! A backend that goes silent mid-body for `[proxy] backend_idle_timeout` is cut off (counted
//! as 504): otherwise a hung backend would hold its request, and the instance's in-flight
//! count, for as long as the client waits — blocking idle stop and eviction.

use super::tokens::{SseScanner, TextKey, Usage};
use super::upstream;
use crate::instance::handle::InFlight;
use crate::metrics::llm::LlmSeries;
use crate::metrics::proxy::InstanceSeries;
use crate::metrics::tally::Tally;
use axum::body::{Body, Bytes};
use axum::http::{header, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

/// The `status` label of a request whose client went away before the response ended (nginx's
/// convention), rather than the backend's status the client never fully got.
pub const CLIENT_GONE: u16 = 499;

/// What the metrics need once the response is over.
pub struct Watch {
    /// The instance's series (kept on its handle).
    pub series: std::sync::Arc<InstanceSeries>,
    /// Index into `super::ENDPOINTS`.
    pub endpoint: usize,
    pub started: Instant,
    /// Held for its `Drop`: the request stops counting as in flight when the stream ends.
    /// (`None` only in tests, which have no supervisor.)
    pub _in_flight: Option<InFlight>,
    /// The API key the request came with, whose usage the token counts add to.
    pub usage: Option<std::sync::Arc<dyn super::KeyUsage>>,
    /// How long the backend may send nothing once its head has come (`backend_idle_timeout`).
    pub idle_timeout: Duration,
    /// The (instance, model) LLM latency series, and where the endpoint's events put text.
    pub llm: Option<(std::sync::Arc<LlmSeries>, TextKey)>,
    /// The request's trace span, ended here with the status and token usage.
    pub span: crate::telemetry::OpSpan,
}

/// The `status` label of a response cut off because the backend went silent mid-body.
pub const BACKEND_SILENT: u16 = 504;

enum Scan {
    None,
    /// A JSON answer's frames, kept (by reference count, not copied) to read `usage` at the end.
    Json(Vec<Bytes>, usize),
    Sse(Box<Stream>),
}

/// What a stream's events tell: token counts, and when text came.
struct Stream {
    scanner: SseScanner,
    /// Seconds from the request to the first event with text.
    first_text: Option<f64>,
    /// When the last read with text came.
    last_text: Option<Instant>,
    /// Inter-token latencies, merged into the histogram once at the end.
    itl: Tally,
}

/// Upper bound of a JSON body kept to read its `usage` (the body itself streams regardless).
const JSON_KEEP: usize = 8 << 20;

/// What is watched of a backend's answer on its way to the client, whichever way it goes (as
/// hyper body frames through `Tap`, or passed on as it came by `http::lane`): the time to first
/// byte and to first text, token counts, and the metrics recorded once at the end.
pub struct Watcher {
    watch: Watch,
    status: u16,
    first_byte: Option<f64>,
    scan: Scan,
    finished: bool,
    /// When the backend last sent something.
    last: Instant,
}

/// The backend's response body on its way to the client: passes frames through as they come
/// (one per read of the backend's socket, see `upstream`), and the watcher sees each.
struct Tap {
    body: upstream::Body,
    w: Watcher,
    /// Armed for `last + idle` and, when it fires early (something came since), re-armed: no
    /// timer work per frame.
    silence: Pin<Box<tokio::time::Sleep>>,
}

impl Watcher {
    /// Watches an answer whose head was `head`, for `watch`.
    pub fn new(head: &upstream::Head, watch: Watch) -> Self {
        let ctype = head
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes())
            .unwrap_or(b"");
        let scan = if ctype.starts_with(b"text/event-stream") {
            let key = watch.llm.as_ref().map(|(_, k)| *k).unwrap_or_default();
            Scan::Sse(Box::new(Stream {
                scanner: SseScanner::new(key),
                first_text: None,
                last_text: None,
                itl: Tally::new(crate::metrics::llm::ITL_BUCKETS),
            }))
        } else if ctype.starts_with(b"application/json") {
            Scan::Json(Vec::new(), 0)
        } else {
            Scan::None
        };
        Self {
            watch,
            status: head.status.as_u16(),
            first_byte: None,
            scan,
            finished: false,
            last: Instant::now(),
        }
    }

    /// The backend sent something just now.
    pub fn arrived(&mut self) {
        self.last = Instant::now();
    }

    /// When the backend will have been silent for `backend_idle_timeout`, unless it sends more.
    pub fn silent_at(&self) -> Instant {
        self.last + self.watch.idle_timeout
    }

    /// The backend's status, which the request is counted under if it ends normally.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Body data as the client receives it (after `arrived`).
    pub fn seen(&mut self, data: &Bytes) {
        if self.first_byte.is_none() {
            self.first_byte = Some((self.last - self.watch.started).as_secs_f64());
        }
        match &mut self.scan {
            Scan::Sse(s) => {
                let texts = s.scanner.feed(data);
                if texts > 0 {
                    // Events read together arrived together: they share the interval since the
                    // previous read with text (the first read's extra events, none).
                    match s.last_text {
                        None => {
                            s.first_text = Some((self.last - self.watch.started).as_secs_f64());
                            s.itl.observe_n(0.0, u64::from(texts - 1));
                        }
                        Some(prev) => {
                            let gap = (self.last - prev).as_secs_f64();
                            s.itl.observe_n(gap / f64::from(texts), u64::from(texts));
                        }
                    }
                    s.last_text = Some(self.last);
                }
            }
            Scan::Json(kept, len) if *len + data.len() <= JSON_KEEP => {
                *len += data.len();
                kept.push(data.clone());
            }
            Scan::Json(..) => self.scan = Scan::None,
            Scan::None => {}
        }
    }

    /// Records the request: with the backend's status when the body ended (or the backend
    /// broke off), with `CLIENT_GONE` when the client left before the end.
    pub fn finish(&mut self, status: u16) {
        if self.finished {
            return;
        }
        self.finished = true;
        let total = self.watch.started.elapsed().as_secs_f64();
        let w = &self.watch;
        w.series.observe(w.endpoint, status, total, self.first_byte);
        let mut usage = Usage::default();
        // When a stream's text came: the time over which its completion tokens were generated.
        let mut generation = None;
        match std::mem::replace(&mut self.scan, Scan::None) {
            Scan::Json(kept, _) if kept.len() == 1 => usage.absorb_json(&kept[0]),
            Scan::Json(kept, _) => usage.absorb_json(&kept.concat()),
            Scan::Sse(s) => {
                if let (Some((llm, _)), Some(t)) = (&w.llm, s.first_text) {
                    llm.ttft.observe(t);
                    llm.itl.add(&s.itl);
                }
                usage = s.scanner.usage;
                generation = s
                    .first_text
                    .zip(s.last_text)
                    .map(|(first, last)| (last - self.watch.started).as_secs_f64() - first);
            }
            Scan::None => {}
        }
        if let Some((llm, _)) = &w.llm {
            if usage.prompt > 0 {
                llm.prompt_tokens.observe(usage.prompt as f64);
            }
            if usage.completion > 0 {
                llm.completion_tokens.observe(usage.completion as f64);
            }
        }
        if w.span.is_recording() {
            use crate::telemetry::Attr;
            w.span
                .set(Attr::new("http.response.status_code", i64::from(status)));
            if usage.prompt > 0 || usage.completion > 0 {
                w.span
                    .set(Attr::new("gen_ai.usage.input_tokens", usage.prompt as i64));
                w.span.set(Attr::new(
                    "gen_ai.usage.output_tokens",
                    usage.completion as i64,
                ));
            }
            if status == CLIENT_GONE {
                w.span
                    .fail("the client went away before the response ended");
            } else if status >= 500 {
                w.span.fail(format!("HTTP {status}"));
            }
        }
        if usage.prompt > 0 || usage.completion > 0 {
            // Without llama.cpp's own figure: the tokens after the first, over the time from
            // the first text to the last (a JSON answer, which arrives at once, has none).
            let tps = usage.per_second.or_else(|| {
                generation
                    .filter(|g| *g > 0.0 && usage.completion > 1)
                    .map(|g| (usage.completion - 1) as f64 / g)
            });
            w.series.tokens(usage.prompt, usage.completion, tps);
            if let Some(k) = &w.usage {
                k.tokens(usage.prompt, usage.completion);
            }
        }
    }
}

impl Watcher {
    /// The backend stayed silent for `backend_idle_timeout`: the request is counted as
    /// `BACKEND_SILENT`, and this is the error that cuts the client's response short.
    pub fn silenced(&mut self) -> io::Error {
        self.finish(BACKEND_SILENT);
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the backend sent nothing for {} s ([proxy] backend_idle_timeout)",
                self.watch.idle_timeout.as_secs_f64()
            ),
        )
    }
}

impl Tap {
    /// Nothing from the backend: `Pending` while it has been silent for less than the idle
    /// timeout, else the response ends with an error (the client sees it cut short) and is
    /// counted as `BACKEND_SILENT`.
    fn poll_silence(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.w.finished {
            return Poll::Ready(None);
        }
        loop {
            ready!(self.silence.as_mut().poll(cx));
            let due = self.w.silent_at();
            if Instant::now() >= due {
                break;
            }
            self.silence.as_mut().reset(due.into());
        }
        Poll::Ready(Some(Err(self.w.silenced())))
    }
}

impl HttpBody for Tap {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let next = match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(next) => {
                this.w.arrived();
                next
            }
            Poll::Pending => return this.poll_silence(cx),
        };
        match &next {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref().filter(|d| !d.is_empty()) {
                    this.w.seen(d);
                }
                if this.body.is_end_stream() {
                    this.w.finish(this.w.status);
                }
            }
            _ => this.w.finish(this.w.status),
        }
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.w.finished || self.body.is_end_stream()
    }

    /// The backend's exact length, when it sent one, lets the client see a Content-Length
    /// instead of chunked framing.
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // A body with nothing left (HEAD, 204, a complete one) was delivered in full; one
        // dropped before (the client left mid-stream) is counted by the watcher's own drop.
        if self.body.is_end_stream() {
            self.w.finish(self.w.status);
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // A client that left mid-stream: counted as such (nginx's 499), with the tokens seen;
        // dropping the body with it closes the upstream connection, which makes llama-server
        // stop generating.
        self.finish(CLIENT_GONE);
    }
}

/// Streams the backend's response to the client through the tap.
pub fn respond(head: upstream::Head, body: upstream::Body, watch: Watch) -> Response<Body> {
    let w = Watcher::new(&head, watch);
    let silence = Box::pin(tokio::time::sleep_until(w.silent_at().into()));
    let tap = Tap { body, w, silence };
    let mut out = Response::new(Body::new(tap));
    *out.status_mut() = head.status;
    *out.headers_mut() = head.headers;
    out
}

#[cfg(test)]
mod tests;
