//! The config file's shape. Section and key names follow the monitoring guide the product was
//! specified from (its YAML, written as TOML); `[systemd]` is ours. Every struct denies unknown
//! keys so a typo is an error at load time, not a silently ignored setting.

use super::audit::AuditConfig;
use super::auth::{AuthConfig, RateLimitConfig};
use super::duration::HumanDuration;
use super::log_destinations::LogDestination;
use super::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The HTTP listener (API, `/metrics`, health endpoints, the proxy) and the admin socket.
    pub server: ServerConfig,
    /// What `/metrics` serves and how often resource statistics are collected.
    pub monitoring: MonitoringConfig,
    /// The daemon's own log (the backends' output goes to the journal, per instance unit).
    pub logging: LoggingConfig,
    /// The audit trail of mutations and authentication events: journal, file and API.
    pub audit: AuditConfig,
    /// OpenTelemetry traces exported over OTLP.
    pub telemetry: TelemetryConfig,
    /// The pprof debug port: profiles `go tool pprof` reads, and a dump of the runtime's tasks.
    pub debug: DebugConfig,
    /// Continuous CPU profiling, pushed to Pyroscope.
    pub profiling: ProfilingConfig,
    /// The systemd manager that runs the instances as transient units, and the D-Bus connection
    /// to it.
    pub systemd: SystemdConfig,
    /// Defaults and limits for instances (each a transient unit `llamactl-NAME.service`).
    pub instances: InstancesConfig,
    /// How each kind of backend is run.
    pub backends: BackendsConfig,
    /// The OpenAI-compatible proxy under `/v1`, which routes by the request's `model`.
    pub proxy: ProxyConfig,
    /// Who may use the API: the admin socket's group and API keys over TCP.
    pub auth: AuthConfig,
    /// Token buckets per API key, else per client address (IPv6 per /64), per route group;
    /// the admin socket is exempt. Over the limit: 429 with `Retry-After`.
    pub rate_limit: RateLimitConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Loopback by default: the API can start processes.
    pub host: String,
    /// TCP port of the API, `/metrics` and the health endpoints.
    pub port: u16,
    /// Where instance definitions live. Empty = `$STATE_DIRECTORY` (set by systemd's
    /// `StateDirectory=`) or `/var/lib/llamactl`.
    pub state_dir: Option<PathBuf>,
    /// Whole-request deadline for the API (not for proxied model requests).
    pub request_timeout: HumanDuration,
    /// Largest request body accepted; larger ones get 413 before they are read.
    pub max_body_bytes: u64,
    /// Time a connection has to send a complete request head, counted from when it is ready for
    /// one: after accept, and after each response on a kept-alive connection (so this is also
    /// the keep-alive idle timeout). Stops slowloris clients holding connections open.
    pub header_timeout: HumanDuration,
    /// TCP connections open at once; more are answered 503 and closed at accept (counted in
    /// `llamactl_http_connections_closed_by_limit_total{reason="max_connections"}`). The admin
    /// socket is not counted, so an operator can always get in.
    pub max_connections: usize,
    /// HTTP worker threads, each with its own event loop (like nginx's `worker_processes`);
    /// 0 = one per CPU the daemon may run on. One by default: a thread proxies tens of
    /// thousands of requests a second, far more than the backends behind it answer, and every
    /// further thread competes with those backends for CPUs (on 2 CPUs, two workers made the
    /// proxy 1.5× costlier per request than one; bench/proxy-latency.md).
    pub workers: usize,
    /// The local admin socket. Unset: `$RUNTIME_DIRECTORY/llamactl.sock` (systemd's
    /// `RuntimeDirectory=llamactl`), else `/run/llamactl/llamactl.sock`; `""` turns it off.
    pub socket: Option<PathBuf>,
    /// Host names (besides loopback names, IP literals, this machine's name and `host`) that a
    /// request's `Host` header may carry. Anything else is refused: this stops DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`https://ui.example:3000`) allowed to call the API cross-origin, with
    /// CORS answers. Empty: every cross-origin browser request is refused.
    pub cors_origins: Vec<String>,
}

/// Where the admin socket is when `[server] socket` is unset and systemd gave no
/// `$RUNTIME_DIRECTORY`.
pub const DEFAULT_SOCKET: &str = "/run/llamactl/llamactl.sock";

