//! Access control against the real daemon under the private systemd: the key matrix over TCP,
//! inference keys limited to instances and rights, the admin socket and its peer credentials,
//! browser attacks (cross-origin simple requests, DNS rebinding), the instance policy and
//! redaction, keys provisioned by config and by systemd credential, and that no key ever
//! reaches the journal.

use crate::util::sandbox::DaemonUnit;
use crate::util::{
    api, fake_backend, free_port, get, http, http_raw, http_unix, llama_backend, wait_for,
    LLAMACTL, TEST_KEY,
};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn daemon(test: &str, extra: &str) -> DaemonUnit {
    let port = free_port();
    let lo = 30000 + (port % 300) * 100;
    let d = DaemonUnit::install(
        test,
        port,
        &format!(
            "[instances]\nallowed_backends = [\"llama_cpp\", \"vllm\", \"command\"]\nport_range = [{lo}, {}]\nhealth_check_interval = \"500ms\"\n{extra}",
            lo + 99
        ),
        "",
    );
    d.start();
    d
}

fn fake(extra: Value) -> Value {
    let mut v = json!({"backend_type": "command",
        "backend_options": {"command": [fake_backend().display().to_string(), "--port", "{port}", "--model", "fake"]}});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Creates a key through the API (as the test's management key); returns the key.
fn create_key(d: &DaemonUnit, body: Value) -> String {
    let r = api("POST", d.port, "/api/v1/auth/keys", Some(body));
    assert_eq!(r.status, 201, "{}", r.body);
    let k = r.json()["key"].as_str().unwrap().to_string();
    assert!(k.starts_with("llk_") && k.len() == 68, "{k}");
    k
}

/// A request with `key` sent as a bearer token (or none), nothing else added.
fn as_key(
    d: &DaemonUnit,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> crate::util::Reply {
    let bearer = key.map(|k| format!("Bearer {k}"));
    let mut h: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        h.push(("Authorization", b));
    }
    http_raw(method, d.port, path, &h, body.as_bytes()).unwrap()
}

fn chat(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        .to_string()
}

/// The key strings, as they must never appear anywhere else.
fn assert_nowhere(d: &DaemonUnit, keys: &[&str]) {
    let journal = d.sb.ok(&["journalctl", "-o", "json", "--no-pager"]);
    let metrics = get(d.port, "/metrics").body;
    let state = std::fs::read_to_string(d.state_path().join("keys.json")).unwrap_or_default();
    for k in keys {
        let secret = &k[4..];
        assert!(!journal.contains(secret), "a key reached the journal");
        assert!(!metrics.contains(secret), "a key reached /metrics");
        assert!(!state.contains(secret), "a key reached keys.json");
    }
}

#[test]
fn the_key_matrix_over_tcp() {
    unit_test!();
    let d = daemon(
        "sec-matrix",
        "[auth]\nrequire_inference_auth = true\nrequire_monitoring_auth = true\n",
    );
    assert_eq!(
        api("POST", d.port, "/api/v1/instances/m", Some(fake(json!({})))).status,
        201
    );
    let mgmt = create_key(&d, json!({"name": "ops", "scope": "management"}));
    let inf = create_key(&d, json!({"name": "app", "scope": "inference"}));
    let mon = create_key(&d, json!({"name": "prom", "scope": "monitoring"}));
    let soon = create_key(
        &d,
        json!({"name": "short", "scope": "management", "expires_at": now() + 2}),
    );
    let gone = create_key(&d, json!({"name": "gone", "scope": "management"}));
    assert_eq!(
        api("DELETE", d.port, "/api/v1/auth/keys/gone", None).status,
        204
    );

    // One route of each group; expected status per key (None = no key).
    let routes: [(&str, &str, String, [u16; 5]); 7] = [
        // method, path, body, [none, bad, management, inference, monitoring]
        (
            "GET",
            "/api/v1/instances",
            String::new(),
            [401, 401, 200, 403, 403],
        ),
        (
            "GET",
            "/api/v1/auth/keys",
            String::new(),
            [401, 401, 200, 403, 403],
        ),
        (
            "GET",
            "/v1/models",
            String::new(),
            [401, 401, 200, 200, 403],
        ),
        (
            "POST",
            "/v1/chat/completions",
            chat("m"),
            [401, 401, 200, 200, 403],
        ),
        ("GET", "/metrics", String::new(), [401, 401, 200, 403, 200]),
        (
            "GET",
            "/api/health/live",
            String::new(),
            [401, 401, 200, 403, 200],
        ),
        (
            "GET",
            "/api/v1/sd/prometheus",
            String::new(),
            [401, 401, 200, 403, 200],
        ),
    ];
    for (method, path, body, want) in &routes {
        for (i, key) in [
            None,
            Some("llk_0000wrong"),
            Some(&*mgmt),
            Some(&*inf),
            Some(&*mon),
        ]
        .into_iter()
        .enumerate()
        {
            let r = as_key(&d, key, method, path, body);
            assert_eq!(
                r.status, want[i],
                "{method} {path} with key #{i}: {}",
                r.body
            );
            if r.status == 401 {
                assert!(
                    r.header("WWW-Authenticate")
                        .is_some_and(|h| h.starts_with("Bearer realm=\"llamactl\"")),
                    "{method} {path}: {:?}",
                    r.headers
                );
                assert!(r.json()["error"]["message"].is_string(), "{}", r.body);
            }
            if r.status == 403 {
                assert!(r
                    .header("WWW-Authenticate")
                    .unwrap()
                    .contains("insufficient_scope"));
            }
        }
    }
    // Inference errors keep OpenAI's shape.
    let r = as_key(&d, None, "POST", "/v1/chat/completions", &chat("m"));
    assert_eq!(r.json()["error"]["code"], "api_key_required");

    // X-API-Key works as upstream's does.
    let r = http_raw(
        "GET",
        d.port,
        "/api/v1/instances",
        &[("X-API-Key", &mgmt)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);

    // A revoked key is refused; an expired one is refused by name.
    assert_eq!(
        as_key(&d, Some(&gone), "GET", "/api/v1/instances", "").status,
        401
    );
    assert_eq!(
        as_key(&d, Some(&soon), "GET", "/api/v1/instances", "").status,
        200
    );
    let expired = wait_for("the short key to expire", Duration::from_secs(10), || {
        let r = as_key(&d, Some(&soon), "GET", "/api/v1/instances", "");
        (r.status == 401).then_some(r)
    });
    assert!(
        expired.body.contains("\\\"short\\\" expired at"),
        "{}",
        expired.body
    );

    // The list shows names and use, never a key or its digest.
    let list = get(d.port, "/api/v1/auth/keys").json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"app") && !names.contains(&"gone"),
        "{names:?}"
    );
    let app = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "app")
        .unwrap();
    assert!(app["last_used_at"].as_i64().unwrap() >= now() - 60, "{app}");
    assert!(!list.to_string().contains("sha256"), "{list}");

    // Refusals are logged with who and why, and keys are nowhere.
    d.wait_log("request refused");
    assert_nowhere(&d, &[&mgmt, &inf, &mon, &soon, &gone, TEST_KEY]);
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/m", None).status,
        204
    );
}

