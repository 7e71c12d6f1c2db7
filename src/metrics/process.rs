//! The standard `process_*` metrics for the daemon itself, read at scrape time.
//!
//! Names and help texts follow client_golang's process collector so existing dashboards and
//! alerts (fd exhaustion, restarts via `process_start_time_seconds`) work unchanged. Files are
//! read through [`HostPaths`] so the collector is tested on fixture trees with exact values.

use std::fmt;

use anyhow::Context;
use procfs::process::{LimitValue, Limits, Stat};
use procfs::{ExplicitSystemInfo, FromRead, FromReadSI, KernelStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::host::HostPaths;

/// Reads `<procfs>/self/{stat,fd,limits}` and `<procfs>/stat` on every scrape.
///
/// Each source is independent: a file that cannot be read or parsed drops only the series
/// derived from it for that scrape, so one odd file never blanks the whole `/metrics` page.
#[derive(Debug)]
pub struct ProcessCollector {
    paths: HostPaths,
    /// `sysconf(_SC_CLK_TCK)`: `stat` times are in clock ticks. A field so fixture tests do not
    /// depend on the build machine.
    ticks_per_second: u64,
    /// `sysconf(_SC_PAGESIZE)`: `stat` reports RSS in pages.
    page_size: u64,
}

impl ProcessCollector {
    pub fn new(paths: HostPaths) -> Self {
        Self::with_units(paths, procfs::ticks_per_second(), procfs::page_size())
    }

    /// With the clock tick and page size given rather than this machine's, for fixture trees.
    pub(crate) fn with_units(paths: HostPaths, ticks_per_second: u64, page_size: u64) -> Self {
        Self {
            paths,
            ticks_per_second,
            page_size,
        }
    }

    fn system_info(&self) -> ExplicitSystemInfo {
        ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: self.ticks_per_second,
            page_size: self.page_size,
            is_little_endian: cfg!(target_endian = "little"),
        }
    }

    fn read_stat(&self) -> anyhow::Result<Stat> {
        let path = self.paths.proc("self/stat");
        Stat::from_file(&path).with_context(|| format!("reading {}", path.display()))
    }

    fn read_boot_time(&self) -> anyhow::Result<u64> {
        let path = self.paths.proc("stat");
        let stats = KernelStats::from_file(&path, &self.system_info())
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(stats.btime)
    }

    fn count_fds(&self) -> anyhow::Result<u64> {
        let path = self.paths.proc("self/fd");
        let entries =
            std::fs::read_dir(&path).with_context(|| format!("listing {}", path.display()))?;
        let mut count = 0;
        for entry in entries {
            // An fd closed while listing shows up as an error for that entry; it is gone, so it
            // is correctly not counted.
            if entry.is_ok() {
                count += 1;
            }
        }
        Ok(count)
    }

    fn read_max_fds(&self) -> anyhow::Result<Option<u64>> {
        let path = self.paths.proc("self/limits");
        let limits =
            Limits::from_file(&path).with_context(|| format!("reading {}", path.display()))?;
        // RLIMIT_NOFILE cannot really be unlimited (it is capped by fs.nr_open); if a kernel
        // ever says so, there is no meaningful number to export.
        Ok(match limits.max_open_files.soft_limit {
            LimitValue::Value(max) => Some(max),
            LimitValue::Unlimited => None,
        })
    }
}

/// Logs a read failure at debug: a scrape every few seconds must not flood the journal.
fn ok_or_debug<T>(result: anyhow::Result<T>, what: &str) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(err) => {
            tracing::debug!(error = format!("{err:#}"), "skipping {what}");
            None
        }
    }
}

