//! Sending a request to a backend and streaming its answer back: a keep-alive pool per backend
//! with TCP_NODELAY, hop-by-hop headers dropped, the body passed through frame by frame (never
//! buffered), watched on the way for token counts, and metrics recorded when it ends — or when
//! the client goes away, which drops the upstream connection and so cancels the generation.

use super::tokens::{SseScanner, Usage};
use crate::instance::demand::InFlight;
use crate::metrics::proxy::ProxyMetrics;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, Request, Response};
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, Instant};

pub type Upstream = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> Upstream {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(10)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .build(c)
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

pub fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            to.append(k.clone(), v.clone());
        }
    }
}

/// What the metrics need once the response is over.
pub struct Watch {
    pub metrics: ProxyMetrics,
    pub instance: String,
    pub endpoint: &'static str,
    pub started: Instant,
    /// Held for its `Drop`: the request stops counting as in flight when the stream ends.
    pub _in_flight: InFlight,
}

enum Scan {
    None,
    Json(Vec<u8>),
    Sse(SseScanner),
}

/// Upper bound of a JSON body kept to read its `usage` (the body itself streams regardless).
const JSON_KEEP: usize = 8 << 20;

struct Tap {
    body: BodyStream<Incoming>,
    watch: Watch,
    status: u16,
    first_byte: Option<f64>,
    scan: Scan,
    finished: bool,
}

impl Tap {
    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let total = self.watch.started.elapsed().as_secs_f64();
        let w = &self.watch;
        w.metrics
            .observe(&w.instance, w.endpoint, self.status, total, self.first_byte);
        let usage = match std::mem::replace(&mut self.scan, Scan::None) {
            Scan::Json(buf) => {
                let mut u = Usage::default();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&buf) {
                    u.absorb(&v);
                }
                u
            }
            Scan::Sse(s) => s.usage,
            Scan::None => Usage::default(),
        };
        if usage.prompt > 0 || usage.completion > 0 {
            let generation = total - self.first_byte.unwrap_or(0.0);
            let tps = usage.per_second.or_else(|| {
                (usage.completion > 0 && generation > 0.0)
                    .then(|| usage.completion as f64 / generation)
            });
            w.metrics
                .tokens(&w.instance, usage.prompt, usage.completion, tps);
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // A client that left mid-stream: record what was seen; dropping `body` closes the
        // upstream connection, which makes llama-server stop generating.
        self.finish();
    }
}

/// Streams the backend's response to the client through the tap.
pub fn respond(res: Response<Incoming>, watch: Watch) -> Response<Body> {
    let (parts, incoming) = res.into_parts();
    let ctype = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let scan = if ctype.starts_with("text/event-stream") {
        Scan::Sse(SseScanner::default())
    } else if ctype.starts_with("application/json") {
        Scan::Json(Vec::new())
    } else {
        Scan::None
    };
    let tap = Tap {
        body: BodyStream::new(incoming),
        watch,
        status: parts.status.as_u16(),
        first_byte: None,
        scan,
        finished: false,
    };
    let stream = futures_util::stream::unfold(tap, |mut tap| async move {
        loop {
            match tap.body.next().await {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if tap.first_byte.is_none() && !data.is_empty() {
                        tap.first_byte = Some(tap.watch.started.elapsed().as_secs_f64());
                    }
                    match &mut tap.scan {
                        Scan::Sse(s) => s.feed(&data),
                        Scan::Json(buf) if buf.len() + data.len() <= JSON_KEEP => {
                            buf.extend_from_slice(&data)
                        }
                        Scan::Json(_) => tap.scan = Scan::None,
                        Scan::None => {}
                    }
                    return Some((Ok::<Bytes, std::io::Error>(data), tap));
                }
                Some(Err(e)) => {
                    tap.finish();
                    return Some((Err(std::io::Error::other(e)), tap));
                }
                None => {
                    tap.finish();
                    return None;
                }
            }
        }
    });
    let mut out = Response::builder().status(parts.status);
    if let Some(h) = out.headers_mut() {
        copy_headers(&parts.headers, h);
    }
    out.body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Builds the upstream request for `http://addr{path_and_query}`.
pub fn upstream_request(
    method: &axum::http::Method,
    headers: &HeaderMap,
    addr: &str,
    path_and_query: &str,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, axum::http::Error> {
    let mut req = Request::builder()
        .method(method.clone())
        .uri(format!("http://{addr}{path_and_query}"));
    if let Some(h) = req.headers_mut() {
        copy_headers(headers, h);
        h.insert(
            HeaderName::from_static("x-forwarded-proto"),
            header::HeaderValue::from_static("http"),
        );
    }
    req.body(Full::new(body))
}

/// Reads a whole (already limited) request body.
pub async fn read_body(body: Body, max: usize) -> Result<Bytes, String> {
    http_body_util::Limited::new(body, max)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string())
}
