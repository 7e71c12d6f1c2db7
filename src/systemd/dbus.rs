//! Hand-written zbus proxies for the parts of `org.freedesktop.systemd1` llamactl uses. Smaller
//! and faster to build than a generated binding of the whole interface.

use zbus::proxy;
use zbus::{OwnedObjectPath, Variant as Value};

/// One row of `ListUnitsByPatterns`.
pub type UnitRow = (
    String,          // name
    String,          // description
    String,          // load state
    String,          // active state
    String,          // sub state
    String,          // following
    OwnedObjectPath, // unit object
    u32,             // job id
    String,          // job type
    OwnedObjectPath, // job object
);

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub trait Manager {
    /// e.g. `252.38-1~deb12u1`
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    /// `initializing`, `starting`, `running`, `degraded`, `maintenance` or `stopping`.
    #[zbus(property)]
    fn system_state(&self) -> zbus::Result<String>;

    /// Asks the manager to emit unit and job signals to us.
    fn subscribe(&self) -> zbus::Result<()>;

    #[allow(clippy::type_complexity)]
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;

    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;

    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;

    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<Vec<UnitRow>>;

    /// The unit's object path; fails with `NoSuchUnit` when it is not loaded.
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
pub trait Unit {
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    /// Microseconds since the epoch; 0 when never active.
    #[zbus(property)]
    fn active_enter_timestamp(&self) -> zbus::Result<u64>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
pub trait Service {
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn exec_main_status(&self) -> zbus::Result<i32>;
    /// `success`, `exit-code`, `signal`, `core-dump`, `watchdog`, `start-limit-hit`, ...
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn control_group(&self) -> zbus::Result<String>;
}
