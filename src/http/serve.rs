//! Serving HTTP the way nginx does: one thread per worker, each with its own single-threaded
//! runtime, so a connection — and the upstream connections its proxied requests use — live on
//! one thread from accept to close. On the shared multi-threaded runtime every proxied request
//! woke a second worker (hyper's client hands the request to its connection task, which the
//! scheduler gives to the idle thread): two futex calls and a cross-CPU wake-up per request, the
//! largest part of what the proxy added over nginx (see bench/proxy-latency.md).
//!
//! One acceptor task on the daemon's main runtime accepts and deals connections round-robin to
//! the workers, so 16 connections become 8 + 8 (a shared listening socket would let whichever
//! thread woke first take them all). Everything else the handlers touch (the supervisor, the
//! D-Bus connection, the metrics) is `Send + Sync` and shared.
//!
//! The same acceptor takes connections on the admin socket (a Unix socket): their peer's
//! credentials are read from the kernel at accept, and travel with the connection as its
//! [`Peer`], from which every request on it is authorised.
//!
//! Each connection is served by the lane (`lane`: model requests without hyper) until its first
//! other request, which hands it to hyper (`serve_hyper`).
//!
//! Limits (`[server]`): a connection must send each request head within `header_timeout`
//! (the lane's timer, then hyper's header read timeout; both also run while a kept-alive
//! connection waits for its next request), and at most `max_connections` TCP connections are open at once — the
//! acceptor answers the next ones 503 and closes them, so a flood costs a few syscalls each and
//! never reaches a worker. Both are counted in `metrics::http`.

use super::app::MakeApp;
use super::heartbeat::Heartbeats;
use crate::auth::{peer::peer_cred, Peer};
use crate::metrics::http::HttpMetrics;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::io::{self, Write as _};
use std::net::{Shutdown, TcpStream as StdTcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tower::Service as _;
use tracing::{debug, error, warn};

/// An accepted connection on its way to a worker.
enum Accepted {
    Tcp(StdTcpStream),
    Unix(StdUnixStream),
}

/// The worker count and connection limits of `[server]`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Worker threads (at least one is started).
    pub workers: usize,
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Held for as long as a connection is open: its place under `max_connections` (TCP only)
/// and its count in `llamactl_http_connections`.
struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    metrics: HttpMetrics,
}

impl Slot {
    fn new(permit: Option<OwnedSemaphorePermit>, metrics: &HttpMetrics) -> Self {
        metrics.open.inc();
        Self {
            _permit: permit,
            metrics: metrics.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.open.dec();
    }
}

/// What the acceptor hands a worker.
struct Handed {
    conn: Accepted,
    peer: Peer,
    slot: Slot,
}

/// The answer to a connection over `max_connections`, written straight into the new socket.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 79\r\n\r\n{\"error\":\"too many connections ([server] max_connections); try again shortly\"}\n";

/// The running server: the acceptor and the worker threads.
pub struct Server {
    done: Vec<oneshot::Receiver<()>>,
}

/// Run on each worker thread's runtime before it serves (the daemon starts per-thread
/// background tasks there, such as the proxy's idle-connection sweep).
pub type OnWorker = std::sync::Arc<dyn Fn() + Send + Sync>;

/// What the daemon gives each worker thread: its start hook and the heartbeat slots it
/// stamps for the watchdog.
pub struct WorkerHooks {
    pub on_worker: OnWorker,
    pub heartbeats: Arc<Heartbeats>,
}

impl Server {
    /// Starts `limits.workers` threads (at least one) serving `app` on connections from `listener`,
    /// until `shutdown` turns true; then they stop accepting and finish what is in flight.
    pub fn start(
        listener: TcpListener,
        unix: Option<UnixListener>,
        app: MakeApp,
        limits: Limits,
        metrics: HttpMetrics,
        hooks: WorkerHooks,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<Self> {
        let WorkerHooks {
            on_worker,
            heartbeats,
        } = hooks;
        let mut senders = Vec::new();
        let mut done = Vec::new();
        for i in 0..limits.workers.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let (done_tx, done_rx) = oneshot::channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("llamactld-http{i}"))
                .build()?;
            let app = app.clone();
            let stop = shutdown.clone();
            let on_worker = on_worker.clone();
            let metrics = metrics.clone();
            let heartbeats = heartbeats.clone();
            std::thread::Builder::new()
                .name(format!("llamactld-http{i}"))
                .spawn(move || {
                    {
                        let _in = runtime.enter();
                        on_worker();
                        tokio::spawn(heartbeats.clone().run(i));
                        fault::wedge_worker(i);
                    }
                    runtime.block_on(worker(rx, app, limits, metrics, stop));
                    heartbeats.retire(i);
                    let _ = done_tx.send(());
                })?;
            senders.push(tx);
            done.push(done_rx);
        }
        let room = Arc::new(Semaphore::new(limits.max_connections));
        tokio::spawn(accept_loop(
            listener, unix, senders, room, metrics, shutdown,
        ));
        Ok(Self { done })
    }

