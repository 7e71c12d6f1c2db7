//! The audit trail and rate limits against the real daemon under the private systemd: every
//! event from its real action, found in the journal (by MESSAGE_ID, with the catalog's text
//! under `journalctl -x`), the file and the API; `[audit] events`; a rotated file reopened on
//! SIGHUP; an unwritable log directory refusing mutations; rate limits and their metrics; usage
//! per key; `llamactl audit`, `login` and `logout`.

use crate::util::sandbox::{daemon, DaemonUnit};
use crate::util::{
    api, fake_backend, get, http, http_raw, http_unix, repo, sample, scratch, wait_for, LLAMACTL,
    TEST_KEY,
};
use serde_json::{json, Value};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The MESSAGE_IDs, as src/audit/event.rs fixes them (written out again here on purpose: the
/// test holds the code to its published ids).
const IDS: &[(&str, &str)] = &[
    ("auth.login", "65114fc8af854286828c8a7910755058"),
    ("auth.logout", "97437fcb3b8f458f866810fb92b35ebb"),
    ("auth.failure", "cbe23c8968b74443a161f85a6cfe3f89"),
    ("key.create", "297a02b39b1746278b6feb4ae80e88c2"),
    ("key.revoke", "f167ae20bef541e5911aa0c5f13c11ec"),
    ("instance.create", "bbecccad976245c2abfb65c9d0c4960c"),
    ("instance.update", "077c24a7c6134f90987007eaefe69f02"),
    ("instance.delete", "c6dbb9ca97634d72b3a41fee6b9a68c6"),
    ("instance.start", "bd9f929d0ab34f099d63674ba6d8ffa2"),
    ("instance.stop", "d2d4311352b14d318afe2d47a8a803d4"),
    ("instance.restart", "4288875a00c442f1a39ccf53a59127c3"),
    ("instance.evict", "915d007c87554b2c8cc939ebe81f20a4"),
    ("instance.idle_stop", "11a940c73805427eac82126afab1ad64"),
    ("config.update", "377b6203103e438c901bdeedb50bfc96"),
];

fn fake(extra: Value) -> Value {
    let mut v = json!({"backend_type": "command",
        "backend_options": {"command": [fake_backend().display().to_string(), "--port", "{port}", "--model", "fake"]}});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

fn state(d: &DaemonUnit, name: &str) -> Value {
    get(d.port, &format!("/api/v1/instances/{name}")).json()["state"].clone()
}

fn wait_state(d: &DaemonUnit, name: &str, want: &str) {
    wait_for(&format!("{name} {want}"), Duration::from_secs(30), || {
        (state(d, name) == want).then_some(())
    });
}

/// This daemon's journal entries of one MESSAGE_ID, as JSON.
fn journal(d: &DaemonUnit, id: &str) -> Vec<Value> {
    d.sb.ok(&[
        "journalctl",
        "-u",
        &d.unit,
        &format!("MESSAGE_ID={id}"),
        "-o",
        "json",
        "--no-pager",
    ])
    .lines()
    .filter_map(|l| serde_json::from_str(l).ok())
    .collect()
}

fn audit_api(d: &DaemonUnit, query: &str) -> Vec<Value> {
    let r = get(d.port, &format!("/api/v1/audit?{query}"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["events"].as_array().cloned().unwrap_or_default()
}

/// `llamactl` with `HOME` at a scratch directory and the given stdin.
fn cli(home: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(LLAMACTL)
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("LLAMACTL_API_KEY")
        .env_remove("LLAMACTL_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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
        api("POST", p, "/api/v1/instances/a", Some(fake(json!({})))).status,
        201
    );
    assert_eq!(
        api(
            "PUT",
            p,
            "/api/v1/instances/a",
            Some(fake(json!({"max_restarts": 1})))
        )
        .status,
        200
    );
    assert_eq!(
        api("POST", p, "/api/v1/instances/a/start", None).status,
        200
    );
    wait_state(&d, "a", "ready");
    assert_eq!(
        api("POST", p, "/api/v1/instances/a/restart", None).status,
        200
    );
    wait_state(&d, "a", "ready");
    assert_eq!(
        api(
            "POST",
            p,
            "/api/v1/instances/b",
            Some(fake(json!({"idle_timeout": 0.02})))
        )
        .status,
        201
    );
    // Starting b evicts a (max_running = 1); then b goes idle.
    assert_eq!(
        api("POST", p, "/api/v1/instances/b/start", None).status,
        200
    );
    wait_state(&d, "b", "ready");
    wait_state(&d, "b", "stopped");
    assert_eq!(
        api("POST", p, "/api/v1/instances/a/start", None).status,
        200
    );
    assert_eq!(api("POST", p, "/api/v1/instances/a/stop", None).status, 200);
    // A failed action is recorded as such.
    assert_eq!(
        api("POST", p, "/api/v1/instances/nope/start", None).status,
        404
    );
    for n in ["a", "b"] {
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
    let del = audit_api(&d, "event=instance.delete&instance=a");
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
        (Some("llamactld"), Some("a"))
    );
    assert_eq!(
        audit_api(&d, "event=instance.idle_stop")[0]["instance"],
        "b"
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
fn an_unwritable_trail_refuses_mutations_and_loses_nothing() {
    unit_test!();
    let d = daemon("audit-readonly", "", "");
    let p = d.port;
    assert_eq!(
        api("POST", p, "/api/v1/instances/x", Some(fake(json!({})))).status,
        201
    );
    let dir = d.audit_log.rsplit_once('/').unwrap().0.to_string();
    // The file goes away and its directory becomes read-only: llamactld (root without
    // capabilities, as the shipped unit runs it) cannot write a record.
    d.sb.ok(&["rm", &d.audit_log]);
    d.sb.ok(&["chmod", "0555", &dir]);
    let r = api("POST", p, "/api/v1/instances/x/start", None);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("Retry-After").is_some());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("audit trail"),
        "{}",
        r.body
    );
    assert_eq!(state(&d, "x"), "stopped");
    assert_eq!(api("DELETE", p, "/api/v1/instances/x", None).status, 503);
    assert_eq!(get(p, "/api/v1/instances/x").status, 200);
    let health = get(p, "/api/system/health").json();
    let check = health["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "audit")
        .unwrap()
        .clone();
    assert_eq!(check["status"], "fail", "{check}");
    // Events that are never refused wait in memory...
    let r = http_raw(
        "GET",
        p,
        "/api/v1/instances",
        &[("X-API-Key", "llk_wrong_while_down")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    let m = get(p, "/metrics").body;
    assert!(
        sample(
            &m,
            "llamactl_audit_write_failures_total{destination=\"file\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert!(sample(&m, "llamactl_audit_pending_events").unwrap_or(0.0) >= 1.0);
    // ... and are written when the directory is writable again; mutations run again.
    d.sb.ok(&["chmod", "0755", &dir]);
    wait_for(
        "the waiting record in the file",
        Duration::from_secs(10),
        || {
            d.audit_records()
                .iter()
                .any(|r| r["event"] == "auth.failure")
                .then_some(())
        },
    );
    assert_eq!(
        api("POST", p, "/api/v1/instances/x/start", None).status,
        200
    );
    assert_eq!(api("DELETE", p, "/api/v1/instances/x", None).status, 204);
    let events: Vec<String> = d
        .audit_records()
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        events,
        ["auth.failure", "instance.start", "instance.delete"],
        "{events:?}"
    );
}

#[test]
fn rate_limits_answer_429_and_show_in_metrics() {
    unit_test!();
    let d = daemon(
        "audit-limits",
        "[rate_limit.management]\nrequests_per_second = 0.2\nburst = 3\n[rate_limit.auth]\nrequests_per_second = 0.1\nburst = 2\n",
        "",
    );
    let p = d.port;
    for _ in 0..3 {
        assert_eq!(get(p, "/api/v1/instances").status, 200);
    }
    let r = get(p, "/api/v1/instances");
    assert_eq!(r.status, 429, "{}", r.body);
    let wait: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=5).contains(&wait), "{wait}");
    assert_eq!(r.json()["error"]["type"], "rate_limited");
    // The socket is exempt.
    for _ in 0..10 {
        assert_eq!(
            http_unix(&d.socket_path(), "GET", "/api/v1/instances", &[], b"")
                .unwrap()
                .status,
            200
        );
    }
    // Wrong keys spend the address's auth tokens; then no key is even looked at.
    for _ in 0..2 {
        let r = http_raw("GET", p, "/metrics", &[("X-API-Key", "llk_guess")], b"").unwrap();
        assert_eq!(r.status, 401);
    }
    let r = http_raw("GET", p, "/metrics", &[("X-API-Key", "llk_guess")], b"").unwrap();
    assert_eq!(r.status, 429);
    // `curl /metrics | grep rate_limit` (without a key: monitoring is open).
    let m = http_raw("GET", p, "/metrics", &[], b"").unwrap().body;
    let lines: Vec<&str> = m.lines().filter(|l| l.contains("rate_limit")).collect();
    assert!(!lines.is_empty());
    let v = |s: &str| sample(&m, s).unwrap_or(0.0);
    assert!(v("llamactl_rate_limit_requests_total{group=\"management\",scope=\"key\",outcome=\"limited\"}") >= 1.0, "{lines:?}");
    assert!(v("llamactl_rate_limit_requests_total{group=\"management\",scope=\"key\",outcome=\"allowed\"}") >= 3.0, "{lines:?}");
    assert!(
        v("llamactl_rate_limit_hits_total{group=\"auth\",scope=\"address\"}") >= 1.0,
        "{lines:?}"
    );
    assert!(
        v("llamactl_auth_requests_total{group=\"monitoring\",outcome=\"failure\"}") >= 2.0,
        "{m}"
    );
    assert!(
        v("llamactl_auth_requests_total{group=\"management\",outcome=\"success\"}") >= 3.0,
        "{m}"
    );
    // Labels never carry an address or a key.
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("127.0.0.1") || l.contains("llk_")),
        "{lines:?}"
    );
}

#[test]
fn usage_per_key_matches_the_proxy() {
    unit_test!();
    let d = daemon("audit-usage", "", "");
    let p = d.port;
    assert_eq!(
        api("POST", p, "/api/v1/instances/m", Some(fake(json!({})))).status,
        201
    );
    let r = api(
        "POST",
        p,
        "/api/v1/auth/keys",
        Some(json!({"name": "acct", "scope": "inference"})),
    );
    let key = r.json()["key"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {key}");
    for stream in [false, false, true] {
        let body = json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}).to_string();
        let r = http(
            "POST",
            p,
            "/v1/chat/completions",
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let m = wait_for("the token counts", Duration::from_secs(10), || {
        let m = get(p, "/metrics").body;
        (sample(
            &m,
            "llamactl_key_tokens_total{key_name=\"acct\",type=\"completion\"}",
        )
        .is_some())
        .then_some(m)
    });
    let v = |s: &str| sample(&m, s).unwrap_or(-1.0);
    for t in ["prompt", "completion"] {
        let by_key = v(&format!(
            "llamactl_key_tokens_total{{key_name=\"acct\",type=\"{t}\"}}"
        ));
        let by_instance = v(&format!(
            "llamactl_instance_tokens_total{{instance_name=\"m\",type=\"{t}\"}}"
        ));
        assert!(
            by_key > 0.0 && by_key == by_instance,
            "{t}: key {by_key}, instance {by_instance}"
        );
    }
    assert_eq!(
        v("llamactl_key_requests_total{key_name=\"acct\",group=\"inference\"}"),
        3.0
    );
    let listed = get(p, "/api/v1/auth/keys").json();
    let acct = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "acct")
        .unwrap()
        .clone();
    assert_eq!(acct["requests"], 3);
    assert_eq!(
        acct["prompt_tokens"].as_f64(),
        Some(v(
            "llamactl_key_tokens_total{key_name=\"acct\",type=\"prompt\"}"
        ))
    );
    // keys list shows them; a revoked key's series go away.
    let out = crate::util::run(crate::util::llamactl().args([
        "--url",
        &format!("http://127.0.0.1:{p}"),
        "keys",
        "list",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("acct") && text.contains("REQUESTS"), "{text}");
    assert_eq!(api("DELETE", p, "/api/v1/auth/keys/acct", None).status, 204);
    assert!(!get(p, "/metrics").body.contains("key_name=\"acct\""));
    assert_eq!(api("DELETE", p, "/api/v1/instances/m", None).status, 204);
}

#[test]
fn a_full_disk_refuses_mutations() {
    unit_test!();
    // The daemon's logs directory on a tiny file system of its own, nearly no room left.
    let d = DaemonUnit::install(
        "audit-full",
        crate::util::free_port(),
        "[instances]\nallowed_backends = [\"command\"]\n",
        "",
    );
    let dir = d.audit_log.rsplit_once('/').unwrap().0.to_string();
    d.sb.ok(&["mkdir", "-p", &dir]);
    d.sb.ok(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=256k,mode=0755",
        "tmpfs",
        &dir,
    ]);
    d.start();
    let r = api(
        "POST",
        d.port,
        "/api/v1/instances/full",
        Some(fake(json!({}))),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("no room"), "{}", r.body);
    assert_eq!(get(d.port, "/api/v1/instances/full").status, 404);
    let _ = d.systemctl("stop");
    d.sb.ok(&["umount", &dir]);
}
