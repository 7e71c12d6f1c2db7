//! Rate limits and usage per key.

use super::*;
use crate::util::sandbox::daemon;
use crate::util::{api, http, http_raw, http_unix, sample};

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
        api("POST", p, "/api/v1/instances/um", Some(fake(json!({})))).status,
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
        let body = json!({"model": "um", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}).to_string();
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
            "llamactl_instance_tokens_total{{instance_name=\"um\",type=\"{t}\"}}"
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
    assert_eq!(api("DELETE", p, "/api/v1/instances/um", None).status, 204);
}