impl ServerConfig {
    /// The number of HTTP worker threads to start.
    pub fn worker_threads(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            state_dir: None,
            request_timeout: HumanDuration::secs(30),
            max_body_bytes: 1024 * 1024,
            header_timeout: HumanDuration::secs(30),
            max_connections: 4096,
            workers: 1,
            socket: None,
            allowed_hosts: Vec::new(),
            cors_origins: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    /// Master switch for `/metrics`.
    pub enabled: bool,
    /// The Prometheus endpoint.
    pub prometheus: PrometheusConfig,
    /// Metric groups served on `/metrics`: `instance_stats` (per-instance cgroup stats and
    /// states), `api_performance` (API requests and latency), `system_resources` (host memory,
    /// CPU, load, disk, network), `gpu` (NVML; add it on GPU hosts).
    pub metrics: Vec<MetricGroup>,
    /// Resource statistics are collected in the background at this interval and scrapes serve
    /// the latest collection (so a scrape costs the same with 1 or 300 instances); `0s` collects
    /// on every scrape instead. Rates such as `cpu_percent` are over this interval.
    pub collection_interval: HumanDuration,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prometheus: PrometheusConfig::default(),
            metrics: vec![
                MetricGroup::InstanceStats,
                MetricGroup::ApiPerformance,
                MetricGroup::SystemResources,
            ],
            collection_interval: HumanDuration::secs(5),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricGroup {
    InstanceStats,
    ApiPerformance,
    SystemResources,
    Gpu,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Serve Prometheus metrics (text format 0.0.4; OpenMetrics when the scraper asks for it).
    pub enabled: bool,
    /// The path metrics are served on.
    pub path: String,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/metrics".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// The least severe level logged (`LLAMACTL_LOG` overrides it with a tracing filter).
    pub level: LogLevel,
    /// Where log lines go: `auto` = the journal when stderr is connected to it (as under
    /// systemd), text on stderr otherwise; `journal` = the journal's native protocol, with fields;
    /// `json` = JSON lines on stderr; `text` = human-readable lines on stderr.
    pub output: LogOutput,
    /// Extra destinations beside the main output, each a `[[logging.destinations]]` table.
    pub destinations: Vec<LogDestination>,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
            output: LogOutput::Auto,
            destinations: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// `auto` = the journal when stderr is connected to it (`JOURNAL_STREAM`), text otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogOutput {
    Auto,
    Journal,
    Json,
    Text,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Export OpenTelemetry traces over OTLP: API requests, instance operations and proxied
    /// model requests.
    pub enabled: bool,
    /// The OTLP collector spans are sent to.
    pub otlp: OtlpConfig,
    /// Share of the traces the daemon starts itself that are sampled (0 to 1); a client's
    /// sampled `traceparent` is always followed.
    pub sampling_rate: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            otlp: OtlpConfig::default(),
            sampling_rate: 0.1,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector: for `http/protobuf` a base URL (`/v1/traces` is added when it has no
    /// path) or the full traces URL; for `grpc` the `http://host:port` of the gRPC receiver.
    pub endpoint: String,
    /// The OTLP transport.
    pub protocol: OtlpProtocol,
    /// Sent with every export (e.g. an `authorization` header); never logged.
    pub headers: BTreeMap<String, Secret>,
}

/// OTLP's transports, named as `OTEL_EXPORTER_OTLP_PROTOCOL` names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    Grpc,
}

impl OtlpProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::Grpc => "grpc",
        }
    }
}

impl OtlpConfig {
    /// The URL spans are sent to, and a note when it is not the one configured: Jaeger's
    /// Thrift collector (`:14268/api/traces`, as the seed's example has it) takes no OTLP, so
    /// that endpoint is sent to the same host's OTLP receiver (`:4318/v1/traces`, or `:4317`
    /// with `grpc`), which Jaeger has served since 1.35.
    pub fn effective_endpoint(&self) -> (String, Option<String>) {
        let e = self.endpoint.trim();
        let (scheme, rest) = e.split_once("://").unwrap_or(("http", e));
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (h, Some(p)),
            _ => (authority, None),
        };
        let grpc = self.protocol == OtlpProtocol::Grpc;
        if port == Some("14268") && path.trim_end_matches('/') == "/api/traces" {
            let url = if grpc {
                format!("{scheme}://{host}:4317")
            } else {
                format!("{scheme}://{host}:4318/v1/traces")
            };
            let note = format!(
                "[telemetry.otlp] endpoint {e} is Jaeger's Thrift collector, which takes no OTLP; spans go to the same host's OTLP receiver, {url}"
            );
            return (url, Some(note));
        }
        if !grpc && path.trim_end_matches('/').is_empty() {
            return (format!("{scheme}://{authority}/v1/traces"), None);
        }
        (e.to_string(), None)
    }
}