fn gauge<N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> fmt::Result
where
    N: prometheus_client::encoding::EncodeGaugeValue,
{
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, unit, gauge.metric_type())?;
    gauge.encode(metric)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let ticks = self.ticks_per_second.max(1);
        let stat = ok_or_debug(self.read_stat(), "process metrics from stat");

        if let Some(stat) = &stat {
            let cpu =
                ConstCounter::new(stat.utime.saturating_add(stat.stime) as f64 / ticks as f64);
            let metric = encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds.",
                Some(&Unit::Seconds),
                cpu.metric_type(),
            )?;
            cpu.encode(metric)?;
        }

        if let Some(fds) = ok_or_debug(self.count_fds(), "process_open_fds") {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                fds,
            )?;
        }
        if let Some(Some(max)) = ok_or_debug(self.read_max_fds(), "process_max_fds") {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                max,
            )?;
        }

        let Some(stat) = stat else {
            return Ok(());
        };
        gauge(
            &mut encoder,
            "process_virtual_memory",
            "Virtual memory size in bytes.",
            Some(&Unit::Bytes),
            stat.vsize,
        )?;
        gauge(
            &mut encoder,
            "process_resident_memory",
            "Resident memory size in bytes.",
            Some(&Unit::Bytes),
            stat.rss.saturating_mul(self.page_size),
        )?;
        if let Some(btime) = ok_or_debug(self.read_boot_time(), "process_start_time_seconds") {
            // One division of exact integers, so the value prints as the short decimal the
            // fixtures contain instead of accumulating a rounding error from two float steps.
            let start_ticks = btime.saturating_mul(ticks).saturating_add(stat.starttime);
            gauge(
                &mut encoder,
                "process_start_time",
                "Start time of the process since unix epoch in seconds.",
                Some(&Unit::Seconds),
                start_ticks as f64 / ticks as f64,
            )?;
        }
        gauge(
            &mut encoder,
            "process_threads",
            "Number of OS threads in the process.",
            None,
            stat.num_threads,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fixture_paths;
    use prometheus_client::registry::Registry;

    fn scrape(collector: ProcessCollector) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    fn fixture_collector(name: &str) -> ProcessCollector {
        ProcessCollector::with_units(fixture_paths(name), 100, 4096)
    }

    #[test]
    fn fixture_values_are_exact() {
        let out = scrape(fixture_collector("v2"));
        let samples: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "process_cpu_seconds_total 18.01",
                "process_open_fds 7",
                "process_max_fds 524288",
                "process_virtual_memory_bytes 1396531200",
                "process_resident_memory_bytes 20971520",
                "process_start_time_seconds 1735689913.37",
                "process_threads 9",
            ]
        );
        assert!(
            out.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{out}"
        );
        assert!(out.contains("# HELP process_open_fds Number of open file descriptors.\n"));
    }

    #[test]
    fn real_proc_of_the_test_process() {
        // A fresh test thread may not have been charged a whole clock tick yet: burn CPU until
        // it has (10 ms at the usual 100 Hz), bounded so a broken reader still fails.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let out = loop {
            let out = scrape(ProcessCollector::new(HostPaths::default()));
            if value(&out, "process_cpu_seconds_total").unwrap() > 0.0
                || std::time::Instant::now() > deadline
            {
                break out;
            }
            let spin = std::time::Instant::now();
            let mut x = 0u64;
            while spin.elapsed() < std::time::Duration::from_millis(20) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        };
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_start_time_seconds",
            "process_threads",
        ] {
            assert!(value(&out, name).unwrap() > 0.0, "{name} in {out}");
        }
        let open = value(&out, "process_open_fds").unwrap();
        let max = value(&out, "process_max_fds").unwrap();
        // stdin/stdout/stderr at least, and the harness is far from its limit.
        assert!(open >= 3.0 && open < max, "open {open} max {max}");
        let start = value(&out, "process_start_time_seconds").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 2.0 && start > now - 86_400.0,
            "start {start} now {now}"
        );
    }

    #[test]
    fn missing_files_drop_only_their_series() {
        // The hybrid fixture has mountinfo/cgroup but no stat, fd or limits.
        assert_eq!(scrape(fixture_collector("hybrid")), "");

        // stat present, /proc/stat (btime), fd and limits absent.
        let root = std::env::temp_dir().join(format!("llamactl-process-{}", std::process::id()));
        std::fs::create_dir_all(root.join("self")).unwrap();
        std::fs::copy(
            fixture_paths("v2").proc("self/stat"),
            root.join("self/stat"),
        )
        .unwrap();
        let mut collector = fixture_collector("v2");
        collector.paths.procfs = root.clone();
        let out = scrape(collector);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(value(&out, "process_cpu_seconds_total"), Some(18.01));
        assert_eq!(value(&out, "process_threads"), Some(9.0));
        assert_eq!(value(&out, "process_start_time_seconds"), None);
        assert_eq!(value(&out, "process_open_fds"), None);
        assert_eq!(value(&out, "process_max_fds"), None);
    }
}
