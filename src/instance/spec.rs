//! The instance spec: what an operator asks for (upstream Llamactl's create/update body plus our
//! resource limits), validated, with defaults filled in, and turned into a command line. Field
//! names follow upstream (`backend_type`, `backend_options`, `auto_restart`, `max_restarts`,
//! `restart_delay` in seconds, `on_demand_start`, `idle_timeout` in minutes, `environment`).

use crate::config::{BackendsConfig, InstancesConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const UNIT_PREFIX: &str = "llamactl-";
pub const UNIT_SUFFIX: &str = ".service";
pub const MAX_NAME: usize = 63;

/// Names become unit names and file names, so they are held to a small safe alphabet: no path
/// separators, no leading dot, no whitespace, no unit-type suffix that would make
/// `llamactl-x.service.service` or confuse a reader.
pub fn validate_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid instance name {name:?}: {why}"));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME {
        return bad(&format!("longer than {MAX_NAME} characters"));
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return bad("must start with a lowercase letter or a digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return bad("only lowercase letters, digits, '.', '_' and '-' are allowed");
    }
    const UNIT_TYPES: &[&str] = &[
        ".service",
        ".socket",
        ".slice",
        ".scope",
        ".target",
        ".mount",
        ".automount",
        ".swap",
        ".timer",
        ".path",
        ".device",
        ".json",
    ];
    if let Some(t) = UNIT_TYPES.iter().find(|t| name.ends_with(*t)) {
        return bad(&format!("must not end in {t}"));
    }
    Ok(())
}

pub fn unit_name(name: &str) -> String {
    format!("{UNIT_PREFIX}{name}{UNIT_SUFFIX}")
}

/// The instance name of one of our units, if it is one.
pub fn name_from_unit(unit: &str) -> Option<&str> {
    unit.strip_prefix(UNIT_PREFIX)?
        .strip_suffix(UNIT_SUFFIX)
        .filter(|n| validate_name(n).is_ok())
}

pub use crate::config::BackendType;

/// Create/update body and the `options` of an instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceOptions {
    pub backend_type: BackendType,
    #[serde(default)]
    pub backend_options: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_restart: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<i64>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_delay: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand_start: Option<bool>,
    /// Minutes; 0 = never stop for idleness. Fractions are allowed (upstream takes whole
    /// minutes; a whole value is written back as an integer so upstream clients can read it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "whole_if_integral"
    )]
    pub idle_timeout: Option<f64>,
    /// Other names the proxy routes to this instance (besides its name and llama.cpp's `alias`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Hard memory limit (systemd `MemoryMax=`): bytes, or a string such as `"8G"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<Value>,
    /// CPU limit in percent of one CPU (`150` = one and a half cores; `CPUQuota=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<f64>,
    /// GPUs the backend may use, exported as `CUDA_VISIBLE_DEVICES` (indices or UUIDs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<PathBuf>,
    /// Upstream's multi-node placement; only the local node exists here, so it must be empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Running,
    #[default]
    Stopped,
}

/// What is stored on disk for one instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    pub name: String,
    /// Unix seconds.
    pub created: u64,
    pub desired_state: DesiredState,
    pub options: InstanceOptions,
}

/// The llama.cpp short names upstream accepts, mapped to the canonical ones we store.
const LLAMA_ALIASES: &[(&str, &str)] = &[
    ("m", "model"),
    ("c", "ctx_size"),
    ("ngl", "gpu_layers"),
    ("n_gpu_layers", "gpu_layers"),
    ("n-gpu-layers", "gpu_layers"),
    ("t", "threads"),
    ("np", "parallel"),
    ("a", "alias"),
];

fn flag_key_ok(k: &str) -> bool {
    let mut b = k.bytes();
    b.next().is_some_and(|c| c.is_ascii_lowercase())
        && k.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

fn env_key_ok(k: &str) -> bool {
    let mut b = k.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Parses `"8G"`, `"512M"`, `"1024"` or a number into bytes (1024-based suffixes).
pub fn parse_bytes(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(|| format!("{n} is not a byte count")),
        Value::String(s) => {
            let t = s.trim();
            let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
                Some('K') => (&t[..t.len() - 1], 1u64 << 10),
                Some('M') => (&t[..t.len() - 1], 1 << 20),
                Some('G') => (&t[..t.len() - 1], 1 << 30),
                Some('T') => (&t[..t.len() - 1], 1 << 40),
                _ => (t, 1),
            };
            let n: f64 = num
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a size such as \"8G\""))?;
            if n.is_nan() || n <= 0.0 || n * mult as f64 > u64::MAX as f64 / 2.0 {
                return Err(format!("{s:?} is out of range"));
            }
            Ok((n * mult as f64) as u64)
        }
        other => Err(format!("{other} is not a size")),
    }
}

