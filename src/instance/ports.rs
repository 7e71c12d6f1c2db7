//! Ports for instances: an explicit one must be free of other instances and of the daemon's
//! own; otherwise the first in `[instances] port_range` that no instance has and nothing
//! listens on.

use super::supervisor::{OpError, Supervisor};
use std::collections::BTreeMap;

impl Supervisor {
    /// A port for a new instance, or a conflict for an explicit one.
    pub(super) fn assign_port(
        &self,
        name: &str,
        wanted: Option<u16>,
        host: &str,
    ) -> Result<u16, OpError> {
        let t = self.table();
        let taken: BTreeMap<u16, &str> = t
            .instances
            .values()
            .filter(|e| e.spec.name != name)
            .filter_map(|e| e.spec.options.port().map(|p| (p, e.spec.name.as_str())))
            .collect();
        if let Some(p) = wanted {
            if let Some(other) = taken.get(&p) {
                return Err(OpError::Conflict(format!(
                    "port {p} is already used by instance {other:?}"
                )));
            }
            if p == self.daemon_port {
                return Err(OpError::Conflict(format!(
                    "port {p} is llamactld's own port"
                )));
            }
            return Ok(p);
        }
        let [lo, hi] = self.settings().instances.port_range;
        (lo..=hi)
            .find(|p| *p != self.daemon_port && !taken.contains_key(p) && port_free(host, *p))
            .ok_or_else(|| {
                OpError::Conflict(format!(
                    "no free port left in [instances] port_range {lo}-{hi}"
                ))
            })
    }
}

/// Whether nothing listens on `host:port` (a bind test; the backend binds it moments later).
pub fn port_free(host: &str, port: u16) -> bool {
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    std::net::TcpListener::bind((host, port)).is_ok()
}
