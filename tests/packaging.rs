//! The packaging tree: Prometheus examples and alert rules (promtool), deb/rpm metadata.

use crate::util::{repo, run};
use std::process::Command;

#[test]
fn packaging_checks_pass() {
    let out = run(Command::new("bash")
        .arg("packaging/check.sh")
        .current_dir(repo()));
    assert!(
        out.status.success(),
        "packaging/check.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// packaging/kubernetes/llamactl.yaml: its probes are the monitoring guide's and reach the real
/// daemon's endpoints; its ConfigMap and container arguments are accepted by this llamactld; and
/// a pod that cannot reach a systemd manager is live but not ready (it cannot run instances).
#[test]
fn kubernetes_manifest_probes_and_config_fit_the_daemon() {
    use crate::util::{free_port, scratch, wait_for, write, LLAMACTLD};
    let out = run(Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(repo().join("packaging/kubernetes/llamactl.yaml")));
    assert!(
        out.status.success(),
        "python3 with PyYAML (Debian python3-yaml, tools/test installs it) could not read the \
         manifest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kind = |k: &str| {
        docs.as_array()
            .unwrap()
            .iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in the manifest"))
            .clone()
    };
    let config = kind("ConfigMap")["data"]["config.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let container = kind("DaemonSet")["spec"]["template"]["spec"]["containers"][0].clone();
    let probe = |p: &str| {
        let x = &container[p];
        (
            x["httpGet"]["path"].as_str().unwrap().to_string(),
            x["httpGet"]["port"].as_u64().unwrap(),
            x["initialDelaySeconds"].as_u64().unwrap(),
            x["periodSeconds"].as_u64().unwrap(),
        )
    };
    let (ready_path, ready_port, ..) = probe("readinessProbe");
    let (live_path, live_port, ..) = probe("livenessProbe");
    assert_eq!(
        probe("readinessProbe"),
        ("/api/health".into(), 8080, 30, 10)
    );
    assert_eq!(
        probe("livenessProbe"),
        ("/api/health/live".into(), 8080, 60, 30)
    );
    assert!(config.contains(&format!("port = {ready_port}\n")) && ready_port == live_port);

    // The config and the container's arguments, as this llamactld reads them.
    let dir = scratch("kubernetes");
    let f = dir.join("config.toml");
    write(&f, &config);
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .filter(|a| !a.starts_with("--config="))
        .collect();
    let out = run(Command::new(LLAMACTLD)
        .args(&args)
        .arg("--check-config")
        .arg("--config")
        .arg(&f));
    assert!(out.status.success(), "{out:?}");

    // The same config in a pod with no reachable bus (paths moved into the scratch directory).
    let port = free_port();
    let bus = "address = \"unix:path=/run/dbus/system_bus_socket\"";
    assert!(
        config.contains(bus),
        "the manifest's config names the node's bus"
    );
    let local = config
        .replace(&format!("port = {ready_port}"), &format!("port = {port}"))
        .replace(
            "/var/lib/llamactl",
            &dir.join("state").display().to_string(),
        )
        .replace("/run/llamactl", &dir.join("run").display().to_string())
        .replace(
            bus,
            "address = \"unix:path=/nonexistent/bus\"\nready_timeout = \"1s\"",
        );
    write(&f, &local);
    let _d = crate::plain_process::Daemon(
        Command::new(LLAMACTLD)
            .args(["--path.procfs=/proc", "--path.sysfs=/sys", "--config"])
            .arg(&f)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let probe_get = |path: &str| crate::util::http_raw("GET", port, path, &[], b"").ok();
    let live = wait_for(
        "the liveness probe",
        std::time::Duration::from_secs(10),
        || probe_get(&live_path),
    );
    assert_eq!(live.status, 200, "{}", live.body);
    let ready = wait_for(
        "the readiness probe",
        std::time::Duration::from_secs(10),
        || probe_get(&ready_path).filter(|r| r.status != 200 || !r.body.is_empty()),
    );
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.json()["failing"], serde_json::json!(["systemd"]));
}
