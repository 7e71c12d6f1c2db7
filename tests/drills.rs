//! Reliability drills under the real systemd: the daemon killed with SIGKILL at random moments
//! while instances start, stop and serve; the D-Bus daemon stopped under load; the state
//! directory on a tiny full tmpfs; backends that never answer or answer 1xx for ever; thousands
//! of idle and slowloris connections. Each is bounded in time; the README's "Reliability"
//! section states what they show. `LLAMACTL_DRILL_KILLS` (50) and `LLAMACTL_DRILL_BUS_SECS`
//! (30) scale the first two.

use crate::util::sandbox::{daemon_with, DaemonUnit, EXCLUSIVE};
use crate::util::{api, fake_backend, get, http, wait_for, Reply};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A command instance running the fake backend with `args`.
fn fake(args: &[&str], extra: Value) -> Value {
    let fake = fake_backend().display().to_string();
    let mut argv = vec![fake, "--port".into(), "{port}".into()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let mut v = json!({"backend_type": "command", "auto_restart": false,
        "backend_options": {"command": argv}});
    for (k, x) in extra.as_object().into_iter().flatten() {
        v[k] = x.clone();
    }
    v
}

/// An API call that may fail (the daemon may be down): `None` then.
fn try_api(method: &str, port: u16, path: &str, body: Option<&Value>) -> Option<Reply> {
    let b = body.map(|b| b.to_string()).unwrap_or_default();
    let headers: &[(&str, &str)] = if b.is_empty() {
        &[]
    } else {
        &[("Content-Type", "application/json")]
    };
    http(method, port, path, headers, b.as_bytes()).ok()
}

fn chat(port: u16, model: &str) -> std::io::Result<Reply> {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    http(
        "POST",
        port,
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn instances(port: u16) -> Vec<Value> {
    get(port, "/api/v1/instances")
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn unit_active(d: &DaemonUnit, name: &str) -> String {
    d.sb.ok(&[
        "systemctl",
        "show",
        "-p",
        "ActiveState",
        "--value",
        &format!("llamactl-{name}.service"),
    ])
    .trim()
    .to_string()
}

/// How long a proxied request took, and its status or the client's error.
type Outcome = (Duration, Result<u16, String>);

/// A small deterministic generator (xorshift): the moments of the kills, printed with the seed
/// so a failing run can be repeated.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn kill_9_at_random_moments_under_load_loses_nothing() {
    unit_test!();
    let kills = env_or("LLAMACTL_DRILL_KILLS", 50);
    let d = daemon_with(
        "drill-kill9",
        "request_timeout = \"10s\"\n",
        "",
        "RestartSec=100ms\n[Unit]\nStartLimitIntervalSec=0\n",
    );
    let port = d.port;
    for (name, extra) in [
        ("k9-steady", json!({"on_demand_start": true})),
        ("k9-toggled", json!({})),
    ] {
        let r = api(
            "POST",
            port,
            &format!("/api/v1/instances/{name}"),
            Some(fake(&["--model", name], extra)),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    assert_eq!(
        api("POST", port, "/api/v1/instances/k9-steady/start", None).status,
        200
    );
    let stop = Arc::new(AtomicBool::new(false));
    // (how long, how it ended) of every proxied request.
    let requests: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let mut load = Vec::new();
    for worker in 0..3 {
        let (stop, requests) = (stop.clone(), requests.clone());
        load.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r = chat(port, "k9-steady")
                    .map(|r| r.status)
                    .map_err(|e| format!("{:?}: {e}", e.kind()));
                let failed = r.is_err();
                requests.lock().unwrap().push((t0.elapsed(), r));
                if failed {
                    std::thread::sleep(Duration::from_millis(20 + worker * 7));
                }
            }
        }));
    }
    {
        let stop = stop.clone();
        load.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for verb in ["start", "stop"] {
                    let _ = try_api(
                        "POST",
                        port,
                        &format!("/api/v1/instances/k9-toggled/{verb}"),
                        None,
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }));
    }
    {
        let stop = stop.clone();
        load.push(std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("k9-churn{}", i % 3);
                i += 1;
                let path = format!("/api/v1/instances/{name}");
                let _ = try_api("POST", port, &path, Some(&fake(&[], json!({}))));
                let _ = try_api("POST", port, &format!("{path}/start"), None);
                let _ = try_api("DELETE", port, &path, None);
            }
        }));
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("kill drill: {kills} kills, seed {seed}");
    let mut rng = Rng(seed);
    let mut killed = 0;
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(50 + rng.below(1000)));
        let out = d.sb.run(&[
            "systemctl",
            "kill",
            "--kill-whom=main",
            "--signal=SIGKILL",
            &d.unit,
        ]);
        if out.status.success() {
            killed += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().expect("load thread");
    }
    d.wait_active();
    wait_for("the daemon answering", Duration::from_secs(30), || {
        try_api("GET", port, "/api/health/live", None).filter(|r| r.status == 200)
    });
    let restarts: u64 = d.prop("NRestarts").parse().unwrap_or(0);
    assert!(
        killed >= kills / 2 && restarts >= killed,
        "{killed} kills landed, {restarts} restarts"
    );

    // No spec lost or corrupted: every file parses, and the daemon lists exactly those.
    let dir = d.state_path().join("instances");
    let mut on_disk = Vec::new();
    for e in std::fs::read_dir(&dir).expect("instances dir").flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        assert!(!file.starts_with('.'), "a temp file is left: {file}");
        let text = std::fs::read_to_string(e.path()).expect("read spec");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{file} is corrupt ({err}): {text}"));
        on_disk.push(v["name"].as_str().expect("name").to_string());
    }
    on_disk.sort();
    let health = get(port, "/api/system/health").json();
    assert_eq!(
        health["instances"]["corrupt_specs"]
            .as_array()
            .map_or(0, |a| a.len()),
        0,
        "{health}"
    );
    for name in ["k9-steady", "k9-toggled"] {
        assert!(
            on_disk.iter().any(|n| n == name),
            "{name} lost: {on_disk:?}"
        );
    }
    // Every instance ends up as its desired state says, and every unit has its instance.
    wait_for(
        "units matching desired states",
        Duration::from_secs(60),
        || {
            let list = instances(port);
            let listed: Vec<String> = list
                .iter()
                .map(|i| i["name"].as_str().unwrap_or("").to_string())
                .collect();
            let mut sorted = listed.clone();
            sorted.sort();
            assert_eq!(sorted, on_disk, "the daemon lists what is on disk");
            let instances_ok = list.iter().all(|i| {
                let name = i["name"].as_str().unwrap_or("");
                let unit = unit_active(&d, name);
                match i["desired_state"].as_str() {
                    Some("running") => i["state"] == "ready" && unit == "active",
                    _ => i["state"] == "stopped" && unit != "active" && unit != "activating",
                }
            });
            let units = d.sb.ok(&[
                "systemctl",
                "list-units",
                "--plain",
                "--no-legend",
                "--state=active,activating",
                "llamactl-k9-*",
            ]);
            let orphans: Vec<&str> = units
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|u| {
                    let name = u
                        .trim_start_matches("llamactl-")
                        .trim_end_matches(".service");
                    !listed.iter().any(|n| n == name)
                })
                .collect();
            (instances_ok && orphans.is_empty()).then_some(())
        },
    );
    // No client request hung past its deadline (the client gives up at 20 s), and traffic did
    // get through between the kills.
    let requests = requests.lock().unwrap();
    let served = requests.iter().filter(|(_, r)| *r == Ok(200)).count();
    let slowest = requests.iter().map(|(t, _)| *t).max().unwrap_or_default();
    eprintln!(
        "kill drill: {} requests, {served} served, slowest {slowest:?}, {killed} kills, {restarts} restarts",
        requests.len()
    );
    assert!(served > 0, "no request was served");
    assert!(
        slowest < Duration::from_secs(15),
        "a request hung for {slowest:?}"
    );
    for name in on_disk {
        let _ = try_api("DELETE", port, &format!("/api/v1/instances/{name}"), None);
    }
}

