//! Health endpoints. Liveness says the process answers; readiness says it can do its job (manager
//! reachable, state loaded); system health is the operator's one-page overview.

use super::AppState;
use crate::host::{self, CgroupLayout};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: CheckStatus,
    pub message: String,
}

impl Check {
    fn new(name: &'static str, status: CheckStatus, message: impl Into<String>) -> Self {
        Self {
            name,
            status,
            message: message.into(),
        }
    }
}

/// `GET /api/health/live`: 200 whenever the server answers at all.
pub async fn live() -> Json<Value> {
    Json(json!({ "status": "alive" }))
}

fn systemd_check(state: &AppState) -> Check {
    let s = state.systemd.status.borrow().clone();
    if s.connected {
        Check::new(
            "systemd",
            CheckStatus::Pass,
            format!(
                "connected to the {} manager (systemd {})",
                s.bus,
                s.version.unwrap_or_default()
            ),
        )
    } else {
        Check::new(
            "systemd",
            CheckStatus::Fail,
            s.last_error.unwrap_or_else(|| "not connected".into()),
        )
    }
}

fn state_dir_check(dir: &Path) -> Check {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok();
            // SAFETY: access(2) only reads the NUL-terminated path we own for the duration of the call.
            let writable = c.is_some_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0);
            if writable {
                Check::new(
                    "state_dir",
                    CheckStatus::Pass,
                    format!("{} is writable", dir.display()),
                )
            } else {
                Check::new(
                    "state_dir",
                    CheckStatus::Fail,
                    format!("{} is not writable", dir.display()),
                )
            }
        }
        Ok(_) => Check::new(
            "state_dir",
            CheckStatus::Fail,
            format!("{} is not a directory", dir.display()),
        ),
        Err(e) => Check::new(
            "state_dir",
            CheckStatus::Fail,
            format!("{}: {e}", dir.display()),
        ),
    }
}

/// Specs are loaded at start (a store that cannot be opened stops the daemon); corrupt files
/// are a warning, not a failure: the other instances work.
fn instances_check(state: &AppState) -> Check {
    let n = state.instances.count();
    let corrupt = state.instances.corrupt();
    if corrupt.is_empty() {
        Check::new(
            "instances",
            CheckStatus::Pass,
            format!("{n} instance specs loaded"),
        )
    } else {
        let names: Vec<String> = corrupt
            .iter()
            .map(|c| c.path.display().to_string())
            .collect();
        Check::new(
            "instances",
            CheckStatus::Warn,
            format!(
                "{n} instance specs loaded; unreadable: {}",
                names.join(", ")
            ),
        )
    }
}

/// The audit trail: failing while a destination cannot take records and mutations are refused
/// for it; a warning while records wait in memory (or a destination fails under
/// `on_failure = "allow"`).
fn audit_check(a: &crate::audit::Status) -> Check {
    let failing: Vec<String> = a.failing.iter().map(|(d, e)| format!("{d}: {e}")).collect();
    if !a.enabled {
        Check::new(
            "audit",
            CheckStatus::Warn,
            "the audit trail is off ([audit] enabled)",
        )
    } else if a.denying {
        Check::new(
            "audit",
            CheckStatus::Fail,
            format!(
                "mutations are refused: {}; {} records wait in memory",
                failing.join("; "),
                a.pending
            ),
        )
    } else if !failing.is_empty() || a.pending > 0 {
        Check::new(
            "audit",
            CheckStatus::Warn,
            format!(
                "{}; {} records wait in memory",
                failing.join("; "),
                a.pending
            ),
        )
    } else {
        Check::new(
            "audit",
            CheckStatus::Pass,
            format!("recording to {}", a.file),
        )
    }
}

fn respond(checks: &[Check], mut body: Value) -> (StatusCode, Json<Value>) {
    let failing: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .map(|c| c.name)
        .collect();
    let ok = failing.is_empty();
    body["checks"] = json!(checks);
    body["failing"] = json!(failing);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// `GET /api/health`: readiness. 503 lists the failing checks.
pub async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let checks = [
        systemd_check(&state),
        state_dir_check(&state.state_dir),
        instances_check(&state),
    ];
    let ok = checks.iter().all(|c| c.status != CheckStatus::Fail);
    respond(
        &checks,
        json!({ "status": if ok { "ok" } else { "unavailable" } }),
    )
}

/// `GET /api/system/health`: everything an operator looks at first. Host facts are read per
/// request (cheap procfs reads), so the answer is never stale.
pub async fn system(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let sd = state.systemd.status.borrow().clone();
    let mut checks = vec![systemd_check(&state)];
    match sd.system_state.as_deref() {
        Some("running") => checks.push(Check::new("systemd_state", CheckStatus::Pass, "running")),
        Some(other) if sd.connected => checks.push(Check::new(
            "systemd_state",
            CheckStatus::Warn,
            format!("manager reports system state {other:?}"),
        )),
        _ => {}
    }
    checks.push(state_dir_check(&state.state_dir));
    checks.push(instances_check(&state));
    let orphans = state.instances.orphans();
    if !orphans.is_empty() {
        checks.push(Check::new(
            "orphan_units",
            CheckStatus::Warn,
            format!("units without a spec (left alone): {}", orphans.join(", ")),
        ));
    }

    let layout = host::detect_layout(&state.host);
    checks.push(match &layout {
        Ok(l) => Check::new("cgroup", CheckStatus::Pass, format!("cgroup layout {l}")),
        Err(e) => Check::new("cgroup", CheckStatus::Fail, format!("{e:#}")),
    });
    let mem = host::read_meminfo(&state.host);
    checks.push(match &mem {
        Ok(_) => Check::new("memory", CheckStatus::Pass, "meminfo readable"),
        Err(e) => Check::new("memory", CheckStatus::Fail, format!("{e:#}")),
    });
    checks.push(match state.auth.keys.load_error() {
        None => Check::new(
            "auth",
            CheckStatus::Pass,
            format!("{} API keys", state.auth.keys.list().len()),
        ),
        Some(e) => Check::new(
            "auth",
            CheckStatus::Warn,
            format!("the key file cannot be read, API keys from it are not accepted: {e}"),
        ),
    });
    let audit = state.audit.status();
    checks.push(audit_check(&audit));
    let reload = state.reload_status();
    checks.push(match &reload.last_error {
        None => Check::new("config", CheckStatus::Pass, "config in force"),
        Some(e) => Check::new(
            "config",
            CheckStatus::Warn,
            format!("last reload failed, previous config kept: {e}"),
        ),
    });

    let cfg = state.config();
    let failing = checks.iter().any(|c| c.status == CheckStatus::Fail);
    let started_unix = state
        .started_at
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let body = json!({
        "status": if failing { "unhealthy" } else { "healthy" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "started_at": started_unix,
        "pid": std::process::id(),
        "systemd": sd,
        "cgroup": {
            "layout": layout.as_ref().ok().map(CgroupLayout::to_string),
            "own_cgroup": host::own_cgroup(&state.host).ok(),
        },
        "memory": mem.as_ref().ok().map(|m| json!({
            "total_bytes": m.total_bytes,
            "available_bytes": m.available_bytes,
        })),
        "capabilities": { "effective": host::effective_capabilities() },
        "config": {
            "source": cfg.to_string(),
            "reload": reload,
        },
        "state_dir": state.state_dir,
        "instances": {
            "total": state.instances.count(),
            "corrupt_specs": state.instances.corrupt(),
            "orphan_units": orphans,
        },
        "log_output": state.log_output,
        "audit": audit,
    });
    respond(&checks, body)
}
