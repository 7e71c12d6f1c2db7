//! `llamactld`: load config, start logging, connect to systemd, serve HTTP, tell systemd we are
//! ready, then live on signals (SIGHUP reloads, SIGTERM/SIGINT stop gracefully).

mod notify;
mod reload;

use crate::audit::Auditor;
use crate::auth::Auth;
use crate::config::{self, Env as _, Loaded, ProcessEnv};
use crate::host::HostPaths;
use crate::http::{self, AppState};
use crate::instance::store::Store;
use crate::instance::{Settings, Supervisor};
use crate::logging::{self, Logging};
use crate::metrics::Metrics;
use crate::stats::gpu;
use crate::stats::snapshot::{InstanceSource, Sampler};
use crate::systemd::{self, SystemdStatus};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// How long a graceful stop waits for in-flight requests before exiting anyway (systemd's
/// `TimeoutStopSec=` is the outer bound).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Options {
    pub config: Option<PathBuf>,
    pub host: HostPaths,
}

/// Everything that lives across reloads besides `AppState`.
struct Daemon {
    state: Arc<AppState>,
    logging: Logging,
    config_path: PathBuf,
    config_explicit: bool,
    listen: SocketAddr,
}

/// Runs the daemon to completion. Errors returned here happen before READY (bad config, port
/// taken): systemd sees a failed start.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let env = ProcessEnv;
    let (config_path, explicit) = config::resolve_path(opts.config.as_deref(), &env);
    let loaded = config::load(&config_path, explicit)?;
    let logging = logging::init(&loaded.config.logging, &env)?;
    let shippers = logging.shippers.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("llamactld")
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(opts.host, loaded, logging, config_path, explicit));
    // The syslog and Elasticsearch destinations send what they still hold (bounded).
    logging::close(&shippers, logging::CLOSE_TIMEOUT);
    result
}

