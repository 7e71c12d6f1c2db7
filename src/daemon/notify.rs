//! systemd's notify protocol: READY/STATUS/RELOADING/STOPPING and the watchdog. Every call is a
//! no-op without `$NOTIFY_SOCKET`, so the daemon runs the same outside systemd.

use sd_notify::NotifyState;
use std::time::Duration;
use tracing::{debug, warn};

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "sd_notify failed");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// RELOADING=1 carries MONOTONIC_USEC so systemd ≥ 253 (`Type=notify-reload`) can match it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(m) => send(&[NotifyState::Reloading, m]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The ping interval: half of `WatchdogSec=`, as sd_watchdog_enabled(3) recommends.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// Pings the watchdog from a runtime task. If the runtime wedges (or the process is stopped),
/// the pings stop and systemd restarts us: that is the point.
pub fn spawn_watchdog() -> Option<Duration> {
    let every = watchdog_interval()?;
    debug!(interval_ms = every.as_millis() as u64, "watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
    Some(every)
}
