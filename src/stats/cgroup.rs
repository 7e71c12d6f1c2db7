//! Per-unit resource usage read straight from the cgroup filesystem (never over D-Bus, so a
//! scrape costs file reads only). Pure cgroup v2 is what production hosts run; the v1 and hybrid
//! layouts (older hosts, and this project's test sandbox) keep memory and CPU in per-controller
//! hierarchies. Every field is optional: a file that is missing on a host leaves its series out.

use crate::host::{CgroupLayout, HostPaths};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupStats {
    pub memory_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    /// `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    pub memory_anon_bytes: Option<u64>,
    pub memory_file_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub cpu_usec: Option<u64>,
    pub cpu_user_usec: Option<u64>,
    pub cpu_system_usec: Option<u64>,
    pub cpu_throttled_usec: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub tasks: Option<u64>,
    /// PSI "some" stall totals, microseconds.
    pub pressure_cpu_usec: Option<u64>,
    pub pressure_memory_usec: Option<u64>,
    pub pressure_io_usec: Option<u64>,
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn read_u64(p: &Path) -> Option<u64> {
    read(p)?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat, memory.events, memory.oom_control).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// PSI file: `some avg10=0.00 avg60=0.00 avg300=0.00 total=12345`.
pub(crate) fn psi_some_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// io.stat: `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0`, one line per device.
pub(crate) fn io_stat(text: &str) -> (Option<u64>, Option<u64>) {
    let (mut r, mut w, mut any) = (0u64, 0u64, false);
    for f in text.split_whitespace() {
        if let Some(v) = f
            .strip_prefix("rbytes=")
            .and_then(|v| v.parse::<u64>().ok())
        {
            r = r.saturating_add(v);
            any = true;
        } else if let Some(v) = f
            .strip_prefix("wbytes=")
            .and_then(|v| v.parse::<u64>().ok())
        {
            w = w.saturating_add(v);
            any = true;
        }
    }
    if any {
        (Some(r), Some(w))
    } else {
        (None, None)
    }
}

/// v1 blkio.throttle.io_service_bytes: `8:0 Read 123` lines (and a `Total` line).
pub(crate) fn blkio(text: &str) -> (Option<u64>, Option<u64>) {
    let (mut r, mut w, mut any) = (0u64, 0u64, false);
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let (Some(_dev), Some(op), Some(v)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(v) = v.parse::<u64>() else { continue };
        match op {
            "Read" => r = r.saturating_add(v),
            "Write" => w = w.saturating_add(v),
            _ => continue,
        }
        any = true;
    }
    if any {
        (Some(r), Some(w))
    } else {
        (None, None)
    }
}

/// v1 cpuacct.stat: `user N` and `system N` in USER_HZ ticks (100 per second on Linux), as
/// microseconds (none where that would not fit a u64).
pub(crate) fn cpuacct_stat(text: &str) -> (Option<u64>, Option<u64>) {
    let usec = |key| keyed(text, key)?.checked_mul(10_000);
    (usec("user"), usec("system"))
}

fn join(base: PathBuf, cg: &str) -> PathBuf {
    base.join(cg.trim_start_matches('/'))
}

/// The first of several candidate controller mounts that exists (`cpu,cpuacct` is co-mounted on
/// most v1 hosts, separate on some).
fn controller(paths: &HostPaths, names: &[&str], cg: &str) -> Option<PathBuf> {
    names
        .iter()
        .map(|n| join(paths.sys(&format!("fs/cgroup/{n}")), cg))
        .find(|p| p.is_dir())
}

/// Reads the stats of the cgroup `cg` (a `ControlGroup` such as
/// `/llamactl.slice/llamactl-smol.service`).
pub fn read_stats(paths: &HostPaths, layout: CgroupLayout, cg: &str) -> CgroupStats {
    match layout {
        CgroupLayout::V2 => read_v2(&join(paths.sys("fs/cgroup"), cg)),
        CgroupLayout::Hybrid | CgroupLayout::V1 => read_v1(paths, cg),
    }
}

fn read_v2(dir: &Path) -> CgroupStats {
    let mut s = CgroupStats {
        memory_bytes: read_u64(&dir.join("memory.current")),
        memory_peak_bytes: read_u64(&dir.join("memory.peak")),
        memory_limit_bytes: read(&dir.join("memory.max")).and_then(|v| v.trim().parse().ok()),
        tasks: read_u64(&dir.join("pids.current")),
        ..Default::default()
    };
    if let Some(m) = read(&dir.join("memory.stat")) {
        s.memory_anon_bytes = keyed(&m, "anon");
        s.memory_file_bytes = keyed(&m, "file");
    }
    if let Some(e) = read(&dir.join("memory.events")) {
        s.oom_kills = keyed(&e, "oom_kill");
    }
    if let Some(c) = read(&dir.join("cpu.stat")) {
        s.cpu_usec = keyed(&c, "usage_usec");
        s.cpu_user_usec = keyed(&c, "user_usec");
        s.cpu_system_usec = keyed(&c, "system_usec");
        s.cpu_throttled_usec = keyed(&c, "throttled_usec");
    }
    if let Some(io) = read(&dir.join("io.stat")) {
        (s.io_read_bytes, s.io_write_bytes) = io_stat(&io);
    }
    psi(dir, &mut s);
    s
}

fn psi(dir: &Path, s: &mut CgroupStats) {
    s.pressure_cpu_usec = read(&dir.join("cpu.pressure")).and_then(|t| psi_some_total(&t));
    s.pressure_memory_usec = read(&dir.join("memory.pressure")).and_then(|t| psi_some_total(&t));
    s.pressure_io_usec = read(&dir.join("io.pressure")).and_then(|t| psi_some_total(&t));
}

/// A v1 `memory.limit_in_bytes` of "unlimited" is a huge page-aligned number.
const V1_UNLIMITED: u64 = 1 << 60;

fn read_v1(paths: &HostPaths, cg: &str) -> CgroupStats {
    let mut s = CgroupStats::default();
    if let Some(m) = controller(paths, &["memory"], cg) {
        s.memory_bytes = read_u64(&m.join("memory.usage_in_bytes"));
        s.memory_peak_bytes = read_u64(&m.join("memory.max_usage_in_bytes"));
        s.memory_limit_bytes =
            read_u64(&m.join("memory.limit_in_bytes")).filter(|l| *l < V1_UNLIMITED);
        if let Some(st) = read(&m.join("memory.stat")) {
            s.memory_anon_bytes = keyed(&st, "rss");
            s.memory_file_bytes = keyed(&st, "cache");
        }
        if let Some(o) = read(&m.join("memory.oom_control")) {
            s.oom_kills = keyed(&o, "oom_kill");
        }
    }
    if let Some(c) = controller(paths, &["cpuacct", "cpu,cpuacct", "cpu"], cg) {
        s.cpu_usec = read_u64(&c.join("cpuacct.usage")).map(|ns| ns / 1000);
        if let Some(st) = read(&c.join("cpuacct.stat")) {
            (s.cpu_user_usec, s.cpu_system_usec) = cpuacct_stat(&st);
        }
        if let Some(st) = read(&c.join("cpu.stat")) {
            s.cpu_throttled_usec = keyed(&st, "throttled_time").map(|ns| ns / 1000);
        }
    }
    if let Some(p) = controller(paths, &["pids"], cg) {
        s.tasks = read_u64(&p.join("pids.current"));
    }
    if let Some(b) = controller(paths, &["blkio"], cg) {
        if let Some(t) = read(&b.join("blkio.throttle.io_service_bytes")) {
            (s.io_read_bytes, s.io_write_bytes) = blkio(&t);
        }
    }
    // Hybrid: the unified tree tracks processes and, on newer kernels, CPU time and PSI.
    if let Some(u) = controller(paths, &["unified"], cg) {
        if s.cpu_usec.is_none() {
            if let Some(c) = read(&u.join("cpu.stat")) {
                s.cpu_usec = keyed(&c, "usage_usec");
                s.cpu_user_usec = keyed(&c, "user_usec");
                s.cpu_system_usec = keyed(&c, "system_usec");
            }
        }
        psi(&u, &mut s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> HostPaths {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cgroup")
            .join(name);
        HostPaths {
            procfs: root.join("proc"),
            sysfs: root.join("sys"),
        }
    }

    const CG: &str = "/llamactl.slice/llamactl-smol.service";

    #[test]
    fn v2_full() {
        let s = read_stats(&fixture("v2"), CgroupLayout::V2, CG);
        assert_eq!(s.memory_bytes, Some(188_416_000));
        assert_eq!(s.memory_peak_bytes, Some(201_326_592));
        assert_eq!(s.memory_limit_bytes, Some(1_073_741_824));
        assert_eq!(s.memory_anon_bytes, Some(83_886_080));
        assert_eq!(s.memory_file_bytes, Some(103_809_024));
        assert_eq!(s.oom_kills, Some(2));
        assert_eq!(s.cpu_usec, Some(12_345_678));
        assert_eq!(s.cpu_user_usec, Some(10_000_000));
        assert_eq!(s.cpu_system_usec, Some(2_345_678));
        assert_eq!(s.cpu_throttled_usec, Some(5_000));
        assert_eq!(
            (s.io_read_bytes, s.io_write_bytes),
            (Some(104_857_600 + 4096), Some(8192))
        );
        assert_eq!(s.tasks, Some(7));
        assert_eq!(s.pressure_cpu_usec, Some(1_500_000));
        assert_eq!(s.pressure_memory_usec, Some(20_000));
        assert_eq!(s.pressure_io_usec, Some(300));
    }

    #[test]
    fn v2_unlimited_and_missing_files() {
        let s = read_stats(
            &fixture("v2"),
            CgroupLayout::V2,
            "/llamactl.slice/llamactl-sparse.service",
        );
        assert_eq!(s.memory_bytes, Some(4096));
        assert_eq!(s.memory_limit_bytes, None, "max = unlimited");
        assert_eq!(
            s.memory_peak_bytes, None,
            "no memory.peak before Linux 5.19"
        );
        assert_eq!(s.io_read_bytes, None);
        assert_eq!(s.pressure_cpu_usec, None);
        assert_eq!(s.cpu_usec, Some(10));
        let none = read_stats(&fixture("v2"), CgroupLayout::V2, "/nope.service");
        assert_eq!(none, CgroupStats::default());
    }

    #[test]
    fn v1_hybrid() {
        let s = read_stats(&fixture("hybrid"), CgroupLayout::Hybrid, CG);
        assert_eq!(s.memory_bytes, Some(50_331_648));
        assert_eq!(s.memory_limit_bytes, None);
        assert_eq!(s.memory_anon_bytes, Some(33_554_432));
        assert_eq!(s.oom_kills, Some(1));
        assert_eq!(s.cpu_usec, Some(2_000_000));
        assert_eq!(s.cpu_user_usec, Some(1_500_000));
        assert_eq!(s.tasks, Some(3));
        assert_eq!(s.pressure_cpu_usec, Some(42));
        assert_eq!(s.io_read_bytes, None);
    }

    /// Found by `tools/fuzz` (fuzz/artifacts/cgroup/): ticks × 10000 overflowed and panicked.
    #[test]
    fn cpuacct_ticks_that_overflow_are_none() {
        assert_eq!(
            cpuacct_stat("user 1844674407370956\nsystem 3\n"),
            (None, Some(30_000))
        );
    }

    #[test]
    fn parsers() {
        assert_eq!(psi_some_total("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1\n"), Some(5));
        assert_eq!(io_stat(""), (None, None));
        assert_eq!(
            blkio("8:0 Read 10\n8:0 Write 5\n8:0 Total 15\nTotal 15\n"),
            (Some(10), Some(5))
        );
    }
}
