//! `/metrics` series about instances, the host and its GPUs, encoded from one `Snapshot` per
//! scrape (see `stats::snapshot`). Every family is one row of [`FAMILIES`] (name, type, unit, the
//! metric groups it needs, help, and where its samples and so its labels come from), and one loop
//! encodes them. Names, types and the `instance_name` label follow the monitoring guide; a source
//! missing on a host leaves its series out rather than reporting 0.

use crate::config::MetricGroup;
use crate::stats::cgroup::CgroupStats;
use crate::stats::gpu::GpuDevice;
use crate::stats::snapshot::{InstanceSample, Sampler, Snapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType::{self, Counter, Gauge, Unknown};
use prometheus_client::registry::Unit;
use std::fmt;
use std::sync::Arc;
use Samples::{PerGpu, PerInstance, PerInstanceState, PerLoadWindow, Scalar};

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

const INSTANCES: &[MetricGroup] = &[MetricGroup::InstanceStats];
const INSTANCES_GPU: &[MetricGroup] = &[MetricGroup::InstanceStats, MetricGroup::Gpu];
const SYSTEM: &[MetricGroup] = &[MetricGroup::SystemResources];
const GPUS: &[MetricGroup] = &[MetricGroup::Gpu];
const BYTES: Option<&Unit> = Some(&Unit::Bytes);
const SECONDS: Option<&Unit> = Some(&Unit::Seconds);

/// Every family, in the order of the exposition.
static FAMILIES: &[Family] = &[
    // `_total` is the guide's name for a gauge; promtool's lint forbids `_total` on gauges but not
    // on untyped series, so it is exposed untyped.
    Descriptor::new("instances_total", Unknown, None, INSTANCES)
        .help("Number of instances defined.")
        .samples(Scalar(|s| Some(s.instances.len() as f64))),
    Descriptor::new("instances_running", Gauge, None, INSTANCES)
        .help("Number of instances whose unit is running (starting, loading, ready or restarting).")
        .samples(Scalar(|s| {
            Some(s.instances.iter().filter(|i| i.info.running).count() as f64)
        })),
    Descriptor::new("instance_up", Gauge, None, INSTANCES)
        .help("1 when the instance serves (its health endpoint answers 200), else 0.")
        .samples(PerInstance(|i| Some(if i.info.up { 1.0 } else { 0.0 }))),
    Descriptor::new("instance_state", Gauge, None, INSTANCES)
        .help("Current state of the instance (1 for the state it is in).")
        .samples(PerInstanceState),
    Descriptor::new("instance_start_time", Gauge, SECONDS, INSTANCES)
        .help("When the instance's unit became active, as a Unix time.")
        .samples(PerInstance(|i| i.info.start_time.map(|t| t as f64))),
    Descriptor::new("instance_restarts", Counter, None, INSTANCES)
        .help("Automatic restarts of the instance's unit by systemd (NRestarts).")
        .samples(PerInstance(|i| {
            i.info.running.then_some(f64::from(i.info.restarts))
        })),
    Descriptor::new("instance_memory", Gauge, BYTES, INSTANCES)
        .help("Memory charged to the instance's cgroup.")
        .samples(PerInstance(|i| cg(i, |c| c.memory_bytes, 1.0))),
    Descriptor::new("instance_memory_percent", Gauge, None, INSTANCES)
        .help("Instance memory as a percentage of its MemoryMax, or of host memory when unlimited.")
        .samples(PerInstance(|i| i.memory_percent)),
    Descriptor::new("instance_memory_limit", Gauge, BYTES, INSTANCES)
        .help("MemoryMax of the instance's cgroup (absent when unlimited).")
        .samples(PerInstance(|i| cg(i, |c| c.memory_limit_bytes, 1.0))),
    Descriptor::new("instance_memory_peak", Gauge, BYTES, INSTANCES)
        .help("Most memory charged to the instance's cgroup since it started (memory.peak; v1: max_usage_in_bytes).")
        .samples(PerInstance(|i| cg(i, |c| c.memory_peak_bytes, 1.0))),
    Descriptor::new("instance_memory_anon", Gauge, BYTES, INSTANCES)
        .help("Anonymous memory of the instance (memory.stat anon; v1: rss): what it allocated, such as a KV cache.")
        .samples(PerInstance(|i| cg(i, |c| c.memory_anon_bytes, 1.0))),
    Descriptor::new("instance_memory_file", Gauge, BYTES, INSTANCES)
        .help("Page cache charged to the instance (memory.stat file; v1: cache): a memory-mapped model's pages.")
        .samples(PerInstance(|i| cg(i, |c| c.memory_file_bytes, 1.0))),
    Descriptor::new("instance_cpu", Counter, SECONDS, INSTANCES)
        .help("CPU time used by the instance's cgroup.")
        .samples(PerInstance(|i| cg(i, |c| c.cpu_usec, 1e-6))),
    Descriptor::new("instance_cpu_percent", Gauge, None, INSTANCES)
        .help("CPU use of the instance since the previous scrape, in percent of one CPU.")
        .samples(PerInstance(|i| i.cpu_percent)),
    Descriptor::new("instance_io_read", Counter, BYTES, INSTANCES)
        .help("Bytes read from block devices by the instance's cgroup.")
        .samples(PerInstance(|i| cg(i, |c| c.io_read_bytes, 1.0))),
    Descriptor::new("instance_io_write", Counter, BYTES, INSTANCES)
        .help("Bytes written to block devices by the instance's cgroup.")
        .samples(PerInstance(|i| cg(i, |c| c.io_write_bytes, 1.0))),
    Descriptor::new("instance_tasks", Gauge, None, INSTANCES)
        .help("Tasks (threads) in the instance's cgroup.")
        .samples(PerInstance(|i| cg(i, |c| c.tasks, 1.0))),
    Descriptor::new("instance_oom_kills", Counter, None, INSTANCES)
        .help("Processes of the instance killed by the OOM killer, over every run of its unit.")
        .samples(PerInstance(|i| whole(i.oom_kills))),
    Descriptor::new("instance_pressure_cpu", Counter, SECONDS, INSTANCES)
        .help("Time some task of the instance waited for CPU (PSI some).")
        .samples(PerInstance(|i| cg(i, |c| c.pressure_cpu_usec, 1e-6))),
    Descriptor::new("instance_pressure_memory", Counter, SECONDS, INSTANCES)
        .help("Time some task of the instance stalled on memory (PSI some).")
        .samples(PerInstance(|i| cg(i, |c| c.pressure_memory_usec, 1e-6))),
    Descriptor::new("instance_pressure_io", Counter, SECONDS, INSTANCES)
        .help("Time some task of the instance stalled on I/O (PSI some).")
        .samples(PerInstance(|i| cg(i, |c| c.pressure_io_usec, 1e-6))),
    Descriptor::new("proxy_requests_in_flight", Gauge, None, INSTANCES)
        .help("Proxied requests being served by the instance right now.")
        .samples(PerInstance(|i| Some(f64::from(i.info.in_flight)))),
    Descriptor::new("proxy_on_demand_starts", Counter, None, INSTANCES)
        .help("Times a proxied request started the instance (on_demand_start).")
        .samples(PerInstance(|i| Some(i.info.on_demand_starts as f64))),
    Descriptor::new("proxy_evictions", Counter, None, INSTANCES)
        .help("Times the instance was stopped to make room under [instances] max_running.")
        .samples(PerInstance(|i| Some(i.info.evictions as f64))),
    Descriptor::new("instance_gpu_memory", Gauge, BYTES, INSTANCES_GPU)
        .help("GPU memory used by the instance's processes.")
        .samples(PerInstance(|i| i.gpu_memory_bytes.map(|b| b as f64))),
    Descriptor::new("system_memory_total", Gauge, BYTES, SYSTEM)
        .help("Total usable physical memory of the host (MemTotal).")
        .samples(Scalar(|s| whole(s.system.memory_total_bytes))),
    Descriptor::new("system_memory_available", Gauge, BYTES, SYSTEM)
        .help("Memory available for new workloads without swapping (MemAvailable).")
        .samples(Scalar(|s| whole(s.system.memory_available_bytes))),
    Descriptor::new("system_cpu_percent", Gauge, None, SYSTEM)
        .help("Host CPU busy since the previous scrape, in percent of all CPUs.")
        .samples(Scalar(|s| s.system_cpu_percent)),
    Descriptor::new("system_cpus", Gauge, None, SYSTEM)
        .help("Number of CPUs of the host.")
        .samples(Scalar(|s| whole(s.system.cpu_count))),
    Descriptor::new("system_cpu_busy", Counter, SECONDS, SYSTEM)
        .help("CPU time the host spent not idle, all CPUs summed.")
        .samples(Scalar(|s| s.system.cpu_busy_seconds)),
    Descriptor::new("system_load", Gauge, None, SYSTEM)
        .help("Host load average.")
        .samples(PerLoadWindow),
    Descriptor::new("system_disk_read", Counter, BYTES, SYSTEM)
        .help("Bytes read from the host's disks.")
        .samples(Scalar(|s| whole(s.system.disk_read_bytes))),
    Descriptor::new("system_disk_written", Counter, BYTES, SYSTEM)
        .help("Bytes written to the host's disks.")
        .samples(Scalar(|s| whole(s.system.disk_written_bytes))),
    Descriptor::new("system_network_receive", Counter, BYTES, SYSTEM)
        .help("Bytes received on the host's interfaces (not loopback).")
        .samples(Scalar(|s| whole(s.system.network_receive_bytes))),
    Descriptor::new("system_network_transmit", Counter, BYTES, SYSTEM)
        .help("Bytes sent on the host's interfaces (not loopback).")
        .samples(Scalar(|s| whole(s.system.network_transmit_bytes))),
    Descriptor::new("gpu_utilization_percent", Gauge, None, GPUS)
        .help("Percent of time a kernel ran on the GPU.")
        .samples(PerGpu(|g| g.utilization_percent.map(f64::from))),
    Descriptor::new("gpu_memory_used", Gauge, BYTES, GPUS)
        .help("GPU memory in use.")
        .samples(PerGpu(|g| whole(g.memory_used_bytes))),
    Descriptor::new("gpu_memory_total", Gauge, BYTES, GPUS)
        .help("GPU memory installed.")
        .samples(PerGpu(|g| whole(g.memory_total_bytes))),
    Descriptor::new("gpu_temperature_celsius", Gauge, None, GPUS)
        .help("GPU die temperature.")
        .samples(PerGpu(|g| g.temperature_celsius.map(f64::from))),
    Descriptor::new("gpu_power_watts", Gauge, None, GPUS)
        .help("GPU power draw.")
        .samples(PerGpu(|g| g.power_watts)),
];

/// A cgroup figure of the instance times `scale` (1e-6 turns microseconds into seconds).
fn cg(i: &InstanceSample, field: fn(&CgroupStats) -> Option<u64>, scale: f64) -> Option<f64> {
    i.cgroup.as_ref().and_then(field).map(|v| v as f64 * scale)
}

fn whole(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64)
}