async fn serve(
    host: HostPaths,
    loaded: Loaded,
    logging: Logging,
    config_path: PathBuf,
    config_explicit: bool,
) -> anyhow::Result<()> {
    let env = ProcessEnv;
    // Handlers first: a SIGTERM during start-up must stop us gracefully, not kill us.
    let mut signals = Signals::install()?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %loaded,
        log_output = logging.output,
        "llamactld starting"
    );
    if let Some(why) = &logging.fallback_reason {
        warn!("{why}");
    }
    for w in &loaded.warnings {
        warn!(component = "config", "{w}");
    }
    let cfg = loaded.config.clone();

    // `[telemetry]`: traces. A collector the exporter cannot be built for is said and traces
    // stay off; the daemon serves regardless (a dead collector is counted, not fatal).
    #[cfg(feature = "otlp")]
    let traces = if cfg.telemetry.enabled {
        match crate::telemetry::export::install(&cfg.telemetry) {
            Ok(t) => Some(t),
            Err(e) => {
                error!(component = "telemetry", error = %e, "traces are off");
                None
            }
        }
    } else {
        None
    };

    let state_dir = cfg.state_dir(&env);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let monitor = systemd::spawn_monitor(cfg.systemd.clone(), shutdown_rx.clone());

    let listen = format!("{}:{}", cfg.server.host, cfg.server.port);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let listen = listener.local_addr().context("reading the bound address")?;
    info!(component = "http", address = %listen, "listening");

    // keys.json's temp files a crash left behind (the specs' go in `Supervisor::open`).
    let leftovers = crate::fsutil::clean_temp_files(&state_dir);
    if leftovers > 0 {
        warn!(files = leftovers, dir = %state_dir.display(), "removed temp files an earlier crash left behind");
    }
    let auth = Arc::new(
        Auth::open(
            &state_dir,
            &cfg.auth,
            &cfg.rate_limit,
            env.var("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        )
        .map_err(|e| anyhow::anyhow!("loading API keys: {e}"))?,
    );
    if let Some(e) = auth.keys.load_error() {
        error!(component = "auth", error = %e, "the key file cannot be read: API keys are not accepted until it is fixed or removed");
    }
    let socket_path = cfg.socket_path(&env);
    let unix = match &socket_path {
        Some(p) => Some(http::socket::bind(
            p,
            &cfg.auth.socket_group,
            auth.socket_gid(),
        )?),
        None => None,
    };

    let store = Store::open(&state_dir).context("opening the instance store")?;
    let instances = Supervisor::open(
        store,
        Settings::from_config(&cfg),
        cfg.systemd.slice.clone(),
        listen.port(),
        Arc::new(crate::systemd::manager::Bus::new(
            monitor.connection.clone(),
        )),
    )?;
    let source: Arc<dyn InstanceSource> = instances.clone();
    let sampler = Arc::new(
        Sampler::new(
            host.clone(),
            Some(source),
            gpu::detect(),
            cfg.monitoring.metrics.clone(),
        )
        .with_background(cfg.monitoring.collection_interval.get()),
    );
    let stop_stats = Arc::new(std::sync::atomic::AtomicBool::new(false));
    sampler
        .spawn_background(stop_stats.clone())
        .context("starting the statistics collector")?;
    let metrics = Arc::new(Metrics::with_sampler(host.clone(), sampler));
    for s in &logging.shippers {
        metrics.log_shipping.add(&s.name, s.dropped.clone());
    }
    let audit = Arc::new(Auditor::new(
        &cfg.audit,
        env.var("LOGS_DIRECTORY").as_deref(),
        metrics.access.clone(),
    ));
    // Before anything can evict or idle-stop: those are audited too.
    instances.set_lifecycle(Arc::new(crate::audit::hook::Hook(audit.clone())));
    // Audit records waiting for a destination are written as soon as it is back.
    let a = audit.clone();
    spawn_every(Duration::from_secs(1), shutdown_rx.clone(), move || {
        if a.pending() > 0 {
            a.retry();
        }
    });
    instances.spawn_background(shutdown_rx.clone());
    instances.spawn_idle_stopper(shutdown_rx.clone());
    let state = Arc::new(AppState::new(
        loaded,
        monitor.clone(),
        metrics,
        instances,
        auth.clone(),
        audit,
        host,
        state_dir,
        logging.output,
    ));
    // On-demand starts run to completion like the API's operations, and are waited for at stop.
    let detach = state.detach.clone();
    state.instances.set_spawner(Arc::new(move |op| {
        detach.spawn(op);
    }));
    let app = http::app(state.clone());
    // Every runtime is listed for `llamactl_runtime_*` and the debug port's task dump.
    let runtimes = state.metrics.runtimes.clone();
    runtimes.add("main", tokio::runtime::Handle::current());
    // Kept-alive backend connections are per worker thread; so is their sweep.
    let worker_runtimes = runtimes.clone();
    let on_worker: http::serve::OnWorker = Arc::new(move || {
        let name = std::thread::current()
            .name()
            .and_then(|n| n.strip_prefix("llamactld-"))
            .unwrap_or("http")
            .to_string();
        worker_runtimes.add(&name, tokio::runtime::Handle::current());
        let listed = worker_runtimes.task("proxy idle-connection sweep", &name);
        tokio::spawn(async move {
            let _listed = listed;
            crate::proxy::idle_sweeper().await
        });
    });
    // Every HTTP worker beats twice per watchdog interval; the ping waits on all of them.
    let beat_every = notify::watchdog_interval()
        .map(|w| w / 2)
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let heartbeats =
        http::heartbeat::Heartbeats::new(cfg.server.worker_threads().max(1), beat_every);
    let server = http::serve::Server::start(
        listener,
        unix,
        app,
        http::serve::Limits {
            workers: cfg.server.worker_threads(),
            header_timeout: cfg.server.header_timeout.get(),
            max_connections: cfg.server.max_connections,
        },
        state.metrics.http.clone(),
        http::serve::WorkerHooks {
            on_worker,
            heartbeats: heartbeats.clone(),
        },
        shutdown_rx.clone(),
    )
    .context("starting the HTTP workers")?;
    info!(
        component = "http",
        workers = cfg.server.worker_threads(),
        "serving"
    );
    // The tasks this function starts that live until shutdown, listed for the task dump.
    let _listed = [
        runtimes.task("HTTP acceptor", "main"),
        runtimes.task("systemd monitor", "main"),
        runtimes.task("instance supervisor and idle stopper", "main"),
        runtimes.task("audit retry and key flush timers", "main"),
    ];
    // `[debug]` and `[profiling]`: one CPU profiler for both.
    let cpu = crate::debug::cpu::CpuProfiler::new(shutdown_rx.clone());
    if cfg.debug.pprof_enabled {
        crate::debug::start(
            &cfg.debug,
            cpu.clone(),
            runtimes.clone(),
            shutdown_rx.clone(),
        )
        .await;
    }
    if cfg.profiling.enabled {
        crate::debug::pyroscope::spawn(
            cfg.profiling.pyroscope.clone(),
            cpu,
            state.metrics.profiling.clone(),
            &runtimes,
            shutdown_rx.clone(),
        );
    }

    // READY=1 once the listener is bound and the manager has answered. If it does not answer
    // within `ready_timeout`, report READY anyway with a degraded status: the API and the health
    // endpoints stay reachable (readiness says 503) instead of systemd killing and restarting us
    // in a loop over a bus that may come back.
    let mut status_rx = monitor.status.clone();
    let wait = tokio::time::timeout(
        cfg.systemd.ready_timeout.get(),
        status_rx.wait_for(|s| s.connected),
    );
    let answered = tokio::select! {
        r = wait => r.is_ok_and(|r| r.is_ok()),
        _ = signals.stop_requested() => {
            return drain(shutdown_tx, server).await;
        }
    };
    if !answered {
        warn!(
            timeout = %cfg.systemd.ready_timeout,
            "systemd manager did not answer in time; starting degraded"
        );
    }
    let daemon = Daemon {
        state: state.clone(),
        logging,
        config_path,
        config_explicit,
        listen,
    };
    notify::ready(&daemon.status_line(&status_rx.borrow()));
    let beats = heartbeats.clone();
    if let Some(every) = notify::spawn_watchdog(move |every| {
        // A worker beats every `beat_every`; one silent for a whole ping interval is wedged.
        let silent = beats.silent(every.max(beats.every() * 2));
        match silent.first() {
            None => Ok(()),
            Some(s) => Err(format!(
                "HTTP worker {} has not answered its heartbeat for {} ms ({} worker(s) silent)",
                s.worker,
                s.for_ms,
                silent.len()
            )),
        }
    }) {
        info!(
            interval_ms = every.as_millis() as u64,
            "watchdog pings enabled"
        );
    }
    info!(address = %listen, "ready");

    // The keys' last use and usage go to keys.json every minute (when they changed): a write
    // per request would put an fsync on the request path.
    let a = auth.clone();
    spawn_every(Duration::from_secs(60), shutdown_rx.clone(), move || {
        if let Err(e) = a.keys.flush() {
            warn!(component = "auth", error = %e, "could not save the keys' use");
        }
    });
    daemon.signal_loop(&mut signals, status_rx).await;
    stop_stats.store(true, std::sync::atomic::Ordering::Relaxed);
    let drained = drain(shutdown_tx, server).await;
    // Instance operations run to completion (http::detach): a stop must not cut one half-way.
    let running = state.detach.running();
    if running > 0 {
        info!(
            operations = running,
            "waiting for instance operations to finish"
        );
        let limit = state.config().config.instances.job_timeout.get() + Duration::from_secs(5);
        if tokio::time::timeout(limit, state.detach.idle())
            .await
            .is_err()
        {
            warn!(
                operations = state.detach.running(),
                "instance operations still running; stopping anyway"
            );
        }
    }
    if let Err(e) = auth.keys.flush() {
        warn!(component = "auth", error = %e, "could not save the keys' last use");
    }
    // A last try for audit records still waiting for a destination; what cannot be written now
    // is said, with how many, rather than dropped silently.
    state.audit.retry();
    let waiting = state.audit.pending();
    if waiting > 0 {
        error!(
            component = "audit",
            records = waiting,
            "audit records could not be written before stopping"
        );
    }
    // The spans of the last requests and operations, sent (within a few seconds).
    #[cfg(feature = "otlp")]
    if let Some(t) = traces {
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    drained
}

/// Runs `work` (blocking file I/O, kept off the async workers) every `period` until shutdown.
fn spawn_every(
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
    work: impl Fn() + Send + Sync + 'static,
) {
    let work = Arc::new(work);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let w = work.clone();
            let _ = tokio::task::spawn_blocking(move || w()).await;
        }
    });
}

