//! The audit trail and rate limits against the real daemon under the private systemd:
//! - `events`: every event from its real action, found in the journal (by MESSAGE_ID, with the
//!   catalog's text under `journalctl -x`), the file and the API; `llamactl audit`, `login` and
//!   `logout`; `[audit] events`; a rotated file reopened on SIGHUP;
//! - `failures`: an unwritable log directory and a full disk refusing mutations, and records
//!   waiting until the file is back;
//! - `limits`: rate limits (429, `Retry-After`, metrics) and usage per key.

mod events;
mod failures;
mod limits;

use crate::util::sandbox::DaemonUnit;
use crate::util::{fake_backend, get, wait_for, LLAMACTL};
use serde_json::{json, Value};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The MESSAGE_IDs, as src/audit/event.rs fixes them (written out again here on purpose: the
/// test holds the code to its published ids).
pub const IDS: &[(&str, &str)] = &[
    ("auth.login", "65114fc8af854286828c8a7910755058"),
    ("auth.logout", "97437fcb3b8f458f866810fb92b35ebb"),
    ("auth.failure", "cbe23c8968b74443a161f85a6cfe3f89"),
    ("key.create", "297a02b39b1746278b6feb4ae80e88c2"),
    ("key.revoke", "f167ae20bef541e5911aa0c5f13c11ec"),
    ("instance.create", "bbecccad976245c2abfb65c9d0c4960c"),
    ("instance.update", "077c24a7c6134f90987007eaefe69f02"),
    ("instance.delete", "c6dbb9ca97634d72b3a41fee6b9a68c6"),
    ("instance.start", "bd9f929d0ab34f099d63674ba6d8ffa2"),
    ("instance.stop", "d2d4311352b14d318afe2d47a8a803d4"),
    ("instance.restart", "4288875a00c442f1a39ccf53a59127c3"),
    ("instance.evict", "915d007c87554b2c8cc939ebe81f20a4"),
    ("instance.idle_stop", "11a940c73805427eac82126afab1ad64"),
    ("config.update", "377b6203103e438c901bdeedb50bfc96"),
];

pub fn fake(extra: Value) -> Value {
    let mut v = json!({"backend_type": "command",
        "backend_options": {"command": [fake_backend().display().to_string(), "--port", "{port}", "--model", "fake"]}});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

pub fn state(d: &DaemonUnit, name: &str) -> Value {
    get(d.port, &format!("/api/v1/instances/{name}")).json()["state"].clone()
}

pub fn wait_state(d: &DaemonUnit, name: &str, want: &str) {
    wait_for(&format!("{name} {want}"), Duration::from_secs(30), || {
        (state(d, name) == want).then_some(())
    });
}

/// This daemon's journal entries of one MESSAGE_ID, as JSON.
pub fn journal(d: &DaemonUnit, id: &str) -> Vec<Value> {
    d.sb.ok(&[
        "journalctl",
        "-u",
        &d.unit,
        &format!("MESSAGE_ID={id}"),
        "-o",
        "json",
        "--no-pager",
    ])
    .lines()
    .filter_map(|l| serde_json::from_str(l).ok())
    .collect()
}

pub fn audit_api(d: &DaemonUnit, query: &str) -> Vec<Value> {
    let r = get(d.port, &format!("/api/v1/audit?{query}"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["events"].as_array().cloned().unwrap_or_default()
}

/// `llamactl` with `HOME` at a scratch directory and the given stdin.
pub fn cli(home: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(LLAMACTL)
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("LLAMACTL_API_KEY")
        .env_remove("LLAMACTL_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
