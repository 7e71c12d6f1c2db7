//! The instance spec: what an operator asks for (upstream Llamactl's create/update body plus our
//! resource limits), validated, with defaults filled in, and turned into a command line. Field
//! names follow upstream (`backend_type`, `backend_options`, `auto_restart`, `max_restarts`,
//! `restart_delay` in seconds, `on_demand_start`, `idle_timeout` in minutes, `environment`).

use crate::config::InstancesConfig;
use serde::{Deserialize, Serialize};
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
pub use argv::{command_line, environment, resolve_command};
pub use backend::{BackendOptions, Flag, Scalar};
pub use values::{ByteSize, CpuQuota, DelaySeconds, GpuId, Minutes, Restarts};

mod argv;
mod backend;
mod values;

/// Create/update body and the `options` of an instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceOptions {
    pub backend_type: BackendType,
    #[serde(default)]
    pub backend_options: BackendOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_restart: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<Restarts>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_delay: Option<DelaySeconds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand_start: Option<bool>,
    /// Minutes; 0 = never stop for idleness. Fractions are allowed (upstream takes whole
    /// minutes; a whole value is written back as an integer so upstream clients can read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Minutes>,
    /// Other names the proxy routes to this instance (besides its name and llama.cpp's `alias`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Hard memory limit (systemd `MemoryMax=`): bytes, or a string such as `"8G"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<ByteSize>,
    /// CPU limit in percent of one CPU (`150` = one and a half cores; `CPUQuota=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<CpuQuota>,
    /// GPUs the backend may use, exported as `CUDA_VISIBLE_DEVICES` (indices or UUIDs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Vec<GpuId>>,
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

/// Reads an instance's options from JSON; an error names the field (`restart_delay: ...`).
pub fn parse_options(json: &[u8]) -> Result<InstanceOptions, String> {
    let mut de = serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path.is_empty() || path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
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

fn env_key_ok(k: &str) -> bool {
    let mut b = k.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

impl InstanceOptions {
    /// Validates and normalises in place: aliases become canonical names, unset policy fields get
    /// the configured defaults (stored, so a GET shows what is in force). Errors name the field.
    pub fn normalise(&mut self, cfg: &InstancesConfig) -> Result<(), String> {
        let bo = &mut self.backend_options;
        if self.backend_type == BackendType::LlamaCpp {
            for (alias, canon) in LLAMA_ALIASES {
                let Some(v) = bo.flags.remove(*alias) else {
                    continue;
                };
                let both = || format!("backend_options: both {alias:?} and {canon:?} given");
                let text = |v: &Flag| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("backend_options.{canon}: must be a string"))
                };
                match *canon {
                    "model" if bo.model.is_some() => return Err(both()),
                    "model" => bo.model = Some(text(&v)?),
                    "alias" if bo.alias.is_some() => return Err(both()),
                    "alias" => bo.alias = Some(text(&v)?),
                    c if bo.flags.contains_key(c) => return Err(both()),
                    c => {
                        bo.flags.insert(c.to_string(), v);
                    }
                }
            }
        }
        match self.backend_type {
            BackendType::LlamaCpp => {
                let other_source = ["hf_repo", "model_url"]
                    .iter()
                    .any(|k| bo.flags.get(*k).and_then(Flag::as_str).is_some());
                match &bo.model {
                    Some(m) if !m.starts_with('/') => {
                        return Err(format!(
                            "backend_options.model: {m:?} must be an absolute path"
                        ))
                    }
                    None if !other_source => {
                        return Err("backend_options.model: required (path of a GGUF file)".into())
                    }
                    _ => {}
                }
            }
            BackendType::Vllm => {
                if bo.model.is_none() {
                    return Err("backend_options.model: required (a model name or path)".into());
                }
            }
            BackendType::Command => {
                let allowed = ["command", "port", "host", "health_path", "metrics_path"];
                if let Some(k) = bo.to_map().keys().find(|k| !allowed.contains(&k.as_str())) {
                    return Err(format!("backend_options.{k}: not an option of the command backend (command, port, host, health_path, metrics_path)"));
                }
                if bo.command.as_ref().is_none_or(Vec::is_empty) {
                    return Err("backend_options.command: required, a non-empty list of strings (argv; no shell)".into());
                }
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
        if let Some(d) = &self.working_directory {
            if !d.is_absolute() {
                return Err("working_directory: must be an absolute path".into());
            }
        }
        if self.nodes.as_ref().is_some_and(|n| !n.is_empty()) {
            return Err("nodes: multi-node placement is not supported; omit it or send []".into());
        }
        // The config's defaults are bounded by its own check (`[instances] default_*`).
        self.auto_restart = Some(self.auto_restart.unwrap_or(cfg.default_auto_restart));
        self.max_restarts = self
            .max_restarts
            .or(Restarts::new(cfg.default_max_restarts.min(Restarts::MAX)));
        self.restart_delay = self.restart_delay.or(DelaySeconds::new(
            u32::try_from(cfg.default_restart_delay)
                .unwrap_or(DelaySeconds::MAX)
                .min(DelaySeconds::MAX),
        ));
        self.on_demand_start = Some(self.on_demand_start.unwrap_or(cfg.default_on_demand_start));
        self.idle_timeout = Some(self.idle_timeout.unwrap_or(Minutes::ZERO));
        if let Some(a) = &self.aliases {
            if a.iter().any(|x| x.is_empty() || x.len() > 256) {
                return Err("aliases: names must be 1-256 characters".into());
            }
        }
        Ok(())
    }

    pub fn port(&self) -> Option<u16> {
        self.backend_options.port
    }

    pub fn set_port(&mut self, port: u16) {
        self.backend_options.port = Some(port);
    }

    pub fn host(&self) -> &str {
        self.backend_options.host.as_deref().unwrap_or("127.0.0.1")
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
            BackendType::LlamaCpp => {
                (self.backend_options.metrics != Some(false)).then_some("/metrics")
            }
            BackendType::Vllm => Some("/metrics"),
            BackendType::Command => self.backend_options.metrics_path.as_deref(),
        }
    }

    /// Every `model` value the proxy routes to this instance besides its name: llama.cpp's
    /// `alias` (comma-separated in newer llama-server) and the spec's `aliases`.
    pub fn model_aliases(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .backend_options
            .alias
            .as_deref()
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
        self.idle_timeout.and_then(Minutes::duration)
    }

    /// The key the backend itself requires (`api_key`: llama-server's and vLLM's `--api-key`,
    /// the first of a comma-separated list), which the proxy sends it.
    pub fn backend_key(&self) -> Option<&str> {
        if self.backend_type == BackendType::Command {
            return None;
        }
        let k = self.backend_options.api_key.as_deref()?;
        k.split(',').map(str::trim).find(|k| !k.is_empty())
    }

    /// Where readiness is probed.
    pub fn health_path(&self) -> &str {
        self.backend_options
            .health_path
            .as_deref()
            .unwrap_or("/health")
    }
}

#[cfg(test)]
mod tests;
