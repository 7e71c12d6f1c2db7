//! The transient unit of an instance: a pure function of its (validated) spec and the operator's
//! config, so every property is unit-tested without systemd. The only thing it asks the world
//! is where the backend's executable is (`resolve`), since systemd wants an absolute path.

use super::spec::{self, BackendType, InstanceSpec};
use crate::config::{BackendsConfig, InstancesConfig};
use crate::systemd::transient::TransientService;
use std::path::PathBuf;

/// What the plan needs from the config.
pub struct PlanConfig<'a> {
    pub instances: &'a InstancesConfig,
    pub backends: &'a BackendsConfig,
    pub slice: &'a str,
}

/// The unit for `spec`. Every number in a spec is bounded when it is read (`spec::values`), so
/// nothing here can overflow: at most 10001 starts × a day's delay in microseconds.
pub fn plan(
    spec: &InstanceSpec,
    cfg: &PlanConfig<'_>,
    resolve: &dyn Fn(&str) -> Result<PathBuf, String>,
) -> Result<TransientService, String> {
    let o = &spec.options;
    let mut argv = spec::command_line(o, cfg.backends);
    let Some(first) = argv.first_mut() else {
        return Err("the instance has no command to run".into());
    };
    *first = resolve(first)?.display().to_string();
    let max_restarts = u64::from(o.max_restarts.map_or(0, |r| r.get()));
    let delay = u64::from(o.restart_delay.map_or(0, |d| d.get()));
    let gpus = o.gpus.as_ref().is_some_and(|g| !g.is_empty());
    Ok(TransientService {
        unit: spec::unit_name(&spec.name),
        description: format!(
            "llamactl instance {} ({})",
            spec.name,
            o.backend_type.as_str()
        ),
        slice: cfg.slice.to_string(),
        argv,
        environment: spec::environment(&spec.name, o, cfg.backends),
        working_directory: o
            .working_directory
            .as_ref()
            .map(|d| d.display().to_string()),
        user: cfg.instances.user.clone(),
        memory_max: o.memory_max.as_ref().map(|m| m.bytes()),
        cpu_quota_per_sec_usec: o.cpu_quota.map(|q| q.per_sec_usec()),
        restart: o.auto_restart.unwrap_or(true) && max_restarts > 0,
        restart_usec: delay * 1_000_000,
        // Every start counts, the first included: max_restarts restarts = max_restarts + 1
        // starts. The window is wide enough that a crash loop always hits the limit.
        start_limit_burst: max_restarts as u32 + 1,
        start_limit_interval_usec: (600 + (max_restarts + 1) * (delay + 5)) * 1_000_000,
        syslog_identifier: format!("llamactl-{}", spec.name),
        log_extra_fields: vec![format!("LLAMACTL_INSTANCE={}", spec.name)],
        timeout_stop_usec: u64::try_from(cfg.instances.stop_timeout.get().as_micros())
            .unwrap_or(u64::MAX),
        memory_deny_write_execute: o.backend_type == BackendType::LlamaCpp && !gpus,
        gpu_devices: gpus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::spec::{DesiredState, InstanceOptions};
    use serde_json::json;

    fn spec(options: serde_json::Value) -> InstanceSpec {
        let mut o: InstanceOptions = serde_json::from_value(options).unwrap();
        o.normalise(&InstancesConfig::default()).unwrap();
        InstanceSpec {
            name: "smol".into(),
            created: 1,
            desired_state: DesiredState::Stopped,
            options: o,
        }
    }

    fn planned(options: serde_json::Value) -> Result<TransientService, String> {
        let (instances, backends) = (InstancesConfig::default(), BackendsConfig::default());
        let cfg = PlanConfig {
            instances: &instances,
            backends: &backends,
            slice: "llamactl.slice",
        };
        plan(&spec(options), &cfg, &|c| {
            Ok(PathBuf::from("/usr/bin").join(c))
        })
    }

    #[test]
    fn a_llama_cpp_instance_unit_property_by_property() {
        let p = planned(json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m.gguf", "port": 8100},
            "memory_max": "1G", "cpu_quota": 150, "max_restarts": 2, "restart_delay": 7})).unwrap();
        assert_eq!(p.unit, "llamactl-smol.service");
        assert_eq!(p.description, "llamactl instance smol (llama_cpp)");
        assert_eq!(p.slice, "llamactl.slice");
        assert_eq!(p.argv[0], "/usr/bin/llama-server");
        assert!(p.argv.windows(2).any(|w| w == ["--port", "8100"]));
        assert!(p
            .environment
            .contains(&"LLAMACTL_INSTANCE=smol".to_string()));
        assert!(p.environment.contains(&"PORT=8100".to_string()));
        assert_eq!(p.user, None, "a DynamicUser by default");
        assert_eq!(p.memory_max, Some(1 << 30));
        assert_eq!(p.cpu_quota_per_sec_usec, Some(1_500_000));
        assert!(p.restart);
        assert_eq!(p.restart_usec, 7_000_000);
        assert_eq!(p.start_limit_burst, 3);
        assert_eq!(p.start_limit_interval_usec, (600 + 3 * 12) * 1_000_000);
        assert_eq!(p.syslog_identifier, "llamactl-smol");
        assert_eq!(p.log_extra_fields, ["LLAMACTL_INSTANCE=smol"]);
        assert_eq!(p.timeout_stop_usec, 30_000_000);
        assert!(p.memory_deny_write_execute && !p.gpu_devices);
    }

    #[test]
    fn gpus_no_restarts_and_the_largest_numbers() {
        let p = planned(
            json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m.gguf"},
            "gpus": [0, "GPU-abc"], "auto_restart": false}),
        )
        .unwrap();
        assert!(p.gpu_devices && !p.memory_deny_write_execute);
        assert!(!p.restart);
        assert!(p
            .environment
            .contains(&"CUDA_VISIBLE_DEVICES=0,GPU-abc".to_string()));
        let p = planned(
            json!({"backend_type": "vllm", "backend_options": {"model": "m"},
            "max_restarts": 10000, "restart_delay": 86400}),
        )
        .unwrap();
        assert!(!p.memory_deny_write_execute, "vLLM JITs");
        assert_eq!(p.start_limit_burst, 10_001);
        assert_eq!(p.restart_usec, 86_400_000_000);
        let p = planned(
            json!({"backend_type": "vllm", "backend_options": {"model": "m"},
            "max_restarts": 0}),
        )
        .unwrap();
        assert!(!p.restart);
    }

    #[test]
    fn an_executable_that_cannot_be_found_fails_the_plan() {
        let (instances, backends) = (InstancesConfig::default(), BackendsConfig::default());
        let cfg = PlanConfig {
            instances: &instances,
            backends: &backends,
            slice: "llamactl.slice",
        };
        let s = spec(
            json!({"backend_type": "command", "backend_options": {"command": ["srv", "{port}"]}}),
        );
        let e = plan(&s, &cfg, &|c| Err(format!("{c} not found"))).unwrap_err();
        assert_eq!(e, "srv not found");
    }
}
