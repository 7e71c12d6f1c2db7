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

/// The backend's response body on its way to the client: passes frames through as they come
/// (one per read of the backend's socket, see `upstream`), notes the time to first byte, scans
/// for token counts, and records the metrics at the end.
struct Tap {
    body: upstream::Body,
    watch: Watch,
    status: u16,
    first_byte: Option<f64>,
    scan: Scan,
    finished: bool,
    /// When the backend last sent something. The timer below is armed for `last + idle` and,
    /// when it fires early (something came since), re-armed: no timer work per frame.
    last: Instant,
    silence: Pin<Box<tokio::time::Sleep>>,
}

impl Tap {
    fn seen(&mut self, data: &Bytes) {
        if self.first_byte.is_none() {
            self.first_byte = Some(self.watch.started.elapsed().as_secs_f64());
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
    fn finish(&mut self, status: u16) {
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

impl Tap {
    /// Nothing from the backend: `Pending` while it has been silent for less than the idle
    /// timeout, else the response ends with an error (the client sees it cut short) and is
    /// counted as `BACKEND_SILENT`.
    fn poll_silence(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        loop {
            ready!(self.silence.as_mut().poll(cx));
            let due = self.last + self.watch.idle_timeout;
            if Instant::now() >= due {
                break;
            }
            self.silence.as_mut().reset(due.into());
        }
        self.finish(BACKEND_SILENT);
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the backend sent nothing for {} s ([proxy] backend_idle_timeout)",
                self.watch.idle_timeout.as_secs_f64()
            ),
        ))))
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
                this.last = Instant::now();
                next
            }
            Poll::Pending => return this.poll_silence(cx),
        };
        match &next {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref().filter(|d| !d.is_empty()) {
                    this.seen(d);
                }
                if this.body.is_end_stream() {
                    this.finish(this.status);
                }
            }
            _ => this.finish(this.status),
        }
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.body.is_end_stream()
    }

    /// The backend's exact length, when it sent one, lets the client see a Content-Length
    /// instead of chunked framing.
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // A client that left mid-stream: counted as such (nginx's 499), with the tokens seen;
        // dropping `body` closes the upstream connection, which makes llama-server stop
        // generating.
        // A body with nothing left (HEAD, 204, a complete one) was delivered in full.
        let status = if self.body.is_end_stream() {
            self.status
        } else {
            CLIENT_GONE
        };
        self.finish(status);
    }
}

