//! Instances started and stopped by traffic: on-demand start (shared by concurrent requests),
//! idle stop, and `max_running` with least-recently-used eviction.

use super::handle::Handle;
use super::runtime::State;
use super::supervisor::{OpError, Rights, Supervisor};

/// Who a start on demand is for, as far as the instance layer cares: their rights, whether a
/// start may happen now (the layers above answer for the audit trail), and how it went.
pub trait Requester: Send + Sync {
    fn rights(&self) -> Rights;
    /// `Err` (why) refuses the start before anything happens.
    fn admit_start(&self) -> Result<(), String> {
        Ok(())
    }
    /// A start attempted for this requester ended (`Err`: why it failed).
    fn started(&self, _instance: &str, _result: &Result<(), String>) {}
}

/// What the daemon's own mutations (evictions, idle stops) answer to: the audit trail, wired
/// in by the daemon (this layer cannot name it).
pub trait Lifecycle: Send + Sync {
    /// Whether a mutation may run now; `Err` (why) skips it.
    fn admit(&self) -> Result<(), String>;
    /// `name` was stopped to make room for `for_instance` (`Err`: the stop failed).
    fn evicted(&self, name: &str, for_instance: &str, result: &Result<(), String>);
    /// `name` was stopped for idleness.
    fn idle_stopped(&self, name: &str, result: &Result<(), String>);
}
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{info, warn};

