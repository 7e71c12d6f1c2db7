//! Hand-written zbus proxies for the parts of `org.freedesktop.systemd1` llamactl uses. Smaller
//! and faster to build than a generated binding of the whole interface.

use zbus::proxy;

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
}
