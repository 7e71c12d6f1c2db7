//! Per-request metrics and debug logging. The `route` label is the matched route template (never
//! the raw path), so a scanner probing random URLs cannot blow up label cardinality.

use super::AppState;
use crate::telemetry;
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
    let span = server_span(&req, method, route.as_ref());
    let res = span.run(next.run(req)).await;
    let route = route.as_ref().map_or(UNMATCHED, |r| r.as_str());
    if span.is_recording() {
        let status = res.status().as_u16();
        span.set(telemetry::Attr::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.fail(format!("HTTP {status}"));
        }
    }
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

/// An API request's trace span (HTTP semantic conventions: named `{method} {route}` after the
/// route template, never the raw path); empty unless traces are on and it is sampled.
fn server_span(
    req: &Request<Body>,
    method: &str,
    route: Option<&MatchedPath>,
) -> telemetry::OpSpan {
    if !telemetry::enabled() {
        return telemetry::OpSpan::default();
    }
    let name = match route {
        Some(r) => format!("{method} {}", r.as_str()),
        None => method.to_string(),
    };
    let mut attrs = vec![
        telemetry::Attr::new("http.request.method", method.to_string()),
        telemetry::Attr::new("url.path", req.uri().path().to_string()),
    ];
    if let Some(r) = route {
        attrs.push(telemetry::Attr::new("http.route", r.as_str().to_string()));
    }
    telemetry::OpSpan::server(name, req.headers(), attrs)
}

/// `record` for a model request (`app.rs`, `lane`): its series looked up once per status.
pub fn record_model(
    state: &AppState,
    route: &'static str,
    status: u16,
    secs: f64,
    request_id: Option<&HeaderValue>,
) {
    state
        .metrics
        .observe_model_request("POST", route, status, secs);
    log(route, "POST", status, secs, request_id);
}

fn log(route: &str, method: &str, status: u16, secs: f64, request_id: Option<&HeaderValue>) {
    tracing::debug!(
        method,
        route,
        status,
        duration_ms = secs * 1000.0,
        request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or(""),
        "request"
    );
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
    log(route, method, status, secs, request_id);
}
