//! The shipped Grafana dashboard (`packaging/grafana/llamactl-dashboard.json`) proven against a
//! real Prometheus: it scrapes a daemon whose instances are in several states and serve proxied
//! traffic, and every panel target's expression must evaluate without error and return data.
//!
//! Grafana's side is done here as Grafana does it: the template variables' `label_values()`
//! queries are run against Prometheus, and their values substituted as Grafana formats a
//! multi-value selection for a regex matcher (`(a|b)`, regex characters escaped), or the
//! variable's `allValue` for "All". `$__rate_interval` becomes `1m`: Grafana's floor for it is
//! four scrape intervals, and the shipped Prometheus config scrapes every 15 s (the test's
//! Prometheus scrapes every second, so a minute holds the whole run's samples).

use crate::util::prometheus::{encode, Prometheus};
use crate::util::sandbox::{daemon, DaemonUnit};
use crate::util::{api, fake_backend, get, http, llama_backend, repo, wait_for};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DASHBOARD: &str = "packaging/grafana/llamactl-dashboard.json";

/// Grafana's built-in interval variables, as this test substitutes them.
const BUILTINS: &[(&str, &str)] = &[
    ("$__rate_interval", "1m"),
    ("$__interval", "15s"),
    ("$__range", "1h"),
];

/// One query of one panel.
struct Target {
    panel: String,
    expr: String,
}

/// Every target with an `expr`, in every panel, rows' collapsed panels included.
fn targets(panels: &[Value], out: &mut Vec<Target>) {
    for p in panels {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push(Target {
                    panel: title.to_string(),
                    expr: expr.to_string(),
                });
            }
        }
        targets(p["panels"].as_array().map_or(&[], |v| v), out);
    }
}

/// Series this host may not have, and whether it has them: an expression using one may
/// return no data when the host lacks it (it must still evaluate without an error).
struct Host {
    /// GPU series (`llamactl_gpu_*`, `llamactl_instance_gpu_*`) exist only where NVML finds
    /// a GPU: an NVIDIA driver is loaded.
    gpu: bool,
    /// `llamactl_instance_io_*` exist once the instance's cgroup counts block I/O per device.
    /// cgroup v2's io.stat does; v1's blkio.throttle.io_service_bytes (Linux 6.18, this
    /// project's CI host) only once a throttle limit has been set on the device in some
    /// cgroup: before, "Total 0" even after the direct read the test makes.
    block_io: bool,
}

impl Host {
    fn lacks(&self, expr: &str) -> bool {
        let gpu = expr.contains("llamactl_gpu_") || expr.contains("llamactl_instance_gpu_");
        (gpu && !self.gpu) || (expr.contains("llamactl_instance_io_") && !self.block_io)
    }
}

