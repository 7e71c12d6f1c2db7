//! The supervisor's own mutations (LRU evictions, idle stops) in the audit trail, with the
//! daemon as actor: admitted like any mutation, recorded with their outcome. The instance layer
//! cannot name the audit trail; the daemon hands it this.

use super::{Auditor, Event, EventKind};
use crate::instance::demand::Lifecycle;
use std::sync::Arc;

pub struct Hook(pub Arc<Auditor>);

/// The actor of the daemon's own acts.
pub const DAEMON: &str = "llamactld";

impl Hook {
    fn record(&self, kind: EventKind, name: &str, detail: Option<String>, r: &Result<(), String>) {
        let mut e = Event::new(kind, DAEMON, "daemon").instance(name);
        e.detail = detail;
        if let Err(why) = r {
            e = e.failed(why.clone());
        }
        self.0.record(e);
    }
}

impl Lifecycle for Hook {
    fn admit(&self) -> Result<(), String> {
        self.0.admit()
    }

    fn evicted(&self, name: &str, for_instance: &str, result: &Result<(), String>) {
        let detail = format!("to make room for {for_instance} under [instances] max_running");
        self.record(EventKind::InstanceEvict, name, Some(detail), result);
    }

    fn idle_stopped(&self, name: &str, result: &Result<(), String>) {
        self.record(
            EventKind::InstanceIdleStop,
            name,
            Some("no request for its idle_timeout".into()),
            result,
        );
    }
}
