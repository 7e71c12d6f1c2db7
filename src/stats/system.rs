//! Host-wide counters from procfs, so a single llamactl scrape answers "does another model fit,
//! and is the host busy" without node_exporter. Each source is read independently; one that fails
//! leaves its fields `None` (series absent).

use crate::host::{read_meminfo, HostPaths};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SystemStats {
    pub memory_total_bytes: Option<u64>,
    pub memory_available_bytes: Option<u64>,
    pub cpu_count: Option<u64>,
    /// Seconds the CPUs spent not idle (all CPUs summed), from `/proc/stat`.
    pub cpu_busy_seconds: Option<f64>,
    /// All CPU time (busy + idle + iowait), to compute a busy percentage between two snapshots.
    pub cpu_total_seconds: Option<f64>,
    pub load: Option<[f64; 3]>,
    pub disk_read_bytes: Option<u64>,
    pub disk_written_bytes: Option<u64>,
    pub network_receive_bytes: Option<u64>,
    pub network_transmit_bytes: Option<u64>,
}

/// `/proc/stat` times are in USER_HZ, which Linux fixes at 100 for userspace.
const USER_HZ: f64 = 100.0;

pub(crate) fn cpu(text: &str) -> Option<(u64, f64, f64)> {
    let count = text
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u64;
    let first = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = first
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user/nice).
    // Counters that do not add up in a u64 are no CPU times.
    let total = v
        .iter()
        .take(8)
        .try_fold(0u64, |sum, t| sum.checked_add(*t))?;
    let idle = v[3].checked_add(v.get(4).copied().unwrap_or(0))?;
    Some((
        count,
        (total - idle) as f64 / USER_HZ,
        total as f64 / USER_HZ,
    ))
}

/// Whole disks only (partitions would count twice): sd*, vd*, xvd*, hd*, nvme*n*, mmcblk*.
fn whole_disk(name: &str) -> bool {
    let letters = |p: &str| {
        name.strip_prefix(p)
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase()))
    };
    let nvme = name.strip_prefix("nvme").is_some_and(|r| {
        let mut parts = r.split('n');
        matches!((parts.next(), parts.next(), parts.next()),
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()))
    });
    let mmc = name
        .strip_prefix("mmcblk")
        .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()));
    letters("sd") || letters("vd") || letters("xvd") || letters("hd") || nvme || mmc
}

pub(crate) fn diskstats(text: &str) -> Option<(u64, u64)> {
    let (mut r, mut w, mut any) = (0u64, 0u64, false);
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 10 || !whole_disk(f[2]) {
            continue;
        }
        // Field 6 / 10: sectors read / written, always 512-byte units (a count whose bytes do
        // not fit a u64 is no count).
        let bytes = |f: &str| f.parse::<u64>().ok()?.checked_mul(512);
        let (Some(sr), Some(sw)) = (bytes(f[5]), bytes(f[9])) else {
            continue;
        };
        r = r.saturating_add(sr);
        w = w.saturating_add(sw);
        any = true;
    }
    any.then_some((r, w))
}

pub(crate) fn netdev(text: &str) -> Option<(u64, u64)> {
    let (mut rx, mut tx, mut any) = (0u64, 0u64, false);
    for l in text.lines().skip(2) {
        let Some((iface, rest)) = l.split_once(':') else {
            continue;
        };
        if iface.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() >= 9 {
            rx = rx.saturating_add(f[0]);
            tx = tx.saturating_add(f[8]);
            any = true;
        }
    }
    any.then_some((rx, tx))
}

/// `/proc/loadavg`: the 1, 5 and 15 minute load averages.
pub(crate) fn loadavg(text: &str) -> Option<[f64; 3]> {
    let v: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.len() == 3).then(|| [v[0], v[1], v[2]])
}

pub fn read_system(paths: &HostPaths) -> SystemStats {
    let rd = |rel: &str| std::fs::read_to_string(paths.proc(rel)).ok();
    let mut s = SystemStats::default();
    if let Ok(m) = read_meminfo(paths) {
        s.memory_total_bytes = Some(m.total_bytes);
        s.memory_available_bytes = Some(m.available_bytes);
    }
    if let Some((count, busy, total)) = rd("stat").as_deref().and_then(cpu) {
        s.cpu_count = Some(count);
        s.cpu_busy_seconds = Some(busy);
        s.cpu_total_seconds = Some(total);
    }
    s.load = rd("loadavg").as_deref().and_then(loadavg);
    if let Some((r, w)) = rd("diskstats").as_deref().and_then(diskstats) {
        s.disk_read_bytes = Some(r);
        s.disk_written_bytes = Some(w);
    }
    if let Some((rx, tx)) = rd("net/dev").as_deref().and_then(netdev) {
        s.network_receive_bytes = Some(rx);
        s.network_transmit_bytes = Some(tx);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fixture_paths;

    #[test]
    fn fixture_host() {
        let s = read_system(&fixture_paths("v2"));
        assert_eq!(s.memory_total_bytes, Some(67_320_008_704));
        assert_eq!(s.cpu_count, Some(8));
        let busy = (4_705_823 + 1842 + 1_034_511 + 31_876) as f64 / 100.0;
        assert!((s.cpu_busy_seconds.unwrap() - busy).abs() < 1e-6);
        assert_eq!(s.load, Some([0.52, 0.61, 0.7]));
        assert_eq!(s.disk_read_bytes, Some((1_000 + 30) * 512));
        assert_eq!(s.disk_written_bytes, Some((2_000 + 40) * 512));
        assert_eq!(s.network_receive_bytes, Some(1_000_000));
        assert_eq!(s.network_transmit_bytes, Some(2_000_000));
    }

    #[test]
    fn missing_sources_are_none() {
        let s = read_system(&fixture_paths("v1"));
        assert!(s.memory_total_bytes.is_some());
        assert_eq!(s.load, None);
        assert_eq!(s.disk_read_bytes, None);
    }

    /// Found by `tools/fuzz` (fuzz/artifacts/procfs/): the sum overflowed and panicked.
    #[test]
    fn cpu_times_that_overflow_are_refused() {
        assert_eq!(cpu("cpu  18446744073709551615 1 0 0\n"), None);
        assert_eq!(cpu("cpu  1 0 0 18446744073709551615 1\n"), None);
        assert_eq!(cpu("cpu  1 2 3 4\ncpu0 1 2 3 4\n"), Some((1, 0.06, 0.1)));
    }

    /// Found by `tools/fuzz` (fuzz/artifacts/procfs/): sectors × 512 overflowed and panicked.
    #[test]
    fn sector_counts_that_overflow_are_skipped() {
        let line = |sectors: &str| format!("8 0 sda 1 0 {sectors} 0 2 0 40 0 0 0\n");
        assert_eq!(diskstats(&line("36028797018963968")), None);
        let two = line("36028797018963968") + &line("30");
        assert_eq!(diskstats(&two), Some((30 * 512, 40 * 512)));
    }

    #[test]
    fn disks() {
        for d in ["sda", "vdb", "nvme0n1", "mmcblk0", "xvda"] {
            assert!(whole_disk(d), "{d}");
        }
        for p in ["sda1", "nvme0n1p1", "loop0", "dm-0", "mmcblk0p1", "sr0"] {
            assert!(!whole_disk(p), "{p}");
        }
    }
}
