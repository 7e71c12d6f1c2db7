//! `llamactl audit`: the audit trail from `GET /api/v1/audit`, oldest first like a log, and
//! `-f` to follow it (polling once a second for what is newer than the last record shown).

use super::client::Client;
use super::{AuditArgs, Output};
use anyhow::bail;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

/// The query string for the filters (values percent-encoded).
fn query(a: &AuditArgs, since: Option<&str>, limit: usize) -> String {
    let mut q = vec![format!("limit={limit}")];
    let mut add = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            q.push(format!("{k}={}", encode(v)));
        }
    };
    add("since", since.or(a.since.as_deref()));
    add("until", a.until.as_deref());
    add("event", a.event.as_deref());
    add("actor", a.actor.as_deref());
    add("instance", a.instance.as_deref());
    add("outcome", a.outcome.as_deref());
    format!("/api/v1/audit?{}", q.join("&"))
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One record as a line: time, event, outcome, actor, source, target, and why it failed.
pub fn line(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_string();
    let mut out = format!(
        "{} {:<18} {:<7} {:<24} {:<21} {}",
        s("time"),
        s("event"),
        s("outcome"),
        s("actor"),
        s("source"),
        s("target")
    );
    if let Some(r) = e["reason"].as_str() {
        out.push_str(&format!("  ({r})"));
    }
    if let Some(d) = e["detail"].as_str() {
        out.push_str(&format!("  [{d}]"));
    }
    if let Some(c) = e["changed"].as_array().filter(|c| !c.is_empty()) {
        let keys: Vec<&str> = c.iter().filter_map(Value::as_str).collect();
        out.push_str(&format!("  changed: {}", keys.join(", ")));
    }
    out
}

fn print(output: Output, e: &Value) {
    match output {
        Output::Json => println!("{e}"),
        Output::Table => println!("{}", line(e)),
    }
}

/// A record's identity, to print each once when following.
fn id(e: &Value) -> String {
    format!(
        "{}|{}|{}|{}",
        e["time"], e["event"], e["actor"], e["request_id"]
    )
}

pub async fn run(c: &Client, output: Output, a: &AuditArgs) -> anyhow::Result<u8> {
    let fetch = |since: Option<String>, limit: usize| async move {
        let r = c.get(&query(a, since.as_deref(), limit)).await?;
        if r.status != 200 {
            bail!(
                "reading the audit trail: {} (HTTP {})",
                r.message(),
                r.status
            );
        }
        let mut events: Vec<Value> = r.body["events"].as_array().cloned().unwrap_or_default();
        events.reverse();
        Ok::<_, anyhow::Error>(events)
    };
    let events = fetch(None, a.lines.max(1)).await?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut last = None;
    for e in &events {
        print(output, e);
        seen.insert(id(e));
        last = e["time"].as_str().map(str::to_string);
    }
    if !a.follow {
        return Ok(0);
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let since = last.clone().or_else(|| Some("1s".into()));
        for e in fetch(since, 10_000).await? {
            if seen.insert(id(&e)) {
                print(output, &e);
                last = e["time"].as_str().map(str::to_string);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_become_an_encoded_query() {
        let a = AuditArgs {
            since: Some("1h".into()),
            until: None,
            event: Some("instance".into()),
            actor: Some("uid:0(root)".into()),
            instance: None,
            outcome: None,
            lines: 5,
            follow: false,
        };
        assert_eq!(
            query(&a, None, 5),
            "/api/v1/audit?limit=5&since=1h&event=instance&actor=uid%3A0%28root%29"
        );
        assert!(query(&a, Some("2026-12-02T00:00:00.000001Z"), 9)
            .contains("since=2026-12-02T00%3A00%3A00.000001Z"));
    }

    #[test]
    fn a_record_reads_as_one_line() {
        let l = line(
            &json!({"time": "2026-12-02T22:00:00.000001Z", "event": "instance.delete",
            "outcome": "failure", "actor": "key:ops", "source": "127.0.0.1:5000", "target": "smol",
            "reason": "no instance named \"smol\"", "detail": null, "changed": null}),
        );
        assert!(
            l.starts_with("2026-12-02T22:00:00.000001Z instance.delete"),
            "{l}"
        );
        assert!(
            l.contains("key:ops") && l.ends_with("(no instance named \"smol\")"),
            "{l}"
        );
    }
}
