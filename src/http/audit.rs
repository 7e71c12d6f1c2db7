//! Every mutating route goes through `audited`, one layer, so no action can forget its record:
//! it asks the audit trail to admit the mutation (503 when a destination cannot take its
//! record, `[audit] on_failure = "deny"`), runs the handler, and records the event with its
//! outcome (the error's message as the reason) before the answer leaves. `route_event` maps
//! each mutating route to its event; a test reads the router's source so that none is missing
//! (at run time a missing one is logged as the bug it is). Also `GET /api/v1/audit`.

use super::detach::Detached;
use super::error::ApiError;
use super::guard::RequestCaller;
use super::AppState;
use crate::audit::file::Query;
use crate::audit::{Event, EventKind};
use axum::body::Body;
use axum::extract::{Extension, MatchedPath, Query as Params, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// What a mutating route records.
#[derive(Debug, PartialEq, Eq)]
pub enum Audit {
    Event(EventKind),
    /// Passed through to a backend's own API (inference; the direct instance proxy): not a
    /// llamactl mutation. On-demand starts they cause are recorded where they happen.
    PassThrough,
}

/// The event of a mutating request, by method and route template; `None`: none is defined.
pub fn route_event(method: &Method, template: &str) -> Option<Audit> {
    use EventKind::*;
    let e = |k| Some(Audit::Event(k));
    match (method.as_str(), template) {
        ("POST", "/api/v1/instances/{name}") => e(InstanceCreate),
        ("PUT", "/api/v1/instances/{name}") => e(InstanceUpdate),
        ("DELETE", "/api/v1/instances/{name}") => e(InstanceDelete),
        ("POST", "/api/v1/instances/{name}/start") => e(InstanceStart),
        ("POST", "/api/v1/instances/{name}/stop") => e(InstanceStop),
        ("POST", "/api/v1/instances/{name}/restart") => e(InstanceRestart),
        ("POST", "/api/v1/auth/keys") => e(KeyCreate),
        ("DELETE", "/api/v1/auth/keys/{name}") => e(KeyRevoke),
        ("POST", "/api/v1/auth/login") => e(AuthLogin),
        ("POST", "/api/v1/auth/logout") => e(AuthLogout),
        (_, "/v1/{*rest}" | "/infill" | "/api/v1/instances/{name}/proxy/{*path}") => {
            Some(Audit::PassThrough)
        }
        _ => None,
    }
}

pub fn is_mutating(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// What a handler tells the audit layer about its action (a response extension): the target
/// when the path does not name it (a key created from the body, a login's key).
#[derive(Clone, Debug)]
pub struct Target(pub String);

/// The `{name}` of an instance or key route, from the path as sent.
fn path_name(path: &str) -> Option<String> {
    let rest = path
        .strip_prefix("/api/v1/instances/")
        .or_else(|| path.strip_prefix("/api/v1/auth/keys/"))?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// The largest error body read for its message.
const REASON_LIMIT: usize = 64 * 1024;

pub async fn audited(
    State(state): State<Arc<AppState>>,
    req: Request<Body>,
    next: Next,
) -> Response {
    if !is_mutating(req.method()) {
        return next.run(req).await;
    }
    // Unmatched requests (404) act on nothing.
    let Some(template) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
    else {
        return next.run(req).await;
    };
    let kind = match route_event(req.method(), &template) {
        Some(Audit::Event(k)) => k,
        Some(Audit::PassThrough) => return next.run(req).await,
        None => {
            // The route has no handler for this method (405), which the test of this module
            // makes sure of; anything else is a bug, and said loudly.
            let method = req.method().clone();
            let res = next.run(req).await;
            if res.status() != StatusCode::METHOD_NOT_ALLOWED {
                tracing::error!(component = "audit", method = %method, route = %template, "a mutating route ran without an audit event (a bug: add it to http::audit::route_event)");
            }
            return res;
        }
    };
    // Set by the guard, which runs before this layer.
    let Some(caller) = req.extensions().get::<Arc<RequestCaller>>().cloned() else {
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no caller").into_response();
    };
    if kind.is_mutation() {
        let audit = state.audit.clone();
        let admitted = tokio::task::spawn_blocking(move || audit.admit())
            .await
            .unwrap_or_else(|e| Err(format!("the audit check failed: {e}")));
        if let Err(why) = admitted {
            let mut res = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why).into_response();
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return res;
        }
    }
    let named = path_name(req.uri().path());
    if !is_lifecycle(kind) {
        let res = next.run(req).await;
        return record(&state, &caller, kind, &template, named, res).await;
    }
    // An instance operation runs to completion, its record with it, whatever happens to the
    // request (`detach`); the request waits for it, at most about `request_timeout`.
    let mut req = req;
    req.extensions_mut().insert(Detached);
    let task = {
        let state = state.clone();
        state.detach.clone().spawn(async move {
            let res = next.run(req).await;
            record(&state, &caller, kind, &template, named, res).await
        })
    };
    let timeout = state.config().config.server.request_timeout.get();
    let wait = timeout.saturating_sub((timeout / 10).max(Duration::from_millis(100)));
    match tokio::time::timeout(wait, task).await {
        Ok(Ok(res)) => res,
        Ok(Err(_)) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the operation ended unexpectedly (see the daemon's log)",
        )
        .into_response(),
        Err(_) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "status": "accepted",
                "message": format!(
                    "the operation is still running after {} s and goes on; GET the instance for its state (its audit record says how it ended)",
                    wait.as_secs()
                ),
            })),
        )
            .into_response(),
    }
}

