//! The key API under `/api/v1/auth/keys` (upstream Llamactl's path), management scope:
//! `POST` creates a key and answers it once (201), `GET` lists keys (never a key or its
//! digest) with their use, `DELETE /{name}` revokes an API key (204). And `POST
//! /api/v1/auth/login` (any valid key: answers its name, scope and expiry; `llamactl login`)
//! and `/logout`, which are audit events, nothing more (keys are not sessions).

use super::audit::Target;
use super::error::ApiError;
use super::guard::RequestCaller;
use super::AppState;
use crate::auth::keys::{KeyError, NewKey};
use crate::auth::Principal;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use tracing::info;

type S = State<Arc<AppState>>;
type By = Extension<Arc<RequestCaller>>;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/auth/keys", get(list).post(create))
        .route("/api/v1/auth/keys/{name}", delete(revoke))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
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

async fn create(State(s): S, Extension(by): By, body: Bytes) -> Response {
    let new: NewKey = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, format!("invalid key request: {e}"))
                .into_response()
        }
    };
    // The audit record names the key, whatever the outcome.
    let target = Extension(Target(new.name.clone()));
    let now = now();
    // keys.json is written (and fsynced) on the blocking pool, not on the HTTP worker.
    let auth = s.auth.clone();
    let created = match tokio::task::spawn_blocking(move || auth.keys.create(new, now)).await {
        Ok(r) => r,
        Err(e) => {
            return (
                target,
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("creating the key failed: {e}"),
                ),
            )
                .into_response()
        }
    };
    match created {
        Ok((key, entry)) => {
            info!(
                component = "auth",
                key_name = %entry.name,
                scope = entry.scope.as_str(),
                actor = %by.principal.actor(),
                "API key created"
            );
            let mut v = entry.view(now);
            v["key"] = Value::String(key);
            (StatusCode::CREATED, target, Json(v)).into_response()
        }
        Err(e) => (target, ApiError::from(e)).into_response(),
    }
}

async fn revoke(
    State(s): S,
    Extension(by): By,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let auth = s.auth.clone();
    let entry = tokio::task::spawn_blocking(move || auth.keys.revoke(&name))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("revoking the key failed: {e}"),
            )
        })??;
    s.metrics.access.forget_key(&entry.name);
    info!(
        component = "auth",
        key_name = %entry.name,
        actor = %by.principal.actor(),
        "API key revoked"
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Who the caller is, as `llamactl login` shows it.
fn whoami(p: &Principal) -> (Option<String>, Value) {
    match p {
        Principal::Key(k) => (
            Some(k.name.clone()),
            json!({"name": k.name, "scope": k.scope, "expires_at": k.expires_at,
                "instances": k.instances, "can_start": k.can_start, "can_evict": k.can_evict}),
        ),
        Principal::Local { .. } => (
            None,
            json!({"name": p.actor(), "scope": "management", "expires_at": null, "local": true}),
        ),
        Principal::Anonymous => (None, json!({"name": "anonymous", "scope": null})),
    }
}

/// `POST /api/v1/auth/login`: checks the key (the guard did) and says whose it is.
async fn login(Extension(by): By) -> Response {
    let (name, v) = whoami(&by.principal);
    let mut res = Json(v).into_response();
    if let Some(n) = name {
        res.extensions_mut().insert(Target(n));
    }
    res
}

/// `POST /api/v1/auth/logout`: recorded; the client forgets its stored key.
async fn logout(Extension(by): By) -> Response {
    let (name, _) = whoami(&by.principal);
    let mut res = Json(json!({"logged_out": true})).into_response();
    if let Some(n) = name {
        res.extensions_mut().insert(Target(n));
    }
    res
}
