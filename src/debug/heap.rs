//! The heap profile: jemalloc's sampled allocation profile (`jemalloc_pprof`), as a gzipped
//! pprof protobuf of the bytes in use by call stack, symbolized in-process.
//!
//! llamactld's allocator is jemalloc built with profiling (`src/bin/llamactld.rs`), started with
//! `prof:true,prof_active:false`: nothing is sampled until the debug port starts and activates
//! it ([`activate`]); from then on one allocation per 512 KiB allocated on average (jemalloc's
//! `lg_prof_sample:19`) records its stack. A profile shows what is live among the allocations
//! made since activation.

use std::fmt;

/// Why there is no heap profile.
#[derive(Debug)]
pub enum HeapError {
    /// The process allocator is not jemalloc with profiling (e.g. the unit tests' binary).
    Unavailable,
    Failed(String),
}

impl fmt::Display for HeapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeapError::Unavailable => f.write_str(
                "heap profiling is not available: this binary's allocator is not jemalloc started with prof:true",
            ),
            HeapError::Failed(e) => write!(f, "heap profile: {e}"),
        }
    }
}

/// Starts sampling allocations (once; later calls do nothing). Returns whether it is on.
pub async fn activate() -> Result<(), HeapError> {
    let ctl = jemalloc_pprof::PROF_CTL
        .as_ref()
        .ok_or(HeapError::Unavailable)?;
    let mut ctl = ctl.lock().await;
    if !ctl.activated() {
        ctl.activate()
            .map_err(|e| HeapError::Failed(format!("activating jemalloc profiling: {e}")))?;
    }
    Ok(())
}

/// The heap profile now (gzipped pprof). jemalloc writes its dump to a temporary file
/// (the unit's private /tmp), which is parsed and symbolized: blocking work, run off the
/// async workers.
pub async fn profile() -> Result<Vec<u8>, HeapError> {
    let ctl = jemalloc_pprof::PROF_CTL
        .as_ref()
        .ok_or(HeapError::Unavailable)?
        .clone();
    tokio::task::spawn_blocking(move || {
        let mut ctl = ctl.blocking_lock();
        if !ctl.activated() {
            return Err(HeapError::Failed(
                "allocation sampling is not active".into(),
            ));
        }
        ctl.dump_pprof()
            .map_err(|e| HeapError::Failed(format!("{e:#}")))
    })
    .await
    .map_err(|e| HeapError::Failed(e.to_string()))?
}
