//! The resource collector on the v2 and hybrid fixture trees: guide names, groups, promtool.

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
