//! Proof that every HTTP worker thread is alive, for the watchdog. The workers are
//! single-threaded runtimes of their own (`serve`): one wedged by a blocking call or a busy
//! loop stops serving every connection dealt to it, while the main runtime — where the
//! watchdog ping runs — stays well. So each worker stamps its slot here from a task on its own
//! runtime, and the daemon pings systemd only while every slot is fresh: a wedged worker makes
//! the pings stop, and systemd restarts the daemon (`WatchdogSec=`, `Restart=`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A slot of a worker that has finished (at shutdown): it no longer counts.
const RETIRED: u64 = u64::MAX;

/// The last beat of each worker, in milliseconds since `epoch`.
pub struct Heartbeats {
    epoch: Instant,
    every: Duration,
    slots: Vec<AtomicU64>,
}

/// A worker that has not beaten for longer than allowed.
#[derive(Debug, PartialEq, Eq)]
pub struct Silent {
    pub worker: usize,
    pub for_ms: u64,
}

impl Heartbeats {
    /// Slots for `workers` workers, which beat every `every`. All start fresh.
    pub fn new(workers: usize, every: Duration) -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            every,
            slots: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// How often the workers beat.
    pub fn every(&self) -> Duration {
        self.every
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(RETIRED - 1)
    }

    pub fn beat(&self, worker: usize) {
        if let Some(s) = self.slots.get(worker) {
            // A retired slot stays retired.
            let now = self.now_ms();
            let _ = s.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v != RETIRED).then_some(now)
            });
        }
    }

    /// The worker has stopped on purpose (shutdown): it is not waited for any more.
    pub fn retire(&self, worker: usize) {
        if let Some(s) = self.slots.get(worker) {
            s.store(RETIRED, Ordering::Release);
        }
    }

    /// The workers whose last beat is older than `max_age`.
    pub fn silent(&self, max_age: Duration) -> Vec<Silent> {
        let now = self.now_ms();
        let max = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(worker, s)| {
                let last = s.load(Ordering::Acquire);
                let age = now.saturating_sub(last);
                (last != RETIRED && age > max).then_some(Silent {
                    worker,
                    for_ms: age,
                })
            })
            .collect()
    }

    /// Beats for `worker` until its runtime ends. Spawned on the worker's own runtime: the
    /// beat only happens when that runtime gets to run its tasks.
    pub async fn run(self: Arc<Self>, worker: usize) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.beat(worker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_stops_beating_is_named_and_a_retired_one_is_not() {
        let h = Heartbeats::new(3, Duration::from_millis(10));
        assert!(h.silent(Duration::from_millis(40)).is_empty());
        std::thread::sleep(Duration::from_millis(60));
        h.beat(0);
        h.retire(2);
        h.beat(2);
        let silent = h.silent(Duration::from_millis(40));
        assert_eq!(silent.len(), 1, "{silent:?}");
        assert_eq!(silent[0].worker, 1);
        assert!(silent[0].for_ms >= 60, "{silent:?}");
        // Out of range: ignored, not a panic.
        h.beat(7);
        h.retire(7);
    }

    #[test]
    fn a_runtime_blocked_on_its_thread_stops_beating_and_resumes_when_it_is_free() {
        let h = Heartbeats::new(1, Duration::from_millis(10));
        let (unblock, blocked) = std::sync::mpsc::channel::<()>();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let finished = done.clone();
        let beats = h.clone();
        let worker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                tokio::spawn(beats.run(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Wedged: a blocking call on the runtime's only thread.
                let _ = blocked.recv();
                while !finished.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        });
        let wait = |what: &str, ok: &dyn Fn() -> bool| {
            let t0 = Instant::now();
            while !ok() {
                assert!(t0.elapsed() < Duration::from_secs(10), "{what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let max = Duration::from_millis(300);
        std::thread::sleep(Duration::from_millis(50));
        assert!(h.silent(max).is_empty(), "beating while it runs");
        wait("silent while blocked", &|| h.silent(max).len() == 1);
        let _ = unblock.send(());
        wait("fresh once free", &|| h.silent(max).is_empty());
        done.store(true, Ordering::Release);
        worker.join().expect("worker");
    }
}