#[test]
fn default_config_leaves_inference_and_monitoring_open_on_loopback() {
    unit_test!();
    let d = daemon("sec-defaults", "");
    assert_eq!(
        api("POST", d.port, "/api/v1/instances/m", Some(fake(json!({})))).status,
        201
    );
    // Management needs a key over TCP ...
    assert_eq!(as_key(&d, None, "GET", "/api/v1/instances", "").status, 401);
    // ... the rest does not; an OpenAI client's placeholder key is ignored, a wrong llamactl
    // key is not.
    assert_eq!(as_key(&d, None, "GET", "/metrics", "").status, 200);
    assert_eq!(as_key(&d, None, "GET", "/api/health", "").status, 200);
    assert_eq!(
        as_key(&d, None, "POST", "/v1/chat/completions", &chat("m")).status,
        200
    );
    let r = as_key(
        &d,
        Some("sk-no-key-required"),
        "POST",
        "/v1/chat/completions",
        &chat("m"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        as_key(&d, Some("llk_mistyped"), "GET", "/v1/models", "").status,
        401
    );
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/m", None).status,
        204
    );
}

#[test]
fn inference_keys_are_limited_to_their_instances_and_rights() {
    unit_test!();
    let d = daemon(
        "sec-limits",
        "max_running = 1\n[proxy]\nstart_timeout = \"2s\"\n[auth]\nrequire_inference_auth = true\n",
    );
    for n in ["a", "b"] {
        assert_eq!(
            api(
                "POST",
                d.port,
                &format!("/api/v1/instances/{n}"),
                Some(fake(json!({})))
            )
            .status,
            201
        );
    }
    let only_a = create_key(
        &d,
        json!({"name": "only-a", "scope": "inference", "instances": ["a"]}),
    );
    let no_start = create_key(
        &d,
        json!({"name": "no-start", "scope": "inference", "can_start": false}),
    );
    let no_evict = create_key(
        &d,
        json!({"name": "no-evict", "scope": "inference", "can_evict": false}),
    );

    // Only "a" is visible; "b" answers exactly like a model that does not exist.
    let models = as_key(&d, Some(&only_a), "GET", "/v1/models", "").json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a"]);
    let hidden = as_key(
        &d,
        Some(&only_a),
        "POST",
        "/v1/chat/completions",
        &chat("b"),
    );
    let unknown = as_key(
        &d,
        Some(&only_a),
        "POST",
        "/v1/chat/completions",
        &chat("zzz"),
    );
    assert_eq!((hidden.status, unknown.status), (404, 404));
    assert_eq!(
        hidden.json()["error"]["code"],
        unknown.json()["error"]["code"]
    );
    // Its message names what was asked for, so compare with the name swapped.
    assert_eq!(
        hidden.json()["error"]["message"]
            .as_str()
            .unwrap()
            .replace("\"b\"", "\"zzz\""),
        unknown.json()["error"]["message"]
    );

    // can_start = false: a stopped instance is not started for this key.
    let r = as_key(
        &d,
        Some(&no_start),
        "POST",
        "/v1/chat/completions",
        &chat("a"),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("can_start"), "{}", r.body);
    assert_eq!(
        get(d.port, "/api/v1/instances/a").json()["state"],
        "stopped"
    );

    // Started by a key that may: "a" runs.
    let r = as_key(
        &d,
        Some(&only_a),
        "POST",
        "/v1/chat/completions",
        &chat("a"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // can_evict = false: under max_running = 1, "b" would need "a" stopped; it is not, and
    // the request gives up after start_timeout.
    let r = as_key(
        &d,
        Some(&no_evict),
        "POST",
        "/v1/chat/completions",
        &chat("b"),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("can_evict"), "{}", r.body);
    assert_eq!(get(d.port, "/api/v1/instances/a").json()["state"], "ready");
    assert_eq!(
        get(d.port, "/api/v1/instances/b").json()["state"],
        "stopped"
    );
    for n in ["a", "b"] {
        assert_eq!(
            api("DELETE", d.port, &format!("/api/v1/instances/{n}"), None).status,
            204
        );
    }
}

#[test]
fn the_admin_socket_takes_root_and_its_group_and_refuses_others() {
    unit_test!();
    let d = daemon("sec-socket", "");
    let sock = d.socket_path();
    // 0660 root:llamactl.
    let st = d.sb.ok(&["stat", "-c", "%a %U %G", &d.socket]);
    assert_eq!(st.trim(), "660 root llamactl");

    // Root: everything, no key.
    let r = http_unix(&sock, "GET", "/api/v1/instances", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let body = fake(json!({})).to_string();
    let r = http_unix(
        &sock,
        "POST",
        "/api/v1/instances/viasock",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        http_unix(&sock, "GET", "/metrics", &[], b"")
            .unwrap()
            .status,
        200
    );

    // The CLI finds the socket by itself (from the config's [server] socket) and needs no key.
    let cfg = d.sb.root().join("run/sec-socket-client.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nsocket = \"{}\"\nport = 1\n", d.socket),
    )
    .unwrap();
    let list = d.sb.ok(&[
        LLAMACTL,
        "-c",
        "/run/sec-socket-client.toml",
        "-o",
        "json",
        "list",
    ]);
    assert!(list.contains("viasock"), "{list}");
    // Keys over the socket, with the CLI: created (printed once), listed, revoked.
    let created = d.sb.ok(&[
        LLAMACTL,
        "--socket",
        &d.socket,
        "-o",
        "json",
        "keys",
        "create",
        "viacli",
        "--scope",
        "inference",
        "--instance",
        "viasock",
        "--expires",
        "30d",
        "--no-evict",
    ]);
    let created: Value = serde_json::from_str(&created).unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    assert_eq!(created["name"], "viacli");
    assert_eq!(created["can_evict"], false);
    assert!(created["expires_at"].as_i64().unwrap() > now() + 29 * 86400);
    let table = d.sb.ok(&[LLAMACTL, "--socket", &d.socket, "keys", "list"]);
    assert!(
        table.contains("viacli") && table.contains("viasock") && !table.contains(&key[4..]),
        "{table}"
    );
    let r = http_raw(
        "GET",
        d.port,
        "/v1/models",
        &[("Authorization", &format!("Bearer {key}"))],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    d.sb.ok(&[LLAMACTL, "--socket", &d.socket, "keys", "revoke", "viacli"]);
    let r = http_raw(
        "GET",
        d.port,
        "/v1/models",
        &[("Authorization", &format!("Bearer {key}"))],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);

    // nobody: the kernel refuses the connection (0660).
    let out = d.sb.run(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        LLAMACTL,
        "--socket",
        &d.socket,
        "list",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ermission denied"), "{err}");
    // A member of the group: a management principal, no key.
    let gid = d.sb.ok(&["getent", "group", "llamactl"]);
    let gid = gid.split(':').nth(2).unwrap().trim().to_string();
    let out = d.sb.run(&[
        "setpriv",
        "--reuid=4242",
        "--regid=4242",
        &format!("--groups={gid}"),
        LLAMACTL,
        "--socket",
        &d.socket,
        "-o",
        "json",
        "list",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And were the socket opened to everyone, the daemon itself still refuses non-members.
    d.sb.ok(&["chmod", "0666", &d.socket]);
    let out = d.sb.run(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        LLAMACTL,
        "--socket",
        &d.socket,
        "list",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP 403") && err.contains("uid:65534(nobody)"),
        "{err}"
    );
    d.sb.ok(&["chmod", "0660", &d.socket]);
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/viasock", None).status,
        204
    );
    assert_nowhere(&d, &[&key]);
}

#[test]
fn browsers_cannot_be_used_against_the_api() {
    unit_test!();
    // (Lines before any table header land in the harness's [server].)
    let d = DaemonUnit::install(
        "sec-browser",
        free_port(),
        "cors_origins = [\"https://ui.example:3000\"]\nallowed_hosts = [\"llm.internal\"]\n",
        "",
    );
    d.start();
    let evil = r#"{"backend_type":"command","backend_options":{"command":["/bin/sh","-c","id; sleep 1000"]}}"#;
    // The attack from the issue: a cross-origin text/plain POST (a browser sends no key; with
    // one or without, it is refused before any handler), then a start.
    for key in [None, Some(TEST_KEY)] {
        let bearer = key.map(|k| format!("Bearer {k}"));
        let mut h = vec![
            ("Content-Type", "text/plain"),
            ("Origin", "http://evil.example"),
        ];
        if let Some(b) = &bearer {
            h.push(("Authorization", b));
        }
        let r = http_raw(
            "POST",
            d.port,
            "/api/v1/instances/evil",
            &h,
            evil.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 403, "{}", r.body);
        let r = http_raw("POST", d.port, "/api/v1/instances/evil/start", &h, b"").unwrap();
        assert_eq!(r.status, 403, "{}", r.body);
    }
    // Sec-Fetch-Site without Origin (a navigation or no-cors fetch): refused too.
    let r = http(
        "POST",
        d.port,
        "/api/v1/instances/evil",
        &[
            ("Content-Type", "text/plain"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
        evil.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 403);
    // Without any browser header, a text/plain body is still not taken (415).
    let r = http(
        "POST",
        d.port,
        "/api/v1/instances/evil",
        &[("Content-Type", "text/plain")],
        evil.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 415, "{}", r.body);
    assert_eq!(get(d.port, "/api/v1/instances/evil").status, 404);
    assert!(
        d.sb.run(&["systemctl", "status", "llamactl-evil.service"])
            .status
            .code()
            != Some(0)
    );

    // DNS rebinding: the page's own name in Host.
    let r = http_raw(
        "GET",
        d.port,
        "/v1/models",
        &[("Host", &format!("evil.example:{}", d.port))],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 421, "{}", r.body);
    let r = http_raw(
        "GET",
        d.port,
        "/metrics",
        &[("Host", "rebind.evil.example")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 421);
    for ok in ["localhost", "llm.internal:8080", "[::1]"] {
        assert_eq!(
            http_raw("GET", d.port, "/metrics", &[("Host", ok)], b"")
                .unwrap()
                .status,
            200,
            "{ok}"
        );
    }

    // A listed origin gets CORS: the preflight, then the request.
    let pre = http_raw(
        "OPTIONS",
        d.port,
        "/api/v1/instances",
        &[
            ("Origin", "https://ui.example:3000"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(pre.status, 204, "{}", pre.body);
    assert_eq!(
        pre.header("Access-Control-Allow-Origin"),
        Some("https://ui.example:3000")
    );
    assert!(pre
        .header("Access-Control-Allow-Headers")
        .unwrap()
        .contains("authorization"));
    let r = http(
        "GET",
        d.port,
        "/api/v1/instances",
        &[("Origin", "https://ui.example:3000")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("https://ui.example:3000")
    );
    // Anyone else gets none.
    let pre = http_raw(
        "OPTIONS",
        d.port,
        "/api/v1/instances",
        &[
            ("Origin", "https://other.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(pre.status, 403);
    assert!(pre.header("Access-Control-Allow-Origin").is_none());
}

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
    let journal = d.sb.ok(&["journalctl", "-o", "json", "--no-pager"]);
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
            "/api/v1/instances/two",
            Some(json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m.gguf"}}))
        )
        .status,
        201
    );
    let r = api(
        "POST",
        p,
        "/api/v1/instances/three",
        Some(json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m.gguf"}})),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("max_instances"), "{}", r.body);

    // A spec written by hand with a forbidden backend loads but does not start.
    let forged = json!({"name": "forged", "created": 1, "desired_state": "stopped",
        "options": {"backend_type": "command", "backend_options": {"command": ["/bin/sh"], "port": 31999}}});
    for n in ["two", "sec"] {
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
fn provisioned_keys_from_config_and_credential_and_reload() {
    unit_test!();
    let port = free_port();
    let cred_key = "llk_from_the_credential_file_0123456789";
    // Beside the config, in the test's scratch directory (which `install` makes afresh).
    let cred = crate::util::repo().join("target/it/sec-cred/keys.toml");
    let d = DaemonUnit::install(
        "sec-cred",
        port,
        "",
        &format!("LoadCredential=llamactl.keys:{}", cred.display()),
    );
    std::fs::write(
        &cred,
        format!("[[keys]]\nname = \"cred-ops\"\nscope = \"management\"\nkey = \"{cred_key}\"\n"),
    )
    .unwrap();
    d.start();
    let r = http_raw(
        "GET",
        port,
        "/api/v1/instances",
        &[("X-API-Key", cred_key)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let list = get(port, "/api/v1/auth/keys").json();
    let src: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["name"].as_str().unwrap().into(),
                k["source"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        src.contains(&("cred-ops".into(), "credential".into())),
        "{src:?}"
    );
    assert!(
        src.contains(&("it-admin".into(), "config".into())),
        "{src:?}"
    );
    // Provisioned keys are not the API's to revoke.
    assert_eq!(
        api("DELETE", port, "/api/v1/auth/keys/cred-ops", None).status,
        409
    );

    // A key added to the config works after a reload; one whose digest is broken fails the
    // reload and changes nothing.
    let added = "llk_added_on_reload_0123456789abcdef";
    let hash = format!("sha256:{}", {
        use sha2::Digest as _;
        sha2::Sha256::digest(added.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
    assert_eq!(
        http_raw(
            "GET",
            port,
            "/api/v1/instances",
            &[("X-API-Key", added)],
            b""
        )
        .unwrap()
        .status,
        401
    );
    d.rewrite_config(&format!(
        "[[auth.keys]]\nname = \"added\"\nscope = \"management\"\nhash = \"{hash}\"\n"
    ));
    assert!(d.systemctl("reload").status.success());
    wait_for("the reloaded key", Duration::from_secs(10), || {
        (http_raw(
            "GET",
            port,
            "/api/v1/instances",
            &[("X-API-Key", added)],
            b"",
        )
        .unwrap()
        .status
            == 200)
            .then_some(())
    });
    d.rewrite_config(
        "[[auth.keys]]\nname = \"broken\"\nscope = \"management\"\nhash = \"sha256:nothex\"\n",
    );
    assert!(d.systemctl("reload").status.success());
    d.wait_log("configuration reload failed");
    assert_eq!(
        http_raw(
            "GET",
            port,
            "/api/v1/instances",
            &[("X-API-Key", added)],
            b""
        )
        .unwrap()
        .status,
        200
    );
    assert_nowhere(&d, &[cred_key, added]);
}

/// `systemd-analyze security`'s overall exposure of a unit.
fn exposure(d: &DaemonUnit, unit: &str) -> f64 {
    let out =
        d.sb.run(&["systemd-analyze", "security", "--no-pager", unit]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for ")?
                .1
                .split_once(": ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "no exposure for {unit}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
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
