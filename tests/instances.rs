//! Instances as transient units, driven through llamactld's API in the private systemd.

use crate::util::sandbox::{sandbox, DaemonUnit, Sandbox};
use crate::util::{api, fake_backend, free_port, get, http, llama_backend, run, wait_for};
use serde_json::{json, Value};
use std::time::Duration;

use crate::util::sandbox::daemon;

fn fake_spec(extra: Value) -> Value {
    let mut v = json!({
        "backend_type": "command",
        "backend_options": {"command": [fake_backend().display().to_string(), "--port", "{port}", "--model", "fake"]},
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    v
}

fn state(d: &DaemonUnit, name: &str) -> Value {
    get(d.port, &format!("/api/v1/instances/{name}")).json()
}

fn wait_state(d: &DaemonUnit, name: &str, want: &str) -> Value {
    let start = std::time::Instant::now();
    loop {
        let v = state(d, name);
        if v["state"] == want {
            return v;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let unit = format!("llamactl-{name}.service");
            panic!(
                "timed out waiting for {name} to be {want}; last: {v}\n{}",
                String::from_utf8_lossy(
                    &d.sb
                        .run(&["systemctl", "status", "--no-pager", &unit])
                        .stdout
                )
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unit_prop(sb: &Sandbox, unit: &str, p: &str) -> String {
    sb.ok(&["systemctl", "show", "-p", p, "--value", unit])
        .trim()
        .to_string()
}

#[test]
fn llama_server_instance_lifecycle() {
    unit_test!();
    let (server, model) = llama_backend();
    let d = daemon(
        "llama",
        &format!("[backends.llama_cpp]\ncommand = \"{server}\"\n"),
        "",
    );
    let r = api(
        "POST",
        d.port,
        "/api/v1/instances/smol",
        Some(json!({
            "backend_type": "llama_cpp",
            "backend_options": {"model": model, "ctx_size": 512, "threads": 2, "alias": "smol"},
        })),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (v["status"].as_str(), v["state"].as_str()),
        (Some("stopped"), Some("stopped"))
    );
    let port = v["port"].as_u64().unwrap() as u16;
    assert_eq!(v["options"]["backend_options"]["port"], port);
    assert_eq!(v["options"]["auto_restart"], true);

    let r = api("POST", d.port, "/api/v1/instances/smol/start", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = wait_state(&d, "smol", "ready");
    assert_eq!(v["status"], "running");
    assert_eq!(get(d.port, "/api/instances/smol/health").status, 200);

    // The real server answers a real completion.
    let body = json!({"model": "smol", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}).to_string();
    let c = http(
        "POST",
        port,
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(c.status, 200, "{}", c.body);
    let cj = c.json();
    assert!(cj["choices"][0]["message"]["content"].is_string(), "{cj}");
    assert!(cj["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // It is a real, accounted, sandboxed transient unit in llamactl.slice.
    let unit = "llamactl-smol.service";
    let status = d.sb.ok(&["systemctl", "status", "--no-pager", unit]);
    assert!(
        status.contains("active (running)") && status.contains("llamactl.slice"),
        "{status}"
    );
    assert_eq!(unit_prop(d.sb, unit, "Slice"), "llamactl.slice");
    assert_eq!(unit_prop(d.sb, unit, "Transient"), "yes");
    assert_eq!(unit_prop(d.sb, unit, "DynamicUser"), "yes");
    assert_eq!(unit_prop(d.sb, unit, "MemoryAccounting"), "yes");
    assert_eq!(unit_prop(d.sb, unit, "ProtectSystem"), "strict");
    assert_eq!(unit_prop(d.sb, unit, "Restart"), "on-failure");
    assert_eq!(unit_prop(d.sb, unit, "StartLimitBurst"), "4");
    assert_eq!(unit_prop(d.sb, unit, "MainPID"), v["main_pid"].to_string());
    assert_eq!(v["control_group"], "/llamactl.slice/llamactl-smol.service");
    let j =
        d.sb.ok(&["journalctl", "-u", unit, "--no-pager", "-o", "cat"]);
    assert!(j.contains("llama") && j.contains("listening"), "{j}");
    let by_field = d.sb.ok(&[
        "journalctl",
        "LLAMACTL_INSTANCE=smol",
        "--no-pager",
        "-o",
        "cat",
    ]);
    assert!(by_field.contains("listening"), "{by_field}");

    // A real Prometheus finds the instance through service discovery and scrapes both.
    prometheus_scrapes_llamactl_and_the_instance(d.port, port);

    // The logs endpoint returns the backend's own lines, with time and priority.
    let logs = get(d.port, "/api/v1/instances/smol/logs?lines=200");
    assert_eq!(logs.status, 200);
    assert!(logs
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    assert!(
        logs.body
            .lines()
            .any(|l| l.contains(" info llamactl-smol[") && l.contains("listening")),
        "{}",
        logs.body
    );
    let lj = get(d.port, "/api/v1/instances/smol/logs?lines=5&format=json").json();
    let entries = lj.as_array().unwrap();
    assert_eq!(entries.len(), 5);
    assert!(entries[0]["time"].as_str().unwrap().ends_with('Z') && entries[0]["priority"].is_u64());

    let r = api("POST", d.port, "/api/v1/instances/smol/stop", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "stopped");
    assert_eq!(unit_prop(d.sb, unit, "LoadState"), "not-found");
    assert_eq!(get(d.port, "/api/instances/smol/health").status, 503);

    let r = api("DELETE", d.port, "/api/v1/instances/smol", None);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(get(d.port, "/api/v1/instances/smol").status, 404);
    assert!(!d.state_path().join("instances/smol.json").exists());
}

#[test]
fn restart_policy_then_failed_after_max_restarts() {
    // Alone: `systemctl daemon-reload` (which other tests run to install their units) resets
    // systemd's start-limit counters (seen on systemd 252), and with it the restart budget.
    let _guard = crate::util::sandbox::EXCLUSIVE
        .write()
        .unwrap_or_else(|e| e.into_inner());
    let d = daemon("restarts", "", "");
    let r = api(
        "POST",
        d.port,
        "/api/v1/instances/crashy",
        Some(fake_spec(json!({"max_restarts": 2, "restart_delay": 0,
            "memory_max": "256M", "cpu_quota": 50, "gpus": [0, 1]}))),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        api("POST", d.port, "/api/v1/instances/crashy/start", None).status,
        200
    );
    let v = wait_state(&d, "crashy", "ready");
    let unit = "llamactl-crashy.service";
    // Resource limits reach the unit.
    assert_eq!(
        unit_prop(d.sb, unit, "MemoryMax"),
        (256u64 << 20).to_string()
    );
    assert_eq!(unit_prop(d.sb, unit, "CPUQuotaPerSecUSec"), "500ms");
    let env = unit_prop(d.sb, unit, "Environment");
    assert!(
        env.contains("CUDA_VISIBLE_DEVICES=0,1") && env.contains("LLAMACTL_INSTANCE=crashy"),
        "{env}"
    );
    for n in 1..=2 {
        let pid = v["main_pid"].clone();
        d.sb.ok(&["systemctl", "kill", "--signal=SIGKILL", unit]);
        let v = wait_for("restart", Duration::from_secs(30), || {
            let v = state(&d, "crashy");
            (v["restarts"] == n && v["state"] == "ready" && v["main_pid"] != pid).then_some(v)
        });
        assert_eq!(unit_prop(d.sb, unit, "NRestarts"), n.to_string());
        let _ = v;
    }
    // One crash more than max_restarts: systemd gives up; the unit stays failed.
    d.sb.ok(&["systemctl", "kill", "--signal=SIGKILL", unit]);
    let v = wait_state(&d, "crashy", "failed");
    assert_eq!(v["status"], "failed");
    // Result names the last failure (the SIGKILL); systemd says why it did not restart.
    assert_eq!(v["result"], "signal");
    let j =
        d.sb.ok(&["journalctl", "-u", unit, "--no-pager", "-o", "cat"]);
    assert!(j.contains("Start request repeated too quickly"), "{j}");
    // The backend ran 1 + max_restarts times; NRestarts also counts the refused attempt.
    assert_eq!(j.matches("fake_backend: listening on").count(), 3, "{j}");
    assert_eq!(v["restarts"], 3);
    assert_eq!(get(d.port, "/api/instances/crashy/health").status, 503);
    // A start clears the failure and runs it again.
    let r = api("POST", d.port, "/api/v1/instances/crashy/start", None);
    assert_eq!(r.status, 200, "{}", r.body);
    wait_state(&d, "crashy", "ready");
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/crashy", None).status,
        204
    );
    assert_eq!(unit_prop(d.sb, unit, "LoadState"), "not-found");
}

#[test]
fn daemon_kill_9_readopts_without_restarting_instances() {
    unit_test!();
    let d = daemon("adopt", "", "RestartSec=200ms");
    assert_eq!(
        api(
            "POST",
            d.port,
            "/api/v1/instances/steady",
            Some(fake_spec(json!({})))
        )
        .status,
        201
    );
    assert_eq!(
        api("POST", d.port, "/api/v1/instances/steady/start", None).status,
        200
    );
    let before = wait_state(&d, "steady", "ready");
    let backend_port = before["port"].as_u64().unwrap() as u16;
    // A unit nobody has a spec for.
    d.sb.ok(&[
        "systemd-run",
        "--unit=llamactl-stray-adopt.service",
        "--slice=llamactl.slice",
        "sleep",
        "300",
    ]);

    let daemon_pid = d.prop("MainPID");
    d.sb.ok(&[
        "systemctl",
        "kill",
        "--kill-whom=main",
        "--signal=SIGKILL",
        &d.unit,
    ]);
    // The backend keeps serving while the daemon is gone and comes back.
    assert_eq!(get(backend_port, "/health").status, 200);
    wait_for("daemon restarted", Duration::from_secs(30), || {
        (d.prop("NRestarts") == "1"
            && d.prop("ActiveState") == "active"
            && d.prop("MainPID") != daemon_pid)
            .then_some(())
    });
    let after = wait_state(&d, "steady", "ready");
    assert_eq!(
        after["main_pid"], before["main_pid"],
        "the instance must not be restarted"
    );
    assert_eq!(after["restarts"], 0);
    assert_eq!(after["active_since"], before["active_since"]);
    d.wait_log("adopted running unit");
    let sys = get(d.port, "/api/system/health").json();
    assert!(
        sys["instances"]["orphan_units"]
            .as_array()
            .unwrap()
            .contains(&json!("llamactl-stray-adopt.service")),
        "{sys}"
    );
    d.sb.ok(&["systemctl", "stop", "llamactl-stray-adopt.service"]);
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/steady", None).status,
        204
    );
}

#[test]
fn desired_running_instances_start_with_the_daemon() {
    unit_test!();
    let d = daemon("desired", "", "");
    assert_eq!(
        api(
            "POST",
            d.port,
            "/api/v1/instances/wanted",
            Some(fake_spec(json!({})))
        )
        .status,
        201
    );
    assert_eq!(
        api("POST", d.port, "/api/v1/instances/wanted/start", None).status,
        200
    );
    wait_state(&d, "wanted", "ready");
    // Stopped behind the daemon's back (not through the API): the spec still says running.
    d.sb.ok(&["systemctl", "stop", "llamactl-wanted.service"]);
    wait_state(&d, "wanted", "stopped");
    d.sb.ok(&["systemctl", "restart", &d.unit]);
    wait_state(&d, "wanted", "ready");
    assert_eq!(
        api("POST", d.port, "/api/v1/instances/wanted/stop", None).status,
        200
    );
    d.sb.ok(&["systemctl", "restart", &d.unit]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        state(&d, "wanted")["state"],
        "stopped",
        "an instance stopped through the API stays stopped"
    );
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/wanted", None).status,
        204
    );
}

#[test]
fn corrupt_spec_is_reported_and_the_others_load() {
    unit_test!();
    let port = free_port();
    let d = DaemonUnit::install(
        "corrupt",
        port,
        "[instances]\nallowed_backends = [\"command\"]\n",
        "",
    );
    let dir = d.state_path().join("instances");
    std::fs::create_dir_all(&dir).unwrap();
    let good = json!({"name": "good", "created": 1, "desired_state": "stopped",
        "options": {"backend_type": "command", "backend_options": {"command": ["/bin/true"], "port": 21999}}});
    std::fs::write(dir.join("good.json"), good.to_string()).unwrap();
    std::fs::write(dir.join("bad.json"), b"{ \"name\": \"bad\", oops").unwrap();
    // Well-formed JSON that fails validation: reported the same way, and never started although
    // they ask to run (a hand-edited "lots" once ran the unit without a memory limit; an empty
    // argv once panicked the daemon).
    for (name, options) in [
        (
            "lotsmem",
            json!({"backend_type": "command", "memory_max": "lots",
            "backend_options": {"command": ["/bin/sleep", "600"], "port": 21998}}),
        ),
        (
            "noargv",
            json!({"backend_type": "command", "backend_options": {"command": [], "port": 21997}}),
        ),
        (
            "hugedelay",
            json!({"backend_type": "command", "restart_delay": 9223372036854775807u64,
            "backend_options": {"command": ["/bin/sleep", "600"], "port": 21996}}),
        ),
    ] {
        let spec =
            json!({"name": name, "created": 1, "desired_state": "running", "options": options});
        std::fs::write(dir.join(format!("{name}.json")), spec.to_string()).unwrap();
    }
    d.start();
    let list = get(port, "/api/v1/instances").json();
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].clone())
        .collect();
    assert_eq!(names, [json!("good")]);
    let sys = get(port, "/api/system/health").json();
    let corrupt: std::collections::BTreeMap<String, String> = sys["instances"]["corrupt_specs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["error"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(corrupt["bad"].contains("line 1"), "{sys}");
    assert!(corrupt["lotsmem"].contains("memory_max"), "{sys}");
    assert!(
        corrupt["noargv"].contains("backend_options.command"),
        "{sys}"
    );
    assert!(corrupt["hugedelay"].contains("restart_delay"), "{sys}");
    for name in ["lotsmem", "noargv", "hugedelay"] {
        let state = sandbox().ok(&[
            "systemctl",
            "show",
            "-P",
            "ActiveState",
            &format!("llamactl-{name}.service"),
        ]);
        assert_eq!(state.trim(), "inactive", "{name} was started");
    }
    let check = sys["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "instances")
        .unwrap()
        .clone();
    assert_eq!(check["status"], "warn");
    let e = d.wait_log("cannot be read");
    assert_eq!(e["PRIORITY"], "3");
    assert_eq!(e["LLAMACTL_INSTANCE"], "bad");
    // Never overwritten.
    let r = api(
        "POST",
        port,
        "/api/v1/instances/bad",
        Some(fake_spec(json!({}))),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cannot be read"));
    assert_eq!(
        std::fs::read(dir.join("bad.json")).unwrap(),
        b"{ \"name\": \"bad\", oops"
    );
    assert_eq!(
        get(port, "/api/health").status,
        200,
        "a corrupt spec is not a readiness failure"
    );
}

#[test]
fn bad_names_ports_and_requests_get_clear_errors() {
    unit_test!();
    let d = daemon("errors", "", "");
    let p = d.port;
    let long = "a".repeat(300);
    for name in ["..%2Fx", "a%20b", "x.service", long.as_str(), "UPPER", "-x"] {
        let r = api(
            "POST",
            p,
            &format!("/api/v1/instances/{name}"),
            Some(fake_spec(json!({}))),
        );
        assert_eq!(r.status, 400, "{name}: {}", r.body);
        assert!(r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid instance name"));
    }
    assert!(api("POST", p, "/api/v1/instances/", Some(fake_spec(json!({})))).status >= 400);
    // Invalid bodies.
    let r = http(
        "POST",
        p,
        "/api/v1/instances/x",
        &[("Content-Type", "application/json")],
        b"{not json",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    let r = api(
        "POST",
        p,
        "/api/v1/instances/x",
        Some(json!({"backend_type": "mlx_lm"})),
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("unknown variant"), "{}", r.body);
    let r = api(
        "POST",
        p,
        "/api/v1/instances/x",
        Some(json!({"backend_type": "llama_cpp", "backend_options": {}})),
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("backend_options.model"), "{}", r.body);
    // Numbers that once panicked an HTTP worker or the idle-stop task: 400 naming the field,
    // and the daemon still answers.
    for (extra, field) in [
        (
            json!({"restart_delay": 9223372036854775807u64}),
            "restart_delay",
        ),
        (json!({"idle_timeout": 1e20}), "idle_timeout"),
        (json!({"memory_max": "1e30G"}), "memory_max"),
        (json!({"cpu_quota": 1e300}), "cpu_quota"),
    ] {
        let r = api(
            "POST",
            p,
            "/api/v1/instances/x",
            Some(fake_spec(extra.clone())),
        );
        assert_eq!(r.status, 400, "{extra}: {}", r.body);
        assert!(r.body.contains(field), "{extra}: {}", r.body);
    }
    assert_eq!(get(p, "/api/health/live").status, 200);
    // Ports and names are unique.
    let spec = fake_spec(json!({}));
    let mut with_port = spec.clone();
    with_port["backend_options"]["port"] = json!(21555);
    assert_eq!(
        api("POST", p, "/api/v1/instances/one", Some(with_port.clone())).status,
        201
    );
    let r = api("POST", p, "/api/v1/instances/two", Some(with_port));
    assert_eq!(r.status, 409);
    assert!(
        r.body
            .contains("port 21555 is already used by instance \\\"one\\\""),
        "{}",
        r.body
    );
    assert_eq!(
        api("POST", p, "/api/v1/instances/one", Some(spec.clone())).status,
        409
    );
    // Unknown instances.
    for (m, path) in [
        ("GET", "/api/v1/instances/ghost"),
        ("POST", "/api/v1/instances/ghost/start"),
        ("DELETE", "/api/v1/instances/ghost"),
        ("GET", "/api/instances/ghost/health"),
        ("GET", "/api/v1/instances/ghost/logs"),
    ] {
        assert_eq!(api(m, p, path, None).status, 404, "{m} {path}");
    }
    // A start that cannot work leaves the spec and says why.
    let broken =
        json!({"backend_type": "command", "backend_options": {"command": ["/nonexistent/server"]}});
    assert_eq!(
        api("POST", p, "/api/v1/instances/broken", Some(broken)).status,
        201
    );
    let r = api("POST", p, "/api/v1/instances/broken/start", None);
    assert_eq!(r.status, 500);
    assert!(r.body.contains("/nonexistent/server"), "{}", r.body);
    let v = state(&d, "broken");
    assert_eq!(v["state"], "stopped");
    assert!(v["last_error"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/server"));
    // Already running → 409; a second instance on a port some other process holds → 409.
    assert_eq!(
        api("POST", p, "/api/v1/instances/one/start", None).status,
        200
    );
    assert_eq!(
        api("POST", p, "/api/v1/instances/one/start", None).status,
        409
    );
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut taken = spec.clone();
    taken["backend_options"]["port"] = json!(blocker.local_addr().unwrap().port());
    assert_eq!(
        api("POST", p, "/api/v1/instances/three", Some(taken)).status,
        201
    );
    let r = api("POST", p, "/api/v1/instances/three/start", None);
    assert_eq!(r.status, 409);
    assert!(r.body.contains("in use by another process"), "{}", r.body);
    // Delete stops the unit first.
    assert_eq!(api("DELETE", p, "/api/v1/instances/one", None).status, 204);
    assert_eq!(
        unit_prop(d.sb, "llamactl-one.service", "LoadState"),
        "not-found"
    );
    for n in ["broken", "three"] {
        assert_eq!(
            api("DELETE", p, &format!("/api/v1/instances/{n}"), None).status,
            204
        );
    }
}

#[test]
fn cli_drives_the_lifecycle() {
    unit_test!();
    let d = daemon("cli", "", "");
    let url = format!("http://127.0.0.1:{}", d.port);
    let cli = |args: &[&str]| {
        let out = run(crate::util::llamactl().arg("--url").arg(&url).args(args));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let fake = fake_backend().display().to_string();
    let (code, out, err) = cli(&[
        "create",
        "viacli",
        "--max-restarts",
        "1",
        "--env",
        "GREETING=hi",
        "--wait",
        "--timeout",
        "60s",
        "--",
        &fake,
        "--port",
        "{port}",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("viacli: ready") || err.contains("is ready"),
        "{err}"
    );
    assert!(out.contains("state       ready"), "{out}");
    let (_, out, _) = cli(&["list"]);
    assert!(
        out.starts_with("NAME") && out.contains("viacli") && out.contains("ready"),
        "{out}"
    );
    let (_, out, _) = cli(&["-o", "json", "show", "viacli"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    // Environment values are shown redacted; the unit has the real one.
    assert_eq!(v["options"]["environment"]["GREETING"], "<redacted>");
    assert!(
        unit_prop(d.sb, "llamactl-viacli.service", "Environment").contains("GREETING=hi"),
        "the unit's environment lacks GREETING=hi"
    );
    let (code, out, _) = cli(&["health", "viacli"]);
    assert_eq!((code, out.trim()), (Some(0), "viacli: ready (healthy)"));
    let (code, out, _) = cli(&["logs", "viacli", "-n", "20"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("fake_backend: listening on"), "{out}");
    // Follow mode streams new lines as they come.
    let mut child = crate::util::llamactl()
        .args(["--url", &url, "logs", "viacli", "-n", "1", "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let _first = lines.next();
    assert_eq!(get(d.port, "/api/v1/instances/viacli").status, 200);
    let port = state(&d, "viacli")["port"].as_u64().unwrap() as u16;
    assert_eq!(get(port, "/v1/models").status, 200);
    let seen = lines
        .map_while(Result::ok)
        .find(|l| l.contains("fake_backend: GET /v1/models"));
    assert!(
        seen.is_some(),
        "the followed log never showed the new request"
    );
    let _ = child.kill();
    let _ = child.wait();
    let (code, _, err) = cli(&["restart", "viacli", "--wait"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, _) = cli(&["stop", "viacli"]);
    assert_eq!((code, out.trim()), (Some(0), "viacli: stopped"));
    let (code, _, _) = cli(&["health", "viacli"]);
    assert_eq!(code, Some(1));
    let (code, _, err) = cli(&["start", "nosuch"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no instance named \"nosuch\" (HTTP 404)"),
        "{err}"
    );
    let (code, out, _) = cli(&["delete", "viacli"]);
    assert_eq!((code, out.trim()), (Some(0), "viacli: deleted"));

    // A TOML spec file.
    let f = crate::util::scratch("cli-spec").join("spec.toml");
    crate::util::write(&f, &format!("backend_type = \"command\"\nmax_restarts = 0\n[backend_options]\ncommand = [\"{fake}\", \"--port\", \"{{port}}\"]\n"));
    let (code, out, err) = cli(&["create", "fromfile", "-f", f.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\"max_restarts\":0"), "{out}");
    let (code, _, _) = cli(&["delete", "fromfile"]);
    assert_eq!(code, Some(0));
}

/// Runs Prometheus with the shipped example config pointed at this daemon, and waits until it
/// has scraped llamactl's series and, through `/api/v1/sd/prometheus`, llama-server's own.
fn prometheus_scrapes_llamactl_and_the_instance(daemon_port: u16, backend_port: u16) {
    let sd = get(daemon_port, "/api/v1/sd/prometheus").json();
    assert_eq!(
        sd[0]["targets"],
        json!([format!("127.0.0.1:{backend_port}")]),
        "{sd}"
    );
    assert_eq!(sd[0]["labels"]["instance_name"], "smol");
    let prom = crate::util::prometheus::Prometheus::start("prometheus", daemon_port);
    wait_for(
        "Prometheus to scrape both jobs",
        Duration::from_secs(60),
        || {
            let ours = prom.result("llamactl_instance_memory_bytes{instance_name=\"smol\"}");
            let theirs = prom.result(
                "llamacpp:prompt_tokens_total{instance_name=\"smol\",backend_type=\"llama_cpp\"}",
            );
            (!ours.is_empty() && !theirs.is_empty()).then_some(())
        },
    );
}
