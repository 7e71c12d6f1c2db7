//! The debug port and continuous profiling against the real daemon under the private systemd:
//! Go's own `go tool pprof` (Debian's `golang-go`, installed by `tools/test`) reads the CPU
//! profile and finds llamactld's functions in it, and reads the heap profile; the task dump and
//! the runtime metrics; the port closed when pprof is off; Pyroscope pushes received by a local
//! HTTP endpoint (query, token, a body pprof reads), and an unreachable Pyroscope counted while
//! the daemon serves on.

use crate::util::sandbox::daemon;
use crate::util::{free_port, get, http_raw, read_request, sample, scratch, wait_for};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Go's `go` command; a missing one fails the test (tools/test installs `golang-go`).
fn go() -> PathBuf {
    for p in ["/usr/lib/go/bin/go", "/usr/bin/go", "/usr/local/go/bin/go"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("`go` not found: the profiling tests read profiles with `go tool pprof`; install Debian's golang-go (tools/test does)");
}

/// `go tool pprof ARGS`, with its cache and fetched-profile directory in `dir`; the output.
fn pprof(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(go())
        .args(["tool", "pprof"])
        .args(args)
        .env("HOME", dir)
        .env("PPROF_TMPDIR", dir)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .output()
        .expect("running go tool pprof");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Keeps the daemon busy (scrapes and health checks) until dropped.
struct Load(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = crate::util::http("GET", port, "/metrics", &[], b"");
                    }
                })
            })
            .collect();
        Load(stop, threads)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn go_pprof_reads_the_cpu_and_heap_profiles_and_the_dump_names_the_runtimes() {
    let _g = crate::util::sandbox::EXCLUSIVE.read();
    let dir = scratch("pprof-go");
    let pport = free_port();
    let d = daemon(
        "pprof-go",
        &format!("[debug]\npprof_enabled = true\npprof_port = {pport}\n"),
        "",
    );
    d.wait_log("serving pprof profiles on the debug port");

    // The seed's command, with a short profile: Go adds `seconds=` to a /profile URL.
    let load = Load::start(d.port);
    let url = format!("http://localhost:{pport}/debug/pprof/profile");
    let t = std::time::Instant::now();
    // `-timeout`: pprof's own is 1.5 x the seconds (+5 s for the head), and the test daemon is
    // a debug build symbolizing in-process while the rest of the suite loads the machine.
    let top = pprof(
        &dir,
        &["-top", "-cum", "-seconds", "3", "-timeout", "120", &url],
    );
    drop(load);
    eprintln!(
        "CPU profile of 3 s fetched and read in {:?}:\n{}",
        t.elapsed(),
        top.lines().take(25).collect::<Vec<_>>().join("\n")
    );
    assert!(top.contains("Type: cpu"), "{top}");
    assert!(
        top.lines().any(|l| l.contains("llamactl::")),
        "no llamactld function in the CPU profile:\n{top}"
    );

    // The heap profile parses (jemalloc's, activated by the debug port).
    let heap = pprof(
        &dir,
        &[
            "-top",
            &format!("http://127.0.0.1:{pport}/debug/pprof/heap"),
        ],
    );
    assert!(heap.contains("inuse_space"), "{heap}");
    eprintln!(
        "heap profile read after {:?}:\n{}",
        t.elapsed(),
        heap.lines().take(12).collect::<Vec<_>>().join("\n")
    );

    // The goroutine counterpart: text, every runtime and the long-lived tasks.
    let dump = http_raw("GET", pport, "/debug/pprof/goroutine", &[], b"").unwrap();
    assert_eq!(dump.status, 200, "{}", dump.body);
    for needle in [
        "runtime main (multi_thread): workers=2",
        "runtime http0 (current_thread): workers=1",
        "debug port on main",
        "proxy idle-connection sweep on http0",
        "llamactld-http0",
    ] {
        assert!(
            dump.body.contains(needle),
            "{needle:?} not in\n{}",
            dump.body
        );
    }

    // Bounds and one profile at a time.
    let bad = http_raw("GET", pport, "/debug/pprof/profile?seconds=301", &[], b"").unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);
    let slow = std::thread::spawn(move || {
        http_raw("GET", pport, "/debug/pprof/profile?seconds=2", &[], b"").unwrap()
    });
    std::thread::sleep(Duration::from_millis(500));
    let second = http_raw("GET", pport, "/debug/pprof/profile?seconds=1", &[], b"").unwrap();
    assert_eq!(second.status, 409, "{}", second.body);
    assert_eq!(slow.join().unwrap().status, 200);
    // A page on another origin reaching the port through DNS rebinding is refused.
    let rebound = http_raw(
        "GET",
        pport,
        "/debug/pprof/goroutine",
        &[("Host", "evil.example")],
        b"",
    )
    .unwrap();
    assert_eq!(rebound.status, 421);

    // Runtime metrics on /metrics, per runtime and worker.
    let m = get(d.port, "/metrics").body;
    assert_eq!(
        sample(&m, "llamactl_runtime_workers{runtime=\"main\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "llamactl_runtime_workers{runtime=\"http0\"}"),
        Some(1.0)
    );
    assert!(
        sample(
            &m,
            "llamactl_runtime_worker_busy_seconds_total{runtime=\"http0\",worker=\"0\"}"
        )
        .is_some_and(|v| v > 0.0),
        "{m}"
    );
    assert!(m.contains("llamactl_runtime_alive_tasks{runtime=\"main\"}"));
    assert!(m.contains("llamactl_runtime_global_queue_depth{runtime=\"main\"}"));
    crate::util::promtool_check(&m);
    assert_eq!(d.prop("ActiveState"), "active");
}

