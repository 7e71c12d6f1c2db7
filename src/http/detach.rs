//! Instance lifecycle requests (create, update, delete, start, stop, restart) run to completion
//! whatever happens to their request. A client that disconnects, or a deadline, would otherwise
//! drop the request's future half-way: a unit started with its desired state unsaved, an update
//! that stopped the instance and never started it again, an audit record never written. So the
//! audit layer hands each such request, handler and audit record together, to a task on the
//! daemon's main runtime (which also keeps their blocking work — spec fsync, port probes — off
//! the HTTP workers), and the request only waits for it: up to `[server] request_timeout`
//! (less a margin), then it answers 202 and the operation goes on (its audit record says how it
//! ended). At shutdown the daemon waits for the operations still running (`idle`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Marks a request whose handler runs detached: the router's request deadline does not apply
/// to it (the audit layer bounds the wait instead).
#[derive(Clone, Copy, Debug)]
pub struct Detached;

/// Where detached operations run, and how many are running.
pub struct Detacher {
    runtime: Handle,
    running: AtomicUsize,
    idle: Notify,
}

/// Counts one running operation; dropped when it ends, even by a panic.
struct Running(Arc<Detacher>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Detacher {
    /// Operations will run on `runtime` (the daemon's main one).
    pub fn new(runtime: Handle) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            running: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    /// Runs `op` to completion in its own task; the handle may be dropped without stopping it.
    pub fn spawn<F>(self: &Arc<Self>, op: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.running.fetch_add(1, Ordering::AcqRel);
        let running = Running(self.clone());
        // The operation stays in the trace of the request that asked for it.
        let op = crate::telemetry::in_current(op);
        self.runtime.spawn(async move {
            let _running = running;
            op.await
        })
    }

    /// Operations running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Returns once no operation is running.
    pub async fn idle(&self) {
        loop {
            // Registered before the check: a notify between the two is not missed.
            let notified = self.idle.notified();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_operation_outlives_its_dropped_handle_and_idle_waits_for_it() {
        let d = Detacher::new(Handle::current());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(AtomicUsize::new(0));
        let seen = done.clone();
        let h = d.spawn(async move {
            let _ = rx.await;
            seen.fetch_add(1, Ordering::SeqCst);
        });
        // The request goes away.
        drop(h);
        assert_eq!(d.running(), 1);
        let waiting = tokio::spawn({
            let d = d.clone();
            async move { d.idle().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "idle while an operation runs");
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("idle once it ended")
            .expect("no panic");
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(d.running(), 0);
    }

    #[tokio::test]
    async fn a_panicking_operation_is_not_counted_for_ever() {
        let d = Detacher::new(Handle::current());
        let h = d.spawn(async { panic!("boom") });
        assert!(h.await.is_err());
        tokio::time::timeout(Duration::from_secs(5), d.idle())
            .await
            .expect("idle");
    }
}