/// Graceful stop: tell systemd, stop accepting, let in-flight requests finish (bounded).
async fn drain(
    shutdown_tx: watch::Sender<bool>,
    server: http::serve::Server,
) -> anyhow::Result<()> {
    notify::stopping("stopping: draining requests");
    info!("stopping");
    let _ = shutdown_tx.send(true);
    match tokio::time::timeout(DRAIN_TIMEOUT, server.join()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "HTTP server ended with an error"),
        Err(_) => warn!("requests still running after the drain timeout; exiting anyway"),
    }
    info!("stopped");
    Ok(())
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }

    /// Resolves on SIGTERM or SIGINT.
    async fn stop_requested(&mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM received"),
            _ = self.int.recv() => info!("SIGINT received"),
        }
    }
}

impl Daemon {
    fn status_line(&self, s: &SystemdStatus) -> String {
        let sd = if s.connected {
            format!(
                "systemd {} ({})",
                s.version.as_deref().unwrap_or("?"),
                s.system_state.as_deref().unwrap_or("?")
            )
        } else {
            format!(
                "systemd manager unreachable: {}",
                s.last_error.as_deref().unwrap_or("not connected")
            )
        };
        let cfg = self.state.config();
        let m = &cfg.config.monitoring;
        let metrics = if m.enabled && m.prometheus.enabled {
            format!(", metrics on {}", m.prometheus.path)
        } else {
            String::new()
        };
        format!("Serving API on http://{}{metrics}; {sd}", self.listen)
    }

    /// Waits for signals; returns when asked to stop. Also keeps `STATUS=` current as the bus
    /// comes and goes.
    async fn signal_loop(
        &self,
        signals: &mut Signals,
        mut status_rx: watch::Receiver<SystemdStatus>,
    ) {
        loop {
            tokio::select! {
                _ = signals.term.recv() => { info!("SIGTERM received"); return }
                _ = signals.int.recv() => { info!("SIGINT received"); return }
                _ = signals.hup.recv() => {
                    notify::reloading();
                    self.reload();
                    notify::ready(&self.status_line(&status_rx.borrow()));
                }
                changed = status_rx.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let line = self.status_line(&status_rx.borrow_and_update());
                    notify::status(&line);
                }
            }
        }
    }
}