/// The instance operations that run detached (see `detach`).
fn is_lifecycle(kind: EventKind) -> bool {
    use EventKind::*;
    matches!(
        kind,
        InstanceCreate
            | InstanceUpdate
            | InstanceDelete
            | InstanceStart
            | InstanceStop
            | InstanceRestart
    )
}

/// Records the event of a handled request with its outcome, and passes its answer on.
async fn record(
    state: &AppState,
    caller: &RequestCaller,
    kind: EventKind,
    template: &str,
    named: Option<String>,
    res: Response,
) -> Response {
    let mut e = caller.event(kind);
    let target = res
        .extensions()
        .get::<Target>()
        .map(|t| t.0.clone())
        .or(named);
    if let Some(t) = target {
        e = if template.starts_with("/api/v1/instances/") {
            e.instance(t)
        } else {
            e.target(t)
        };
    }
    let status = res.status();
    if status.is_success() {
        write(state, e).await;
        return res;
    }
    // The error's message is the reason, read from a (small, declared) JSON error body; the
    // answer is rebuilt from the bytes read. Anything else passes through untouched.
    let small = hyper::body::Body::size_hint(res.body())
        .exact()
        .is_some_and(|n| n <= REASON_LIMIT as u64);
    if !small {
        write(state, e.failed(format!("HTTP {}", status.as_u16()))).await;
        return res;
    }
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, REASON_LIMIT)
        .await
        .unwrap_or_default();
    let reason = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    write(state, e.failed(reason)).await;
    Response::from_parts(parts, Body::from(bytes))
}

/// Writes an audit record on the blocking pool (an append, fsynced when `[audit] fsync`): the
/// answer waits for it, the HTTP worker's thread does not.
async fn write(state: &AppState, e: Event) {
    let audit = state.audit.clone();
    if let Err(err) = tokio::task::spawn_blocking(move || audit.record(e)).await {
        tracing::error!(component = "audit", error = %err, "writing an audit record failed");
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/api/v1/audit", get(query))
}

#[derive(Deserialize)]
struct QueryParams {
    since: Option<String>,
    until: Option<String>,
    event: Option<String>,
    actor: Option<String>,
    instance: Option<String>,
    outcome: Option<String>,
    limit: Option<usize>,
}

/// A time as a query gives it: RFC 3339, or a duration back from now (`1h`).
fn when(text: &str, what: &str) -> Result<i64, ApiError> {
    if let Ok(d) = crate::config::parse_duration(text) {
        return Ok(crate::audit::now_us() - d.as_micros().min(i64::MAX as u128) as i64);
    }
    crate::config::time::parse_rfc3339_micros(text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{what}: neither a duration such as 1h nor a date ({e})"),
        )
    })
}

