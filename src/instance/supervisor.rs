//! The supervisor and the instances' lifecycle: open (load and check every spec), create,
//! update, delete, start, stop, restart. Specs live in the `Store`; units live in systemd (a
//! `UnitManager`); this keeps the two in step. Lifecycle operations are serialised (one at a
//! time) so two requests cannot start the same unit or hand out the same port; reads
//! (`table.rs`) never wait for them.

mod units;

use units::unit_error;

use super::handle::{Handle, Routes};
use super::policy;
use super::spec::{self, DesiredState, InstanceOptions, InstanceSpec};
use super::store::{Corrupt, Store};
use super::table::{target_of, Entry, Table};
use super::trace;
use crate::config::{BackendsConfig, InstancesConfig};
use crate::systemd::manager::UnitManager;
use crate::systemd::units::UnitError;
use serde_json::Value;
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::{info, warn};

/// Why an operation failed; the HTTP layer maps each kind to a status code.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    /// `max_running` is reached and no running instance can be evicted (all have requests in
    /// flight): an API start gets 409, a proxied request waits and retries.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Failed(String),
    /// The operator's policy does not allow it (`[instances]` allowed_backends, environment,
    /// max_instances): 403.
    #[error("{0}")]
    Forbidden(String),
    /// The state directory is full (or over its quota): nothing was changed; 507.
    #[error("{0}")]
    NoSpace(String),
}

/// A failed spec write or removal: `NoSpace` when the file system is full, else `Failed`.
pub(super) fn store_error(e: anyhow::Error) -> OpError {
    let full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        })
    });
    let msg = format!("{e:#}");
    if full {
        OpError::NoSpace(format!(
            "{msg}; nothing was changed (free space in the state directory and retry)"
        ))
    } else {
        OpError::Failed(msg)
    }
}

impl From<policy::Refusal> for OpError {
    fn from(r: policy::Refusal) -> Self {
        match r {
            policy::Refusal::Forbidden(m) => OpError::Forbidden(m),
            policy::Refusal::Invalid(m) => OpError::BadRequest(m),
        }
    }
}

/// What a start may do besides starting: `can_evict` (stop the least recently used instance
/// under `max_running`). An API key's right of the same name limits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rights {
    pub can_start: bool,
    pub can_evict: bool,
}

impl Rights {
    pub const ALL: Rights = Rights {
        can_start: true,
        can_evict: true,
    };
}

/// What the supervisor takes from the config. Replaced whole on reload (SIGHUP) and read once
/// per operation, so new creates, starts, probes and requests use the new values while an
/// operation under way keeps the ones it began with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub instances: InstancesConfig,
    pub backends: BackendsConfig,
    /// `[proxy] idle_check_interval`: how often idle instances are looked for.
    pub idle_check_interval: std::time::Duration,
}

impl Settings {
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            instances: c.instances.clone(),
            backends: c.backends.clone(),
            idle_check_interval: c.proxy.idle_check_interval.get(),
        }
    }
}

pub struct Supervisor {
    pub(super) store: Store,
    settings: crate::config::Live<Settings>,
    slice: String,
    pub(super) daemon_port: u16,
    /// systemd (`systemd::manager::Bus`), or an in-memory manager in unit tests.
    pub(super) units: Arc<dyn UnitManager>,
    /// Model names to handles, rebuilt when instances or their aliases change.
    routes: crate::config::Live<Routes>,
    pub(super) table: Mutex<Table>,
    pub(super) ops: tokio::sync::Mutex<()>,
    /// Refreshes (read unit state, store it) run one at a time: two overlapping ones could
    /// otherwise store an older reading after a newer one (a start's own refresh finishing after
    /// the signal-driven one), leaving a stale state until the next change.
    refreshing: tokio::sync::Mutex<()>,
    /// One on-demand start per instance at a time (see `demand.rs`).
    pub(super) start_gates:
        tokio::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Evictions and idle stops answer to it (the daemon sets the audit trail here).
    hook: std::sync::OnceLock<Arc<dyn super::demand::Lifecycle>>,
    spawner: std::sync::OnceLock<Spawner>,
}

