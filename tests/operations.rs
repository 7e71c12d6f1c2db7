//! Instance operations run to completion whatever happens to their request (`src/http/detach.rs`):
//! a client that leaves while its start waits behind a slow stop still gets the instance
//! started and the operation audited; a request that outlives `[server] request_timeout` is
//! answered 202 while the operation goes on. (Cancellation at every await point of every
//! operation, on an in-memory systemd, is `src/instance/tests.rs`.)

use crate::util::{api, wait_for, TEST_KEY};
use serde_json::{json, Value};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A backend that ignores SIGTERM: stopping it takes the instance's whole stop timeout.
fn stubborn() -> Value {
    json!({
        "backend_type": "command",
        "backend_options": {"command": ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done"]},
        "auto_restart": false,
    })
}

fn plain() -> Value {
    json!({
        "backend_type": "command",
        "backend_options": {"command": ["/bin/sh", "-c", "exec sleep 600"]},
        "auto_restart": false,
    })
}

fn status(d: &crate::util::sandbox::DaemonUnit, name: &str) -> Value {
    api("GET", d.port, &format!("/api/v1/instances/{name}"), None).json()
}

#[test]
fn an_operation_outlives_its_request_and_a_slow_one_answers_202() {
    unit_test!();
    let d = crate::util::sandbox::daemon_with(
        "ops-detach",
        "request_timeout = \"3s\"\n",
        "stop_timeout = \"6s\"\n",
        "",
    );
    for (name, spec) in [("slow", stubborn()), ("quick", plain())] {
        assert_eq!(
            api(
                "POST",
                d.port,
                &format!("/api/v1/instances/{name}"),
                Some(spec)
            )
            .status,
            201
        );
    }
    assert_eq!(
        api("POST", d.port, "/api/v1/instances/slow/start", None).status,
        200
    );
    // The stop of "slow" holds the operations for its 6 s stop timeout: the request is
    // answered 202 at about request_timeout, and the stop goes on.
    let stopper = std::thread::spawn({
        let port = d.port;
        move || {
            let t = Instant::now();
            let r = api("POST", port, "/api/v1/instances/slow/stop", None);
            (r.status, r.body, t.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    // A start of "quick" waits behind it; its client leaves after half a second.
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).expect("connect");
    write!(
        s,
        "POST /api/v1/instances/quick/start HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {TEST_KEY}\r\nContent-Length: 0\r\n\r\n",
        d.port
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(500));
    drop(s);
    let (code, body, took) = stopper.join().expect("stopper");
    assert_eq!(code, 202, "{body}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert!(body.contains("accepted"), "{body}");
    // Both operations complete: the stop, then the abandoned start.
    wait_for("slow stopped", Duration::from_secs(20), || {
        (status(&d, "slow")["state"] == "stopped").then_some(())
    });
    let q = wait_for("quick running", Duration::from_secs(20), || {
        let q = status(&d, "quick");
        (q["status"] == "running").then_some(q)
    });
    assert_eq!(q["desired_state"], "running", "{q}");
    // And both are in the audit trail with their real outcome.
    let trail = wait_for("both audited", Duration::from_secs(10), || {
        let a: Value = api(
            "GET",
            d.port,
            "/api/v1/audit?event=instance.start&instance=quick",
            None,
        )
        .json();
        let b: Value = api(
            "GET",
            d.port,
            "/api/v1/audit?event=instance.stop&instance=slow",
            None,
        )
        .json();
        (!a["events"].as_array()?.is_empty() && !b["events"].as_array()?.is_empty())
            .then_some((a, b))
    });
    assert_eq!(trail.0["events"][0]["outcome"], "success", "{}", trail.0);
    assert_eq!(trail.1["events"][0]["outcome"], "success", "{}", trail.1);
    for name in ["slow", "quick"] {
        assert_eq!(
            api("DELETE", d.port, &format!("/api/v1/instances/{name}"), None).status,
            204
        );
    }
}
