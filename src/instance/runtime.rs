//! An instance's live state: what systemd says about its unit plus what its health endpoint says,
//! folded into one state an operator reads.

use crate::systemd::units::UnitState;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No unit (a stopped transient unit is unloaded).
    Stopped,
    /// The start job is running.
    Starting,
    /// The process runs; its health endpoint does not say ready yet (llama-server answers 503
    /// while it loads the model).
    Loading,
    /// Health endpoint answered 200.
    Ready,
    /// Waiting to be restarted by systemd after a failure (`Restart=`).
    Restarting,
    Stopping,
    /// The unit failed (exit code, signal, start limit hit) and is not being restarted.
    Failed,
}

impl State {
    /// upstream Llamactl's coarser `status`: stopped, running, failed, restarting.
    pub fn upstream_status(self) -> &'static str {
        match self {
            State::Stopped | State::Stopping => "stopped",
            State::Starting | State::Loading | State::Ready => "running",
            State::Restarting => "restarting",
            State::Failed => "failed",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Loading => "loading",
            State::Ready => "ready",
            State::Restarting => "restarting",
            State::Stopping => "stopping",
            State::Failed => "failed",
        }
    }

    /// The unit is up or on its way up: a second start is a conflict.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            State::Starting | State::Loading | State::Ready | State::Restarting
        )
    }
}

/// Backend health as last probed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Health {
    pub ok: bool,
    /// Unix seconds of the last probe.
    pub checked_at: Option<u64>,
    /// HTTP status of the last probe, if it got one.
    pub status: Option<u16>,
    pub error: Option<String>,
}

pub fn derive(unit: &UnitState, health: &Health) -> State {
    if !unit.loaded {
        return State::Stopped;
    }
    match unit.active_state.as_str() {
        "active" | "reloading" => {
            if health.ok {
                State::Ready
            } else {
                State::Loading
            }
        }
        "activating" if unit.sub_state == "auto-restart" => State::Restarting,
        "activating" => State::Starting,
        "deactivating" => State::Stopping,
        "failed" => State::Failed,
        _ => State::Stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(active: &str, sub: &str) -> UnitState {
        UnitState {
            loaded: true,
            active_state: active.into(),
            sub_state: sub.into(),
            ..Default::default()
        }
    }

    #[test]
    fn states() {
        let up = Health {
            ok: true,
            ..Default::default()
        };
        let down = Health::default();
        assert_eq!(derive(&UnitState::default(), &up), State::Stopped);
        assert_eq!(derive(&unit("active", "running"), &down), State::Loading);
        assert_eq!(derive(&unit("active", "running"), &up), State::Ready);
        assert_eq!(derive(&unit("activating", "start"), &down), State::Starting);
        assert_eq!(
            derive(&unit("activating", "auto-restart"), &down),
            State::Restarting
        );
        assert_eq!(
            derive(&unit("deactivating", "stop-sigterm"), &down),
            State::Stopping
        );
        assert_eq!(derive(&unit("failed", "failed"), &down), State::Failed);
        assert_eq!(derive(&unit("inactive", "dead"), &down), State::Stopped);
        assert_eq!(State::Loading.upstream_status(), "running");
        assert!(State::Restarting.is_running() && !State::Failed.is_running());
    }
}