/// Runs an operation that must not be cancelled with the request that asked for it (an
/// on-demand start) in a task of its own: the daemon gives the HTTP layer's (`http::detach`),
/// which runs it on the main runtime and waits for it at shutdown.
pub type Spawner = Arc<dyn Fn(futures_util::future::BoxFuture<'static, ()>) + Send + Sync>;

impl Supervisor {
    /// The settings in force (an `Arc` clone under a read lock held for no time).
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.get()
    }

    /// Applies reloaded settings: new operations use them.
    pub fn set_settings(&self, s: Settings) {
        self.settings.set(s);
    }
}

fn now() -> u64 {
    crate::systemd::unix_now()
}

impl Supervisor {
    /// Loads every spec; corrupt files are logged and kept aside.
    pub fn open(
        store: Store,
        settings: Settings,
        slice: String,
        daemon_port: u16,
        units: Arc<dyn UnitManager>,
    ) -> anyhow::Result<Arc<Self>> {
        let cleaned = store.clean_temp_files();
        if cleaned > 0 {
            warn!(
                files = cleaned,
                dir = %store.dir().display(),
                "removed temp spec files an earlier crash left behind"
            );
        }
        let (specs, corrupt) = store.load_all::<InstanceSpec>()?;
        let mut table = Table {
            corrupt,
            ..Default::default()
        };
        for c in &table.corrupt {
            tracing::error!(
                llamactl_instance = %c.name,
                path = %c.path.display(),
                error = %c.error,
                "instance spec file cannot be read; skipped (fix or remove it)"
            );
        }
        for (file_name, mut spec) in specs {
            // A spec file goes through the same checks as a request: one edited by hand into
            // something invalid is reported, like an unreadable one, and never started.
            let problem = if spec.name != file_name || spec::validate_name(&spec.name).is_err() {
                Some(format!(
                    "file holds instance {:?}, not {file_name:?}",
                    spec.name
                ))
            } else {
                spec.options
                    .normalise(&settings.instances)
                    .err()
                    .map(|e| format!("invalid spec: {e}"))
            };
            if let Some(error) = problem {
                let c = Corrupt {
                    name: file_name.clone(),
                    path: store.path(&file_name),
                    error,
                };
                tracing::error!(llamactl_instance = %c.name, path = %c.path.display(), error = %c.error, "instance spec file skipped (fix or remove it)");
                table.corrupt.push(c);
                continue;
            }
            table.instances.insert(spec.name.clone(), Entry::new(spec));
        }
        info!(
            instances = table.instances.len(),
            corrupt = table.corrupt.len(),
            dir = %store.dir().display(),
            "instance specs loaded"
        );
        Ok(Arc::new(Self {
            routes: crate::config::Live::new(routes_of(&table)),
            store,
            settings: crate::config::Live::new(settings),
            slice,
            daemon_port,
            units,
            table: Mutex::new(table),
            ops: tokio::sync::Mutex::new(()),
            refreshing: tokio::sync::Mutex::new(()),
            start_gates: tokio::sync::Mutex::new(std::collections::HashMap::new()),
            hook: std::sync::OnceLock::new(),
            spawner: std::sync::OnceLock::new(),
        }))
    }

    /// Makes the model routes anew from the table (after a create, update or delete).
    fn rebuild_routes(&self) {
        let routes = routes_of(&self.table());
        self.routes.set(routes);
    }

    /// The handle of the instance a request's `model` names (its name, `instance/model`, or an
    /// alias), without the table's lock.
    pub fn route(&self, model: &str) -> Option<Arc<Handle>> {
        self.routes.get().resolve(model).cloned()
    }

    /// An instance's handle by name.
    pub fn handle(&self, name: &str) -> Option<Arc<Handle>> {
        self.table().instances.get(name).map(|e| e.handle.clone())
    }

    /// Sets what the daemon's own evictions and idle stops answer to (once, at start).
    pub fn set_lifecycle(&self, hook: Arc<dyn super::demand::Lifecycle>) {
        let _ = self.hook.set(hook);
    }

