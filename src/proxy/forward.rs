//! Sending a request to a backend and streaming its answer back: hop-by-hop headers dropped, the body passed through frame by frame (never
//! buffered), watched on the way for token counts, and metrics recorded when it ends — or when
//! the client goes away, which drops the upstream connection and so cancels the generation.

use super::pool::Lease;
use super::tokens::{SseScanner, Usage};
use crate::instance::demand::InFlight;
use crate::metrics::proxy::ProxyMetrics;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, Request, Response};
use bytes::BytesMut;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

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
    /// (`None` only in tests, which have no supervisor.)
    pub _in_flight: Option<InFlight>,
    /// The upstream connection, back to the pool once the body is done with. (The body is
    /// `Tap`'s first field, so it is dropped first.)
    pub _lease: Lease,
}

enum Scan {
    None,
    /// A JSON answer's frames, kept (by reference count, not copied) to read `usage` at the end.
    Json(Vec<Bytes>, usize),
    Sse(SseScanner),
}

/// Upper bound of a JSON body kept to read its `usage` (the body itself streams regardless).
const JSON_KEEP: usize = 8 << 20;

/// Frames that have already arrived are written to the client together, up to this much.
const COALESCE_MAX: usize = 64 << 10;

/// hyper's client connection task needs two turns of the scheduler to pass on the next frame it
/// has already read (measured: with one, no SSE burst was ever coalesced).
const HOLD_TURNS: u8 = 2;

/// The backend's response body on its way to the client: passes frames through as they come,
/// notes the time to first byte, scans for token counts, and records the metrics at the end.
///
/// Writes are coalesced without waiting for the backend: the response head goes out with
/// whatever body the upstream connection had already read (`prefill`), and afterwards, a frame
/// (other than the very first) is held for up to `HOLD_TURNS` turns of the scheduler so that the
/// upstream connection can hand over whatever else it has already read. An SSE burst then
/// leaves in one write instead of one write per event; a token that comes alone goes out alone.
struct Tap {
    body: Incoming,
    watch: Watch,
    status: u16,
    first_byte: Option<f64>,
    scan: Scan,
    finished: bool,
    held: Option<Held>,
    /// Scheduler turns given up since the last frame arrived while holding.
    turns: u8,
    /// `held` came from `prefill` and goes out on the first poll, with the response head.
    prefilled: bool,
    /// What the upstream said after the held data: its end, trailers, or an error.
    after_held: Option<Option<Result<Frame<Bytes>, hyper::Error>>>,
}

enum Held {
    One(Bytes),
    Many(BytesMut),
}

impl Held {
    fn len(&self) -> usize {
        match self {
            Held::One(b) => b.len(),
            Held::Many(b) => b.len(),
        }
    }

    fn push(self, data: Bytes) -> Self {
        let mut buf = match self {
            Held::One(b) => {
                let mut m = BytesMut::with_capacity(b.len() + data.len());
                m.extend_from_slice(&b);
                m
            }
            Held::Many(m) => m,
        };
        buf.extend_from_slice(&data);
        Held::Many(buf)
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Held::One(b) => b,
            Held::Many(m) => m.freeze(),
        }
    }
}

impl Tap {
    fn seen(&mut self, data: &Bytes) {
        if self.first_byte.is_none() {
            self.first_byte = Some(self.watch.started.elapsed().as_secs_f64());
        }
        match &mut self.scan {
            Scan::Sse(s) => s.feed(data),
            Scan::Json(kept, len) if *len + data.len() <= JSON_KEEP => {
                *len += data.len();
                kept.push(data.clone());
            }
            Scan::Json(..) => self.scan = Scan::None,
            Scan::None => {}
        }
    }

    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let total = self.watch.started.elapsed().as_secs_f64();
        let w = &self.watch;
        w.metrics
            .observe(&w.instance, w.endpoint, self.status, total, self.first_byte);
        let mut usage = Usage::default();
        match std::mem::replace(&mut self.scan, Scan::None) {
            Scan::Json(kept, _) if kept.len() == 1 => usage.absorb_json(&kept[0]),
            Scan::Json(kept, _) => usage.absorb_json(&kept.concat()),
            Scan::Sse(s) => usage = s.usage,
            Scan::None => {}
        }
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

