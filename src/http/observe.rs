//! Per-request metrics and debug logging. The `route` label is the matched route template (never
//! the raw path), so a scanner probing random URLs cannot blow up label cardinality.

use super::AppState;
use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{Method, Request};
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
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| UNMATCHED.to_string());
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let res = next.run(req).await;
    let secs = start.elapsed().as_secs_f64();
    let status = res.status().as_u16();
    state.metrics.observe_request(method, &route, status, secs);
    tracing::debug!(
        method,
        route = %route,
        status,
        duration_ms = secs * 1000.0,
        request_id = %request_id,
        "request"
    );
    res
}
