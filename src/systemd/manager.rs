//! `UnitManager`: what the instance supervisor asks of systemd (start a transient service, stop,
//! reset, read a unit, list units, hear about changes), as a trait, so that the supervisor's
//! logic (on-demand start, eviction, idle stop, ports, routing) is unit-tested against an
//! in-memory manager (`fake.rs`) while the sandbox tests prove this file's D-Bus driver.

use super::transient::TransientService;
use super::units::{self, UnitError, UnitState};
use futures_util::StreamExt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};
use zbus::message::Type as MsgType;
use zbus::{Connection, MatchRule, MessageStream};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the manager reports, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnitEvent {
    /// A (new) connection to the manager: everything may have changed, re-read it all. Sent
    /// after the change subscription is in place, so no change after it is missed.
    Connected,
    /// A unit's properties changed.
    Changed(String),
}

pub trait UnitManager: Send + Sync + 'static {
    /// Whether the manager can be reached now.
    fn available(&self) -> bool;
    /// Starts a transient service and waits for its start job.
    fn start_transient<'a>(
        &'a self,
        svc: &'a TransientService,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), UnitError>>;
    /// Stops a unit and waits; a unit that is not loaded is already stopped.
    fn stop<'a>(&'a self, unit: &'a str, timeout: Duration)
        -> BoxFuture<'a, Result<(), UnitError>>;
    /// Forgets a failed unit (and its start-limit counter).
    fn reset_failed<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), UnitError>>;
    /// A unit as it is now; not loaded → `UnitState::default()`.
    fn state<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<UnitState, UnitError>>;
    /// Loaded units matching a glob such as `llamactl-*.service`.
    fn list<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Vec<String>, UnitError>>;
    /// Changes from now on, until `shutdown` turns true.
    fn events(&self, shutdown: watch::Receiver<bool>) -> mpsc::Receiver<UnitEvent>;
}

/// The real manager, over whichever bus connection the monitor holds now.
pub struct Bus {
    conn: watch::Receiver<Option<Connection>>,
}

impl Bus {
    pub fn new(conn: watch::Receiver<Option<Connection>>) -> Self {
        Self { conn }
    }

    fn conn(&self) -> Result<Connection, UnitError> {
        self.conn.borrow().clone().ok_or(UnitError::Unavailable)
    }
}

impl UnitManager for Bus {
    fn available(&self) -> bool {
        self.conn.borrow().is_some()
    }

    fn start_transient<'a>(
        &'a self,
        svc: &'a TransientService,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), UnitError>> {
        Box::pin(async move { units::start_transient(&self.conn()?, svc, timeout).await })
    }

    fn stop<'a>(
        &'a self,
        unit: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), UnitError>> {
        Box::pin(async move { units::stop(&self.conn()?, unit, timeout).await })
    }

    fn reset_failed<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), UnitError>> {
        Box::pin(async move { units::reset_failed(&self.conn()?, unit).await })
    }

    fn state<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<UnitState, UnitError>> {
        Box::pin(async move { units::state(&self.conn()?, unit).await })
    }

    fn list<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Vec<String>, UnitError>> {
        Box::pin(async move { units::list(&self.conn()?, pattern).await })
    }

    /// For every (re)connection: subscribe to `PropertiesChanged` of units (no polling), say
    /// `Connected`, then pass each change on.
    fn events(&self, mut shutdown: watch::Receiver<bool>) -> mpsc::Receiver<UnitEvent> {
        let (tx, rx) = mpsc::channel(1024);
        let mut conn_rx = self.conn.clone();
        tokio::spawn(async move {
            loop {
                let conn = conn_rx.borrow_and_update().clone();
                if let Some(conn) = conn {
                    match signal_stream(&conn).await {
                        Ok(mut stream) => {
                            if tx.send(UnitEvent::Connected).await.is_err() {
                                return;
                            }
                            loop {
                                tokio::select! {
                                    msg = stream.next() => match msg {
                                        Some(Ok(m)) => {
                                            let header = m.header();
                                            let Some(path) = header.path() else { continue };
                                            let Some(unit) = units::unit_from_path(path.as_str()) else { continue };
                                            if tx.send(UnitEvent::Changed(unit)).await.is_err() {
                                                return;
                                            }
                                        }
                                        Some(Err(e)) => debug!(error = %e, "bad signal"),
                                        None => break,
                                    },
                                    _ = conn_rx.changed() => break,
                                    _ = shutdown.changed() => return,
                                }
                            }
                        }
                        Err(e) => warn!(error = %e, "cannot watch systemd unit signals"),
                    }
                }
                tokio::select! {
                    r = conn_rx.changed() => if r.is_err() { return },
                    _ = shutdown.changed() => return,
                }
            }
        });
        rx
    }
}

async fn signal_stream(conn: &Connection) -> zbus::Result<MessageStream> {
    let rule = MatchRule::builder()
        .msg_type(MsgType::Signal)
        .sender("org.freedesktop.systemd1")
        .interface("org.freedesktop.DBus.Properties")
        .member("PropertiesChanged")
        .path_namespace("/org/freedesktop/systemd1/unit")
        .build()?;
    // A deep queue: a burst of unit changes must not drop the signal that carries the last state.
    MessageStream::for_match_rule(rule, conn, std::num::NonZeroUsize::new(4096)).await
}
