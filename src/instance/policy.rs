//! What an instance spec may ask for, so that a management key is not a root shell: the backends
//! the operator allows (`command` runs any program, so it is off unless listed), no environment
//! that changes what code a backend loads (`LD_PRELOAD`, `PYTHONPATH`, ...), and size limits.
//! Checked when a spec comes in (create, update) and again before every start, so a hand-edited
//! spec file or a tightened config cannot get around it.
//!
//! Also here: secrets in specs (every environment value; options named like `api_key`,
//! `*_token`, `hf_token`) are redacted in API answers and log lines, and a redacted value sent
//! back unchanged (GET, edit, PUT) keeps the stored one.

use super::spec::{Flag, InstanceOptions, Scalar};
use crate::config::{InstancesConfig, REDACTED};

/// Environment variables no instance may set unless `[instances] allow_unsafe_environment`.
/// A trailing `*` matches a prefix.
pub const BUILTIN_ENV_DENY: &[&str] = &[
    "LD_*",
    "PATH",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PYTHONUSERBASE",
    "BASH_ENV",
    "ENV",
    "GCONV_PATH",
];

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Why a spec is refused: a policy (403) or a limit/shape problem (400).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Forbidden(String),
    Invalid(String),
}

/// Checks a normalised spec against the operator's policy.
pub fn check(o: &InstanceOptions, cfg: &InstancesConfig) -> Result<(), Refusal> {
    if !cfg.allowed_backends.contains(&o.backend_type) {
        let allowed: Vec<&str> = cfg.allowed_backends.iter().map(|b| b.as_str()).collect();
        return Err(Refusal::Forbidden(format!(
            "backend_type {:?} is not allowed here ([instances] allowed_backends = {allowed:?}; an operator can add it)",
            o.backend_type.as_str()
        )));
    }
    if !cfg.allow_unsafe_environment {
        let deny = BUILTIN_ENV_DENY
            .iter()
            .copied()
            .chain(cfg.environment_deny.iter().map(String::as_str));
        for p in deny {
            if let Some(name) = o.environment.keys().find(|n| matches(p, n)) {
                return Err(Refusal::Forbidden(format!(
                    "environment: {name} may not be set by an instance (it changes what code the backend loads; [instances] allow_unsafe_environment)"
                )));
            }
        }
    }
    let aliases = o.model_aliases().len();
    if aliases > cfg.max_aliases as usize {
        return Err(Refusal::Invalid(format!(
            "aliases: {aliases} model aliases, more than [instances] max_aliases ({})",
            cfg.max_aliases
        )));
    }
    let size = serde_json::to_vec(o).map_or(usize::MAX, |v| v.len());
    if size as u64 > cfg.max_spec_bytes {
        return Err(Refusal::Invalid(format!(
            "the spec is {size} bytes, more than [instances] max_spec_bytes ({})",
            cfg.max_spec_bytes
        )));
    }
    Ok(())
}

/// Whether an option or flag name (`api_key`, `--hf-token`) names a secret.
pub fn is_secret_name(name: &str) -> bool {
    let n = name
        .trim_start_matches('-')
        .to_ascii_lowercase()
        .replace('-', "_");
    matches!(n.as_str(), "api_key" | "token" | "password" | "secret")
        || ["_token", "_api_key", "_secret", "_password"]
            .iter()
            .any(|s| n.ends_with(s))
}

/// An argument list with the values of secret flags replaced (`--api-key X`, `--hf-token=X`).
pub fn redact_argv(argv: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut hide_next = false;
    for a in argv {
        if hide_next {
            out.push(REDACTED.to_string());
            hide_next = false;
            continue;
        }
        match a.split_once('=') {
            Some((flag, _)) if flag.starts_with('-') && is_secret_name(flag) => {
                out.push(format!("{flag}={REDACTED}"));
            }
            _ => {
                hide_next = a.starts_with('-') && is_secret_name(a);
                out.push(a.clone());
            }
        }
    }
    out
}

fn has_redacted(l: &[String]) -> bool {
    l.iter().any(|s| s.contains(REDACTED))
}

