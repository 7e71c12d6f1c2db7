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

use super::app::App;
use axum::ServiceExt;
use std::future::IntoFuture;
use std::io;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

/// The running server: the acceptor and the worker threads.
pub struct Server {
    done: Vec<oneshot::Receiver<io::Result<()>>>,
}

impl Server {
    /// Starts `workers` threads (at least one) serving `app` on connections from `listener`,
    /// until `shutdown` turns true; then they stop accepting and finish what is in flight.
    pub fn start(
        listener: TcpListener,
        app: App,
        workers: usize,
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
            std::thread::Builder::new()
                .name(format!("llamactld-http{i}"))
                .spawn(move || {
                    // Kept-alive backend connections are per worker thread; so is their sweep.
                    runtime.spawn(crate::proxy::idle_sweeper());
                    let listener = Handoff { rx, local };
                    let served = runtime.block_on(
                        axum::serve(listener, app.into_make_service())
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
        tokio::spawn(accept_loop(listener, senders, shutdown));
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

async fn accept_loop(
    listener: TcpListener,
    workers: Vec<mpsc::UnboundedSender<(StdTcpStream, SocketAddr)>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                accept_error(e).await;
                continue;
            }
        };
        // TCP_NODELAY: streamed tokens go out as they come, not after Nagle's delay.
        let _ = tcp.set_nodelay(true);
        // Leave the main runtime's reactor; the worker registers it with its own.
        let tcp = match tcp.into_std() {
            Ok(t) => t,
            Err(e) => {
                warn!(component = "http", error = %e, "dropping an accepted connection");
                continue;
            }
        };
        let mut conn = (tcp, peer);
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
    rx: mpsc::UnboundedReceiver<(StdTcpStream, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for Handoff {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let Some((tcp, peer)) = self.rx.recv().await else {
                // The acceptor is gone (shutting down): graceful shutdown ends `serve`.
                return std::future::pending().await;
            };
            match TcpStream::from_std(tcp) {
                Ok(t) => return (t, peer),
                Err(e) => warn!(component = "http", error = %e, "dropping a connection"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
