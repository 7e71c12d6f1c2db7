//! The systemd manager over D-Bus: one connection, kept alive by a monitor task that reconnects
//! with backoff, and a status everyone else reads (health endpoints, readiness, later the
//! instance supervisor).

pub mod dbus;
#[cfg(test)]
pub mod fake;
pub mod manager;
mod monitor;
pub mod transient;
pub mod units;

pub use monitor::{connect, spawn_monitor, Monitor};

use serde::Serialize;
use std::time::SystemTime;

/// What we last knew about the manager. Published on a `watch` channel by the monitor.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SystemdStatus {
    pub connected: bool,
    /// `system` or `user`.
    pub bus: &'static str,
    /// The manager's version string (kept from the last successful read when disconnected).
    pub version: Option<String>,
    pub system_state: Option<String>,
    /// Why the last connect or call failed; cleared on success.
    pub last_error: Option<String>,
    /// Unix seconds of the last successful answer from the manager.
    pub last_seen: Option<u64>,
    /// Connections made so far (1 after start; more after each reconnect).
    pub connects: u64,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
