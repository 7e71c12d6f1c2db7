//! Kept-alive HTTP/1.1 connections to backends, one pool per HTTP worker thread.
//!
//! Why not hyper-util's pooled client: it spawns a task per request to notice when the
//! connection is free again, and locks a shared pool map on every checkout and return. Here a
//! connection goes back to its thread's list when the response body is done with (the `Lease`
//! is dropped), and a checkout takes the most recently used one that is ready. Connections are
//! made and driven on the thread that uses them, so a request never wakes another thread.
//!
//! A request that a pooled connection could not take (the backend closed it while idle) is
//! retried on another connection; once a request has been written it is never retried, as a
//! generation must not run twice.

use axum::body::Bytes;
use axum::http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// A connection unused this long is closed (the backend may have forgotten it already).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per backend and thread; more are closed when returned.
const MAX_IDLE: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Sender = SendRequest<Full<Bytes>>;

struct Idle {
    tx: Sender,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<String, Vec<Idle>>> = RefCell::new(HashMap::new());
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// A connection lent to one request; it returns to the pool when dropped.
pub struct Lease {
    addr: String,
    tx: Option<Sender>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        // A body dropped half-read closes the connection; hyper marks it closed.
        if tx.is_closed() {
            return;
        }
        let addr = std::mem::take(&mut self.addr);
        let _ = IDLE.try_with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(addr).or_default();
            if list.len() < MAX_IDLE {
                list.push(Idle {
                    tx,
                    since: Instant::now(),
                });
            }
        });
    }
}

/// The most recently returned connection to `addr` that can take a request now. Closed and
/// expired ones are dropped on the way; busy ones (a body still streaming) stay.
fn checkout(addr: &str) -> Option<Sender> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(addr)?;
        let now = Instant::now();
        list.retain(|i| !i.tx.is_closed() && now.duration_since(i.since) < IDLE_TIMEOUT);
        let pos = list.iter().rposition(|i| i.tx.is_ready())?;
        Some(list.swap_remove(pos).tx)
    })
}

async fn connect(addr: &str) -> Result<Sender, UpstreamError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(addr.to_string()))?
        .map_err(|source| UpstreamError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    // Streamed tokens go out as they come, not after Nagle's delay.
    let _ = tcp.set_nodelay(true);
    let (tx, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        // Ends when either side closes; errors are the request's to report.
        let _ = conn.await;
    });
    Ok(tx)
}

/// Sends `req` (origin-form URI, `Host` set) to the backend at `addr` (`host:port`).
pub async fn send(
    addr: &str,
    mut req: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, Lease), UpstreamError> {
    while let Some(mut tx) = checkout(addr) {
        match tx.try_send_request(req).await {
            Ok(res) => return Ok((res, lease(addr, tx))),
            Err(mut e) => match e.take_message() {
                // Not written: that connection was going away. Try the next one.
                Some(r) => req = r,
                None => return Err(e.into_error().into()),
            },
        }
    }
    let mut tx = connect(addr).await?;
    let res = tx.send_request(req).await?;
    Ok((res, lease(addr, tx)))
}

fn lease(addr: &str, tx: Sender) -> Lease {
    Lease {
        addr: addr.to_string(),
        tx: Some(tx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn request(addr: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .uri("/x")
            .header("host", addr)
            .body(Full::new(Bytes::from_static(b"")))
            .expect("request")
    }

    /// A backend answering `n` requests per connection, counting connections.
    async fn backend(per_conn: usize) -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let (conns, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = conns.send(());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..per_conn {
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                    // Then close, as a backend with a keep-alive limit does.
                });
            }
        });
        (addr, rx)
    }

    async fn get(addr: &str) -> Bytes {
        use http_body_util::BodyExt;
        let (res, lease) = send(addr, request(addr)).await.expect("answer");
        let body = res.into_body().collect().await.expect("body").to_bytes();
        drop(lease);
        body
    }

    #[tokio::test(flavor = "current_thread")]
    async fn sequential_requests_reuse_one_connection() {
        let (addr, mut conns) = backend(100).await;
        for _ in 0..5 {
            assert_eq!(get(&addr).await, "ok");
            tokio::task::yield_now().await;
        }
        conns.recv().await.expect("one connection");
        assert!(conns.try_recv().is_err(), "only one connection was made");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_the_backend_closed_is_replaced() {
        // One request per connection: every pooled connection is closed when reused.
        let (addr, mut conns) = backend(1).await;
        for _ in 0..3 {
            assert_eq!(get(&addr).await, "ok");
            // Let the connection task see the close.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..3 {
            conns.recv().await.expect("a connection per request");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nothing_listening_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        drop(l);
        let e = send(&addr, request(&addr)).await.err().expect("fails");
        assert!(matches!(e, UpstreamError::Connect { .. }), "{e}");
        assert!(e.to_string().contains(&addr), "{e}");
    }
}
