//! Facts about the host the daemon runs on.
//!
//! Every file is read through a [`HostPaths`] root rather than a hard-coded `/proc` or `/sys`, the
//! way node_exporter does it: the unit tests run against fixture trees captured from real hosts
//! (cgroup v2, hybrid, v1), and a containerised daemon can be pointed at the host's bind-mounted
//! `/proc` and `/sys`.

use std::path::PathBuf;

pub mod caps;
pub mod cgroup_layout;
pub mod meminfo;
pub mod users;

pub use self::caps::effective_capabilities;
pub use self::cgroup_layout::{detect_layout, own_cgroup, CgroupLayout};
pub use self::meminfo::{read_meminfo, MemInfo};

/// Where procfs and sysfs are mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPaths {
    /// Mount point of procfs, normally `/proc`.
    pub procfs: PathBuf,
    /// Mount point of sysfs, normally `/sys`.
    pub sysfs: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            procfs: PathBuf::from("/proc"),
            sysfs: PathBuf::from("/sys"),
        }
    }
}

impl HostPaths {
    /// `rel` is relative to the procfs root, e.g. `"self/stat"`. A leading `/` is tolerated so a
    /// caller cannot accidentally escape the root (`PathBuf::join` with an absolute path would
    /// replace it).
    pub fn proc(&self, rel: &str) -> PathBuf {
        self.procfs.join(rel.trim_start_matches('/'))
    }

    /// `rel` is relative to the sysfs root, e.g. `"fs/cgroup"`; see [`HostPaths::proc`].
    pub fn sys(&self, rel: &str) -> PathBuf {
        self.sysfs.join(rel.trim_start_matches('/'))
    }
}

/// The fixture root used by unit tests across `host` and `metrics`.
#[cfg(test)]
pub(crate) fn fixture_paths(name: &str) -> HostPaths {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/host")
        .join(name);
    HostPaths {
        procfs: root.join("proc"),
        sysfs: root.join("sys"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths_are_the_real_mounts() {
        let paths = HostPaths::default();
        assert_eq!(paths.proc("self/stat"), PathBuf::from("/proc/self/stat"));
        assert_eq!(paths.sys("fs/cgroup"), PathBuf::from("/sys/fs/cgroup"));
    }

    #[test]
    fn absolute_relative_paths_stay_under_the_root() {
        let paths = HostPaths {
            procfs: PathBuf::from("/srv/host/proc"),
            sysfs: PathBuf::from("/srv/host/sys"),
        };
        assert_eq!(
            paths.proc("/meminfo"),
            PathBuf::from("/srv/host/proc/meminfo")
        );
        assert_eq!(paths.sys("/kernel"), PathBuf::from("/srv/host/sys/kernel"));
    }
}
