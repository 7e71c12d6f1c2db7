//! Instances: model servers run as transient systemd units. `spec` is what an operator asks for,
//! `store` keeps it on disk, `supervisor` turns it into units over D-Bus and tracks their state.

pub mod demand;
pub mod logs;
pub mod plan;
pub mod policy;
pub mod runtime;
pub mod spec;
pub mod store;
pub mod supervisor;
mod watch;

pub use supervisor::{OpError, Rights, Settings, Supervisor};
