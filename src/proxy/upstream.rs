//! HTTP/1.1 to backends, driven inline by the request that uses it.
//!
//! Why not hyper's client: it runs every connection as a task of its own and passes requests,
//! responses and body chunks to it through channels. At one connection that machinery was the
//! largest part of what the proxy added over nginx (bench/proxy-latency.md). Here the request's
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
//! nothing); once a request is written it is never sent again: a generation must not run twice.

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Frame, SizeHint};
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
/// Largest response head accepted from a backend, and most headers in it.
const MAX_HEAD: usize = 64 << 10;
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line, and most trailer bytes, of a chunked body.
const MAX_CHUNK_LINE: usize = 4 << 10;
const MAX_TRAILERS: usize = 16 << 10;
const READ_CHUNK: usize = 16 << 10;

/// Headers that describe one hop (RFC 9110 7.6.1) or its framing, which each side sets for
/// itself: never passed on, either way. Requests also lose `host` (the backend's own is sent)
/// and `expect` (the body has been read from the client already).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

fn passed_on_request(name: &str) -> bool {
    !HOP_BY_HOP.contains(&name) && name != "host" && name != "expect"
}

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
}

/// A connection and what has been read from it but not yet used.
struct Conn {
    tcp: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// Reads what the socket has into `buf`: `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.tcp.try_read_buf(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
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

/// The most recently used idle connection to `addr` that can still take a request.
fn checkout(addr: &str) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(addr)?;
        let now = Instant::now();
        while let Some(i) = list.pop() {
            if now.duration_since(i.since) < IDLE_TIMEOUT && i.conn.still_open() {
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

/// The request head for `path_and_query` on the backend at `addr` (`host:port`), with the
/// client's end-to-end headers. A target that is not one origin-form token (a space or control
/// byte would end the request line early) is refused.
pub fn encode_head(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    addr: &str,
    body_len: usize,
) -> Result<Vec<u8>, String> {
    if !path_and_query.starts_with('/') || path_and_query.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "{path_and_query:?} is not a path the backend can be sent"
        ));
    }
    let mut h = Vec::with_capacity(256);
    h.extend_from_slice(method.as_str().as_bytes());
    h.push(b' ');
    h.extend_from_slice(path_and_query.as_bytes());
    h.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    h.extend_from_slice(addr.as_bytes());
    h.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        if passed_on_request(k.as_str()) {
            h.extend_from_slice(k.as_str().as_bytes());
            h.extend_from_slice(b": ");
            h.extend_from_slice(v.as_bytes());
            h.extend_from_slice(b"\r\n");
        }
    }
    h.extend_from_slice(b"x-forwarded-proto: http\r\n");
    if body_len > 0 || !matches!(*method, Method::GET | Method::HEAD | Method::DELETE) {
        h.extend_from_slice(b"content-length: ");
        h.extend_from_slice(body_len.to_string().as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    h.extend_from_slice(b"\r\n");
    Ok(h)
}

/// A backend's response head: status and end-to-end headers.
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// Sends a request (`head` from `encode_head`, then `body`) to `addr` and reads the response
/// head; the body follows as the returned `Body` is polled.
pub async fn send(
    addr: &str,
    head: &[u8],
    body: &Bytes,
    method: &Method,
) -> Result<(Head, Body), UpstreamError> {
    let idempotent = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    while let Some(mut conn) = checkout(addr) {
        if write(&mut conn, head, body).await.is_err() {
            // The backend had closed it and took nothing. Try the next one.
            continue;
        }
        match exchange(conn, addr, method).await {
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
    exchange(conn, addr, method).await
}

async fn write(conn: &mut Conn, head: &[u8], body: &Bytes) -> io::Result<()> {
    // One writev for head and body.
    let mut all = head.chain(body.as_ref());
    conn.tcp.write_all_buf(&mut all).await
}

/// Reads the response head (skipping `1xx` interim answers) and sets up its body.
async fn exchange(
    mut conn: Conn,
    addr: &str,
    method: &Method,
) -> Result<(Head, Body), UpstreamError> {
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
        let reusable = parsed.keep_alive && !matches!(framing, Framing::Eof);
        let body = Body {
            conn: Some(conn),
            addr: addr.to_string(),
            framing,
            reusable,
        };
        return Ok((parsed.head, body));
    }
}

struct Parsed {
    head: Head,
    framing: Framing,
    keep_alive: bool,
    /// Bytes of the head, blank line included.
    len: usize,
}

fn invalid(what: impl Into<String>) -> UpstreamError {
    UpstreamError::Invalid(what.into())
}

/// Parses a complete response head at the start of `buf`; `None` if more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<Parsed>, UpstreamError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut raw);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(e.to_string())),
    };
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| invalid("bad status code"))?;
    let http11 = res.version == Some(1);
    let mut headers = HeaderMap::with_capacity(res.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = !http11;
    for h in res.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| invalid(format!("bad header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| invalid(format!("bad value of header {}", h.name)))?;
        if name == axum::http::header::CONTENT_LENGTH {
            let digits = h.value.trim_ascii();
            let n = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| invalid("bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid("conflicting content-length headers"));
            }
            length = Some(n);
        } else if name == axum::http::header::TRANSFER_ENCODING {
            // Codings across all the headers form one list. Only chunked (last) is decoded
            // here; another transfer coding (gzip, …) could not be passed on as it is.
            for coding in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if coding.is_empty() || coding.eq_ignore_ascii_case(b"identity") {
                    continue;
                }
                if !coding.eq_ignore_ascii_case(b"chunked") || chunked {
                    return Err(invalid(format!(
                        "unsupported transfer-encoding {:?}",
                        String::from_utf8_lossy(h.value)
                    )));
                }
                chunked = true;
            }
        } else if name == axum::http::header::CONNECTION {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    close = false;
                }
            }
        }
        if !HOP_BY_HOP.contains(&name.as_str()) {
            headers.append(name, value);
        }
    }
    // A transfer coding overrides any length (RFC 9112 6.3), and a message with both is not
    // trusted to leave the connection clean.
    let framing = if chunked {
        close |= length.is_some();
        Framing::Chunked(Chunked::default())
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Eof
    };
    Ok(Some(Parsed {
        head: Head { status, headers },
        framing,
        keep_alive: !close,
        len,
    }))
}

