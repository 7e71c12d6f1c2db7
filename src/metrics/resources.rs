//! `/metrics` series about instances, the host and its GPUs, encoded from one `Snapshot` per
//! scrape (see `stats::snapshot`). Names, types and the `instance_name` label follow the
//! monitoring guide; a source missing on a host leaves its series out rather than reporting 0.

use crate::config::MetricGroup;
use crate::stats::snapshot::{InstanceSample, Sampler, Snapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use std::sync::Arc;

/// Every state an instance can be in, each a series of `llamactl_instance_state` (1 = current).
pub(super) const STATES: &[&str] = &[
    "stopped",
    "starting",
    "loading",
    "ready",
    "restarting",
    "stopping",
    "failed",
];

#[derive(Debug)]
pub struct ResourceCollector {
    sampler: Arc<Sampler>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sampler")
    }
}

impl ResourceCollector {
    pub fn new(sampler: Arc<Sampler>) -> Self {
        Self { sampler }
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// One family: name (prefixed `llamactl_` by the registry), help, unit, type, samples.
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: &[(Labels<'_>, f64)],
) -> Result<(), std::fmt::Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), kind)?;
    for (labels, v) in samples {
        let fam = m.encode_family(labels)?;
        // Whole numbers (bytes, counts) print as integers, as every exporter does.
        let whole = v.fract() == 0.0 && v.abs() < 9.0e15;
        match (kind, whole) {
            (MetricType::Counter, true) => ConstCounter::new(*v as u64).encode(fam)?,
            (MetricType::Counter, false) => ConstCounter::new(*v).encode(fam)?,
            (_, true) => ConstGauge::new(*v as i64).encode(fam)?,
            (_, false) => ConstGauge::new(*v).encode(fam)?,
        }
    }
    Ok(())
}

