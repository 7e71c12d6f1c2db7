//! What the shipping destinations (syslog, Elasticsearch) share: a [`Record`] built from an
//! event on the thread that logs it, a bounded queue that thread only ever `try_send`s to (a full
//! queue drops the record and counts it: logging never waits for a destination), and the
//! background thread draining it ([`Inbox`]), with its stop and last flush.
//!
//! Events logged on a shipping thread (its own failure and recovery lines, and anything a
//! dependency logs there) are never shipped: a destination that fails would otherwise be handed
//! its own failure reports in a loop. They reach the main output and files as usual.

use crate::config::time::format_rfc3339_micros;
use prometheus_client::metrics::counter::Counter;
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Values longer than this are cut (at a character boundary, marked `…`).
pub const MAX_VALUE: usize = 32 * 1024;

/// One log line as the destinations see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Unix microseconds.
    pub time_us: i64,
    pub level: Level,
    pub target: &'static str,
    pub message: String,
    /// The event's `component` field, else derived from its target (`llamactl::http::x` → `http`).
    pub component: String,
    /// The event's `llamactl_instance` (or `instance`) field.
    pub instance: Option<String>,
    /// The other fields, in the order logged.
    pub fields: Vec<(&'static str, String)>,
}

impl Record {
    pub fn from_event(event: &Event<'_>) -> Record {
        let meta = event.metadata();
        let mut v = Collect::default();
        event.record(&mut v);
        let time_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        Record {
            time_us,
            level: *meta.level(),
            target: meta.target(),
            message: v.message,
            component: v
                .component
                .unwrap_or_else(|| super::journald::component_of(meta.target()).to_string()),
            instance: v.instance,
            fields: v.fields,
        }
    }

    /// `2025-06-01T12:00:00.123456Z`.
    pub fn timestamp(&self) -> String {
        format_rfc3339_micros(self.time_us)
    }

    /// `error`, `warn`, `info`, `debug` or `trace`, as `[logging] level` names them.
    pub fn level_name(&self) -> &'static str {
        match self.level {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        }
    }

    /// The message with ` key=value` for the instance and each field, for text destinations.
    pub fn text(&self) -> String {
        let mut s = self.message.clone();
        if let Some(i) = &self.instance {
            let _ = write!(s, " instance={i}");
        }
        for (k, v) in &self.fields {
            let _ = write!(s, " {k}={v}");
        }
        s
    }
}

