//! The audit trail: every mutation and every authentication event, with who (a key name or a
//! socket user, never a key), from where, on what, and how it ended; to the journal (catalogued
//! `MESSAGE_ID`s), a JSON-lines file, and `GET /api/v1/audit` (read from the file).
//!
//! Never lost: before a mutation runs, `admit` checks that every enabled destination can take a
//! record, and the mutation is refused (503) when one cannot (`[audit] on_failure = "deny"`, the
//! default). A record a destination then fails to take — and events that are never refused,
//! such as authentication failures and reloads — wait in a bounded queue, in order, and are
//! written when the destination is back. `record` returns once the record is written (and
//! fsynced if asked), so the action's answer is sent after its record.
//!
//! Who calls it: `http::audited` for every mutating route (a test lists the routes),
//! `http::guard` for authentication failures, the daemon for reloads and for the supervisor's
//! own evictions and idle stops.

pub mod event;
pub mod file;
pub mod hook;
pub mod journal;

pub use event::{now_us, Event, EventKind, Outcome};

use crate::config::{AuditConfig, OnFailure};
use crate::metrics::access::{AccessMetrics, DestinationLabels, EventLabels};
use file::{AuditFile, Query};
use journal::JournalSink;
use serde::Serialize;
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use tracing::{error, info, warn};

/// Records held in memory at most while a destination is down; beyond, the oldest are
/// dropped (logged and counted: `llamactl_audit_write_failures_total` keeps rising).
const MAX_PENDING: usize = 10_000;

const JOURNAL: usize = 0;
const FILE: usize = 1;
const DESTINATIONS: [&str; 2] = ["journal", "file"];

struct Settings {
    enabled: bool,
    events: HashSet<EventKind>,
    /// Which destinations are on, by index (journal, file).
    on: [bool; 2],
    api: bool,
    on_failure: OnFailure,
    fsync: bool,
}

impl Settings {
    fn from(c: &AuditConfig) -> Self {
        Self {
            enabled: c.enabled,
            events: c
                .events
                .iter()
                .filter_map(|e| EventKind::from_name(e))
                .collect(),
            on: [c.enabled && c.journal, c.enabled && c.file],
            api: c.enabled && c.api,
            on_failure: c.on_failure,
            fsync: c.fsync,
        }
    }
}

/// A record some destinations still owe.
struct Pending {
    event: Event,
    owed: [bool; 2],
}

struct Inner {
    settings: Settings,
    file: AuditFile,
    journal: JournalSink,
    pending: VecDeque<Pending>,
    /// The last error of each destination while it fails; `None` while it works.
    failing: [Option<String>; 2],
    dropped: u64,
}

pub struct Auditor {
    inner: Mutex<Inner>,
    metrics: AccessMetrics,
}

/// The trail's state, for `/api/system/health`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub enabled: bool,
    pub file: String,
    /// Destinations failing now, with why.
    pub failing: Vec<(String, String)>,
    pub pending: usize,
    pub dropped: u64,
    /// Mutations are refused while a destination fails.
    pub denying: bool,
}

impl Auditor {
    /// `logs_directory` is `$LOGS_DIRECTORY` (where the file goes unless `log_file` says).
    pub fn new(cfg: &AuditConfig, logs_directory: Option<&str>, metrics: AccessMetrics) -> Self {
        Self::with_journal(cfg, logs_directory, metrics, JournalSink::new())
    }