fn instance_families(enc: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    use MetricType::{Counter, Gauge, Unknown};
    let total = s.instances.len() as f64;
    let running = s.instances.iter().filter(|i| i.info.running).count() as f64;
    // `_total` is the guide's name for a gauge; promtool's lint forbids `_total` on gauges but not
    // on untyped series, so it is exposed untyped.
    family(
        enc,
        "instances_total",
        "Number of instances defined.",
        None,
        Unknown,
        &[(vec![], total)],
    )?;
    family(
        enc,
        "instances_running",
        "Number of instances whose unit is running (starting, loading, ready or restarting).",
        None,
        Gauge,
        &[(vec![], running)],
    )?;

    let per = |f: &dyn Fn(&InstanceSample) -> Option<f64>| -> Vec<(Labels<'_>, f64)> {
        s.instances
            .iter()
            .filter_map(|i| f(i).map(|v| (vec![("instance_name", i.info.name.as_str())], v)))
            .collect()
    };
    let cg = |f: fn(&crate::stats::cgroup::CgroupStats) -> Option<u64>, scale: f64| {
        move |i: &InstanceSample| i.cgroup.as_ref().and_then(f).map(|v| v as f64 * scale)
    };
    family(
        enc,
        "instance_up",
        "1 when the instance serves (its health endpoint answers 200), else 0.",
        None,
        Gauge,
        &per(&|i| Some(if i.info.up { 1.0 } else { 0.0 })),
    )?;
    let mut states = Vec::new();
    for i in &s.instances {
        for st in STATES {
            states.push((
                vec![("instance_name", i.info.name.as_str()), ("state", *st)],
                if i.info.state == *st { 1.0 } else { 0.0 },
            ));
        }
    }
    family(
        enc,
        "instance_state",
        "Current state of the instance (1 for the state it is in).",
        None,
        Gauge,
        &states,
    )?;
    family(
        enc,
        "instance_start_time",
        "When the instance's unit became active, as a Unix time.",
        Some(Unit::Seconds),
        Gauge,
        &per(&|i| i.info.start_time.map(|t| t as f64)),
    )?;
    family(
        enc,
        "instance_restarts",
        "Automatic restarts of the instance's unit by systemd (NRestarts).",
        None,
        Counter,
        &per(&|i| i.info.running.then_some(f64::from(i.info.restarts))),
    )?;
    family(
        enc,
        "instance_memory",
        "Memory charged to the instance's cgroup.",
        Some(Unit::Bytes),
        Gauge,
        &per(&cg(|c| c.memory_bytes, 1.0)),
    )?;
    family(
        enc,
        "instance_memory_percent",
        "Instance memory as a percentage of its MemoryMax, or of host memory when unlimited.",
        None,
        Gauge,
        &per(&|i| i.memory_percent),
    )?;
    family(
        enc,
        "instance_memory_limit",
        "MemoryMax of the instance's cgroup (absent when unlimited).",
        Some(Unit::Bytes),
        Gauge,
        &per(&cg(|c| c.memory_limit_bytes, 1.0)),
    )?;
    family(
        enc,
        "instance_cpu",
        "CPU time used by the instance's cgroup.",
        Some(Unit::Seconds),
        Counter,
        &per(&cg(|c| c.cpu_usec, 1e-6)),
    )?;
    family(
        enc,
        "instance_cpu_percent",
        "CPU use of the instance since the previous scrape, in percent of one CPU.",
        None,
        Gauge,
        &per(&|i| i.cpu_percent),
    )?;
    family(
        enc,
        "instance_io_read",
        "Bytes read from block devices by the instance's cgroup.",
        Some(Unit::Bytes),
        Counter,
        &per(&cg(|c| c.io_read_bytes, 1.0)),
    )?;
    family(
        enc,
        "instance_io_write",
        "Bytes written to block devices by the instance's cgroup.",
        Some(Unit::Bytes),
        Counter,
        &per(&cg(|c| c.io_write_bytes, 1.0)),
    )?;
    family(
        enc,
        "instance_tasks",
        "Tasks (threads) in the instance's cgroup.",
        None,
        Gauge,
        &per(&cg(|c| c.tasks, 1.0)),
    )?;
    family(
        enc,
        "instance_oom_kills",
        "Processes of the instance killed by the OOM killer.",
        None,
        Counter,
        &per(&cg(|c| c.oom_kills, 1.0)),
    )?;
    family(
        enc,
        "instance_pressure_cpu",
        "Time some task of the instance waited for CPU (PSI some).",
        Some(Unit::Seconds),
        Counter,
        &per(&cg(|c| c.pressure_cpu_usec, 1e-6)),
    )?;
    family(
        enc,
        "instance_pressure_memory",
        "Time some task of the instance stalled on memory (PSI some).",
        Some(Unit::Seconds),
        Counter,
        &per(&cg(|c| c.pressure_memory_usec, 1e-6)),
    )?;
    family(
        enc,
        "instance_pressure_io",
        "Time some task of the instance stalled on I/O (PSI some).",
        Some(Unit::Seconds),
        Counter,
        &per(&cg(|c| c.pressure_io_usec, 1e-6)),
    )?;
    family(
        enc,
        "proxy_requests_in_flight",
        "Proxied requests being served by the instance right now.",
        None,
        Gauge,
        &per(&|i| Some(f64::from(i.info.in_flight))),
    )?;
    family(
        enc,
        "proxy_on_demand_starts",
        "Times a proxied request started the instance (on_demand_start).",
        None,
        Counter,
        &per(&|i| Some(i.info.on_demand_starts as f64)),
    )?;
    family(
        enc,
        "proxy_evictions",
        "Times the instance was stopped to make room under [instances] max_running.",
        None,
        Counter,
        &per(&|i| Some(i.info.evictions as f64)),
    )?;
    if s.groups.contains(&MetricGroup::Gpu) {
        family(
            enc,
            "instance_gpu_memory",
            "GPU memory used by the instance's processes.",
            Some(Unit::Bytes),
            Gauge,
            &per(&|i| i.gpu_memory_bytes.map(|b| b as f64)),
        )?;
    }
    Ok(())
}

