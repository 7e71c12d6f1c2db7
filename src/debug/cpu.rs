//! The in-process CPU profiler (pprof-rs): SIGPROF sampling at 99 Hz, on only while a profile
//! is being taken, written as a pprof protobuf. One profile at a time in the process — the
//! debug port's `/debug/pprof/profile` and continuous profiling (`pyroscope`) share it.

use pprof::protos::Message as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex, OwnedMutexGuard};

/// Samples per second: 99, not 100, so sampling does not run in lockstep with timers.
pub const FREQUENCY: i32 = 99;

/// Frames in these libraries are not unwound through from the signal handler (unwinding
/// inside them can deadlock); their samples are dropped.
const BLOCKLIST: &[&str] = &["libc", "libgcc", "pthread", "vdso"];

/// Removes the sampler's own frames from a stack (leaf first): the unwinder, pprof-rs's
/// `catch_unwind` around it, the SIGPROF handler and the kernel's signal trampoline, so the
/// leaf is the code that was running (without this every sample's leaf is `backtrace::…::trace`).
pub fn drop_handler_frames(frames: &mut pprof::Frames) {
    let named = |f: &Vec<pprof::Symbol>, needles: &[&str]| {
        f.iter().any(|s| {
            let n = s.name();
            needles.iter().any(|x| n.contains(x))
        })
    };
    let sampler = frames.frames.iter().position(|f| {
        named(
            f,
            &["pprof::backtrace::Trace>::trace", "perf_signal_handler"],
        )
    });
    let Some(i) = sampler else { return };
    frames.frames.drain(..=i);
    const HANDLER: &[&str] = &[
        "AssertUnwindSafe",
        "__rust_try",
        "catch_unwind",
        "perf_signal_handler",
        "__restore_rt",
    ];
    while frames
        .frames
        .first()
        .is_some_and(|f| f.is_empty() || named(f, HANDLER))
    {
        frames.frames.remove(0);
    }
}

/// Why a profile was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// Another on-demand profile is running (answered 409).
    #[error("a CPU profile is already being taken; try again when it is done")]
    Busy,
    /// The profiler stayed busy with a continuous-profiling window for longer than we wait.
    #[error("the CPU profiler is busy with continuous profiling; try again")]
    Contended,
    /// The daemon is stopping.
    #[error("the daemon is stopping")]
    Stopping,
    #[error("profiler: {0}")]
    Profiler(String),
}

/// The one CPU profiler of the process. Clones share it.
#[derive(Clone)]
pub struct CpuProfiler {
    /// Held for the whole of a profile: SIGPROF and its sample table are process-wide.
    gate: Arc<Mutex<()>>,
    /// Set while an on-demand profile waits or runs: a second one is refused, not queued.
    on_demand: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
}

/// Clears `on_demand` however the request ends (done, refused, or its client gone).
struct OnDemand(Arc<AtomicBool>);

impl Drop for OnDemand {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl CpuProfiler {
    pub fn new(shutdown: watch::Receiver<bool>) -> Self {
        Self {
            gate: Arc::new(Mutex::new(())),
            on_demand: Arc::new(AtomicBool::new(false)),
            shutdown,
        }
    }

    /// An on-demand profile of `seconds`: refused at once if another on-demand one runs;
    /// waits up to `wait` for a continuous-profiling window to end.
    pub async fn on_demand(&self, length: Duration, wait: Duration) -> Result<Vec<u8>, CpuError> {
        if self.on_demand.swap(true, Ordering::AcqRel) {
            return Err(CpuError::Busy);
        }
        let _flag = OnDemand(self.on_demand.clone());
        let gate = tokio::time::timeout(wait, self.gate.clone().lock_owned())
            .await
            .map_err(|_| CpuError::Contended)?;
        self.profile(gate, length).await
    }

    /// A continuous-profiling window: `None` when the profiler is busy (the window is skipped).
    pub async fn window(&self, length: Duration) -> Option<Result<Vec<u8>, CpuError>> {
        let gate = self.gate.clone().try_lock_owned().ok()?;
        Some(self.profile(gate, length).await)
    }

    async fn profile(
        &self,
        gate: OwnedMutexGuard<()>,
        length: Duration,
    ) -> Result<Vec<u8>, CpuError> {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(FREQUENCY)
            .blocklist(BLOCKLIST)
            .build()
            .map_err(|e| CpuError::Profiler(e.to_string()))?;
        let mut shutdown = self.shutdown.clone();
        // Dropping this future (the client went away) drops the guard: sampling stops.
        tokio::select! {
            _ = tokio::time::sleep(length) => {}
            _ = shutdown.wait_for(|s| *s) => return Err(CpuError::Stopping),
        }
        // Resolving symbols reads the binary's symbol table: blocking work, off the workers.
        // Sampling stops when the guard drops at the end of the closure.
        let encoded = tokio::task::spawn_blocking(move || {
            let report = guard
                .report()
                .frames_post_processor(drop_handler_frames)
                .build();
            drop(guard);
            let profile = report
                .and_then(|r| r.pprof())
                .map_err(|e| CpuError::Profiler(e.to_string()))?;
            Ok::<_, CpuError>(profile.encode_to_vec())
        })
        .await
        .map_err(|e| CpuError::Profiler(format!("building the report: {e}")))?;
        drop(gate);
        encoded
    }
}
