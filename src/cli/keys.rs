//! `llamactl keys create | list | revoke | generate`.

use super::client::Client;
use super::{KeysCommand, Output};
use crate::auth::keys;
use crate::config::time::{format_rfc3339, parse_rfc3339};
use anyhow::bail;
use serde_json::{json, Value};
use std::fmt::Write as _;

/// `--expires`: a duration from now, or a date.
fn expiry(text: &str, now: i64) -> anyhow::Result<i64> {
    if let Ok(d) = crate::config::parse_duration(text) {
        return Ok(now + d.as_secs() as i64);
    }
    parse_rfc3339(text).map_err(|e| {
        anyhow::anyhow!("--expires {text:?}: neither a duration such as 30d nor a date ({e})")
    })
}

fn when(v: &Value) -> String {
    v.as_i64().map_or_else(|| "-".into(), format_rfc3339)
}

pub fn table(list: &[Value]) -> String {
    let mut out = format!(
        "{:<20} {:<11} {:<10} {:<20} {:<20} {:<20} {:>9} {:>19} {:<11} {}\n",
        "NAME",
        "SCOPE",
        "SOURCE",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "REQUESTS",
        "TOKENS (IN/OUT)",
        "RIGHTS",
        "INSTANCES"
    );
    for k in list {
        let mut rights = Vec::new();
        if k["can_start"] == true {
            rights.push("start");
        }
        if k["can_evict"] == true {
            rights.push("evict");
        }
        let instances = match k["instances"].as_array() {
            Some(a) if !a.is_empty() => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            _ => "(all)".into(),
        };
        let expires = if k["expired"] == true {
            format!("{} (expired)", when(&k["expires_at"]))
        } else {
            when(&k["expires_at"])
        };
        let _ = writeln!(
            out,
            "{:<20} {:<11} {:<10} {:<20} {:<20} {:<20} {:<11} {}",
            k["name"].as_str().unwrap_or("-"),
            k["scope"].as_str().unwrap_or("-"),
            k["source"].as_str().unwrap_or("-"),
            when(&k["created_at"]),
            expires,
            when(&k["last_used_at"]),
            if rights.is_empty() {
                "-".into()
            } else {
                rights.join(",")
            },
            instances,
        );
    }
    out
}

pub async fn run(c: &Client, output: Output, cmd: &KeysCommand) -> anyhow::Result<u8> {
    let now = crate::systemd::unix_now() as i64;
    match cmd {
        KeysCommand::Generate => {
            let key = keys::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
            let hash = keys::hash_string(&key);
            match output {
                Output::Json => println!("{}", json!({"key": key, "hash": hash})),
                Output::Table => {
                    println!("key   {key}");
                    println!("hash  {hash}");
                    eprintln!("llamactl: give clients the key; put hash = \"{hash}\" in an [[auth.keys]] entry");
                }
            }
            Ok(0)
        }
        KeysCommand::Create {
            name,
            scope,
            instances,
            expires,
            no_start,
            no_evict,
        } => {
            let expires_at = expires.as_deref().map(|e| expiry(e, now)).transpose()?;
            let body = json!({
                "name": name, "scope": scope, "instances": instances,
                "expires_at": expires_at, "can_start": !no_start, "can_evict": !no_evict,
            });
            let r = c.request("POST", "/api/v1/auth/keys", Some(&body)).await?;
            if r.status != 201 {
                bail!("creating key {name:?}: {} (HTTP {})", r.message(), r.status);
            }
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&r.body)?),
                Output::Table => {
                    println!("{}", r.body["key"].as_str().unwrap_or_default());
                    eprintln!(
                        "llamactl: key {name:?} ({scope}) created; it is shown only this once"
                    );
                }
            }
            Ok(0)
        }
        KeysCommand::List => {
            let r = c.get("/api/v1/auth/keys").await?;
            if r.status != 200 {
                bail!("listing keys: {} (HTTP {})", r.message(), r.status);
            }
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&r.body)?),
                Output::Table => print!(
                    "{}",
                    table(r.body.as_array().map(Vec::as_slice).unwrap_or_default())
                ),
            }
            Ok(0)
        }
        KeysCommand::Revoke { name } => {
            let r = c
                .request("DELETE", &format!("/api/v1/auth/keys/{name}"), None)
                .await?;
            if r.status != 204 {
                bail!("revoking key {name:?}: {} (HTTP {})", r.message(), r.status);
            }
            if output == Output::Json {
                println!("{}", json!({"name": name, "revoked": true}));
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_takes_durations_and_dates() {
        assert_eq!(expiry("30d", 100).unwrap(), 100 + 30 * 86400);
        assert_eq!(expiry("2027-01-31", 0).unwrap(), 1_801_353_600);
        assert!(expiry("someday", 0).is_err());
    }

    #[test]
    fn the_table_never_needs_a_key() {
        let t = table(
            &[json!({"name": "app", "scope": "inference", "source": "api",
            "created_at": 0, "expires_at": null, "last_used_at": null, "instances": ["smol"],
            "can_start": true, "can_evict": false, "expired": false})],
        );
        assert!(
            t.contains("app") && t.contains("smol") && t.contains("start"),
            "{t}"
        );
        assert!(!t.contains("evict,"), "{t}");
    }
}