    /// Where uncancellable operations run (see `Spawner`); without one, `tokio::spawn`.
    pub fn set_spawner(&self, spawner: Spawner) {
        let _ = self.spawner.set(spawner);
    }

    pub(super) fn spawn_op(&self, op: futures_util::future::BoxFuture<'static, ()>) {
        // The operation stays in the caller's trace (a proxied request's on-demand start).
        let op = crate::telemetry::in_current(op);
        match self.spawner.get() {
            Some(s) => s(op),
            None => {
                tokio::spawn(op);
            }
        }
    }

    pub(super) fn hook(&self) -> Option<&Arc<dyn super::demand::Lifecycle>> {
        self.hook.get()
    }

    pub(super) fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// systemd, when it can be reached.
    fn manager(&self) -> Result<&dyn UnitManager, OpError> {
        if self.units.available() {
            Ok(&*self.units)
        } else {
            Err(OpError::Unavailable(UnitError::Unavailable.to_string()))
        }
    }

    pub async fn create(&self, name: &str, options: InstanceOptions) -> Result<Value, OpError> {
        let span = self.op_span("instance.create", name, Some(&options));
        self.traced(span, self.create_op(name, options)).await
    }

    async fn create_op(&self, name: &str, mut options: InstanceOptions) -> Result<Value, OpError> {
        spec::validate_name(name).map_err(OpError::BadRequest)?;
        let settings = self.settings();
        options
            .normalise(&settings.instances)
            .map_err(OpError::BadRequest)?;
        policy::check(&options, &settings.instances)?;
        let _op = self.ops.lock().await;
        {
            let t = self.table();
            if t.instances.contains_key(name) {
                return Err(OpError::Conflict(format!(
                    "instance {name:?} already exists"
                )));
            }
            let max = settings.instances.max_instances as usize;
            if t.instances.len() + t.corrupt.len() >= max {
                return Err(OpError::Forbidden(format!(
                    "{max} instances exist already ([instances] max_instances); delete one first"
                )));
            }
            if let Some(c) = t.corrupt.iter().find(|c| c.name == name) {
                return Err(OpError::Conflict(format!(
                    "a spec file for {name:?} exists but cannot be read ({}: {}); fix or remove it first",
                    c.path.display(),
                    c.error
                )));
            }
        }
        let port = self
            .assign_port(name, options.port(), options.host())
            .await?;
        options.set_port(port);
        let spec = InstanceSpec {
            name: name.to_string(),
            created: now(),
            desired_state: DesiredState::Stopped,
            options,
        };
        self.store.save(name, &spec).map_err(store_error)?;
        info!(llamactl_instance = name, port, "instance created");
        let entry = Entry::new(spec);
        let v = Self::view(&entry);
        self.table().instances.insert(name.to_string(), entry);
        self.rebuild_routes();
        if self.units.available() {
            // A unit of that name may exist already (an orphan being given a spec).
            let _ = self.refresh(name).await;
            self.table().orphans.remove(&spec::unit_name(name));
        }
        Ok(v)
    }

    /// Replaces the options; a running instance is restarted with them (as upstream does).
    pub async fn update(&self, name: &str, options: InstanceOptions) -> Result<Value, OpError> {
        let span = self.op_span("instance.update", name, Some(&options));
        self.traced(span, self.update_op(name, options)).await
    }

    async fn update_op(&self, name: &str, mut options: InstanceOptions) -> Result<Value, OpError> {
        spec::validate_name(name).map_err(OpError::BadRequest)?;
        let _op = self.ops.lock().await;
        let (old_port, running) = {
            let t = self.table();
            let e = t.instances.get(name).ok_or_else(|| not_found(name))?;
            // A spec read from the API carries `<redacted>` for its secrets: keep the stored ones.
            policy::keep_redacted(&mut options, &e.spec.options).map_err(OpError::BadRequest)?;
            (e.spec.options.port(), e.state().is_running())
        };
        let settings = self.settings();
        options
            .normalise(&settings.instances)
            .map_err(OpError::BadRequest)?;
        policy::check(&options, &settings.instances)?;
        let port = self
            .assign_port(name, options.port().or(old_port), options.host())
            .await?;
        options.set_port(port);
        // The new spec on disk first (its desired state unchanged), then in memory: a crash or a
        // failed write never leaves the instance stopped with its new options unsaved.
        let mut spec = self
            .table()
            .instances
            .get(name)
            .map(|e| e.spec.clone())
            .ok_or_else(|| not_found(name))?;
        spec.options = options;
        self.store.save(name, &spec).map_err(store_error)?;
        {
            let mut t = self.table();
            let e = t.instances.get_mut(name).ok_or_else(|| not_found(name))?;
            e.handle.set_target(target_of(&spec.options));
            e.spec = spec;
        }
        info!(llamactl_instance = name, "instance updated");
        if running {
            // Restarted with the new options, its desired state still "running".
            self.stop_unit(name).await?;
            self.start_locked(name, Rights::ALL).await?;
        }
        self.get(name)
    }