    pub fn with_journal(
        cfg: &AuditConfig,
        logs_directory: Option<&str>,
        metrics: AccessMetrics,
        journal: JournalSink,
    ) -> Self {
        let settings = Settings::from(cfg);
        let path = cfg.log_path(logs_directory);
        let (file, err) = if settings.on[FILE] {
            AuditFile::new(path)
        } else {
            (AuditFile::new_closed(path), None)
        };
        let a = Self {
            inner: Mutex::new(Inner {
                settings,
                file,
                journal,
                pending: VecDeque::new(),
                failing: [None, None],
                dropped: 0,
            }),
            metrics,
        };
        if let Some(e) = err {
            a.lock().failing[FILE] = Some(e.clone());
            error!(component = "audit", error = %e, "the audit file cannot be opened");
        }
        if let Err((_, e)) = a.admit_check() {
            error!(component = "audit", error = %e, "an audit destination is not available (running without journald? set [audit] journal = false)");
        }
        a
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a reloaded `[audit]` and reopens the file (logrotate's `postrotate` reloads).
    pub fn reload(&self, cfg: &AuditConfig, logs_directory: Option<&str>) {
        let mut g = self.lock();
        g.settings = Settings::from(cfg);
        let path = cfg.log_path(logs_directory);
        if g.settings.on[FILE] {
            let (f, err) = AuditFile::new(path);
            g.file = f;
            match err {
                Some(e) => {
                    error!(component = "audit", error = %e, "the audit file cannot be reopened");
                    g.failing[FILE] = Some(e);
                }
                None => {
                    info!(component = "audit", file = %g.file.path().display(), "audit file reopened")
                }
            }
        } else {
            g.file = AuditFile::new_closed(path);
        }
        self.flush(&mut g);
    }

    pub fn enabled(&self) -> bool {
        self.lock().settings.enabled
    }

    /// Whether a mutation may run: every enabled destination can take its record. Always `Ok`
    /// when the trail is off or `on_failure = "allow"`.
    pub fn admit(&self) -> Result<(), String> {
        {
            let g = self.lock();
            if !g.settings.enabled || g.settings.on_failure == OnFailure::Allow {
                return Ok(());
            }
        }
        self.admit_check().map_err(|(d, e)| {
            // The mutation's record is one a destination could not take: counted as such, so
            // `LlamactlAuditWriteFailing` fires in deny mode too, and logged (mutations are
            // operator actions, rare enough for a line each).
            self.count_failure(d);
            warn!(component = "audit", destination = DESTINATIONS[d], error = %e, "a mutation was refused: the audit trail cannot record it");
            format!("the audit trail cannot record this action ({e}); refused")
        })
    }

    /// Whether every enabled destination can take a record now; else which one cannot, and why.
    /// (Also run by `status`, so it counts nothing itself.)
    fn admit_check(&self) -> Result<(), (usize, String)> {
        let mut g = self.lock();
        self.flush(&mut g);
        let inner = &mut *g;
        for d in [JOURNAL, FILE] {
            if !inner.settings.on[d] {
                continue;
            }
            let checked = match d {
                JOURNAL => inner.journal.check(),
                _ => inner.file.check(),
            };
            if let Err(e) = checked {
                inner.failing[d] = Some(e.clone());
                return Err((d, e));
            }
            if inner.pending.iter().any(|p| p.owed[d]) {
                return Err((
                    d,
                    format!(
                        "{} records wait for the {}",
                        inner.pending.len(),
                        DESTINATIONS[d]
                    ),
                ));
            }
            if inner.failing[d].take().is_some() {
                warn!(
                    component = "audit",
                    destination = DESTINATIONS[d],
                    "an audit destination is back"
                );
            }
        }
        Ok(())
    }

    /// Records an event (if the trail is on and `[audit] events` lists it). Returns when it is
    /// written, or queued for a destination that could not take it.
    pub fn record(&self, e: Event) {
        let mut g = self.lock();
        if !g.settings.enabled || !g.settings.events.contains(&e.kind) {
            return;
        }
        self.metrics
            .audit_events
            .get_or_create(&EventLabels {
                event: e.kind.name(),
                outcome: e.outcome_str(),
            })
            .inc();
        let on = g.settings.on;
        self.flush(&mut g);
        let mut owed = [false; 2];
        for d in [JOURNAL, FILE] {
            if !on[d] {
                continue;
            }
            // Behind records still waiting for this destination: keep the order.
            if g.pending.iter().any(|p| p.owed[d]) {
                owed[d] = true;
                continue;
            }
            match self.write(&mut g, d, &e) {
                Ok(()) => self.recovered(&mut g, d),
                Err(err) => {
                    owed[d] = true;
                    self.failed(&mut g, d, err);
                }
            }
        }
        if owed.iter().any(|o| *o) {
            self.enqueue(&mut g, Pending { event: e, owed });
        }
    }

    fn write(&self, g: &mut Inner, d: usize, e: &Event) -> Result<(), String> {
        match d {
            JOURNAL => g.journal.send(e),
            _ => {
                let mut line = e.to_json().to_string().into_bytes();
                line.push(b'\n');
                let fsync = g.settings.fsync;
                g.file.append(&line, fsync)
            }
        }
    }

    /// One record destination `d` could not take (`llamactl_audit_write_failures_total`).
    fn count_failure(&self, d: usize) {
        self.metrics
            .audit_write_failures
            .get_or_create(&DestinationLabels {
                destination: DESTINATIONS[d],
            })
            .inc();
    }

    fn failed(&self, g: &mut Inner, d: usize, err: String) {
        self.count_failure(d);
        if g.failing[d].is_none() {
            error!(component = "audit", destination = DESTINATIONS[d], error = %err, "an audit destination failed; records wait in memory");
        }
        g.failing[d] = Some(err);
    }

    fn recovered(&self, g: &mut Inner, d: usize) {
        if g.failing[d].take().is_some() {
            warn!(
                component = "audit",
                destination = DESTINATIONS[d],
                "an audit destination is back"
            );
        }
    }

    fn enqueue(&self, g: &mut Inner, p: Pending) {
        if g.pending.len() >= MAX_PENDING {
            g.pending.pop_front();
            g.dropped += 1;
            error!(
                component = "audit",
                dropped = g.dropped,
                "audit queue full: the oldest waiting record was dropped"
            );
        }
        g.pending.push_back(p);
        self.metrics.audit_pending.set(g.pending.len() as i64);
    }

    /// Writes waiting records, in order, to the destinations that take them again.
    fn flush(&self, g: &mut Inner) {
        if g.pending.is_empty() {
            return;
        }
        let mut stuck = [false; 2];
        let mut wrote = [false; 2];
        let mut i = 0;
        while i < g.pending.len() {
            for d in [JOURNAL, FILE] {
                if !g.pending[i].owed[d] || stuck[d] {
                    continue;
                }
                if !g.settings.on[d] {
                    g.pending[i].owed[d] = false;
                    continue;
                }
                let e = g.pending[i].event.clone();
                match self.write(g, d, &e) {
                    Ok(()) => {
                        g.pending[i].owed[d] = false;
                        wrote[d] = true;
                    }
                    Err(err) => {
                        stuck[d] = true;
                        g.failing[d] = Some(err);
                    }
                }
            }
            if g.pending[i].owed.iter().any(|o| *o) {
                i += 1;
            } else {
                g.pending.remove(i);
            }
        }
        for d in [JOURNAL, FILE] {
            if !stuck[d] && g.failing[d].take().is_some() {
                warn!(
                    component = "audit",
                    destination = DESTINATIONS[d],
                    "an audit destination is back; waiting records written"
                );
            }
        }
        self.metrics.audit_pending.set(g.pending.len() as i64);
    }

    /// How many records wait for a destination.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Tries the waiting records again (called every second by the daemon).
    pub fn retry(&self) {
        let mut g = self.lock();
        self.flush(&mut g);
    }

    /// The trail's state now (the destinations are checked afresh).
    pub fn status(&self) -> Status {
        if self.enabled() {
            let _ = self.admit_check();
        }
        let g = self.lock();
        let failing: Vec<(String, String)> = [JOURNAL, FILE]
            .into_iter()
            .filter(|d| g.settings.on[*d])
            .filter_map(|d| {
                g.failing[d]
                    .clone()
                    .map(|e| (DESTINATIONS[d].to_string(), e))
            })
            .collect();
        Status {
            enabled: g.settings.enabled,
            file: g.file.path().display().to_string(),
            denying: g.settings.enabled
                && g.settings.on_failure == OnFailure::Deny
                && (!failing.is_empty() || !g.pending.is_empty()),
            failing,
            pending: g.pending.len(),
            dropped: g.dropped,
        }
    }

    /// The newest matching records from the file; `None` when the API is off.
    pub fn query(&self, q: &Query) -> Option<Result<(Vec<serde_json::Value>, bool), String>> {
        let path: PathBuf = {
            let g = self.lock();
            if !g.settings.api {
                return None;
            }
            g.file.path().to_path_buf()
        };
        Some(file::query(&path, q))
    }

    pub fn file_path(&self) -> PathBuf {
        self.lock().file.path().to_path_buf()
    }
}

#[cfg(test)]
mod tests;