/// A copy fit to show: environment values and secret options replaced by `<redacted>`.
pub fn redacted(o: &InstanceOptions) -> InstanceOptions {
    let mut r = o.clone();
    for v in r.environment.values_mut() {
        *v = REDACTED.to_string();
    }
    let bo = &mut r.backend_options;
    if let Some(k) = &mut bo.api_key {
        *k = REDACTED.to_string();
    }
    for (k, v) in bo.flags.iter_mut() {
        if is_secret_name(k) && *v != Flag::Null {
            *v = Flag::One(Scalar::Str(REDACTED.to_string()));
        }
    }
    for l in [&mut bo.extra_args, &mut bo.command].into_iter().flatten() {
        *l = redact_argv(l);
    }
    r
}

/// For an update: values sent back as `<redacted>` keep what is stored (so a spec read from the
/// API can be edited and sent back). A `<redacted>` with nothing to keep is an error.
pub fn keep_redacted(new: &mut InstanceOptions, old: &InstanceOptions) -> Result<(), String> {
    let missing = |what: &str| {
        format!("{what} is \"{REDACTED}\" but no stored value exists to keep; send the real value")
    };
    for (k, v) in new.environment.iter_mut() {
        if v == REDACTED {
            *v = old
                .environment
                .get(k)
                .cloned()
                .ok_or_else(|| missing(&format!("environment.{k}")))?;
        }
    }
    let (nb, ob) = (&mut new.backend_options, &old.backend_options);
    if nb.api_key.as_deref() == Some(REDACTED) {
        nb.api_key = Some(
            ob.api_key
                .clone()
                .ok_or_else(|| missing("backend_options.api_key"))?,
        );
    }
    for (k, v) in nb.flags.iter_mut() {
        let redacted = match v {
            Flag::One(Scalar::Str(s)) => s == REDACTED,
            Flag::List(items) => items.iter().any(|i| i.arg().contains(REDACTED)),
            _ => false,
        };
        if !redacted {
            continue;
        }
        *v = match (&*v, ob.flags.get(k)) {
            (Flag::One(_), Some(stored)) if is_secret_name(k) => stored.clone(),
            _ => return Err(missing(&format!("backend_options.{k}"))),
        };
    }
    for (what, l, stored) in [
        ("extra_args", &mut nb.extra_args, &ob.extra_args),
        ("command", &mut nb.command, &ob.command),
    ] {
        let Some(list) = l else { continue };
        if !has_redacted(list) {
            continue;
        }
        // A list is kept whole when it is the stored one with its secrets hidden.
        match stored {
            Some(s) if redact_argv(s) == *list => *list = s.clone(),
            _ => return Err(missing(&format!("backend_options.{what}"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendType;
    use serde_json::{json, Value};

    fn opts(v: Value) -> InstanceOptions {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn backends_must_be_allowed() {
        let cfg = InstancesConfig::default();
        let cmd =
            opts(json!({"backend_type": "command", "backend_options": {"command": ["/bin/sh"]}}));
        let Err(Refusal::Forbidden(m)) = check(&cmd, &cfg) else {
            panic!("command allowed by default")
        };
        assert!(m.contains("allowed_backends"), "{m}");
        let cfg = InstancesConfig {
            allowed_backends: vec![BackendType::Command],
            ..Default::default()
        };
        assert_eq!(check(&cmd, &cfg), Ok(()));
    }

    #[test]
    fn code_loading_environment_is_refused_unless_allowed() {
        let cfg = InstancesConfig {
            environment_deny: vec!["HF_*".into()],
            ..Default::default()
        };
        for name in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "PATH",
            "PYTHONPATH",
            "PYTHONSTARTUP",
            "HF_HOME",
        ] {
            let o = opts(
                json!({"backend_type": "vllm", "backend_options": {"model": "m"},
                "environment": {name: "/tmp/x"}}),
            );
            assert!(
                matches!(check(&o, &cfg), Err(Refusal::Forbidden(_))),
                "{name}"
            );
            let lax = InstancesConfig {
                allow_unsafe_environment: true,
                ..cfg.clone()
            };
            assert_eq!(check(&o, &lax), Ok(()), "{name}");
        }
        let ok = opts(
            json!({"backend_type": "vllm", "backend_options": {"model": "m"},
            "environment": {"OMP_NUM_THREADS": "4", "XLD_X": "1"}}),
        );
        assert_eq!(check(&ok, &cfg), Ok(()));
    }

    #[test]
    fn limits_on_aliases_and_size() {
        let cfg = InstancesConfig {
            max_aliases: 2,
            max_spec_bytes: 1024,
            ..Default::default()
        };
        let o = opts(
            json!({"backend_type": "vllm", "backend_options": {"model": "m"},
            "aliases": ["a", "b", "c"]}),
        );
        assert!(matches!(check(&o, &cfg), Err(Refusal::Invalid(_))));
        let big = opts(
            json!({"backend_type": "vllm", "backend_options": {"model": "m", "x": "y".repeat(2000)}}),
        );
        assert!(
            matches!(check(&big, &cfg), Err(Refusal::Invalid(m)) if m.contains("max_spec_bytes"))
        );
    }

    #[test]
    fn secrets_are_redacted_in_views_and_argv() {
        let o = opts(json!({"backend_type": "llama_cpp",
            "backend_options": {"model": "/m.gguf", "api_key": "sk-1", "hf_token": "hf_2", "ctx_size": 4,
                "extra_args": ["--api-key", "sk-3", "--hf-token=hf_4", "-v"]},
            "environment": {"HF_TOKEN": "hf_5", "OMP_NUM_THREADS": "4"}}));
        let r = redacted(&o);
        let text = serde_json::to_string(&r).unwrap();
        for secret in ["sk-1", "hf_2", "sk-3", "hf_4", "hf_5"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let shown = r.backend_options.to_map();
        assert_eq!(shown["ctx_size"], 4);
        assert_eq!(shown["model"], "/m.gguf");
        assert_eq!(shown["hf_token"], "<redacted>");
        assert_eq!(
            shown["extra_args"],
            json!(["--api-key", "<redacted>", "--hf-token=<redacted>", "-v"])
        );
        assert_eq!(r.environment["OMP_NUM_THREADS"], "<redacted>");
        let argv: Vec<String> = [
            "llama-server",
            "--api-key",
            "sk-1",
            "--port",
            "8",
            "--x-token=t",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            redact_argv(&argv),
            [
                "llama-server",
                "--api-key",
                "<redacted>",
                "--port",
                "8",
                "--x-token=<redacted>"
            ]
        );
        assert!(
            !is_secret_name("api_key_file")
                && !is_secret_name("tokens")
                && is_secret_name("--HF-TOKEN")
        );
    }

    #[test]
    fn redacted_values_sent_back_keep_the_stored_ones() {
        let old = opts(json!({"backend_type": "llama_cpp",
            "backend_options": {"model": "/m.gguf", "api_key": "sk-1", "extra_args": ["--api-key", "sk-3"]},
            "environment": {"HF_TOKEN": "hf_5"}}));
        let mut new = redacted(&old);
        new.backend_options
            .flags
            .insert("ctx_size".into(), Flag::One(Scalar::Num(8.into())));
        keep_redacted(&mut new, &old).unwrap();
        let kept = new.backend_options.to_map();
        assert_eq!(kept["api_key"], "sk-1");
        assert_eq!(kept["extra_args"], json!(["--api-key", "sk-3"]));
        assert_eq!(new.environment["HF_TOKEN"], "hf_5");
        assert_eq!(kept["ctx_size"], 8);

        let mut orphan = redacted(&old);
        orphan.environment.insert("NEW".into(), REDACTED.into());
        assert!(keep_redacted(&mut orphan, &old)
            .unwrap_err()
            .contains("environment.NEW"));
        let mut changed = redacted(&old);
        changed.backend_options.extra_args =
            Some(vec!["--api-key".into(), "<redacted>".into(), "-v".into()]);
        assert!(keep_redacted(&mut changed, &old).is_err());
    }
}
