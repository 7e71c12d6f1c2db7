//! One integration-test binary (one link, one sandbox boot), with a module per area. The
//! README's "Tests" section says what each holds, in more words. Unit tests of pure logic live
//! beside their code (`cargo test --lib`); the supervisor's logic on an in-memory systemd is
//! `src/instance/tests.rs`. Every test here runs against the real thing: the project's private
//! systemd, real units, a real llama-server.

#[macro_use]
mod util; // HTTP helpers (as the test management key, raw, over the socket), the private systemd

mod audit; // (a directory) the audit trail three ways, its failure modes, rate limits, usage per key
mod cli; // --check-config, help, man pages, client errors
mod dashboard; // the Grafana dashboard: every panel's expressions return data from a real Prometheus scraping a daemon
mod drills; // reliability drills: kill -9 under load, bus stopped, full disk, hung backends, connection floods
mod instances; // instances as transient units: lifecycle, restarts, adoption, CLI
mod lane; // the front door's own HTTP/1.1 for model requests: pipelining, hand-off to hyper, Expect, close, timeouts, framing
mod limits; // the HTTP server's connection limits: header timeout, max connections, slowloris
mod log_shipping; // [[logging.destinations]] syslog (RFC 5424 on a test socket, parsed by a real rsyslog) and Elasticsearch (_bulk to a local stand-in); a dead one costs requests nothing
mod operations; // instance operations run to completion: a client leaving, 202 after request_timeout
mod packaging; // packaging/check.sh
mod plain_process; // llamactld as a plain process, no systemd: stderr logs, no bus, the socket
mod profiling; // the pprof debug port read by go tool pprof, runtime metrics, Pyroscope pushes
mod proxy; // the OpenAI-compatible proxy in front of real llama-servers
mod resources; // /metrics against real units' cgroups
mod security; // (a directory) access control: keys, the admin socket, browsers, policy, unit hardening
mod service; // llamactld as a service from the shipped unit: notify, watchdog, reload, bus loss
mod soak; // mixed load for LLAMACTL_SOAK_SECS (60): rss, fds, threads, series must stay flat
mod telemetry; // OpenTelemetry traces to a real OTLP receiver (HTTP and gRPC): spans, parents, sampling, a dead collector
