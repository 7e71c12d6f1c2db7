//! The instance table: one entry per instance (its spec, its unit as systemd last said, its
//! health as last probed, its handle), and the read side of the supervisor: the REST view,
//! health, models, Prometheus service discovery, and what `/metrics` reads
//! (`InstanceSource`). Reads take the table's lock for no longer than a copy.

use super::handle::{Handle, Target};
use super::policy;
use super::runtime::{derive, Health, State};
use super::spec::{self, InstanceOptions, InstanceSpec};
use super::store::Corrupt;
use super::supervisor::{not_found, OpError, Supervisor};
use crate::systemd::units::UnitState;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// An instance's health, as `GET /api/instances/{name}/health` shows it.
#[derive(Clone, Debug)]
pub struct InstanceHealth {
    pub state: State,
    pub health: Health,
    pub restarts: u32,
    pub last_error: Option<String>,
}

/// An instance as a model of the proxy.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub name: String,
    pub created: u64,
    pub state: State,
    pub aliases: Vec<String>,
}

pub(super) struct Entry {
    pub spec: InstanceSpec,
    pub unit: UnitState,
    pub health: Health,
    /// Why the last start or stop failed; cleared by the next success.
    pub last_error: Option<String>,
    /// What the proxy holds: address, readiness, requests in flight and the last use (the
    /// idle and LRU clock).
    pub handle: Arc<Handle>,
    pub on_demand_starts: u64,
    pub evictions: u64,
    /// A traced start's `instance.wait_ready` span, until the instance is ready or gave up.
    pub wait_ready: Option<crate::telemetry::OpSpan>,
}

impl Entry {
    pub(super) fn new(spec: InstanceSpec) -> Self {
        Self {
            handle: Arc::new(Handle::new(&spec.name, target_of(&spec.options))),
            spec,
            unit: UnitState::default(),
            health: Health::default(),
            last_error: None,
            on_demand_starts: 0,
            evictions: 0,
            wait_ready: None,
        }
    }

    pub fn state(&self) -> State {
        derive(&self.unit, &self.health)
    }

    /// Sets the unit's or the health's new reading, keeping the handle's readiness in step.
    pub fn observe(&mut self, unit: Option<UnitState>, health: Option<Health>) {
        if let Some(u) = unit {
            self.unit = u;
        }
        if let Some(h) = health {
            self.health = h;
        }
        let state = self.state();
        self.handle.set_ready(state == State::Ready);
        if self.wait_ready.is_some() {
            super::trace::settle_wait_ready(&mut self.wait_ready, state);
        }
    }
}

pub(super) fn target_of(o: &InstanceOptions) -> Target {
    Target {
        addr: o.connect_addr(),
        backend_key: o.backend_key().map(str::to_string),
    }
}

#[derive(Default)]
pub(super) struct Table {
    pub instances: BTreeMap<String, Entry>,
    pub corrupt: Vec<Corrupt>,
    /// `llamactl-*.service` units with no spec (left behind, or created by hand).
    pub orphans: BTreeSet<String>,
}

impl Supervisor {
    /// JSON view of one instance: upstream's fields (`name`, `status`, `created`, `options`) and
    /// ours (state, unit, pid, restarts, health).
    pub(super) fn view(e: &Entry) -> Value {
        let state = e.state();
        json!({
            "name": e.spec.name,
            "status": state.upstream_status(),
            "created": e.spec.created,
            // Secrets (environment values, api_key, *_token) never leave the daemon.
            "options": policy::redacted(&e.spec.options),
            "state": state,
            "desired_state": e.spec.desired_state,
            "unit": spec::unit_name(&e.spec.name),
            "port": e.spec.options.port(),
            "main_pid": (e.unit.main_pid != 0).then_some(e.unit.main_pid),
            "restarts": e.unit.n_restarts,
            "active_since": (e.unit.active_enter_timestamp != 0).then_some(e.unit.active_enter_timestamp / 1_000_000),
            "result": (!e.unit.result.is_empty()).then_some(&e.unit.result),
            "exit_status": e.unit.loaded.then_some(e.unit.exec_main_status),
            "control_group": (!e.unit.control_group.is_empty()).then_some(&e.unit.control_group),
            "health": e.health,
            "last_error": e.last_error,
            "in_flight": e.handle.in_flight(),
        })
    }

    pub fn count(&self) -> usize {
        self.table().instances.len()
    }

    pub fn list(&self) -> Vec<Value> {
        self.table().instances.values().map(Self::view).collect()
    }

    pub fn get(&self, name: &str) -> Result<Value, OpError> {
        self.table()
            .instances
            .get(name)
            .map(Self::view)
            .ok_or_else(|| not_found(name))
    }

    /// An instance's state, without building its JSON view.
    pub fn state_of(&self, name: &str) -> Result<State, OpError> {
        let t = self.table();
        let e = t.instances.get(name).ok_or_else(|| not_found(name))?;
        Ok(e.state())
    }

    /// What the health endpoint of an instance reports.
    pub fn health_of(&self, name: &str) -> Result<InstanceHealth, OpError> {
        let t = self.table();
        let e = t.instances.get(name).ok_or_else(|| not_found(name))?;
        Ok(InstanceHealth {
            state: e.state(),
            health: e.health.clone(),
            restarts: e.unit.n_restarts,
            last_error: e.last_error.clone(),
        })
    }

    /// Every instance as a model for `/v1/models`.
    pub fn models(&self) -> Vec<ModelInfo> {
        self.table()
            .instances
            .values()
            .map(|e| ModelInfo {
                name: e.spec.name.clone(),
                created: e.spec.created,
                state: e.state(),
                aliases: e.spec.options.model_aliases(),
            })
            .collect()
    }

    /// Prometheus HTTP service discovery: one target group per running instance whose backend
    /// serves metrics, labelled so its series join ours on `instance_name`.
    pub fn sd_targets(&self) -> Vec<Value> {
        self.table()
            .instances
            .values()
            .filter(|e| e.state().is_running())
            .filter_map(|e| {
                let o = &e.spec.options;
                let path = o.metrics_path()?;
                Some(json!({
                    "targets": [o.connect_addr()?],
                    "labels": {
                        "instance_name": e.spec.name,
                        "backend_type": o.backend_type,
                        "__metrics_path__": path,
                    }
                }))
            })
            .collect()
    }

    pub fn corrupt(&self) -> Vec<Corrupt> {
        self.table().corrupt.clone()
    }

    pub fn orphans(&self) -> Vec<String> {
        self.table().orphans.iter().cloned().collect()
    }
}

impl crate::stats::snapshot::InstanceSource for Supervisor {
    /// For `/metrics`: what the table knows, without any D-Bus call.
    fn instances(&self) -> Vec<crate::stats::snapshot::InstanceInfo> {
        self.table()
            .instances
            .values()
            .map(|e| {
                let state = e.state();
                crate::stats::snapshot::InstanceInfo {
                    name: e.spec.name.clone(),
                    state: state.as_str(),
                    up: state == State::Ready,
                    running: state.is_running(),
                    start_time: (e.unit.active_enter_timestamp != 0)
                        .then_some(e.unit.active_enter_timestamp / 1_000_000),
                    invocation: e.unit.active_enter_timestamp,
                    oom_killed: e.unit.result == "oom-kill",
                    restarts: e.unit.n_restarts,
                    control_group: e.unit.control_group.clone(),
                    in_flight: e.handle.in_flight(),
                    on_demand_starts: e.on_demand_starts,
                    evictions: e.evictions,
                }
            })
            .collect()
    }
}
