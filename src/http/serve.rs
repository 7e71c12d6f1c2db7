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

use super::app::MakeApp;
use crate::auth::{peer::peer_cred, Peer};
use std::future::IntoFuture;
use std::io;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

/// An accepted connection on its way to a worker.
enum Accepted {
    Tcp(StdTcpStream),
    Unix(StdUnixStream),
}

/// The running server: the acceptor and the worker threads.
pub struct Server {
    done: Vec<oneshot::Receiver<io::Result<()>>>,
}

/// Run on each worker thread's runtime before it serves (the daemon starts per-thread
/// background tasks there, such as the proxy's idle-connection sweep).
pub type OnWorker = std::sync::Arc<dyn Fn() + Send + Sync>;

impl Server {
    /// Starts `workers` threads (at least one) serving `app` on connections from `listener`,
    /// until `shutdown` turns true; then they stop accepting and finish what is in flight.
    pub fn start(
        listener: TcpListener,
        unix: Option<UnixListener>,
        app: MakeApp,
        workers: usize,
        on_worker: OnWorker,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let mut senders = Vec::new();
        let mut done = Vec::new();
        for i in 0..workers.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let (done_tx, done_rx) = oneshot::channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("llamactld-http{i}"))
                .build()?;
            let app = app.clone();
            let mut stop = shutdown.clone();
            let on_worker = on_worker.clone();
            std::thread::Builder::new()
                .name(format!("llamactld-http{i}"))
                .spawn(move || {
                    {
                        let _in = runtime.enter();
                        on_worker();
                    }
                    let listener = Handoff { rx, local };
                    let served = runtime.block_on(
                        axum::serve(listener, app)
                            .with_graceful_shutdown(async move {
                                let _ = stop.wait_for(|s| *s).await;
                            })
                            .into_future(),
                    );
                    let _ = done_tx.send(served);
                })?;
            senders.push(tx);
            done.push(done_rx);
        }
        tokio::spawn(accept_loop(listener, unix, senders, shutdown));
        Ok(Self { done })
    }

    /// Waits until every worker has finished its connections.
    pub async fn join(self) -> io::Result<()> {
        for d in self.done {
            match d.await {
                Ok(r) => r?,
                Err(_) => return Err(io::Error::other("an HTTP worker thread died")),
            }
        }
        Ok(())
    }
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
    workers: Vec<mpsc::UnboundedSender<(Accepted, Peer)>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            a = accept_one(&listener, unix.as_ref()) => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Some(mut conn) = accepted else {
            continue;
        };
        let mut sent = false;
        for _ in 0..workers.len() {
            let w = &workers[next % workers.len()];
            next = next.wrapping_add(1);
            match w.send(conn) {
                Ok(()) => {
                    sent = true;
                    break;
                }
                // That worker is gone; try the next one.
                Err(mpsc::error::SendError(c)) => conn = c,
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

/// A worker's side of the hand-off: connections the acceptor dealt to it.
struct Handoff {
    rx: mpsc::UnboundedReceiver<(Accepted, Peer)>,
    local: SocketAddr,
}

impl axum::serve::Listener for Handoff {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        loop {
            let Some((conn, peer)) = self.rx.recv().await else {
                // The acceptor is gone (shutting down): graceful shutdown ends `serve`.
                return std::future::pending().await;
            };
            let io = match conn {
                Accepted::Tcp(t) => TcpStream::from_std(t).map(Conn::Tcp),
                Accepted::Unix(u) => UnixStream::from_std(u).map(Conn::Unix),
            };
            match io {
                Ok(io) => return (io, peer),
                Err(e) => warn!(component = "http", error = %e, "dropping a connection"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer::Tcp(self.local))
    }
}

/// A connection from either listener.
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
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
