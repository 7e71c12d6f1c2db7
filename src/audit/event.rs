//! The audit events: what kinds exist, each with a journal `MESSAGE_ID` fixed forever (so
//! `journalctl MESSAGE_ID=…` and the message catalog keep finding them across versions), and
//! what one record holds.

use serde::Serialize;

/// Every event kind. The `MESSAGE_ID`s were generated once (uuid4) and must never change; the
/// catalog `packaging/journal/llamactl.catalog` has one entry per id (a test checks both ways).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    AuthLogin,
    AuthLogout,
    AuthFailure,
    KeyCreate,
    KeyRevoke,
    InstanceCreate,
    InstanceUpdate,
    InstanceDelete,
    InstanceStart,
    InstanceStop,
    InstanceRestart,
    InstanceEvict,
    InstanceIdleStop,
    ConfigUpdate,
}

impl EventKind {
    pub const ALL: [EventKind; 14] = [
        EventKind::AuthLogin,
        EventKind::AuthLogout,
        EventKind::AuthFailure,
        EventKind::KeyCreate,
        EventKind::KeyRevoke,
        EventKind::InstanceCreate,
        EventKind::InstanceUpdate,
        EventKind::InstanceDelete,
        EventKind::InstanceStart,
        EventKind::InstanceStop,
        EventKind::InstanceRestart,
        EventKind::InstanceEvict,
        EventKind::InstanceIdleStop,
        EventKind::ConfigUpdate,
    ];

    /// The name in records, `[audit] events` and `LLAMACTL_AUDIT_EVENT=`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::AuthLogin => "auth.login",
            EventKind::AuthLogout => "auth.logout",
            EventKind::AuthFailure => "auth.failure",
            EventKind::KeyCreate => "key.create",
            EventKind::KeyRevoke => "key.revoke",
            EventKind::InstanceCreate => "instance.create",
            EventKind::InstanceUpdate => "instance.update",
            EventKind::InstanceDelete => "instance.delete",
            EventKind::InstanceStart => "instance.start",
            EventKind::InstanceStop => "instance.stop",
            EventKind::InstanceRestart => "instance.restart",
            EventKind::InstanceEvict => "instance.evict",
            EventKind::InstanceIdleStop => "instance.idle_stop",
            EventKind::ConfigUpdate => "config.update",
        }
    }

    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn message_id(self) -> &'static str {
        match self {
            EventKind::AuthLogin => "65114fc8af854286828c8a7910755058",
            EventKind::AuthLogout => "97437fcb3b8f458f866810fb92b35ebb",
            EventKind::AuthFailure => "cbe23c8968b74443a161f85a6cfe3f89",
            EventKind::KeyCreate => "297a02b39b1746278b6feb4ae80e88c2",
            EventKind::KeyRevoke => "f167ae20bef541e5911aa0c5f13c11ec",
            EventKind::InstanceCreate => "bbecccad976245c2abfb65c9d0c4960c",
            EventKind::InstanceUpdate => "077c24a7c6134f90987007eaefe69f02",
            EventKind::InstanceDelete => "c6dbb9ca97634d72b3a41fee6b9a68c6",
            EventKind::InstanceStart => "bd9f929d0ab34f099d63674ba6d8ffa2",
            EventKind::InstanceStop => "d2d4311352b14d318afe2d47a8a803d4",
            EventKind::InstanceRestart => "4288875a00c442f1a39ccf53a59127c3",
            EventKind::InstanceEvict => "915d007c87554b2c8cc939ebe81f20a4",
            EventKind::InstanceIdleStop => "11a940c73805427eac82126afab1ad64",
            EventKind::ConfigUpdate => "377b6203103e438c901bdeedb50bfc96",
        }
    }

    /// Events that record something that happened whatever the trail's state (an
    /// authentication, a reload, the daemon's own stops): never refused, kept in memory while a
    /// destination is down. The others are mutations asked for, refused when they cannot be
    /// recorded (`[audit] on_failure = "deny"`).
    pub fn is_mutation(self) -> bool {
        !matches!(
            self,
            EventKind::AuthLogin
                | EventKind::AuthLogout
                | EventKind::AuthFailure
                | EventKind::ConfigUpdate
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

/// One audit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Unix microseconds.
    pub time_us: i64,
    pub kind: EventKind,
    pub outcome: Outcome,
    /// Why it failed (the answer's error message).
    pub reason: Option<String>,
    /// `key:<name>`, `uid:<n>(<user>)`, `anonymous`, or `llamactld` for the daemon's own acts.
    pub actor: String,
    /// The client's address, `unix`, or `daemon`.
    pub source: String,
    /// What it acted on: an instance name, a key name, the config file.
    pub target: Option<String>,
    /// The instance, where one is concerned (also `LLAMACTL_INSTANCE=` in the journal).
    pub instance: Option<String>,
    pub request_id: Option<String>,
    /// `config.update`: the dotted keys that changed.
    pub changed: Vec<String>,
    /// More about it (`on demand`, `for instance b`, ...).
    pub detail: Option<String>,
}

impl Event {
    pub fn new(kind: EventKind, actor: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            time_us: now_us(),
            kind,
            outcome: Outcome::Success,
            reason: None,
            actor: actor.into(),
            source: source.into(),
            target: None,
            instance: None,
            request_id: None,
            changed: Vec::new(),
            detail: None,
        }
    }

    pub fn failed(mut self, reason: impl Into<String>) -> Self {
        self.outcome = Outcome::Failure;
        self.reason = Some(reason.into());
        self
    }

    pub fn target(mut self, t: impl Into<String>) -> Self {
        self.target = Some(t.into());
        self
    }

    /// The event concerns an instance: its name is the target and `LLAMACTL_INSTANCE=`.
    pub fn instance(mut self, name: impl Into<String>) -> Self {
        let n = name.into();
        self.target = Some(n.clone());
        self.instance = Some(n);
        self
    }

    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }

    pub fn outcome_str(&self) -> &'static str {
        match self.outcome {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }

    /// The JSON line of the file and the API.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "time": crate::config::time::format_rfc3339_micros(self.time_us),
            "event": self.kind.name(),
            "outcome": self.outcome,
            "reason": self.reason,
            "actor": self.actor,
            "source": self.source,
            "target": self.target,
            "instance": self.instance,
            "request_id": self.request_id,
            "changed": (self.kind == EventKind::ConfigUpdate).then_some(&self.changed),
            "detail": self.detail,
        })
    }

    /// One line for people (the journal's `MESSAGE`).
    pub fn summary(&self) -> String {
        let mut s = format!("audit: {}", self.kind.name());
        if let Some(t) = &self.target {
            s.push_str(&format!(" {t}"));
        }
        s.push_str(&format!(
            " by {} from {}: {}",
            self.actor,
            self.source,
            self.outcome_str()
        ));
        if let Some(r) = &self.reason {
            s.push_str(&format!(" ({r})"));
        }
        if let Some(d) = &self.detail {
            s.push_str(&format!("; {d}"));
        }
        if !self.changed.is_empty() {
            s.push_str(&format!("; changed: {}", self.changed.join(", ")));
        }
        s
    }
}

