//! The OpenAI-compatible proxy: `/v1/...` requests are routed by their `model` field to an
//! instance (its name, `instance/model`, or an alias), starting it on demand, and streamed back.
//! `/api/v1/instances/{name}/proxy/{path}` reaches an instance directly (llama-server's `/slots`,
//! `/props`, `/metrics`). Errors use OpenAI's shape: `{"error":{"message","type","code"}}`.

mod forward;
pub(crate) mod intake;
mod model;
pub mod tokens;
pub(crate) mod upstream;

pub use forward::{Watcher, CLIENT_GONE};
pub use model::{forward_model, model_request, Forward, Incoming};
pub use upstream::{idle_sweeper, Head, RawBody, RawFraming};

use crate::config::{Live, ProxyConfig};
use crate::instance::demand::Requester;
use crate::instance::handle::{Handle, InFlight};
use crate::instance::{OpError, Rights, Supervisor};
use crate::metrics::proxy::InstanceSeries;
use crate::metrics::proxy::ProxyMetrics;
use crate::telemetry;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tokens::TextKey;

/// What the proxy works with: the instances, its metrics, and `[proxy]` (replaced on reload,
/// read once per request).
pub struct Proxy {
    pub instances: Arc<Supervisor>,
    metrics: ProxyMetrics,
    config: Live<ProxyConfig>,
    /// `max_buffered_bytes`, sized at start (a restart-only key).
    budget: intake::Budget,
}

impl Proxy {
    pub fn new(instances: Arc<Supervisor>, metrics: ProxyMetrics, config: ProxyConfig) -> Self {
        Self {
            instances,
            metrics,
            budget: intake::Budget::new(config.max_buffered_bytes),
            config: Live::new(config),
        }
    }

    /// `[proxy]` in force.
    pub fn config(&self) -> Arc<ProxyConfig> {
        self.config.get()
    }

    /// The instance's proxy series, made on its first request and kept on its handle.
    fn series(&self, h: &Handle) -> Arc<InstanceSeries> {
        h.ext(|| Arc::new(InstanceSeries::new(&self.metrics, h.name(), ENDPOINTS)))
            .cloned()
            .unwrap_or_else(|| Arc::new(InstanceSeries::new(&self.metrics, h.name(), ENDPOINTS)))
    }

    /// What the bodies being read or forwarded may hold together (`max_buffered_bytes`).
    pub(crate) fn budget(&self) -> &intake::Budget {
        &self.budget
    }

    /// Applies a reloaded `[proxy]`: the next request uses it.
    pub fn set_config(&self, c: ProxyConfig) {
        self.config.set(c);
    }
}

/// The state of a router that serves the proxy's routes: anything that holds a `Proxy` (the
/// HTTP layer's state, which depends on this module, not the reverse).
pub trait HasProxy: Send + Sync + 'static {
    fn proxy(&self) -> &Proxy;
}

type S<T> = State<Arc<T>>;

/// Who sends a proxied request, as far as the proxy cares: which instances it may use, its
/// rights and start admission (`Requester`), and where its token counts go. Decided above this
/// layer (an API key, the audit trail); the HTTP layer gives one to every request.
pub trait Caller: Requester {
    fn may_use(&self, instance: &str) -> bool;
    /// The API key to account this request's tokens to.
    fn usage(&self) -> Option<Arc<dyn KeyUsage>> {
        None
    }
}

/// Token accounting per API key (`llamactl_key_tokens_total`, `keys list`).
pub trait KeyUsage: Send + Sync {
    fn tokens(&self, prompt: u64, completion: u64);
}

/// The caller of a request routed through axum (set by `http::guard`).
#[derive(Clone)]
pub struct CallerExt(pub Arc<dyn Caller>);

/// A caller who may do everything (tests, internal use).
pub struct Unrestricted;

impl Requester for Unrestricted {
    fn rights(&self) -> Rights {
        Rights::ALL
    }
}

impl Caller for Unrestricted {
    fn may_use(&self, _: &str) -> bool {
        true
    }
}

pub fn routes<T: HasProxy>() -> Router<Arc<T>> {
    Router::new()
        .route("/v1/models", get(models::<T>))
        .route("/v1/{*rest}", post(by_model::<T>))
        .route("/infill", post(by_model::<T>))
        .route("/api/v1/instances/{name}/proxy/{*path}", any(direct::<T>))
}

/// OpenAI's error shape.
pub fn oai_error(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: impl Into<String>,
) -> Response {
    let body = json!({"error": {"message": message.into(), "type": kind, "code": code}});
    (status, Json(body)).into_response()
}