/// `[debug]`: the pprof-compatible debug port (`src/debug/`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Serve the pprof debug port (CPU and heap profiles, a task dump; no authentication).
    pub pprof_enabled: bool,
    /// The debug port.
    pub pprof_port: u16,
    /// The debug port's listen address: loopback unless `pprof_allow_remote`.
    pub pprof_host: String,
    /// Lets `pprof_host` be an address other machines reach (profiles and task dumps show the
    /// daemon's internals and cost CPU; the port has no authentication).
    pub pprof_allow_remote: bool,
}

impl Default for DebugConfig {
    fn default() -> Self {
        Self {
            pprof_enabled: false,
            pprof_port: 6060,
            pprof_host: "127.0.0.1".into(),
            pprof_allow_remote: false,
        }
    }
}

/// `[profiling]`: continuous CPU profiles pushed to Pyroscope (`src/debug/pyroscope.rs`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfilingConfig {
    /// Push a CPU profile of every `upload_interval` to Pyroscope; failures are logged and
    /// counted, never fatal.
    pub enabled: bool,
    /// The Pyroscope server profiles are pushed to.
    pub pyroscope: PyroscopeConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PyroscopeConfig {
    /// `http://host[:port][/prefix]`; `/ingest` is appended.
    pub server_address: String,
    /// The application name profiles are filed under.
    pub application_name: String,
    /// Sent as `Authorization: Bearer …`; never logged.
    pub auth_token: Option<Secret>,
    /// The length of each profile pushed (one push per interval).
    pub upload_interval: HumanDuration,
}

impl Default for PyroscopeConfig {
    fn default() -> Self {
        Self {
            server_address: String::new(),
            application_name: "llamactl".into(),
            auth_token: None,
            upload_interval: HumanDuration::secs(10),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemdConfig {
    /// `system` for the system manager (production), `user` for a per-user manager.
    pub bus: BusKind,
    /// A D-Bus address overriding the bus's standard one (e.g. `unix:path=/run/dbus/system_bus_socket`).
    pub address: Option<String>,
    /// The slice instances run in.
    pub slice: String,
    /// How long start-up waits for the manager before declaring READY anyway, degraded.
    pub ready_timeout: HumanDuration,
    /// How often the manager is asked for its state (this also detects a dropped bus).
    pub check_interval: HumanDuration,
    /// Ceiling of the reconnect backoff (it starts at 250 ms and doubles).
    pub reconnect_max_backoff: HumanDuration,
}

impl Default for SystemdConfig {
    fn default() -> Self {
        Self {
            bus: BusKind::System,
            address: None,
            slice: "llamactl.slice".into(),
            ready_timeout: HumanDuration::secs(10),
            check_interval: HumanDuration::secs(5),
            reconnect_max_backoff: HumanDuration::secs(30),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    System,
    User,
}

impl BusKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BusKind::System => "system",
            BusKind::User => "user",
        }
    }
}

/// Defaults and limits for instances. Field names follow upstream Llamactl's `instances` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstancesConfig {
    /// Ports handed to instances that do not ask for one: `[first, last]`, inclusive.
    pub port_range: [u16; 2],
    /// User the backends run as. Unset: a transient `DynamicUser` per instance (no files owned,
    /// nothing to set up); models must then be world-readable.
    pub user: Option<String>,
    /// Restart an instance whose backend exits, for instances that do not say.
    pub default_auto_restart: bool,
    /// Automatic restarts before an instance is left failed, for instances that do not say.
    pub default_max_restarts: u32,
    /// Seconds between automatic restarts.
    pub default_restart_delay: u64,
    /// Let a proxied request start a stopped instance, for instances that do not say.
    pub default_on_demand_start: bool,
    /// How long a start or stop job may take before the API reports a timeout.
    pub job_timeout: HumanDuration,
    /// How long systemd waits for a backend to exit on stop before killing it.
    pub stop_timeout: HumanDuration,
    /// How often running backends' health endpoints are probed.
    pub health_check_interval: HumanDuration,
    /// At most this many instances run at once (0 = no limit). Starting one more stops the least
    /// recently used instance that has no request in flight.
    pub max_running: u32,
    /// Backends an instance may use. `command` runs any program the API names, so it is off
    /// unless the operator lists it: a management key must not be a root shell.
    pub allowed_backends: Vec<BackendType>,
    /// Let instances set the environment variables of `environment_deny` and the built-in list
    /// (`LD_*`, `PATH`, `PYTHONPATH`, ...), which change what code a backend loads.
    pub allow_unsafe_environment: bool,
    /// More environment variable names instances may not set (`NAME`, or `PREFIX*`).
    pub environment_deny: Vec<String>,
    /// Most instances that may exist.
    pub max_instances: u32,
    /// Largest instance spec (its options as JSON), in bytes.
    pub max_spec_bytes: u64,
    /// Most model aliases (`aliases`) one instance may have.
    pub max_aliases: u32,
    /// Most journal entries one `GET .../logs?lines=` answers (`lines` above it, or `-1` for
    /// all, gets this many).
    pub logs_max_lines: u32,
    /// Longest message of a log entry, in bytes; a longer one is cut, marked `…`. (journalctl
    /// itself gives fields over 4096 bytes as null: those read "[message over 4096 bytes]".)
    pub logs_max_entry_bytes: u32,
    /// `follow=true` log streams open at once (each runs a `journalctl -f`); more get 429.
    pub logs_max_followers: u32,
}

/// The kinds of backend an instance can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendType {
    LlamaCpp,
    Vllm,
    Command,
}

