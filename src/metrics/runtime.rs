//! The daemon's tokio runtimes and long-lived tasks: a registry the daemon fills as it starts
//! them, the `llamactl_runtime_*` families read from tokio's stable `RuntimeMetrics` at scrape
//! time, and the snapshot `/debug/pprof/goroutine` prints (`src/debug/tasks.rs`).
//!
//! Stable metrics only (no `--cfg tokio_unstable`): workers, alive tasks, the global (injection)
//! queue depth, and per worker its busy time and park counts. Per-worker local queue depths and
//! task backtraces need the unstable build and are not offered.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::runtime::Handle;

/// What one worker thread of a runtime has done since it started.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerSample {
    pub busy: Duration,
    pub parks: u64,
    pub park_unparks: u64,
}

/// One runtime's state at a moment.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeSample {
    pub name: String,
    /// `multi_thread` or `current_thread`.
    pub flavor: &'static str,
    pub workers: usize,
    pub alive_tasks: usize,
    pub global_queue_depth: usize,
    pub per_worker: Vec<WorkerSample>,
}

/// A long-lived task the daemon started, while its guard lives.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSample {
    pub name: String,
    pub runtime: String,
    pub started: SystemTime,
    pub age: Duration,
}

#[derive(Debug)]
struct Task {
    id: u64,
    name: String,
    runtime: String,
    started: SystemTime,
    since: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    runtimes: Vec<(String, Handle)>,
    tasks: Vec<Task>,
    next_id: u64,
}

/// The registry of runtimes and long-lived tasks. Cheap to clone; shared.
#[derive(Clone, Debug, Default)]
pub struct Runtimes {
    inner: Arc<Mutex<Inner>>,
}

/// Keeps a task listed until dropped (held by the task itself, or by whoever owns its life).
#[derive(Debug)]
pub struct TaskGuard {
    id: u64,
    runtimes: Runtimes,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.runtimes.lock().tasks.retain(|t| t.id != self.id);
    }
}

impl Runtimes {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a runtime under `name` (replacing one of the same name).
    pub fn add(&self, name: &str, handle: Handle) {
        let mut g = self.lock();
        g.runtimes.retain(|(n, _)| n != name);
        g.runtimes.push((name.to_string(), handle));
    }

    /// Lists a long-lived task until the guard is dropped.
    pub fn task(&self, name: &str, runtime: &str) -> TaskGuard {
        let mut g = self.lock();
        g.next_id += 1;
        let id = g.next_id;
        g.tasks.push(Task {
            id,
            name: name.to_string(),
            runtime: runtime.to_string(),
            started: SystemTime::now(),
            since: Instant::now(),
        });
        TaskGuard {
            id,
            runtimes: self.clone(),
        }
    }

    /// Every runtime's state now, in the order they were added.
    pub fn sample(&self) -> Vec<RuntimeSample> {
        let runtimes: Vec<(String, Handle)> = self.lock().runtimes.clone();
        runtimes
            .into_iter()
            .map(|(name, h)| {
                let m = h.metrics();
                let workers = m.num_workers();
                RuntimeSample {
                    name,
                    flavor: match h.runtime_flavor() {
                        tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
                        _ => "multi_thread",
                    },
                    workers,
                    alive_tasks: m.num_alive_tasks(),
                    global_queue_depth: m.global_queue_depth(),
                    per_worker: (0..workers)
                        .map(|w| WorkerSample {
                            busy: m.worker_total_busy_duration(w),
                            parks: m.worker_park_count(w),
                            park_unparks: m.worker_park_unpark_count(w),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// The listed long-lived tasks, oldest first.
    pub fn tasks(&self) -> Vec<TaskSample> {
        self.lock()
            .tasks
            .iter()
            .map(|t| TaskSample {
                name: t.name.clone(),
                runtime: t.runtime.clone(),
                started: t.started,
                age: t.since.elapsed(),
            })
            .collect()
    }
}

/// The `llamactl_runtime_*` families; nothing until a runtime is registered (so unit tests and
/// the golden exposition, which register none, are unchanged).
#[derive(Debug)]
pub struct RuntimeCollector(pub Runtimes);

fn family<L: prometheus_client::encoding::EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, f64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, kind)?;
    for (labels, v) in samples {
        let e = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(e)?,
            _ => ConstGauge::new(v as i64).encode(e)?,
        }
    }
    Ok(())
}

impl Collector for RuntimeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let rts = self.0.sample();
        if rts.is_empty() {
            return Ok(());
        }
        let per_rt = |f: fn(&RuntimeSample) -> usize| -> Vec<([(&str, String); 1], f64)> {
            rts.iter()
                .map(|r| ([("runtime", r.name.clone())], f(r) as f64))
                .collect()
        };
        let per_worker = |f: fn(&WorkerSample) -> f64| -> Vec<([(&str, String); 2], f64)> {
            rts.iter()
                .flat_map(|r| {
                    r.per_worker.iter().enumerate().map(|(i, w)| {
                        (
                            [("runtime", r.name.clone()), ("worker", i.to_string())],
                            f(w),
                        )
                    })
                })
                .collect()
        };
        family(
            &mut enc,
            "runtime_workers",
            "Worker threads of each of the daemon's tokio runtimes (main: the shared multi-threaded one; httpN: the HTTP workers' single-threaded ones)",
            None,
            MetricType::Gauge,
            per_rt(|r| r.workers),
        )?;
        family(
            &mut enc,
            "runtime_alive_tasks",
            "Tasks alive on each tokio runtime",
            None,
            MetricType::Gauge,
            per_rt(|r| r.alive_tasks),
        )?;
        family(
            &mut enc,
            "runtime_global_queue_depth",
            "Tasks waiting in each tokio runtime's global (injection) queue",
            None,
            MetricType::Gauge,
            per_rt(|r| r.global_queue_depth),
        )?;
        family(
            &mut enc,
            "runtime_worker_busy",
            "Time each tokio worker thread spent running tasks",
            Some(&Unit::Seconds),
            MetricType::Counter,
            per_worker(|w| w.busy.as_secs_f64()),
        )?;
        family(
            &mut enc,
            "runtime_worker_parks",
            "Times each tokio worker thread parked (went idle waiting for work)",
            None,
            MetricType::Counter,
            per_worker(|w| w.parks as f64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_and_tasks_are_listed_and_exposed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let r = Runtimes::default();
        assert!(r.sample().is_empty());
        r.add("http0", rt.handle().clone());
        rt.block_on(async { tokio::task::yield_now().await });
        let s = r.sample();
        assert_eq!((s[0].name.as_str(), s[0].workers), ("http0", 1));
        assert_eq!(s[0].flavor, "current_thread");
        let g = r.task("sweeper", "http0");
        assert_eq!(r.tasks()[0].name, "sweeper");
        drop(g);
        assert!(r.tasks().is_empty());

        let mut reg = prometheus_client::registry::Registry::default();
        reg.sub_registry_with_prefix("llamactl")
            .register_collector(Box::new(RuntimeCollector(r.clone())));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        for line in [
            "llamactl_runtime_workers{runtime=\"http0\"} 1",
            "llamactl_runtime_alive_tasks{runtime=\"http0\"} 0",
            "llamactl_runtime_global_queue_depth{runtime=\"http0\"} 0",
            "# TYPE llamactl_runtime_worker_busy_seconds counter",
            "llamactl_runtime_worker_parks_total{runtime=\"http0\",worker=\"0\"}",
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
    }
}