fn op_error(e: OpError) -> Response {
    match e {
        OpError::NotFound(m) => oai_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            m,
        ),
        OpError::Unavailable(m) | OpError::Busy(m) => {
            let mut r = oai_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "instance_unavailable",
                m,
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            r
        }
        OpError::BadRequest(m) | OpError::Conflict(m) => oai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            m,
        ),
        OpError::Failed(m) => oai_error(
            StatusCode::BAD_GATEWAY,
            "server_error",
            "instance_failed",
            m,
        ),
        OpError::Forbidden(m) => oai_error(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "permission_denied",
            m,
        ),
        OpError::NoSpace(m) => oai_error(
            StatusCode::INSUFFICIENT_STORAGE,
            "server_error",
            "insufficient_storage",
            m,
        ),
    }
}

/// The `endpoint` label values, by index.
pub const ENDPOINTS: &[&str] = &[
    "chat_completions",
    "completions",
    "embeddings",
    "rerank",
    "infill",
    "messages",
    "other",
    "direct",
];
const DIRECT: usize = 7;

/// The endpoint a request went to (index into `ENDPOINTS`): a bounded label.
fn endpoint(path: &str) -> usize {
    match path {
        "/v1/chat/completions" => 0,
        "/v1/completions" => 1,
        "/v1/embeddings" => 2,
        "/v1/rerank" | "/v1/reranking" => 3,
        "/infill" => 4,
        "/v1/messages" => 5,
        _ => 6,
    }
}

/// Where an endpoint's streamed events put generated text.
fn text_key(endpoint: usize) -> TextKey {
    match ENDPOINTS.get(endpoint) {
        Some(&"completions" | &"messages") => TextKey::Text,
        _ => TextKey::Content,
    }
}

