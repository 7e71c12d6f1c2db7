//! An instance's command line and environment, from its spec and the operator's `[backends]`:
//! the backend's executable and arguments, llama.cpp's and vLLM's options as flags, and the
//! command backend's argv with `{port}`/`{host}` filled in.

use super::{BackendType, InstanceOptions};
use crate::config::BackendsConfig;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `snake_case: value` → `--snake-case value`; `true` → a bare flag; `false`/null → nothing;
/// a list repeats the flag. This is how upstream's ~150 llama-server options map to its flags.
fn push_flags(argv: &mut Vec<String>, opts: &Map<String, Value>, skip: &[&str]) {
    for (k, v) in opts {
        if skip.contains(&k.as_str()) {
            continue;
        }
        let flag = format!("--{}", k.replace('_', "-"));
        match v {
            Value::Bool(true) => argv.push(flag),
            Value::Array(items) => {
                for i in items.iter().filter_map(scalar) {
                    argv.push(flag.clone());
                    argv.push(i);
                }
            }
            v => {
                if let Some(s) = scalar(v) {
                    argv.push(flag);
                    argv.push(s);
                }
            }
        }
    }
}

/// The command line of an instance; argv[0] is the configured command (resolved against `PATH`
/// later, at start). Requires a port (assigned at create time).
pub fn command_line(o: &InstanceOptions, backends: &BackendsConfig) -> Vec<String> {
    let port = o.port().unwrap_or(0).to_string();
    let host = o.host().to_string();
    let bo = &o.backend_options;
    let flags = bo.to_map();
    let extra = |argv: &mut Vec<String>| {
        argv.extend(bo.extra_args.iter().flatten().cloned());
    };
    match o.backend_type {
        BackendType::LlamaCpp => {
            let b = &backends.llama_cpp;
            let mut argv = vec![b.command_or("llama-server").to_string()];
            argv.extend(b.args.iter().cloned());
            argv.extend(["--host".into(), host, "--port".into(), port]);
            // llama-server's own /metrics (llamacpp:* series) is on unless the spec says
            // `metrics: false`: Prometheus discovers it through /api/v1/sd/prometheus.
            if bo.metrics != Some(false) {
                argv.push("--metrics".into());
            }
            push_flags(
                &mut argv,
                &flags,
                &["host", "port", "extra_args", "metrics"],
            );
            extra(&mut argv);
            argv
        }
        BackendType::Vllm => {
            let b = &backends.vllm;
            let mut argv = vec![b.command_or("vllm").to_string()];
            argv.extend(b.args.iter().cloned());
            argv.push("serve".into());
            argv.extend(bo.model.clone());
            argv.extend(["--host".into(), host, "--port".into(), port]);
            push_flags(&mut argv, &flags, &["host", "port", "model", "extra_args"]);
            extra(&mut argv);
            argv
        }
        BackendType::Command => bo
            .command
            .iter()
            .flatten()
            .map(|s| s.replace("{port}", &port).replace("{host}", &host))
            .collect(),
    }
}

/// The environment of an instance: its own entries, then the backend's config (the operator's
/// settings win over the API's), then what llamactl sets itself.
pub fn environment(name: &str, o: &InstanceOptions, backends: &BackendsConfig) -> Vec<String> {
    let mut env: BTreeMap<String, String> = o.environment.clone();
    env.extend(match o.backend_type {
        BackendType::LlamaCpp => backends.llama_cpp.environment.clone(),
        BackendType::Vllm => backends.vllm.environment.clone(),
        BackendType::Command => BTreeMap::new(),
    });
    if let Some(g) = &o.gpus {
        let ids: Vec<String> = g.iter().map(ToString::to_string).collect();
        env.insert("CUDA_VISIBLE_DEVICES".into(), ids.join(","));
    }
    env.insert("LLAMACTL_INSTANCE".into(), name.into());
    if let Some(p) = o.port() {
        env.insert("PORT".into(), p.to_string());
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Finds an executable the way a shell would, so the config may name `llama-server` while
/// systemd needs an absolute path.
pub fn resolve_command(cmd: &str, path_var: Option<&str>) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        if !p.is_absolute() {
            return Err(format!(
                "backend command {cmd:?} must be an absolute path or a bare name"
            ));
        }
        return if executable(&p) {
            Ok(p)
        } else {
            Err(format!(
                "backend command {cmd} does not exist or is not executable"
            ))
        };
    }
    let path = path_var.unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| PathBuf::from(d).join(cmd))
        .find(|p| executable(p))
        .ok_or_else(|| format!("backend command {cmd:?} not found in PATH ({path}); set its absolute path in the config's [backends] section"))
}
