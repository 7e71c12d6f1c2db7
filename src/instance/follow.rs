//! Following the units: adopting them when the manager is (re)connected, re-reading one when
//! the manager says it changed (`PropertiesChanged` signals, no polling), and probing backends'
//! health endpoints.

use super::runtime::{Health, State};
use super::spec::{self, DesiredState};
use super::supervisor::Supervisor;
use crate::systemd::manager::UnitEvent;
use axum::body::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the probe loop runs: starting or loading instances are probed every round (ready
/// ones at the configured interval). While one is loading, every `LOADING_PROBE`: an on-demand
/// request waits for exactly that moment (bench/footprint part 3: 250 ms rounds added about
/// 125 ms to a cold start's first token).
const FAST_PROBE: Duration = Duration::from_millis(250);
const LOADING_PROBE: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Supervisor {
    /// Starts the watcher and the prober; both end when `shutdown` turns true.
    pub fn spawn_background(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        let me = self.clone();
        let sd = shutdown.clone();
        tokio::spawn(async move { me.follow_units(sd).await });
        let me = self.clone();
        tokio::spawn(async move { me.probe_loop(shutdown).await });
    }

    /// For every (re)connection: adopt; then re-read each of our units that changed.
    async fn follow_units(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let mut events = self.units.events(shutdown);
        while let Some(ev) = events.recv().await {
            match ev {
                UnitEvent::Connected => self.adopt().await,
                UnitEvent::Changed(unit) => {
                    let Some(name) = spec::name_from_unit(&unit) else {
                        continue;
                    };
                    if self.table().instances.contains_key(name) {
                        let _ = self.refresh(name).await;
                    }
                }
            }
        }
    }

    /// Re-adoption: running units are taken over as they are (never restarted); instances that
    /// should run but do not are started, and running ones whose spec says stopped are stopped
    /// (a stop, eviction, idle stop or delete records "stopped" before it stops the unit, so a
    /// crash in between leaves exactly that); units without a spec are reported.
    pub(super) async fn adopt(&self) {
        let loaded = match self.units.list("llamactl-*.service").await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot list instance units");
                return;
            }
        };
        let names: Vec<String> = self.table().instances.keys().cloned().collect();
        for name in &names {
            let _ = self.refresh(name).await;
        }
        let mut orphans = std::collections::BTreeSet::new();
        for unit in &loaded {
            match spec::name_from_unit(unit) {
                Some(n) if names.iter().any(|k| k == n) => {
                    if let Ok(state) = self.state_of(n) {
                        info!(llamactl_instance = n, state = ?state, "adopted running unit");
                    }
                }
                _ => {
                    warn!(unit = %unit, "instance unit has no spec in the state directory; leaving it alone");
                    orphans.insert(unit.clone());
                }
            }
        }
        self.table().orphans = orphans;
        for name in names {
            let wants = self
                .table()
                .instances
                .get(&name)
                .map(|e| (e.spec.desired_state, e.state()));
            match wants {
                Some((DesiredState::Running, State::Stopped)) => {
                    info!(llamactl_instance = %name, "desired state is running; starting");
                    if let Err(e) = self.start(&name).await {
                        warn!(llamactl_instance = %name, error = %e, "start at adoption failed");
                    }
                }
                Some((DesiredState::Stopped, state)) if state.is_running() => {
                    info!(llamactl_instance = %name, "desired state is stopped; finishing an interrupted stop");
                    if let Err(e) = self.stop(&name).await {
                        warn!(llamactl_instance = %name, error = %e, "stop at adoption failed");
                    }
                }
                _ => {}
            }
        }
    }

    async fn probe_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let mut last_slow: Option<tokio::time::Instant> = None;
        loop {
            // Read each round: a reload changes it.
            let slow = self.settings().instances.health_check_interval.get();
            let due_slow = last_slow.is_none_or(|t| t.elapsed() >= slow);
            if due_slow {
                last_slow = Some(tokio::time::Instant::now());
            }
            let targets: Vec<(String, String)> = self
                .table()
                .instances
                .values()
                .filter(|e| e.unit.active_state == "active")
                .filter(|e| due_slow || !e.health.ok)
                .map(|e| {
                    let o = &e.spec.options;
                    let addr = o.connect_addr().unwrap_or_default();
                    let url = format!("http://{addr}{}", o.health_path());
                    (e.spec.name.clone(), url)
                })
                .collect();
            let probes = targets.into_iter().map(|(name, url)| {
                let client = client.clone();
                async move { (name, probe(&client, &url).await) }
            });
            for (name, health) in futures_util::future::join_all(probes).await {
                let mut t = self.table();
                if let Some(e) = t.instances.get_mut(&name) {
                    if e.unit.active_state != "active" {
                        continue;
                    }
                    let before = e.state();
                    e.observe(None, Some(health));
                    let after = e.state();
                    if before != after {
                        info!(llamactl_instance = %name, from = ?before, to = ?after, "instance state changed");
                    }
                }
            }
            let loading = self
                .table()
                .instances
                .values()
                .any(|e| e.unit.active_state == "active" && !e.health.ok);
            let next = if loading { LOADING_PROBE } else { FAST_PROBE };
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

async fn probe(client: &Client<HttpConnector, Empty<Bytes>>, url: &str) -> Health {
    let checked_at = Some(crate::systemd::unix_now());
    let uri: hyper::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            return Health {
                checked_at,
                error: Some(format!("bad health URL {url}: {e}")),
                ..Default::default()
            }
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT, client.get(uri)).await {
        Ok(Ok(res)) => {
            let status = res.status().as_u16();
            Health {
                ok: status == 200,
                checked_at,
                status: Some(status),
                error: (status != 200).then(|| format!("{url} answered {status}")),
            }
        }
        Ok(Err(e)) => Health {
            checked_at,
            error: Some(format!("{url}: {e}")),
            ..Default::default()
        },
        Err(_) => Health {
            checked_at,
            error: Some(format!("{url}: no answer within {PROBE_TIMEOUT:?}")),
            ..Default::default()
        },
    }
}