/// What a family is: its name (prefixed `llamactl_` by the registry, which also appends the unit
/// and a counter's `_total`), help, type and unit, and the metric groups that must all be on.
#[derive(Clone, Copy)]
struct Descriptor {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    unit: Option<&'static Unit>,
    needs: &'static [MetricGroup],
}

/// Where a family's samples come from, which fixes its labels.
#[derive(Clone, Copy)]
enum Samples {
    /// One series, no labels.
    Scalar(fn(&Snapshot) -> Option<f64>),
    /// A series per instance that has the value: `instance_name`.
    PerInstance(fn(&InstanceSample) -> Option<f64>),
    /// A series per instance and state of [`STATES`], 1 for its own: `instance_name`, `state`.
    PerInstanceState,
    /// A series per load-average window: `window` (`1m`, `5m`, `15m`).
    PerLoadWindow,
    /// A series per GPU that has the value: `gpu` (its index), `name`.
    PerGpu(fn(&GpuDevice) -> Option<f64>),
}

/// A row of [`FAMILIES`].
#[derive(Clone, Copy)]
struct Family {
    descriptor: Descriptor,
    samples: Samples,
}

impl Descriptor {
    const fn new(
        name: &'static str,
        kind: MetricType,
        unit: Option<&'static Unit>,
        needs: &'static [MetricGroup],
    ) -> Self {
        Self {
            name,
            help: "",
            kind,
            unit,
            needs,
        }
    }

