//! A tiny fake OpenAI-compatible backend (llama-server's shapes) for fast lifecycle tests.
//!
//! `cargo test` builds it as an example; tests run `target/debug/examples/fake_backend`:
//!
//! ```text
//! fake_backend --host 127.0.0.1 --port N [--model NAME] [--ready-after MS] [--fail-after MS]
//!              [--chunk-delay MS] [--first-token-delay MS] [--misbehave hang|interim|stall]
//! ```
//!
//! - stdout (one flushed line each; under systemd it goes to the journal):
//!   `fake_backend: listening on HOST:PORT model=NAME`, then `fake_backend: <METHOD> <PATH>` per request
//!   (with ` traceparent=<value>` when the request carried one).
//! - `GET /health`: `503 {"error":{"message":"Loading model"}}` until `--ready-after` has elapsed,
//!   then `200 {"status":"ok"}`. Like llama-server, every other endpoint also answers that 503 while
//!   "loading".
//! - `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (also without `/v1`): a
//!   fixed completion ("Hello from fake", usage 5/3/8); with `"stream": true` an SSE stream of 3
//!   chunks, a usage chunk and `data: [DONE]`, `--chunk-delay` apart.
//! - `--first-token-delay MS`: a chat stream starts with a role-only chunk (`"content":null`, as
//!   llama-server sends) at once, and its first text comes MS later: the time to first token
//!   then differs from the time to first byte.
//! - `--fail-after MS`: exits with status 3 after that long (for restart-policy tests).
//! - `--misbehave hang`: `/health` answers 200; every other request is read and never answered
//!   (the connection stays open). `--misbehave interim`: the same, but it is answered
//!   `102 Processing` every 300 ms, for ever; `--misbehave stall`: answered with an SSE head and
//!   one event, then nothing. For the proxy's backend drills.
//! - SIGTERM / SIGINT: graceful shutdown, exit status 0.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use clap::Parser;
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Fake OpenAI-compatible LLM server (llama-server's response shapes) for tests.
#[derive(Parser, Debug)]
#[command(name = "fake_backend")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long)]
    port: u16,
    /// Model id reported by /v1/models and in completions.
    #[arg(long, default_value = "fake")]
    model: String,
    /// Answer 503 "Loading model" (on /health and every other endpoint) for this many ms after start.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    ready_after: u64,
    /// Exit with status 3 this many milliseconds after start.
    #[arg(long, value_name = "MS")]
    fail_after: Option<u64>,
    /// Pause between streamed chunks, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    chunk_delay: u64,
    /// Chat streams: a role-only chunk at once, the first text this many milliseconds later.
    #[arg(long, value_name = "MS")]
    first_token_delay: Option<u64>,
    /// Answer health checks and nothing else: `hang` (never answer) or `interim` (1xx for ever).
    #[arg(long, value_name = "HOW")]
    misbehave: Option<String>,
}

/// `--misbehave`: a raw HTTP/1.1 loop (axum cannot send bare 1xx answers).
async fn misbehave(listener: tokio::net::TcpListener, how: String) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (interim, stall) = match how.as_str() {
        "hang" => (false, false),
        "interim" => (true, false),
        "stall" => (false, true),
        other => {
            return Err(std::io::Error::other(format!(
                "--misbehave {other:?}: expected hang, interim or stall"
            )))
        }
    };
    loop {
        let (mut s, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&head);
            say(line.lines().next().unwrap_or(""));
            if line.starts_with("GET /health") || line.starts_with("GET /v1/health") {
                let body = r#"{"status":"ok"}"#;
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                return;
            }
            if stall {
                let event = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
                            event.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
            loop {
                if interim
                    && s.write_all(b"HTTP/1.1 102 Processing\r\n\r\n")
                        .await
                        .is_err()
                {
                    return;
                }
                // A hung backend: the request is never answered; only the peer closing ends it.
                tokio::select! {
                    r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return },
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
            }
        });
    }
}

struct AppState {
    model: String,
    ready_at: Instant,
    chunk_delay: Duration,
    first_token_delay: Option<Duration>,
    next_id: AtomicU64,
}

type Shared = Arc<AppState>;

const PIECES: [&str; 3] = ["Hello", " from", " fake"];
const PROMPT_TOKENS: u64 = 5;
const COMPLETION_TOKENS: u64 = PIECES.len() as u64;

/// One line on stdout, flushed (stdout is a pipe to the journal under systemd).
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "fake_backend: {line}");
    let _ = out.flush();
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn usage() -> Value {
    json!({
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    })
}

fn loading() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": {"message": "Loading model"}})),
    )
        .into_response()
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": status.as_u16(), "message": message, "type": kind}})),
    )
        .into_response()
}