impl BackendType {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendType::LlamaCpp => "llama_cpp",
            BackendType::Vllm => "vllm",
            BackendType::Command => "command",
        }
    }
}

impl Default for InstancesConfig {
    fn default() -> Self {
        Self {
            port_range: [8000, 9000],
            user: None,
            default_auto_restart: true,
            default_max_restarts: 3,
            default_restart_delay: 5,
            default_on_demand_start: true,
            job_timeout: HumanDuration::secs(60),
            stop_timeout: HumanDuration::secs(30),
            health_check_interval: HumanDuration::secs(2),
            max_running: 0,
            allowed_backends: vec![BackendType::LlamaCpp, BackendType::Vllm],
            allow_unsafe_environment: false,
            environment_deny: Vec::new(),
            max_instances: 256,
            max_spec_bytes: 64 * 1024,
            max_aliases: 16,
            logs_max_lines: 10_000,
            logs_max_entry_bytes: 4096,
            logs_max_followers: 16,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendsConfig {
    /// llama.cpp's `llama-server`.
    pub llama_cpp: BackendCommand,
    /// vLLM's OpenAI-compatible server.
    pub vllm: BackendCommand,
}

/// How to run one kind of backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendCommand {
    /// Executable: an absolute path, or a name looked up in the daemon's `PATH` at start.
    /// Unset: the backend's usual name (`llama-server`, `vllm`).
    pub command: Option<String>,
    /// Arguments put before the instance's own.
    pub args: Vec<String>,
    /// Environment for every instance of this backend. These win over an instance's own
    /// entries: the operator's settings are not the API's to override.
    pub environment: BTreeMap<String, String>,
}

impl BackendCommand {
    pub fn command_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.command.as_deref().unwrap_or(default)
    }
}

/// The OpenAI-compatible proxy (`/v1/...`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Largest request body the proxy accepts (prompts can be long); 413 above it.
    pub max_body_bytes: u64,
    /// How long a request waits for an on-demand start (or a free slot under `max_running`)
    /// before it gets 503 with `Retry-After`.
    pub start_timeout: HumanDuration,
    /// How often idle instances are looked for (`idle_timeout` of each instance).
    pub idle_check_interval: HumanDuration,
    /// Time a client has to send a model request's whole body (408 after it).
    pub body_timeout: HumanDuration,
    /// Memory all model request bodies being received or forwarded may hold together (each is
    /// read whole to route it by its `model`); a request that would go over it gets 503 with
    /// `Retry-After`.
    pub max_buffered_bytes: u64,
    /// Time a backend has to send its response head (504 after it). A non-streamed completion
    /// sends its head only when the whole answer is ready, so this bounds its generation time.
    pub response_header_timeout: HumanDuration,
    /// Interim (`1xx`) answers a backend may send before its real one (502 beyond).
    pub max_interim_responses: u32,
    /// Time a backend may send nothing once its response head has come; the response is then
    /// cut off (counted as 504), so a backend hung mid-stream does not hold its request — and
    /// the instance's in-flight count, which blocks idle stop and eviction — for ever.
    pub backend_idle_timeout: HumanDuration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            start_timeout: HumanDuration::secs(120),
            idle_check_interval: HumanDuration::secs(10),
            body_timeout: HumanDuration::secs(60),
            max_buffered_bytes: 256 * 1024 * 1024,
            response_header_timeout: HumanDuration::secs(600),
            max_interim_responses: 8,
            backend_idle_timeout: HumanDuration::secs(300),
        }
    }
}
