//! Keeps the bus connection up. The daemon must keep serving while the bus is down (health says
//! so), so nothing here ever exits on error: it records the error, waits, and tries again, with
//! exponential backoff from 250 ms up to `[systemd] reconnect_max_backoff`.

use super::dbus::ManagerProxy;
use super::{unix_now, SystemdStatus};
use crate::config::{BusKind, SystemdConfig};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zbus::proxy::CacheProperties;
use zbus::Connection;

/// Per-call deadline: a wedged manager must not stall health checks.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Opens a connection to the configured bus.
pub async fn connect(cfg: &SystemdConfig) -> zbus::Result<Connection> {
    let builder = match (&cfg.address, cfg.bus) {
        (Some(addr), _) => zbus::connection::Builder::address(addr.as_str()),
        (None, BusKind::System) => zbus::connection::Builder::system(),
        (None, BusKind::User) => zbus::connection::Builder::session(),
    };
    builder.method_timeout(CALL_TIMEOUT).build().await
}

async fn read_state(conn: &Connection) -> zbus::Result<(String, String)> {
    let m = ManagerProxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let version = m.version().await?;
    let state = m.system_state().await?;
    Ok((version, state))
}

/// Handle on the monitor: the status channel and the current connection.
#[derive(Clone)]
pub struct Monitor {
    pub status: watch::Receiver<SystemdStatus>,
    pub connection: watch::Receiver<Option<Connection>>,
}

/// Starts the monitor task. It ends when `shutdown` flips to true.
pub fn spawn_monitor(cfg: SystemdConfig, mut shutdown: watch::Receiver<bool>) -> Monitor {
    let initial = SystemdStatus {
        bus: cfg.bus.as_str(),
        last_error: Some("not connected yet".into()),
        ..Default::default()
    };
    let (status_tx, status_rx) = watch::channel(initial);
    let (conn_tx, conn_rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        let max = cfg.reconnect_max_backoff.get().max(FIRST_BACKOFF);
        loop {
            match connect(&cfg).await {
                Ok(conn) => {
                    let was_up =
                        serve_connection(&cfg, &conn, &status_tx, &conn_tx, &mut shutdown).await;
                    conn_tx.send_replace(None);
                    if *shutdown.borrow() {
                        return;
                    }
                    if was_up {
                        backoff = FIRST_BACKOFF;
                    }
                }
                Err(e) => {
                    let msg = format!("cannot connect to the {} bus: {e}", cfg.bus.as_str());
                    mark_down(&status_tx, msg);
                }
            }
            debug!(
                delay_ms = backoff.as_millis() as u64,
                "reconnecting to systemd later"
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(max);
        }
    });
    Monitor {
        status: status_rx,
        connection: conn_rx,
    }
}

/// Polls the manager on one connection until it fails or shutdown. Returns whether the manager
/// answered at least once (which resets the backoff).
async fn serve_connection(
    cfg: &SystemdConfig,
    conn: &Connection,
    status_tx: &watch::Sender<SystemdStatus>,
    conn_tx: &watch::Sender<Option<Connection>>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let mut answered = false;
    // Without Subscribe() the manager does not send us job and unit signals (JobRemoved,
    // PropertiesChanged), which the instance supervisor waits on.
    match ManagerProxy::new(conn).await {
        Ok(m) => {
            if let Err(e) = m.subscribe().await {
                warn!(error = %e, "Subscribe() to the systemd manager failed");
            }
        }
        Err(e) => warn!(error = %e, "cannot create a systemd manager proxy"),
    }
    loop {
        match read_state(conn).await {
            Ok((version, state)) => {
                if !answered {
                    conn_tx.send_replace(Some(conn.clone()));
                }
                let was_connected = status_tx.borrow().connected;
                status_tx.send_modify(|s| {
                    s.connected = true;
                    if !answered {
                        s.connects += 1;
                    }
                    s.version = Some(version.clone());
                    s.system_state = Some(state.clone());
                    s.last_error = None;
                    s.last_seen = Some(unix_now());
                });
                if !was_connected {
                    info!(
                        systemd_version = %version,
                        system_state = %state,
                        bus = cfg.bus.as_str(),
                        "connected to the systemd manager"
                    );
                }
                answered = true;
            }
            Err(e) => {
                mark_down(status_tx, format!("systemd manager did not answer: {e}"));
                return answered;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.check_interval.get()) => {}
            _ = conn.closed() => {
                mark_down(status_tx, "bus connection closed".into());
                return answered;
            }
            _ = shutdown.changed() => return answered,
        }
    }
}

fn mark_down(tx: &watch::Sender<SystemdStatus>, msg: String) {
    let was_connected = tx.borrow().connected;
    let same_error = tx.borrow().last_error.as_deref() == Some(msg.as_str());
    tx.send_modify(|s| {
        s.connected = false;
        s.last_error = Some(msg.clone());
    });
    // Log transitions and new errors, not every retry of the same failure.
    if was_connected || !same_error {
        warn!(error = %msg, "systemd manager unreachable; serving on, will reconnect");
    }
}
