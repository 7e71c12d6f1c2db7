//! The tap's behaviour against real sockets: a client leaving, a backend going silent, bursts
//! and slow streams.

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
    let series = std::sync::Arc::new(InstanceSeries::new(&metrics, "t", super::super::ENDPOINTS));
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
