//! HTTP/1.1 to backends, driven inline by the request that uses it.
//!
//! Why not hyper's client: it runs every connection as a task of its own and passes requests,
//! responses and body chunks to it through channels; replacing that took a fifth to a quarter
//! off the proxy's user CPU per request (bench/proxy-latency.md). Here the request's
//! own task writes the request to a kept-alive socket and reads the answer, and the response
//! body is read from the socket only when the client side asks for more:
//! - what one read returns goes out as one frame: an SSE burst leaves in one write, a token that
//!   comes alone goes out alone, and nothing waits for more;
//! - nothing is read ahead of the client, so a slow client slows the backend instead of filling
//!   memory, and a client that goes away drops the socket, which makes llama-server stop.
//!
//! Connections are kept per HTTP worker thread (each has its own event loop, `http::serve`),
//! most recently used first. One is reused only if the backend said nothing since (no close
//! arrived), and for at most `IDLE_TIMEOUT`, below the 5 s after which llama-server
//! (cpp-httplib) and uvicorn (vLLM) close idle connections. A request whose write fails on a
//! reused connection is sent again on another one (the backend had closed it, so it took
//! nothing). Once written, only a GET, HEAD or OPTIONS is sent again (when the reused
//! connection closes without an answer): a generation must not run twice.

pub(crate) mod chunked;
pub(crate) mod head;
mod raw;

use axum::http::{Method, StatusCode};
use bytes::{Buf, Bytes, BytesMut};
#[cfg(test)]
pub use head::encode_head;
pub use head::{encode_head_traced, Head};
use head::{parse_head, Framing};
use hyper::body::{Frame, SizeHint};
pub use raw::{RawBody, RawFraming};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// An idle connection unused this long is closed, not reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle connections kept per backend and thread; more are closed when released.
const MAX_IDLE: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response head accepted from a backend.
const MAX_HEAD: usize = 64 << 10;
const READ_CHUNK: usize = 16 << 10;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("sending the request: {0}")]
    Write(io::Error),
    #[error("reading the answer: {0}")]
    Read(io::Error),
    #[error("the backend closed the connection without answering")]
    ClosedBeforeAnswer,
    #[error("the backend's answer is not valid HTTP/1.1: {0}")]
    Invalid(String),
    #[error("no response head within {} s ([proxy] response_header_timeout)", .0.as_secs_f64())]
    HeadTimeout(Duration),
    #[error("more than {0} interim (1xx) answers ([proxy] max_interim_responses)")]
    TooManyInterim(u32),
}

/// How long a backend may take to answer, and how many `1xx` it may send first.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub timeout: Duration,
    pub max_interim: u32,
}

/// A connection and what has been read from it but not yet used.
struct Conn {
    tcp: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// Reads what the socket has into `buf`: `Ok(0)` at the end of the stream.
    ///
    /// A read that returns less than it had room for emptied the socket, so the event loop is
    /// told the socket is no longer readable right away. Otherwise its readiness would stay set
    /// until a read failed, and the next read (the answer to the request written next) would
    /// first make a `recv` that can only say "nothing yet": one system call per request.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let room = self.buf.capacity() - self.buf.len();
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.tcp.try_read_buf(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(n) if n > 0 && n < room => {
                    // TCP returns less than asked only when its receive queue is empty. Data
                    // or a close that arrives after this is a new edge the event loop reports.
                    let _ = self.tcp.try_io(tokio::io::Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                    return Poll::Ready(Ok(n));
                }
                r => return Poll::Ready(r),
            }
        }
    }

    /// Whether the event loop has seen nothing arrive on the socket (no data, no close) since
    /// its last read emptied it. Free: no system call, but only as new as the loop's last look.
    fn quiet(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.tcp.poll_read_ready(&mut cx).is_pending()
    }

    /// Whether an idle connection can take a request: the backend has sent nothing since the
    /// last answer, not even its close. Asks the socket itself (one `recv` that peeks), not the
    /// event loop's view of it, which lags behind a close that arrived while the loop was busy.
    fn still_open(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: `recv` writes at most 1 byte into `byte`, which lives across the call; the
        // descriptor is this connection's open socket.
        let n = unsafe {
            libc::recv(
                self.tcp.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        // Data (an answer to nothing) or the end of the stream: not reusable.
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<String, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// An idle connection released this recently, which the event loop has seen nothing arrive on,
/// is reused without asking the socket (`Conn::still_open`'s system call): no backend closes a
/// kept-alive connection this soon after answering on it (their idle timeouts are seconds), so
/// the peek is kept for connections idle long enough for that to happen. A backend that dies
/// meanwhile can close either kind just after the check; the peek never covered that.
const FRESH: Duration = Duration::from_millis(250);

/// The most recently used idle connection to `addr` that can still take a request.
fn checkout(addr: &str) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(addr)?;
        let now = Instant::now();
        while let Some(i) = list.pop() {
            let age = now.duration_since(i.since);
            if age < FRESH && i.conn.quiet() || age < IDLE_TIMEOUT && i.conn.still_open() {
                return Some(i.conn);
            }
        }
        None
    })
}

