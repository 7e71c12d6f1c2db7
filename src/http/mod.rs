//! The HTTP API: health endpoints, `/metrics`, JSON errors, and the middleware every route shares
//! (request ids, timeouts, body limits, request metrics).

mod app;
pub mod audit;
pub mod detach;
pub mod error;
pub mod guard;
pub mod health;
pub mod heartbeat;
mod instances;
mod keys;
pub(crate) mod lane;
mod observe;
mod request_id;
pub mod serve;
pub mod socket;
mod state;

pub use state::{AppState, ReloadStatus};

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Router};
use std::sync::Arc;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};

use crate::metrics::Format;
use error::ApiError;

/// Makes the service each connection runs: model requests straight to the proxy, the rest via
/// `router`; every request through `guard`.
pub fn app(state: Arc<AppState>) -> app::MakeApp {
    app::MakeApp::new(state.clone(), router(state))
}

/// Builds the router. The metrics path is fixed here (at start); whether metrics are served is
/// read per request, so a reload can switch them off and on.
pub fn router(state: Arc<AppState>) -> Router {
    let cfg = state.config();
    let server = &cfg.config.server;
    let metrics_path = cfg.config.monitoring.prometheus.path.clone();
    let metrics_route = metrics_path.clone();
    let timeout = server.request_timeout.get();
    let max_body = server.max_body_bytes;

    // The management API: JSON errors, a request deadline, a small body limit.
    let api = Router::new()
        .route("/api/health/live", get(health::live))
        .route("/api/health", get(health::ready))
        .route("/api/system/health", get(health::system))
        .route(&metrics_route, get(metrics))
        .merge(instances::routes())
        .merge(keys::routes())
        .merge(audit::routes())
        .fallback(error::not_found)
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn_with_state(timeout, deadline))
        .layer(DefaultBodyLimit::max(
            usize::try_from(max_body).unwrap_or(usize::MAX),
        ))
        .layer(middleware::from_fn_with_state(
            max_body,
            error::limit_declared_body,
        ));
    // The model proxy: its own (larger) body limit, read per request from `[proxy]` so a
    // reload changes it; no deadline (generations stream for minutes), and the backend's
    // responses passed through untouched.
    let proxy = crate::proxy::routes::<AppState>();

    // Layers run bottom-up for requests: the request id is set first, so every later layer and
    // the handler see it; the metrics observer sees the final status after JSON rewriting and
    // access control (a refused request is counted with its route and status).
    let metrics_path: Arc<str> = metrics_path.into();
    proxy
        .merge(api)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            audit::audited,
        ))
        .layer(middleware::from_fn_with_state(
            (state.clone(), metrics_path),
            guard::guard,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(request_id::FastRequestId))
        .with_state(state)
}

/// `[server] request_timeout` for an API request (408 after it), except an instance operation,
/// which runs detached and whose wait the audit layer bounds (`detach`).
async fn deadline(
    axum::extract::State(timeout): axum::extract::State<std::time::Duration>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    if req.extensions().get::<detach::Detached>().is_some() {
        return next.run(req).await;
    }
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than {} s ([server] request_timeout)",
                timeout.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

/// `GET /metrics`: Prometheus text 0.0.4, or OpenMetrics when the scraper asks for it.
async fn metrics(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    headers: HeaderMap,
) -> Response {
    let cfg = state.config();
    let m = &cfg.config.monitoring;
    if !(m.enabled && m.prometheus.enabled) {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics are disabled ([monitoring] enabled / [monitoring.prometheus] enabled)",
        )
        .into_response();
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    // Reading cgroup and procfs files is blocking I/O: keep it off the async workers.
    let m = state.metrics.clone();
    let encoded = tokio::task::spawn_blocking(move || m.encode(format))
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("metrics task failed: {e}")));
    match encoded {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e:#}"),
        )
        .into_response(),
    }
}
