//! Instances: model servers run as transient systemd units. `spec` is what an operator asks for,
//! `store` keeps it on disk, `plan` turns it into a unit, `supervisor` runs units through a
//! `systemd::manager::UnitManager` (lifecycle operations), `table` holds what is known of each
//! and answers reads, `follow` keeps it current (signals, probes, adoption), `ports` hands out
//! ports, `handle` is an instance as the proxy's hot path sees it, `demand` starts and stops
//! instances by traffic (on-demand start, LRU eviction, idle stop), `policy` says what a spec
//! may ask for. `tests.rs` tests the supervisor on an in-memory manager.

pub mod demand;
mod follow;
pub mod handle;
pub mod logs;
pub mod plan;
pub mod policy;
mod ports;
pub mod runtime;
pub mod spec;
pub mod store;
pub mod supervisor;
mod table;
#[cfg(test)]
mod tests;
mod trace;

pub use runtime::State;
pub use supervisor::{OpError, Rights, Settings, Supervisor};
pub use table::{InstanceHealth, ModelInfo};