/// Back to this thread's idle list.
fn release(addr: &str, conn: Conn) {
    let now = Instant::now();
    let _ = IDLE.try_with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = match idle.get_mut(addr) {
            Some(l) => l,
            None => idle.entry(addr.to_string()).or_default(),
        };
        if list.len() >= MAX_IDLE {
            // The least recently used goes; the list is oldest first.
            list.remove(0);
        }
        list.push(Idle { conn, since: now });
    });
}

/// Closes this thread's idle connections that expired, to any backend (including ones no
/// longer asked for, whose sockets would otherwise wait in CLOSE_WAIT). Each HTTP worker runs
/// it every `IDLE_TIMEOUT` (`idle_sweeper`).
fn sweep(now: Instant) {
    let _ = IDLE.try_with(|idle| {
        idle.borrow_mut().retain(|_, list| {
            list.retain(|i| now.duration_since(i.since) < IDLE_TIMEOUT);
            !list.is_empty()
        });
    });
}

/// Sweeps the calling thread's idle connections every `IDLE_TIMEOUT`, forever: spawn it on
/// each HTTP worker's runtime.
pub async fn idle_sweeper() {
    let mut tick = tokio::time::interval(IDLE_TIMEOUT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sweep(Instant::now());
    }
}

async fn connect(addr: &str) -> Result<Conn, UpstreamError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(addr.to_string()))?
        .map_err(|source| UpstreamError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    // Streamed tokens go out as they come, not after Nagle's delay.
    let _ = tcp.set_nodelay(true);
    Ok(Conn {
        tcp,
        buf: BytesMut::with_capacity(READ_CHUNK),
    })
}

/// Sends a request (`head` from `encode_head`, then `body`) to `addr` and reads the response
/// head; the body follows as the returned `Body` is polled.
pub async fn send(
    addr: &str,
    head: &[u8],
    body: &Bytes,
    method: &Method,
    limits: HeadLimits,
) -> Result<(Head, Body), UpstreamError> {
    tokio::time::timeout(
        limits.timeout,
        send_untimed(addr, head, body, method, limits),
    )
    .await
    .unwrap_or(Err(UpstreamError::HeadTimeout(limits.timeout)))
}

async fn send_untimed(
    addr: &str,
    head: &[u8],
    body: &Bytes,
    method: &Method,
    limits: HeadLimits,
) -> Result<(Head, Body), UpstreamError> {
    let idempotent = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    while let Some(mut conn) = checkout(addr) {
        if write(&mut conn, head, body).await.is_err() {
            // The backend had closed it and took nothing. Try the next one.
            continue;
        }
        match exchange(conn, addr, method, limits.max_interim).await {
            // Closed as the request arrived: the backend may or may not have seen it, so only
            // a request that can safely run twice is sent again.
            Err(UpstreamError::ClosedBeforeAnswer) if idempotent => continue,
            answer => return answer,
        }
    }
    let mut conn = connect(addr).await?;
    write(&mut conn, head, body)
        .await
        .map_err(UpstreamError::Write)?;
    exchange(conn, addr, method, limits.max_interim).await
}

async fn write(conn: &mut Conn, head: &[u8], body: &Bytes) -> io::Result<()> {
    // One writev for head and body.
    let mut all = head.chain(body.as_ref());
    conn.tcp.write_all_buf(&mut all).await
}