#[test]
fn with_pprof_off_the_port_is_closed() {
    let _g = crate::util::sandbox::EXCLUSIVE.read();
    let pport = free_port();
    let d = daemon("pprof-off", &format!("[debug]\npprof_port = {pport}\n"), "");
    assert_eq!(get(d.port, "/api/health/live").status, 200);
    let err = TcpStream::connect(("127.0.0.1", pport)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // The runtime metrics do not depend on the debug port.
    let m = get(d.port, "/metrics").body;
    assert!(
        m.contains("llamactl_runtime_workers{runtime=\"main\"} 2"),
        "{m}"
    );
    // The default config serves HTTP on one worker thread ([server] workers = 1), whatever
    // the number of CPUs.
    assert!(
        m.contains("llamactl_runtime_workers{runtime=\"http0\"} 1"),
        "{m}"
    );
    assert!(!m.contains("runtime=\"http1\""), "{m}");
    assert!(!m.contains("llamactl_profiling_uploads"), "{m}");
}

/// One received push: the request line's target, its headers and its body.
struct Push {
    target: String,
    headers: String,
    body: Vec<u8>,
}

/// A minimal HTTP endpoint standing in for Pyroscope: it answers 200 to everything and keeps
/// what it received.
fn fake_pyroscope() -> (u16, Arc<Mutex<Vec<Push>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let Some((head, body)) = read_request(&mut s) else {
                continue;
            };
            let target = head.split(' ').nth(1).unwrap_or_default().to_string();
            keep.lock().unwrap().push(Push {
                target,
                headers: head,
                body,
            });
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

fn query(target: &str) -> Vec<(String, String)> {
    let q = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn pyroscope_receives_cpu_profiles() {
    let _g = crate::util::sandbox::EXCLUSIVE.read();
    let dir = scratch("pyroscope-push");
    let (pyro, got) = fake_pyroscope();
    let d = daemon(
        "pyroscope-push",
        &format!("[profiling]\nenabled = true\n[profiling.pyroscope]\nserver_address = \"http://127.0.0.1:{pyro}\"\napplication_name = \"llamactl-it\"\nauth_token = \"pyro-s3cret\"\nupload_interval = \"1s\"\n"),
        "",
    );
    let load = Load::start(d.port);
    wait_for("two pushes", Duration::from_secs(30), || {
        (got.lock().unwrap().len() >= 2).then_some(())
    });
    drop(load);
    let pushes = got.lock().unwrap();
    let p = &pushes[0];
    assert!(p.target.starts_with("/ingest?"), "{}", p.target);
    let q = query(&p.target);
    let get_q = |k: &str| {
        q.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {k} in {}", p.target))
    };
    assert!(
        get_q("name").starts_with("llamactl-it.cpu%7Bhostname%3D"),
        "{}",
        p.target
    );
    assert_eq!(get_q("format"), "pprof");
    assert_eq!(get_q("sampleRate"), "99");
    assert_eq!(get_q("spyName"), "llamactl");
    let (from, until): (u64, u64) = (
        get_q("from").parse().unwrap(),
        get_q("until").parse().unwrap(),
    );
    assert!(from <= until && until - from <= 5, "{from}..{until}");
    assert!(
        p.headers.contains("authorization: Bearer pyro-s3cret")
            || p.headers.contains("Authorization: Bearer pyro-s3cret"),
        "{}",
        p.headers
    );
    // The body is a pprof profile Go's reader accepts.
    let file = dir.join("pushed.pb");
    std::fs::write(&file, &p.body).unwrap();
    let top = pprof(&dir, &["-top", file.to_str().unwrap()]);
    assert!(top.contains("Type: cpu"), "{top}");
    drop(pushes);
    let m = get(d.port, "/metrics").body;
    assert!(
        sample(&m, "llamactl_profiling_uploads_total{result=\"ok\"}").is_some_and(|v| v >= 2.0),
        "{m}"
    );
    assert!(
        !d.journal_text().contains("pyro-s3cret"),
        "the token reached the journal"
    );
}

#[test]
fn an_unreachable_pyroscope_is_counted_and_never_fatal() {
    let _g = crate::util::sandbox::EXCLUSIVE.read();
    let dead = free_port();
    let d = daemon(
        "pyroscope-dead",
        &format!("[profiling]\nenabled = true\n[profiling.pyroscope]\nserver_address = \"http://127.0.0.1:{dead}\"\nupload_interval = \"1s\"\n"),
        "",
    );
    let m = wait_for("three failed pushes", Duration::from_secs(30), || {
        let m = get(d.port, "/metrics").body;
        sample(&m, "llamactl_profiling_uploads_total{result=\"error\"}")
            .is_some_and(|v| v >= 3.0)
            .then_some(m)
    });
    assert_eq!(
        sample(&m, "llamactl_profiling_uploads_total{result=\"ok\"}"),
        Some(0.0)
    );
    assert_eq!(get(d.port, "/api/health/live").status, 200);
    assert_eq!(d.prop("ActiveState"), "active");
    assert_eq!(d.prop("NRestarts"), "0");
    // Logged once, then counted.
    let warnings = d
        .journal()
        .into_iter()
        .filter(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.contains("profile push to Pyroscope failed"))
        })
        .count();
    assert_eq!(warnings, 1);
}