fn system_families(enc: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    use MetricType::{Counter, Gauge};
    let sys = &s.system;
    let one = |v: Option<f64>| v.map(|v| vec![(Labels::new(), v)]).unwrap_or_default();
    let u = |v: Option<u64>| one(v.map(|v| v as f64));
    family(
        enc,
        "system_memory_total",
        "Total usable physical memory of the host (MemTotal).",
        Some(Unit::Bytes),
        Gauge,
        &u(sys.memory_total_bytes),
    )?;
    family(
        enc,
        "system_memory_available",
        "Memory available for new workloads without swapping (MemAvailable).",
        Some(Unit::Bytes),
        Gauge,
        &u(sys.memory_available_bytes),
    )?;
    family(
        enc,
        "system_cpu_percent",
        "Host CPU busy since the previous scrape, in percent of all CPUs.",
        None,
        Gauge,
        &one(s.system_cpu_percent),
    )?;
    family(
        enc,
        "system_cpus",
        "Number of CPUs of the host.",
        None,
        Gauge,
        &u(sys.cpu_count),
    )?;
    family(
        enc,
        "system_cpu_busy",
        "CPU time the host spent not idle, all CPUs summed.",
        Some(Unit::Seconds),
        Counter,
        &one(sys.cpu_busy_seconds),
    )?;
    if let Some([l1, l5, l15]) = sys.load {
        let load = vec![
            (vec![("window", "1m")], l1),
            (vec![("window", "5m")], l5),
            (vec![("window", "15m")], l15),
        ];
        family(enc, "system_load", "Host load average.", None, Gauge, &load)?;
    }
    family(
        enc,
        "system_disk_read",
        "Bytes read from the host's disks.",
        Some(Unit::Bytes),
        Counter,
        &u(sys.disk_read_bytes),
    )?;
    family(
        enc,
        "system_disk_written",
        "Bytes written to the host's disks.",
        Some(Unit::Bytes),
        Counter,
        &u(sys.disk_written_bytes),
    )?;
    family(
        enc,
        "system_network_receive",
        "Bytes received on the host's interfaces (not loopback).",
        Some(Unit::Bytes),
        Counter,
        &u(sys.network_receive_bytes),
    )?;
    family(
        enc,
        "system_network_transmit",
        "Bytes sent on the host's interfaces (not loopback).",
        Some(Unit::Bytes),
        Counter,
        &u(sys.network_transmit_bytes),
    )?;
    Ok(())
}

fn gpu_families(enc: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    use MetricType::Gauge;
    let idx: Vec<String> = s.gpus.iter().map(|g| g.index.to_string()).collect();
    let per = |f: &dyn Fn(&crate::stats::gpu::GpuDevice) -> Option<f64>| -> Vec<(Labels<'_>, f64)> {
        s.gpus
            .iter()
            .zip(&idx)
            .filter_map(|(g, i)| {
                f(g).map(|v| (vec![("gpu", i.as_str()), ("name", g.name.as_str())], v))
            })
            .collect()
    };
    family(
        enc,
        "gpu_utilization_percent",
        "Percent of time a kernel ran on the GPU.",
        None,
        Gauge,
        &per(&|g| g.utilization_percent.map(f64::from)),
    )?;
    family(
        enc,
        "gpu_memory_used",
        "GPU memory in use.",
        Some(Unit::Bytes),
        Gauge,
        &per(&|g| g.memory_used_bytes.map(|b| b as f64)),
    )?;
    family(
        enc,
        "gpu_memory_total",
        "GPU memory installed.",
        Some(Unit::Bytes),
        Gauge,
        &per(&|g| g.memory_total_bytes.map(|b| b as f64)),
    )?;
    family(
        enc,
        "gpu_temperature_celsius",
        "GPU die temperature.",
        None,
        Gauge,
        &per(&|g| g.temperature_celsius.map(f64::from)),
    )?;
    family(
        enc,
        "gpu_power_watts",
        "GPU power draw.",
        None,
        Gauge,
        &per(&|g| g.power_watts),
    )?;
    Ok(())
}

