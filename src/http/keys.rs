//! The key API under `/api/v1/auth/keys` (upstream Llamactl's path), management scope:
//! `POST` creates a key and answers it once (201), `GET` lists keys (never a key or its
//! digest), `DELETE /{name}` revokes an API key (204).

use super::error::ApiError;
use super::AppState;
use crate::auth::keys::{KeyError, NewKey};
use crate::auth::Principal;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::Value;
use std::sync::Arc;
use tracing::info;

type S = State<Arc<AppState>>;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/auth/keys", get(list).post(create))
        .route("/api/v1/auth/keys/{name}", delete(revoke))
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        let status = match &e {
            KeyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            KeyError::Conflict(_) => StatusCode::CONFLICT,
            KeyError::NotFound(_) => StatusCode::NOT_FOUND,
            KeyError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

fn now() -> i64 {
    crate::systemd::unix_now() as i64
}

async fn list(State(s): S) -> Json<Value> {
    let now = now();
    Json(Value::Array(
        s.auth.keys.list().iter().map(|k| k.view(now)).collect(),
    ))
}

async fn create(
    State(s): S,
    Extension(by): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let new: NewKey = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid key request: {e}")))?;
    let now = now();
    let (key, entry) = s.auth.keys.create(new, now)?;
    info!(
        component = "auth",
        key_name = %entry.name,
        scope = entry.scope.as_str(),
        actor = %by.actor(),
        "API key created"
    );
    let mut v = entry.view(now);
    v["key"] = Value::String(key);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn revoke(
    State(s): S,
    Extension(by): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let entry = s.auth.keys.revoke(&name)?;
    info!(
        component = "auth",
        key_name = %entry.name,
        actor = %by.actor(),
        "API key revoked"
    );
    Ok(StatusCode::NO_CONTENT)
}