    /// Stops the unit (if any), then removes the spec: never a spec-less running unit.
    pub async fn delete(&self, name: &str) -> Result<(), OpError> {
        let span = self.op_span("instance.delete", name, None);
        self.traced(span, self.delete_op(name)).await
    }

    async fn delete_op(&self, name: &str) -> Result<(), OpError> {
        spec::validate_name(name).map_err(OpError::BadRequest)?;
        let _op = self.ops.lock().await;
        if !self.table().instances.contains_key(name) {
            return Err(not_found(name));
        }
        let m = self.manager()?;
        // Stopped is recorded first: a crash between the stop and the unlink must not start
        // the instance again when the daemon comes back.
        self.set_desired(name, DesiredState::Stopped)?;
        let unit = spec::unit_name(name);
        trace::job(
            "stop",
            &unit,
            m.stop(&unit, self.settings().instances.job_timeout.get()),
        )
        .await
        .map_err(|e| unit_error(e, format!("stopping {unit}")))?;
        m.reset_failed(&unit)
            .await
            .map_err(|e| unit_error(e, format!("resetting {unit}")))?;
        self.store.remove(name).map_err(store_error)?;
        self.table().instances.remove(name);
        self.rebuild_routes();
        info!(llamactl_instance = name, "instance deleted");
        Ok(())
    }

    pub async fn start(&self, name: &str) -> Result<Value, OpError> {
        self.start_with(name, Rights::ALL).await
    }

    /// A start on behalf of someone with limited rights (an inference key's on-demand start).
    pub async fn start_with(&self, name: &str, rights: Rights) -> Result<Value, OpError> {
        spec::validate_name(name).map_err(OpError::BadRequest)?;
        let span = self.op_span("instance.start", name, None);
        self.traced(span, async {
            let _op = self.ops.lock().await;
            self.start_locked(name, rights).await?;
            self.get(name)
        })
        .await
    }

    pub async fn stop(&self, name: &str) -> Result<Value, OpError> {
        spec::validate_name(name).map_err(OpError::BadRequest)?;
        let span = self.op_span("instance.stop", name, None);
        self.traced(span, async {
            let _op = self.ops.lock().await;
            self.stop_locked(name).await?;
            self.get(name)
        })
        .await
    }

    pub async fn restart(&self, name: &str) -> Result<Value, OpError> {
        spec::validate_name(name).map_err(OpError::BadRequest)?;
        let span = self.op_span("instance.restart", name, None);
        self.traced(span, self.restart_op(name)).await
    }

    async fn restart_op(&self, name: &str) -> Result<Value, OpError> {
        let _op = self.ops.lock().await;
        if !self.table().instances.contains_key(name) {
            return Err(not_found(name));
        }
        // The desired state is not touched by the stop: a crash in between leaves an instance
        // that wants to run, which the daemon starts when it comes back.
        self.stop_unit(name).await?;
        self.start_locked(name, Rights::ALL).await?;
        self.get(name)
    }
}

/// The model routes of every instance in the table.
fn routes_of(t: &Table) -> Routes {
    Routes::build(
        t.instances
            .values()
            .map(|e| (&e.handle, e.spec.options.model_aliases())),
    )
}

pub(super) fn not_found(name: &str) -> OpError {
    OpError::NotFound(format!("no instance named {name:?}"))
}
