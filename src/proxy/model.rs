//! Model requests (`POST /v1/...`, `/infill`): the body's `model` field routes the request to an
//! instance, which is started on demand, and the request is sent to it. Both front doors end
//! here: the router's (`model_request`, the answer streamed through the tap) and the lane's
//! (`forward_model`, which passes the answer on itself).

use super::{endpoint, forward, intake, oai_error, op_error, read_body, send, upstream};
use super::{Caller, Outgoing, Proxy, ENDPOINTS};
use crate::telemetry;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;

#[derive(Deserialize)]
struct ModelField {
    model: Option<String>,
}

/// A model request: routed by its `model` field, started on demand, forwarded. An instance the
/// caller may not use answers exactly as an unknown model would, so names do not leak.
pub async fn model_request(s: &Proxy, req: Request, caller: Arc<dyn Caller>) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let cfg = s.config();
    let (bytes, held) = match read_body(s, &cfg, &parts.headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let req = Incoming {
        method: &parts.method,
        path_and_query,
        headers: &parts.headers,
        started,
    };
    match forward_model(s, req, bytes, held, caller).await {
        Ok(f) => f.respond(),
        Err(r) => r,
    }
}

/// A model request whose body has been read: what `forward_model` needs of it.
pub struct Incoming<'a> {
    pub method: &'a axum::http::Method,
    /// The request target as the client sent it (origin form).
    pub path_and_query: &'a str,
    pub headers: &'a axum::http::HeaderMap,
    /// When the request arrived.
    pub started: Instant,
}

impl Incoming<'_> {
    fn path(&self) -> &str {
        let pq = self.path_and_query;
        pq.split_once('?').map_or(pq, |(p, _)| p)
    }
}

/// A backend's answer on its way to the client: its head, its body still to be read, and what
/// the metrics, the token tap and the trace need of it.
pub struct Forward {
    pub head: upstream::Head,
    pub body: upstream::Body,
    pub watch: forward::Watch,
}

impl Forward {
    /// As a response whose body streams through the token tap (the router's way).
    pub fn respond(self) -> Response {
        forward::respond(self.head, self.body, self.watch)
    }
}

/// Routes a model request whose `body` has been read (holding `held` of the budget) by its
/// `model` field, starts its instance on demand, sends it, and returns the backend's answer
/// once its head has come; `Err` is the answer to give instead.
pub async fn forward_model(
    s: &Proxy,
    req: Incoming<'_>,
    bytes: axum::body::Bytes,
    held: intake::Held,
    caller: Arc<dyn Caller>,
) -> Result<Forward, Response> {
    let model = match serde_json::from_slice::<ModelField>(&bytes) {
        Ok(ModelField { model: Some(m) }) if !m.is_empty() => m,
        Ok(_) => {
            return Err(oai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "model_required",
                "the request has no \"model\"",
            ))
        }
        Err(e) => {
            return Err(oai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_json",
                format!("the request body is not valid JSON: {e}"),
            ))
        }
    };
    let span = model_span(&req, &model);
    let Some(handle) = s
        .instances
        .route(&model)
        .filter(|h| caller.may_use(h.name()))
    else {
        span.fail("model_not_found");
        return Err(oai_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("the model {model:?} does not exist (GET /v1/models lists them)"),
        ));
    };
    // In flight from here on, so neither idle stop nor eviction can take the instance away
    // between it being made ready and the request reaching it.
    let in_flight = handle.begin();
    let timeout = s.config().start_timeout.get();
    let queued = Instant::now();
    span.set(telemetry::Attr::new(
        "llamactl.instance",
        handle.name().to_string(),
    ));
    if let Err(e) = span
        .run(s.instances.ensure_ready(&handle, timeout, caller.clone()))
        .await
    {
        span.fail(e.to_string());
        return Err(op_error(e));
    }
    let out = Outgoing {
        in_flight,
        endpoint: endpoint(req.path()),
        started: req.started,
        usage: caller.usage(),
        model: Some((model, queued.elapsed().as_secs_f64())),
        span,
        _held: held,
    };
    send(s, out, req.method, req.headers, req.path_and_query, bytes).await
}

/// The span of a model request (OpenTelemetry GenAI: named `{operation} {model}`), a child
/// of the client's `traceparent`; empty unless traces are on and the trace is sampled.
fn model_span(req: &Incoming<'_>, model: &str) -> telemetry::OpSpan {
    if !telemetry::enabled() {
        return telemetry::OpSpan::default();
    }
    let path = req.path();
    let endpoint = endpoint(path);
    let operation = match ENDPOINTS.get(endpoint) {
        Some(&"chat_completions" | &"messages") => "chat",
        Some(&"completions" | &"infill") => "text_completion",
        Some(&"embeddings") => "embeddings",
        Some(&"rerank") => "rerank",
        _ => "other",
    };
    telemetry::OpSpan::server(
        format!("{operation} {model}"),
        req.headers,
        vec![
            telemetry::Attr::new("gen_ai.operation.name", operation),
            telemetry::Attr::new("gen_ai.request.model", model.to_string()),
            telemetry::Attr::new("http.request.method", req.method.as_str().to_string()),
            telemetry::Attr::new("http.route", path.to_string()),
        ],
    )
}
