//! OpenTelemetry traces against a real OTLP receiver (`util/otlp_receiver.py`, decoding with
//! the `opentelemetry-proto` package): span names, attributes and parent links for an
//! instance start and for a proxied request whose client sent a `traceparent` (which reaches
//! the backend with the same trace id), over http/protobuf and gRPC; sampling 0 and 1; a dead
//! collector costs requests nothing and is counted.

use crate::util::sandbox::{daemon, sandbox, DaemonUnit};
use crate::util::{api, get, http, repo, sample, scratch, slowest_get, wait_for};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The receiver, killed when dropped.
struct Receiver {
    child: Child,
    out: PathBuf,
    http: u16,
    grpc: u16,
}

impl Receiver {
    fn start(test: &str, mode: &str) -> Receiver {
        let dir = scratch(test);
        let out = dir.join("spans.jsonl");
        let ports = dir.join("ports.json");
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&ports);
        let child = Command::new("python3")
            .arg(repo().join("tests/util/otlp_receiver.py"))
            .args(["--out", out.to_str().unwrap(), "--ports", ports.to_str().unwrap()])
            .args(["--mode", mode])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 runs the OTLP receiver (tools/test installs opentelemetry-proto and grpcio)");
        let p: Value = wait_for(
            "the OTLP receiver to listen",
            Duration::from_secs(30),
            || {
                std::fs::read_to_string(&ports)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
            },
        );
        Receiver {
            child,
            out,
            http: p["http"].as_u64().unwrap() as u16,
            grpc: p["grpc"].as_u64().unwrap() as u16,
        }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until a span named `name` (in trace `trace`, when given) has arrived.
    fn span(&self, name: &str, trace: Option<&str>) -> Value {
        wait_for(&format!("span {name:?}"), Duration::from_secs(20), || {
            self.spans()
                .into_iter()
                .find(|s| s["name"] == name && trace.is_none_or(|t| s["trace_id"] == t))
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn traced_daemon(test: &str, endpoint: &str, protocol: &str, rate: f64) -> DaemonUnit {
    daemon(
        test,
        &format!(
            "[rate_limit]\nenabled = false\n[telemetry]\nenabled = true\nsampling_rate = {rate}\n[telemetry.otlp]\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\n[telemetry.otlp.headers]\nauthorization = \"Bearer otlp-s3cret\"\n"
        ),
        "",
    )
}

fn fake_instance(d: &DaemonUnit, name: &str) {
    let fake = crate::util::fake_backend().display().to_string();
    let spec = json!({"backend_type": "command", "on_demand_start": true,
        "backend_options": {"command": [&fake, "--port", "{port}", "--ready-after", "300"]}});
    let r = api(
        "POST",
        d.port,
        &format!("/api/v1/instances/{name}"),
        Some(spec),
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn traceparent(span: &str) -> String {
    format!("00-{CLIENT_TRACE}-{span}-01")
}

fn attr<'a>(s: &'a Value, k: &str) -> &'a Value {
    &s["attributes"][k]
}

/// One daemon, one instance: its start through the API and a streamed chat through the proxy,
/// both from a client that sent a `traceparent`.
fn start_and_chat(protocol: &str) {
    let rx = Receiver::start(&format!("otlp-{protocol}"), "ok");
    let endpoint = match protocol {
        "grpc" => format!("http://127.0.0.1:{}", rx.grpc),
        _ => format!("http://127.0.0.1:{}", rx.http),
    };
    let name = format!("otel-{}", protocol.replace('/', "-"));
    let d = traced_daemon(&format!("otel-{}", &name[5..]), &endpoint, protocol, 1.0);
    fake_instance(&d, &name);

    let api_parent = "00f067aa0ba902b7";
    let r = http(
        "POST",
        d.port,
        &format!("/api/v1/instances/{name}/start"),
        &[("traceparent", &traceparent(api_parent))],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // The API request, the operation under it, its systemd job and the wait for ready.
    let server = rx.span("POST /api/v1/instances/{name}/start", Some(CLIENT_TRACE));
    assert_eq!(server["parent_span_id"], api_parent, "{server}");
    assert_eq!(server["kind"], 2, "SERVER: {server}");
    assert_eq!(attr(&server, "http.response.status_code"), 200);
    assert_eq!(
        attr(&server, "http.route"),
        "/api/v1/instances/{name}/start"
    );
    let op = rx.span("instance.start", Some(CLIENT_TRACE));
    assert_eq!(op["parent_span_id"], server["span_id"], "{op}");
    assert_eq!(attr(&op, "instance.name"), name.as_str());
    assert_eq!(attr(&op, "backend.type"), "command");
    let job = rx.span("systemd.job", Some(CLIENT_TRACE));
    assert_eq!(job["parent_span_id"], op["span_id"], "{job}");
    assert_eq!(attr(&job, "systemd.job.result"), "done");
    assert_eq!(
        attr(&job, "systemd.unit"),
        format!("llamactl-{name}.service").as_str()
    );
    let ready = rx.span("instance.wait_ready", Some(CLIENT_TRACE));
    assert_eq!(ready["parent_span_id"], op["span_id"], "{ready}");
    let waited = ready["end_ns"].as_u64().unwrap() - ready["start_ns"].as_u64().unwrap();
    assert!(
        waited >= 250_000_000,
        "ready after fake_backend's 300 ms: {waited} ns"
    );
    // The resource, and the configured header (a secret) sent with the export.
    assert_eq!(server["resource"]["service.name"], "llamactl");
    assert!(server["resource"]["host.name"]
        .as_str()
        .is_some_and(|h| !h.is_empty()));
    assert_eq!(
        server["resource"]["service.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(server["headers"]["authorization"], "Bearer otlp-s3cret");
    assert_eq!(
        server["transport"],
        if protocol == "grpc" { "grpc" } else { "http" }
    );

    // A streamed chat: its span is the client's child, carries the GenAI attributes, and the
    // backend is called with a traceparent of the same trace whose parent is that span.
    let chat_parent = "b7ad6b7169203331";
    let body = json!({"model": name, "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let r = http(
        "POST",
        d.port,
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("traceparent", &traceparent(chat_parent)),
        ],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let chat = rx.span(&format!("chat {name}"), Some(CLIENT_TRACE));
    assert_eq!(chat["parent_span_id"], chat_parent, "{chat}");
    assert_eq!(attr(&chat, "gen_ai.operation.name"), "chat");
    assert_eq!(attr(&chat, "gen_ai.request.model"), name.as_str());
    assert_eq!(attr(&chat, "gen_ai.usage.input_tokens"), 5);
    assert_eq!(attr(&chat, "gen_ai.usage.output_tokens"), 3);
    assert_eq!(attr(&chat, "http.response.status_code"), 200);
    let seen = format!(
        "traceparent=00-{CLIENT_TRACE}-{}-01",
        chat["span_id"].as_str().unwrap()
    );
    let unit = format!("llamactl-{name}.service");
    let backend_log = || sandbox().ok(&["journalctl", "-u", &unit, "--no-pager"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !backend_log().contains(&seen) {
        assert!(Instant::now() < deadline, "no {seen} in\n{}", backend_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = get(d.port, "/metrics").body;
    assert!(
        sample(&m, "llamactl_telemetry_spans_exported_total").unwrap() >= 5.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "llamactl_telemetry_spans_dropped_total"),
        Some(0.0)
    );
    assert!(
        !d.journal_text().contains("otlp-s3cret"),
        "the header is a secret"
    );
    assert_eq!(
        api("DELETE", d.port, &format!("/api/v1/instances/{name}"), None).status,
        204
    );
    let del = rx.span("instance.delete", None);
    assert_eq!(attr(&del, "instance.name"), name.as_str());
}

#[test]
fn spans_reach_a_collector_over_http_protobuf() {
    unit_test!();
    start_and_chat("http/protobuf");
}

#[test]
fn spans_reach_a_collector_over_grpc() {
    unit_test!();
    start_and_chat("grpc");
}

/// Sampling 0 sends none of the daemon's own traces but honours a client's sampled
/// `traceparent` (parent-based); sampling 1 sends every request's.
#[test]
fn sampling_zero_sends_none_and_one_sends_all() {
    unit_test!();
    for (rate, test) in [(0.0, "otel-rate0"), (1.0, "otel-rate1")] {
        let rx = Receiver::start(test, "ok");
        let d = traced_daemon(
            test,
            &format!("http://127.0.0.1:{}", rx.http),
            "http/protobuf",
            rate,
        );
        for _ in 0..20 {
            assert_eq!(get(d.port, "/api/v1/instances").status, 200);
        }
        let sampled = "a3ce929d0e0e4736";
        let r = http(
            "GET",
            d.port,
            "/api/health",
            &[("traceparent", &traceparent(sampled))],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        // The client's trace is always exported; once it is in, so is anything sent before.
        rx.span("GET /api/health", Some(CLIENT_TRACE));
        std::thread::sleep(Duration::from_millis(1500));
        let lists = rx
            .spans()
            .into_iter()
            .filter(|s| s["name"] == "GET /api/v1/instances")
            .count();
        assert_eq!(
            lists,
            if rate == 0.0 { 0 } else { 20 },
            "sampling_rate = {rate}"
        );
    }
}

/// A collector that accepts connections and never answers: requests go on at their pace
/// (ending a span never waits for the export), the queue overflows into the dropped count,
/// and the failure is logged once.
#[test]
fn a_dead_collector_costs_requests_nothing_and_is_counted() {
    unit_test!();
    let rx = Receiver::start("otel-dead", "hang");
    let d = traced_daemon(
        "otel-dead",
        &format!("http://127.0.0.1:{}", rx.http),
        "http/protobuf",
        1.0,
    );
    // More spans than the export queue holds (2048), while the first export hangs for its
    // 10 s timeout.
    let slowest = slowest_get(d.port, "/api/health/live", 3000);
    // An export that blocked a request would take it to the 10 s export timeout.
    assert!(
        slowest < Duration::from_secs(2),
        "slowest request {slowest:?}"
    );
    let dropped = wait_for("spans counted as dropped", Duration::from_secs(30), || {
        let m = get(d.port, "/metrics").body;
        sample(&m, "llamactl_telemetry_spans_dropped_total").filter(|n| *n > 0.0)
    });
    assert!(dropped >= 1.0);
    d.wait_log("trace export timed out");
    std::thread::sleep(Duration::from_secs(11));
    let warned = d
        .journal()
        .iter()
        .filter(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.starts_with("trace export"))
        })
        .count();
    assert_eq!(warned, 1, "logged once while it stays down");
    assert_eq!(d.prop("ActiveState"), "active");
}
