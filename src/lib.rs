//! llamactl: run local LLM servers as systemd units and make them observable.
//!
//! The modules follow the data flow: `config` → `systemd` (the manager over D-Bus) → `host` facts
//! (procfs, cgroups) → `metrics` / `http` (health, `/metrics`) → `daemon` (wires it together under
//! systemd's notify protocol). `cli` is the `llamactl` client. The binaries in `src/bin/` are thin.

pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fsutil;
pub mod host;
pub mod http;
pub mod instance;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod stats;
pub mod systemd;
