//! Ports for instances: an explicit one must be free of other instances and of the daemon's
//! own; otherwise the first in `[instances] port_range` that no instance has and nothing
//! listens on. The listen probes are binds (system calls, up to one per port of the range),
//! made on the blocking pool rather than on a runtime thread.

use super::supervisor::{OpError, Supervisor};
use std::collections::BTreeMap;

impl Supervisor {
    /// A port for a new instance, or a conflict for an explicit one.
    pub(super) async fn assign_port(
        &self,
        name: &str,
        wanted: Option<u16>,
        host: &str,
    ) -> Result<u16, OpError> {
        let [lo, hi] = self.settings().instances.port_range;
        let candidates = {
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
            (lo..=hi)
                .filter(|p| *p != self.daemon_port && !taken.contains_key(p))
                .collect::<Vec<u16>>()
        };
        let host = host.to_string();
        let found = tokio::task::spawn_blocking(move || {
            candidates.into_iter().find(|p| port_free_now(&host, *p))
        })
        .await
        .map_err(|e| OpError::Failed(format!("probing ports: {e}")))?;
        found.ok_or_else(|| {
            OpError::Conflict(format!(
                "no free port left in [instances] port_range {lo}-{hi}"
            ))
        })
    }
}

/// Whether nothing listens on `host:port` (a bind test; the backend binds it moments later),
/// probed on the blocking pool.
pub async fn port_free(host: &str, port: u16) -> bool {
    let host = host.to_string();
    tokio::task::spawn_blocking(move || port_free_now(&host, port))
        .await
        .unwrap_or(false)
}

fn port_free_now(host: &str, port: u16) -> bool {
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    std::net::TcpListener::bind((host, port)).is_ok()
}
