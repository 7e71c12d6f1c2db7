//! The lane: how every connection is served first, and how model requests (`POST /v1/...`,
//! `POST /infill`) are served without hyper. The first request whose head is anything else
//! hands the connection, with the bytes already read, to hyper (`serve::serve_hyper`) for good.
//!
//! Why: at one connection, streaming through llamactld cost about 9 µs per request more than
//! through nginx, and the measurements (bench/proxy-latency.md, 2026-12-03 23:45) put that in
//! the typed detour of a generic server — parsing into a `HeaderMap`, re-encoding the head,
//! de-chunking the backend's body into frames and chunking it again — not in any one part of
//! llamactld's own work. Here the head is parsed once (`head`: `httparse`, header values sharing
//! the read buffer), authorised by the same `guard::check` as every route, the body read within
//! the same `[proxy]` limits (`proxy::intake`), routed and sent by the same
//! `proxy::forward_model`; the backend's answer head is written again, and its body bytes go to
//! the client as they came, chunked framing included, while the token tap watches them
//! (`proxy::Watcher`, `upstream::RawBody`).
//!
//! What hyper did and the lane does the same way: the header timeout (also while a kept-alive
//! connection waits), `Expect: 100-continue`, `Connection: close`, a `date` header, graceful
//! shutdown (an idle connection closes, a request in flight finishes with `connection: close`),
//! and a client that closes its connection mid-request cancels it (nginx's 499), which drops the
//! backend connection and stops the generation.

mod answer;
pub mod head;
mod prefixed;

use super::app::App;
use super::guard::{self, Checked};
use super::serve::{serve_hyper, Conn, Limits};
use super::{observe, request_id, AppState};
use crate::auth::{Need, Scope};
use crate::metrics::http::HttpMetrics;
use crate::proxy::{self, intake, Caller, Forward, Incoming, RawFraming, Watcher};
use answer::Framing;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::Response;
use bytes::{Buf, Bytes, BytesMut};
use head::{ModelHead, Parse};
use std::future::poll_fn;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Sleep;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Room made in the read buffer before each read.
const READ: usize = 8 << 10;

/// After an answer: serve the next request, or close.
enum Next {
    KeepAlive,
    Close,
}

/// What one connection needs from its worker.
struct Ctx<'a> {
    app: &'a App,
    /// The read buffer: bytes read and not yet used (a head, a body, pipelined requests).
    buf: BytesMut,
    /// The connection's one timer: the header timeout, the body timeout, then the backend's
    /// idle timeout, in turn.
    timer: Pin<Box<Sleep>>,
    /// Ranges of body data in the backend's bytes (reused).
    ranges: Vec<Range<usize>>,
    closing: watch::Receiver<bool>,
}

/// Serves one connection until it closes, or until it is handed to hyper.
pub async fn serve(
    mut io: Conn,
    app: App,
    limits: Limits,
    metrics: &HttpMetrics,
    closing: watch::Receiver<bool>,
) {
    let mut cx = Ctx {
        app: &app,
        buf: BytesMut::with_capacity(READ),
        timer: Box::pin(tokio::time::sleep(limits.header_timeout)),
        ranges: Vec::new(),
        closing,
    };
    loop {
        if *cx.closing.borrow() && cx.buf.is_empty() {
            return;
        }
        cx.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + limits.header_timeout);
        let taken = loop {
            match head::classify(&cx.buf) {
                Parse::Lane(t) => break t,
                Parse::Handoff => {
                    let Ctx { buf, closing, .. } = cx;
                    let io = prefixed::Prefixed::new(buf.freeze(), io);
                    return serve_hyper(io, app.clone(), limits, metrics, closing).await;
                }
                Parse::Partial => {}
            }
            cx.buf.reserve(READ);
            let idle = cx.buf.is_empty();
            let read = tokio::select! {
                biased;
                r = io.read_buf(&mut cx.buf) => r.ok(),
                _ = cx.timer.as_mut() => {
                    metrics.header_timeouts.inc();
                    return;
                }
                _ = cx.closing.wait_for(|c| *c), if idle => None,
            };
            if !matches!(read, Some(n) if n > 0) {
                return;
            }
        };
        let head = cx.buf.split_to(taken.len).freeze();
        let Some(req) = head::build(&head, taken) else {
            // A header value httparse took and `HeaderValue` does not (a byte neither should
            // see): hyper gets the head as it came, and answers it.
            let mut all = BytesMut::from(&head[..]);
            all.extend_from_slice(&cx.buf);
            let io = prefixed::Prefixed::new(all.freeze(), io);
            return serve_hyper(io, app.clone(), limits, metrics, cx.closing).await;
        };
        match one(&mut io, &mut cx, req).await {
            Next::KeepAlive => {}
            Next::Close => {
                let _ = io.shutdown().await;
                return;
            }
        }
    }
}