/// Cuts `s` to at most [`MAX_VALUE`] bytes.
fn cap(mut s: String) -> String {
    if s.len() > MAX_VALUE {
        let mut cut = MAX_VALUE - '…'.len_utf8();
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[derive(Default)]
struct Collect {
    message: String,
    component: Option<String>,
    instance: Option<String>,
    fields: Vec<(&'static str, String)>,
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Collect {
    fn put(&mut self, field: &Field, value: String) {
        let value = cap(value);
        match field.name() {
            "message" => self.message = value,
            "component" => self.component = Some(value),
            "llamactl_instance" | "instance" => self.instance = Some(value),
            name => self.fields.push((name, value)),
        }
    }
}

thread_local! {
    static ON_SHIPPER: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is a shipping thread (whose events are not shipped).
pub fn on_shipper_thread() -> bool {
    ON_SHIPPER.with(Cell::get)
}

/// The tracing layer of one shipping destination: builds the record and hands it over without
/// waiting.
pub struct ShipLayer {
    tx: SyncSender<Record>,
    dropped: Counter,
}

impl<S: Subscriber> Layer<S> for ShipLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if on_shipper_thread() {
            return;
        }
        match self.tx.try_send(Record::from_event(event)) {
            Ok(()) => {}
            // Full: the destination is behind or down. Disconnected: it has stopped.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

/// The stop signal and its deadline, shared by a [`Shipper`] and its thread.
#[derive(Default)]
struct Stop {
    flag: AtomicBool,
    /// The time the last flush must be over by, once stopping.
    deadline: Mutex<Option<Instant>>,
    wake: Condvar,
    /// Set by the thread when it has finished (flushed or given up).
    finished: Mutex<bool>,
    done: Condvar,
}

/// A running destination: its label and drop counter (for `/metrics`), and its stop.
#[derive(Clone)]
pub struct Shipper {
    pub name: String,
    pub kind: &'static str,
    pub dropped: Counter,
    stop: Arc<Stop>,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Shipper {
    /// Asks the thread to send what is queued and stop, and waits until it has or `until`
    /// has passed. What it could not send by then is counted as dropped.
    pub fn close(&self, until: Instant) {
        self.stop(until);
        self.wait(until);
    }

    /// Asks the thread to send what is queued and stop by `until`; returns at once.
    pub fn stop(&self, until: Instant) {
        {
            // Under the lock `Inbox::sleep` checks the flag under: no wake-up is lost.
            let mut d = self.stop.deadline.lock().unwrap_or_else(|e| e.into_inner());
            *d = Some(until);
            self.stop.flag.store(true, Ordering::SeqCst);
        }
        self.stop.wake.notify_all();
    }

    /// Waits until the thread has finished, or `until` has passed.
    pub fn wait(&self, until: Instant) {
        let mut finished = self.stop.finished.lock().unwrap_or_else(|e| e.into_inner());
        while !*finished {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            finished = self
                .stop
                .done
                .wait_timeout(finished, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The thread's side: the queue and the stop.
pub struct Inbox {
    rx: Receiver<Record>,
    stop: Arc<Stop>,
    pub dropped: Counter,
}

impl Inbox {
    /// The next record, waiting up to `wait`. `None` when none came in time, or at once when
    /// stopping and the queue is empty.
    pub fn next(&self, wait: Duration) -> Option<Record> {
        if self.stopping() {
            return self.rx.try_recv().ok();
        }
        // Waits in short steps to notice a stop (the sender side never closes: the layer lives
        // in the global subscriber).
        let until = Instant::now() + wait;
        loop {
            let step = until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            match self.rx.recv_timeout(step) {
                Ok(r) => return Some(r),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => {
                    if self.stopping() {
                        return self.rx.try_recv().ok();
                    }
                    if Instant::now() >= until {
                        return None;
                    }
                }
            }
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.flag.load(Ordering::SeqCst)
    }

    /// Time left for the last flush (`None` while not stopping).
    pub fn time_left(&self) -> Option<Duration> {
        if !self.stopping() {
            return None;
        }
        let d = *self.stop.deadline.lock().unwrap_or_else(|e| e.into_inner());
        Some(d.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        }))
    }

    /// Sleeps for `d`, or less when a stop comes.
    pub fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut g = self.stop.deadline.lock().unwrap_or_else(|e| e.into_inner());
        while !self.stopping() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            g = self
                .stop
                .wake
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Counts everything still queued as dropped (the last flush failed or ran out of time).
    pub fn drop_rest(&self) {
        let mut n = 0;
        while self.rx.try_recv().is_ok() {
            n += 1;
        }
        self.dropped.inc_by(n);
    }

    fn finish(&self) {
        *self.stop.finished.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stop.done.notify_all();
    }
}

/// Starts a destination: its queue of `capacity` records, its layer, and a thread named
/// `llamactld-log-<kind>` running `run` (which returns once stopping and flushed).
pub fn start(
    name: String,
    kind: &'static str,
    capacity: usize,
    run: impl FnOnce(&Inbox) + Send + 'static,
) -> std::io::Result<(ShipLayer, Shipper)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    let dropped = Counter::default();
    let stop = Arc::new(Stop::default());
    let inbox = Inbox {
        rx,
        stop: stop.clone(),
        dropped: dropped.clone(),
    };
    std::thread::Builder::new()
        .name(format!("llamactld-log-{kind}"))
        .spawn(move || {
            ON_SHIPPER.with(|s| s.set(true));
            run(&inbox);
            inbox.drop_rest();
            inbox.finish();
        })?;
    Ok((
        ShipLayer {
            tx,
            dropped: dropped.clone(),
        },
        Shipper {
            name,
            kind,
            dropped,
            stop,
        },
    ))
}

/// Backoff between retries: 500 ms doubling up to a ceiling.
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(500);

    pub fn new(max: Duration) -> Self {
        Self {
            next: Self::FIRST.min(max),
            max,
        }
    }

    /// The wait before the next retry; doubles the one after.
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST.min(self.max);
    }
}

/// This machine's name, for the records' `host` (read once per destination).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    struct Capture(Arc<Mutex<Vec<Record>>>);
    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            self.0.lock().unwrap().push(Record::from_event(event));
        }
    }

    pub fn records(f: impl FnOnce()) -> Vec<Record> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sub = tracing_subscriber::registry().with(Capture(out.clone()));
        tracing::subscriber::with_default(sub, f);
        let v = out.lock().unwrap().clone();
        v
    }

    #[test]
    fn a_record_has_component_instance_and_fields() {
        let r = records(
            || tracing::info!(target: "llamactl::instance::supervisor", llamactl_instance = "smol", port = 8001, "instance created"),
        );
        let r = &r[0];
        assert_eq!(r.message, "instance created");
        assert_eq!(r.component, "instance");
        assert_eq!(r.instance.as_deref(), Some("smol"));
        assert_eq!(r.fields, vec![("port", "8001".to_string())]);
        assert_eq!(r.level_name(), "info");
        assert_eq!(r.text(), "instance created instance=smol port=8001");
        assert!(r.timestamp().ends_with('Z') && r.timestamp().len() == 27);
        let r = &records(|| tracing::warn!(component = "config", "x"))[0];
        assert_eq!((r.component.as_str(), r.level_name()), ("config", "warn"));
    }

    #[test]
    fn long_values_are_cut() {
        let long = "é".repeat(MAX_VALUE);
        let r = &records(|| tracing::info!(v = %long, "{long}"))[0];
        assert!(r.message.len() <= MAX_VALUE && r.message.ends_with('…'));
        assert!(r.fields[0].1.len() <= MAX_VALUE);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (layer, shipper) = start("t".into(), "test", 2, |inbox: &Inbox| {
            // A destination that never takes anything until it is stopped.
            while !inbox.stopping() {
                inbox.sleep(Duration::from_secs(60));
            }
        })
        .unwrap();
        let sub = tracing_subscriber::registry().with(layer);
        let t = Instant::now();
        tracing::subscriber::with_default(sub, || {
            for i in 0..1000 {
                tracing::info!(i, "line");
            }
        });
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(shipper.dropped.get(), 998);
        // Close: the two queued records were never sent, so they count too.
        let t = Instant::now();
        shipper.close(Instant::now() + Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(shipper.dropped.get(), 1000);
    }

    #[test]
    fn events_of_a_shipping_thread_are_not_shipped() {
        let seen = Arc::new(Mutex::new(0));
        let s = seen.clone();
        let (layer, shipper) = start("t".into(), "test", 100, move |inbox: &Inbox| {
            while let Some(_r) = inbox.next(Duration::from_secs(5)) {
                *s.lock().unwrap() += 1;
            }
        })
        .unwrap();
        let sub = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(sub, || {
            tracing::info!("from a request");
            ON_SHIPPER.with(|f| f.set(true));
            tracing::warn!("the shipper's own failure");
            ON_SHIPPER.with(|f| f.set(false));
        });
        shipper.close(Instant::now() + Duration::from_secs(5));
        assert_eq!(*seen.lock().unwrap(), 1);
        assert_eq!(shipper.dropped.get(), 0);
    }

    #[test]
    fn backoff_doubles_to_its_ceiling() {
        let mut b = Backoff::new(Duration::from_secs(3));
        let steps: Vec<u128> = (0..5).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, [500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.step().as_millis(), 500);
    }
}
