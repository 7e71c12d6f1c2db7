//! Access control on every request, before any handler runs: the browser defences, then the
//! rate limits and authentication and authorisation by the route's need (`auth`), then the
//! JSON body rule. A layer on the whole router (fallback included) and a call on the model front
//! door (`app.rs`), so nothing is reachable around it. Refusals are JSON errors in the shape of
//! the route (OpenAI's for inference) with `WWW-Authenticate` on 401/403 and `Retry-After` on
//! 429; failed authentications are audit events (`auth.failure`); nothing logs a key.

use super::error::error_body;
use super::AppState;
use crate::audit::{Auditor, Event, EventKind};
use crate::auth::keys::KeyEntry;
use crate::auth::limit::{Subject, Verdict};
use crate::auth::{self, browser, Denied, Need, Peer, Principal, Scope};
use crate::config::LimitGroup;
use crate::instance::demand::Requester;
use crate::instance::Rights;
use crate::metrics::access::{AccessMetrics, KeyLabels, KeyTokenLabels};
use crate::metrics::Metrics;
use crate::proxy::{Caller, CallerExt, KeyUsage};
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use std::time::Instant;

/// Who sends a request, with what the layers below need of it: the proxy's `Caller` (which
/// instances, whose tokens) and the instance layer's `Requester` (rights; an on-demand start is
/// admitted by, and recorded in, the audit trail).
///
/// Made for every request, proxied ones included: it holds reference-counted handles only and
/// formats nothing until an event is recorded.
pub struct RequestCaller {
    pub principal: Principal,
    peer: Arc<Peer>,
    request_id: Option<HeaderValue>,
    audit: Arc<Auditor>,
    metrics: Arc<Metrics>,
}

impl RequestCaller {
    /// An audit event by this caller.
    pub fn event(&self, kind: EventKind) -> Event {
        let mut e = Event::new(kind, self.principal.actor(), self.peer.source());
        e.request_id = self
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        e
    }
}

impl Requester for RequestCaller {
    fn rights(&self) -> Rights {
        Rights {
            can_start: self.principal.can_start(),
            can_evict: self.principal.can_evict(),
        }
    }

    fn admit_start(&self) -> Result<(), String> {
        self.audit.admit()
    }

    fn started(&self, instance: &str, result: &Result<(), String>) {
        let e = self
            .event(EventKind::InstanceStart)
            .instance(instance)
            .detail("on demand, by a proxied request");
        self.audit.record(match result {
            Ok(()) => e,
            Err(why) => e.failed(why.clone()),
        });
    }
}

impl Caller for RequestCaller {
    fn may_use(&self, instance: &str) -> bool {
        self.principal.may_use_instance(instance)
    }

    fn usage(&self) -> Option<Arc<dyn KeyUsage>> {
        match &self.principal {
            Principal::Key(k) => Some(Arc::new(KeyTokens {
                key: k.clone(),
                metrics: self.metrics.access.clone(),
            })),
            _ => None,
        }
    }
}

/// A key's token accounting: its totals (`keys list`) and `llamactl_key_tokens_total`.
struct KeyTokens {
    key: Arc<KeyEntry>,
    metrics: AccessMetrics,
}

impl KeyUsage for KeyTokens {
    fn tokens(&self, prompt: u64, completion: u64) {
        self.key.count_tokens(prompt, completion);
        for (kind, n) in [("prompt", prompt), ("completion", completion)] {
            if n > 0 {
                self.metrics
                    .key_tokens
                    .get_or_create(&KeyTokenLabels {
                        key_name: self.key.name.clone(),
                        r#type: kind,
                    })
                    .inc_by(n);
            }
        }
    }
}

/// A request that may go on: who sends it, and the CORS origin to answer to, if any.
pub struct Checked {
    pub caller: Arc<RequestCaller>,
    cors: Option<HeaderValue>,
}

impl Checked {
    /// Adds the CORS headers a listed origin gets.
    pub fn decorate(&self, mut res: Response) -> Response {
        self.decorate_headers(res.headers_mut());
        res
    }