#[test]
fn bus_stopped_under_load_health_reports_it_and_service_resumes() {
    // Stopping the bus disturbs every daemon in the sandbox: this drill runs alone.
    let _alone = EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner());
    let secs = env_or("LLAMACTL_DRILL_BUS_SECS", 30);
    let d = daemon_with(
        "drill-bus",
        "",
        "[systemd]\nreconnect_max_backoff = \"2s\"\n",
        "",
    );
    let port = d.port;
    let r = api(
        "POST",
        port,
        "/api/v1/instances/dr-bus",
        Some(fake(&["--model", "dr-bus"], json!({}))),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        api("POST", port, "/api/v1/instances/dr-bus/start", None).status,
        200
    );
    wait_for("dr-bus ready", Duration::from_secs(30), || {
        (get(port, "/api/v1/instances/dr-bus").json()["state"] == "ready").then_some(())
    });
    d.sb.ok(&["systemctl", "stop", "dbus.socket", "dbus.service"]);
    let down = Instant::now();
    let (mut saw_unready, mut scrapes, mut served) = (false, 0, 0);
    while down.elapsed() < Duration::from_secs(secs) {
        let h = get(port, "/api/health");
        if h.status == 503 && h.body.contains("systemd") {
            saw_unready = true;
        }
        assert_eq!(get(port, "/api/health/live").status, 200);
        let m = get(port, "/metrics");
        assert_eq!(m.status, 200);
        assert!(
            m.body.contains("instance_name=\"dr-bus\""),
            "the instance's series are kept while the bus is down"
        );
        scrapes += 1;
        let c = chat(port, "dr-bus").expect("proxied request");
        assert_eq!(c.status, 200, "{}", c.body);
        served += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(saw_unready, "readiness never said the manager is gone");
    // An operation needs the manager: refused clearly, not hung.
    let r = api("POST", port, "/api/v1/instances/dr-bus/stop", None);
    assert_eq!(r.status, 503, "{}", r.body);
    d.sb.ok(&["systemctl", "start", "dbus.socket", "dbus.service"]);
    wait_for("readiness back", Duration::from_secs(30), || {
        (get(port, "/api/health").status == 200).then_some(())
    });
    eprintln!("bus drill: {secs} s down, {scrapes} scrapes, {served} proxied requests");
    // Resumed: operations work again.
    assert_eq!(
        api("POST", port, "/api/v1/instances/dr-bus/stop", None).status,
        200
    );
    assert_eq!(
        api("DELETE", port, "/api/v1/instances/dr-bus", None).status,
        204
    );
}