enum Framing {
    /// This many body bytes remain.
    Length(u64),
    Chunked(Chunked),
    /// Until the backend closes the connection.
    Eof,
}

/// The response body, read from the backend's socket as it is polled. The connection goes
/// back to the pool as soon as the whole body has been read; dropped earlier, it is closed.
pub struct Body {
    conn: Option<Conn>,
    addr: String,
    framing: Framing,
    reusable: bool,
}

impl Body {
    fn done(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Bytes after the body are a backend that does not speak HTTP/1.1 properly.
            if self.reusable && conn.buf.is_empty() {
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

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if this.conn.is_none() {
                return Poll::Ready(None);
            }
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
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    this.conn = None;
                    if matches!(this.framing, Framing::Eof) {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection before the end of the body",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
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

/// Decoding `Transfer-Encoding: chunked`, resumable at any byte.
#[derive(Default)]
struct Chunked {
    state: ChunkState,
    trailer_bytes: usize,
}

#[derive(Default, PartialEq, Debug, Clone, Copy)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data: this many bytes remain.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

impl Chunked {
    fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Takes the complete lines and data in `buf`: returns the data, concatenated (without a
    /// copy when there is one piece), or `None` if none is complete yet.
    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        let mut one: Option<Bytes> = None;
        let mut many: Option<BytesMut> = None;
        loop {
            match self.state {
                ChunkState::Data(rem) => {
                    if buf.is_empty() {
                        break;
                    }
                    let n = buf.len().min(usize::try_from(rem).unwrap_or(usize::MAX));
                    let piece = buf.split_to(n).freeze();
                    self.state = match rem - n as u64 {
                        0 => ChunkState::DataEnd,
                        r => ChunkState::Data(r),
                    };
                    match (&mut one, &mut many) {
                        (None, None) => one = Some(piece),
                        (Some(first), None) => {
                            let mut m = BytesMut::with_capacity(first.len() + piece.len());
                            m.extend_from_slice(first);
                            m.extend_from_slice(&piece);
                            one = None;
                            many = Some(m);
                        }
                        (_, Some(m)) => m.extend_from_slice(&piece),
                    }
                }
                ChunkState::Done => break,
                _ => {
                    let Some(line) = take_line(buf, self.line_limit())? else {
                        break;
                    };
                    self.state = self.after_line(&line)?;
                }
            }
        }
        Ok(many.map(BytesMut::freeze).or(one))
    }

    /// The state after a whole control line (a chunk size, the end of a chunk, a trailer).
    fn after_line(&mut self, line: &[u8]) -> io::Result<ChunkState> {
        Ok(match self.state {
            ChunkState::Size => match chunk_size(line)? {
                0 => ChunkState::Trailers,
                n => ChunkState::Data(n),
            },
            ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
            ChunkState::DataEnd => return Err(bad("no CRLF after chunk data")),
            ChunkState::Trailers if line.is_empty() => ChunkState::Done,
            ChunkState::Trailers => {
                self.trailer_bytes += line.len();
                if self.trailer_bytes > MAX_TRAILERS {
                    return Err(bad("trailers too large"));
                }
                ChunkState::Trailers
            }
            other => other,
        })
    }

    fn line_limit(&self) -> usize {
        match self.state {
            ChunkState::Trailers => MAX_TRAILERS,
            _ => MAX_CHUNK_LINE,
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad chunked body from the backend: {what}"),
    )
}

/// One line (without its CRLF or LF) from the front of `buf`, if a whole one is there.
fn take_line(buf: &mut BytesMut, limit: usize) -> io::Result<Option<BytesMut>> {
    match memchr::memchr(b'\n', buf) {
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > limit => Err(bad("line too long")),
        None => Ok(None),
    }
}

/// The size of a chunk-size line (`HEX[;extensions]`).
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let hex = line.split(|&b| b == b';').next().unwrap_or_default();
    let hex = hex.trim_ascii();
    if hex.is_empty() || hex.len() > 16 {
        return Err(bad("bad chunk size"));
    }
    let mut n: u64 = 0;
    for &b in hex {
        let d = (b as char)
            .to_digit(16)
            .ok_or_else(|| bad("bad chunk size"))?;
        n = (n << 4) | u64::from(d);
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
