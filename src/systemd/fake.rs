//! An in-memory `UnitManager` for unit tests: units start and stop at once (or after a set
//! delay), every call is counted, failures and crashes can be injected, and a started unit's
//! "backend" is a tiny HTTP server on the unit's `PORT` that answers 200 to anything, so health
//! probes and proxied requests reach something real.

use super::manager::{BoxFuture, UnitEvent, UnitManager};
use super::transient::TransientService;
use super::units::{UnitError, UnitState};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

#[derive(Default)]
struct Unit {
    state: UnitState,
    backend: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct Inner {
    units: BTreeMap<String, Unit>,
    starts: Vec<String>,
    stops: Vec<String>,
    fail_next_start: Vec<String>,
    next_pid: u32,
    subscribers: Vec<mpsc::Sender<UnitEvent>>,
}

pub struct FakeUnits {
    inner: Mutex<Inner>,
    available: AtomicBool,
    /// How long a start job takes.
    pub start_delay: Duration,
}

impl Default for FakeUnits {
    fn default() -> Self {
        Self::new(Duration::ZERO)
    }
}

impl FakeUnits {
    pub fn new(start_delay: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                next_pid: 1000,
                ..Default::default()
            }),
            available: AtomicBool::new(true),
            start_delay,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Units started so far, in order.
    pub fn starts(&self) -> Vec<String> {
        self.lock().starts.clone()
    }

    /// Units stopped so far (stop calls on loaded units), in order.
    pub fn stops(&self) -> Vec<String> {
        self.lock().stops.clone()
    }

    /// The next start of `unit` fails (the unit ends `failed`).
    pub fn fail_next_start(&self, unit: &str) {
        self.lock().fail_next_start.push(unit.to_string());
    }

    pub fn set_available(&self, up: bool) {
        self.available.store(up, Ordering::SeqCst);
    }

    /// The unit's process dies: `failed`, as systemd reports it without `Restart=`.
    pub fn crash(&self, unit: &str) {
        let mut g = self.lock();
        if let Some(u) = g.units.get_mut(unit) {
            if let Some(b) = u.backend.take() {
                b.abort();
            }
            u.state.active_state = "failed".into();
            u.state.sub_state = "failed".into();
            u.state.result = "signal".into();
            u.state.main_pid = 0;
        }
        Self::notify(&mut g, unit);
    }

    fn notify(g: &mut Inner, unit: &str) {
        g.subscribers
            .retain(|s| s.try_send(UnitEvent::Changed(unit.to_string())).is_ok());
    }

    fn check(&self) -> Result<(), UnitError> {
        if self.available.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(UnitError::Unavailable)
        }
    }
}

/// The port a plan's backend listens on (`PORT=` in its environment).
fn port_of(svc: &TransientService) -> Option<u16> {
    svc.environment
        .iter()
        .find_map(|e| e.strip_prefix("PORT="))
        .and_then(|p| p.parse().ok())
}

/// Answers every request on `listener` with `200 ok`.
async fn backend(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
        });
    }
}

fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        Some((pre, post)) => name.starts_with(pre) && name.ends_with(post),
        None => pattern == name,
    }
}

impl UnitManager for FakeUnits {
    fn available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    fn start_transient<'a>(
        &'a self,
        svc: &'a TransientService,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<(), UnitError>> {
        Box::pin(async move {
            self.check()?;
            // As systemd: the unit starts once the job is queued, and the job's end is reported
            // `start_delay` later; a caller that stops waiting does not stop the start.
            let fail = {
                let mut g = self.lock();
                g.starts.push(svc.unit.clone());
                let pos = g.fail_next_start.iter().position(|u| *u == svc.unit);
                pos.map(|i| g.fail_next_start.remove(i)).is_some()
            };
            let listener = match (fail, port_of(svc)) {
                (false, Some(p)) => tokio::net::TcpListener::bind(("127.0.0.1", p)).await.ok(),
                _ => None,
            };
            let ok = {
                let mut g = self.lock();
                g.next_pid += 1;
                let pid = g.next_pid;
                let ok = listener.is_some();
                let u = g.units.entry(svc.unit.clone()).or_default();
                u.state = UnitState {
                    loaded: true,
                    active_state: if ok { "active" } else { "failed" }.into(),
                    sub_state: if ok { "running" } else { "failed" }.into(),
                    main_pid: if ok { pid } else { 0 },
                    result: if ok { "success" } else { "exit-code" }.into(),
                    active_enter_timestamp: u64::from(pid) * 1_000_000,
                    control_group: format!("/llamactl.slice/{}", svc.unit),
                    ..Default::default()
                };
                u.backend = listener.map(|l| tokio::spawn(backend(l)));
                Self::notify(&mut g, &svc.unit);
                ok
            };
            tokio::time::sleep(self.start_delay).await;
            if ok {
                Ok(())
            } else {
                Err(UnitError::JobFailed {
                    what: "start",
                    unit: svc.unit.clone(),
                    result: "failed".into(),
                })
            }
        })
    }

    fn stop<'a>(
        &'a self,
        unit: &'a str,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<(), UnitError>> {
        Box::pin(async move {
            self.check()?;
            let mut g = self.lock();
            if let Some(mut u) = g.units.remove(unit) {
                if let Some(b) = u.backend.take() {
                    b.abort();
                }
                g.stops.push(unit.to_string());
                Self::notify(&mut g, unit);
            }
            Ok(())
        })
    }

    fn reset_failed<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), UnitError>> {
        Box::pin(async move {
            self.check()?;
            let mut g = self.lock();
            if g.units
                .get(unit)
                .is_some_and(|u| u.state.active_state == "failed")
            {
                g.units.remove(unit);
            }
            Ok(())
        })
    }

    fn state<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<UnitState, UnitError>> {
        Box::pin(async move {
            self.check()?;
            Ok(self
                .lock()
                .units
                .get(unit)
                .map(|u| u.state.clone())
                .unwrap_or_default())
        })
    }

    fn list<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Vec<String>, UnitError>> {
        Box::pin(async move {
            self.check()?;
            Ok(self
                .lock()
                .units
                .keys()
                .filter(|u| glob(pattern, u))
                .cloned()
                .collect())
        })
    }

    fn events(&self, _shutdown: watch::Receiver<bool>) -> mpsc::Receiver<UnitEvent> {
        let (tx, rx) = mpsc::channel(1024);
        let _ = tx.try_send(UnitEvent::Connected);
        self.lock().subscribers.push(tx);
        rx
    }
}
