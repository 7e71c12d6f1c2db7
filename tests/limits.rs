//! The HTTP server's connection limits on a real llamactld (a plain process: no systemd is
//! needed to serve HTTP): `[server] header_timeout` closes slowloris and idle kept-alive
//! connections, `[server] max_connections` refuses the excess with 503 while the admin socket
//! still answers, and both are counted; an instance's logs bounded by `[instances] logs_*`
//! (that one under the private systemd: it needs a unit and the journal). (The proxy's body, budget and backend limits are tested
//! beside their code: `src/proxy/intake.rs`, `src/proxy/upstream/tests.rs`.)

use crate::util::{api, http_unix, sample, scratch, wait_for, write, LLAMACTLD};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// llamactld as a child process, killed when the test ends.
struct Daemon {
    child: Child,
    port: u16,
    sock: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon(name: &str, server: &str) -> Daemon {
    let port = crate::util::free_port();
    let dir = scratch(name);
    let f = dir.join("c.toml");
    let sock = dir.join("run/llamactl.sock");
    write(
        &f,
        &format!(
            "[server]\nport = {port}\nstate_dir = \"{}\"\nsocket = \"{}\"\n{server}\n[audit]\njournal = false\nlog_file = \"{}\"\n[logging]\noutput = \"json\"\n[systemd]\naddress = \"unix:path=/nonexistent/bus\"\nready_timeout = \"1s\"\n{}",
            dir.join("state").display(),
            sock.display(),
            dir.join("audit.log").display(),
            crate::util::test_key_config()
        ),
    );
    let child = Command::new(LLAMACTLD)
        .arg("-c")
        .arg(&f)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stderr(Stdio::null())
        .spawn()
        .expect("llamactld starts");
    let d = Daemon { child, port, sock };
    wait_for("daemon up", Duration::from_secs(10), || {
        crate::util::http("GET", port, "/api/health/live", &[], b"").ok()
    });
    d
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s
}

/// Reads until the server closes the connection; what it sent, and how long that took.
fn until_closed(mut s: TcpStream) -> (String, Duration) {
    let t = Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

fn closed_by(port: u16, reason: &str) -> f64 {
    let m = api("GET", port, "/metrics", None).body;
    sample(
        &m,
        &format!("llamactl_http_connections_closed_by_limit_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or_else(|| panic!("no closed_by_limit series for {reason}:\n{m}"))
}

#[test]
fn header_timeout_closes_slow_heads_and_idle_kept_alive_connections() {
    let d = daemon("limits-header", "header_timeout = \"1s\"");
    // Half a request head, then nothing: closed at the deadline, not served.
    let mut slow = connect(d.port);
    slow.write_all(b"GET /api/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .expect("write");
    // Nothing at all.
    let silent = connect(d.port);
    // A complete request on a kept-alive connection, then silence.
    let mut kept = connect(d.port);
    kept.write_all(b"GET /api/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("write");
    for (what, s) in [
        ("slow head", slow),
        ("silent", silent),
        ("kept alive", kept),
    ] {
        let (got, took) = until_closed(s);
        assert!(
            took < Duration::from_secs(10),
            "{what}: still open after {took:?}"
        );
        if what == "kept alive" {
            assert!(got.starts_with("HTTP/1.1 200"), "{what}: {got}");
            assert_eq!(got.matches("HTTP/1.1").count(), 1, "{what}: {got}");
        } else {
            assert!(!got.contains("200 OK"), "{what} was served: {got}");
        }
    }
    assert!(closed_by(d.port, "header_timeout") >= 3.0);
    // A client that keeps to the deadline is served as before.
    assert_eq!(api("GET", d.port, "/api/health/live", None).status, 200);
}

#[test]
fn connections_over_max_connections_get_503_and_the_admin_socket_still_answers() {
    let d = daemon(
        "limits-conns",
        "max_connections = 3\nheader_timeout = \"30s\"",
    );
    let held: Vec<TcpStream> = (0..3).map(|_| connect(d.port)).collect();
    // Every slot is taken (the acceptor counts them as they come; give it a moment).
    let refused = wait_for("a refused connection", Duration::from_secs(10), || {
        let (got, _) = until_closed(connect(d.port));
        got.starts_with("HTTP/1.1 503").then_some(got)
    });
    assert!(refused.contains("Retry-After: 1"), "{refused}");
    assert!(refused.contains("max_connections"), "{refused}");
    // The admin socket is not counted: the operator gets in.
    let r = http_unix(&d.sock, "GET", "/metrics", &[], b"").expect("admin socket");
    assert_eq!(r.status, 200);
    assert!(
        sample(
            &r.body,
            "llamactl_http_connections_closed_by_limit_total{reason=\"max_connections\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{}",
        r.body
    );
    assert!(sample(&r.body, "llamactl_http_connections").is_some_and(|v| v >= 3.0));
    // A closed connection frees its slot.
    drop(held);
    wait_for("a slot freed", Duration::from_secs(10), || {
        crate::util::http("GET", d.port, "/api/health/live", &[], b"")
            .ok()
            .filter(|r| r.status == 200)
    });
}

#[test]
fn health_answers_while_hundreds_of_slowloris_connections_are_open() {
    let d = daemon("limits-slowloris", "header_timeout = \"30s\"");
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = connect(d.port);
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .expect("write");
        slow.push(s);
    }
    for _ in 0..20 {
        assert_eq!(api("GET", d.port, "/api/health/live", None).status, 200);
    }
    let m = api("GET", d.port, "/metrics", None).body;
    assert!(
        sample(&m, "llamactl_http_connections").is_some_and(|v| v >= 200.0),
        "{m}"
    );
}

/// Opens `GET .../logs?follow=true` and returns the connection once the answer's head is read
/// (the stream stays open while it is held), or the status of a refusal.
fn follow(port: u16, name: &str) -> Result<TcpStream, u16> {
    let mut s = connect(port);
    let req = format!(
        "GET /api/v1/instances/{name}/logs?follow=true&lines=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {}\r\n\r\n",
        crate::util::TEST_KEY
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("status line");
    let status: u16 = String::from_utf8_lossy(&head[9..12])
        .parse()
        .expect("status");
    if status == 200 {
        Ok(s)
    } else {
        Err(status)
    }
}

#[test]
fn instance_logs_are_bounded_in_entries_message_size_and_followers() {
    unit_test!();
    let d = crate::util::sandbox::daemon(
        "limits-logs",
        "logs_max_lines = 20\nlogs_max_entry_bytes = 100\nlogs_max_followers = 1\n",
        "",
    );
    let script = "for i in $(seq 50); do echo line $i; done; printf 'L%.0s' $(seq 300); echo; \
                  printf 'H%.0s' $(seq 6000); echo; echo done; exec sleep 600";
    let spec = serde_json::json!({
        "backend_type": "command",
        "backend_options": {"command": ["/bin/sh", "-c", script]},
        "auto_restart": false,
    });
    assert_eq!(
        api("POST", d.port, "/api/v1/instances/chatty", Some(spec)).status,
        201
    );
    assert_eq!(
        api("POST", d.port, "/api/v1/instances/chatty/start", None).status,
        200
    );
    let all = |lines: &str| -> Vec<serde_json::Value> {
        let r = api(
            "GET",
            d.port,
            &format!("/api/v1/instances/chatty/logs?format=json&lines={lines}"),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).expect("JSON entries")
    };
    let last = wait_for(
        "the last line in the journal",
        Duration::from_secs(20),
        || {
            let e = all("20");
            e.iter().any(|e| e["message"] == "done").then_some(e)
        },
    );
    // -1 (all) and anything above the limit get logs_max_lines entries.
    assert_eq!(last.len(), 20);
    assert_eq!(all("-1").len(), 20);
    assert_eq!(all("100000").len(), 20);
    // A 300-byte message cut to 100 bytes and marked; a 6000-byte one, which journalctl itself
    // leaves out, says so.
    let messages: Vec<&str> = last.iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(
        messages.contains(&format!("{}…", "L".repeat(100)).as_str()),
        "{messages:?}"
    );
    assert!(
        messages.contains(&"[message over 4096 bytes, not shown by journalctl]"),
        "{messages:?}"
    );
    // Followers: one at a time here.
    let first = follow(d.port, "chatty").expect("the first follower is served");
    assert_eq!(follow(d.port, "chatty").err(), Some(429));
    drop(first);
    wait_for("the follower's place back", Duration::from_secs(10), || {
        follow(d.port, "chatty").ok()
    });
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/chatty", None).status,
        204
    );
}