    const fn help(self, help: &'static str) -> Self {
        Self { help, ..self }
    }

    const fn samples(self, samples: Samples) -> Family {
        Family {
            descriptor: self,
            samples,
        }
    }

    /// Writes the family: its descriptor, then its samples; nothing at all without samples.
    fn encode<L: EncodeLabelSet>(
        &self,
        enc: &mut DescriptorEncoder,
        samples: impl IntoIterator<Item = (L, f64)>,
    ) -> fmt::Result {
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_none() {
            return Ok(());
        }
        let mut m = enc.encode_descriptor(self.name, self.help, self.unit, self.kind)?;
        for (labels, v) in samples {
            value(self.kind, v, m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// One sample. Whole numbers (bytes, counts) print as integers, as every exporter does.
fn value(kind: MetricType, v: f64, m: MetricEncoder) -> fmt::Result {
    let integral = v.fract() == 0.0 && v.abs() < 9.0e15;
    match (kind, integral) {
        (Counter, true) => ConstCounter::new(v as u64).encode(m),
        (Counter, false) => ConstCounter::new(v).encode(m),
        (_, true) => ConstGauge::new(v as i64).encode(m),
        (_, false) => ConstGauge::new(v).encode(m),
    }
}

/// The `instance_name` label of an instance's series.
fn name(i: &InstanceSample) -> (&'static str, &str) {
    ("instance_name", i.info.name.as_str())
}

impl Family {
    fn encode(&self, enc: &mut DescriptorEncoder, s: &Snapshot) -> fmt::Result {
        let d = &self.descriptor;
        match self.samples {
            Scalar(f) => d.encode(enc, f(s).map(|v| ([] as [(&str, &str); 0], v))),
            PerInstance(f) => d.encode(
                enc,
                s.instances.iter().filter_map(|i| Some(([name(i)], f(i)?))),
            ),
            PerInstanceState => d.encode(
                enc,
                s.instances.iter().flat_map(|i| {
                    STATES.iter().map(move |st| {
                        let current = if i.info.state == *st { 1.0 } else { 0.0 };
                        ([name(i), ("state", st)], current)
                    })
                }),
            ),
            PerLoadWindow => d.encode(
                enc,
                s.system.load.into_iter().flat_map(|[l1, l5, l15]| {
                    [
                        ([("window", "1m")], l1),
                        ([("window", "5m")], l5),
                        ([("window", "15m")], l15),
                    ]
                }),
            ),
            PerGpu(f) => d.encode(
                enc,
                s.gpus.iter().filter_map(|g| {
                    Some((([("gpu", g.index)], [("name", g.name.as_str())]), f(g)?))
                }),
            ),
        }
    }
}

#[derive(Debug)]
pub struct ResourceCollector {
    sampler: Arc<Sampler>,
}

impl fmt::Debug for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sampler")
    }
}

impl ResourceCollector {
    pub fn new(sampler: Arc<Sampler>) -> Self {
        Self { sampler }
    }
}

impl Collector for ResourceCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = self.sampler.for_scrape();
        for family in FAMILIES {
            if family.descriptor.needs.iter().all(|g| s.groups.contains(g)) {
                family.encode(&mut enc, &s)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
