//! The debug port (`[debug] pprof_enabled`): Go-pprof-compatible profiles of llamactld on its
//! own listener, `127.0.0.1:6060` by default, apart from the API (no keys, no audit, nothing
//! shared with the API's workers):
//!
//! - `/debug/pprof/profile?seconds=N` — a CPU profile (pprof protobuf; `cpu`), N in 1..=300,
//!   30 by default as in Go; one at a time (a second gets 409);
//! - `/debug/pprof/heap` (and `/allocs`) — the jemalloc heap profile (`heap`);
//! - `/debug/pprof/goroutine` — runtimes, tasks and threads in text (`tasks`).
//!
//! Loopback only unless `pprof_allow_remote`; on loopback, a request whose `Host` is not a
//! loopback name is refused (421), so a web page cannot read profiles through DNS rebinding.
//! Continuous profiling (`pyroscope`) shares the CPU profiler.

pub mod cpu;
pub mod heap;
pub mod pyroscope;
pub mod tasks;

use crate::config::validate::{is_loopback, split_authority};
use crate::config::DebugConfig;
use crate::metrics::runtime::Runtimes;
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// The longest CPU profile a request may ask for.
pub const MAX_SECONDS: u64 = 300;
/// Go's default when `seconds` is not given.
pub const DEFAULT_SECONDS: u64 = 30;

#[derive(Clone)]
struct Debug {
    cpu: cpu::CpuProfiler,
    runtimes: Runtimes,
    /// The listener is on loopback: check `Host`.
    loopback: bool,
}

/// Binds the debug port and serves it until shutdown. A port that cannot be bound is logged
/// and the daemon runs on without it: a debugging aid must not take the service down.
pub async fn start(
    cfg: &DebugConfig,
    cpu: cpu::CpuProfiler,
    runtimes: Runtimes,
    mut shutdown: watch::Receiver<bool>,
) -> Option<std::net::SocketAddr> {
    let host = cfg.pprof_host.trim_start_matches('[').trim_end_matches(']');
    let addr = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, cfg.pprof_port).to_string(),
        Err(_) => format!("{host}:{}", cfg.pprof_port),
    };
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            error!(component = "debug", address = %addr, error = %e, "cannot listen on the debug port; pprof profiles are not served");
            return None;
        }
    };
    let local = listener.local_addr().ok();
    match heap::activate().await {
        Ok(()) => info!(
            component = "debug",
            "heap profiling active (jemalloc, one sample per 512 KiB allocated)"
        ),
        Err(e) => warn!(component = "debug", "{e}"),
    }
    let app = router(Debug {
        cpu,
        runtimes: runtimes.clone(),
        loopback: is_loopback(&cfg.pprof_host),
    });
    info!(component = "debug", address = %addr, "serving pprof profiles on the debug port");
    let guard = runtimes.task("debug port", "main");
    tokio::spawn(async move {
        let _listed = guard;
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            error!(component = "debug", error = %e, "the debug port stopped");
        }
    });
    local
}

fn router(d: Debug) -> Router {
    Router::new()
        .route("/debug/pprof/", get(index))
        .route("/debug/pprof", get(index))
        .route("/debug/pprof/profile", get(profile))
        .route("/debug/pprof/heap", get(heap_profile))
        .route("/debug/pprof/allocs", get(heap_profile))
        .route("/debug/pprof/goroutine", get(goroutine))
        .layer(axum::middleware::from_fn_with_state(d.clone(), local_host))
        .with_state(d)
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// On a loopback listener, `Host` must name this machine (`localhost`, `127.0.0.1`, `[::1]`):
/// a browser visiting a rebinding domain sends that domain.
async fn local_host(State(d): State<Debug>, req: Request, next: Next) -> Response {
    if d.loopback {
        if let Some(h) = req.headers().get(header::HOST) {
            let ok = h
                .to_str()
                .ok()
                .and_then(split_authority)
                .is_some_and(|(host, _)| is_loopback(host));
            if !ok {
                return text(
                    StatusCode::MISDIRECTED_REQUEST,
                    "the debug port answers only requests for localhost\n".into(),
                );
            }
        }
    }
    next.run(req).await
}

async fn index() -> Response {
    text(
        StatusCode::OK,
        "llamactld debug port\n\n\
         /debug/pprof/profile?seconds=N  CPU profile, pprof protobuf (N in 1..=300, default 30)\n\
         /debug/pprof/heap               heap profile (jemalloc, in-use bytes), gzipped pprof\n\
         /debug/pprof/allocs             the same\n\
         /debug/pprof/goroutine          tokio runtimes, long-lived tasks and threads, text\n\n\
         go tool pprof http://localhost:6060/debug/pprof/profile\n"
            .into(),
    )
}

/// `seconds`: absent means 30 (Go's default); otherwise an integer in 1..=300.
pub fn parse_seconds(q: &HashMap<String, String>) -> Result<Duration, String> {
    let Some(v) = q.get("seconds") else {
        return Ok(Duration::from_secs(DEFAULT_SECONDS));
    };
    match v.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_SECONDS).contains(&n) => Ok(Duration::from_secs(n)),
        _ => Err(format!(
            "seconds={v:?}: must be a whole number of seconds from 1 to {MAX_SECONDS}\n"
        )),
    }
}

async fn profile(State(d): State<Debug>, Query(q): Query<HashMap<String, String>>) -> Response {
    let length = match parse_seconds(&q) {
        Ok(l) => l,
        Err(why) => return text(StatusCode::BAD_REQUEST, why),
    };
    // A continuous-profiling window ends within its interval (at most 300 s).
    match d
        .cpu
        .on_demand(length, Duration::from_secs(MAX_SECONDS + 5))
        .await
    {
        Ok(body) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"profile\"",
                ),
            ],
            body,
        )
            .into_response(),
        Err(e @ cpu::CpuError::Busy) => text(StatusCode::CONFLICT, format!("{e}\n")),
        Err(e @ (cpu::CpuError::Contended | cpu::CpuError::Stopping)) => {
            text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
        }
        Err(e) => {
            warn!(component = "debug", error = %e, "CPU profile failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
        }
    }
}

async fn heap_profile() -> Response {
    match heap::profile().await {
        Ok(body) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"heap\""),
            ],
            body,
        )
            .into_response(),
        Err(e @ heap::HeapError::Unavailable) => {
            text(StatusCode::NOT_IMPLEMENTED, format!("{e}\n"))
        }
        Err(e) => {
            warn!(component = "debug", error = %e, "heap profile failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
        }
    }
}

async fn goroutine(State(d): State<Debug>) -> Response {
    let runtimes = d.runtimes.clone();
    match tokio::task::spawn_blocking(move || tasks::dump(&runtimes)).await {
        Ok(body) => text(StatusCode::OK, body),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests;