/// Unix time in microseconds.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros().min(i64::MAX as u128) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_and_ids_are_unique_and_match_the_config_list() {
        let names: HashSet<_> = EventKind::ALL.iter().map(|k| k.name()).collect();
        let ids: HashSet<_> = EventKind::ALL.iter().map(|k| k.message_id()).collect();
        assert_eq!(names.len(), EventKind::ALL.len());
        assert_eq!(ids.len(), EventKind::ALL.len());
        let config: HashSet<_> = crate::config::AUDIT_EVENTS.iter().copied().collect();
        assert_eq!(names, config, "config::AUDIT_EVENTS and EventKind disagree");
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_name(k.name()), Some(k));
            let id = k.message_id();
            assert!(
                id.len() == 32
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
    }

    /// The shipped catalog has exactly one entry per event, under its MESSAGE_ID, naming it.
    #[test]
    fn the_journal_catalog_explains_every_event() {
        let catalog = include_str!("../../packaging/journal/llamactl.catalog");
        let entries: Vec<(&str, &str)> = catalog
            .split("\n-- ")
            .skip(1)
            .filter_map(|e| e.split_once('\n'))
            .collect();
        assert_eq!(
            entries.len(),
            EventKind::ALL.len(),
            "one catalog entry per event"
        );
        for k in EventKind::ALL {
            let (_, text) = entries
                .iter()
                .find(|(id, _)| id.trim() == k.message_id())
                .unwrap_or_else(|| {
                    panic!("no catalog entry for {} ({})", k.name(), k.message_id())
                });
            assert!(text.starts_with("Subject: "), "{}: {text}", k.name());
            assert!(
                text.contains(k.name()),
                "the entry of {} does not name it",
                k.name()
            );
        }
    }

    #[test]
    fn records_serialise_with_microseconds_and_no_nulls_lost() {
        let mut e =
            Event::new(EventKind::InstanceDelete, "key:ops", "127.0.0.1:5000").instance("smol");
        e.time_us = 1_709_209_805_250_001;
        let j = e.to_json();
        assert_eq!(j["time"], "2024-02-29T12:30:05.250001Z");
        assert_eq!(j["event"], "instance.delete");
        assert_eq!(j["outcome"], "success");
        assert_eq!(j["instance"], "smol");
        assert!(j["changed"].is_null());
        let f = e.clone().failed("no instance named \"smol\"");
        assert!(
            f.summary().contains("failure (no instance named"),
            "{}",
            f.summary()
        );
    }
}