    /// Adds the CORS headers a listed origin gets to a response's headers.
    pub fn decorate_headers(&self, headers: &mut HeaderMap) {
        if let Some(o) = &self.cors {
            for (k, v) in browser::cors_headers(o, false) {
                headers.insert(k, v);
            }
        }
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
    if let Some(s) = d.retry_after {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    res
}

/// Counts one rate-limit decision.
fn count_limit(m: &AccessMetrics, group: LimitGroup, subject: &Subject, limited: bool) {
    m.count_limit(group.as_str(), subject.scope(), limited);
}

/// Checks one request. `Err` is the answer to send instead of running the handler: a refusal,
/// or the answer to a listed origin's CORS preflight.
pub fn check(
    state: &AppState,
    peer: &Arc<Peer>,
    need: Need,
    route: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Checked, Box<Response>> {
    let cfg = state.config();
    let scope = need.scope();
    let request_id = headers.get("x-request-id").cloned();
    let refuse = |d: Denied| {
        if d.status == StatusCode::TOO_MANY_REQUESTS {
            tracing::debug!(component = "auth", source = %peer.source(), route, "rate limited");
        } else {
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
        }
        Box::new(refusal(&d, scope))
    };
    // Browsers cannot reach the Unix socket, and its clients put all sorts in `Host` (some the
    // socket's escaped path): the browser defences are for TCP.
    let cors = match &**peer {
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

    let m = &state.metrics.access;
    let limiter = &state.auth.limiter;
    let clock = Instant::now();
    let group = need.group();
    // The admin socket is exempt from rate limits; TCP clients are limited by address until
    // they are known by a key.
    let address = match &**peer {
        Peer::Tcp(a) => Some(Subject::address(a.ip())),
        Peer::Unix(_) => None,
    };
    if let Some(a) = &address {
        // Key guessing: once an address has spent its `auth` tokens on wrong keys, a key it
        // sends is not even looked at. A login always spends one.
        let login = need == Need::AnyKey;
        if login || auth::presented_key(headers).is_some() {
            if let Verdict::Limited { retry_after } =
                limiter.check(LimitGroup::Auth, a, login, clock)
            {
                count_limit(m, LimitGroup::Auth, a, true);
                return Err(refuse(Denied::rate_limited("auth", retry_after)));
            }
            if login {
                count_limit(m, LimitGroup::Auth, a, false);
            }
        }
    }
    let now = crate::systemd::unix_now() as i64;
    let principal = match state
        .auth
        .authorize(&cfg.config.auth, peer, headers, need, now)
    {
        Ok(p) => p,
        Err(d) => {
            let outcome = if d.failure.is_some() {
                "failure"
            } else {
                "missing"
            };
            m.count_auth(group.as_str(), outcome);
            if let Some(actor) = &d.failure {
                // One token per failed attempt (a login spent its own already).
                if let Some(a) = address.as_ref().filter(|_| need != Need::AnyKey) {
                    limiter.check(LimitGroup::Auth, a, true, clock);
                }
                let mut e = Event::new(
                    EventKind::AuthFailure,
                    actor.clone().unwrap_or_else(|| "unknown".into()),
                    peer.source(),
                )
                .target(format!("{method} {route}"))
                .failed(d.message.clone());
                e.request_id = request_id
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                state.audit.record(e);
            }
            return Err(refuse(d));
        }
    };
    let outcome = match principal {
        Principal::Anonymous => "anonymous",
        _ => "success",
    };
    m.count_auth(group.as_str(), outcome);
    if need != Need::AnyKey && limiter.limits(group) {
        let subject = match (&principal, &address) {
            (Principal::Key(k), _) => Some(Subject::Key(k.name.as_str().into())),
            (_, Some(a)) => Some(a.clone()),
            _ => None,
        };
        if let Some(s) = subject {
            match limiter.check(group, &s, true, clock) {
                Verdict::Unlimited => {}
                Verdict::Allowed => count_limit(m, group, &s, false),
                Verdict::Limited { retry_after } => {
                    count_limit(m, group, &s, true);
                    return Err(refuse(Denied::rate_limited(group.as_str(), retry_after)));
                }
            }
        }
    }
    if let Principal::Key(k) = &principal {
        k.count_request();
        m.key_requests
            .get_or_create(&KeyLabels {
                key_name: k.name.clone(),
                group: group.as_str(),
            })
            .inc();
    }
    browser::check_content_type(scope, method, headers).map_err(refuse)?;
    Ok(Checked {
        caller: Arc::new(RequestCaller {
            principal,
            peer: peer.clone(),
            request_id,
            audit: state.audit.clone(),
            metrics: state.metrics.clone(),
        }),
        cors,
    })
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
    let need = auth::route_need(template.as_deref(), &metrics_path);
    let checked = match check(&state, &peer, need, route, req.method(), req.headers()) {
        Ok(c) => c,
        Err(answer) => return *answer,
    };
    req.extensions_mut().insert(checked.caller.clone());
    req.extensions_mut()
        .insert(CallerExt(checked.caller.clone() as Arc<dyn Caller>));
    let res = next.run(req).await;
    checked.decorate(res)
}
