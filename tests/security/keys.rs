//! API keys over TCP: scopes, expiry, revocation, instance limits and rights, provisioning.

use super::*;
use crate::util::{free_port, wait_for, TEST_KEY};
use std::time::Duration;

#[test]
fn the_key_matrix_over_tcp() {
    unit_test!();
    let d = daemon(
        "sec-matrix",
        "[auth]\nrequire_inference_auth = true\nrequire_monitoring_auth = true\n",
    );
    assert_eq!(
        api(
            "POST",
            d.port,
            "/api/v1/instances/kmx",
            Some(fake(json!({})))
        )
        .status,
        201
    );
    let mgmt = create_key(&d, json!({"name": "ops", "scope": "management"}));
    let inf = create_key(&d, json!({"name": "app", "scope": "inference"}));
    let mon = create_key(&d, json!({"name": "prom", "scope": "monitoring"}));
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
            chat("kmx"),
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
    let r = as_key(&d, None, "POST", "/v1/chat/completions", &chat("kmx"));
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
    // Made just before it is used: the route matrix above takes seconds on a slow machine
    // (the VM test's emulated guest), longer than the key lives.
    let soon = create_key(
        &d,
        json!({"name": "short", "scope": "management", "expires_at": now() + 3}),
    );
    assert_eq!(
        as_key(&d, Some(&soon), "GET", "/api/v1/instances", "").status,
        200
    );
    let expired = wait_for("the short key to expire", Duration::from_secs(15), || {
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
        api("DELETE", d.port, "/api/v1/instances/kmx", None).status,
        204
    );
}

#[test]
fn default_config_leaves_inference_and_monitoring_open_on_loopback() {
    unit_test!();
    let d = daemon("sec-defaults", "");
    assert_eq!(
        api(
            "POST",
            d.port,
            "/api/v1/instances/kdef",
            Some(fake(json!({})))
        )
        .status,
        201
    );
    // Management needs a key over TCP ...
    assert_eq!(as_key(&d, None, "GET", "/api/v1/instances", "").status, 401);
    // ... the rest does not; an OpenAI client's placeholder key is ignored, a wrong llamactl
    // key is not.
    assert_eq!(as_key(&d, None, "GET", "/metrics", "").status, 200);
    assert_eq!(as_key(&d, None, "GET", "/api/health", "").status, 200);
    assert_eq!(
        as_key(&d, None, "POST", "/v1/chat/completions", &chat("kdef")).status,
        200
    );
    let r = as_key(
        &d,
        Some("sk-no-key-required"),
        "POST",
        "/v1/chat/completions",
        &chat("kdef"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        as_key(&d, Some("llk_mistyped"), "GET", "/v1/models", "").status,
        401
    );
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/kdef", None).status,
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
    for n in ["kla", "klb"] {
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
        json!({"name": "only-a", "scope": "inference", "instances": ["kla"]}),
    );
    let no_start = create_key(
        &d,
        json!({"name": "no-start", "scope": "inference", "can_start": false}),
    );
    let no_evict = create_key(
        &d,
        json!({"name": "no-evict", "scope": "inference", "can_evict": false}),
    );

    // Only "kla" is visible; "klb" answers exactly like a model that does not exist.
    let models = as_key(&d, Some(&only_a), "GET", "/v1/models", "").json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["kla"]);
    let hidden = as_key(
        &d,
        Some(&only_a),
        "POST",
        "/v1/chat/completions",
        &chat("klb"),
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
            .replace("\"klb\"", "\"zzz\""),
        unknown.json()["error"]["message"]
    );

    // can_start = false: a stopped instance is not started for this key.
    let r = as_key(
        &d,
        Some(&no_start),
        "POST",
        "/v1/chat/completions",
        &chat("kla"),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("can_start"), "{}", r.body);
    assert_eq!(
        get(d.port, "/api/v1/instances/kla").json()["state"],
        "stopped"
    );

    // Started by a key that may: "kla" runs. start_timeout is short (the can_evict case below
    // waits it out), and on a slow host (the emulated vm-test guest) a start can outlast it: the
    // answer is then 503 "retry later" while the start goes on, so retry as a client would.
    let r = as_key_retrying(&d, &only_a, &chat("kla"));
    assert_eq!(r.status, 200, "{}", r.body);
    // can_evict = false: under max_running = 1, "klb" would need "kla" stopped; it is not, and
    // the request gives up after start_timeout.
    let r = as_key(
        &d,
        Some(&no_evict),
        "POST",
        "/v1/chat/completions",
        &chat("klb"),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("can_evict"), "{}", r.body);
    assert_eq!(
        get(d.port, "/api/v1/instances/kla").json()["state"],
        "ready"
    );
    assert_eq!(
        get(d.port, "/api/v1/instances/klb").json()["state"],
        "stopped"
    );
    for n in ["kla", "klb"] {
        assert_eq!(
            api("DELETE", d.port, &format!("/api/v1/instances/{n}"), None).status,
            204
        );
    }
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
    let status_with = |key: &str| {
        http_raw("GET", port, "/api/v1/instances", &[("X-API-Key", key)], b"")
            .unwrap()
            .status
    };
    assert_eq!(status_with(cred_key), 200);
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
    let hash = crate::util::key_hash(added);
    assert_eq!(status_with(added), 401);
    d.rewrite_config(&format!(
        "[[auth.keys]]\nname = \"added\"\nscope = \"management\"\nhash = \"{hash}\"\n"
    ));
    assert!(d.systemctl("reload").status.success());
    wait_for("the reloaded key", Duration::from_secs(10), || {
        (status_with(added) == 200).then_some(())
    });
    d.rewrite_config(
        "[[auth.keys]]\nname = \"broken\"\nscope = \"management\"\nhash = \"sha256:nothex\"\n",
    );
    assert!(d.systemctl("reload").status.success());
    d.wait_log("configuration reload failed");
    assert_eq!(status_with(added), 200);
    assert_nowhere(&d, &[cred_key, added]);
}

/// A chat request as `key`, repeated while the answer is the proxy's 503 "not ready within
/// start_timeout; retry later" (for at most 60 s); returns the first other answer.
fn as_key_retrying(d: &DaemonUnit, key: &str, body: &str) -> crate::util::Reply {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = as_key(d, Some(key), "POST", "/v1/chat/completions", body);
        let retry_later = r.status == 503 && r.body.contains("retry later");
        if !retry_later || std::time::Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