/// `GET /api/v1/audit?since=&until=&event=&actor=&instance=&outcome=&limit=`: newest first,
/// from the file; `limit` 100 by default, at most 10000.
async fn query(
    State(s): State<Arc<AppState>>,
    Extension(_caller): Extension<Arc<RequestCaller>>,
    Params(p): Params<QueryParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = Query {
        since_us: p.since.as_deref().map(|t| when(t, "since")).transpose()?,
        until_us: p.until.as_deref().map(|t| when(t, "until")).transpose()?,
        event: p.event,
        actor: p.actor,
        instance: p.instance,
        outcome: p.outcome,
        limit: p.limit.unwrap_or(100).clamp(1, 10_000),
    };
    let audit = s.audit.clone();
    let found = tokio::task::spawn_blocking(move || audit.query(&q))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("query: {e}")))?;
    match found {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the audit API is off ([audit] enabled / api)",
        )),
        Some(Err(e)) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Some(Ok((events, truncated))) => Ok(Json(serde_json::json!({
            "events": events,
            "truncated": truncated,
        }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the HTTP layer registers with a mutating method has an audit event (or is a
    /// pass-through): read from the source of the router, so a new route cannot be added
    /// without one.
    #[test]
    fn every_mutating_route_has_an_event() {
        let sources = [
            include_str!("instances.rs"),
            include_str!("keys.rs"),
            include_str!("audit.rs"),
            include_str!("mod.rs"),
            include_str!("../proxy/mod.rs"),
        ];
        let mut checked = 0;
        for src in sources {
            // Not the tests (this one's strings would match).
            let src = src.split("#[cfg(test)]").next().unwrap_or(src);
            for chunk in src.split(".route(").skip(1) {
                // `.route("path", method_router)`, perhaps over several lines.
                let Some((path, rest)) = chunk
                    .trim_start()
                    .strip_prefix('"')
                    .and_then(|c| c.split_once('"'))
                else {
                    continue;
                };
                // The method router: up to the end of this `.route(...)` call.
                let call = rest.split(".route(").next().unwrap_or(rest);
                let call = call.split("\n}").next().unwrap_or(call);
                for (func, methods) in [
                    ("post(", &["POST"][..]),
                    ("put(", &["PUT"]),
                    ("delete(", &["DELETE"]),
                    ("patch(", &["PATCH"]),
                    ("any(", &["POST", "PUT", "DELETE", "PATCH"]),
                ] {
                    if !call.contains(func) {
                        continue;
                    }
                    for m in methods {
                        let method = Method::from_bytes(m.as_bytes()).unwrap();
                        assert!(
                            route_event(&method, path).is_some(),
                            "{m} {path} has no audit event: add it to route_event"
                        );
                        checked += 1;
                    }
                }
            }
        }
        // The instance API (6), keys (2), login/logout (2), the proxy (2, and 4 for `any`).
        assert!(
            checked >= 16,
            "only {checked} mutating routes found: is the scan broken?"
        );
    }

    #[test]
    fn names_come_from_the_path() {
        assert_eq!(
            path_name("/api/v1/instances/smol/start").as_deref(),
            Some("smol")
        );
        assert_eq!(path_name("/api/v1/auth/keys/ci").as_deref(), Some("ci"));
        assert_eq!(path_name("/api/v1/auth/keys"), None);
        assert_eq!(path_name("/v1/chat/completions"), None);
    }
}
