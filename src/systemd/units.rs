//! Unit operations over one bus connection: start a transient service and wait for its job,
//! stop, reset, list, and read the properties llamactl reports.

use super::dbus::{ManagerProxy, ServiceProxy, UnitProxy, UnitRow};
use super::transient::TransientService;
use futures_util::StreamExt;
use serde::Serialize;
use std::time::Duration;
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedObjectPath};

#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("the systemd manager is unreachable; try again later")]
    Unavailable,
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("systemd {what} job for {unit} ended with result {result:?}")]
    JobFailed {
        what: &'static str,
        unit: String,
        result: String,
    },
    #[error("systemd {what} job for {unit} did not finish within {timeout:?}")]
    JobTimeout {
        what: &'static str,
        unit: String,
        timeout: Duration,
    },
}

/// What a unit looks like right now. `loaded == false` means systemd does not know it (a
/// stopped transient unit is unloaded).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UnitState {
    pub loaded: bool,
    pub active_state: String,
    pub sub_state: String,
    pub main_pid: u32,
    pub n_restarts: u32,
    pub exec_main_status: i32,
    pub result: String,
    /// Unix microseconds; 0 when never active.
    pub active_enter_timestamp: u64,
    pub control_group: String,
}

async fn manager(conn: &Connection) -> zbus::Result<ManagerProxy<'static>> {
    ManagerProxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

async fn wait_job(
    removed: &mut (impl futures_util::Stream<Item = super::dbus::JobRemoved> + Unpin),
    job: &OwnedObjectPath,
    what: &'static str,
    unit: &str,
    timeout: Duration,
) -> Result<(), UnitError> {
    let wait = async {
        while let Some(sig) = removed.next().await {
            let args = sig.args()?;
            if args.job.as_str() == job.as_str() {
                return Ok::<String, zbus::Error>(args.result);
            }
        }
        Err(zbus::Error::Failure(
            "bus connection closed while waiting for a job".into(),
        ))
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(result)) if result == "done" => Ok(()),
        Ok(Ok(result)) => Err(UnitError::JobFailed {
            what,
            unit: unit.to_string(),
            result,
        }),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(UnitError::JobTimeout {
            what,
            unit: unit.to_string(),
            timeout,
        }),
    }
}

/// `StartTransientUnit` and wait for its job through `JobRemoved` (subscribed before the call,
/// so a fast job cannot be missed).
pub async fn start_transient(
    conn: &Connection,
    svc: &TransientService,
    timeout: Duration,
) -> Result<(), UnitError> {
    let m = manager(conn).await?;
    let mut removed = m.receive_job_removed().await?;
    let props = svc.properties();
    let job = m
        .start_transient_unit(&svc.unit, "fail", &props, &[])
        .await?;
    wait_job(&mut removed, &job, "start", &svc.unit, timeout).await
}

/// `StopUnit` and wait. A unit that is not loaded is already stopped.
pub async fn stop(conn: &Connection, unit: &str, timeout: Duration) -> Result<(), UnitError> {
    let m = manager(conn).await?;
    let mut removed = m.receive_job_removed().await?;
    let job = match m.stop_unit(unit, "replace").await {
        Ok(j) => j,
        Err(e) if is_no_such_unit(&e) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    wait_job(&mut removed, &job, "stop", unit, timeout).await
}

/// Forgets a failed unit (unloading a failed transient unit, and its start-limit counter).
pub async fn reset_failed(conn: &Connection, unit: &str) -> Result<(), UnitError> {
    match manager(conn).await?.reset_failed_unit(unit).await {
        Ok(()) => Ok(()),
        Err(e) if is_no_such_unit(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn is_no_such_unit(e: &zbus::Error) -> bool {
    match e {
        zbus::Error::MethodError(name, _, _) => {
            name.as_str() == "org.freedesktop.systemd1.NoSuchUnit"
                || name.as_str() == "org.freedesktop.systemd1.LoadFailed"
        }
        _ => false,
    }
}

/// Names of loaded units matching a glob.
pub async fn list(conn: &Connection, pattern: &str) -> Result<Vec<String>, UnitError> {
    let rows: Vec<UnitRow> = manager(conn)
        .await?
        .list_units_by_patterns(&[], &[pattern])
        .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Reads a unit's state. Not loaded → `UnitState::default()`.
pub async fn state(conn: &Connection, unit: &str) -> Result<UnitState, UnitError> {
    let path = match manager(conn).await?.get_unit(unit).await {
        Ok(p) => p,
        Err(e) if is_no_such_unit(&e) => return Ok(UnitState::default()),
        Err(e) => return Err(e.into()),
    };
    let u = UnitProxy::builder(conn)
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let s = ServiceProxy::builder(conn)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let load = u.load_state().await?;
    Ok(UnitState {
        loaded: load == "loaded",
        active_state: u.active_state().await?,
        sub_state: u.sub_state().await?,
        main_pid: s.main_pid().await?,
        n_restarts: s.n_restarts().await?,
        exec_main_status: s.exec_main_status().await?,
        result: s.result().await?,
        active_enter_timestamp: u.active_enter_timestamp().await?,
        control_group: s.control_group().await?,
    })
}

/// `/org/freedesktop/systemd1/unit/llamactl_2dsmol_2eservice` → `llamactl-smol.service`
/// (systemd escapes every byte outside `[A-Za-z0-9]` as `_xx`).
pub fn unit_from_path(path: &str) -> Option<String> {
    let last = path.strip_prefix("/org/freedesktop/systemd1/unit/")?;
    let b = last.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_unit_paths() {
        assert_eq!(
            unit_from_path("/org/freedesktop/systemd1/unit/llamactl_2dsmol_2eq4_2eservice")
                .as_deref(),
            Some("llamactl-smol.q4.service")
        );
        assert_eq!(
            unit_from_path("/org/freedesktop/systemd1/unit/_31x_2eservice").as_deref(),
            Some("1x.service")
        );
        assert_eq!(unit_from_path("/org/freedesktop/systemd1/job/12"), None);
        assert_eq!(unit_from_path("/org/freedesktop/systemd1/unit/bad_z"), None);
    }
}