impl Supervisor {
    /// Makes sure the instance serves: starts it if it is stopped and allows on-demand starts
    /// (one start however many requests ask at once), then waits until it is ready. Returns
    /// whether this call started it. `rights` are the caller's: without `can_start` a stopped
    /// instance is refused; without `can_evict` the start waits for a free slot under
    /// `max_running` instead of evicting.
    pub async fn ensure_ready(
        self: &Arc<Self>,
        handle: &Handle,
        timeout: Duration,
        requester: Arc<dyn Requester>,
    ) -> Result<bool, OpError> {
        // Hot path of every proxied request: a ready instance needs no lock at all.
        if handle.is_ready() {
            return Ok(false);
        }
        let name = handle.name();
        let rights = requester.rights();
        let deadline = Instant::now() + timeout;
        let gate = {
            let mut g = self.start_gates.lock().await;
            g.entry(name.to_string()).or_default().clone()
        };
        let mut started = false;
        {
            let one_start = tokio::time::timeout_at(deadline.into(), gate.lock_owned())
                .await
                .map_err(|_| timed_out(name, timeout))?;
            let (state, allowed) = {
                let t = self.table();
                let e = t
                    .instances
                    .get(name)
                    .ok_or_else(|| OpError::NotFound(format!("no instance named {name:?}")))?;
                (e.state(), e.spec.options.on_demand_start.unwrap_or(false))
            };
            if state == State::Ready {
                return Ok(false);
            }
            if !state.is_running() {
                if !allowed {
                    return Err(OpError::Unavailable(format!(
                        "instance {name:?} is {} and on_demand_start is off",
                        state.as_str()
                    )));
                }
                if !rights.can_start {
                    return Err(OpError::Forbidden(format!(
                        "instance {name:?} is {} and this API key may not start it (can_start = false)",
                        state.as_str()
                    )));
                }
                // The start runs to completion in a task of its own, holding the gate, whatever
                // happens to this request: a client that leaves (or its deadline) must not cut
                // it half-way. It also keeps the start's blocking work (audit records, spec
                // fsync) off the HTTP worker this request runs on (the daemon's spawner runs it
                // on the main runtime).
                let (tx, rx) = tokio::sync::oneshot::channel();
                let sup = self.clone();
                let owned = name.to_string();
                self.spawn_op(Box::pin(async move {
                    let _one_start = one_start;
                    let r = sup.start_on_demand(&owned, &*requester, deadline).await;
                    let _ = tx.send(r);
                }));
                rx.await.map_err(|_| {
                    OpError::Failed(format!(
                        "the on-demand start of {name:?} ended unexpectedly (see the daemon's log)"
                    ))
                })??;
                started = true;
            }
        }
        loop {
            let state = self.state_of(name)?;
            match state {
                State::Ready => return Ok(started),
                State::Failed | State::Stopped => {
                    return Err(OpError::Failed(format!(
                        "instance {name:?} is {} after its start; see its logs",
                        state.as_str()
                    )))
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(timed_out(name, timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The start part of `ensure_ready`, in its own task: admission, the start (under
    /// `max_running`, waiting for a slot while everything is busy), its audit record.
    async fn start_on_demand(
        &self,
        name: &str,
        requester: &dyn Requester,
        deadline: Instant,
    ) -> Result<(), OpError> {
        requester.admit_start().map_err(OpError::Unavailable)?;
        loop {
            match self.start_with(name, requester.rights()).await {
                Ok(_) => {
                    requester.started(name, &Ok(()));
                    break;
                }
                Err(OpError::Busy(msg)) => {
                    if Instant::now() >= deadline {
                        return Err(OpError::Unavailable(msg));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(OpError::Conflict(m)) if m.contains("already running") => return Ok(()),
                Err(e) => {
                    requester.started(name, &Err(e.to_string()));
                    return Err(e);
                }
            }
        }
        if let Some(e) = self.table().instances.get_mut(name) {
            e.on_demand_starts += 1;
        }
        info!(llamactl_instance = name, "started on demand");
        Ok(())
    }

    /// Under `max_running`, stops the least recently used idle instance so `name` can start
    /// (when `may_evict`; otherwise only a free slot will do). Called with the operations lock
    /// held (from `start_locked`).
    pub(super) async fn make_room(&self, name: &str, may_evict: bool) -> Result<(), OpError> {
        let max = self.settings().instances.max_running as usize;
        if max == 0 {
            return Ok(());
        }
        let victim = {
            let t = self.table();
            let running: Vec<_> = t
                .instances
                .values()
                .filter(|e| e.spec.name != name && e.state().is_running())
                .collect();
            if running.len() < max {
                return Ok(());
            }
            if !may_evict {
                return Err(OpError::Busy(format!(
                    "max_running ({max}) reached, and this API key may not stop another instance to make room (can_evict = false)"
                )));
            }
            running
                .iter()
                .filter(|e| e.handle.in_flight() == 0)
                .min_by_key(|e| (e.handle.last_used(), e.unit.active_enter_timestamp))
                .map(|e| e.spec.name.clone())
                .ok_or_else(|| {
                    OpError::Busy(format!(
                        "max_running ({max}) reached and every running instance has requests in flight"
                    ))
                })?
        };
        if let Some(h) = self.hook() {
            h.admit().map_err(OpError::Unavailable)?;
        }
        info!(llamactl_instance = %victim, for_instance = name, "evicting the least recently used instance (max_running)");
        // Its desired state becomes "stopped": a daemon restart does not bring it back (it
        // still starts on demand).
        let span = self.op_span("instance.evict", &victim, None);
        span.set(crate::telemetry::Attr::new(
            "instance.evicted_for",
            name.to_string(),
        ));
        let stopped = self.traced(span, self.stop_locked(&victim)).await;
        if let Some(h) = self.hook() {
            h.evicted(
                &victim,
                name,
                &stopped.as_ref().map(|_| ()).map_err(|e| e.to_string()),
            );
        }
        stopped?;
        if let Some(e) = self.table().instances.get_mut(&victim) {
            e.evictions += 1;
        }
        Ok(())
    }

    /// Stops instances whose `idle_timeout` has passed without a request.
    pub fn spawn_idle_stopper(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                // `[proxy] idle_check_interval`, read each round: a reload changes it.
                let every = me.settings().idle_check_interval;
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => return,
                }
                let now = Instant::now();
                let idle: Vec<String> = {
                    let mut t = me.table();
                    t.instances
                        .values_mut()
                        .filter(|e| e.state().is_running() && e.handle.in_flight() == 0)
                        .filter_map(|e| {
                            let after = e.spec.options.idle_after()?;
                            // The idle clock starts at the last request, or when first seen running.
                            let since = e.handle.last_used_or(now);
                            (now.duration_since(since) >= after).then(|| e.spec.name.clone())
                        })
                        .collect()
                };
                for name in idle {
                    info!(llamactl_instance = %name, "stopping idle instance (idle_timeout)");
                    let _op = me.ops.lock().await;
                    let still_idle = me
                        .table()
                        .instances
                        .get(&name)
                        .is_some_and(|e| e.handle.in_flight() == 0);
                    if !still_idle {
                        continue;
                    }
                    if let Some(h) = me.hook() {
                        if let Err(why) = h.admit() {
                            warn!(llamactl_instance = %name, error = %why, "idle instance left running");
                            continue;
                        }
                    }
                    let stopped = me.stop_locked(&name).await;
                    if let Some(h) = me.hook() {
                        h.idle_stopped(&name, &stopped.map(|_| ()).map_err(|e| e.to_string()));
                    }
                }
            }
        });
    }
}

fn timed_out(name: &str, timeout: Duration) -> OpError {
    OpError::Unavailable(format!(
        "instance {name:?} not ready within {timeout:?}; retry later"
    ))
}
