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

/// Pings the watchdog from a runtime task while `alive` says the rest of the daemon is well
/// (the HTTP workers' heartbeats). If the main runtime wedges (or the process is stopped), or
/// `alive` fails, the pings stop and systemd restarts us: that is the point. A failure is
/// logged once per episode.
pub fn spawn_watchdog<F>(alive: F) -> Option<Duration>
where
    F: Fn(Duration) -> Result<(), String> + Send + 'static,
{
    let every = watchdog_interval()?;
    debug!(interval_ms = every.as_millis() as u64, "watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match alive(every) {
                Ok(()) => {
                    if failing {
                        warn!("the daemon answers its heartbeat again; watchdog pings resume");
                        failing = false;
                    }
                    send(&[NotifyState::Watchdog]);
                }
                Err(why) => {
                    if !failing {
                        tracing::error!(
                            "{why}: withholding the watchdog ping, so systemd restarts the daemon unless this clears"
                        );
                        failing = true;
                    }
                }
            }
        }
    });
    Some(every)
}
