//! llamactld as a real systemd unit (the shipped unit file) in the private systemd.

use crate::util::sandbox::{DaemonUnit, EXCLUSIVE};
use crate::util::{free_port, get, http, promtool_check, run, wait_for};
use std::time::{Duration, Instant};

#[test]
fn notify_unit_is_active_only_after_ready_with_status_and_journal_fields() {
    unit_test!();
    let port = free_port();
    let d = DaemonUnit::install("ready", port, "", "");
    d.sb.ok(&["systemctl", "start", "--no-block", &d.unit]);
    // The first moment systemd calls the unit active, the daemon must already be listening and
    // have heard from the manager: that is what READY=1 promises.
    wait_for("unit active", Duration::from_secs(30), || {
        (d.prop("ActiveState") == "active").then_some(())
    });
    let r = get(port, "/api/health");
    assert_eq!(r.status, 200, "readiness right after READY: {}", r.body);

    let status = d.prop("StatusText");
    assert!(
        status.contains(&format!("Serving API on http://127.0.0.1:{port}")),
        "{status}"
    );
    assert!(status.contains("metrics on /metrics"), "{status}");
    assert!(status.contains("systemd 2"), "{status}");
    assert_eq!(d.prop("Type"), "notify");
    assert_eq!(d.prop("SubState"), "running");

    let listening = d.wait_log("listening");
    assert_eq!(listening["LLAMACTL_COMPONENT"], "http");
    assert_eq!(listening["PRIORITY"], "6");
    assert_eq!(listening["SYSLOG_IDENTIFIER"], "llamactld");
    assert!(listening["CODE_FILE"]
        .as_str()
        .unwrap()
        .ends_with("daemon/mod.rs"));
    assert!(
        listening["CODE_LINE"]
            .as_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            > 0
    );
    assert_eq!(listening["ADDRESS"], format!("127.0.0.1:{port}"));
    let connected = d.wait_log("connected to the systemd manager");
    assert_eq!(connected["LLAMACTL_COMPONENT"], "systemd");
    assert!(connected["SYSTEMD_VERSION"]
        .as_str()
        .unwrap()
        .starts_with("2"));
    d.wait_log("ready");

    // Field matches work from journalctl, as an operator would use them.
    let by_field = d.sb.ok(&[
        "journalctl",
        "-u",
        &d.unit,
        "LLAMACTL_COMPONENT=systemd",
        "-o",
        "cat",
        "--no-pager",
    ]);
    assert!(
        by_field.contains("connected to the systemd manager"),
        "{by_field}"
    );
    assert!(!by_field.contains("listening"), "{by_field}");

    // SIGTERM (systemctl stop): STOPPING, graceful exit, status 0.
    d.sb.ok(&["systemctl", "stop", &d.unit]);
    d.wait_log("stopped");
    assert_eq!(d.prop("ActiveState"), "inactive");
    assert_eq!(d.prop("Result"), "success");
    assert_eq!(d.prop("ExecMainStatus"), "0");
}