    /// Waits until every worker has finished its connections.
    pub async fn join(self) -> io::Result<()> {
        for d in self.done {
            match d.await {
                Ok(()) => {}
                Err(_) => return Err(io::Error::other("an HTTP worker thread died")),
            }
        }
        Ok(())
    }
}

/// Faults a test can inject into a debug build, to prove what the daemon does about them.
/// Release builds (the packages) have none.
mod fault {
    /// `LLAMACTL_FAULT_WEDGE_HTTP_WORKER=<seconds>`: that long after start, worker 0 blocks
    /// its thread for good (as a blocking call or a busy loop would), which the watchdog must
    /// notice (`heartbeat`).
    #[cfg(debug_assertions)]
    pub fn wedge_worker(worker: usize) {
        let after = std::env::var("LLAMACTL_FAULT_WEDGE_HTTP_WORKER")
            .ok()
            .and_then(|v| v.parse::<u64>().ok());
        if let (0, Some(secs)) = (worker, after) {
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
                tracing::warn!(
                    component = "http",
                    worker,
                    "fault injected: wedging this HTTP worker (LLAMACTL_FAULT_WEDGE_HTTP_WORKER)"
                );
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            });
        }
    }

    #[cfg(not(debug_assertions))]
    pub fn wedge_worker(_worker: usize) {}
}

