//! The instance REST API under `/api/v1/instances`, wire-compatible with upstream Llamactl's
//! paths, verbs and success codes (201 create, 204 delete), and the seed's per-instance health
//! path. Differences: errors are JSON `{"error":{"message",...}}` and use precise codes (400, 404,
//! 409, 503) where upstream answers 500; stop of a stopped instance is a no-op 200; delete stops a
//! running instance first.

use super::error::ApiError;
use super::AppState;
use crate::instance::logs;
use crate::instance::runtime::State as RunState;
use crate::instance::spec::{self, InstanceOptions};
use crate::instance::OpError;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

type S = State<Arc<AppState>>;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/instances", get(list))
        .route(
            "/api/v1/instances/{name}",
            get(show).post(create).put(update).delete(delete),
        )
        .route("/api/v1/instances/{name}/start", post(start))
        .route("/api/v1/instances/{name}/stop", post(stop))
        .route("/api/v1/instances/{name}/restart", post(restart))
        .route("/api/v1/instances/{name}/logs", get(logs_handler))
        .route("/api/v1/instances/{name}/health", get(health))
        .route("/api/instances/{name}/health", get(health))
        .route("/api/v1/sd/prometheus", get(sd))
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        let status = match &e {
            OpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            OpError::NotFound(_) => StatusCode::NOT_FOUND,
            OpError::Conflict(_) => StatusCode::CONFLICT,
            OpError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            OpError::Busy(_) => StatusCode::CONFLICT,
            OpError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            OpError::Forbidden(_) => StatusCode::FORBIDDEN,
            OpError::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
        };
        ApiError::new(status, e.to_string())
    }
}

fn valid(name: &str) -> Result<(), ApiError> {
    spec::validate_name(name).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))
}

fn options(body: &Bytes) -> Result<InstanceOptions, ApiError> {
    spec::parse_options(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid instance options: {e}"),
        )
    })
}

async fn list(State(s): S) -> Json<serde_json::Value> {
    Json(json!(s.instances.list()))
}

async fn show(State(s): S, Path(name): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    valid(&name)?;
    Ok(Json(s.instances.get(&name)?))
}

async fn create(State(s): S, Path(name): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    valid(&name)?;
    let o = options(&body)?;
    let v = s.instances.create(&name, o).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn update(
    State(s): S,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    valid(&name)?;
    let o = options(&body)?;
    Ok(Json(s.instances.update(&name, o).await?))
}

async fn delete(State(s): S, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    valid(&name)?;
    s.instances.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start(State(s): S, Path(name): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    valid(&name)?;
    Ok(Json(s.instances.start(&name).await?))
}

async fn stop(State(s): S, Path(name): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    valid(&name)?;
    Ok(Json(s.instances.stop(&name).await?))
}

async fn restart(
    State(s): S,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    valid(&name)?;
    Ok(Json(s.instances.restart(&name).await?))
}

/// `GET /api/v1/sd/prometheus`: Prometheus `http_sd_configs` target list.
async fn sd(State(s): S) -> Json<serde_json::Value> {
    Json(json!(s.instances.sd_targets()))
}

/// `GET /api/instances/{name}/health`: 200 when ready, 503 otherwise (with the state), 404 for
/// an unknown instance.
async fn health(State(s): S, Path(name): Path<String>) -> Result<Response, ApiError> {
    valid(&name)?;
    let h = s.instances.health_of(&name)?;
    let ready = h.state == RunState::Ready;
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "name": name,
        "status": if ready { "healthy" } else { "unavailable" },
        "state": h.state,
        "health": h.health,
        "restarts": h.restarts,
        "last_error": h.last_error,
    });
    Ok((code, Json(body)).into_response())
}

#[derive(Deserialize)]
struct LogQuery {
    lines: Option<String>,
    follow: Option<bool>,
    format: Option<String>,
}

/// `GET /api/v1/instances/{name}/logs?lines=N[&follow=true][&format=json]`: text lines by
/// default (upstream's `text/plain`), each `time level identifier[pid]: message`; JSON entries
/// with `format=json` or `Accept: application/json`. Follow mode streams until the client leaves.
/// `lines` (default 100; `-1` or above the limit: `[instances] logs_max_lines`), messages and
/// open follow streams are bounded by `[instances] logs_*`.
async fn logs_handler(
    State(s): S,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    valid(&name)?;
    s.instances.get(&name)?;
    let limits = s.config().config.instances.clone();
    let max_lines = limits.logs_max_lines as usize;
    let max_message = limits.logs_max_entry_bytes as usize;
    let lines = match q.lines.as_deref() {
        None => 100.min(max_lines),
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n <= 0 => max_lines,
            Ok(n) => usize::try_from(n).unwrap_or(usize::MAX).min(max_lines),
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("lines: {l:?} is not a number"),
                ))
            }
        },
    };
    let wants_json = q.format.as_deref() == Some("json")
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/json"));
    let unit = spec::unit_name(&name);
    let internal =
        |e: anyhow::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"));
    if q.follow.unwrap_or(false) {
        let Some(slot) = logs::FollowSlot::take(limits.logs_max_followers) else {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} log streams are open ([instances] logs_max_followers); try again later",
                    limits.logs_max_followers
                ),
            ));
        };
        let stream = logs::follow(&unit, lines, max_message, slot).map_err(internal)?;
        let body = stream.map(move |e| {
            let mut line = if wants_json {
                serde_json::to_string(&e).unwrap_or_default()
            } else {
                logs::text(&e)
            };
            line.push('\n');
            Ok::<_, std::convert::Infallible>(Bytes::from(line))
        });
        let ctype = if wants_json {
            "application/x-ndjson"
        } else {
            "text/plain; charset=utf-8"
        };
        return Ok(([(header::CONTENT_TYPE, ctype)], Body::from_stream(body)).into_response());
    }
    let entries = logs::tail(&unit, lines, max_message)
        .await
        .map_err(internal)?;
    if wants_json {
        return Ok(Json(json!(entries)).into_response());
    }
    let text: String = entries.iter().map(|e| logs::text(e) + "\n").collect();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}
