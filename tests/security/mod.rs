//! Access control against the real daemon under the private systemd. One file per part of
//! README "Security":
//! - `keys`: the key matrix over TCP (no key, bad, expired, revoked, each scope on each route
//!   group, `X-API-Key`), the loopback defaults, inference keys limited to instances and
//!   rights, keys provisioned by config and by systemd credential, reload;
//! - `socket`: the admin socket, its mode and group, root, a member and `nobody`, the CLI on it;
//! - `browser`: cross-origin simple requests, DNS rebinding, CORS for listed origins;
//! - `openai`: the official OpenAI Python client through the proxy, with and without keys;
//! - `policy`: the instance policy, secret redaction, and the hardened units' exposure with a
//!   real llama-server answering.
//!
//! Every module checks that no key reached the journal, `/metrics` or `keys.json`.

mod browser;
mod keys;
mod openai;
mod policy;
mod socket;

use crate::util::sandbox::DaemonUnit;
use crate::util::{api, fake_backend, get, http_raw};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// A started test daemon with every backend allowed (see `util::sandbox::daemon`).
pub fn daemon(test: &str, more: &str) -> DaemonUnit {
    crate::util::sandbox::daemon(test, more, "")
}

pub fn fake(extra: Value) -> Value {
    let mut v = json!({"backend_type": "command",
        "backend_options": {"command": [fake_backend().display().to_string(), "--port", "{port}", "--model", "fake"]}});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Creates a key through the API (as the test's management key); returns the key.
pub fn create_key(d: &DaemonUnit, body: Value) -> String {
    let r = api("POST", d.port, "/api/v1/auth/keys", Some(body));
    assert_eq!(r.status, 201, "{}", r.body);
    let k = r.json()["key"].as_str().unwrap().to_string();
    assert!(k.starts_with("llk_") && k.len() == 68, "{k}");
    k
}

/// A request with `key` sent as a bearer token (or none), nothing else added.
pub fn as_key(
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

pub fn chat(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        .to_string()
}

/// The key strings, as they must never appear anywhere else.
pub fn assert_nowhere(d: &DaemonUnit, keys: &[&str]) {
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

/// `systemd-analyze security`'s overall exposure of a unit.
pub fn exposure(d: &DaemonUnit, unit: &str) -> f64 {
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
