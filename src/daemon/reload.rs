//! SIGHUP: re-read the config. A broken file changes nothing (the old config stays in force and
//! the error is logged and shown in `/api/system/health`). Settings bound at start (listen
//! address, outputs, the bus) are reported as needing a restart rather than half-applied; which
//! those are is `config::reload::RELOAD`. The rest applies at once: the supervisor gets its new
//! settings, the proxy and the router read theirs per request.

use super::Daemon;
use crate::audit::hook::DAEMON;
use crate::audit::{Event, EventKind};
use crate::config::{self, Env as _, ProcessEnv};
use crate::instance::Settings;
use tracing::{error, info, warn};

impl Daemon {
    /// SIGHUP: re-reads the config, then reopens the audit file (logrotate's `postrotate`
    /// reloads; a broken config still reopens it) and records `config.update` with what
    /// changed, or why the reload failed.
    pub(super) fn reload(&self) {
        let outcome = self.apply_reload();
        let cfg = self.state.config();
        let logs = ProcessEnv.var("LOGS_DIRECTORY");
        self.state.audit.reload(&cfg.config.audit, logs.as_deref());
        let mut e = Event::new(EventKind::ConfigUpdate, DAEMON, "signal")
            .target(self.config_path.display().to_string())
            .detail("SIGHUP");
        match outcome {
            Ok(changed) => e.changed = changed,
            Err(why) => e = e.failed(why),
        }
        self.state.audit.record(e);
    }

    /// Loads and applies the config; the dotted keys that changed, or why nothing did.
    fn apply_reload(&self) -> Result<Vec<String>, String> {
        let now = crate::systemd::unix_now();
        let failed = |e: String| {
            error!(component = "config", error = %e, "configuration reload failed; keeping the previous configuration");
            self.state.update_reload(|r| {
                r.last_attempt = Some(now);
                r.last_error = Some(e.clone());
                r.reloads_failed += 1;
            });
            e
        };
        let new = config::load(&self.config_path, self.config_explicit)
            .map_err(|e| failed(e.to_string()))?;
        // The operator's keys ([[auth.keys]], the credential) and rate limits: a failure fails
        // the whole reload.
        self.state
            .auth
            .reload(&new.config.auth, &new.config.rate_limit)
            .map_err(|e| failed(format!("loading API keys: {e}")))?;
        let old = self.state.config();
        for w in &new.warnings {
            warn!(component = "config", "{w}");
        }
        if let Err(e) = self
            .logging
            .set_level(new.config.logging.level, &ProcessEnv)
        {
            warn!(component = "config", error = %e, "could not apply the new log level");
        }
        self.state
            .metrics
            .set_groups(new.config.monitoring.metrics.clone());
        // The supervisor's copy: new creates, starts, probes and idle checks use it.
        self.state
            .instances
            .set_settings(Settings::from_config(&new.config));
        let restart = config::restart_only_changes(&old.config, &new.config);
        if !restart.is_empty() {
            warn!(
                component = "config",
                keys = %restart.join(", "),
                "changed settings take effect on restart"
            );
        }
        let changed = config::changed_keys(&old.config, &new.config);
        info!(component = "config", config = %new, level = new.config.logging.level.as_str(), changed = %changed.join(", "), "configuration reloaded");
        self.state.set_config(new);
        self.state.update_reload(|r| {
            r.last_attempt = Some(now);
            r.last_error = None;
            r.reloads_ok += 1;
        });
        Ok(changed)
    }
}
