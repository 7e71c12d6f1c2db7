//! The supervisor's work on units: start and stop an instance's unit (with the desired state
//! recorded around them, in the order that survives a crash), re-read a unit's state, and the
//! unit an instance runs as (`plan.rs`). Start and stop are called with the supervisor's
//! operation lock held; `refresh` serialises itself (it is also called by `follow.rs`).

use super::{not_found, store_error, OpError, Rights, Supervisor};
use crate::instance::ports::port_free;
use crate::instance::runtime::Health;
use crate::instance::spec::{self, DesiredState, InstanceSpec};
use crate::instance::{policy, trace};
use crate::systemd::transient::TransientService;
use crate::systemd::units::UnitError;
use tracing::{info, warn};

impl Supervisor {
    /// Records the desired state: on disk first, then in memory, so a failed write changes
    /// neither (every lifecycle change is made under the operations lock).
    pub(super) fn set_desired(&self, name: &str, desired: DesiredState) -> Result<(), OpError> {
        let mut spec = {
            let t = self.table();
            let e = t.instances.get(name).ok_or_else(|| not_found(name))?;
            if e.spec.desired_state == desired {
                return Ok(());
            }
            e.spec.clone()
        };
        spec.desired_state = desired;
        self.store.save(name, &spec).map_err(store_error)?;
        if let Some(e) = self.table().instances.get_mut(name) {
            e.spec.desired_state = desired;
        }
        Ok(())
    }

    pub(super) fn record_error(&self, name: &str, err: Option<String>) {
        if let Some(e) = self.table().instances.get_mut(name) {
            e.last_error = err;
        }
    }

    /// The unit for an instance, from its spec and the config (`plan.rs`).
    pub(super) fn plan(&self, spec: &InstanceSpec) -> Result<TransientService, OpError> {
        let settings = self.settings();
        let cfg = crate::instance::plan::PlanConfig {
            instances: &settings.instances,
            backends: &settings.backends,
            slice: &self.slice,
        };
        let path_var = std::env::var("PATH").ok();
        crate::instance::plan::plan(spec, &cfg, &|cmd| {
            spec::resolve_command(cmd, path_var.as_deref())
        })
        .map_err(OpError::Failed)
    }

    pub(in crate::instance) async fn start_locked(
        &self,
        name: &str,
        rights: Rights,
    ) -> Result<(), OpError> {
        let spec = self
            .table()
            .instances
            .get(name)
            .map(|e| e.spec.clone())
            .ok_or_else(|| not_found(name))?;
        let m = self.manager()?;
        self.refresh(name).await?;
        let state = self.state_of(name)?;
        if state.is_running() {
            return Err(OpError::Conflict(format!(
                "instance {name:?} is already running ({state:?})"
            )));
        }
        // Checked again at every start: a spec file edited by hand, or one created before the
        // operator tightened the policy, gets no further than one from the API.
        if let Err(e) = policy::check(&spec.options, &self.settings().instances) {
            let e = OpError::from(e);
            self.record_error(name, Some(e.to_string()));
            return Err(e);
        }
        self.make_room(name, rights.can_evict).await?;
        let port = spec.options.port().unwrap_or(0);
        if !port_free(spec.options.host(), port).await {
            return Err(OpError::Conflict(format!(
                "port {port} of instance {name:?} is in use by another process"
            )));
        }
        let plan = match self.plan(&spec) {
            Ok(p) => p,
            Err(e) => {
                self.record_error(name, Some(e.to_string()));
                return Err(e);
            }
        };
        // A failed unit of the same name is still loaded (CollectMode=inactive); clear it.
        m.reset_failed(&plan.unit)
            .await
            .map_err(|e| unit_error(e, format!("resetting {}", plan.unit)))?;
        info!(llamactl_instance = name, unit = %plan.unit, argv = %policy::redact_argv(&plan.argv).join(" "), "starting instance");
        // Desired "running" is recorded before the unit starts: a crash in between leaves an
        // instance the daemon starts when it comes back, never a running unit whose spec says
        // stopped. A start that fails puts it back.
        let was = spec.desired_state;
        self.set_desired(name, DesiredState::Running)?;
        let started = trace::job(
            "start",
            &plan.unit,
            m.start_transient(&plan, self.settings().instances.job_timeout.get()),
        )
        .await;
        if started.is_ok() {
            if let Some(span) = trace::wait_ready_span(name) {
                if let Some(e) = self.table().instances.get_mut(name) {
                    e.wait_ready = Some(span);
                }
            }
        }
        let _ = self.refresh(name).await;
        match started {
            Ok(()) => {
                self.record_error(name, None);
                Ok(())
            }
            Err(e) => {
                let e = unit_error(e, format!("starting {}", plan.unit));
                warn!(llamactl_instance = name, error = %e, "instance start failed");
                self.record_error(name, Some(e.to_string()));
                if let Err(undo) = self.set_desired(name, was) {
                    warn!(llamactl_instance = name, error = %undo, "could not record the desired state back");
                }
                Err(e)
            }
        }
    }

    pub(crate) async fn stop_locked(&self, name: &str) -> Result<(), OpError> {
        if !self.table().instances.contains_key(name) {
            return Err(not_found(name));
        }
        self.manager()?;
        self.set_desired(name, DesiredState::Stopped)?;
        self.stop_unit(name).await
    }

    /// Stops the instance's unit, its desired state untouched.
    pub(super) async fn stop_unit(&self, name: &str) -> Result<(), OpError> {
        let m = self.manager()?;
        let unit = spec::unit_name(name);
        let stopped = trace::job(
            "stop",
            &unit,
            m.stop(&unit, self.settings().instances.job_timeout.get()),
        )
        .await;
        if stopped.is_ok() {
            let _ = m.reset_failed(&unit).await;
        }
        let _ = self.refresh(name).await;
        match stopped {
            Ok(()) => {
                info!(llamactl_instance = name, "instance stopped");
                self.record_error(name, None);
                Ok(())
            }
            Err(e) => {
                let e = unit_error(e, format!("stopping {unit}"));
                self.record_error(name, Some(e.to_string()));
                Err(e)
            }
        }
    }

    /// Re-reads an instance's unit from systemd.
    pub(in crate::instance) async fn refresh(&self, name: &str) -> Result<(), OpError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let st = self
            .units
            .state(&spec::unit_name(name))
            .await
            .map_err(|e| OpError::Unavailable(format!("reading unit state: {e}")))?;
        let mut t = self.table();
        if let Some(e) = t.instances.get_mut(name) {
            let before = e.state();
            let fresh = st.active_state != "active" || st.main_pid != e.unit.main_pid;
            e.observe(Some(st), fresh.then(Health::default));
            let after = e.state();
            if before != after {
                info!(llamactl_instance = name, from = ?before, to = ?after, "instance state changed");
            }
        }
        Ok(())
    }
}

/// A unit operation's failure: unreachable manager → 503, anything else → the operation failed.
pub(super) fn unit_error(e: UnitError, doing: String) -> OpError {
    match e {
        UnitError::Unavailable => OpError::Unavailable(e.to_string()),
        e => OpError::Failed(format!("{doing}: {e}")),
    }
}
