//! One snapshot of everything `/metrics` reports about resources, taken at most once per
//! concurrent burst of scrapes: a scrape that arrives while another is collecting waits for that
//! collection and reuses it. Rates (CPU percent) are computed against the previous snapshot.

use super::cgroup::{read_stats, CgroupStats};
use super::gpu::{self, GpuDevice, GpuSource};
use super::system::{read_system, SystemStats};
use crate::config::MetricGroup;
use crate::host::{CgroupLayout, HostPaths};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// What the supervisor knows about one instance, without any D-Bus call.
#[derive(Clone, Debug, Default)]
pub struct InstanceInfo {
    pub name: String,
    pub state: &'static str,
    /// Serving (health endpoint answered 200).
    pub up: bool,
    pub running: bool,
    /// Unix seconds the unit became active.
    pub start_time: Option<u64>,
    /// The unit's last activation (ActiveEnterTimestamp, µs; 0: never active). Tells one run of
    /// the unit from the next, whose cgroup (and OOM counter) is new.
    pub invocation: u64,
    /// The unit's last run ended because of the OOM killer (systemd's Result "oom-kill").
    pub oom_killed: bool,
    pub restarts: u32,
    /// Empty when the unit is not loaded.
    pub control_group: String,
    pub in_flight: u32,
    pub on_demand_starts: u64,
    pub evictions: u64,
}

/// Where instance infos come from (the supervisor; a fixed list in tests).
pub trait InstanceSource: Send + Sync {
    fn instances(&self) -> Vec<InstanceInfo>;
}

#[derive(Clone, Debug, Default)]
pub struct InstanceSample {
    pub info: InstanceInfo,
    pub cgroup: Option<CgroupStats>,
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
    pub gpu_memory_bytes: Option<u64>,
    /// OOM kills over every run of the unit this daemon saw (`None`: never had a cgroup).
    pub oom_kills: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    pub finished: Instant,
    pub groups: Vec<MetricGroup>,
    pub instances: Vec<InstanceSample>,
    pub system: SystemStats,
    pub system_cpu_percent: Option<f64>,
    pub gpus: Vec<GpuDevice>,
}

#[derive(Default)]
struct Previous {
    at: Option<Instant>,
    /// cgroup path → CPU microseconds.
    instance_cpu: HashMap<String, u64>,
    /// Instance name → its OOM-kill count across runs of its unit.
    oom: HashMap<String, OomCount>,
    system_cpu: Option<(f64, f64)>,
}

/// One instance's OOM kills as a counter over every run of its unit. systemd removes a
/// service's cgroup when its processes are gone and makes a new one on restart, which resets the
/// kernel's `oom_kill` count: the count of each finished run is carried. On a pure cgroup v2 host
/// systemd also stops a unit as soon as one of its processes is OOM-killed (`OOMPolicy=stop`),
/// often before any scrape read the cgroup's count; the run's Result "oom-kill" then stands for
/// (at least) one kill.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct OomCount {
    /// The run being counted (`InstanceInfo::invocation`).
    invocation: u64,
    /// Kills in that run (the cgroup's count, never going down within a run).
    this_run: u64,
    /// Kills in earlier runs.
    carried: u64,
    /// Some cgroup count or OOM result was ever seen (before that there is no series).
    seen: bool,
}

impl OomCount {
    /// Folds in one reading: `raw`, the cgroup's count if it was readable.
    fn observe(&mut self, info: &InstanceInfo, raw: Option<u64>) -> Option<u64> {
        let new_run = info.invocation != 0 && info.invocation != self.invocation;
        // Without a run id (a unit never seen active), a count that went down is a new cgroup.
        let reset = info.invocation == 0 && raw.is_some_and(|r| r < self.this_run);
        if new_run || reset {
            self.carried = self.carried.saturating_add(self.this_run);
            self.this_run = 0;
            self.invocation = info.invocation;
        }
        if let Some(r) = raw {
            self.this_run = self.this_run.max(r);
            self.seen = true;
        }
        if info.oom_killed {
            self.this_run = self.this_run.max(1);
            self.seen = true;
        }
        self.seen
            .then(|| self.carried.saturating_add(self.this_run))
    }
}

pub struct Sampler {
    paths: HostPaths,
    layout: Option<CgroupLayout>,
    instances: Option<Arc<dyn InstanceSource>>,
    gpu: Box<dyn GpuSource>,
    groups: RwLock<Vec<MetricGroup>>,
    collecting: Mutex<Previous>,
    last: Mutex<Option<Arc<Snapshot>>>,
    /// Background collection interval (`[monitoring] collection_interval`); `None` = per scrape.
    background: Option<std::time::Duration>,
}