/// One model request, from its parsed head to the end of its answer.
async fn one(io: &mut Conn, cx: &mut Ctx<'_>, mut req: ModelHead) -> Next {
    let started = Instant::now();
    let state = &cx.app.state;
    let id = match req.headers.get(&X_REQUEST_ID) {
        Some(v) => v.clone(),
        None => {
            let v = HeaderValue::from_bytes(&request_id::new_id())
                .unwrap_or_else(|_| HeaderValue::from_static("-"));
            req.headers.insert(X_REQUEST_ID.clone(), v.clone());
            v
        }
    };
    let close = req.close || *cx.closing.borrow();
    let done = Done {
        state,
        route: req.route,
        started,
        id: &id,
        close,
    };
    let need = Need::Scope(Scope::Inference);
    let checked = match guard::check(
        state,
        &cx.app.peer,
        need,
        req.route,
        &Method::POST,
        &req.headers,
    ) {
        Ok(c) => c,
        Err(answer) => {
            let kept = skip(&mut cx.buf, req.content_length);
            return done.whole(io, *answer, None, !kept).await;
        }
    };
    let p = &state.proxy;
    let cfg = p.config();
    let limits = intake::Limits {
        max_bytes: cfg.max_body_bytes,
        deadline: cfg.body_timeout.get(),
    };
    let held = match intake::admit(limits, p.budget(), req.content_length) {
        Ok(h) => h,
        Err(answer) => {
            let kept = skip(&mut cx.buf, req.content_length);
            return done.whole(io, *answer, Some(&checked), !kept).await;
        }
    };
    // Admitted: at most `max_body_bytes`, which fits in memory.
    let len = usize::try_from(req.content_length).unwrap_or(usize::MAX);
    if cx.buf.len() < len {
        if req.expects_continue
            && io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return Next::Close;
        }
        cx.buf.reserve(len - cx.buf.len());
        cx.timer
            .as_mut()
            .reset((Instant::now() + limits.deadline).into());
        while cx.buf.len() < len {
            let read = tokio::select! {
                biased;
                r = io.read_buf(&mut cx.buf) => r.ok(),
                _ = cx.timer.as_mut() => {
                    return done.whole(io, intake::timed_out(limits.deadline), Some(&checked), true).await;
                }
            };
            if !matches!(read, Some(n) if n > 0) {
                return Next::Close;
            }
        }
    }
    let body = cx.buf.split_to(len).freeze();
    let incoming = Incoming {
        method: &Method::POST,
        path_and_query: &req.target,
        headers: &req.headers,
        started,
    };
    let caller: Arc<dyn Caller> = checked.caller.clone();
    let forwarding = proxy::forward_model(p, incoming, body, held, caller);
    // A client that closes its connection while its request waits (for an on-demand start, for
    // the backend's head) takes the request back, as hyper did; the start itself goes on.
    let answer = tokio::select! {
        biased;
        a = forwarding => a,
        _ = io.closed() => return Next::Close,
    };
    match answer {
        Ok(f) => stream(io, cx, f, &checked, done).await,
        Err(answer) => done.whole(io, answer, Some(&checked), close).await,
    }
}

/// Takes a refused request's body from the buffer if all of it is there; `false` if not (the
/// connection must close, since the rest would be read as the next request).
fn skip(buf: &mut BytesMut, len: u64) -> bool {
    match usize::try_from(len) {
        Ok(n) if n <= buf.len() => {
            buf.advance(n);
            true
        }
        _ => false,
    }
}

/// What the end of a request records, and how its answer closes.
struct Done<'a> {
    state: &'a AppState,
    route: &'static str,
    started: Instant,
    id: &'a HeaderValue,
    close: bool,
}

impl Done<'_> {
    /// Counts the request in the API metrics, as `app.rs` does for hyper's.
    fn record(&self, status: u16) {
        let secs = self.started.elapsed().as_secs_f64();
        observe::record_model(self.state, self.route, status, secs, Some(self.id));
    }

    /// Answers with llamactld's own `res` (a refusal, an error).
    async fn whole(
        &self,
        io: &mut Conn,
        res: Response,
        checked: Option<&Checked>,
        close: bool,
    ) -> Next {
        let res = match checked {
            Some(c) => c.decorate(res),
            None => res,
        };
        self.record(res.status().as_u16());
        let close = close || self.close;
        let bytes = answer::whole(res, &[("x-request-id", self.id)], close).await;
        match io.write_all(&bytes).await {
            Ok(()) if !close => Next::KeepAlive,
            _ => Next::Close,
        }
    }
}

