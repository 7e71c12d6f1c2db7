//! Semantic checks that serde cannot express. Errors stop the load; warnings name settings that
//! parse but do nothing in this version, so an operator is never left guessing.

use super::{parse_digest, validate_key_name, Config, ConfigError, AUDIT_EVENTS};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

/// Whether a listen address only reaches this machine.
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A host name or IP literal as it may appear in a `Host` header (without the port).
fn host_name_ok(h: &str) -> bool {
    let inner = h.trim_start_matches('[').trim_end_matches(']');
    inner.parse::<IpAddr>().is_ok()
        || (!h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
}

/// Splits `host[:port]` or `[v6]:port` (a `Host` header, an origin's authority) into the host
/// (IPv6 keeps its brackets) and port. `None` when it is not of that shape.
pub fn split_authority(a: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if a.starts_with('[') {
        let end = a.find(']')?;
        let (h, rest) = a.split_at(end + 1);
        match rest {
            "" => (h, None),
            r => (h, Some(r.strip_prefix(':')?)),
        }
    } else {
        match a.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    host_name_ok(host).then_some((host, port))
}

/// `scheme://host[:port]`, as browsers send it in `Origin`.
fn origin_ok(o: &str) -> bool {
    match o.split_once("://") {
        Some(("http" | "https", authority)) => split_authority(authority).is_some(),
        _ => false,
    }
}

/// An environment variable name, or a prefix pattern ending in `*`.
fn env_pattern_ok(p: &str) -> bool {
    let name = p.strip_suffix('*').unwrap_or(p);
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

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
    if c.server.header_timeout.get().is_zero() {
        return Err(invalid("server.header_timeout", "must be > 0".into()));
    }
    if !(1..=1_000_000).contains(&c.server.max_connections) {
        return Err(invalid(
            "server.max_connections",
            format!("{} is not in 1..=1000000", c.server.max_connections),
        ));
    }
    if c.server.max_body_bytes == 0 {
        return Err(invalid("server.max_body_bytes", "must be > 0".into()));
    }
    if let Some(sock) = &c.server.socket {
        if !sock.as_os_str().is_empty() && !sock.is_absolute() {
            return Err(invalid(
                "server.socket",
                "must be an absolute path, or \"\" for no socket".into(),
            ));
        }
    }
    for h in &c.server.allowed_hosts {
        if !host_name_ok(h) {
            return Err(invalid(
                "server.allowed_hosts",
                format!("{h:?} is not a host name or IP address (no scheme, port or path)"),
            ));
        }
    }
    for o in &c.server.cors_origins {
        if !origin_ok(o) {
            return Err(invalid(
                "server.cors_origins",
                format!("{o:?} is not an origin such as \"https://ui.example:3000\" (scheme, host, optional port; no path)"),
            ));
        }
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
    super::log_destinations::validate(&c.logging.destinations, &invalid)?;
    for e in &c.audit.events {
        if !AUDIT_EVENTS.contains(&e.as_str()) {
            return Err(invalid(
                "audit.events",
                format!("unknown event {e:?} (known: {})", AUDIT_EVENTS.join(", ")),
            ));
        }
    }
    if let Some(f) = &c.audit.log_file {
        if !f.is_absolute() {
            return Err(invalid("audit.log_file", "must be an absolute path".into()));
        }
    }
    if c.audit.api && !c.audit.file {
        return Err(invalid(
            "audit.api",
            "GET /api/v1/audit is served from the file: api = true needs file = true".into(),
        ));
    }
    for g in crate::config::LimitGroup::ALL {
        let key = format!("rate_limit.{}", g.as_str());
        let (r, burst) = c.rate_limit.bucket(g);
        if !r.is_finite() || !(0.0..=1_000_000.0).contains(&r) {
            return Err(invalid(
                &key,
                format!("requests_per_second {r} must be 0 (no limit) to 1000000"),
            ));
        }
        if r > 0.0 && burst == 0 {
            return Err(invalid(&key, "burst must be at least 1".into()));
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
        // Backends run what the API asks for: never as root (by name, number or alias).
        if u == "root" || u == "0" || crate::host::users::uid_of(u) == Some(0) {
            return Err(invalid(
                "instances.user",
                format!("{u:?} is root: instances must not run as root (unset it for a DynamicUser per instance)"),
            ));
        }
    }
    for p in &c.instances.environment_deny {
        if !env_pattern_ok(p) {
            return Err(invalid(
                "instances.environment_deny",
                format!("{p:?} is not a variable name or a NAME* prefix"),
            ));
        }
    }
    if c.auth.max_keys == 0 {
        return Err(invalid("auth.max_keys", "must be > 0".into()));
    }
    if c.instances.max_instances == 0 {
        return Err(invalid("instances.max_instances", "must be > 0".into()));
    }
    if c.instances.max_spec_bytes < 1024 {
        return Err(invalid(
            "instances.max_spec_bytes",
            "must be at least 1024".into(),
        ));
    }
    if c.instances.allowed_backends.is_empty() {
        return Err(invalid(
            "instances.allowed_backends",
            "must list at least one backend".into(),
        ));
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
    for (key, v, most) in [
        (
            "instances.logs_max_lines",
            c.instances.logs_max_lines,
            1_000_000,
        ),
        (
            "instances.logs_max_entry_bytes",
            c.instances.logs_max_entry_bytes,
            1 << 20,
        ),
        (
            "instances.logs_max_followers",
            c.instances.logs_max_followers,
            10_000,
        ),
    ] {
        if !(1..=most).contains(&v) {
            return Err(invalid(key, format!("{v} is not in 1..={most}")));
        }
    }
    if c.proxy.max_body_bytes == 0 {
        return Err(invalid("proxy.max_body_bytes", "must be > 0".into()));
    }
    if c.proxy.max_buffered_bytes < c.proxy.max_body_bytes {
        return Err(invalid(
            "proxy.max_buffered_bytes",
            format!(
                "{} is less than proxy.max_body_bytes ({}): the largest request could never be read",
                c.proxy.max_buffered_bytes, c.proxy.max_body_bytes
            ),
        ));
    }
    if c.proxy.max_interim_responses > 1000 {
        return Err(invalid(
            "proxy.max_interim_responses",
            format!("{} is more than 1000", c.proxy.max_interim_responses),
        ));
    }
    for (key, d) in [
        ("proxy.start_timeout", c.proxy.start_timeout),
        ("proxy.idle_check_interval", c.proxy.idle_check_interval),
        ("proxy.body_timeout", c.proxy.body_timeout),
        (
            "proxy.response_header_timeout",
            c.proxy.response_header_timeout,
        ),
        ("proxy.backend_idle_timeout", c.proxy.backend_idle_timeout),
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

    validate_auth(c, &invalid)?;
    validate_profiling(c, &invalid)?;

    let mut warnings = Vec::new();
    if !c.auth.require_management_auth {
        warnings.push("`auth.require_management_auth` is false: anyone who can reach the TCP listener can run instances".to_string());
    }
    if let Some(note) = validate_telemetry(c, &invalid)? {
        warnings.push(note);
    }
    Ok(warnings)
}

/// `[telemetry]` when enabled: an `http://` endpoint the exporter can use, header names and
/// values that can be sent. Returns the note about a rewritten (Jaeger Thrift) endpoint.
fn validate_telemetry(
    c: &Config,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<String>, ConfigError> {
    let t = &c.telemetry;
    if !t.enabled {
        return Ok(None);
    }
    if !cfg!(feature = "otlp") {
        return Err(invalid(
            "telemetry.enabled",
            "this llamactld was built without OTLP export (cargo feature `otlp`)".into(),
        ));
    }
    let e = t.otlp.endpoint.trim();
    if e.is_empty() {
        return Err(invalid(
            "telemetry.otlp.endpoint",
            "is required when telemetry is enabled (e.g. \"http://localhost:4318\" for http/protobuf, \"http://localhost:4317\" for grpc)".into(),
        ));
    }
    if e.starts_with("https://") {
        return Err(invalid(
            "telemetry.otlp.endpoint",
            "https is not supported (the exporter has no TLS client): send to a local OpenTelemetry Collector or agent over http, and let it forward with TLS".into(),
        ));
    }
    let (url, note) = t.otlp.effective_endpoint();
    match url.parse::<axum::http::Uri>() {
        Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => {}
        _ => {
            return Err(invalid(
                "telemetry.otlp.endpoint",
                format!("{e:?} is not an http:// URL"),
            ))
        }
    }
    for (k, v) in &t.otlp.headers {
        let key = format!("telemetry.otlp.headers.{k}");
        if axum::http::HeaderName::try_from(k.as_str()).is_err()
            || k.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err(invalid(
                &key,
                "is not a valid header name (lowercase letters, digits, `-`)".into(),
            ));
        }
        if axum::http::HeaderValue::try_from(v.expose()).is_err() {
            // The value is a secret: say what is wrong, never what it is.
            return Err(invalid(
                &key,
                "has characters a header value cannot carry".into(),
            ));
        }
    }
    Ok(note)
}

fn validate_auth(
    c: &Config,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let a = &c.auth;
    if a.socket_group.is_empty()
        || !a
            .socket_group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(invalid(
            "auth.socket_group",
            format!("{:?} is not a group name", a.socket_group),
        ));
    }
    if !is_loopback(&c.server.host) {
        if !a.require_inference_auth && !a.allow_unauthenticated_inference {
            return Err(invalid(
                "auth.require_inference_auth",
                format!("[server] host {:?} is reachable from other machines: set require_inference_auth = true (and give clients inference keys), or allow_unauthenticated_inference = true to serve models to anyone who can connect", c.server.host),
            ));
        }
        if !a.require_management_auth && !a.allow_unauthenticated_management {
            return Err(invalid(
                "auth.require_management_auth",
                format!("[server] host {:?} is reachable from other machines: management without a key would let anyone run instances; set require_management_auth = true, or allow_unauthenticated_management = true if you really mean it", c.server.host),
            ));
        }
    }
    let mut names = HashSet::new();
    for k in &a.keys {
        let key = format!("auth.keys.{}", k.name);
        validate_key_name(&k.name).map_err(|e| invalid("auth.keys.name", e))?;
        if !names.insert(k.name.as_str()) {
            return Err(invalid(&key, "two keys have this name".into()));
        }
        if k.key.is_some() {
            return Err(invalid(&key, "a key itself must not be written in the config file (it is readable by more than root): give its digest as hash = \"sha256:...\" (`llamactl keys generate` prints both), or provision it with the systemd credential llamactl.keys".into()));
        }
        match &k.hash {
            None => return Err(invalid(&key, "hash = \"sha256:<hex>\" is required".into())),
            Some(h) => {
                parse_digest(h).map_err(|e| invalid(&format!("{key}.hash"), e))?;
            }
        }
    }
    Ok(())
}

/// `[debug]` and `[profiling]`: the debug port stays on loopback unless explicitly opened up,
/// and the Pyroscope address is a plain `http://` URL (there is no TLS client in the daemon).
fn validate_profiling(
    c: &Config,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let d = &c.debug;
    let host = d.pprof_host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<IpAddr>().is_err() && host != "localhost" {
        return Err(invalid(
            "debug.pprof_host",
            format!("{:?} is not an IP address (or \"localhost\")", d.pprof_host),
        ));
    }
    if d.pprof_port == 0 {
        return Err(invalid("debug.pprof_port", "must be 1-65535".into()));
    }
    if !is_loopback(&d.pprof_host) && !d.pprof_allow_remote {
        return Err(invalid(
            "debug.pprof_host",
            format!("{:?} is reachable from other machines: the debug port has no authentication and its profiles show the daemon's internals; keep it on 127.0.0.1 (and use an SSH tunnel), or set pprof_allow_remote = true if you really mean it", d.pprof_host),
        ));
    }
    if d.pprof_enabled
        && d.pprof_port == c.server.port
        && (d.pprof_host == c.server.host
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()))
    {
        return Err(invalid(
            "debug.pprof_port",
            format!("{} is [server] port", d.pprof_port),
        ));
    }
    let p = &c.profiling.pyroscope;
    let name = &p.application_name;
    let name_ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !name_ok && (c.profiling.enabled || !name.is_empty()) {
        return Err(invalid(
            "profiling.pyroscope.application_name",
            format!(
                "{:?} must be 1-128 letters, digits, '.', '_' or '-'",
                p.application_name
            ),
        ));
    }
    let interval = p.upload_interval.get();
    if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(300))
        .contains(&interval)
    {
        return Err(invalid(
            "profiling.pyroscope.upload_interval",
            format!("{} is not between 1s and 300s", p.upload_interval),
        ));
    }
    if c.profiling.enabled || !p.server_address.is_empty() {
        let authority = p
            .server_address
            .strip_prefix("http://")
            .map(|rest| rest.split('/').next().unwrap_or_default());
        if authority.is_none_or(|a| split_authority(a).is_none()) {
            let why = if p.server_address.starts_with("https://") {
                "https is not supported (the daemon has no TLS client): push to a local Pyroscope or Grafana Alloy over http"
            } else {
                "must be an http:// URL such as \"http://pyroscope:4040\""
            };
            return Err(invalid(
                "profiling.pyroscope.server_address",
                format!("{:?}: {why}", p.server_address),
            ));
        }
    }
    Ok(())
}
