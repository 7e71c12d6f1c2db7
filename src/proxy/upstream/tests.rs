//! The backend client against real sockets: framing, keep-alive reuse, error cases.

use super::chunked::{Chunked, MAX_CHUNK_LINE};
use super::head::Parsed;
use super::*;
use axum::http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

// ---------------------------------------------------------------- chunked decoding

const CHUNKED: &[u8] =
    b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: yes\r\n\r\n";

fn decode_in_pieces(input: &[u8], cuts: &[usize]) -> io::Result<(Vec<u8>, bool)> {
    let mut c = Chunked::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        buf.extend_from_slice(&input[at..cut]);
        at = cut;
        if let Some(d) = c.decode(&mut buf)? {
            out.extend_from_slice(&d);
        }
    }
    Ok((out, c.is_done()))
}

#[test]
fn chunked_bodies_decode_the_same_however_they_are_split() {
    for a in 0..=CHUNKED.len() {
        for b in a..=CHUNKED.len() {
            let (out, done) = decode_in_pieces(CHUNKED, &[a, b]).expect("decodes");
            assert_eq!(out, b"hello 0123456789", "split at {a}, {b}");
            assert!(done, "split at {a}, {b}");
        }
    }
}

#[test]
fn chunks_that_arrive_together_come_out_as_one_piece() {
    let mut c = Chunked::default();
    let mut buf = BytesMut::from(CHUNKED);
    assert_eq!(
        c.decode(&mut buf).expect("decodes").as_deref(),
        Some(&b"hello 0123456789"[..])
    );
    assert!(c.is_done() && buf.is_empty());
    // Bare LF line ends are taken too (as hyper and nginx do).
    let mut c = Chunked::default();
    let mut buf = BytesMut::from(&b"2\nhi\n0\n\n"[..]);
    assert_eq!(
        c.decode(&mut buf).expect("decodes").as_deref(),
        Some(&b"hi"[..])
    );
    assert!(c.is_done());
}

