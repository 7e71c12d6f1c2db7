//! Every event from its real action, three ways; the events filter; rotation.

use super::*;
use crate::util::sandbox::daemon;
use crate::util::{api, http_raw, repo, scratch, TEST_KEY};

#[test]
fn every_event_from_its_action_three_ways() {
    unit_test!();
    let d = daemon(
        "audit-events",
        "max_running = 1\n[proxy]\nidle_check_interval = \"1s\"\n",
        "",
    );
    let p = d.port;
    let url = format!("http://127.0.0.1:{p}");

    // key.create; auth.login and auth.logout through the CLI with a stored key.
    let r = api(
        "POST",
        p,
        "/api/v1/auth/keys",
        Some(json!({"name": "app", "scope": "inference"})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let app_key = r.json()["key"].as_str().unwrap().to_string();
    let home = scratch("audit-home");
    let (ok, out, err) = cli(&home, &["--url", &url, "login"], &format!("{TEST_KEY}\n"));
    assert!(ok, "{out}{err}");
    assert!(out.contains("as it-admin (scope management"), "{out}");
    let creds = home.join(".config/llamactl/credentials");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Later commands to that URL use the stored key.
    let (ok, out, err) = cli(&home, &["-o", "json", "keys", "list"], "");
    assert!(ok && out.contains("\"app\""), "{out}{err}");
    let (ok, out, err) = cli(&home, &["logout"], "");
    assert!(ok && out.contains("logged out"), "{out}{err}");
    assert!(!creds.exists());
    // A login with a key that is not one: refused, and an auth.failure.
    let (ok, _, err) = cli(&home, &["--url", &url, "login"], "llk_not_a_key\n");
    assert!(!ok && err.contains("HTTP 401"), "{err}");

    // auth.failure, with the source address.
    let r = http_raw(
        "GET",
        p,
        "/api/v1/instances",
        &[("Authorization", "Bearer llk_wrong")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);

    // The instance lifecycle, with an eviction and an idle stop.
    assert_eq!(
        api("POST", p, "/api/v1/instances/ea", Some(fake(json!({})))).status,
        201
    );
    assert_eq!(
        api(
            "PUT",
            p,
            "/api/v1/instances/ea",
            Some(fake(json!({"max_restarts": 1})))
        )
        .status,
        200
    );
    assert_eq!(
        api("POST", p, "/api/v1/instances/ea/start", None).status,
        200
    );
    wait_state(&d, "ea", "ready");
    assert_eq!(
        api("POST", p, "/api/v1/instances/ea/restart", None).status,
        200
    );
    wait_state(&d, "ea", "ready");
    assert_eq!(
        api(
            "POST",
            p,
            "/api/v1/instances/eb",
            Some(fake(json!({"idle_timeout": 0.02})))
        )
        .status,
        201
    );
    // Starting eb evicts ea (max_running = 1); then eb goes idle.
    assert_eq!(
        api("POST", p, "/api/v1/instances/eb/start", None).status,
        200
    );
    wait_state(&d, "eb", "ready");
    wait_state(&d, "eb", "stopped");
    assert_eq!(
        api("POST", p, "/api/v1/instances/ea/start", None).status,
        200
    );
    assert_eq!(
        api("POST", p, "/api/v1/instances/ea/stop", None).status,
        200
    );
    // A failed action is recorded as such.
    assert_eq!(
        api("POST", p, "/api/v1/instances/nope/start", None).status,
        404
    );
    for n in ["ea", "eb"] {
        assert_eq!(
            api("DELETE", p, &format!("/api/v1/instances/{n}"), None).status,
            204
        );
    }
    assert_eq!(api("DELETE", p, "/api/v1/auth/keys/app", None).status, 204);
    // config.update.
    d.rewrite_config("max_body_bytes = 2000000\n[instances]\nallowed_backends = [\"command\"]\n");
    assert!(d.systemctl("reload").status.success());

    // The catalog, as the packages install it.
    let catalog = d.sb.root().join("usr/lib/systemd/catalog/llamactl.catalog");
    std::fs::create_dir_all(catalog.parent().unwrap()).unwrap();
    std::fs::copy(repo().join("packaging/journal/llamactl.catalog"), &catalog).unwrap();
    d.sb.ok(&["journalctl", "--update-catalog"]);

    let file = wait_for("config.update in the file", Duration::from_secs(10), || {
        let f = d.audit_records();
        f.iter().any(|e| e["event"] == "config.update").then_some(f)
    });
    for (name, id) in IDS {
        // 1. The journal, by MESSAGE_ID, with the fields.
        let entries = journal(&d, id);
        let e = entries
            .last()
            .unwrap_or_else(|| panic!("no journal entry with MESSAGE_ID={id} ({name})"));
        assert_eq!(e["LLAMACTL_AUDIT_EVENT"], *name, "{e}");
        assert!(
            e["LLAMACTL_AUDIT_ACTOR"].is_string() && e["LLAMACTL_AUDIT_OUTCOME"].is_string(),
            "{e}"
        );
        if name.starts_with("instance.") {
            assert!(e["LLAMACTL_INSTANCE"].is_string(), "{name}: {e}");
        }
        // ... which `journalctl -x` explains from the catalog.
        let x = d.sb.ok(&[
            "journalctl",
            "-u",
            &d.unit,
            "-x",
            &format!("MESSAGE_ID={id}"),
            "--no-pager",
            "-n",
            "1",
        ]);
        assert!(
            x.contains(&format!("llamactl audit {name}:")),
            "{name}: no catalog text in\n{x}"
        );
        // 2. The file.
        assert!(
            file.iter().any(|r| r["event"] == *name),
            "{name} not in the file"
        );
        // 3. The API, filtered by event.
        let found = audit_api(&d, &format!("event={name}&limit=5"));
        assert!(
            !found.is_empty() && found.iter().all(|r| r["event"] == *name),
            "{name}: {found:?}"
        );
    }

    // Who did what, precisely.
    let del = audit_api(&d, "event=instance.delete&instance=ea");
    assert_eq!(del.len(), 1, "{del:?}");
    assert_eq!(del[0]["actor"], "key:it-admin");
    assert!(
        del[0]["source"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{}",
        del[0]
    );
    assert!(
        del[0]["time"].as_str().unwrap().ends_with('Z')
            && del[0]["time"].as_str().unwrap().len() == 27
    );
    assert!(del[0]["request_id"].is_string());
    let evict = audit_api(&d, "event=instance.evict");
    assert_eq!(
        (evict[0]["actor"].as_str(), evict[0]["instance"].as_str()),
        (Some("llamactld"), Some("ea"))
    );
    assert_eq!(
        audit_api(&d, "event=instance.idle_stop")[0]["instance"],
        "eb"
    );
    let failures = audit_api(&d, "event=auth.failure");
    assert!(
        failures
            .iter()
            .any(|f| f["source"].as_str().unwrap().starts_with("127.0.0.1:")
                && f["reason"] == "invalid API key"),
        "{failures:?}"
    );
    let failed_start = audit_api(&d, "event=instance.start&outcome=failure");
    assert_eq!(failed_start[0]["instance"], "nope");
    assert!(
        failed_start[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no instance named"),
        "{failed_start:?}"
    );
    let login = audit_api(&d, "event=auth.login&outcome=success");
    assert_eq!(login[0]["actor"], "key:it-admin");
    let reload = audit_api(&d, "event=config.update");
    let changed: Vec<&str> = reload[0]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(changed.contains(&"server.max_body_bytes"), "{changed:?}");
    // Filters combine; newest first.
    let by_actor = audit_api(&d, "actor=llamactld&limit=100");
    assert!(by_actor.iter().all(|r| r["actor"] == "llamactld"));
    let all = audit_api(&d, "limit=1000");
    let times: Vec<&str> = all.iter().filter_map(|r| r["time"].as_str()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "not newest first");
    assert!(!audit_api(&d, "since=2000-01-01&until=2000-01-02")
        .iter()
        .any(|_| true));

    // `llamactl audit` (over the socket here: root needs no key).
    let out = d.sb.ok(&[
        LLAMACTL, "--socket", &d.socket, "audit", "--event", "instance", "--since", "1h", "-n",
        "50",
    ]);
    assert!(
        out.contains("instance.evict") && out.contains("instance.idle_stop"),
        "{out}"
    );
    assert!(!out.contains("auth.failure"), "{out}");

    // No key anywhere.
    let everything = format!(
        "{}{}{}",
        d.sb.ok(&["journalctl", "-o", "json", "--no-pager"]),
        std::fs::read_to_string(d.sb.root().join(d.audit_log.trim_start_matches('/'))).unwrap(),
        get(p, "/api/v1/audit?limit=10000").body
    );
    for k in [&app_key[4..], &TEST_KEY[4..]] {
        assert!(!everything.contains(k), "a key reached the audit trail");
    }
}

#[test]
fn the_events_setting_filters() {
    unit_test!();
    let d = daemon(
        "audit-filter",
        "[audit]\nevents = [\"instance.create\"]\n",
        "",
    );
    assert_eq!(
        api("POST", d.port, "/api/v1/instances/f", Some(fake(json!({})))).status,
        201
    );
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/f", None).status,
        204
    );
    let events: Vec<Value> = d
        .audit_records()
        .iter()
        .map(|r| r["event"].clone())
        .collect();
    assert_eq!(events, [json!("instance.create")]);
    assert!(journal(&d, "c6dbb9ca97634d72b3a41fee6b9a68c6").is_empty());
    assert_eq!(journal(&d, "bbecccad976245c2abfb65c9d0c4960c").len(), 1);
}

#[test]
fn sighup_reopens_a_rotated_file() {
    unit_test!();
    let d = daemon("audit-rotate", "", "");
    assert_eq!(
        api(
            "POST",
            d.port,
            "/api/v1/instances/r1",
            Some(fake(json!({})))
        )
        .status,
        201
    );
    let rotated = format!("{}.1", d.audit_log);
    d.sb.ok(&["mv", &d.audit_log, &rotated]);
    assert!(d.systemctl("reload").status.success());
    wait_for(
        "the reload's record in the new file",
        Duration::from_secs(10),
        || {
            d.audit_records()
                .iter()
                .any(|r| r["event"] == "config.update")
                .then_some(())
        },
    );
    assert_eq!(
        api(
            "POST",
            d.port,
            "/api/v1/instances/r2",
            Some(fake(json!({})))
        )
        .status,
        201
    );
    let new: Vec<Value> = d
        .audit_records()
        .iter()
        .map(|r| r["event"].clone())
        .collect();
    assert_eq!(new, [json!("config.update"), json!("instance.create")]);
    let old = std::fs::read_to_string(d.sb.root().join(rotated.trim_start_matches('/'))).unwrap();
    assert_eq!(old.lines().count(), 1, "{old}");
    // The packages' logrotate snippet does the same.
    let snippet = std::fs::read_to_string(repo().join("packaging/logrotate/llamactl")).unwrap();
    assert!(
        snippet.contains("/var/log/llamactl/audit.log")
            && snippet.contains("systemctl reload llamactl"),
        "{snippet}"
    );
    for n in ["r1", "r2"] {
        assert_eq!(
            api("DELETE", d.port, &format!("/api/v1/instances/{n}"), None).status,
            204
        );
    }
}

#[test]
fn llamactl_audit_follows_new_records() {
    unit_test!();
    let d = daemon("audit-follow", "", "");
    let url = format!("http://127.0.0.1:{}", d.port);
    let mut child = crate::util::llamactl()
        .args(["--url", &url, "audit", "-f", "-n", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Records made after it started appear, each once.
    std::thread::sleep(Duration::from_millis(1500));
    for n in ["fa", "fb"] {
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
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !(seen
        .iter()
        .any(|l: &String| l.contains("instance.create") && l.contains(" fb")))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("llamactl audit -f did not show the new records: {seen:?}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let creates: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains("instance.create"))
        .collect();
    assert_eq!(creates.len(), 2, "{seen:?}");
    for n in ["fa", "fb"] {
        assert_eq!(
            api("DELETE", d.port, &format!("/api/v1/instances/{n}"), None).status,
            204
        );
    }
}