#[test]
fn a_full_state_directory_refuses_changes_and_keeps_every_spec() {
    unit_test!();
    let port = crate::util::free_port();
    let (lo, hi) = (19800, 19899);
    let d = DaemonUnit::install(
        "drill-full",
        port,
        &format!("[instances]\nallowed_backends = [\"command\"]\nport_range = [{lo}, {hi}]\nhealth_check_interval = \"500ms\"\n"),
        "",
    );
    let state = d.state_dir.clone();
    d.sb.ok(&["mkdir", "-p", &state]);
    d.sb.ok(&["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", &state]);
    d.start();
    for name in ["dr-full-a", "dr-full-b"] {
        let r = api(
            "POST",
            port,
            &format!("/api/v1/instances/{name}"),
            Some(fake(&[], json!({}))),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    assert_eq!(
        api("POST", port, "/api/v1/instances/dr-full-a/start", None).status,
        200
    );
    let dir = d.state_path().join("instances");
    let read = |n: &str| std::fs::read(dir.join(format!("{n}.json"))).expect("spec");
    let before = (read("dr-full-a"), read("dr-full-b"));
    // Fill it up.
    let _ =
        d.sb.run(&["dd", "if=/dev/zero", &format!("of={state}/filler"), "bs=4k"]);
    let r = api(
        "POST",
        port,
        "/api/v1/instances/dr-full-c",
        Some(fake(&[], json!({}))),
    );
    assert_eq!(r.status, 507, "{}", r.body);
    assert!(r.body.contains("No space left on device"), "{}", r.body);
    assert!(r.body.contains("nothing was changed"), "{}", r.body);
    // A change to an existing instance is refused the same way and changes nothing.
    let r = api("POST", port, "/api/v1/instances/dr-full-a/stop", None);
    assert_eq!(r.status, 507, "{}", r.body);
    assert!(r.body.contains("No space left on device"), "{}", r.body);
    let a = get(port, "/api/v1/instances/dr-full-a").json();
    assert_eq!(a["desired_state"], "running", "{a}");
    assert_eq!(unit_active(&d, "dr-full-a"), "active");
    assert_eq!((read("dr-full-a"), read("dr-full-b")), before);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "only the two specs: {left:?}");
    assert_eq!(instances(port).len(), 2);
    // Room again: changes work.
    d.sb.ok(&["rm", "-f", &format!("{state}/filler")]);
    let r = api(
        "POST",
        port,
        "/api/v1/instances/dr-full-c",
        Some(fake(&[], json!({}))),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    for name in ["dr-full-a", "dr-full-b", "dr-full-c"] {
        assert_eq!(
            api("DELETE", port, &format!("/api/v1/instances/{name}"), None).status,
            204
        );
    }
    let _ = d.systemctl("stop");
    let _ = d.sb.run(&["umount", &state]);
}

#[test]
fn hung_stalled_and_endless_1xx_backends_are_cut_off_and_idle_stop_still_works() {
    unit_test!();
    let d = daemon_with(
        "drill-backends",
        "",
        "[proxy]\nresponse_header_timeout = \"2s\"\nbackend_idle_timeout = \"2s\"\nidle_check_interval = \"1s\"\n",
        "",
    );
    let port = d.port;
    for (name, how) in [
        ("dr-hang", "hang"),
        ("dr-interim", "interim"),
        ("dr-stall", "stall"),
    ] {
        let r = api(
            "POST",
            port,
            &format!("/api/v1/instances/{name}"),
            Some(fake(
                &["--misbehave", how],
                json!({"on_demand_start": true, "idle_timeout": 0.05}),
            )),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let name = name.to_string();
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let r = chat(port, &name);
                    (t0.elapsed(), r)
                })
            })
            .collect();
        for w in workers {
            let (took, r) = w.join().expect("request thread");
            if how == "stall" {
                // The head and one event went out; then the response is cut short.
                match r {
                    Ok(r) => assert!(!r.body.contains("[DONE]"), "{}", r.body),
                    Err(e) => assert!(e.kind() != std::io::ErrorKind::WouldBlock, "{e}"),
                }
            } else {
                let r = r.expect("an answer");
                assert_eq!(r.status, 504, "{name}: {}", r.body);
                assert!(r.body.contains("\"error\""), "{}", r.body);
            }
            // The head deadline plus the on-demand start, not the client's 20 s.
            assert!(took < Duration::from_secs(15), "{name}: {took:?}");
        }
        // Nothing is left in flight: the idle timeout (3 s) stops the instance.
        wait_for(
            &format!("{name} stopped for idleness"),
            Duration::from_secs(30),
            || {
                (get(port, &format!("/api/v1/instances/{name}")).json()["state"] == "stopped")
                    .then_some(())
            },
        );
        assert_eq!(
            api("DELETE", port, &format!("/api/v1/instances/{name}"), None).status,
            204
        );
    }
}

