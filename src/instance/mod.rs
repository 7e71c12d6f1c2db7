//! Instances: model servers run as transient systemd units. `spec` is what an operator asks for,
//! `store` keeps it on disk, `plan` turns it into a unit, `supervisor` runs units through a
//! `systemd::manager::UnitManager` and tracks their state (`follow`: signals, probes, adoption),
//! `demand` starts and stops them by traffic, `policy` says what a spec may ask for. `tests.rs`
//! tests the supervisor on an in-memory manager.

pub mod demand;
mod follow;
pub mod logs;
pub mod plan;
pub mod policy;
pub mod runtime;
pub mod spec;
pub mod store;
pub mod supervisor;
#[cfg(test)]
mod tests;

pub use runtime::State;
pub use supervisor::{OpError, Rights, Settings, Supervisor};