/// How waiting for the backend's next bytes ended.
enum Wait {
    Bytes(Option<io::Result<Bytes>>),
    Silent,
    ClientGone,
}

/// Passes the backend's answer on: its head written again, its body as it comes.
async fn stream(
    io: &mut Conn,
    cx: &mut Ctx<'_>,
    f: Forward,
    checked: &Checked,
    done: Done<'_>,
) -> Next {
    let Forward {
        mut head,
        body,
        watch,
    } = f;
    let mut w = Watcher::new(&head, watch);
    let mut raw = body.into_raw();
    let framing = match raw.framing() {
        RawFraming::Length(n) => Framing::Length(*n),
        RawFraming::Chunked(_) => Framing::Chunked,
        RawFraming::Eof => Framing::Close,
    };
    let close = done.close || framing == Framing::Close;
    head.headers
        .entry(X_REQUEST_ID.clone())
        .or_insert_with(|| done.id.clone());
    checked.decorate_headers(&mut head.headers);
    let mut out = Vec::with_capacity(512);
    answer::encode_head(&mut out, head.status, &head.headers, framing, close);
    // The body's first bytes, if they are here already, leave with the head in one write.
    // What only counts (the request's metrics, the token tap) is done after each write, while
    // the client reads: it is not on the way of the answer.
    let ranges = &mut cx.ranges;
    let mut next = match poll_fn(|c| Poll::Ready(raw.poll_raw(c, ranges))).await {
        Poll::Ready(first) => Some(first),
        Poll::Pending => {
            if io.write_all(&out).await.is_err() {
                return Next::Close;
            }
            out.clear();
            done.record(head.status.as_u16());
            None
        }
    };
    let mut unrecorded = next.is_some();
    let mut watch_client = true;
    loop {
        let got = match next.take() {
            Some(got) => got,
            None => match wait(io, cx, &mut raw, &w, &mut watch_client).await {
                Wait::Bytes(got) => got,
                Wait::Silent => {
                    // Cut off: counted as the backend's silence, the client sees it end short.
                    let _ = w.silenced();
                    return Next::Close;
                }
                // Dropping the watcher counts it as the client's leaving.
                Wait::ClientGone => return Next::Close,
            },
        };
        let bytes = match got {
            Some(Ok(b)) => b,
            Some(Err(_)) | None => {
                let whole = got.is_none();
                if whole && !out.is_empty() && io.write_all(&out).await.is_err() {
                    return Next::Close;
                }
                if unrecorded {
                    done.record(head.status.as_u16());
                }
                w.finish(w.status());
                return if whole && !close {
                    Next::KeepAlive
                } else {
                    Next::Close
                };
            }
        };
        w.arrived();
        let written = if out.is_empty() {
            io.write_all(&bytes).await
        } else {
            let mut both = Buf::chain(&out[..], bytes.clone());
            io.write_all_buf(&mut both).await
        };
        out.clear();
        if std::mem::take(&mut unrecorded) {
            done.record(head.status.as_u16());
        }
        for r in cx.ranges.drain(..).filter(|r| !r.is_empty()) {
            w.seen(&bytes.slice(r));
        }
        if written.is_err() {
            return Next::Close;
        }
        if raw.is_end() {
            w.finish(w.status());
            return if close { Next::Close } else { Next::KeepAlive };
        }
    }
}

/// Waits for the backend's next bytes, its silence over `backend_idle_timeout`, or the client
/// closing its connection (watched until the client sends anything: a pipelined request).
async fn wait(
    io: &Conn,
    cx: &mut Ctx<'_>,
    raw: &mut proxy::RawBody,
    w: &Watcher,
    watch_client: &mut bool,
) -> Wait {
    let ranges = &mut cx.ranges;
    let timer = &mut cx.timer;
    timer.as_mut().reset(w.silent_at().into());
    loop {
        tokio::select! {
            biased;
            got = poll_fn(|c| raw.poll_raw(c, ranges)) => return Wait::Bytes(got),
            _ = timer.as_mut() => {
                let due = w.silent_at();
                if Instant::now() >= due {
                    return Wait::Silent;
                }
                timer.as_mut().reset(due.into());
            }
            gone = io.peer_closed(), if *watch_client => {
                if gone {
                    return Wait::ClientGone;
                }
                *watch_client = false;
            }
        }
    }
}