#[test]
fn endpoints_answer_under_systemd_and_metrics_pass_promtool() {
    unit_test!();
    let port = free_port();
    let d = DaemonUnit::install("endpoints", port, "", "");
    d.start();

    let live = get(port, "/api/health/live");
    assert_eq!(
        (live.status, live.json()["status"].clone()),
        (200, "alive".into())
    );

    let ready = get(port, "/api/health");
    assert_eq!(ready.status, 200, "{}", ready.body);
    let rj = ready.json();
    assert_eq!(rj["status"], "ok");
    assert_eq!(rj["failing"], serde_json::json!([]));
    let names: Vec<_> = rj["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["systemd", "state_dir", "instances"]);

    let sys = get(port, "/api/system/health");
    assert_eq!(sys.status, 200, "{}", sys.body);
    let s = sys.json();
    assert_eq!(s["status"], "healthy");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["uptime_seconds"].as_f64().unwrap() >= 0.0);
    let manager_version = d.sb.ok(&["systemctl", "show", "-p", "Version", "--value"]);
    assert_eq!(s["systemd"]["connected"], true);
    assert_eq!(s["systemd"]["version"], manager_version.trim());
    // Another test's deliberately failed unit can make the manager "degraded" for a moment.
    let state = s["systemd"]["system_state"].as_str().unwrap();
    assert!(state == "running" || state == "degraded", "{state}");
    if d.sb.is_private() {
        // The sandbox's manager runs the host's layout: hybrid here (see tests/harness), pure
        // v2 on a v2 host (tools/vm-test runs this test there).
        let v2 =
            d.sb.root()
                .join("sys/fs/cgroup/cgroup.controllers")
                .exists();
        assert_eq!(s["cgroup"]["layout"], if v2 { "v2" } else { "hybrid" });
    }
    assert_eq!(
        s["cgroup"]["own_cgroup"],
        format!("/system.slice/{}", d.unit)
    );
    assert!(
        s["memory"]["total_bytes"].as_u64().unwrap()
            > s["memory"]["available_bytes"].as_u64().unwrap()
    );
    // The shipped unit drops every capability; the daemon reports what it really has.
    assert_eq!(s["capabilities"]["effective"], serde_json::json!([]));
    assert_eq!(s["state_dir"], d.state_dir.as_str());
    assert_eq!(s["log_output"], "journal");
    for c in s["checks"].as_array().unwrap() {
        // Other tests' instance units are orphans to this daemon.
        if c["name"] == "orphan_units" {
            continue;
        }
        let want = if c["name"] == "systemd_state" && state == "degraded" {
            "warn"
        } else {
            "pass"
        };
        assert_eq!(c["status"], want, "{c}");
    }

    // Errors are JSON with a message.
    let nf = get(port, "/no/such/path/12345");
    assert_eq!(nf.status, 404);
    assert!(nf.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/no/such/path/12345"));
    let na = http("DELETE", port, "/api/health", &[], b"").unwrap();
    assert_eq!(na.status, 405);
    assert_eq!(na.json()["error"]["code"], 405);
    // A 2 MiB body is refused from its declared length, before any of it is read.
    let tl = http(
        "POST",
        port,
        "/api/health",
        &[("Content-Length", "2097152")],
        b"",
    )
    .unwrap();
    assert_eq!(tl.status, 413);
    assert!(tl.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("exceeds the limit"));

    let m = get(port, "/metrics");
    assert_eq!(m.status, 200);
    assert_eq!(
        m.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    promtool_check(&m.body);
    for needle in [
        "llamactl_build_info{",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_start_time_seconds ",
        "llamactl_system_memory_total_bytes ",
        "llamactl_api_requests_total{method=\"GET\",route=\"/api/health\",status=\"200\"} 1",
        "llamactl_api_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1",
        "llamactl_api_requests_total{method=\"POST\",route=\"/api/health\",status=\"413\"} 1",
        "llamactl_api_request_duration_seconds_bucket{method=\"GET\",route=\"/api/system/health\",le=\"+Inf\"} 1",
    ] {
        assert!(m.body.contains(needle), "missing {needle:?} in\n{}", m.body);
    }
    // Route templates only: the raw path of a 404 never becomes a label value.
    assert!(!m.body.contains("12345"), "{}", m.body);

    let om = http(
        "GET",
        port,
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
        b"",
    )
    .unwrap();
    assert!(om
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(om.body.ends_with("# EOF\n"));

    // The CLI against the real daemon.
    let out =
        run(crate::util::llamactl().args(["--url", &format!("http://127.0.0.1:{port}"), "health"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("connected,") && text.contains("state_dir"),
        "{text}"
    );
    let out = run(crate::util::llamactl()
        .args(["-o", "json", "health"])
        .env("LLAMACTL_URL", format!("http://127.0.0.1:{port}")));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["healthy"], true);
    let out = run(crate::util::llamactl().args([
        "--url",
        &format!("http://127.0.0.1:{port}"),
        "version",
    ]));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains(&format!("server  {}", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn watchdog_restarts_a_stopped_daemon() {
    unit_test!();
    let port = free_port();
    let d = DaemonUnit::install("watchdog", port, "", "WatchdogSec=2s\nRestartSec=100ms");
    d.start();
    let first_pid = d.prop("MainPID");
    assert_eq!(d.prop("NRestarts"), "0");
    assert_eq!(d.prop("WatchdogUSec"), "2s");
    // Pings keep a healthy daemon alive past several watchdog periods.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(d.prop("NRestarts"), "0", "{}", d.journal_text());
    assert_eq!(d.prop("MainPID"), first_pid);

    d.sb.ok(&[
        "systemctl",
        "kill",
        "--kill-whom=main",
        "--signal=SIGSTOP",
        &d.unit,
    ]);
    wait_for("a watchdog restart", Duration::from_secs(30), || {
        let n: u32 = d.prop("NRestarts").parse().unwrap_or(0);
        (n >= 1 && d.prop("ActiveState") == "active" && d.prop("MainPID") != first_pid)
            .then_some(())
    });
    let j =
        d.sb.ok(&["journalctl", "-u", &d.unit, "-o", "cat", "--no-pager"]);
    assert!(j.contains("Watchdog timeout"), "{j}");
    assert_eq!(get(port, "/api/health").status, 200);
}

/// A wedged HTTP worker (its thread blocked for good, as a blocking call or a busy loop would
/// leave it) stops the watchdog pings although the main runtime is well: systemd restarts the
/// daemon. The wedge is a fault the debug build injects on request.
#[test]
fn watchdog_restarts_a_daemon_with_a_wedged_http_worker() {
    unit_test!();
    let port = free_port();
    let d = DaemonUnit::install(
        "wedged",
        port,
        "workers = 2\n",
        "WatchdogSec=2s\nRestartSec=100ms\nEnvironment=LLAMACTL_FAULT_WEDGE_HTTP_WORKER=4",
    );
    d.start();
    let first_pid = d.prop("MainPID");
    assert_eq!(d.prop("NRestarts"), "0");
    wait_for("a watchdog restart", Duration::from_secs(40), || {
        let n: u32 = d.prop("NRestarts").parse().unwrap_or(0);
        (n >= 1 && d.prop("MainPID") != first_pid).then_some(())
    });
    let j = d.journal_text();
    assert!(
        j.contains("fault injected: wedging this HTTP worker"),
        "{j}"
    );
    assert!(
        j.contains("HTTP worker 0 has not answered its heartbeat"),
        "{j}"
    );
    assert!(j.contains("Watchdog timeout"), "{j}");
}

#[test]
fn unreachable_bus_keeps_serving_degraded() {
    unit_test!();
    let port = free_port();
    let d = DaemonUnit::install(
        "nobus",
        port,
        "[systemd]\naddress = \"unix:path=/run/llamactl-it-no-such-bus\"\nready_timeout = \"3s\"\n[instances]\nallowed_backends = [\"command\"]\n",
        "",
    );
    let t0 = Instant::now();
    d.sb.ok(&["systemctl", "start", "--no-block", &d.unit]);
    // READY=1 is held back while the manager has not answered (up to ready_timeout)...
    wait_for("listener up", Duration::from_secs(10), || {
        http("GET", port, "/api/health/live", &[], b"")
            .ok()
            .map(|_| ())
    });
    if t0.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            d.prop("ActiveState"),
            "activating",
            "READY must wait for the manager"
        );
    }
    // ...then given, degraded, so the health endpoints stay reachable.
    d.wait_active();
    let live = get(port, "/api/health/live");
    assert_eq!(live.status, 200);
    let ready = get(port, "/api/health");
    assert_eq!(ready.status, 503, "{}", ready.body);
    let rj = ready.json();
    assert_eq!(rj["status"], "unavailable");
    assert_eq!(rj["failing"], serde_json::json!(["systemd"]));
    assert!(
        rj["checks"][0]["message"]
            .as_str()
            .unwrap()
            .contains("llamactl-it-no-such-bus"),
        "{rj}"
    );
    let sys = get(port, "/api/system/health");
    assert_eq!(sys.status, 503);
    assert_eq!(sys.json()["systemd"]["connected"], false);
    assert!(d.prop("StatusText").contains("systemd manager unreachable"));
    d.wait_log("starting degraded");
    // Metrics still work without a bus.
    assert_eq!(get(port, "/metrics").status, 200);
    // Specs can be written without systemd; anything that needs a unit is 503.
    let spec = serde_json::json!({"backend_type": "command", "backend_options": {"command": ["/bin/true"]}});
    assert_eq!(
        crate::util::api("POST", port, "/api/v1/instances/nobus", Some(spec)).status,
        201
    );
    let r = crate::util::api("POST", port, "/api/v1/instances/nobus/start", None);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("systemd manager is unreachable"));
}

#[test]
fn sighup_with_broken_config_keeps_the_old_one() {
    unit_test!();
    let port = free_port();
    let d = DaemonUnit::install("reload", port, "", "");
    d.start();
    assert_eq!(get(port, "/metrics").status, 200);

    d.rewrite_config("[monitoring.prometheus]\nenabled = maybe\n");
    d.sb.ok(&["systemctl", "reload", &d.unit]);
    let e = d.wait_log("configuration reload failed");
    assert_eq!(e["PRIORITY"], "3");
    assert_eq!(e["LLAMACTL_COMPONENT"], "config");
    let msg = e["ERROR"].as_str().unwrap();
    assert!(
        msg.contains(&d.config.display().to_string()) && msg.contains("line 5"),
        "{msg}"
    );
    // Old config still in force; the daemon still serves; health shows the failed reload.
    assert_eq!(d.prop("ActiveState"), "active");
    assert_eq!(get(port, "/metrics").status, 200);
    let s = get(port, "/api/system/health").json();
    assert_eq!(s["config"]["reload"]["reloads_failed"], 1);
    assert!(s["config"]["reload"]["last_error"]
        .as_str()
        .unwrap()
        .contains("line 5"));

    // A good config is applied on the next reload.
    d.rewrite_config("[monitoring.prometheus]\nenabled = false\n");
    d.sb.ok(&["systemctl", "reload", &d.unit]);
    d.wait_log("configuration reloaded");
    wait_for("metrics switched off", Duration::from_secs(10), || {
        (get(port, "/metrics").status == 404).then_some(())
    });
    let s = get(port, "/api/system/health").json();
    assert_eq!(s["config"]["reload"]["reloads_ok"], 1);
    assert_eq!(s["config"]["reload"]["last_error"], serde_json::Value::Null);
}

#[test]
fn a_taken_port_fails_the_start() {
    unit_test!();
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = blocker.local_addr().unwrap().port();
    let d = DaemonUnit::install("porttaken", port, "", "Restart=no");
    let out = d.systemctl("start");
    assert!(
        !out.status.success(),
        "start must fail when the port is taken"
    );
    assert_eq!(d.prop("ActiveState"), "failed");
    d.wait_log(&format!("cannot listen on 127.0.0.1:{port}"));
}

#[test]
fn reconnects_after_the_bus_restarts() {
    // Restarting D-Bus disturbs every daemon in the sandbox: run alone.
    let _guard = EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner());
    let port = free_port();
    let d = DaemonUnit::install(
        "busrestart",
        port,
        "[systemd]\ncheck_interval = \"1s\"\n",
        "",
    );
    d.start();
    assert_eq!(
        get(port, "/api/system/health").json()["systemd"]["connects"],
        1
    );
    d.sb.ok(&["systemctl", "restart", "dbus.service"]);
    wait_for("reconnection", Duration::from_secs(30), || {
        let s = get(port, "/api/system/health").json();
        (s["systemd"]["connected"] == true && s["systemd"]["connects"].as_u64() >= Some(2))
            .then_some(())
    });
    assert_eq!(get(port, "/api/health").status, 200);
    d.wait_log("systemd manager unreachable");
}

/// A reload reaches the supervisor (its `[instances]` copy is replaced; new creates use it) and
/// names the changed settings that wait for a restart.
#[test]
fn sighup_reaches_the_instances_and_names_restart_only_keys() {
    unit_test!();
    let port = free_port();
    let d = DaemonUnit::install(
        "reloadinst",
        port,
        "[instances]\nallowed_backends = [\"command\"]\n",
        "",
    );
    d.start();
    let spec = serde_json::json!({"backend_type": "command", "backend_options": {"command": ["/bin/true"]}});
    let create = |name: &str| {
        crate::util::api(
            "POST",
            port,
            &format!("/api/v1/instances/{name}"),
            Some(spec.clone()),
        )
    };
    assert_eq!(create("rlone").status, 201);
    d.rewrite_config(
        "workers = 3\n[instances]\nallowed_backends = [\"command\"]\nmax_instances = 1\n",
    );
    d.sb.ok(&["systemctl", "reload", &d.unit]);
    let e = d.wait_log("take effect on restart");
    assert_eq!(e["KEYS"], "server.workers", "{e}");
    d.wait_log("configuration reloaded");
    let r = create("rltwo");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("max_instances"), "{}", r.body);
    // And back: the limit is lifted without a restart.
    d.rewrite_config("workers = 3\n[instances]\nallowed_backends = [\"command\"]\n");
    d.sb.ok(&["systemctl", "reload", &d.unit]);
    wait_for("the limit lifted", Duration::from_secs(10), || {
        (create("rltwo").status == 201).then_some(())
    });
    for name in ["rlone", "rltwo"] {
        crate::util::api("DELETE", port, &format!("/api/v1/instances/{name}"), None);
    }
}
