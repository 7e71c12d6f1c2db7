//! Per-request metrics and debug logging. The `route` label is the matched route template (never
//! the raw path), so a scanner probing random URLs cannot blow up label cardinality.

use super::AppState;
use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderValue, Method, Request};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use std::time::Instant;

/// Label for requests no route matched.
pub const UNMATCHED: &str = "unmatched";

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

pub async fn observe(
    State(state): State<Arc<AppState>>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    // `MatchedPath` and `HeaderValue` clone by reference count.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let request_id = req.headers().get("x-request-id").cloned();
    let res = next.run(req).await;
    let route = route.as_ref().map_or(UNMATCHED, |r| r.as_str());
    record(
        &state,
        method,
        route,
        res.status().as_u16(),
        start.elapsed().as_secs_f64(),
        request_id.as_ref(),
    );
    res
}

/// Counts one request in the API metrics and logs it at debug level.
pub fn record(
    state: &AppState,
    method: &str,
    route: &str,
    status: u16,
    secs: f64,
    request_id: Option<&HeaderValue>,
) {
    state.metrics.observe_request(method, route, status, secs);
    tracing::debug!(
        method,
        route,
        status,
        duration_ms = secs * 1000.0,
        request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or(""),
        "request"
    );
}