/// `GET /v1/models`: every instance the caller may use as a model, with its state.
async fn models<T: HasProxy>(
    State(s): S<T>,
    Extension(caller): Extension<CallerExt>,
) -> Json<serde_json::Value> {
    let data: Vec<_> = s
        .proxy()
        .instances
        .models()
        .into_iter()
        .filter(|m| caller.0.may_use(&m.name))
        .map(|m| {
            json!({
                "id": m.name,
                "object": "model",
                "created": m.created,
                "owned_by": "llamactl",
                "state": m.state,
                "status": m.state.upstream_status(),
                "aliases": m.aliases,
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// Reads a request's body within `[proxy]`'s limits (see `intake`).
async fn read_body(
    s: &Proxy,
    cfg: &ProxyConfig,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<(axum::body::Bytes, intake::Held), Response> {
    let limits = intake::Limits {
        max_bytes: cfg.max_body_bytes,
        deadline: cfg.body_timeout.get(),
    };
    intake::read(limits, &s.budget, headers, body).await
}

/// `POST /v1/*` through the router (the daemon's front door calls `model_request` directly).
async fn by_model<T: HasProxy>(
    State(s): S<T>,
    Extension(caller): Extension<CallerExt>,
    req: Request,
) -> Response {
    model_request(s.proxy(), req, caller.0).await
}

/// What a direct request asks of the instance: the URL's own path after
/// `/api/v1/instances/{name}/proxy`, still percent-encoded as the client sent it, and its query.
/// (Not the router's decoded `{path}`: `%0D%0A` in it would end the request line early.)
fn direct_target(uri: &axum::http::Uri) -> Option<String> {
    let rest = uri.path().strip_prefix("/api/v1/instances/")?;
    let (_, rest) = rest.split_once('/')?;
    let path = rest.strip_prefix("proxy")?;
    if !path.starts_with('/') {
        return None;
    }
    Some(match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    })
}

/// `ANY /api/v1/instances/{name}/proxy/{path}`: straight to a running instance (no on-demand
/// start, as upstream).
async fn direct<T: HasProxy>(
    State(s): S<T>,
    Path((name, _)): Path<(String, String)>,
    Extension(caller): Extension<CallerExt>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let s = s.proxy();
    let state = match s.instances.state_of(&name) {
        Ok(v) => v,
        Err(e) => return op_error(e),
    };
    if !state.is_running() {
        return oai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "instance_not_running",
            format!("instance {name:?} is {}", state.as_str()),
        );
    }
    let Some(pq) = direct_target(req.uri()) else {
        return oai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            "not a /api/v1/instances/{name}/proxy/{path} URL",
        );
    };
    let (parts, body) = req.into_parts();
    let cfg = s.config();
    let (bytes, held) = match read_body(s, &cfg, &parts.headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(handle) = s.instances.handle(&name) else {
        return op_error(OpError::NotFound(format!("no instance named {name:?}")));
    };
    let out = Outgoing {
        in_flight: handle.begin(),
        endpoint: DIRECT,
        started,
        usage: caller.0.usage(),
        model: None,
        span: telemetry::OpSpan::default(),
        _held: held,
    };
    match send(s, out, &parts.method, &parts.headers, &pq, bytes).await {
        Ok(f) => f.respond(),
        Err(r) => r,
    }
}

/// A request on its way to an instance, and what its metrics need.
struct Outgoing {
    in_flight: InFlight,
    endpoint: usize,
    started: Instant,
    usage: Option<Arc<dyn KeyUsage>>,
    /// A model request's `model` field and the seconds it waited for its instance to be
    /// ready (`None` for a direct request: its model is the instance's own).
    model: Option<(String, f64)>,
    /// The request's trace span (empty unless traced), ended with the response's last byte.
    span: telemetry::OpSpan,
    /// The body's bytes of `max_buffered_bytes`, given back once the request is sent.
    _held: intake::Held,
}

async fn send(
    s: &Proxy,
    out: Outgoing,
    method: &axum::http::Method,
    headers: &axum::http::HeaderMap,
    path_and_query: &str,
    body: axum::body::Bytes,
) -> Result<Forward, Response> {
    let Outgoing {
        in_flight,
        endpoint,
        started,
        usage,
        model,
        span,
        _held,
    } = out;
    let cfg = s.config();
    let limits = upstream::HeadLimits {
        timeout: cfg.response_header_timeout.get(),
        max_interim: cfg.max_interim_responses,
    };
    let handle = in_flight.handle();
    let name = handle.name();
    let series = s.series(handle);
    let llm = match &model {
        Some((m, queued)) => {
            let llm = series.llm(m);
            llm.queue.observe(*queued);
            llm
        }
        None => series.llm(name),
    };
    let target = handle.target();
    let Some(addr) = target.addr.as_deref() else {
        return Err(op_error(OpError::NotFound(format!(
            "instance {name:?} has no port"
        ))));
    };
    let traceparent = span.traceparent();
    let head = match upstream::encode_head_traced(
        method,
        path_and_query,
        headers,
        addr,
        body.len(),
        target.backend_key.as_deref(),
        traceparent.as_deref(),
    ) {
        Ok(h) => h,
        Err(e) => {
            return Err(oai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                e,
            ))
        }
    };
    let answer = upstream::send(addr, &head, &body, method, limits).await;
    drop(_held);
    match answer {
        Ok((head, body)) => Ok(Forward {
            head,
            body,
            watch: forward::Watch {
                series,
                endpoint,
                started,
                _in_flight: Some(in_flight),
                usage,
                idle_timeout: cfg.backend_idle_timeout.get(),
                llm: Some((llm, text_key(endpoint))),
                span,
            },
        }),
        Err(e @ upstream::UpstreamError::HeadTimeout(_)) => {
            series.observe(endpoint, 504, started.elapsed().as_secs_f64(), None);
            span.set(telemetry::Attr::new("http.response.status_code", 504));
            span.fail(e.to_string());
            Err(oai_error(
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                "backend_timeout",
                format!("instance {name:?} did not answer in time: {e}"),
            ))
        }
        Err(e) => {
            series.observe(endpoint, 502, started.elapsed().as_secs_f64(), None);
            span.set(telemetry::Attr::new("http.response.status_code", 502));
            span.fail(e.to_string());
            Err(oai_error(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "backend_unreachable",
                format!("instance {name:?} did not answer: {e}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::direct_target;

    #[test]
    fn a_direct_target_is_the_url_as_sent_not_as_decoded() {
        let t = |u: &str| direct_target(&u.parse().expect("uri"));
        assert_eq!(
            t("/api/v1/instances/m/proxy/slots?id=1").as_deref(),
            Some("/slots?id=1")
        );
        assert_eq!(
            t("/api/v1/instances/m/proxy/health%20HTTP/1.1%0D%0AX:%20y").as_deref(),
            Some("/health%20HTTP/1.1%0D%0AX:%20y")
        );
        assert_eq!(t("/api/v1/instances/m%2Fx/proxy/a").as_deref(), Some("/a"));
        assert_eq!(t("/api/v1/instances/m/proxyx/a"), None);
        assert_eq!(t("/v1/models"), None);
    }
}
