//! Per-instance resource metrics against real units: the numbers in /metrics are the cgroup's.

use crate::util::sandbox::DaemonUnit;
use crate::util::{api, fake_backend, get, promtool_check, sample, wait_for};
use serde_json::{json, Value};
use std::time::Duration;

fn daemon(test: &str) -> DaemonUnit {
    crate::util::sandbox::daemon(
        test,
        "[monitoring]\ncollection_interval = \"500ms\"\nmetrics = [\"instance_stats\", \"api_performance\", \"system_resources\", \"gpu\"]\n",
        "",
    )
}

fn command(argv: &[&str], extra: Value) -> Value {
    let mut v = json!({"backend_type": "command", "backend_options": {"command": argv}, "auto_restart": false});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn create_start(d: &DaemonUnit, name: &str, spec: Value) {
    let r = api(
        "POST",
        d.port,
        &format!("/api/v1/instances/{name}"),
        Some(spec),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = api(
        "POST",
        d.port,
        &format!("/api/v1/instances/{name}/start"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A file of the instance's cgroup: `controller` names the v1 hierarchy (ignored on pure v2,
/// where there is one).
fn cgroup_text(d: &DaemonUnit, controller: &str, name: &str, file: &str) -> String {
    let dir = if pure_v2(d) {
        String::new()
    } else {
        format!("{controller}/")
    };
    let p = d.sb.root().join(format!(
        "sys/fs/cgroup/{dir}llamactl.slice/llamactl-{name}.service/{file}"
    ));
    std::fs::read_to_string(&p).unwrap_or_else(|e| {
        // What the manager's cgroup tree looks like, to tell a controller that is not enabled
        // from a unit that is gone.
        let cg = d.sb.root().join("sys/fs/cgroup");
        let read = |rel: &str| {
            std::fs::read_to_string(cg.join(rel))
                .map(|t| t.trim().replace('\n', " "))
                .unwrap_or_else(|e| format!("({e})"))
        };
        let mut files: Vec<String> = std::fs::read_dir(p.parent().unwrap_or(&cg))
            .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        files.sort();
        panic!(
            "{}: {e}\nroot cgroup.controllers: {}\nroot cgroup.subtree_control: {}\nroot cgroup.procs: {}\nllamactl.slice cgroup.controllers: {}\nllamactl.slice cgroup.subtree_control: {}\nthe unit's directory: {}",
            p.display(),
            read("cgroup.controllers"),
            read("cgroup.subtree_control"),
            read("cgroup.procs"),
            read("llamactl.slice/cgroup.controllers"),
            read("llamactl.slice/cgroup.subtree_control"),
            files.join(" ")
        )
    })
}

/// Whether the manager the tests run under has the unified hierarchy only (a pure v2 host).
fn pure_v2(d: &DaemonUnit) -> bool {
    d.sb.root()
        .join("sys/fs/cgroup/cgroup.controllers")
        .exists()
}

/// The instance's memory (bytes) as its cgroup says: `memory.current` on v2,
/// `memory.usage_in_bytes` on v1.
fn unit_memory(d: &DaemonUnit, name: &str) -> u64 {
    let file = if pure_v2(d) {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    };
    cgroup_text(d, "memory", name, file).trim().parse().unwrap()
}

/// The instance's CPU time (seconds): `cpu.stat` `usage_usec` on v2, `cpuacct.usage` on v1.
fn unit_cpu_seconds(d: &DaemonUnit, name: &str) -> f64 {
    if pure_v2(d) {
        let stat = cgroup_text(d, "cpu", name, "cpu.stat");
        let usec: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .unwrap_or_else(|| panic!("no usage_usec in {stat}"))
            .trim()
            .parse()
            .unwrap();
        usec as f64 / 1e6
    } else {
        let ns: u64 = cgroup_text(d, "cpuacct", name, "cpuacct.usage")
            .trim()
            .parse()
            .unwrap();
        ns as f64 / 1e9
    }
}

const HOG: &str = "b = bytearray(64 << 20)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\nwhile True:\n    pass\n";

#[test]
fn memory_and_cpu_match_the_cgroup_files() {
    unit_test!();
    let d = daemon("res-hog");
    create_start(
        &d,
        "hog",
        command(&["/usr/bin/python3", "-c", HOG], json!({})),
    );
    // Wait until the 64 MiB are touched.
    wait_for("64 MiB allocated", Duration::from_secs(30), || {
        (unit_memory(&d, "hog") >= 64 << 20).then_some(())
    });
    let _ = get(d.port, "/metrics");
    std::thread::sleep(Duration::from_secs(2));
    let m = get(d.port, "/metrics").body;
    let mem_file = unit_memory(&d, "hog") as f64;
    let cpu_file = unit_cpu_seconds(&d, "hog");
    let mem =
        sample(&m, "llamactl_instance_memory_bytes{instance_name=\"hog\"}").expect("memory series");
    let cpu = sample(
        &m,
        "llamactl_instance_cpu_seconds_total{instance_name=\"hog\"}",
    )
    .expect("cpu series");
    let pct =
        sample(&m, "llamactl_instance_cpu_percent{instance_name=\"hog\"}").expect("cpu percent");
    assert!(mem >= (64u64 << 20) as f64, "{mem}");
    assert!(
        (mem - mem_file).abs() / mem_file < 0.05,
        "metric {mem} vs file {mem_file}"
    );
    assert!(
        cpu > 0.5 && cpu <= cpu_file && cpu_file - cpu < 1.0,
        "metric {cpu} s vs file {cpu_file} s"
    );
    // A busy loop: about one CPU (less when the machine is loaded by other tests).
    assert!(pct > 25.0 && pct < 110.0, "cpu percent {pct}");
    let host = sample(&m, "llamactl_system_memory_total_bytes").unwrap();
    let mpct = sample(
        &m,
        "llamactl_instance_memory_percent{instance_name=\"hog\"}",
    )
    .unwrap();
    assert!((mpct - mem / host * 100.0).abs() < 0.5, "{mpct}");
    assert!(sample(&m, "llamactl_instance_tasks{instance_name=\"hog\"}").unwrap() >= 1.0);
    assert!(m.contains("llamactl_system_cpu_percent "), "{m}");
    // No NVIDIA driver here: no GPU series, and no error.
    assert!(!m.contains("llamactl_gpu_"), "{m}");
    promtool_check(&m);
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/hog", None).status,
        204
    );
}

#[test]
fn memory_max_overrun_counts_an_oom_kill() {
    unit_test!();
    let d = daemon("res-oom");
    // The shell survives its child's OOM kill. On a hybrid host the unit keeps running (and its
    // cgroup with the counter); on a pure v2 host systemd stops the unit (OOMPolicy=stop) and
    // the count comes from its Result "oom-kill", so the test sees the limit first.
    let script = "sleep 3; /usr/bin/python3 -c 'b = bytearray(256 << 20); b[::4096] = bytes(len(b) // 4096)'; exec sleep 600";
    create_start(
        &d,
        "oomy",
        command(&["/bin/sh", "-c", script], json!({"memory_max": "48M"})),
    );
    let limit = "llamactl_instance_memory_limit_bytes{instance_name=\"oomy\"}";
    wait_for(
        "the memory limit in /metrics",
        Duration::from_secs(3),
        || sample(&get(d.port, "/metrics").body, limit),
    );
    assert_eq!(
        sample(&get(d.port, "/metrics").body, limit),
        Some((48u64 << 20) as f64)
    );
    wait_for("an OOM kill in /metrics", Duration::from_secs(60), || {
        let m = get(d.port, "/metrics").body;
        sample(
            &m,
            "llamactl_instance_oom_kills_total{instance_name=\"oomy\"}",
        )
        .filter(|v| *v >= 1.0)
    });
    let view = || -> Value {
        serde_json::from_str(&api("GET", d.port, "/api/v1/instances/oomy", None).body)
            .expect("instance JSON")
    };
    if pure_v2(&d) {
        wait_for(
            "the unit failed with oom-kill",
            Duration::from_secs(20),
            || {
                let i = view();
                (i["status"] == "failed" && i["result"] == "oom-kill").then_some(())
            },
        );
        // The cgroup is gone; the count stays.
        assert_eq!(
            sample(
                &get(d.port, "/metrics").body,
                "llamactl_instance_oom_kills_total{instance_name=\"oomy\"}"
            ),
            Some(1.0)
        );
    } else {
        let i = view();
        assert_eq!(i["status"], "running", "{i}");
    }
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/oomy", None).status,
        204
    );
}

#[test]
fn a_scrape_with_instances_in_every_state_passes_promtool() {
    unit_test!();
    let d = daemon("res-states");
    let fake = fake_backend().display().to_string();
    create_start(
        &d,
        "s-ready",
        command(
            &[&fake, "--port", "{port}"],
            json!({"backend_options": {"command": [&fake, "--port", "{port}"], "metrics_path": "/metrics"}}),
        ),
    );
    create_start(
        &d,
        "s-loading",
        command(
            &[&fake, "--port", "{port}", "--ready-after", "600000"],
            json!({}),
        ),
    );
    // Not /bin/false: a command that exits at once can end before systemd confirms the exec,
    // and then the start job itself fails (a 500), which is a different state to test. 3 s,
    // not less: in the TCG guest of tools/vm-test systemd can take longer than 300 ms to
    // handle the exec, and sees the exit first.
    create_start(
        &d,
        "s-failed",
        command(
            &[&fake, "--port", "{port}", "--fail-after", "3000"],
            json!({"auto_restart": false}),
        ),
    );
    create_start(
        &d,
        "s-restarting",
        command(
            &[&fake, "--port", "{port}", "--fail-after", "3000"],
            json!({"auto_restart": true, "max_restarts": 5, "restart_delay": 120}),
        ),
    );
    assert_eq!(
        api(
            "POST",
            d.port,
            "/api/v1/instances/s-stopped",
            Some(command(&["/bin/true"], json!({})))
        )
        .status,
        201
    );
    let want = [
        ("s-ready", "ready"),
        ("s-loading", "loading"),
        ("s-failed", "failed"),
        ("s-restarting", "restarting"),
        ("s-stopped", "stopped"),
    ];
    for (name, state) in want {
        wait_for(&format!("{name} {state}"), Duration::from_secs(30), || {
            (get(d.port, &format!("/api/v1/instances/{name}")).json()["state"] == state)
                .then_some(())
        });
    }
    let m = get(d.port, "/metrics").body;
    promtool_check(&m);
    assert_eq!(sample(&m, "llamactl_instances_total"), Some(5.0));
    assert_eq!(
        sample(&m, "llamactl_instances_running"),
        Some(3.0),
        "ready, loading and restarting"
    );
    for (name, state) in want {
        assert_eq!(
            sample(
                &m,
                &format!("llamactl_instance_state{{instance_name=\"{name}\",state=\"{state}\"}}")
            ),
            Some(1.0),
            "{name}"
        );
        let up = if state == "ready" { 1.0 } else { 0.0 };
        assert_eq!(
            sample(
                &m,
                &format!("llamactl_instance_up{{instance_name=\"{name}\"}}")
            ),
            Some(up),
            "{name}"
        );
    }
    assert!(
        sample(
            &m,
            "llamactl_instance_start_time_seconds{instance_name=\"s-ready\"}"
        )
        .unwrap()
            > 1.7e9
    );
    assert_eq!(
        sample(
            &m,
            "llamactl_instance_memory_bytes{instance_name=\"s-stopped\"}"
        ),
        None,
        "absent, not zero"
    );

    // Service discovery lists running instances whose backend serves metrics.
    let sd = get(d.port, "/api/v1/sd/prometheus").json();
    let groups = sd.as_array().unwrap();
    assert_eq!(groups.len(), 1, "{sd}");
    let port = get(d.port, "/api/v1/instances/s-ready").json()["port"].clone();
    assert_eq!(groups[0]["targets"], json!([format!("127.0.0.1:{port}")]));
    assert_eq!(
        groups[0]["labels"],
        json!({"instance_name": "s-ready", "backend_type": "command", "__metrics_path__": "/metrics"})
    );

    // Groups are switched by [monitoring] metrics, on reload.
    d.rewrite_config(
        "[monitoring]\ncollection_interval = \"500ms\"\nmetrics = [\"system_resources\"]\n",
    );
    d.sb.ok(&["systemctl", "reload", &d.unit]);
    wait_for("instance metrics off", Duration::from_secs(10), || {
        let m = get(d.port, "/metrics").body;
        (!m.contains("llamactl_instance_")
            && !m.contains("llamactl_api_requests_total")
            && m.contains("llamactl_system_memory_total_bytes"))
        .then_some(())
    });
    for (name, _) in want {
        assert_eq!(
            api("DELETE", d.port, &format!("/api/v1/instances/{name}"), None).status,
            204
        );
    }
}