/// Memory as a percentage of the cgroup's limit, or of host memory when unlimited.
fn memory_percent(c: &CgroupStats, host_total: Option<u64>) -> Option<f64> {
    let used = c.memory_bytes? as f64;
    let of = c.memory_limit_bytes.or(host_total)? as f64;
    (of > 0.0).then(|| used / of * 100.0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sampler {
    pub fn new(
        paths: HostPaths,
        instances: Option<Arc<dyn InstanceSource>>,
        gpu: Box<dyn GpuSource>,
        groups: Vec<MetricGroup>,
    ) -> Self {
        let layout = crate::host::detect_layout(&paths).ok();
        Self {
            paths,
            layout,
            instances,
            gpu,
            groups: RwLock::new(groups),
            collecting: Mutex::new(Previous::default()),
            last: Mutex::new(None),
            background: None,
        }
    }

    /// Collect in the background every `every` (see `spawn_background`); zero = per scrape.
    pub fn with_background(mut self, every: std::time::Duration) -> Self {
        self.background = (!every.is_zero()).then_some(every);
        self
    }

    /// `[monitoring] metrics` (applied again on reload).
    pub fn set_groups(&self, groups: Vec<MetricGroup>) {
        *self.groups.write().unwrap_or_else(|p| p.into_inner()) = groups;
    }

    pub fn groups(&self) -> Vec<MetricGroup> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What a scrape serves: with a background collector, its latest snapshot (collecting
    /// inline only when there is none yet or it is stale, e.g. the collector is stuck);
    /// without one, a fresh snapshot.
    pub fn for_scrape(&self) -> Arc<Snapshot> {
        if let Some(every) = self.background {
            let cached = lock(&self.last).clone();
            if let Some(s) = cached.filter(|s| s.finished.elapsed() < every * 3) {
                if let Some(joined) = self.with_live_instances(&s) {
                    return Arc::new(joined);
                }
            }
        }
        // No usable collection (none yet, stale, or an instance started since): collect now;
        // the result is cached for the scrapes that follow.
        self.snapshot()
    }

    /// The cached resource figures joined with the instances as they are now: states, health,
    /// in-flight counts and the instance list itself are never stale; a figure is kept only while
    /// the instance still has the cgroup it was read from.
    fn with_live_instances(&self, cached: &Snapshot) -> Option<Snapshot> {
        let live = self
            .instances
            .as_ref()
            .map(|s| s.instances())
            .unwrap_or_default();
        let by_name: HashMap<&str, &InstanceSample> = cached
            .instances
            .iter()
            .map(|i| (i.info.name.as_str(), i))
            .collect();
        let mut instances = Vec::new();
        if cached.groups.contains(&MetricGroup::InstanceStats) {
            for info in live {
                match by_name.get(info.name.as_str()) {
                    Some(old) if old.info.control_group == info.control_group => {
                        instances.push(InstanceSample {
                            info,
                            ..(*old).clone()
                        })
                    }
                    // A unit gone since the collection: no figures for it but its OOM
                    // count (a counter, and often the reason it is gone).
                    old if info.control_group.is_empty() => instances.push(InstanceSample {
                        info,
                        oom_kills: old.and_then(|o| o.oom_kills),
                        ..Default::default()
                    }),
                    // Started since the collection: the caller collects afresh.
                    _ => return None,
                }
            }
        }
        Some(Snapshot {
            finished: cached.finished,
            groups: self.groups(),
            instances,
            system: cached.system.clone(),
            system_cpu_percent: cached.system_cpu_percent,
            gpus: cached.gpus.clone(),
        })
    }

    /// Collects every `every` on a thread of its own (file reads block), until `stop` is set.
    pub fn spawn_background(
        self: &Arc<Self>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> std::io::Result<()> {
        let Some(every) = self.background else {
            return Ok(());
        };
        let me = self.clone();
        std::thread::Builder::new()
            .name("llamactl-stats".into())
            .spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = me.snapshot();
                    std::thread::sleep(every);
                }
            })
            .map(|_| ())
    }

    /// A snapshot no older than this call.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let asked = Instant::now();
        let mut prev = lock(&self.collecting);
        if let Some(s) = lock(&self.last).as_ref() {
            if s.finished >= asked {
                return s.clone();
            }
        }
        let snap = Arc::new(self.collect(&mut prev));
        *lock(&self.last) = Some(snap.clone());
        snap
    }

    fn collect(&self, prev: &mut Previous) -> Snapshot {
        let groups = self.groups();
        let on = |g| groups.contains(&g);
        let now = Instant::now();
        let elapsed_us = prev.at.map(|t| now.duration_since(t).as_micros() as f64);
        let system = if on(MetricGroup::SystemResources) || on(MetricGroup::InstanceStats) {
            read_system(&self.paths)
        } else {
            SystemStats::default()
        };
        let system_cpu_percent = match (
            prev.system_cpu,
            system.cpu_busy_seconds,
            system.cpu_total_seconds,
        ) {
            (Some((b0, t0)), Some(b1), Some(t1)) if t1 > t0 => Some((b1 - b0) / (t1 - t0) * 100.0),
            _ => None,
        };
        if let (Some(b), Some(t)) = (system.cpu_busy_seconds, system.cpu_total_seconds) {
            prev.system_cpu = Some((b, t));
        }
        let gpu_snap = if on(MetricGroup::Gpu) {
            self.gpu.snapshot()
        } else {
            Default::default()
        };
        let mut instances = Vec::new();
        let mut cpu_now = HashMap::new();
        if on(MetricGroup::InstanceStats) {
            let infos = self
                .instances
                .as_ref()
                .map(|s| s.instances())
                .unwrap_or_default();
            let mut members: HashMap<String, HashSet<u32>> = HashMap::new();
            for info in infos {
                let cgroup = match (&self.layout, info.control_group.is_empty()) {
                    (Some(l), false) => Some(read_stats(&self.paths, *l, &info.control_group)),
                    _ => None,
                };
                let oom_kills = prev
                    .oom
                    .entry(info.name.clone())
                    .or_default()
                    .observe(&info, cgroup.as_ref().and_then(|c| c.oom_kills));
                let mut cpu_percent = None;
                if let Some(usec) = cgroup.as_ref().and_then(|c| c.cpu_usec) {
                    if let (Some(p), Some(dt)) =
                        (prev.instance_cpu.get(&info.control_group), elapsed_us)
                    {
                        if usec >= *p && dt > 0.0 {
                            cpu_percent = Some((usec - p) as f64 / dt * 100.0);
                        }
                    }
                    cpu_now.insert(info.control_group.clone(), usec);
                }
                let memory_percent = cgroup
                    .as_ref()
                    .and_then(|c| memory_percent(c, system.memory_total_bytes));
                if !gpu_snap.processes.is_empty() && !info.control_group.is_empty() {
                    members.insert(info.name.clone(), self.pids(&info.control_group));
                }
                instances.push(InstanceSample {
                    info,
                    cgroup,
                    cpu_percent,
                    memory_percent,
                    gpu_memory_bytes: None,
                    oom_kills,
                });
            }
            let per = gpu::per_instance(&gpu_snap.processes, &members);
            for i in &mut instances {
                i.gpu_memory_bytes = per.get(&i.info.name).copied();
            }
        }
        if on(MetricGroup::InstanceStats) {
            // Deleted instances' counts go (a new instance of the same name starts at zero).
            prev.oom
                .retain(|name, _| instances.iter().any(|i| &i.info.name == name));
        }
        prev.instance_cpu = cpu_now;
        prev.at = Some(now);
        Snapshot {
            finished: Instant::now(),
            groups,
            instances,
            system,
            system_cpu_percent,
            gpus: gpu_snap.devices,
        }
    }

    /// Pids in a cgroup (only read when some process uses a GPU).
    fn pids(&self, cg: &str) -> HashSet<u32> {
        let rel = cg.trim_start_matches('/');
        let candidates = match self.layout {
            Some(CgroupLayout::V2) => vec![format!("fs/cgroup/{rel}/cgroup.procs")],
            _ => vec![
                format!("fs/cgroup/unified/{rel}/cgroup.procs"),
                format!("fs/cgroup/systemd/{rel}/cgroup.procs"),
                format!("fs/cgroup/pids/{rel}/cgroup.procs"),
            ],
        };
        candidates
            .iter()
            .find_map(|c| std::fs::read_to_string(self.paths.sys(c)).ok())
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::{InstanceInfo, OomCount};

    fn run(invocation: u64, oom_killed: bool) -> InstanceInfo {
        InstanceInfo {
            invocation,
            oom_killed,
            ..Default::default()
        }
    }

    #[test]
    fn oom_count_is_a_counter_over_runs_of_the_unit() {
        let mut c = OomCount::default();
        // Never active, no cgroup: no series.
        assert_eq!(c.observe(&run(0, false), None), None);
        assert_eq!(c.observe(&run(10, false), Some(0)), Some(0));
        assert_eq!(c.observe(&run(10, false), Some(2)), Some(2));
        // systemd stopped the run for OOM (pure v2): the cgroup is gone, the 2 stay.
        assert_eq!(c.observe(&run(10, true), None), Some(2));
        // The next run's cgroup starts at zero: carried.
        assert_eq!(c.observe(&run(20, false), Some(0)), Some(2));
        assert_eq!(c.observe(&run(20, false), Some(1)), Some(3));
        // A count never goes down within a run, even if a read does.
        assert_eq!(c.observe(&run(20, false), None), Some(3));
    }

    #[test]
    fn an_oom_result_counts_a_kill_no_scrape_saw() {
        let mut c = OomCount::default();
        assert_eq!(c.observe(&run(10, false), Some(0)), Some(0));
        // Killed and stopped between two scrapes: the cgroup's 1 was never read.
        assert_eq!(c.observe(&run(10, true), None), Some(1));
        // Read as well: still one kill, not two.
        assert_eq!(c.observe(&run(10, true), Some(1)), Some(1));
        // Restarted, killed again, never read: 2.
        assert_eq!(c.observe(&run(30, true), None), Some(2));
        // A unit whose first sighting is its OOM result has a series.
        assert_eq!(OomCount::default().observe(&run(5, true), None), Some(1));
    }

    #[test]
    fn without_a_run_id_a_count_going_down_is_a_new_cgroup() {
        let mut c = OomCount::default();
        assert_eq!(c.observe(&run(0, false), Some(3)), Some(3));
        assert_eq!(c.observe(&run(0, false), Some(1)), Some(4));
    }
}