/// Logs every request; answers 503 "Loading model" everywhere until ready (as llama-server does).
async fn log_and_gate(State(st): State<Shared>, req: Request, next: Next) -> Response {
    match req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        Some(t) => say(&format!(
            "{} {} traceparent={t}",
            req.method(),
            req.uri().path()
        )),
        None => say(&format!("{} {}", req.method(), req.uri().path())),
    }
    if Instant::now() < st.ready_at {
        return loading();
    }
    next.run(req).await
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn models(State(st): State<Shared>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": st.model, "object": "model", "created": now_secs(), "owned_by": "llamacpp"}],
    }))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

async fn chat(State(st): State<Shared>, body: Bytes) -> Response {
    complete(st, Kind::Chat, &body)
}

async fn text(State(st): State<Shared>, body: Bytes) -> Response {
    complete(st, Kind::Text, &body)
}

fn complete(st: Shared, kind: Kind, body: &[u8]) -> Response {
    let req: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "body must be a JSON object",
                )
            }
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &format!("invalid JSON: {e}"),
                )
            }
        }
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&st.model)
        .to_owned();
    let n = st.next_id.fetch_add(1, Ordering::Relaxed);
    let (id, object, chunk_object) = match kind {
        Kind::Chat => (
            format!("chatcmpl-fake{n}"),
            "chat.completion",
            "chat.completion.chunk",
        ),
        Kind::Text => (
            format!("cmpl-fake{n}"),
            "text_completion",
            "text_completion",
        ),
    };
    let created = now_secs();

    if req.get("stream").and_then(Value::as_bool) != Some(true) {
        let text: String = PIECES.concat();
        let choice = match kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }),
            Kind::Text => json!({
                "index": 0, "text": text, "logprobs": null, "finish_reason": "stop",
            }),
        };
        return Json(json!({
            "id": id, "object": object, "created": created, "model": model,
            "choices": [choice], "usage": usage(),
        }))
        .into_response();
    }

    let mut events: Vec<Value> = PIECES
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let last = i + 1 == PIECES.len();
            let finish = if last { json!("stop") } else { Value::Null };
            let choice = match kind {
                Kind::Chat if i == 0 => json!({
                    "index": 0, "delta": {"role": "assistant", "content": piece},
                    "finish_reason": finish,
                }),
                Kind::Chat => json!({
                    "index": 0, "delta": {"content": piece}, "finish_reason": finish,
                }),
                Kind::Text => json!({"index": 0, "text": piece, "finish_reason": finish}),
            };
            json!({
                "id": id, "object": chunk_object, "created": created, "model": model,
                "choices": [choice],
            })
        })
        .collect();
    events.push(json!({
        "id": id, "object": chunk_object, "created": created, "model": model,
        "choices": [], "usage": usage(),
    }));
    let first_token_delay = st.first_token_delay.filter(|_| kind == Kind::Chat);
    if first_token_delay.is_some() {
        events.insert(
            0,
            json!({
                "id": id, "object": chunk_object, "created": created, "model": model,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": null},
                             "finish_reason": null}],
            }),
        );
    }

    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let delay = st.chunk_delay;
    tokio::spawn(async move {
        let lines = events
            .iter()
            .map(|e| format!("data: {e}\n\n"))
            .chain(std::iter::once("data: [DONE]\n\n".to_owned()));
        for (i, line) in lines.enumerate() {
            let pause = match first_token_delay {
                Some(first) if i == 1 => first,
                _ if i > 0 => delay,
                _ => Duration::ZERO,
            };
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            if tx.send(Bytes::from(line)).await.is_err() {
                return; // client went away
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::new(ChannelBody(rx)))
        .expect("valid response")
}

/// A streaming body fed by a channel: each message is sent (and flushed) as soon as it arrives.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found_error", "File Not Found")
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    say(&format!("{name} received, shutting down"));
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let state: Shared = Arc::new(AppState {
        model: args.model.clone(),
        ready_at: started + Duration::from_millis(args.ready_after),
        chunk_delay: Duration::from_millis(args.chunk_delay),
        first_token_delay: args.first_token_delay.map(Duration::from_millis),
        next_id: AtomicU64::new(1),
    });

    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/completions", post(text))
        .route("/completions", post(text))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), log_and_gate))
        .with_state(state);

    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    let addr: SocketAddr = listener.local_addr()?;
    say(&format!("listening on {addr} model={}", args.model));
    if let Some(how) = args.misbehave {
        return misbehave(listener, how).await;
    }
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });

    if let Some(ms) = args.fail_after {
        tokio::spawn(async move {
            tokio::time::sleep_until((started + Duration::from_millis(ms)).into()).await;
            say(&format!(
                "--fail-after {ms} ms reached, exiting with status 3"
            ));
            std::process::exit(3);
        });
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    let mut server = std::pin::pin!(std::future::IntoFuture::into_future(server));
    tokio::select! {
        res = &mut server => return res,
        () = shutdown_signal() => {}
    }
    let _ = stop_tx.send(());
    // Let in-flight requests finish, but never hang the unit's stop on an open connection.
    if tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .is_err()
    {
        say("connections still open after 2 s, exiting anyway");
    }
    say("stopped");
    Ok(())
}