#[test]
fn malformed_chunked_bodies_are_errors() {
    for bad in [
        &b"zz\r\nhello\r\n"[..],
        b"5\r\nhelloXX\r\n",
        b"\r\n",
        b"11111111111111111\r\n",
    ] {
        let mut c = Chunked::default();
        let mut buf = BytesMut::from(bad);
        assert!(
            c.decode(&mut buf).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut c = Chunked::default();
    let mut buf = BytesMut::from(&vec![b'1'; MAX_CHUNK_LINE + 1][..]);
    assert!(c.decode(&mut buf).is_err(), "an endless size line");
}

/// Found by `tools/fuzz` (fuzz/artifacts/chunked/): a size line over the limit was refused when
/// it arrived in pieces and taken when its end came in the same read.
#[test]
fn a_long_line_is_refused_however_it_arrives() {
    let mut body = b"1;".to_vec();
    body.resize(MAX_CHUNK_LINE + 1, b'x');
    body.extend_from_slice(b"\r\nA\r\n0\r\n\r\n");
    for cuts in [&[][..], &[1000], &[MAX_CHUNK_LINE + 1]] {
        assert!(decode_in_pieces(&body, cuts).is_err(), "cut at {cuts:?}");
    }
    // The line and its CR within the limit.
    let mut fits = b"1;".to_vec();
    fits.resize(MAX_CHUNK_LINE - 1, b'x');
    fits.extend_from_slice(b"\r\nA\r\n0\r\n\r\n");
    for cuts in [&[][..], &[1000]] {
        assert_eq!(
            decode_in_pieces(&fits, cuts).unwrap(),
            (b"A".to_vec(), true)
        );
    }
}

// ---------------------------------------------------------------- heads

fn parsed(head: &str) -> Parsed {
    parse_head(head.as_bytes())
        .expect("valid")
        .expect("complete")
}

#[test]
fn response_framing_follows_rfc_9112() {
    let p = parsed("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-A: b\r\n\r\n");
    assert!(matches!(p.framing, Framing::Length(12)) && p.keep_alive);
    assert_eq!(
        p.head.headers.get("x-a").map(|v| v.as_bytes()),
        Some(&b"b"[..])
    );
    assert!(
        p.head.headers.get("content-length").is_none(),
        "hyper frames it anew"
    );
    let p = parsed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(
        matches!(p.framing, Framing::Chunked(_)),
        "a coding wins over a length"
    );
    assert!(
        !p.keep_alive,
        "but the connection is not trusted afterwards"
    );
    assert!(p.head.headers.get("transfer-encoding").is_none());
    let p = parsed(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert!(matches!(p.framing, Framing::Chunked(_)) && p.keep_alive);
    let p = parsed("HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 4\r\n\r\n");
    assert!(matches!(p.framing, Framing::Length(4)));
    let p = parsed("HTTP/1.1 200 OK\r\n\r\n");
    assert!(matches!(p.framing, Framing::Eof));
    let p = parsed("HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n");
    assert!(!p.keep_alive);
    let p = parsed("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(!p.keep_alive, "HTTP/1.0 closes unless it says keep-alive");
    let p = parsed("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n");
    assert!(p.keep_alive);
    assert_eq!(
        p.len,
        "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n".len()
    );
}

#[test]
fn incomplete_and_invalid_heads() {
    assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le")
        .expect("valid")
        .is_none());
    for bad in [
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        "SMTP ready\r\n\r\n",
        "HTTP/1.1 042 What\r\n\r\n",
    ] {
        assert!(parse_head(bad.as_bytes()).is_err(), "{bad:?}");
    }
}

#[test]
fn request_heads_drop_this_hops_headers() {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("connection", HeaderValue::from_static("keep-alive"));
    h.insert("host", HeaderValue::from_static("front:8080"));
    h.insert("content-length", HeaderValue::from_static("999"));
    h.insert("expect", HeaderValue::from_static("100-continue"));
    h.insert(
        "authorization",
        HeaderValue::from_static("Bearer llk_client"),
    );
    h.insert("x-api-key", HeaderValue::from_static("llk_client2"));
    let head = encode_head(&Method::POST, "/v1/x?a=1", &h, "127.0.0.1:9", 2, None).expect("valid");
    let head = String::from_utf8(head).expect("ascii");
    assert!(
        head.starts_with("POST /v1/x?a=1 HTTP/1.1\r\nhost: 127.0.0.1:9\r\n"),
        "{head}"
    );
    assert!(
        head.contains("content-type: application/json\r\n"),
        "{head}"
    );
    // The client's credentials for llamactld never reach the backend.
    assert!(!head.contains("llk_client"), "{head}");
    assert!(head.contains("x-forwarded-proto: http\r\n"), "{head}");
    assert!(head.ends_with("content-length: 2\r\n\r\n"), "{head}");
    for gone in ["connection", "front:8080", "999", "expect"] {
        assert!(!head.contains(gone), "{gone} in {head}");
    }
    let get = encode_head(
        &Method::GET,
        "/slots",
        &HeaderMap::new(),
        "h:1",
        0,
        Some("sk-backend"),
    )
    .expect("valid");
    let get = String::from_utf8(get).expect("ascii");
    assert!(!get.contains("content-length"), "{get}");
    // The instance's own key is what the backend sees.
    assert!(
        get.contains("authorization: Bearer sk-backend\r\n"),
        "{get}"
    );
}

#[test]
fn a_target_that_would_end_the_request_line_is_refused() {
    for bad in [
        "/health HTTP/1.1\r\nHost: x\r\n\r\nPOST /completion",
        "/a b",
        "/a\tb",
        "/a\x7f",
        "health",
        "",
    ] {
        assert!(
            encode_head(&Method::GET, bad, &HeaderMap::new(), "h:1", 0, None).is_err(),
            "{bad:?}"
        );
    }
    assert!(encode_head(
        &Method::GET,
        "/a%0D%0Ab?x=%20",
        &HeaderMap::new(),
        "h:1",
        0,
        None
    )
    .is_ok());
}

// ---------------------------------------------------------------- against sockets

/// A backend that answers each request (head, then `content-length` body bytes) on a
/// connection with the next of `answers`, then closes (at once for an empty answer); counts
/// connections and requests.
struct Backend {
    addr: String,
    conns: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

async fn backend(answers: Vec<&'static str>) -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let conns = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (conns.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let answers = answers.clone();
            let r = r.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for answer in answers {
                    if read_request(&mut s, &mut seen).await.is_none() {
                        return;
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    if answer.is_empty() {
                        // Closes as the request arrives, without answering.
                        return;
                    }
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
                // Then close, as a backend with a keep-alive limit does.
            });
        }
    });
    Backend {
        addr,
        conns,
        requests,
    }
}

/// Reads one request (head and body); `None` once the client closed.
async fn read_request(s: &mut TcpStream, seen: &mut Vec<u8>) -> Option<()> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if seen.len() >= end + 4 + len {
                seen.drain(..end + 4 + len);
                return Some(());
            }
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

const LIMITS: HeadLimits = HeadLimits {
    timeout: Duration::from_secs(30),
    max_interim: 8,
};

async fn request(addr: &str, method: Method) -> Result<(Head, Body), UpstreamError> {
    request_with(addr, method, LIMITS).await
}

async fn request_with(
    addr: &str,
    method: Method,
    limits: HeadLimits,
) -> Result<(Head, Body), UpstreamError> {
    let body = Bytes::from_static(b"{}");
    let head =
        encode_head(&method, "/x", &HeaderMap::new(), addr, body.len(), None).expect("valid");
    send(addr, &head, &body, &method, limits).await
}

async fn fetch(addr: &str) -> Result<(StatusCode, Bytes), String> {
    fetch_with(addr, Method::POST).await
}

async fn fetch_with(addr: &str, method: Method) -> Result<(StatusCode, Bytes), String> {
    let (head, body) = request(addr, method).await.map_err(|e| e.to_string())?;
    let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((head.status, bytes))
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test(flavor = "current_thread")]
async fn sequential_requests_reuse_one_connection() {
    let b = backend(vec![OK; 10]).await;
    for _ in 0..5 {
        assert_eq!(
            fetch(&b.addr).await,
            Ok((StatusCode::OK, Bytes::from("ok")))
        );
    }
    assert_eq!(b.conns.load(Ordering::SeqCst), 1);
    assert_eq!(b.requests.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_the_backend_closed_is_not_reused() {
    // One answer per connection, then the backend closes.
    let b = backend(vec![OK]).await;
    for _ in 0..3 {
        assert_eq!(
            fetch(&b.addr).await,
            Ok((StatusCode::OK, Bytes::from("ok")))
        );
        // Let the close arrive.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.conns.load(Ordering::SeqCst), 3);
    assert_eq!(
        b.requests.load(Ordering::SeqCst),
        3,
        "nothing was sent twice"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_close_the_event_loop_has_not_seen_yet_is_noticed() {
    // The backend closes right after its answer; the next request follows without the
    // event loop turning in between.
    let b = backend(vec![OK]).await;
    for _ in 0..3 {
        assert_eq!(
            fetch(&b.addr).await,
            Ok((StatusCode::OK, Bytes::from("ok")))
        );
    }
    assert_eq!(
        b.requests.load(Ordering::SeqCst),
        3,
        "nothing was sent twice"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_kept_alive_connection_closed_on_arrival_is_retried_only_for_idempotent_requests() {
    // Each connection answers one request, then takes the next one and closes without an answer.
    let b = backend(vec![OK, ""]).await;
    assert_eq!(
        fetch(&b.addr).await,
        Ok((StatusCode::OK, Bytes::from("ok")))
    );
    let e = fetch(&b.addr).await.expect_err("a POST is not sent again");
    assert!(e.contains("without answering"), "{e}");
    assert_eq!(b.requests.load(Ordering::SeqCst), 2);
    assert_eq!(
        fetch(&b.addr).await,
        Ok((StatusCode::OK, Bytes::from("ok")))
    );
    assert_eq!(
        fetch_with(&b.addr, Method::GET).await,
        Ok((StatusCode::OK, Bytes::from("ok"))),
        "a GET is sent again on a new connection"
    );
    assert_eq!(b.requests.load(Ordering::SeqCst), 5);
    assert_eq!(b.conns.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "current_thread")]
async fn expired_idle_connections_are_swept_and_the_oldest_gives_way() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let mut conns = Vec::new();
    let mut accepted = Vec::new();
    for _ in 0..MAX_IDLE + 1 {
        conns.push(connect(&addr).await.expect("connect"));
        accepted.push(l.accept().await.expect("accept").0);
    }
    for c in conns {
        release(&addr, c);
    }
    let idle = |addr: &str| IDLE.with(|i| i.borrow().get(addr).map_or(0, Vec::len));
    assert_eq!(idle(&addr), MAX_IDLE);
    let mut b = [0u8; 1];
    let first = tokio::time::timeout(Duration::from_secs(10), accepted[0].read(&mut b));
    assert_eq!(
        first.await.expect("closed").expect("EOF"),
        0,
        "the oldest was closed"
    );
    sweep(Instant::now());
    assert_eq!(idle(&addr), MAX_IDLE, "not expired yet");
    sweep(Instant::now() + IDLE_TIMEOUT);
    assert_eq!(idle(&addr), 0);
    let last = tokio::time::timeout(Duration::from_secs(10), accepted[MAX_IDLE].read(&mut b));
    assert_eq!(
        last.await.expect("closed").expect("EOF"),
        0,
        "swept ones are closed"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_answer_that_says_close_is_the_connections_last() {
    let close = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
    let b = backend(vec![close, OK, OK]).await;
    for _ in 0..2 {
        assert_eq!(
            fetch(&b.addr).await,
            Ok((StatusCode::OK, Bytes::from("ok")))
        );
    }
    assert_eq!(b.conns.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn chunked_and_until_close_bodies_arrive_whole() {
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let b = backend(vec![chunked, chunked]).await;
    for _ in 0..2 {
        assert_eq!(
            fetch(&b.addr).await,
            Ok((StatusCode::OK, Bytes::from("ok")))
        );
    }
    assert_eq!(
        b.conns.load(Ordering::SeqCst),
        1,
        "a chunked answer keeps the connection"
    );
    let b = backend(vec!["HTTP/1.1 200 OK\r\n\r\nuntil close"]).await;
    assert_eq!(
        fetch(&b.addr).await,
        Ok((StatusCode::OK, Bytes::from("until close")))
    );
}

#[tokio::test(flavor = "current_thread")]
async fn interim_answers_are_skipped_and_head_answers_have_no_body() {
    let b = backend(vec![
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;
    assert_eq!(
        fetch(&b.addr).await,
        Ok((StatusCode::CREATED, Bytes::from("ok")))
    );
    let b = backend(vec!["HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n", OK]).await;
    let (head, body) = request(&b.addr, Method::HEAD).await.expect("answer");
    assert_eq!(head.status, StatusCode::OK);
    assert!(body.is_end_stream());
    drop(body);
    assert_eq!(
        fetch(&b.addr).await,
        Ok((StatusCode::OK, Bytes::from("ok")))
    );
    assert_eq!(b.conns.load(Ordering::SeqCst), 1);
}

/// A backend that reads each request and then writes `answer` over and over, never finishing.
async fn endless(answer: &'static [u8]) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                if read_request(&mut s, &mut seen).await.is_none() {
                    return;
                }
                while !answer.is_empty() && s.write_all(answer).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                // Silent: holds the connection open without a word.
                std::future::pending::<()>().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "current_thread")]
async fn a_backend_that_never_answers_times_out_at_the_head_deadline() {
    let addr = endless(b"").await;
    let limits = HeadLimits {
        timeout: Duration::from_millis(300),
        ..LIMITS
    };
    let started = std::time::Instant::now();
    let e = request_with(&addr, Method::POST, limits)
        .await
        .err()
        .expect("times out");
    assert!(matches!(e, UpstreamError::HeadTimeout(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "current_thread")]
async fn endless_interim_answers_stop_at_the_limit() {
    let addr = endless(b"HTTP/1.1 102 Processing\r\n\r\n").await;
    let e = request(&addr, Method::POST).await.err().expect("refused");
    assert!(matches!(e, UpstreamError::TooManyInterim(8)), "{e}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_backend_that_closes_without_answering_is_an_error_and_not_retried() {
    // A backend that reads the request, then closes.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = Vec::new();
            if read_request(&mut s, &mut buf).await.is_some() {
                s2.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let e = request(&addr, Method::POST).await.err().expect("fails");
    assert!(matches!(e, UpstreamError::ClosedBeforeAnswer), "{e}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_body_cut_short_is_an_error() {
    let b = backend(vec!["HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]).await;
    let e = fetch(&b.addr).await.expect_err("cut short");
    assert!(e.contains("before the end of the body"), "{e}");
    let b = backend(vec![
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
    ])
    .await;
    assert!(fetch(&b.addr).await.is_err());
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_a_body_half_read_closes_its_connection() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut buf = Vec::new();
        read_request(&mut s, &mut buf).await.expect("request");
        s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
            .await
            .expect("write");
        // Wait for the proxy side to go away.
        let mut b = [0u8; 16];
        let n = s.read(&mut b).await.unwrap_or(0);
        let _ = closed_tx.send(n);
    });
    let (_, mut body) = request(&addr, Method::POST).await.expect("answer");
    let f = body.frame().await.expect("a frame").expect("data");
    assert_eq!(f.into_data().ok().as_deref(), Some(&b"abc"[..]));
    drop(body);
    let n = tokio::time::timeout(Duration::from_secs(10), closed_rx)
        .await
        .expect("the backend sees the close")
        .expect("sent");
    assert_eq!(n, 0, "EOF, not another request");
}

#[tokio::test(flavor = "current_thread")]
async fn nothing_listening_is_a_connect_error() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    drop(l);
    let e = request(&addr, Method::POST).await.err().expect("fails");
    assert!(matches!(e, UpstreamError::Connect { .. }), "{e}");
    assert!(e.to_string().contains(&addr), "{e}");
}

#[tokio::test(flavor = "current_thread")]
async fn an_oversized_head_is_refused() {
    let huge: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\n",
            "a".repeat(MAX_HEAD + 10)
        )
        .into_boxed_str(),
    );
    let b = backend(vec![huge]).await;
    let e = fetch(&b.addr).await.expect_err("refused");
    assert!(e.contains("response head over"), "{e}");
}
