//! Access control on every request, before any handler runs: the browser defences, then
//! authentication and authorisation by the route's scope (`auth`), then the JSON body rule. A
//! layer on the whole router (fallback included) and a call on the model front door
//! (`app.rs`), so nothing is reachable around it. Refusals are JSON errors in the shape of
//! the route (OpenAI's for inference) with `WWW-Authenticate` on 401/403, and logged (who,
//! from where, why; never a key).

use super::error::error_body;
use super::AppState;
use crate::auth::{self, browser, Denied, Peer, Principal, Scope};
use crate::instance::Rights;
use crate::proxy::{Caller, CallerExt};
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

impl Caller for Principal {
    fn may_use(&self, instance: &str) -> bool {
        self.may_use_instance(instance)
    }
    fn rights(&self) -> Rights {
        Rights {
            can_start: self.can_start(),
            can_evict: self.can_evict(),
        }
    }
}

/// A request that may go on: who sends it, and the CORS origin to answer to, if any.
pub struct Checked {
    pub principal: Principal,
    cors: Option<HeaderValue>,
}

impl Checked {
    /// Adds the CORS headers a listed origin gets.
    pub fn decorate(&self, mut res: Response) -> Response {
        if let Some(o) = &self.cors {
            for (k, v) in browser::cors_headers(o, false) {
                res.headers_mut().insert(k, v);
            }
        }
        res
    }
}

/// The refusal as a response: OpenAI's error shape for inference routes, the API's otherwise.
fn refusal(d: &Denied, scope: Scope) -> Response {
    let body = if scope == Scope::Inference {
        serde_json::json!({"error": {"message": d.message, "type": "invalid_request_error", "code": d.code}})
    } else {
        error_body(d.status, &d.message)
    };
    let mut res = (d.status, Json(body)).into_response();
    if let Some(c) = d
        .challenge
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, c);
    }
    res
}

/// Checks one request. `Err` is the answer to send instead of running the handler: a refusal,
/// or the answer to a listed origin's CORS preflight.
pub fn check(
    state: &AppState,
    peer: &Peer,
    scope: Scope,
    route: &str,
    req: &Request,
) -> Result<Checked, Box<Response>> {
    let cfg = state.config();
    let (method, headers) = (req.method(), req.headers());
    let refuse = |d: Denied| {
        tracing::info!(
            component = "auth",
            source = %peer.source(),
            method = %method,
            route,
            status = d.status.as_u16(),
            reason = d.code,
            "request refused: {}",
            d.message
        );
        Box::new(refusal(&d, scope))
    };
    // Browsers cannot reach the Unix socket, and its clients put all sorts in `Host` (some the
    // socket's escaped path): the browser defences are for TCP.
    let cors = match peer {
        Peer::Unix(_) => None,
        Peer::Tcp(_) => {
            browser::check_host(headers, &cfg.config.server).map_err(refuse)?;
            browser::check_origin(headers, &cfg.config.server).map_err(refuse)?
        }
    };
    if let Some(origin) = cors
        .as_ref()
        .filter(|_| browser::is_preflight(method, headers))
    {
        // Preflights carry no credentials; the real request is authorised when it comes.
        let mut res = StatusCode::NO_CONTENT.into_response();
        for (k, v) in browser::cors_headers(origin, true) {
            res.headers_mut().insert(k, v);
        }
        return Err(Box::new(res));
    }
    let now = crate::systemd::unix_now() as i64;
    let principal = state
        .auth
        .authorize(&cfg.config.auth, peer, headers, scope, now)
        .map_err(refuse)?;
    browser::check_content_type(scope, method, headers).map_err(refuse)?;
    Ok(Checked { principal, cors })
}

/// The router's layer. `metrics_path` is the one the router was built with.
pub async fn guard(
    State((state, metrics_path)): State<(Arc<AppState>, Arc<str>)>,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    // Set by the connection's service (`app.rs`); a request without it is treated as coming
    // over TCP from nowhere in particular, which needs the most.
    let peer = req
        .extensions()
        .get::<Arc<Peer>>()
        .cloned()
        .unwrap_or_else(|| Arc::new(Peer::Tcp(([0, 0, 0, 0], 0).into())));
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let route = template.as_deref().unwrap_or(super::observe::UNMATCHED);
    let scope = auth::route_scope(template.as_deref(), &metrics_path);
    let checked = match check(&state, &peer, scope, route, &req) {
        Ok(c) => c,
        Err(answer) => return *answer,
    };
    req.extensions_mut().insert(checked.principal.clone());
    req.extensions_mut()
        .insert(CallerExt(Arc::new(checked.principal.clone())));
    let res = next.run(req).await;
    checked.decorate(res)
}
