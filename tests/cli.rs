//! The binaries' command lines: config checking, help, generated man pages, client errors.

use crate::util::{repo, run, scratch, write, LLAMACTL, LLAMACTLD};
use std::process::Command;

fn check_config(text: &str, name: &str) -> (bool, String) {
    let dir = scratch(&format!("check-{name}"));
    let f = dir.join("config.toml");
    write(&f, text);
    let out = run(Command::new(LLAMACTLD)
        .args(["--check-config", "--config"])
        .arg(&f));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), all)
}

/// Every `config.yaml` block of the monitoring guide (`../shared/seed/monitoring.md`: monitoring,
/// logging with its three destinations, telemetry, debug, profiling, audit), as TOML in one file:
/// accepted as written, with only the Jaeger endpoint's warning.
#[test]
fn the_guides_config_examples_together_pass_check_config() {
    let dir = scratch("guide-config");
    let f = dir.join("config.toml");
    write(&f, GUIDE_CONFIG);
    let out = run(Command::new(LLAMACTLD)
        .arg("--check-config")
        .arg("-c")
        .arg(&f));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("Jaeger's Thrift collector"), "{err}");
}

const GUIDE_CONFIG: &str = r#"[monitoring]
enabled = true
metrics = ["instance_stats", "api_performance", "system_resources"]

[monitoring.prometheus]
enabled = true
path = "/metrics"

[logging]
level = "info"
output = "json"

[[logging.destinations]]
type = "file"
path = "/var/log/llamactl/app.log"

[[logging.destinations]]
type = "syslog"
facility = "local0"

[[logging.destinations]]
type = "elasticsearch"
url = "http://elasticsearch:9200"

[telemetry]
enabled = true
sampling_rate = 0.1

[telemetry.otlp]
endpoint = "http://jaeger:14268/api/traces"

[debug]
pprof_enabled = true
pprof_port = 6060

[profiling]
enabled = true

[profiling.pyroscope]
server_address = "http://pyroscope:4040"
application_name = "llamactl"

[audit]
enabled = true
log_file = "/var/log/llamactl/audit.log"
events = ["auth.login", "auth.logout", "instance.create", "instance.delete", "config.update"]
"#;

#[test]
fn check_config_accepts_the_shipped_file_and_rejects_bad_ones() {
    let shipped = repo().join("etc/llamactl/config.toml");
    let out = run(Command::new(LLAMACTLD)
        .arg("--check-config")
        .arg("-c")
        .arg(&shipped));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("config OK"));

    let (ok, msg) = check_config("[server]\nport = 8080\nlisten = \"x\"\n", "unknown");
    assert!(!ok);
    assert!(
        msg.contains("config.toml: line 3") && msg.contains("listen"),
        "{msg}"
    );

    let (ok, msg) = check_config("[logging]\nlevel = 3\n", "type");
    assert!(!ok);
    assert!(
        msg.contains("line 2") && msg.contains("`logging.level`"),
        "{msg}"
    );

    // The seed's example endpoint (Jaeger's Thrift collector): accepted, with a warning that
    // says where the spans go instead.
    let (ok, msg) = check_config(
        "[telemetry]\nenabled = true\n[telemetry.otlp]\nendpoint = \"http://jaeger:14268/api/traces\"\n",
        "warn",
    );
    assert!(ok, "{msg}");
    assert!(
        msg.contains("warning:") && msg.contains("http://jaeger:4318/v1/traces"),
        "{msg}"
    );
    let (ok, msg) = check_config("[telemetry]\nenabled = true\n", "no-endpoint");
    assert!(!ok && msg.contains("telemetry.otlp.endpoint"), "{msg}");
}

#[test]
fn check_config_refuses_unsafe_access_settings() {
    for (text, name, want) in [
        ("[instances]\nuser = \"root\"\n", "root", "instances.user"),
        ("[instances]\nuser = \"0\"\n", "uid0", "instances.user"),
        ("[server]\nhost = \"0.0.0.0\"\n", "open", "auth.require_inference_auth"),
        (
            "[server]\nhost = \"0.0.0.0\"\n[auth]\nrequire_inference_auth = true\nrequire_management_auth = false\n",
            "open-mgmt",
            "auth.require_management_auth",
        ),
        (
            "[[auth.keys]]\nname = \"k\"\nscope = \"management\"\nkey = \"llk_in_the_config_file_000000\"\n",
            "plainkey",
            "must not be written in the config",
        ),
    ] {
        let (ok, msg) = check_config(text, name);
        assert!(!ok, "{name} accepted: {msg}");
        assert!(msg.contains(want), "{name}: {msg}");
        assert!(!msg.contains("llk_in_the_config_file"), "{name}: the key was echoed: {msg}");
    }
    let (ok, msg) = check_config(
        "[server]\nhost = \"0.0.0.0\"\n[auth]\nrequire_inference_auth = true\n",
        "open-ok",
    );
    assert!(ok, "{msg}");
    // Management without a key is allowed on loopback, with a warning.
    let (ok, msg) = check_config("[auth]\nrequire_management_auth = false\n", "nomgmt");
    assert!(
        ok && msg.contains("warning: `auth.require_management_auth` is false"),
        "{msg}"
    );
}