impl Collector for ResourceCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.sampler.for_scrape();
        if s.groups.contains(&MetricGroup::InstanceStats) {
            instance_families(&mut enc, &s)?;
        }
        if s.groups.contains(&MetricGroup::SystemResources) {
            system_families(&mut enc, &s)?;
        }
        if s.groups.contains(&MetricGroup::Gpu) {
            gpu_families(&mut enc, &s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostPaths;
    use crate::stats::gpu::{GpuDevice, GpuSnapshot, GpuSource};
    use crate::stats::snapshot::{InstanceInfo, InstanceSource};
    use prometheus_client::registry::Registry;
    use std::path::PathBuf;

    struct Fixed(Vec<InstanceInfo>);
    impl InstanceSource for Fixed {
        fn instances(&self) -> Vec<InstanceInfo> {
            self.0.clone()
        }
    }
    struct OneGpu;
    impl GpuSource for OneGpu {
        fn snapshot(&self) -> GpuSnapshot {
            GpuSnapshot {
                devices: vec![GpuDevice {
                    index: 0,
                    name: "Fake A100".into(),
                    utilization_percent: Some(87),
                    memory_used_bytes: Some(1 << 30),
                    memory_total_bytes: Some(80 << 30),
                    ..Default::default()
                }],
                processes: vec![(4242, 512 << 20)],
            }
        }
    }

    fn sampler(layout: &str, groups: Vec<MetricGroup>) -> Arc<Sampler> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cgroup")
            .join(layout);
        let paths = HostPaths {
            procfs: root.join("proc"),
            sysfs: root.join("sys"),
        };
        let infos = vec![
            InstanceInfo {
                name: "smol".into(),
                state: "ready",
                up: true,
                running: true,
                start_time: Some(1_700_000_000),
                restarts: 2,
                control_group: "/llamactl.slice/llamactl-smol.service".into(),
                ..Default::default()
            },
            InstanceInfo {
                name: "idle".into(),
                state: "stopped",
                ..Default::default()
            },
        ];
        Arc::new(Sampler::new(
            paths,
            Some(Arc::new(Fixed(infos))),
            Box::new(OneGpu),
            groups,
        ))
    }

    fn scrape(s: Arc<Sampler>) -> String {
        let mut r = Registry::with_prefix("llamactl");
        r.register_collector(Box::new(ResourceCollector::new(s)));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &r).unwrap();
        out
    }

    fn all() -> Vec<MetricGroup> {
        vec![
            MetricGroup::InstanceStats,
            MetricGroup::SystemResources,
            MetricGroup::Gpu,
        ]
    }

    #[test]
    fn v2_instance_series_with_the_guide_names() {
        let s = sampler("v2", all());
        let out = scrape(s.clone());
        for line in [
            "# TYPE llamactl_instances_total untyped\nllamactl_instances_total 2\n",
            "llamactl_instances_running 1\n",
            "llamactl_instance_up{instance_name=\"smol\"} 1\n",
            "llamactl_instance_up{instance_name=\"idle\"} 0\n",
            "llamactl_instance_state{instance_name=\"idle\",state=\"stopped\"} 1\n",
            "llamactl_instance_state{instance_name=\"smol\",state=\"stopped\"} 0\n",
            "llamactl_instance_start_time_seconds{instance_name=\"smol\"} 1700000000\n",
            "llamactl_instance_restarts_total{instance_name=\"smol\"} 2\n",
            "llamactl_instance_memory_bytes{instance_name=\"smol\"} 188416000\n",
            "llamactl_instance_memory_limit_bytes{instance_name=\"smol\"} 1073741824\n",
            "llamactl_instance_cpu_seconds_total{instance_name=\"smol\"} 12.345678\n",
            "llamactl_instance_io_read_bytes_total{instance_name=\"smol\"} 104861696\n",
            "llamactl_instance_io_write_bytes_total{instance_name=\"smol\"} 8192\n",
            "llamactl_instance_tasks{instance_name=\"smol\"} 7\n",
            "llamactl_instance_oom_kills_total{instance_name=\"smol\"} 2\n",
            "llamactl_instance_pressure_cpu_seconds_total{instance_name=\"smol\"} 1.5\n",
            "llamactl_instance_pressure_memory_seconds_total{instance_name=\"smol\"} 0.02\n",
            "llamactl_instance_pressure_io_seconds_total{instance_name=\"smol\"} 0.0003\n",
            "llamactl_system_memory_total_bytes 67320008704\n",
            "llamactl_system_cpus 8\n",
            "llamactl_gpu_utilization_percent{gpu=\"0\",name=\"Fake A100\"} 87\n",
            "llamactl_gpu_memory_total_bytes{gpu=\"0\",name=\"Fake A100\"} 85899345920\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        let pct = 188_416_000f64 / 1_073_741_824f64 * 100.0;
        assert!(
            out.contains(&format!(
                "llamactl_instance_memory_percent{{instance_name=\"smol\"}} {pct}"
            )),
            "{out}"
        );
        // A stopped instance has no cgroup: no resource series for it, not zeros.
        assert!(
            !out.contains("llamactl_instance_memory_bytes{instance_name=\"idle\"}"),
            "{out}"
        );
        // Rates need two snapshots; the first scrape has none.
        assert!(!out.contains("llamactl_instance_cpu_percent"), "{out}");
        assert!(!out.contains("llamactl_system_cpu_percent"), "{out}");
        // The GPU process is not in the fixture's cgroup: no per-instance GPU series.
        assert!(!out.contains("llamactl_instance_gpu_memory_bytes"), "{out}");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let again = scrape(s);
        assert!(
            again.contains("llamactl_instance_cpu_percent{instance_name=\"smol\"} 0"),
            "{again}"
        );
    }

    #[test]
    fn groups_switch_series_off() {
        let out = scrape(sampler("v2", vec![MetricGroup::SystemResources]));
        assert!(out.contains("llamactl_system_memory_total_bytes"));
        assert!(
            !out.contains("llamactl_instance") && !out.contains("llamactl_gpu"),
            "{out}"
        );
        let s = sampler("v2", vec![]);
        assert_eq!(scrape(s.clone()), "");
        s.set_groups(vec![MetricGroup::Gpu]);
        assert!(scrape(s).contains("llamactl_gpu_memory_used_bytes"));
    }

    #[test]
    fn hybrid_layout_and_unlimited_memory() {
        let out = scrape(sampler("hybrid", all()));
        assert!(
            out.contains("llamactl_instance_memory_bytes{instance_name=\"smol\"} 50331648\n"),
            "{out}"
        );
        assert!(
            out.contains("llamactl_instance_cpu_seconds_total{instance_name=\"smol\"} 2\n"),
            "{out}"
        );
        assert!(
            !out.contains("llamactl_instance_memory_limit_bytes"),
            "{out}"
        );
        // Unlimited: percent of host memory.
        let pct = 50_331_648f64 / 67_320_008_704f64 * 100.0;
        assert!(
            out.contains(&format!(
                "llamactl_instance_memory_percent{{instance_name=\"smol\"}} {pct}"
            )),
            "{out}"
        );
    }

    #[test]
    fn promtool_accepts_every_family() {
        let s = sampler("v2", all());
        let _ = scrape(s.clone());
        std::thread::sleep(std::time::Duration::from_millis(5));
        let out = scrape(s);
        crate::metrics::tests::promtool_check(&out);
    }
}