/// One accepted connection from either listener, made ready to hand to a worker: TCP gets
/// `TCP_NODELAY`, the Unix socket its peer's credentials. `None`: drop it.
async fn accept_one(tcp: &TcpListener, unix: Option<&UnixListener>) -> Option<(Accepted, Peer)> {
    let unix_accept = async {
        match unix {
            Some(l) => l.accept().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        a = tcp.accept() => {
            let (tcp, peer) = match a {
                Ok(a) => a,
                Err(e) => {
                    accept_error(e).await;
                    return None;
                }
            };
            // TCP_NODELAY: streamed tokens go out as they come, not after Nagle's delay.
            let _ = tcp.set_nodelay(true);
            // Leave the main runtime's reactor; the worker registers it with its own.
            match tcp.into_std() {
                Ok(t) => Some((Accepted::Tcp(t), Peer::Tcp(peer))),
                Err(e) => {
                    warn!(component = "http", error = %e, "dropping an accepted connection");
                    None
                }
            }
        }
        a = unix_accept => {
            let stream = match a {
                Ok((s, _)) => s,
                Err(e) => {
                    accept_error(e).await;
                    return None;
                }
            };
            let cred = match peer_cred(stream.as_raw_fd()) {
                Ok(c) => c,
                Err(e) => {
                    warn!(component = "http", error = %e, "no peer credentials on the admin socket; dropping the connection");
                    return None;
                }
            };
            match stream.into_std() {
                Ok(s) => Some((Accepted::Unix(s), Peer::Unix(cred))),
                Err(e) => {
                    warn!(component = "http", error = %e, "dropping an accepted connection");
                    None
                }
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    unix: Option<UnixListener>,
    workers: Vec<mpsc::UnboundedSender<Handed>>,
    room: Arc<Semaphore>,
    metrics: HttpMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            a = accept_one(&listener, unix.as_ref()) => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Some((conn, peer)) = accepted else {
            continue;
        };
        let permit = match &conn {
            Accepted::Tcp(tcp) => match room.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    refuse(tcp);
                    metrics.refused.inc();
                    continue;
                }
            },
            Accepted::Unix(_) => None,
        };
        let mut handed = Handed {
            conn,
            peer,
            slot: Slot::new(permit, &metrics),
        };
        let mut sent = false;
        for _ in 0..workers.len() {
            let w = &workers[next % workers.len()];
            next = next.wrapping_add(1);
            match w.send(handed) {
                Ok(()) => {
                    sent = true;
                    break;
                }
                // That worker is gone; try the next one.
                Err(mpsc::error::SendError(h)) => handed = h,
            }
        }
        if !sent {
            error!(
                component = "http",
                "every HTTP worker has stopped; no longer accepting"
            );
            return;
        }
    }
}

/// Answers a connection over `max_connections` with 503 and closes it, without reading its
/// request: one non-blocking write into an empty send buffer, which does not block the
/// acceptor.
fn refuse(tcp: &StdTcpStream) {
    let mut w = tcp;
    let _ = w.write(REFUSED);
    let _ = tcp.shutdown(Shutdown::Write);
}

/// One worker thread's loop: serves each connection the acceptor hands it in a task of its
/// own; on shutdown, stops taking new ones and lets the open ones finish what is in flight.
async fn worker(
    mut rx: mpsc::UnboundedReceiver<Handed>,
    app: MakeApp,
    limits: Limits,
    metrics: HttpMetrics,
    mut stop: watch::Receiver<bool>,
) {
    // Every connection task holds a receiver of `closing`; dropping them all ends the wait.
    let (closing_tx, closing_rx) = watch::channel(false);
    loop {
        let handed = tokio::select! {
            h = rx.recv() => match h {
                Some(h) => h,
                None => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let io = match handed.conn {
            Accepted::Tcp(t) => TcpStream::from_std(t).map(Conn::Tcp),
            Accepted::Unix(u) => UnixStream::from_std(u).map(Conn::Unix),
        };
        let io = match io {
            Ok(io) => io,
            Err(e) => {
                warn!(component = "http", error = %e, "dropping a connection");
                continue;
            }
        };
        let app = app.for_peer(handed.peer);
        let closing = closing_rx.clone();
        let slot = handed.slot;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            super::lane::serve(io, app, limits, &metrics, closing).await;
            drop(slot);
        });
    }
    drop(closing_rx);
    let _ = closing_tx.send(true);
    closing_tx.closed().await;
}

/// Serves a connection with hyper (everything but model requests; see `lane`).
pub(super) async fn serve_hyper<I>(
    io: I,
    app: super::app::App,
    limits: Limits,
    metrics: &HttpMetrics,
    mut closing: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut app = app.clone();
        app.call(req.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = closing.wait_for(|c| *c) => None,
    };
    let served = match served {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        if e.is_timeout() {
            metrics.header_timeouts.inc();
        } else {
            debug!(component = "http", error = %e, "connection ended with an error");
        }
    }
}

/// Connection errors (the peer reset before accept) are nothing; running out of file
/// descriptors is worth a warning and a pause rather than a busy loop.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    warn!(component = "http", error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A connection from either listener.
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    /// Waits until the peer sends something or closes: `true` for a close (or a reset), `false`
    /// for data, which stays unread.
    pub async fn peer_closed(&self) -> bool {
        loop {
            let peeked = match self {
                Conn::Tcp(s) => match s.readable().await {
                    Ok(()) => s.try_io(tokio::io::Interest::READABLE, || peek(s.as_raw_fd())),
                    Err(_) => return true,
                },
                Conn::Unix(s) => match s.readable().await {
                    Ok(()) => s.try_io(tokio::io::Interest::READABLE, || peek(s.as_raw_fd())),
                    Err(_) => return true,
                },
            };
            match peeked {
                Ok(0) => return true,
                Ok(_) => return false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return true,
            }
        }
    }

    /// Completes when the peer closes the connection; never if it sends something first.
    pub async fn closed(&self) {
        if !self.peer_closed().await {
            std::future::pending::<()>().await;
        }
    }
}

/// Looks at the next byte of a socket without taking it: `Ok(0)` at its end.
fn peek(fd: std::os::fd::RawFd) -> io::Result<usize> {
    let mut byte = 0u8;
    // SAFETY: `recv` writes at most 1 byte into `byte`, which lives across the call; `fd` is the
    // caller's open socket.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