/// Streams the backend's response to the client through the tap.
pub fn respond(head: upstream::Head, body: upstream::Body, watch: Watch) -> Response<Body> {
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
    let now = Instant::now();
    let silence = Box::pin(tokio::time::sleep_until((now + watch.idle_timeout).into()));
    let tap = Tap {
        body,
        watch,
        status: head.status.as_u16(),
        first_byte: None,
        scan,
        finished: false,
        last: now,
        silence,
    };
    let mut out = Response::new(Body::new(tap));
    *out.status_mut() = head.status;
    *out.headers_mut() = head.headers;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::proxy::{ProxyMetrics, TokenLabels};
    use axum::http::Method;
    use http_body_util::BodyExt;
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
    /// The body, and the metrics its series record to (the series are kept alive, as an
    /// instance's handle keeps them: dropped, they leave the metrics).
    async fn proxied(addr: std::net::SocketAddr) -> (Body, ProxyMetrics) {
        proxied_with(addr, Duration::from_secs(30)).await
    }

    async fn proxied_with(addr: std::net::SocketAddr, idle: Duration) -> (Body, ProxyMetrics) {
        let metrics = ProxyMetrics::register(&mut prometheus_client::registry::Registry::default());
        let addr = addr.to_string();
        let body = Bytes::from_static(b"{}");
        let head = upstream::encode_head(
            &Method::POST,
            "/v1/chat/completions",
            &axum::http::HeaderMap::new(),
            &addr,
            body.len(),
            None,
        )
        .expect("a valid target");
        let limits = upstream::HeadLimits {
            timeout: Duration::from_secs(30),
            max_interim: 8,
        };
        let (head, body) = upstream::send(&addr, &head, &body, &Method::POST, limits)
            .await
            .expect("backend answers");
        let series =
            std::sync::Arc::new(InstanceSeries::new(&metrics, "t", super::super::ENDPOINTS));
        std::mem::forget(series.clone());
        let watch = Watch {
            llm: Some((series.llm("t"), TextKey::Content)),
            span: crate::telemetry::OpSpan::default(),
            series,
            endpoint: 0,
            started: Instant::now(),
            _in_flight: None,
            usage: None,
            idle_timeout: idle,
        };
        (respond(head, body, watch).into_body(), metrics)
    }

    fn requests(m: &ProxyMetrics, status: u16) -> u64 {
        m.requests
            .get_or_create(&crate::metrics::proxy::RequestLabels {
                instance_name: "t".into(),
                endpoint: "chat_completions".into(),
                status,
            })
            .get()
    }

    /// A client that leaves mid-stream is counted as 499 (with the tokens seen so far), not
    /// as the backend's 200; one that reads to the end, as 200.
    #[tokio::test(flavor = "current_thread")]
    async fn a_client_that_leaves_mid_stream_is_counted_as_499() {
        for read_all in [false, true] {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = l.local_addr().expect("addr");
            tokio::spawn(async move {
                let (mut s, _) = l.accept().await.expect("accept");
                read_request(&mut s).await;
                s.write_all(HEAD.as_bytes()).await.expect("write");
                s.write_all(chunk(EVENTS[0]).as_bytes())
                    .await
                    .expect("write");
                if read_all {
                    let rest: String = EVENTS[1..].iter().map(|e| chunk(e)).collect();
                    let _ = s.write_all(format!("{rest}0\r\n\r\n").as_bytes()).await;
                }
                let _ = s.read(&mut [0u8; 16]).await;
            });
            let (mut body, metrics) = proxied(addr).await;
            let first = body.frame().await.expect("a frame").expect("data");
            assert!(first.is_data());
            if read_all {
                while let Some(f) = body.frame().await {
                    f.expect("frame");
                }
            }
            drop(body);
            let (gone, ok) = (requests(&metrics, CLIENT_GONE), requests(&metrics, 200));
            assert_eq!((gone, ok), if read_all { (0, 1) } else { (1, 0) });
        }
    }

    /// A backend that goes silent mid-stream is cut off after the idle timeout: the client's
    /// body ends with an error, the request is counted as 504 and no longer in flight; a slow
    /// but steady one is not.
    #[tokio::test(flavor = "current_thread")]
    async fn a_backend_silent_mid_stream_is_cut_off_after_the_idle_timeout() {
        for steady in [false, true] {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = l.local_addr().expect("addr");
            tokio::spawn(async move {
                let (mut s, _) = l.accept().await.expect("accept");
                read_request(&mut s).await;
                s.write_all(HEAD.as_bytes()).await.expect("write");
                for e in EVENTS {
                    let _ = s.write_all(chunk(e).as_bytes()).await;
                    if !steady {
                        // Hung after the first event.
                        let _ = s.read(&mut [0u8; 16]).await;
                        return;
                    }
                    // Slower than nothing at all, well within the idle timeout each time.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
                let _ = s.read(&mut [0u8; 16]).await;
            });
            let (mut body, metrics) = proxied_with(addr, Duration::from_millis(300)).await;
            let started = Instant::now();
            let mut frames = 0;
            let end = loop {
                match tokio::time::timeout(Duration::from_secs(10), body.frame()).await {
                    Err(_) => panic!("the body neither ended nor failed"),
                    Ok(None) => break Ok(()),
                    Ok(Some(Ok(_))) => frames += 1,
                    Ok(Some(Err(e))) => break Err(e.to_string()),
                }
            };
            if steady {
                assert_eq!(end, Ok(()));
                assert_eq!(frames, EVENTS.len());
                assert_eq!((requests(&metrics, 200), requests(&metrics, 504)), (1, 0));
            } else {
                let e = end.expect_err("cut off");
                assert!(e.contains("backend_idle_timeout"), "{e}");
                assert!(started.elapsed() >= Duration::from_millis(250));
                assert_eq!(frames, 1);
                assert_eq!((requests(&metrics, 200), requests(&metrics, 504)), (0, 1));
            }
        }
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
        assert_eq!(frames.len(), 1, "what one read gave, in one frame");
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