/// Reads the response head (skipping at most `max_interim` `1xx` interim answers) and sets up
/// its body.
async fn exchange(
    mut conn: Conn,
    addr: &str,
    method: &Method,
    max_interim: u32,
) -> Result<(Head, Body), UpstreamError> {
    let mut interim = 0u32;
    loop {
        let parsed = loop {
            if !conn.buf.is_empty() {
                if let Some(p) = parse_head(&conn.buf)? {
                    break p;
                }
                if conn.buf.len() > MAX_HEAD {
                    return Err(UpstreamError::Invalid(format!(
                        "response head over {MAX_HEAD} bytes"
                    )));
                }
            }
            let n = poll_fn(|cx| conn.poll_fill(cx))
                .await
                .map_err(UpstreamError::Read)?;
            if n == 0 {
                return Err(if conn.buf.is_empty() {
                    UpstreamError::ClosedBeforeAnswer
                } else {
                    UpstreamError::Invalid("the connection closed inside the response head".into())
                });
            }
        };
        conn.buf.advance(parsed.len);
        if parsed.head.status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(UpstreamError::Invalid(
                "the backend switched protocols, which the proxy does not pass on".into(),
            ));
        }
        if parsed.head.status.is_informational() {
            interim += 1;
            if interim > max_interim {
                return Err(UpstreamError::TooManyInterim(max_interim));
            }
            continue;
        }
        let no_body = *method == Method::HEAD
            || parsed.head.status == StatusCode::NO_CONTENT
            || parsed.head.status == StatusCode::NOT_MODIFIED;
        let framing = if no_body {
            Framing::Length(0)
        } else {
            parsed.framing
        };
        let body = Body {
            conn: Some(conn),
            addr: addr.to_string(),
            framing,
            keep_alive: parsed.keep_alive,
        };
        return Ok((parsed.head, body));
    }
}

/// The response body, read from the backend's socket as it is polled. The connection goes
/// back to the pool as soon as the whole body has been read; dropped earlier, it is closed.
pub struct Body {
    conn: Option<Conn>,
    addr: String,
    framing: Framing,
    /// The backend keeps the connection open after this answer. (A body read until the
    /// backend closes never completes, so it is never released.)
    keep_alive: bool,
}

impl Body {
    fn done(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Bytes after the body are a backend that does not speak HTTP/1.1 properly.
            if self.keep_alive && conn.buf.is_empty() {
                release(&self.addr, conn);
            }
        }
    }

    /// Body bytes already in the buffer, as one frame, without reading.
    fn take_buffered(&mut self) -> Result<Option<Bytes>, io::Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let data = match &mut self.framing {
            Framing::Length(0) => None,
            Framing::Length(rem) => {
                let n = conn
                    .buf
                    .len()
                    .min(usize::try_from(*rem).unwrap_or(usize::MAX));
                *rem -= n as u64;
                (n > 0).then(|| conn.buf.split_to(n).freeze())
            }
            Framing::Chunked(c) => c.decode(&mut conn.buf)?,
            Framing::Eof => (!conn.buf.is_empty()).then(|| conn.buf.split().freeze()),
        };
        Ok(data)
    }

    fn complete(&self) -> bool {
        match &self.framing {
            Framing::Length(rem) => *rem == 0,
            Framing::Chunked(c) => c.is_done(),
            Framing::Eof => false,
        }
    }
}

impl Drop for Body {
    /// A body that was read to its end (or has none) but not polled once more still returns
    /// its connection; one dropped earlier closes it.
    fn drop(&mut self) {
        if self.complete() {
            self.done();
        }
    }
}

/// Reads more of a body into its connection's buffer: `Ok(true)` to go on, `Ok(false)` at a
/// clean end (no connection, or the close that ends a body read `until_close`), `Err` when the
/// backend broke off. The connection is dropped at any end.
fn poll_more(
    slot: &mut Option<Conn>,
    until_close: bool,
    cx: &mut Context<'_>,
) -> Poll<io::Result<bool>> {
    let Some(conn) = slot.as_mut() else {
        return Poll::Ready(Ok(false));
    };
    Poll::Ready(match ready!(conn.poll_fill(cx)) {
        Ok(0) => {
            *slot = None;
            if until_close {
                Ok(false)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the backend closed the connection before the end of the body",
                ))
            }
        }
        Ok(_) => Ok(true),
        Err(e) => {
            *slot = None;
            Err(e)
        }
    })
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let data = match this.take_buffered() {
                Ok(d) => d,
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            if this.complete() {
                this.done();
            }
            if let Some(d) = data {
                return Poll::Ready(Some(Ok(Frame::data(d))));
            }
            let until_close = matches!(this.framing, Framing::Eof);
            match ready!(poll_more(&mut this.conn, until_close, cx)) {
                Ok(true) => {}
                Ok(false) => return Poll::Ready(None),
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.framing, Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.framing, &self.conn) {
            (_, None) => SizeHint::with_exact(0),
            (Framing::Length(rem), _) => SizeHint::with_exact(*rem),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
