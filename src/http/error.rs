//! Every error the API returns is JSON in OpenAI's error shape (`{"error": {"message", "type",
//! "code"}}`), so one client-side parser handles the management API and, later, the `/v1` proxy.

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// A short machine-readable kind for a status.
fn kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        413 => "payload_too_large",
        421 => "misdirected_request",
        415 => "unsupported_media_type",
        422 => "invalid_request",
        429 => "rate_limited",
        503 => "unavailable",
        507 => "insufficient_storage",
        s if s >= 500 => "internal_error",
        _ => "error",
    }
}

pub fn error_body(status: StatusCode, message: &str) -> serde_json::Value {
    json!({ "error": { "message": message, "type": kind(status), "code": status.as_u16() } })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = error_body(self.status, &self.message);
        (self.status, axum::Json(body)).into_response()
    }
}

/// 404 for anything no route matched, naming what was asked for.
pub async fn not_found(req: Request<Body>) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {} {}", req.method(), req.uri().path()),
    )
}

/// Rewrites error responses that are not JSON (axum's 405, extractor rejections, tower-http's
/// timeout) into the JSON shape, keeping their text as the message. A general fix in one place,
/// rather than a special case per source of errors.
pub async fn json_errors(req: Request<Body>, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).trim().to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed for this endpoint".to_string(),
        StatusCode::REQUEST_TIMEOUT => "request timed out".to_string(),
        _ => text,
    };
    let body = serde_json::to_vec(&error_body(status, &message)).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

/// Refuses a body whose declared length is over the limit before reading any of it. Bodies
/// without a length are capped by axum's `DefaultBodyLimit` as they are read.
pub async fn limit_declared_body(
    axum::extract::State(max): axum::extract::State<u64>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&l| l > max) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {len} bytes exceeds the limit of {max} bytes"),
        )
        .into_response();
    }
    next.run(req).await
}
