//! Audit records in the journal: one entry each, sent over journald's native protocol with a
//! fixed `MESSAGE_ID` per event (explained by `packaging/journal/llamactl.catalog` under
//! `journalctl -x`) and fields to match on (`LLAMACTL_AUDIT_EVENT=`, `_ACTOR=`, `_OUTCOME=`,
//! `LLAMACTL_INSTANCE=`). Sent on a socket of its own, so a send that fails is known.

use super::event::{Event, EventKind, Outcome};
use crate::logging::journald::{put, JOURNAL_SOCKET};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

pub struct JournalSink {
    path: PathBuf,
    socket: Option<UnixDatagram>,
}

impl JournalSink {
    pub fn new() -> Self {
        Self::at(PathBuf::from(JOURNAL_SOCKET))
    }

    pub fn at(path: PathBuf) -> Self {
        Self { path, socket: None }
    }

    fn connect(&mut self) -> Result<&UnixDatagram, String> {
        if self.socket.is_none() {
            let s = UnixDatagram::unbound()
                .and_then(|s| s.connect(&self.path).map(|_| s))
                .map_err(|e| format!("journal socket {}: {e}", self.path.display()))?;
            self.socket = Some(s);
        }
        self.socket
            .as_ref()
            .ok_or_else(|| "journal socket not connected".to_string())
    }

    /// Whether journald is there to take a record (the socket exists and accepts us).
    pub fn check(&mut self) -> Result<(), String> {
        if !self.path.exists() {
            self.socket = None;
            return Err(format!("journal socket {} is gone", self.path.display()));
        }
        self.connect().map(|_| ())
    }

    pub fn send(&mut self, e: &Event) -> Result<(), String> {
        let entry = encode(e);
        let result = self
            .connect()
            .and_then(|s| s.send(&entry).map_err(|err| format!("journal: {err}")));
        if result.is_err() {
            // journald restarted (a new socket) or went away: connect afresh next time.
            self.socket = None;
        }
        result.map(|_| ())
    }
}

impl Default for JournalSink {
    fn default() -> Self {
        Self::new()
    }
}

/// The native-protocol datagram of one record.
pub fn encode(e: &Event) -> Vec<u8> {
    let mut b = Vec::with_capacity(512);
    put(&mut b, "MESSAGE_ID", e.kind.message_id());
    put(&mut b, "MESSAGE", &e.summary());
    let priority = match (e.kind, &e.outcome) {
        (EventKind::AuthFailure, _) => "4",
        (_, Outcome::Failure) => "5",
        _ => "6",
    };
    put(&mut b, "PRIORITY", priority);
    put(&mut b, "SYSLOG_IDENTIFIER", "llamactld");
    put(&mut b, "LLAMACTL_COMPONENT", "audit");
    put(&mut b, "LLAMACTL_AUDIT_EVENT", e.kind.name());
    put(&mut b, "LLAMACTL_AUDIT_OUTCOME", e.outcome_str());
    put(&mut b, "LLAMACTL_AUDIT_ACTOR", &e.actor);
    put(&mut b, "LLAMACTL_AUDIT_SOURCE", &e.source);
    put(
        &mut b,
        "LLAMACTL_AUDIT_TARGET",
        e.target.as_deref().unwrap_or("-"),
    );
    put(
        &mut b,
        "LLAMACTL_AUDIT_REASON",
        e.reason.as_deref().unwrap_or(""),
    );
    put(
        &mut b,
        "LLAMACTL_AUDIT_DETAIL",
        e.detail.as_deref().unwrap_or(""),
    );
    put(
        &mut b,
        "LLAMACTL_AUDIT_TIME",
        &crate::config::time::format_rfc3339_micros(e.time_us),
    );
    if e.kind == EventKind::ConfigUpdate {
        let changed = if e.changed.is_empty() {
            "nothing".to_string()
        } else {
            e.changed.join(", ")
        };
        put(&mut b, "LLAMACTL_AUDIT_CHANGED", &changed);
    }
    if let Some(id) = &e.request_id {
        put(&mut b, "LLAMACTL_AUDIT_REQUEST_ID", id);
    }
    if let Some(i) = &e.instance {
        put(&mut b, "LLAMACTL_INSTANCE", i);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_the_id_and_the_fields() {
        let e = Event::new(EventKind::InstanceDelete, "key:ops", "10.0.0.9:4000")
            .instance("smol")
            .failed("no instance named \"smol\"\nsecond line");
        let text = String::from_utf8_lossy(&encode(&e)).into_owned();
        assert!(
            text.starts_with("MESSAGE_ID=c6dbb9ca97634d72b3a41fee6b9a68c6\n"),
            "{text}"
        );
        for f in [
            "LLAMACTL_AUDIT_EVENT=instance.delete\n",
            "LLAMACTL_AUDIT_ACTOR=key:ops\n",
            "LLAMACTL_AUDIT_OUTCOME=failure\n",
            "LLAMACTL_AUDIT_SOURCE=10.0.0.9:4000\n",
            "LLAMACTL_INSTANCE=smol\n",
            "PRIORITY=5\n",
        ] {
            assert!(text.contains(f), "{f} missing in {text}");
        }
        // A multi-line value uses the binary-safe form, not a broken field.
        assert!(text.contains("LLAMACTL_AUDIT_REASON\n"), "{text}");
    }

    #[test]
    fn a_missing_journal_fails_the_check_and_the_send() {
        let mut j = JournalSink::at(PathBuf::from("/nonexistent/journal/socket"));
        assert!(j.check().is_err());
        let e = Event::new(EventKind::ConfigUpdate, "llamactld", "signal");
        assert!(j.send(&e).is_err());
    }
}
