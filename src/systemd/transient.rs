//! The property list of a transient service unit for `StartTransientUnit`. Kept as plain data →
//! D-Bus variants, so what we ask systemd for is unit-testable without a bus.

use zbus::Variant;

/// Everything that goes into one instance's unit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TransientService {
    /// `llamactl-<name>.service`
    pub unit: String,
    pub description: String,
    pub slice: String,
    /// argv[0] must be an absolute path: systemd does not search `PATH` for D-Bus ExecStart.
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries.
    pub environment: Vec<String>,
    pub working_directory: Option<String>,
    /// `None` runs the unit as a `DynamicUser`.
    pub user: Option<String>,
    pub memory_max: Option<u64>,
    pub cpu_quota_per_sec_usec: Option<u64>,
    pub restart: bool,
    pub restart_usec: u64,
    pub start_limit_burst: u32,
    pub start_limit_interval_usec: u64,
    pub syslog_identifier: String,
    /// `FIELD=value` entries added to every journal line of the unit.
    pub log_extra_fields: Vec<String>,
    pub timeout_stop_usec: u64,
    /// No writable and executable memory (`MemoryDenyWriteExecute=`): on for code that never
    /// JITs (llama.cpp on CPU); off for vLLM (Python, Triton) and CUDA (which JITs PTX).
    pub memory_deny_write_execute: bool,
    /// GPUs assigned: NVIDIA's device nodes are allowed (`DevicePolicy=closed` +
    /// `DeviceAllow=`) instead of a private `/dev`.
    pub gpu_devices: bool,
}

/// NVIDIA's device groups (`/proc/devices` names): the GPUs and `nvidiactl`, unified memory,
/// MIG capabilities. A group the driver does not register is ignored by systemd.
const NVIDIA_DEVICES: &[&str] = &[
    "char-nvidia-frontend",
    "char-nvidiactl",
    "char-nvidia-uvm",
    "char-nvidia-caps",
];

