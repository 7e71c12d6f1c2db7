//! GPUs through NVML, loaded at run time: a host without the NVIDIA driver simply has no GPU
//! metrics (one info line at start, never an error per scrape). The NVML calls sit behind
//! `GpuSource`, so the mapping of GPU processes to instances is tested without a GPU.

use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuDevice {
    /// Index as NVML (and CUDA_VISIBLE_DEVICES) numbers it.
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub utilization_percent: Option<u32>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub temperature_celsius: Option<u32>,
    pub power_watts: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuSnapshot {
    pub devices: Vec<GpuDevice>,
    /// (pid, bytes of GPU memory) for every compute process on any GPU.
    pub processes: Vec<(u32, u64)>,
}

pub trait GpuSource: Send + Sync {
    fn snapshot(&self) -> GpuSnapshot;
}

/// No GPUs (no driver, or GPU metrics switched off).
pub struct NoGpu;

impl GpuSource for NoGpu {
    fn snapshot(&self) -> GpuSnapshot {
        GpuSnapshot::default()
    }
}

pub struct NvmlSource {
    nvml: nvml_wrapper::Nvml,
}

impl NvmlSource {
    /// Loads `libnvidia-ml.so.1`; `Err` (with NVML's reason) when there is no driver.
    pub fn load() -> Result<Self, String> {
        nvml_wrapper::Nvml::init()
            .map(|nvml| Self { nvml })
            .map_err(|e| e.to_string())
    }
}

impl GpuSource for NvmlSource {
    fn snapshot(&self) -> GpuSnapshot {
        use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
        use nvml_wrapper::enums::device::UsedGpuMemory;
        let mut snap = GpuSnapshot::default();
        let count = self.nvml.device_count().unwrap_or(0);
        for index in 0..count {
            let Ok(d) = self.nvml.device_by_index(index) else {
                continue;
            };
            let mem = d.memory_info().ok();
            snap.devices.push(GpuDevice {
                index,
                name: d.name().unwrap_or_default(),
                uuid: d.uuid().unwrap_or_default(),
                utilization_percent: d.utilization_rates().ok().map(|u| u.gpu),
                memory_used_bytes: mem.as_ref().map(|m| m.used),
                memory_total_bytes: mem.as_ref().map(|m| m.total),
                temperature_celsius: d.temperature(TemperatureSensor::Gpu).ok(),
                power_watts: d.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            });
            for p in d.running_compute_processes().unwrap_or_default() {
                if let UsedGpuMemory::Used(b) = p.used_gpu_memory {
                    snap.processes.push((p.pid, b));
                }
            }
        }
        snap
    }
}

/// Picks NVML when it loads; logs once either way.
pub fn detect() -> Box<dyn GpuSource> {
    match NvmlSource::load() {
        Ok(s) => {
            tracing::info!("NVML loaded: GPU metrics enabled");
            Box::new(s)
        }
        Err(e) => {
            tracing::info!(reason = %e, "NVML not available: no GPU metrics");
            Box::new(NoGpu)
        }
    }
}

/// GPU memory per instance: the sum over the GPU processes whose pid is in the instance's cgroup.
pub fn per_instance(
    processes: &[(u32, u64)],
    members: &HashMap<String, HashSet<u32>>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (name, pids) in members {
        let bytes: u64 = processes
            .iter()
            .filter(|(pid, _)| pids.contains(pid))
            .map(|(_, b)| *b)
            .sum();
        if processes.iter().any(|(pid, _)| pids.contains(pid)) {
            out.insert(name.clone(), bytes);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_processes_to_instances() {
        let procs = [(10, 1000), (11, 500), (20, 7), (99, 1)];
        let mut m = HashMap::new();
        m.insert("a".to_string(), HashSet::from([10, 11, 12]));
        m.insert("b".to_string(), HashSet::from([20]));
        m.insert("c".to_string(), HashSet::from([30]));
        let r = per_instance(&procs, &m);
        assert_eq!(r.get("a"), Some(&1500));
        assert_eq!(r.get("b"), Some(&7));
        assert_eq!(r.get("c"), None, "no GPU process: no series");
    }

    #[test]
    fn no_driver_is_no_gpu() {
        // This machine has no NVIDIA driver: loading fails cleanly, no panic.
        if NvmlSource::load().is_err() {
            assert_eq!(detect().snapshot(), GpuSnapshot::default());
        }
    }
}
