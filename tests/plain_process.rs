//! llamactld run as a plain process (no systemd): stderr logging and the no-bus fallback.

use crate::util::{free_port, get, scratch, wait_for, write, LLAMACTLD};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The daemon as a child process, killed if the test ends early (a failed assertion must not
/// leave a daemon holding its port and socket behind).
pub(crate) struct Daemon(pub(crate) Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn outside_systemd_logs_json_to_stderr_and_serves_without_a_bus() {
    let port = free_port();
    let dir = scratch("direct-json");
    let f = dir.join("c.toml");
    write(
        &f,
        &format!(
            "[server]\nport = {port}\nstate_dir = \"{}\"\nsocket = \"{}\"\n[audit]\njournal = false\nlog_file = \"{}\"\n[logging]\noutput = \"json\"\n[systemd]\naddress = \"unix:path=/nonexistent/bus\"\nready_timeout = \"1s\"\n[telemetry.otlp]\nheaders = {{ authorization = \"Bearer sup3rs3cret\" }}\n{}",
            dir.join("state").display(),
            dir.join("run/llamactl.sock").display(),
            dir.join("audit.log").display(),
            crate::util::test_key_config()
        ),
    );
    let mut d = Daemon(
        Command::new(LLAMACTLD)
            .arg("-c")
            .arg(&f)
            .env("LLAMACTL_LOG", "debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut d.0;
    wait_for("daemon up", Duration::from_secs(10), || {
        crate::util::http("GET", port, "/api/health/live", &[], b"").ok()
    });
    assert_eq!(get(port, "/api/health").status, 503);
    assert_eq!(get(port, "/api/system/health").json()["log_output"], "json");
    // The admin socket works outside systemd too: root needs no key on it.
    let sock = dir.join("run/llamactl.sock");
    let r = crate::util::http_unix(&sock, "GET", "/api/v1/instances", &[], b"").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let lines: Vec<String> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    let all = lines.join("\n");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
    assert!(all.contains("\"message\":\"listening\""), "{all}");
    assert!(all.contains("\"message\":\"stopped\""), "{all}");
    assert!(
        !all.contains("sup3rs3cret"),
        "a secret reached the log:\n{all}"
    );
}

#[test]
fn journal_output_without_journald_falls_back_to_stderr_and_file_destination_gets_json() {
    let port = free_port();
    let dir = scratch("direct-fallback");
    let log = dir.join("logs/app.log");
    let f = dir.join("c.toml");
    write(
        &f,
        &format!(
            "[server]\nport = {port}\nstate_dir = \"{}\"\nsocket = \"\"\n[audit]\nenabled = false\n[logging]\noutput = \"journal\"\n[[logging.destinations]]\ntype = \"file\"\npath = \"{}\"\n[systemd]\naddress = \"unix:path=/nonexistent/bus\"\nready_timeout = \"1s\"\n{}",
            dir.join("state").display(),
            log.display(),
            crate::util::test_key_config()
        ),
    );
    // Where journald runs (a systemd host) the journal is used; elsewhere stderr takes over.
    let has_journald = std::path::Path::new(llamactl::logging::journald::JOURNAL_SOCKET).exists();
    let mut d = Daemon(
        Command::new(LLAMACTLD)
            .arg("-c")
            .arg(&f)
            .env_remove("JOURNAL_STREAM")
            .env_remove("LLAMACTL_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut d.0;
    wait_for("daemon up", Duration::from_secs(10), || {
        crate::util::http("GET", port, "/api/health/live", &[], b"").ok()
    });
    let expected = if has_journald { "journal" } else { "text" };
    assert_eq!(
        get(port, "/api/system/health").json()["log_output"],
        expected
    );
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("journal socket /run/systemd/journal/socket unusable"),
        "{stderr}"
    );
    let file = std::fs::read_to_string(&log).unwrap();
    let first: serde_json::Value = serde_json::from_str(file.lines().next().unwrap()).unwrap();
    assert_eq!(first["message"], "llamactld starting");
    assert!(file.contains("\"message\":\"stopped\""), "{file}");
}