#[test]
fn keys_generate_prints_a_key_and_its_digest_offline() {
    let out = run(Command::new(LLAMACTL).args(["-o", "json", "keys", "generate"]));
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = v["key"].as_str().unwrap();
    assert_eq!(v["hash"], crate::util::key_hash(key));
    // The digest is what [[auth.keys]] takes.
    let (ok, msg) = check_config(
        &format!(
            "[[auth.keys]]\nname = \"ci\"\nscope = \"inference\"\nhash = \"{}\"\n",
            v["hash"].as_str().unwrap()
        ),
        "generated",
    );
    assert!(ok, "{msg}");
}

#[test]
fn config_path_from_environment_and_missing_explicit_file() {
    let dir = scratch("check-env");
    let f = dir.join("c.toml");
    write(&f, "[server]\nport = \"eighty\"\n");
    let out = run(Command::new(LLAMACTLD)
        .arg("--check-config")
        .env("LLAMACTL_CONFIG", &f));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("c.toml: line 2"));

    let out = run(Command::new(LLAMACTLD).args(["--check-config", "-c", "/nonexistent/x.toml"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot read config file /nonexistent/x.toml"));
}

#[test]
fn daemon_refuses_to_start_on_a_bad_config() {
    let dir = scratch("bad-start");
    let f = dir.join("c.toml");
    write(&f, "[server\n");
    let out = run(Command::new(LLAMACTLD).arg("-c").arg(&f));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));

    // A missing file says why once (the error chain once repeated its cause).
    let out = run(Command::new(LLAMACTLD).args(["-c", "/nonexistent/x.toml"]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read config file /nonexistent/x.toml"),
        "{err}"
    );
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn help_reads_well() {
    let out = run(Command::new(LLAMACTL).arg("--help"));
    let h = String::from_utf8_lossy(&out.stdout);
    for s in ["health", "version", "--url", "--output", "LLAMACTL_URL"] {
        assert!(h.contains(s), "llamactl --help lacks {s}:\n{h}");
    }
    let out = run(Command::new(LLAMACTLD).arg("--help"));
    let h = String::from_utf8_lossy(&out.stdout);
    for s in [
        "--config",
        "--check-config",
        "SIGHUP",
        "journalctl -u llamactl",
    ] {
        assert!(h.contains(s), "llamactld --help lacks {s}:\n{h}");
    }
}

#[test]
fn shipped_man_pages_match_the_clap_definitions() {
    for (bin, page) in [(LLAMACTLD, "man/llamactld.8"), (LLAMACTL, "man/llamactl.1")] {
        let out = run(Command::new(bin).args(["--generate", "man"]));
        assert!(out.status.success());
        let shipped = std::fs::read(repo().join(page)).unwrap();
        assert!(
            out.stdout == shipped,
            "{page} is stale: regenerate with `{} --generate man > {page}`",
            bin.rsplit('/').next().unwrap()
        );
    }
    let out = run(Command::new(LLAMACTL).args(["--generate", "complete-bash"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("complete -F"));
}

/// Every shipped man page renders with no warning at all (`groff -ww` enables them all; `man -l`
/// runs the same formatter).
#[test]
fn man_pages_render_without_warnings() {
    let mut pages: Vec<_> = std::fs::read_dir(repo().join("man"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    let names: Vec<_> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    for want in ["llamactl.1", "llamactld.8", "llamactl.toml.5"] {
        assert!(names.iter().any(|n| n == want), "man/{want} is missing");
    }
    for page in &pages {
        let out = Command::new("groff")
            .args(["-ww", "-z", "-man"])
            .arg(page)
            .output()
            .expect("groff not found: install the Debian package groff-base (tools/test does)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.is_empty(),
            "{} renders with warnings:\n{err}",
            page.display()
        );
    }
}

#[test]
fn client_reports_an_unreachable_daemon_as_a_chain() {
    // Port 9 (discard) is closed on loopback here.
    let out = run(Command::new(LLAMACTL).args([
        "--url",
        "http://127.0.0.1:9",
        "--http-timeout",
        "2s",
        "health",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.starts_with("llamactl: cannot reach llamactld at http://127.0.0.1:9: "),
        "{e}"
    );
    let out = run(Command::new(LLAMACTL).args(["--url", "https://x", "health"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http://"));
    let out = run(Command::new(LLAMACTL).args(["version", "--client"]));
    assert!(out.status.success());
}
