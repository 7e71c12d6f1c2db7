//! The service every connection runs. Model requests (`POST /v1/...`, `POST /infill`) go
//! straight to the proxy; everything else goes through the axum router and its middleware.
//!
//! Why a front door: the proxy is the hot path (tens of thousands of requests per second with
//! small models), and routing plus the generic layers (request id, observe, body limit) cost
//! about a tenth of its CPU per request. Here the same things are done inline: the request id is
//! set and echoed, the API request metrics and debug log get the same route label the router
//! would give (`/v1/{*rest}`, `/infill`), and an oversized declared body gets its 413 before
//! anything is read. Access control is the same as the router's: `guard::check`, for the
//! inference scope.
//!
//! One `App` per connection (made by `MakeApp::for_peer`), carrying who is on the other end (`Peer`), so
//! every request on the connection is authorised against it.

use super::{guard, observe, request_id, AppState};
use crate::auth::{Need, Peer, Scope};
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::Response;
use axum::Router;
use futures_util::future::{BoxFuture, Either};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::Service;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Makes the service of each new connection.
#[derive(Clone)]
pub struct MakeApp {
    state: Arc<AppState>,
    router: Router,
}

impl MakeApp {
    pub fn new(state: Arc<AppState>, router: Router) -> Self {
        Self { state, router }
    }
}

impl MakeApp {
    /// The service of a new connection from `peer`.
    pub fn for_peer(&self, peer: Peer) -> App {
        let peer = match peer {
            // Once per connection: who it is, by name, for every request on it.
            Peer::Unix(cred) => Peer::Unix(cred.with_user_name()),
            tcp => tcp,
        };
        App {
            state: self.state.clone(),
            router: self.router.clone(),
            peer: Arc::new(peer),
        }
    }
}

/// The service of one connection.
#[derive(Clone)]
pub struct App {
    pub(super) state: Arc<AppState>,
    router: Router,
    pub(super) peer: Arc<Peer>,
}

/// The route template a model request is counted under, as the router names it.
fn model_route(req: &Request) -> Option<&'static str> {
    if req.method() != Method::POST {
        return None;
    }
    super::lane::head::model_route(req.uri().path())
}

impl Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        <Router as Service<Request>>::Future,
        BoxFuture<'static, Result<Response, Infallible>>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some(route) = model_route(&req) else {
            // The router's guard layer authorises it, from this.
            req.extensions_mut().insert(self.peer.clone());
            return Either::Left(self.router.call(req));
        };
        let state = self.state.clone();
        let peer = self.peer.clone();
        Either::Right(Box::pin(async move {
            let start = Instant::now();
            let id = match req.headers().get(&X_REQUEST_ID) {
                Some(v) => v.clone(),
                None => {
                    let v = HeaderValue::from_bytes(&request_id::new_id())
                        .unwrap_or_else(|_| HeaderValue::from_static("-"));
                    req.headers_mut().insert(X_REQUEST_ID.clone(), v.clone());
                    v
                }
            };
            let need = Need::Scope(Scope::Inference);
            let mut res =
                match guard::check(&state, &peer, need, route, req.method(), req.headers()) {
                    Ok(checked) => {
                        let res =
                            crate::proxy::model_request(&state.proxy, req, checked.caller.clone())
                                .await;
                        checked.decorate(res)
                    }
                    Err(answer) => *answer,
                };
            observe::record_model(
                &state,
                route,
                res.status().as_u16(),
                start.elapsed().as_secs_f64(),
                Some(&id),
            );
            res.headers_mut().entry(X_REQUEST_ID.clone()).or_insert(id);
            Ok(res)
        }))
    }
}
