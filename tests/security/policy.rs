//! The instance policy, secret redaction, and the hardened units' exposure.

use super::*;
use crate::util::{free_port, http, llama_backend, wait_for};
use std::time::Duration;

#[test]
fn instance_policy_and_secrets() {
    unit_test!();
    // The default policy: no command backend.
    let d = DaemonUnit::install(
        "sec-policy",
        free_port(),
        "[instances]\nmax_instances = 2\nmax_aliases = 2\n[backends.llama_cpp]\ncommand = \"/bin/sleep\"\nenvironment = { OMP_NUM_THREADS = \"1\" }\n",
        "",
    );
    d.start();
    let p = d.port;
    let cmd =
        json!({"backend_type": "command", "backend_options": {"command": ["/bin/sh", "-c", "id"]}});
    let r = api("POST", p, "/api/v1/instances/sh", Some(cmd));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("allowed_backends"), "{}", r.body);
    for name in ["LD_PRELOAD", "PYTHONPATH", "PATH"] {
        let r = api(
            "POST",
            p,
            "/api/v1/instances/env",
            Some(json!({"backend_type": "llama_cpp",
            "backend_options": {"model": "/m.gguf"}, "environment": {name: "/tmp/x"}})),
        );
        assert_eq!(r.status, 403, "{name}: {}", r.body);
    }
    let r = api(
        "POST",
        p,
        "/api/v1/instances/al",
        Some(json!({"backend_type": "llama_cpp",
        "backend_options": {"model": "/m.gguf"}, "aliases": ["a", "b", "c"]})),
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // Secrets: stored, used, never shown.
    let spec = json!({"backend_type": "llama_cpp",
        "backend_options": {"model": "/m.gguf", "api_key": "sk-backend-secret-1", "hf_token": "hf_secret_2",
            "extra_args": ["--api-key-file-not", "--x-token=tok_secret_3"]},
        "environment": {"HF_TOKEN": "hf_secret_4", "OMP_NUM_THREADS": "8"}});
    let r = api("POST", p, "/api/v1/instances/sec", Some(spec));
    assert_eq!(r.status, 201, "{}", r.body);
    for answer in [
        r.body.clone(),
        get(p, "/api/v1/instances/sec").body,
        get(p, "/api/v1/instances").body,
    ] {
        for s in [
            "sk-backend-secret-1",
            "hf_secret_2",
            "tok_secret_3",
            "hf_secret_4",
        ] {
            assert!(!answer.contains(s), "{s} in {answer}");
        }
    }
    let shown = get(p, "/api/v1/instances/sec").json();
    assert_eq!(shown["options"]["backend_options"]["api_key"], "<redacted>");
    // A GET → PUT round trip keeps the stored secrets.
    let mut options = shown["options"].clone();
    options["backend_options"]["ctx_size"] = json!(64);
    let r = api("PUT", p, "/api/v1/instances/sec", Some(options));
    assert_eq!(r.status, 200, "{}", r.body);
    let stored = std::fs::read_to_string(d.state_path().join("instances/sec.json")).unwrap();
    assert!(
        stored.contains("sk-backend-secret-1") && stored.contains("hf_secret_4"),
        "{stored}"
    );
    assert!(stored.contains("\"ctx_size\": 64"), "{stored}");

    // Started (the "backend" is /bin/sleep, which fails on llama-server's arguments; what
    // matters is the unit and the log line).
    let _ = api("POST", p, "/api/v1/instances/sec/start", None);
    let line = d.wait_log("starting instance");
    let msg = line["MESSAGE"].as_str().unwrap();
    assert!(msg.contains("--api-key <redacted>"), "{msg}");
    // Everything in the journal but the backend's own output (/bin/sleep complains about its
    // arguments, secrets included: that is the backend's doing, not ours).
    let journal: String =
        d.sb.ok(&["journalctl", "-o", "json", "--no-pager"])
            .lines()
            .filter(|l| {
                serde_json::from_str::<Value>(l)
                    .map_or(true, |e| e["SYSLOG_IDENTIFIER"] != "llamactl-sec")
            })
            .collect();
    for s in [
        "sk-backend-secret-1",
        "hf_secret_2",
        "tok_secret_3",
        "hf_secret_4",
    ] {
        assert!(!journal.contains(s), "{s} reached the journal");
    }
    // The operator's backend environment wins over the instance's.
    let env = d.sb.ok(&[
        "systemctl",
        "show",
        "-p",
        "Environment",
        "--value",
        "llamactl-sec.service",
    ]);
    assert!(
        env.contains("OMP_NUM_THREADS=1") && !env.contains("OMP_NUM_THREADS=8"),
        "{env}"
    );
    // The CLI shows what the API shows.
    let out = crate::util::run(crate::util::llamactl().args([
        "--url",
        &format!("http://127.0.0.1:{p}"),
        "show",
        "sec",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("<redacted>") && !text.contains("sk-backend-secret-1"),
        "{text}"
    );

    // max_instances = 2.
    assert_eq!(
        api(
            "POST",
            p,
            "/api/v1/instances/ptwo",
            Some(json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m.gguf"}}))
        )
        .status,
        201
    );
    let r = api(
        "POST",
        p,
        "/api/v1/instances/pthree",
        Some(json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m.gguf"}})),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("max_instances"), "{}", r.body);

    // A spec written by hand with a forbidden backend loads but does not start.
    let forged = json!({"name": "forged", "created": 1, "desired_state": "stopped",
        "options": {"backend_type": "command", "backend_options": {"command": ["/bin/sh"], "port": 31999}}});
    for n in ["ptwo", "sec"] {
        assert_eq!(
            api("DELETE", p, &format!("/api/v1/instances/{n}"), None).status,
            204
        );
    }
    std::fs::write(
        d.state_path().join("instances/forged.json"),
        forged.to_string(),
    )
    .unwrap();
    assert_eq!(d.systemctl("restart").status.code(), Some(0));
    wait_for("the daemon back", Duration::from_secs(15), || {
        http("GET", p, "/api/health/live", &[], b"").ok()
    });
    let r = api("POST", p, "/api/v1/instances/forged/start", None);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        api("DELETE", p, "/api/v1/instances/forged", None).status,
        204
    );
}

#[test]
fn hardened_units_score_low_and_llama_server_still_answers() {
    unit_test!();
    let (server, model) = llama_backend();
    let d = daemon(
        "sec-analyze",
        &format!("[backends.llama_cpp]\ncommand = \"{server}\"\n"),
    );
    let daemon_score = exposure(&d, &d.unit);
    eprintln!("systemd-analyze security: daemon unit {daemon_score}");
    assert!(daemon_score <= 2.5, "daemon unit exposure {daemon_score}");
    let spec = json!({"backend_type": "llama_cpp", "backend_options": {"model": model, "ctx_size": 256, "threads": 1, "parallel": 1}});
    assert_eq!(
        api("POST", d.port, "/api/v1/instances/hard", Some(spec)).status,
        201
    );
    let r = http(
        "POST",
        d.port,
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        chat("hard").as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["choices"][0]["message"]["content"].is_string(),
        "{}",
        r.body
    );
    let score = exposure(&d, "llamactl-hard.service");
    eprintln!("systemd-analyze security: llama_cpp instance unit {score}");
    assert!(score <= 3.0, "instance unit exposure {score}");
    let props = d.sb.ok(&["systemctl", "show", "-p", "PrivateDevices,MemoryDenyWriteExecute,CapabilityBoundingSet,RestrictNamespaces,SystemCallArchitectures", "llamactl-hard.service"]);
    assert!(
        props.contains("PrivateDevices=yes") && props.contains("MemoryDenyWriteExecute=yes"),
        "{props}"
    );
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/hard", None).status,
        204
    );
}
