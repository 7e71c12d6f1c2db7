//! State shared by all handlers.

use crate::audit::Auditor;
use crate::auth::Auth;
use crate::config::{Live, Loaded};
use crate::host::HostPaths;
use crate::instance::Supervisor;
use crate::metrics::Metrics;
use crate::proxy::{HasProxy, Proxy};
use crate::systemd::Monitor;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

/// The outcome of the last reload, reported in `/api/system/health`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReloadStatus {
    /// Unix seconds of the last reload attempt.
    pub last_attempt: Option<u64>,
    pub last_error: Option<String>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

pub struct AppState {
    config: Live<Loaded>,
    pub reload: RwLock<ReloadStatus>,
    pub systemd: Monitor,
    pub metrics: Arc<Metrics>,
    pub instances: Arc<Supervisor>,
    pub proxy: Proxy,
    pub auth: Arc<Auth>,
    pub audit: Arc<Auditor>,
    pub host: HostPaths,
    pub state_dir: PathBuf,
    pub log_output: &'static str,
    pub started: Instant,
    pub started_at: SystemTime,
    /// Where instance operations run to completion (`detach`).
    pub detach: Arc<super::detach::Detacher>,
}

impl AppState {
    #[allow(clippy::too_many_arguments)] // a constructor of plain parts, each named at the call
    pub fn new(
        loaded: Loaded,
        systemd: Monitor,
        metrics: Arc<Metrics>,
        instances: Arc<Supervisor>,
        auth: Arc<Auth>,
        audit: Arc<Auditor>,
        host: HostPaths,
        state_dir: PathBuf,
        log_output: &'static str,
    ) -> Self {
        let proxy = Proxy::new(
            instances.clone(),
            metrics.proxy.clone(),
            loaded.config.proxy.clone(),
        );
        Self {
            proxy,
            config: Live::new(loaded),
            reload: RwLock::new(ReloadStatus::default()),
            systemd,
            metrics,
            instances,
            auth,
            audit,
            host,
            state_dir,
            log_output,
            started: Instant::now(),
            started_at: SystemTime::now(),
            // Made on the daemon's main runtime: the operations run there.
            detach: super::detach::Detacher::new(tokio::runtime::Handle::current()),
        }
    }

    /// The config in force. Cheap: an `Arc` clone under a read lock held for no time.
    pub fn config(&self) -> Arc<Loaded> {
        self.config.get()
    }

    /// Replaces the config in force; the proxy gets its `[proxy]`.
    pub fn set_config(&self, loaded: Loaded) {
        self.proxy.set_config(loaded.config.proxy.clone());
        self.config.set(loaded);
    }

    pub fn reload_status(&self) -> ReloadStatus {
        match self.reload.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn update_reload(&self, f: impl FnOnce(&mut ReloadStatus)) {
        let mut g = match self.reload.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut g);
    }
}

impl HasProxy for AppState {
    fn proxy(&self) -> &Proxy {
        &self.proxy
    }
}