/// Whether the cgroup of instance `name` has counted any block I/O (the files llamactld reads:
/// `io.stat` on v2, `blkio.throttle.io_service_bytes` on v1).
fn counts_block_io(d: &DaemonUnit, name: &str) -> bool {
    let cg = d.sb.root().join("sys/fs/cgroup");
    let unit = format!("llamactl.slice/llamactl-{name}.service");
    [
        cg.join(&unit).join("io.stat"),
        cg.join("unified").join(&unit).join("io.stat"),
        cg.join("blkio")
            .join(&unit)
            .join("blkio.throttle.io_service_bytes"),
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .any(|t| {
        t.contains("rbytes=")
            || t.lines()
                .any(|l| l.split_whitespace().nth(1).is_some_and(|op| op == "Read"))
    })
}

/// A value as Grafana puts it into a regex matcher: regex characters escaped, and the escape
/// doubled for PromQL's string literal.
fn regex_escape(v: &str) -> String {
    let mut out = String::new();
    for c in v.chars() {
        if "\\^$*+?.()|[]{}".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

/// Replaces `$name`, `${name}` and `[[name]]` of every variable (longest names first, so
/// `$instance` never eats `$instance_name`), and the built-in intervals.
fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut all: Vec<(String, String)> = BUILTINS
        .iter()
        .map(|(k, v)| (k.trim_start_matches('$').to_string(), v.to_string()))
        .chain(vars.iter().cloned())
        .collect();
    all.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    let mut s = expr.to_string();
    for (k, v) in &all {
        s = s
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("[[{k}]]"), v)
            .replace(&format!("${k}"), v);
    }
    s
}

/// The template variables' values, each as the text substituted for it, in two selections:
/// "All" (the variable's `allValue`, or every value) and every value picked one by one.
/// Runs each `label_values(selector, label)` query on Prometheus, as Grafana does.
fn variables(dash: &Value, prom: &Prometheus) -> Result<[Vec<(String, String)>; 2], String> {
    let mut all: Vec<(String, String)> = Vec::new();
    let mut each: Vec<(String, String)> = Vec::new();
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default().to_string();
        match v["type"].as_str() {
            // Used in panels' datasource fields only, never in an expression.
            Some("datasource") => continue,
            Some("query") => {}
            other => return Err(format!("variable {name}: type {other:?} is not handled")),
        }
        let query = v["query"]
            .as_str()
            .or_else(|| v["query"]["query"].as_str())
            .unwrap_or_default();
        let (selector, label) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .ok_or_else(|| {
                format!("variable {name}: not label_values(selector, label): {query}")
            })?;
        let selector = substitute(selector.trim(), &all);
        let path = format!(
            "/api/v1/label/{}/values?match[]={}",
            label.trim(),
            encode(&selector)
        );
        let r = prom.get(&path);
        let values: Vec<String> = serde_json::from_str::<Value>(&r.body)
            .ok()
            .and_then(|j| j["data"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect();
        if values.is_empty() {
            return Err(format!(
                "variable {name}: {query} has no values ({selector}: HTTP {} {})",
                r.status, r.body
            ));
        }
        let every = format!(
            "({})",
            values
                .iter()
                .map(|x| regex_escape(x))
                .collect::<Vec<_>>()
                .join("|")
        );
        let as_all = match v["allValue"].as_str() {
            Some(a) if v["includeAll"] == true && !a.is_empty() => a.to_string(),
            _ => every.clone(),
        };
        all.push((name.clone(), as_all));
        each.push((name, every));
    }
    Ok([all, each])
}

/// Evaluates every target under both selections; returns the failures (panel, selection,
/// expression, why) and how many expressions were evaluated.
fn evaluate(dash: &Value, list: &[Target], prom: &Prometheus, host: &Host) -> (Vec<String>, usize) {
    let selections = match variables(dash, prom) {
        Ok(s) => s,
        Err(e) => return (vec![e], 0),
    };
    let mut failures = Vec::new();
    let mut evaluated = 0;
    for (which, vars) in ["All", "every value"].iter().zip(selections.iter()) {
        for t in list {
            let expr = substitute(&t.expr, vars);
            evaluated += 1;
            let why = if expr.contains('$') || expr.contains("[[") {
                Some("a variable was not substituted".to_string())
            } else {
                let j = prom.query(&expr);
                let samples = j["data"]["result"].as_array().cloned().unwrap_or_default();
                // An all-NaN answer (a quantile of no observations) draws nothing either.
                let data = samples.iter().any(|s| s["value"][1] != "NaN");
                if j["status"] != "success" {
                    Some(format!("error: {}", j["error"]))
                } else if !data && !host.lacks(&t.expr) {
                    Some(format!("no data: {}", j["data"]))
                } else {
                    None
                }
            };
            if let Some(why) = why {
                failures.push(format!("[{}] ({which}) {expr}\n    {why}", t.panel));
            }
        }
    }
    (failures, evaluated)
}

fn create(d: &DaemonUnit, name: &str, spec: Value, start: bool) {
    let r = api(
        "POST",
        d.port,
        &format!("/api/v1/instances/{name}"),
        Some(spec),
    );
    assert_eq!(r.status, 201, "{name}: {}", r.body);
    if start {
        let r = api(
            "POST",
            d.port,
            &format!("/api/v1/instances/{name}/start"),
            None,
        );
        assert_eq!(r.status, 200, "{name}: {}", r.body);
    }
}

fn chat(port: u16, model: &str, stream: bool) -> crate::util::Reply {
    let body = json!({"model": model, "stream": stream, "max_tokens": 4,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Say hi"}]})
    .to_string();
    http(
        "POST",
        port,
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap_or_else(|e| panic!("chat with {model}: {e}"))
}

#[test]
fn every_dashboard_panel_returns_data_from_a_real_prometheus() {
    unit_test!();
    let text = std::fs::read_to_string(repo().join(DASHBOARD)).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut list = Vec::new();
    targets(dash["panels"].as_array().map_or(&[], |v| v), &mut list);
    // Annotation queries are expressions too.
    for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = a["expr"].as_str() {
            list.push(Target {
                panel: format!("annotation {}", a["name"].as_str().unwrap_or_default()),
                expr: expr.to_string(),
            });
        }
    }
    // Every `"expr"` of the file is a target found above: a parse that misses panels fails.
    assert_eq!(
        list.len(),
        text.matches("\"expr\"").count(),
        "targets found"
    );
    assert!(
        list.len() > 40,
        "only {} targets in {DASHBOARD}",
        list.len()
    );

    let (server, model) = llama_backend();
    let d = daemon(
        "dash",
        &format!(
            "[backends.llama_cpp]\ncommand = \"{server}\"\n[monitoring]\ncollection_interval = \"500ms\"\nmetrics = [\"instance_stats\", \"api_performance\", \"system_resources\", \"gpu\"]\n"
        ),
        "",
    );
    let fake = fake_backend().display().to_string();
    // A real llama-server (its own llamacpp:* series, found through service discovery), started
    // on demand by the first proxied request, with a memory limit.
    create(
        &d,
        "dash-llama",
        json!({"backend_type": "llama_cpp", "on_demand_start": true, "memory_max": "2G",
            "backend_options": {"model": model, "ctx_size": 512, "threads": 1, "parallel": 1}}),
        false,
    );
    // The fake backend, after reading a few MB of the model file with O_DIRECT: its cgroup
    // then has block I/O to count (a process that never touched a block device has no
    // io.stat / blkio lines, and so no llamactl_instance_io_* series).
    let serve = format!(
        "dd if={model} of=/dev/null bs=1M count=4 iflag=direct status=none && exec {fake} --port {{port}} --first-token-delay 20 --chunk-delay 10"
    );
    create(
        &d,
        "dash-fake",
        json!({"backend_type": "command", "backend_options": {"command": ["/bin/sh", "-c", serve]}}),
        true,
    );
    create(
        &d,
        "dash-failed",
        json!({"backend_type": "command", "auto_restart": false,
            "backend_options": {"command": [&fake, "--port", "{port}", "--fail-after", "1000"]}}),
        true,
    );
    // Restarted by systemd every few seconds: the restart counter and annotation have data.
    create(
        &d,
        "dash-restarts",
        json!({"backend_type": "command", "auto_restart": true, "max_restarts": 20, "restart_delay": 1,
            "backend_options": {"command": [&fake, "--port", "{port}", "--fail-after", "1500"]}}),
        true,
    );
    create(
        &d,
        "dash-stopped",
        json!({"backend_type": "command", "on_demand_start": false,
            "backend_options": {"command": ["/bin/true"]}}),
        false,
    );

    let prom = Prometheus::start("dash-prometheus", d.port);
    // A first scrape before the traffic: the proxy's series appear with their first request,
    // and a rate needs a sample from before it.
    wait_for("Prometheus's first scrape", Duration::from_secs(30), || {
        (!prom.result("llamactl_build_info").is_empty()).then_some(())
    });
    let r = chat(d.port, "dash-llama", false);
    assert_eq!(r.status, 200, "on-demand start: {}", r.body);

    // Traffic for the whole evaluation: JSON and SSE to both serving instances, a 404 and a 503.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let port = d.port;
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for (model, stream) in [
                    ("dash-llama", false),
                    ("dash-llama", true),
                    ("dash-fake", false),
                    ("dash-fake", true),
                ] {
                    let r = chat(port, model, stream);
                    if r.status != 200 {
                        errors.push(format!("{model} stream={stream}: {} {}", r.status, r.body));
                    }
                }
                assert_eq!(get(port, "/api/v1/instances/dash-missing").status, 404);
                // A 5xx: the proxy's 503 for an instance that is not running.
                let r = chat(port, "dash-stopped", false);
                if r.status != 503 {
                    errors.push(format!("dash-stopped: {} {}", r.status, r.body));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            errors
        })
    };
    wait_for("dash-failed to fail", Duration::from_secs(30), || {
        (get(d.port, "/api/v1/instances/dash-failed").json()["state"] == "failed").then_some(())
    });

    // Poll until every panel has data (rates need two samples after the traffic began; the
    // llama-server target needs discovering), then report what still has none.
    let host = Host {
        gpu: std::path::Path::new("/proc/driver/nvidia").exists(),
        block_io: counts_block_io(&d, "dash-fake"),
    };
    let start = Instant::now();
    let (failures, evaluated) = loop {
        let (failures, evaluated) = evaluate(&dash, &list, &prom, &host);
        if failures.is_empty() || start.elapsed() > Duration::from_secs(40) {
            break (failures, evaluated);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    stop.store(true, Ordering::Relaxed);
    let mut errors = traffic.join().expect("the traffic thread panicked");
    errors.sort();
    errors.dedup();
    assert!(errors.is_empty(), "proxied requests failed: {errors:#?}");
    assert!(
        failures.is_empty(),
        "{} of {evaluated} panel expressions failed (GPU: {}, block I/O counted: {}):\n{}",
        failures.len(),
        host.gpu,
        host.block_io,
        failures.join("\n")
    );
    assert_eq!(evaluated, 2 * list.len(), "every target, both selections");

    for name in [
        "dash-llama",
        "dash-fake",
        "dash-failed",
        "dash-restarts",
        "dash-stopped",
    ] {
        let r = api("DELETE", d.port, &format!("/api/v1/instances/{name}"), None);
        assert_eq!(r.status, 204, "{name}: {}", r.body);
    }
}
