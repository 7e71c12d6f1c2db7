//! When the trail cannot record: mutations refused, records waiting, nothing lost.

use super::*;
use crate::util::sandbox::daemon;
use crate::util::{api, http_raw, sample};

#[test]
fn an_unwritable_trail_refuses_mutations_and_loses_nothing() {
    unit_test!();
    let d = daemon("audit-readonly", "", "");
    let p = d.port;
    assert_eq!(
        api("POST", p, "/api/v1/instances/rox", Some(fake(json!({})))).status,
        201
    );
    let dir = d.audit_log.rsplit_once('/').unwrap().0.to_string();
    // The file goes away and its directory becomes read-only: llamactld (root without
    // capabilities, as the shipped unit runs it) cannot write a record.
    d.sb.ok(&["rm", &d.audit_log]);
    d.sb.ok(&["chmod", "0555", &dir]);
    let r = api("POST", p, "/api/v1/instances/rox/start", None);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("Retry-After").is_some());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("audit trail"),
        "{}",
        r.body
    );
    assert_eq!(state(&d, "rox"), "stopped");
    // The refusal itself counts as a failed write (nothing else has been recorded since).
    let failures = |m: &str| {
        sample(
            m,
            "llamactl_audit_write_failures_total{destination=\"file\"}",
        )
        .unwrap_or(0.0)
    };
    assert_eq!(failures(&get(p, "/metrics").body), 1.0);
    assert_eq!(api("DELETE", p, "/api/v1/instances/rox", None).status, 503);
    assert_eq!(failures(&get(p, "/metrics").body), 2.0);
    wait_for(
        "the refusals in the journal",
        Duration::from_secs(10),
        || {
            let j = d.journal_text();
            (j.matches("a mutation was refused: the audit trail cannot record it")
                .count()
                == 2)
                .then_some(())
        },
    );
    assert_eq!(get(p, "/api/v1/instances/rox").status, 200);
    let health = get(p, "/api/system/health").json();
    let check = health["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "audit")
        .unwrap()
        .clone();
    assert_eq!(check["status"], "fail", "{check}");
    // Events that are never refused wait in memory...
    let r = http_raw(
        "GET",
        p,
        "/api/v1/instances",
        &[("X-API-Key", "llk_wrong_while_down")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    let m = get(p, "/metrics").body;
    assert!(failures(&m) >= 3.0, "{m}");
    assert!(sample(&m, "llamactl_audit_pending_events").unwrap_or(0.0) >= 1.0);
    // ... and are written when the directory is writable again; mutations run again.
    d.sb.ok(&["chmod", "0755", &dir]);
    wait_for(
        "the waiting record in the file",
        Duration::from_secs(10),
        || {
            d.audit_records()
                .iter()
                .any(|r| r["event"] == "auth.failure")
                .then_some(())
        },
    );
    assert_eq!(
        api("POST", p, "/api/v1/instances/rox/start", None).status,
        200
    );
    assert_eq!(api("DELETE", p, "/api/v1/instances/rox", None).status, 204);
    let events: Vec<String> = d
        .audit_records()
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        events,
        ["auth.failure", "instance.start", "instance.delete"],
        "{events:?}"
    );
}

#[test]
fn a_full_disk_refuses_mutations() {
    unit_test!();
    // The daemon's logs directory on a tiny file system of its own, nearly no room left.
    let d = DaemonUnit::install(
        "audit-full",
        crate::util::free_port(),
        "[instances]\nallowed_backends = [\"command\"]\n",
        "",
    );
    let dir = d.audit_log.rsplit_once('/').unwrap().0.to_string();
    d.sb.ok(&["mkdir", "-p", &dir]);
    d.sb.ok(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=256k,mode=0755",
        "tmpfs",
        &dir,
    ]);
    d.start();
    let r = api(
        "POST",
        d.port,
        "/api/v1/instances/full",
        Some(fake(json!({}))),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("no room"), "{}", r.body);
    assert_eq!(get(d.port, "/api/v1/instances/full").status, 404);
    let _ = d.systemctl("stop");
    d.sb.ok(&["umount", &dir]);
}
