//! llamactl: run local LLM servers as systemd units and make them observable.
//!
//! Layers, each using only those below it (checked by `layering.rs`): `host`/`fsutil` (machine
//! facts, atomic files) → `config` → `stats` (cgroup and procfs readers), `systemd` (the manager
//! over D-Bus), `auth`, `logging` → `instance` (specs, units, supervisor), `metrics` → `proxy`
//! (the OpenAI-compatible front door), `audit`, `debug` (the pprof debug port, continuous
//! profiling) → `http` (routes, guard) → `daemon` (wires it
//! together under systemd's notify protocol) and `cli` (the `llamactl` client). The binaries in
//! `src/bin/` are thin.

pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod debug;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod http;
pub mod instance;
pub mod layering;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod stats;
pub mod systemd;
pub mod telemetry;
