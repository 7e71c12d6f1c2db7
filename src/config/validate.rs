//! Semantic checks that serde cannot express. Errors stop the load; warnings name settings that
//! parse but do nothing in this version, so an operator is never left guessing.

use super::{Config, ConfigError, AUDIT_EVENTS};
use std::net::IpAddr;
use std::path::Path;

pub fn validate(c: &Config, path: &Path) -> Result<Vec<String>, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.to_string(),
        message,
    };
    let host = c.server.host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<IpAddr>().is_err() && host != "localhost" {
        return Err(invalid(
            "server.host",
            format!(
                "{:?} is not an IP address (or \"localhost\")",
                c.server.host
            ),
        ));
    }
    if c.server.port == 0 {
        return Err(invalid("server.port", "must be 1-65535".into()));
    }
    if c.server.request_timeout.get().is_zero() {
        return Err(invalid("server.request_timeout", "must be > 0".into()));
    }
    if c.server.workers > 1024 {
        return Err(invalid(
            "server.workers",
            format!("{} is more than 1024 threads", c.server.workers),
        ));
    }
    if c.server.max_body_bytes == 0 {
        return Err(invalid("server.max_body_bytes", "must be > 0".into()));
    }
    if let Some(d) = &c.server.state_dir {
        if !d.is_absolute() {
            return Err(invalid(
                "server.state_dir",
                "must be an absolute path".into(),
            ));
        }
    }
    let mpath = &c.monitoring.prometheus.path;
    if !mpath.starts_with('/') || mpath.starts_with("/api/") || mpath.contains(['?', '#', '{', '}'])
    {
        return Err(invalid(
            "monitoring.prometheus.path",
            format!("{mpath:?} must be an absolute URL path outside /api/"),
        ));
    }
    for d in &c.logging.destinations {
        let super::LogDestination::File { path: p, .. } = d;
        if !p.is_absolute() {
            return Err(invalid(
                "logging.destinations.path",
                format!("{} must be an absolute path", p.display()),
            ));
        }
    }
    for e in &c.audit.events {
        if !AUDIT_EVENTS.contains(&e.as_str()) {
            return Err(invalid(
                "audit.events",
                format!("unknown event {e:?} (known: {})", AUDIT_EVENTS.join(", ")),
            ));
        }
    }
    if !(0.0..=1.0).contains(&c.telemetry.sampling_rate) {
        return Err(invalid(
            "telemetry.sampling_rate",
            "must be between 0 and 1".into(),
        ));
    }
    let slice = &c.systemd.slice;
    let slice_ok = slice.ends_with(".slice")
        && slice.len() > ".slice".len()
        && slice
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.' | ':'));
    if !slice_ok {
        return Err(invalid(
            "systemd.slice",
            format!("{slice:?} is not a slice unit name such as \"llamactl.slice\""),
        ));
    }
    for (key, d) in [
        ("systemd.ready_timeout", c.systemd.ready_timeout),
        ("systemd.check_interval", c.systemd.check_interval),
        (
            "systemd.reconnect_max_backoff",
            c.systemd.reconnect_max_backoff,
        ),
    ] {
        if d.get().is_zero() {
            return Err(invalid(key, "must be > 0".into()));
        }
    }

    let [lo, hi] = c.instances.port_range;
    if lo == 0 || lo > hi {
        return Err(invalid(
            "instances.port_range",
            format!("[{lo}, {hi}] must be two ports, first <= last, first > 0"),
        ));
    }
    if let Some(u) = &c.instances.user {
        if u.is_empty()
            || !u
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            return Err(invalid(
                "instances.user",
                format!("{u:?} is not a user name"),
            ));
        }
    }
    for (key, d) in [
        ("instances.job_timeout", c.instances.job_timeout),
        ("instances.stop_timeout", c.instances.stop_timeout),
        (
            "instances.health_check_interval",
            c.instances.health_check_interval,
        ),
    ] {
        if d.get().is_zero() {
            return Err(invalid(key, "must be > 0".into()));
        }
    }
    if c.proxy.max_body_bytes == 0 {
        return Err(invalid("proxy.max_body_bytes", "must be > 0".into()));
    }
    for (key, d) in [
        ("proxy.start_timeout", c.proxy.start_timeout),
        ("proxy.idle_check_interval", c.proxy.idle_check_interval),
    ] {
        if d.get().is_zero() {
            return Err(invalid(key, "must be > 0".into()));
        }
    }
    for (key, b) in [
        ("backends.llama_cpp.command", &c.backends.llama_cpp),
        ("backends.vllm.command", &c.backends.vllm),
    ] {
        if b.command.as_deref() == Some("") {
            return Err(invalid(key, "must name an executable".into()));
        }
    }

    let mut warnings = Vec::new();
    let mut unsupported = |on: bool, key: &str, what: &str| {
        if on {
            warnings.push(format!("`{key}` is set but {what}; the setting is ignored"));
        }
    };
    unsupported(
        c.audit.enabled,
        "audit.enabled",
        "no audited action exists yet in this version (instance and auth events arrive with the instance API)",
    );
    unsupported(
        c.telemetry.enabled,
        "telemetry.enabled",
        "OTLP trace export is not implemented in this version",
    );
    unsupported(
        c.debug.pprof_enabled,
        "debug.pprof_enabled",
        "pprof is a Go facility; profile llamactld with `perf record -p $(pidof llamactld)`",
    );
    unsupported(
        c.profiling.enabled,
        "profiling.enabled",
        "continuous profiling (Pyroscope) is not implemented in this version",
    );
    Ok(warnings)
}
