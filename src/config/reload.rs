//! What a SIGHUP reload does with each setting: applied at once (new requests and new instance
//! starts use it) or only on restart (bound at start: listeners, outputs, the bus). One table,
//! checked by a test against the config types, so a new key cannot be left out of it.

use super::Config;

/// When a changed setting takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// On SIGHUP.
    Live,
    /// On the next start of the daemon.
    Restart,
}

use Reload::{Live, Restart};

/// Each section or key (the longest match wins) and when it takes effect.
pub const RELOAD: &[(&str, Reload)] = &[
    ("server", Restart),
    ("server.allowed_hosts", Live),
    ("server.cors_origins", Live),
    ("monitoring", Live),
    ("monitoring.collection_interval", Restart),
    ("monitoring.prometheus.path", Restart),
    ("logging", Restart),
    ("logging.level", Live),
    ("audit", Live),
    // Parsed and validated, not acted on yet (a warning says so): taken at start when they are.
    ("telemetry", Restart),
    ("debug", Restart),
    ("profiling", Restart),
    ("systemd", Restart),
    // The supervisor's settings are replaced whole; new starts and new requests use them.
    ("instances", Live),
    ("backends", Live),
    ("proxy", Live),
    ("proxy.max_buffered_bytes", Restart),
    ("auth", Live),
    ("auth.socket_group", Restart),
    ("rate_limit", Live),
];

/// When a dotted key (`server.port`) takes effect. Unknown keys are taken to need a restart.
pub fn reload_of(key: &str) -> Reload {
    RELOAD
        .iter()
        .filter(|(k, _)| key == *k || key.starts_with(&format!("{k}.")))
        .max_by_key(|(k, _)| k.len())
        .map_or(Restart, |(_, r)| *r)
}

/// The changed keys that only take effect on restart.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    changed_keys(old, new)
        .into_iter()
        .filter(|k| reload_of(k) == Restart)
        .collect()
}

/// The dotted keys whose values differ (for reloads and `config.update`). Secrets serialise as
/// `<redacted>`, so a change to nothing but a secret is named `(a secret)`.
pub fn changed_keys<T: serde::Serialize + PartialEq>(old: &T, new: &T) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value::Object;
        match (a, b) {
            (Object(x), Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    let null = serde_json::Value::Null;
                    walk(
                        &p,
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return vec!["(the config)".into()];
    };
    let mut out = Vec::new();
    walk("", &a, &b, &mut out);
    if out.is_empty() && old != new {
        out.push("(a secret)".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leaf values of a serialised config by dotted key; tables with no entries and lists are
    /// leaves.
    fn leaves(v: &serde_json::Value) -> std::collections::BTreeMap<String, &serde_json::Value> {
        fn walk<'a>(
            prefix: &str,
            v: &'a serde_json::Value,
            out: &mut std::collections::BTreeMap<String, &'a serde_json::Value>,
        ) {
            match v {
                serde_json::Value::Object(m) if !m.is_empty() => {
                    for (k, x) in m {
                        let p = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&p, x, out);
                    }
                }
                _ => {
                    out.insert(prefix.to_string(), v);
                }
            }
        }
        let mut out = std::collections::BTreeMap::new();
        walk("", v, &mut out);
        out
    }

    /// Every key of the config types is in the table as itself or under a section: a key added
    /// to a section without a thought about reloads gets the section's behaviour, and a new
    /// section fails here.
    #[test]
    fn every_key_is_classified() {
        let v = serde_json::to_value(Config::default()).unwrap();
        for key in leaves(&v).keys() {
            assert!(
                RELOAD
                    .iter()
                    .any(|(k, _)| key == k || key.starts_with(&format!("{k}."))),
                "{key} is in no entry of RELOAD"
            );
        }
        for (k, _) in RELOAD {
            assert!(
                leaves(&v)
                    .keys()
                    .any(|key| key == k || key.starts_with(&format!("{k}."))),
                "RELOAD names {k}, which the config does not have"
            );
        }
    }

    #[test]
    fn changed_keys_name_what_changed() {
        let old = crate::config::Config::default();
        let mut new = old.clone();
        assert!(changed_keys(&old, &new).is_empty());
        new.server.port = 9000;
        new.instances.max_running = 2;
        new.rate_limit.inference.requests_per_second = Some(5.0);
        assert_eq!(
            changed_keys(&old, &new),
            [
                "instances.max_running",
                "rate_limit.inference.requests_per_second",
                "server.port"
            ]
        );
        let mut secret = old.clone();
        secret
            .telemetry
            .otlp
            .headers
            .insert("authorization".into(), crate::config::Secret::new("x"));
        let mut secret2 = secret.clone();
        secret2
            .telemetry
            .otlp
            .headers
            .insert("authorization".into(), crate::config::Secret::new("y"));
        assert_eq!(changed_keys(&secret, &secret2), ["(a secret)"]);
    }

    #[test]
    fn restart_only_keys_are_named() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(restart_only_changes(&old, &new).is_empty());
        new.server.port = 9000;
        new.server.allowed_hosts = vec!["llm.internal".into()];
        new.logging.level = crate::config::LogLevel::Debug;
        new.systemd.slice = "other.slice".into();
        new.instances.max_running = 2;
        new.backends.llama_cpp.command = Some("/opt/llama-server".into());
        new.proxy.start_timeout = crate::config::HumanDuration::secs(5);
        assert_eq!(
            restart_only_changes(&old, &new),
            ["server.port", "systemd.slice"]
        );
        assert_eq!(
            changed_keys(&old, &new),
            [
                "backends.llama_cpp.command",
                "instances.max_running",
                "logging.level",
                "proxy.start_timeout",
                "server.allowed_hosts",
                "server.port",
                "systemd.slice"
            ]
        );
        assert_eq!(reload_of("nothing.here"), Restart);
    }
}