impl TransientService {
    pub fn properties(&self) -> Vec<(&'static str, Variant<'_>)> {
        let exec = vec![(self.argv[0].clone(), self.argv.clone(), false)];
        let extra: Vec<Vec<u8>> = self
            .log_extra_fields
            .iter()
            .map(|f| f.as_bytes().to_vec())
            .collect();
        let mut p: Vec<(&'static str, Variant<'_>)> = vec![
            ("Description", Variant::from(self.description.as_str())),
            ("Slice", Variant::from(self.slice.as_str())),
            // `exec`: the start job fails when the binary cannot be executed, instead of
            // reporting success and failing a moment later.
            ("Type", Variant::from("exec")),
            ("ExecStart", Variant::from(exec)),
            ("Environment", Variant::from(self.environment.clone())),
            ("MemoryAccounting", Variant::from(true)),
            ("CPUAccounting", Variant::from(true)),
            ("TasksAccounting", Variant::from(true)),
            ("IOAccounting", Variant::from(true)),
            (
                "Restart",
                Variant::from(if self.restart { "on-failure" } else { "no" }),
            ),
            ("RestartUSec", Variant::from(self.restart_usec)),
            ("StartLimitBurst", Variant::from(self.start_limit_burst)),
            (
                "StartLimitIntervalUSec",
                Variant::from(self.start_limit_interval_usec),
            ),
            (
                "SyslogIdentifier",
                Variant::from(self.syslog_identifier.as_str()),
            ),
            ("LogExtraFields", Variant::from(extra)),
            // Keep a failed unit loaded so its Result, ExecMainStatus and NRestarts stay
            // readable (`systemctl status` shows the failure); a clean stop unloads it.
            ("CollectMode", Variant::from("inactive")),
            ("TimeoutStopUSec", Variant::from(self.timeout_stop_usec)),
            // Sandboxing: a backend serves HTTP and reads its model; it needs no privilege,
            // no kernel interface and no other address family. `systemd-analyze security`
            // rates a llama.cpp instance 1.6 (was 8.2).
            ("NoNewPrivileges", Variant::from(true)),
            ("ProtectSystem", Variant::from("strict")),
            ("ProtectHome", Variant::from("read-only")),
            ("PrivateTmp", Variant::from(true)),
            ("ProtectKernelTunables", Variant::from(true)),
            ("ProtectKernelModules", Variant::from(true)),
            ("ProtectKernelLogs", Variant::from(true)),
            ("ProtectControlGroups", Variant::from(true)),
            ("ProtectClock", Variant::from(true)),
            ("ProtectHostname", Variant::from(true)),
            ("ProtectProc", Variant::from("invisible")),
            // No namespaces of any kind (the flags of the allowed ones: none).
            ("RestrictNamespaces", Variant::from(0u64)),
            ("RestrictSUIDSGID", Variant::from(true)),
            ("RestrictRealtime", Variant::from(true)),
            ("LockPersonality", Variant::from(true)),
            ("SystemCallArchitectures", Variant::from(vec!["native"])),
            (
                "SystemCallFilter",
                Variant::from((true, vec!["@system-service"])),
            ),
            ("SystemCallErrorNumber", Variant::from(libc::EPERM)),
            // An empty bounding set: no capability, even for a configured [instances] user.
            ("CapabilityBoundingSet", Variant::from(0u64)),
            (
                "RestrictAddressFamilies",
                Variant::from((true, vec!["AF_INET", "AF_INET6", "AF_UNIX"])),
            ),
            ("UMask", Variant::from(0o077u32)),
            ("PrivateDevices", Variant::from(!self.gpu_devices)),
            (
                "MemoryDenyWriteExecute",
                Variant::from(self.memory_deny_write_execute),
            ),
        ];
        if self.gpu_devices {
            p.push(("DevicePolicy", Variant::from("closed")));
            let allow: Vec<(&str, &str)> = NVIDIA_DEVICES.iter().map(|d| (*d, "rw")).collect();
            p.push(("DeviceAllow", Variant::from(allow)));
        }
        match &self.user {
            Some(u) => p.push(("User", Variant::from(u.as_str()))),
            None => p.push(("DynamicUser", Variant::from(true))),
        }
        if let Some(d) = &self.working_directory {
            p.push(("WorkingDirectory", Variant::from(d.as_str())));
        }
        if let Some(m) = self.memory_max {
            p.push(("MemoryMax", Variant::from(m)));
        }
        if let Some(q) = self.cpu_quota_per_sec_usec {
            p.push(("CPUQuotaPerSecUSec", Variant::from(q)));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_carry_the_plan() {
        let s = TransientService {
            unit: "llamactl-a.service".into(),
            description: "d".into(),
            slice: "llamactl.slice".into(),
            argv: vec![
                "/usr/bin/llama-server".into(),
                "-m".into(),
                "/m.gguf".into(),
            ],
            environment: vec!["A=1".into()],
            memory_max: Some(1 << 30),
            restart: true,
            log_extra_fields: vec!["LLAMACTL_INSTANCE=a".into()],
            ..Default::default()
        };
        let p = s.properties();
        let get = |k: &str| p.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(get("Restart").unwrap(), "\"on-failure\"");
        assert_eq!(get("DynamicUser").unwrap(), "true");
        assert!(get("User").is_none());
        assert!(get("ExecStart").unwrap().contains("/usr/bin/llama-server"));
        assert!(get("LogExtraFields").is_some());
        assert!(get("MemoryMax").is_some());
        assert!(get("CPUQuotaPerSecUSec").is_none());
        assert!(get("WorkingDirectory").is_none());
        assert_eq!(get("PrivateDevices").unwrap(), "true");
        assert_eq!(get("CapabilityBoundingSet").unwrap(), "uint64 0");
        assert_eq!(get("RestrictNamespaces").unwrap(), "uint64 0");
        assert_eq!(get("MemoryDenyWriteExecute").unwrap(), "false");
        assert!(get("DeviceAllow").is_none());
        assert!(get("SystemCallFilter").unwrap().contains("@system-service"));
    }

    #[test]
    fn gpus_get_nvidia_devices_instead_of_a_private_dev() {
        let s = TransientService {
            argv: vec!["/usr/bin/llama-server".into()],
            gpu_devices: true,
            memory_deny_write_execute: false,
            ..Default::default()
        };
        let p = s.properties();
        let get = |k: &str| p.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(get("PrivateDevices").unwrap(), "false");
        assert_eq!(get("DevicePolicy").unwrap(), "\"closed\"");
        assert!(get("DeviceAllow").unwrap().contains("char-nvidia-frontend"));
    }
}