/// Raises this process's open-file limit to its hard limit (2 200 sockets are needed; a
/// fresh machine's soft limit may be 1 024).
fn more_files() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

#[test]
fn health_answers_quickly_beside_2000_idle_and_200_slowloris_connections() {
    unit_test!();
    more_files();
    // Rate limits off: a thousand requests from one address are the point here, not abuse.
    let d = daemon_with(
        "drill-conns",
        "header_timeout = \"60s\"\n",
        "[rate_limit]\nenabled = false\n",
        "",
    );
    let port = d.port;
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    };
    let mut held = Vec::new();
    // 1 000 connected and silent, 1 000 kept alive after a request.
    for i in 0..2000 {
        let mut s = connect();
        if i % 2 == 1 {
            s.write_all(b"GET /api/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .expect("write");
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).expect("read");
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 200"),
                "{i}: {}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
        held.push(s);
    }
    for _ in 0..200 {
        let mut s = connect();
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .expect("write");
        held.push(s);
    }
    let mut took: Vec<Duration> = (0..21)
        .map(|_| {
            let t0 = Instant::now();
            let r = http("GET", port, "/api/health/live", &[], b"").expect("health");
            assert_eq!(r.status, 200);
            t0.elapsed()
        })
        .collect();
    took.sort();
    let m = get(port, "/metrics").body;
    let open = crate::util::sample(&m, "llamactl_http_connections").unwrap_or(0.0);
    eprintln!(
        "connections drill: {open} open, health median {:?}, max {:?}",
        took[10], took[20]
    );
    assert!(open >= 2200.0, "{open}");
    assert!(took[10] < Duration::from_millis(100), "{took:?}");
    drop(held);
}