    /// What to hand the client after the held data went out.
    fn after(
        &mut self,
        next: Option<Result<Frame<Bytes>, hyper::Error>>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if !matches!(next, Some(Ok(_))) {
            self.finish();
        }
        Poll::Ready(next)
    }
}

impl Tap {
    /// Before the response head goes to the client: takes whatever body the upstream connection
    /// has already read (for a short answer, all of it), giving it `HOLD_TURNS` scheduler turns
    /// to pass each frame on, so that the head and that data leave in one write. Never waits
    /// for the backend's socket.
    fn prefill(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) if d.is_empty() => {}
                    Ok(d) => {
                        self.seen(&d);
                        let held = match self.held.take() {
                            None => Held::One(d),
                            Some(h) => h.push(d),
                        };
                        let full = held.len() >= COALESCE_MAX;
                        self.held = Some(held);
                        self.turns = 0;
                        if full || self.body.is_end_stream() {
                            break;
                        }
                    }
                    Err(trailers) => {
                        self.after_held = Some(Some(Ok(trailers)));
                        break;
                    }
                },
                Poll::Ready(end_or_err) => {
                    self.after_held = Some(end_or_err);
                    break;
                }
                Poll::Pending if self.turns < HOLD_TURNS => {
                    self.turns += 1;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Pending => break,
            }
        }
        self.turns = 0;
        self.prefilled = true;
        Poll::Ready(())
    }
}