impl InstanceOptions {
    /// Validates and normalises in place: aliases become canonical names, unset policy fields get
    /// the configured defaults (stored, so a GET shows what is in force). Errors name the field.
    pub fn normalise(&mut self, cfg: &InstancesConfig) -> Result<(), String> {
        let bo = &mut self.backend_options;
        if self.backend_type == BackendType::LlamaCpp {
            for (alias, canon) in LLAMA_ALIASES {
                if let Some(v) = bo.remove(*alias) {
                    if bo.contains_key(*canon) {
                        return Err(format!(
                            "backend_options: both {alias:?} and {canon:?} given"
                        ));
                    }
                    bo.insert((*canon).to_string(), v);
                }
            }
        }
        for (k, v) in bo.iter() {
            let ok_key = flag_key_ok(k);
            if !ok_key {
                return Err(format!("backend_options: invalid option name {k:?}"));
            }
            let scalar_ok = |v: &Value| {
                matches!(
                    v,
                    Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null
                )
            };
            let ok = match v {
                Value::Array(items) => items
                    .iter()
                    .all(|i| matches!(i, Value::String(_) | Value::Number(_))),
                v => scalar_ok(v),
            };
            if !ok {
                return Err(format!(
                    "backend_options.{k}: must be a string, number, boolean or list"
                ));
            }
            if let Value::String(s) = v {
                if s.contains('\0') {
                    return Err(format!("backend_options.{k}: contains a NUL byte"));
                }
            }
        }
        match bo.get("port") {
            None | Some(Value::Null) => {}
            Some(p) if p.as_u64().is_some_and(|p| (1..=65535).contains(&p)) => {}
            Some(Value::Number(n)) if n.as_u64() == Some(0) => {
                bo.remove("port");
            }
            Some(p) => return Err(format!("backend_options.port: {p} is not a port")),
        }
        match self.backend_type {
            BackendType::LlamaCpp => {
                if !["model", "hf_repo", "model_url"]
                    .iter()
                    .any(|k| bo.get(*k).is_some_and(Value::is_string))
                {
                    return Err("backend_options.model: required (path of a GGUF file)".into());
                }
                if let Some(Value::String(m)) = bo.get("model") {
                    if !m.starts_with('/') {
                        return Err(format!(
                            "backend_options.model: {m:?} must be an absolute path"
                        ));
                    }
                }
            }
            BackendType::Vllm => {
                if !bo.get("model").is_some_and(Value::is_string) {
                    return Err("backend_options.model: required (a model name or path)".into());
                }
            }
            BackendType::Command => {
                for k in bo.keys() {
                    if !["command", "port", "host", "health_path", "metrics_path"]
                        .contains(&k.as_str())
                    {
                        return Err(format!("backend_options.{k}: not an option of the command backend (command, port, host, health_path, metrics_path)"));
                    }
                }
                let argv = bo.get("command").and_then(Value::as_array);
                if !argv.is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string)) {
                    return Err("backend_options.command: required, a non-empty list of strings (argv; no shell)".into());
                }
                if let Some(h) = bo.get("health_path") {
                    if !h.as_str().is_some_and(|h| h.starts_with('/')) {
                        return Err(
                            "backend_options.health_path: must be a path starting with /".into(),
                        );
                    }
                }
            }
        }
        if let Some(Value::String(h)) = bo.get("host") {
            if h.parse::<std::net::IpAddr>().is_err() && h != "localhost" {
                return Err(format!("backend_options.host: {h:?} is not an IP address"));
            }
        }
        for (k, v) in &self.environment {
            if !env_key_ok(k) {
                return Err(format!("environment: invalid variable name {k:?}"));
            }
            if v.contains('\0') {
                return Err(format!("environment.{k}: contains a NUL byte"));
            }
        }
        if let Some(m) = &self.memory_max {
            parse_bytes(m).map_err(|e| format!("memory_max: {e}"))?;
        }
        if let Some(q) = self.cpu_quota {
            if !(q > 0.0 && q <= 100_000.0) {
                return Err(format!(
                    "cpu_quota: {q} must be a percentage > 0 (100 = one CPU)"
                ));
            }
        }
        if let Some(g) = &self.gpus {
            for id in g {
                let ok = id.as_u64().is_some()
                    || id.as_str().is_some_and(|s| {
                        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if !ok {
                    return Err(format!("gpus: {id} is not a GPU index or UUID"));
                }
            }
        }
        if let Some(d) = &self.working_directory {
            if !d.is_absolute() {
                return Err("working_directory: must be an absolute path".into());
            }
        }
        if self.nodes.as_ref().is_some_and(|n| !n.is_empty()) {
            return Err("nodes: multi-node placement is not supported; omit it or send []".into());
        }
        let clamp = |v: Option<i64>, d: i64| Some(v.unwrap_or(d).max(0));
        self.auto_restart = Some(self.auto_restart.unwrap_or(cfg.default_auto_restart));
        self.max_restarts = clamp(self.max_restarts, i64::from(cfg.default_max_restarts));
        self.restart_delay = clamp(self.restart_delay, cfg.default_restart_delay as i64);
        self.on_demand_start = Some(self.on_demand_start.unwrap_or(cfg.default_on_demand_start));
        match self.idle_timeout {
            Some(t) if !t.is_finite() || t < 0.0 => {
                return Err(format!(
                    "idle_timeout: {t} must be a number of minutes >= 0"
                ))
            }
            None => self.idle_timeout = Some(0.0),
            Some(_) => {}
        }
        if let Some(a) = &self.aliases {
            if a.iter().any(|x| x.is_empty() || x.len() > 256) {
                return Err("aliases: names must be 1-256 characters".into());
            }
        }
        Ok(())
    }

    pub fn port(&self) -> Option<u16> {
        self.backend_options
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
    }

    pub fn set_port(&mut self, port: u16) {
        self.backend_options
            .insert("port".into(), Value::from(port));
    }

    pub fn host(&self) -> &str {
        self.backend_options
            .get("host")
            .and_then(Value::as_str)
            .unwrap_or("127.0.0.1")
    }

    /// `host:port` to reach the backend at: a wildcard listen address is reached over loopback,
    /// IPv6 is bracketed. `None` before a port is assigned.
    pub fn connect_addr(&self) -> Option<String> {
        let host = match self.host() {
            "0.0.0.0" | "localhost" => "127.0.0.1".to_string(),
            "::" => "[::1]".to_string(),
            h if h.contains(':') => format!("[{h}]"),
            h => h.to_string(),
        };
        Some(format!("{host}:{}", self.port()?))
    }

    /// Where the backend serves Prometheus metrics, if it does: llama-server (`--metrics`, on by
    /// default) and vLLM at `/metrics`; a command backend when its spec names `metrics_path`.
    pub fn metrics_path(&self) -> Option<&str> {
        match self.backend_type {
            BackendType::LlamaCpp => (self.backend_options.get("metrics")
                != Some(&Value::Bool(false)))
            .then_some("/metrics"),
            BackendType::Vllm => Some("/metrics"),
            BackendType::Command => self
                .backend_options
                .get("metrics_path")
                .and_then(Value::as_str),
        }
    }

    /// Every `model` value the proxy routes to this instance besides its name: llama.cpp's
    /// `alias` (comma-separated in newer llama-server) and the spec's `aliases`.
    pub fn model_aliases(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .backend_options
            .get("alias")
            .and_then(Value::as_str)
            .map(|a| {
                a.split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        out.extend(self.aliases.clone().unwrap_or_default());
        out
    }

    /// Idle timeout, when set.
    pub fn idle_after(&self) -> Option<std::time::Duration> {
        self.idle_timeout
            .filter(|m| *m > 0.0)
            .map(|m| std::time::Duration::from_secs_f64(m * 60.0))
    }

    /// The key the backend itself requires (`api_key`: llama-server's and vLLM's `--api-key`,
    /// the first of a comma-separated list), which the proxy sends it.
    pub fn backend_key(&self) -> Option<&str> {
        if self.backend_type == BackendType::Command {
            return None;
        }
        let k = self.backend_options.get("api_key")?.as_str()?;
        k.split(',').map(str::trim).find(|k| !k.is_empty())
    }

    /// Where readiness is probed.
    pub fn health_path(&self) -> &str {
        self.backend_options
            .get("health_path")
            .and_then(Value::as_str)
            .unwrap_or("/health")
    }
}

fn whole_if_integral<S: serde::Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => s.serialize_i64(*x as i64),
        Some(x) => s.serialize_f64(*x),
        None => s.serialize_none(),
    }
}

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
    let extra = |argv: &mut Vec<String>| {
        if let Some(Value::Array(a)) = o.backend_options.get("extra_args") {
            argv.extend(a.iter().filter_map(scalar));
        }
    };
    match o.backend_type {
        BackendType::LlamaCpp => {
            let b = &backends.llama_cpp;
            let mut argv = vec![b.command_or("llama-server").to_string()];
            argv.extend(b.args.iter().cloned());
            argv.extend(["--host".into(), host, "--port".into(), port]);
            // llama-server's own /metrics (llamacpp:* series) is on unless the spec says
            // `metrics: false`: Prometheus discovers it through /api/v1/sd/prometheus.
            if o.backend_options.get("metrics") != Some(&Value::Bool(false)) {
                argv.push("--metrics".into());
            }
            push_flags(
                &mut argv,
                &o.backend_options,
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
            if let Some(m) = o.backend_options.get("model").and_then(scalar) {
                argv.push(m);
            }
            argv.extend(["--host".into(), host, "--port".into(), port]);
            push_flags(
                &mut argv,
                &o.backend_options,
                &["host", "port", "model", "extra_args"],
            );
            extra(&mut argv);
            argv
        }
        BackendType::Command => o
            .backend_options
            .get("command")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|s| s.replace("{port}", &port).replace("{host}", &host))
                    .collect()
            })
            .unwrap_or_default(),
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
        let ids: Vec<String> = g.iter().filter_map(scalar).collect();
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

#[cfg(test)]
mod tests;
