//! `[audit]`: the audit trail's switches (the seed's `enabled`, `log_file`, `events`, and ours).
//! The events themselves are `audit::EventKind`; the names are listed here so the config check
//! can reject an unknown one without the config layer depending on the audit module.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Every audit event name, as `[audit] events` and `LLAMACTL_AUDIT_EVENT=` spell them.
pub const AUDIT_EVENTS: &[&str] = &[
    "auth.login",
    "auth.logout",
    "auth.failure",
    "key.create",
    "key.revoke",
    "instance.create",
    "instance.update",
    "instance.delete",
    "instance.start",
    "instance.stop",
    "instance.restart",
    "instance.evict",
    "instance.idle_stop",
    "config.update",
];

/// What to do with a mutation when an enabled destination cannot take its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Refuse it with 503: no action without its record.
    Deny,
    /// Let it happen; its record waits in memory for the destination to come back.
    Allow,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Record an audit trail of every mutation and authentication event.
    pub enabled: bool,
    /// The JSON-lines file. Unset: `$LOGS_DIRECTORY/audit.log` (systemd's
    /// `LogsDirectory=llamactl`), else `/var/log/llamactl/audit.log`.
    pub log_file: Option<PathBuf>,
    /// The events recorded; by default all of them.
    pub events: Vec<String>,
    /// Write each record to the journal, with catalogued `MESSAGE_ID=`s (`journalctl -x`
    /// explains them).
    pub journal: bool,
    /// Write the JSON-lines file (`log_file`).
    pub file: bool,
    /// Serve the records on `GET /api/v1/audit` (read from the file).
    pub api: bool,
    /// When a destination cannot take a record: `deny` refuses the mutation with 503, `allow`
    /// lets it happen (its record waits in memory).
    pub on_failure: OnFailure,
    /// fsync the file after every event (otherwise it is written, not synced, before the
    /// action's response is sent).
    pub fsync: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            log_file: None,
            events: AUDIT_EVENTS.iter().map(|e| e.to_string()).collect(),
            journal: true,
            file: true,
            api: true,
            on_failure: OnFailure::Deny,
            fsync: false,
        }
    }
}

impl AuditConfig {
    /// The file, as the daemon will open it (`logs_directory`: `$LOGS_DIRECTORY`).
    pub fn log_path(&self, logs_directory: Option<&str>) -> PathBuf {
        if let Some(p) = &self.log_file {
            return p.clone();
        }
        match logs_directory.filter(|d| !d.is_empty()) {
            Some(d) => PathBuf::from(d.split(':').next().unwrap_or(d)).join("audit.log"),
            None => PathBuf::from("/var/log/llamactl/audit.log"),
        }
    }
}
