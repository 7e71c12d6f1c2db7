//! The OpenAI-compatible proxy in front of real instances.

use crate::util::sandbox::DaemonUnit;
use crate::util::{api, get, http, llama_backend, sample, wait_for};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn daemon(test: &str, extra: &str) -> DaemonUnit {
    crate::util::sandbox::daemon(test, extra, "")
}

fn chat(port: u16, body: Value) -> crate::util::Reply {
    let b = body.to_string();
    http(
        "POST",
        port,
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        b.as_bytes(),
    )
    .unwrap()
}

fn state(d: &DaemonUnit, name: &str) -> Value {
    get(d.port, &format!("/api/v1/instances/{name}")).json()["state"].clone()
}

#[test]
fn real_llama_server_behind_the_proxy() {
    unit_test!();
    let (server, model) = llama_backend();
    let d = daemon("proxy-llama", &format!("[backends.llama_cpp]\ncommand = \"{server}\"\n[proxy]\nmax_body_bytes = 65536\nidle_check_interval = \"1s\"\n"));
    let spec = json!({"backend_type": "llama_cpp", "on_demand_start": true,
        "backend_options": {"model": model, "ctx_size": 1024, "threads": 2, "parallel": 1, "alias": "smolly"}});
    assert_eq!(
        api("POST", d.port, "/api/v1/instances/psmol", Some(spec)).status,
        201
    );
    assert_eq!(state(&d, "psmol"), "stopped");

    // On-demand start answers the first request.
    let r = chat(
        d.port,
        json!({"model": "psmol", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert!(j["choices"][0]["message"]["content"].is_string(), "{j}");
    let completion = j["usage"]["completion_tokens"].as_u64().unwrap();
    let prompt = j["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(state(&d, "psmol"), "ready");
    let m = get(d.port, "/metrics").body;
    assert_eq!(
        sample(
            &m,
            "llamactl_instance_tokens_total{instance_name=\"psmol\",type=\"completion\"}"
        ),
        Some(completion as f64)
    );
    assert_eq!(
        sample(
            &m,
            "llamactl_instance_tokens_total{instance_name=\"psmol\",type=\"prompt\"}"
        ),
        Some(prompt as f64)
    );
    assert!(
        sample(
            &m,
            "llamactl_instance_tokens_per_second{instance_name=\"psmol\"}"
        )
        .unwrap()
            > 0.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "llamactl_proxy_on_demand_starts_total{instance_name=\"psmol\"}"
        ),
        Some(1.0)
    );
    assert_eq!(sample(&m, "llamactl_proxy_requests_total{instance_name=\"psmol\",endpoint=\"chat_completions\",status=\"200\"}"), Some(1.0));
    assert!(m.contains("llamactl_proxy_time_to_first_byte_seconds_bucket{instance_name=\"psmol\",endpoint=\"chat_completions\""), "{m}");
    crate::util::promtool_check(&m);

    // Streaming, through the alias: SSE passes through and its tokens are counted.
    let r = chat(
        d.port,
        json!({"model": "smolly", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Count to five"}], "max_tokens": 12}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(
        r.body.matches("data: ").count() > 3 && r.body.contains("data: [DONE]"),
        "{}",
        r.body
    );
    let m = get(d.port, "/metrics").body;
    let after = sample(
        &m,
        "llamactl_instance_tokens_total{instance_name=\"psmol\",type=\"completion\"}",
    )
    .unwrap();
    assert!(
        after >= (completion + 1) as f64,
        "streamed tokens counted: {after}"
    );
    // Its token timing: one time to first token, and an interval per text event after the
    // first (llama-server sends each token as it comes, after a role-only chunk).
    let texts = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|e| {
            let delta = &e["choices"][0]["delta"];
            ["content", "reasoning_content"]
                .iter()
                .any(|k| delta[k].as_str().is_some_and(|t| !t.is_empty()))
        })
        .count();
    assert!(texts >= 2, "{}", r.body);
    let smolly = "instance_name=\"psmol\",model=\"smolly\"";
    let count = |name: &str| {
        sample(&m, &format!("llamactl_proxy_{name}_count{{{smolly}}}"))
            .unwrap_or_else(|| panic!("{name} in\n{m}"))
    };
    assert_eq!(count("time_to_first_token_seconds"), 1.0);
    assert_eq!(
        count("inter_token_latency_seconds"),
        (texts - 1) as f64,
        "{}",
        r.body
    );

    // /v1/models shows instances with their state and aliases.
    let models = get(d.port, "/v1/models").json();
    assert_eq!(models["data"][0]["id"], "psmol");
    assert_eq!(models["data"][0]["state"], "ready");
    assert_eq!(models["data"][0]["aliases"], json!(["smolly"]));

    // A client that disconnects mid-stream frees the backend's only slot.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    let body = json!({"model": "psmol", "stream": true, "messages": [{"role": "user", "content": "Write a long story"}], "max_tokens": 4000}).to_string();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let first = String::from_utf8_lossy(&buf[..n]);
    assert!(
        first.contains("200 OK"),
        "the stream's first read: {first:?}"
    );
    let busy = |v: &Value| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|x| x["is_processing"] == true))
    };
    assert!(
        busy(&get(d.port, "/api/v1/instances/psmol/proxy/slots").json()),
        "the stream occupies the slot"
    );
    // The direct route passes the path on as sent: an encoded CRLF stays encoded (llama-server
    // answers 404 for that path) and cannot start a second request on the backend connection.
    let r = get(
        d.port,
        "/api/v1/instances/psmol/proxy/health%20HTTP/1.1%0D%0AX:%20y",
    );
    assert_eq!(r.status, 404, "{}", r.body);
    drop(s);
    wait_for("the slot to be freed", Duration::from_secs(10), || {
        (!busy(&get(d.port, "/api/v1/instances/psmol/proxy/slots").json())).then_some(())
    });
    // Counted as the client's leaving (499), not as the backend's 200.
    let m = get(d.port, "/metrics").body;
    assert_eq!(
        sample(
            &m,
            "llamactl_proxy_requests_total{instance_name=\"psmol\",endpoint=\"chat_completions\",status=\"499\"}"
        ),
        Some(1.0),
        "{m}"
    );
    let t0 = Instant::now();
    let r = chat(
        d.port,
        json!({"model": "psmol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    );
    assert_eq!(r.status, 200);
    assert!(t0.elapsed() < Duration::from_secs(20));
    let m = get(d.port, "/metrics").body;
    assert_eq!(
        sample(
            &m,
            "llamactl_proxy_requests_in_flight{instance_name=\"psmol\"}"
        ),
        Some(0.0)
    );

    // Clear errors, and the daemon stays up.
    let r = chat(d.port, json!({"model": "nope", "messages": []}));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let r = http(
        "POST",
        d.port,
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        b"{\"model\": ",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_json");
    let r = http(
        "POST",
        d.port,
        "/v1/chat/completions",
        &[("Content-Length", "1000000")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 413);
    let r = chat(d.port, json!({"messages": []}));
    assert_eq!(r.status, 400);
    assert_eq!(get(d.port, "/api/health/live").status, 200);

    // Idle timeout stops it (0.05 min = 3 s here).
    let upd = json!({"backend_type": "llama_cpp", "on_demand_start": true, "idle_timeout": 0.05,
        "backend_options": {"model": model, "ctx_size": 1024, "threads": 2, "parallel": 1, "alias": "smolly"}});
    assert_eq!(
        api("PUT", d.port, "/api/v1/instances/psmol", Some(upd)).status,
        200
    );
    wait_for("the idle instance to stop", Duration::from_secs(30), || {
        (state(&d, "psmol") == "stopped").then_some(())
    });
    d.wait_log("stopping idle instance");
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/psmol", None).status,
        204
    );
}

/// A real llama-server instance spec (started on demand), `threads` CPU threads each.
fn llama(model: &str) -> Value {
    json!({"backend_type": "llama_cpp", "on_demand_start": true,
        "backend_options": {"model": model, "ctx_size": 1024, "threads": 1}})
}

fn llama_daemon(test: &str, extra: &str) -> DaemonUnit {
    let (server, _) = llama_backend();
    daemon(
        test,
        &format!("{extra}[backends.llama_cpp]\ncommand = \"{server}\"\n"),
    )
}

#[test]
fn concurrent_first_requests_share_one_start() {
    unit_test!();
    let (_, model) = llama_backend();
    let d = llama_daemon("proxy-herd", "");
    assert_eq!(
        api(
            "POST",
            d.port,
            "/api/v1/instances/herd",
            Some(llama(&model))
        )
        .status,
        201
    );
    let port = d.port;
    let threads: Vec<_> = (0..10)
        .map(|i| {
            std::thread::spawn(move || {
                let r = chat(
                    port,
                    json!({"model": "herd", "max_tokens": 4,
                    "messages": [{"role": "user", "content": format!("hi {i}")}]}),
                );
                assert_eq!(r.status, 200, "{}", r.body);
                r.json()["usage"]["completion_tokens"].as_u64().unwrap()
            })
        })
        .collect();
    let completion: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(completion >= 10, "{completion}");
    let m = get(d.port, "/metrics").body;
    assert_eq!(
        sample(
            &m,
            "llamactl_proxy_on_demand_starts_total{instance_name=\"herd\"}"
        ),
        Some(1.0)
    );
    assert_eq!(sample(&m, "llamactl_proxy_requests_total{instance_name=\"herd\",endpoint=\"chat_completions\",status=\"200\"}"), Some(10.0));
    assert_eq!(
        sample(
            &m,
            "llamactl_instance_tokens_total{instance_name=\"herd\",type=\"completion\"}"
        ),
        Some(completion as f64)
    );
    let starts = d
        .journal()
        .iter()
        .filter(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.starts_with("starting instance"))
        })
        .count();
    assert_eq!(starts, 1);
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/herd", None).status,
        204
    );
}

#[test]
fn max_running_evicts_the_least_recently_used() {
    unit_test!();
    let (_, model) = llama_backend();
    let d = llama_daemon("proxy-lru", "max_running = 1\n");
    for n in ["lru-a", "lru-b"] {
        assert_eq!(
            api(
                "POST",
                d.port,
                &format!("/api/v1/instances/{n}"),
                Some(llama(&model))
            )
            .status,
            201
        );
    }
    let hi = |m: &str| json!({"model": m, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
    let r = chat(d.port, hi("lru-a"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(state(&d, "lru-a"), "ready");
    let r = chat(d.port, hi("lru-b"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(state(&d, "lru-b"), "ready");
    assert_eq!(state(&d, "lru-a"), "stopped", "evicted");
    let m = get(d.port, "/metrics").body;
    assert_eq!(
        sample(
            &m,
            "llamactl_proxy_evictions_total{instance_name=\"lru-a\"}"
        ),
        Some(1.0)
    );
    assert_eq!(sample(&m, "llamactl_instances_running"), Some(1.0));
    // Through the API too: starting a stops b.
    assert_eq!(
        api("POST", d.port, "/api/v1/instances/lru-a/start", None).status,
        200
    );
    assert_eq!(state(&d, "lru-b"), "stopped");
    for n in ["lru-a", "lru-b"] {
        assert_eq!(
            api("DELETE", d.port, &format!("/api/v1/instances/{n}"), None).status,
            204
        );
    }
}

/// A deleted instance takes its proxy series with it: create, request, delete in a loop must
/// not grow `/metrics`.
#[test]
fn a_deleted_instance_leaves_no_proxy_series_behind() {
    unit_test!();
    let d = crate::util::sandbox::daemon("proxy-churn", "", "");
    let fake = crate::util::fake_backend().display().to_string();
    let mut sizes = Vec::new();
    for round in 0..4 {
        let spec = json!({"backend_type": "command", "auto_restart": false,
            "backend_options": {"command": [&fake, "--port", "{port}", "--model", "churny"]}});
        let r = api("POST", d.port, "/api/v1/instances/churny", Some(spec));
        assert_eq!(r.status, 201, "{}", r.body);
        let r = api("POST", d.port, "/api/v1/instances/churny/start", None);
        assert_eq!(r.status, 200, "{}", r.body);
        wait_for("churny ready", Duration::from_secs(30), || {
            (state(&d, "churny") == "ready").then_some(())
        });
        let r = chat(
            d.port,
            json!({"model": "churny", "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let m = get(d.port, "/metrics").body;
        assert!(
            m.contains("llamactl_proxy_requests_total{instance_name=\"churny\""),
            "round {round}: the request is counted\n{m}"
        );
        assert_eq!(
            api("DELETE", d.port, "/api/v1/instances/churny", None).status,
            204
        );
        let m = get(d.port, "/metrics").body;
        let left: Vec<&str> = m
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("\"churny\""))
            .collect();
        assert!(left.is_empty(), "round {round}: {left:#?}");
        sizes.push(m.len());
    }
    // Counters of the daemon's own requests grow a digit now and then; series do not.
    assert!(
        sizes.iter().max().unwrap() - sizes.iter().min().unwrap() < 200,
        "{sizes:?}"
    );
}

/// The LLM latency histograms against a backend that streams at a known pace: a role-only
/// chunk at once, the first text 600 ms later, then text every 220 ms (3 pieces).
#[test]
fn llm_latency_histograms_match_a_backend_at_a_known_pace() {
    unit_test!();
    let d = crate::util::sandbox::daemon("proxy-pace", "", "");
    let fake = crate::util::fake_backend().display().to_string();
    let spec = json!({"backend_type": "command", "on_demand_start": true,
        "backend_options": {"command": [&fake, "--port", "{port}", "--ready-after", "1500",
            "--first-token-delay", "600", "--chunk-delay", "220"]}});
    let r = api("POST", d.port, "/api/v1/instances/pace", Some(spec));
    assert_eq!(r.status, 201, "{}", r.body);
    let stream = json!({"model": "pace", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    // The first request starts the instance (and waits out its 1.5 s of loading).
    for _ in 0..2 {
        let r = chat(d.port, stream.clone());
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.ends_with("data: [DONE]\n\n"), "{}", r.body);
    }
    let r = chat(
        d.port,
        json!({"model": "pace/adapter", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let m = get(d.port, "/metrics").body;
    let at = |name: &str, labels: &str| {
        sample(&m, &format!("llamactl_proxy_{name}{{{labels}}}"))
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{m}"))
    };
    let own = "instance_name=\"pace\",model=\"pace\"";
    // Time to first byte is the role chunk's (and the JSON answer's); time to first token
    // waits for the text.
    assert_eq!(
        at(
            "time_to_first_byte_seconds_bucket",
            "instance_name=\"pace\",endpoint=\"chat_completions\",le=\"0.1\""
        ),
        2.0
    );
    assert_eq!(at("time_to_first_token_seconds_count", own), 2.0);
    assert_eq!(
        at(
            "time_to_first_token_seconds_bucket",
            &format!("{own},le=\"0.5\"")
        ),
        0.0
    );
    assert_eq!(
        at(
            "time_to_first_token_seconds_bucket",
            &format!("{own},le=\"0.75\"")
        ),
        1.0,
        "the second request: ~0.6 s"
    );
    // Two intervals per stream, each ~0.22 s.
    assert_eq!(at("inter_token_latency_seconds_count", own), 4.0);
    assert_eq!(
        at(
            "inter_token_latency_seconds_bucket",
            &format!("{own},le=\"0.2\"")
        ),
        0.0
    );
    assert_eq!(
        at(
            "inter_token_latency_seconds_bucket",
            &format!("{own},le=\"0.3\"")
        ),
        4.0
    );
    let itl_sum = at("inter_token_latency_seconds_sum", own);
    assert!((0.88..1.2).contains(&itl_sum), "{itl_sum}");
    // The first request waited for the on-demand start; the second did not wait.
    assert_eq!(at("queue_time_seconds_count", own), 2.0);
    assert_eq!(
        at("queue_time_seconds_bucket", &format!("{own},le=\"0.3\"")),
        1.0
    );
    assert!(at("queue_time_seconds_sum", own) >= 1.5);
    // fake_backend's usage: 5 prompt and 3 completion tokens, per request.
    let tokens = |model: &str, kind: &str, le: &str| {
        at(
            "request_tokens_bucket",
            &format!("instance_name=\"pace\",model=\"{model}\",type=\"{kind}\",le=\"{le}\""),
        )
    };
    assert_eq!(
        (
            tokens("pace", "prompt", "4"),
            tokens("pace", "prompt", "16")
        ),
        (0.0, 2.0)
    );
    assert_eq!(
        (
            tokens("pace", "completion", "1"),
            tokens("pace", "completion", "4")
        ),
        (0.0, 2.0)
    );
    // A non-streamed answer has tokens and a queue time, no time to first token.
    assert_eq!(tokens("pace/adapter", "completion", "4"), 1.0);
    assert_eq!(
        at(
            "time_to_first_token_seconds_count",
            "instance_name=\"pace\",model=\"pace/adapter\""
        ),
        0.0
    );
    // Generation speed comes from streams (or llama.cpp's timings), never from a JSON answer
    // that arrived all at once.
    let tps = sample(
        &m,
        "llamactl_instance_tokens_per_second{instance_name=\"pace\"}",
    )
    .unwrap();
    assert!((2.0..20.0).contains(&tps), "3 tokens over ~0.44 s: {tps}");
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/pace", None).status,
        204
    );
}