impl HttpBody for Tap {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if std::mem::take(&mut this.prefilled) {
            if let Some(h) = this.held.take() {
                return Poll::Ready(Some(Ok(Frame::data(h.into_bytes()))));
            }
        }
        if this.held.is_none() {
            if let Some(next) = this.after_held.take() {
                return this.after(next);
            }
        }
        loop {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let data = match frame.into_data() {
                        Ok(d) if d.is_empty() => continue,
                        Ok(d) => d,
                        Err(frame) => {
                            // Trailers: after anything held.
                            let next = Some(Ok(frame));
                            return match this.held.take() {
                                Some(h) => {
                                    this.after_held = Some(next);
                                    Poll::Ready(Some(Ok(Frame::data(h.into_bytes()))))
                                }
                                None => this.after(next),
                            };
                        }
                    };
                    let first = this.first_byte.is_none();
                    this.seen(&data);
                    let held = match this.held.take() {
                        None => Held::One(data),
                        Some(h) => h.push(data),
                    };
                    if first || held.len() >= COALESCE_MAX || this.body.is_end_stream() {
                        return Poll::Ready(Some(Ok(Frame::data(held.into_bytes()))));
                    }
                    this.held = Some(held);
                    this.turns = 0;
                }
                Poll::Ready(end_or_err) => {
                    return match this.held.take() {
                        Some(h) => {
                            this.after_held = Some(end_or_err);
                            Poll::Ready(Some(Ok(Frame::data(h.into_bytes()))))
                        }
                        None => this.after(end_or_err),
                    };
                }
                Poll::Pending => {
                    let Some(h) = this.held.take() else {
                        return Poll::Pending;
                    };
                    if this.turns < HOLD_TURNS {
                        // A turn for the upstream connection to pass on what it has read.
                        this.turns += 1;
                        this.held = Some(h);
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    this.turns = 0;
                    return Poll::Ready(Some(Ok(Frame::data(h.into_bytes()))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.after_held.is_none() && self.body.is_end_stream()
    }

    /// The backend's exact length, when it sent one, lets the client see a Content-Length
    /// instead of chunked framing.
    fn size_hint(&self) -> SizeHint {
        let inner = self.body.size_hint();
        let held = self.held.as_ref().map_or(0, |h| h.len() as u64);
        let mut h = SizeHint::new();
        h.set_lower(inner.lower() + held);
        if let Some(u) = inner.upper() {
            h.set_upper(u + held);
        }
        h
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
pub async fn respond(res: Response<Incoming>, watch: Watch) -> Response<Body> {
    let (parts, incoming) = res.into_parts();
    let ctype = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or(b"");
    let scan = if ctype.starts_with(b"text/event-stream") {
        Scan::Sse(SseScanner::default())
    } else if ctype.starts_with(b"application/json") {
        Scan::Json(Vec::new(), 0)
    } else {
        Scan::None
    };
    let mut tap = Tap {
        body: incoming,
        watch,
        status: parts.status.as_u16(),
        first_byte: None,
        scan,
        finished: false,
        held: None,
        turns: 0,
        prefilled: false,
        after_held: None,
    };
    std::future::poll_fn(|cx| tap.prefill(cx)).await;
    let mut out = Response::builder().status(parts.status);
    if let Some(h) = out.headers_mut() {
        copy_headers(&parts.headers, h);
    }
    out.body(Body::new(tap))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Builds the upstream request for `path_and_query` on the backend at `addr` (`host:port`).
pub fn upstream_request(
    method: &axum::http::Method,
    headers: &HeaderMap,
    addr: &str,
    path_and_query: &str,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, axum::http::Error> {
    let mut req = Request::builder()
        .method(method.clone())
        .uri(path_and_query);
    if let Some(h) = req.headers_mut() {
        copy_headers(headers, h);
        h.insert(header::HOST, header::HeaderValue::from_str(addr)?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::proxy::TokenLabels;
    use axum::http::Method;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    const EVENTS: [&str; 4] = [
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\" there\"}}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n",
    ];

    fn chunk(event: &str) -> String {
        format!("{:x}\r\n{event}\r\n", event.len())
    }

    const HEAD: &str =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

    async fn read_request(s: &mut TcpStream) {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.expect("read request");
            assert!(n > 0, "client closed");
            seen.extend_from_slice(&buf[..n]);
        }
    }

    /// Sends one request through `respond` to a backend on `addr`; returns the tapped body and
    /// the metrics it reports to.
    async fn proxied(addr: std::net::SocketAddr) -> (Body, ProxyMetrics) {
        let metrics = ProxyMetrics::register(&mut prometheus_client::registry::Registry::default());
        let req = upstream_request(
            &Method::POST,
            &HeaderMap::new(),
            &addr.to_string(),
            "/v1/chat/completions",
            Bytes::from_static(b"{}"),
        )
        .expect("request");
        let (res, lease) = super::super::pool::send(&addr.to_string(), req)
            .await
            .expect("backend answers");
        let watch = Watch {
            metrics: metrics.clone(),
            instance: "t".into(),
            endpoint: "chat_completions",
            started: Instant::now(),
            _in_flight: None,
            _lease: lease,
        };
        (respond(res, watch).await.into_body(), metrics)
    }

    fn tokens(m: &ProxyMetrics, kind: &str) -> u64 {
        m.tokens
            .get_or_create(&TokenLabels {
                instance_name: "t".into(),
                r#type: kind.into(),
            })
            .get()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_sse_burst_read_with_the_head_leaves_in_one_write() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            read_request(&mut s).await;
            // Everything in one write, as a backend that generated it at once would.
            let all: String = EVENTS.iter().map(|e| chunk(e)).collect();
            s.write_all(format!("{HEAD}{all}0\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let _ = s.read(&mut [0u8; 16]).await;
        });
        let (mut body, metrics) = proxied(addr).await;
        let mut frames = Vec::new();
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.expect("frame").into_data() {
                frames.push(d);
            }
        }
        assert_eq!(frames.concat(), EVENTS.concat().as_bytes());
        assert_eq!(frames.len(), 1, "one frame, written with the head");
        assert_eq!(
            (tokens(&metrics, "prompt"), tokens(&metrics, "completion")),
            (5, 2)
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_stream_is_not_held_back_waiting_for_more() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        // The backend sends the next event only once the client has received the previous
        // one: if the tap held an event until more data came, this would never finish.
        let (got_tx, mut got_rx) = mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            read_request(&mut s).await;
            s.write_all(HEAD.as_bytes()).await.expect("write");
            for e in EVENTS {
                s.write_all(chunk(e).as_bytes()).await.expect("write");
                if got_rx.recv().await.is_none() {
                    return;
                }
            }
            s.write_all(b"0\r\n\r\n").await.expect("write");
            let _ = s.read(&mut [0u8; 16]).await;
        });
        let (mut body, _) = proxied(addr).await;
        let received = tokio::time::timeout(Duration::from_secs(30), async {
            let mut all = Vec::new();
            while let Some(f) = body.frame().await {
                if let Ok(d) = f.expect("frame").into_data() {
                    all.extend_from_slice(&d);
                    let _ = got_tx.send(());
                }
            }
            all
        })
        .await
        .expect("every event arrives without the next one being sent");
        assert_eq!(received, EVENTS.concat().as_bytes());
    }
}
