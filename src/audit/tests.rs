//! Audit records: encoding for the journal and the file, queries, admission and the retry queue.

use super::*;
use crate::config::AuditConfig;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llamactl-auditor-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn metrics() -> AccessMetrics {
    AccessMetrics::register(&mut prometheus_client::registry::Registry::default())
}

/// A stand-in journald: a datagram socket we read entries from.
fn journald(d: &std::path::Path) -> (UnixDatagram, PathBuf) {
    let p = d.join("journal.sock");
    let _ = std::fs::remove_file(&p);
    let s = UnixDatagram::bind(&p).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    (s, p)
}

fn recv(s: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 65536];
    let n = s.recv(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn cfg(d: &std::path::Path) -> AuditConfig {
    AuditConfig {
        log_file: Some(d.join("audit.log")),
        ..Default::default()
    }
}

fn lines(d: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(d.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn records_reach_file_and_journal_filtered_and_counted() {
    let d = dir("both");
    let (j, jp) = journald(&d);
    let mut c = cfg(&d);
    c.events.retain(|e| e != "auth.failure");
    let m = metrics();
    let a = Auditor::with_journal(&c, None, m.clone(), JournalSink::at(jp));
    assert!(a.admit().is_ok());
    a.record(Event::new(EventKind::InstanceCreate, "key:ops", "127.0.0.1:1").instance("smol"));
    a.record(Event::new(EventKind::AuthFailure, "unknown", "127.0.0.1:1"));
    let entry = recv(&j);
    assert!(
        entry.contains("MESSAGE_ID=bbecccad976245c2abfb65c9d0c4960c"),
        "{entry}"
    );
    let l = lines(&d);
    assert_eq!(l.len(), 1, "the filtered event was written: {l:?}");
    assert_eq!(l[0]["event"], "instance.create");
    assert_eq!(l[0]["actor"], "key:ops");
    let counted = m
        .audit_events
        .get_or_create(&EventLabels {
            event: "instance.create",
            outcome: "success",
        })
        .get();
    assert_eq!(counted, 1);
    let q = a.query(&Query {
        instance: Some("smol".into()),
        limit: 10,
        ..Default::default()
    });
    assert_eq!(q.unwrap().unwrap().0.len(), 1);
}

#[test]
fn a_missing_journal_denies_mutations_and_records_wait_in_order() {
    let d = dir("down");
    let jp = d.join("journal.sock");
    let m = metrics();
    let a = Auditor::with_journal(&cfg(&d), None, m.clone(), JournalSink::at(jp.clone()));
    let e = a.admit().unwrap_err();
    assert!(e.contains("refused") && e.contains("journal"), "{e}");
    assert!(a.status().denying);
    // Never-refused events wait, and so would a mutation's record under on_failure = allow.
    a.record(Event::new(EventKind::AuthFailure, "unknown", "10.0.0.1:1"));
    a.record(Event::new(EventKind::ConfigUpdate, "llamactld", "signal"));
    assert_eq!(a.status().pending, 2);
    // The file took them already; the journal owes them.
    assert_eq!(lines(&d).len(), 2);
    // The refused mutation and the first record's write (the second waits behind it); the
    // status checks in between count nothing.
    assert_eq!(
        m.audit_write_failures
            .get_or_create(&DestinationLabels {
                destination: "journal"
            })
            .get(),
        2
    );
    // journald comes back: a retry writes them, in order, and mutations may run again.
    let (j, _) = journald(&d);
    a.retry();
    assert!(recv(&j).contains("LLAMACTL_AUDIT_EVENT=auth.failure"));
    assert!(recv(&j).contains("LLAMACTL_AUDIT_EVENT=config.update"));
    assert_eq!(a.status().pending, 0);
    assert!(a.admit().is_ok());
    assert!(!a.status().denying);
    assert_eq!(lines(&d).len(), 2, "nothing written twice to the file");

    let allow = AuditConfig {
        on_failure: OnFailure::Allow,
        ..cfg(&d)
    };
    let b = Auditor::with_journal(&allow, None, metrics(), JournalSink::at(d.join("none")));
    assert!(b.admit().is_ok());
}

#[test]
fn an_off_trail_records_nothing_and_admits_everything() {
    let d = dir("off");
    let c = AuditConfig {
        enabled: false,
        ..cfg(&d)
    };
    let a = Auditor::with_journal(&c, None, metrics(), JournalSink::at(d.join("none")));
    assert!(a.admit().is_ok());
    a.record(Event::new(EventKind::InstanceCreate, "key:ops", "x"));
    assert!(!d.join("audit.log").exists());
    assert!(a.query(&Query::default()).is_none());
}
