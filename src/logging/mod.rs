//! Logging: the journal's native protocol under systemd, JSON or text on stderr elsewhere, plus
//! optional destinations: files, syslog (`syslog.rs`) and Elasticsearch (`elasticsearch.rs`),
//! the last two shipped from threads of their own (`ship.rs`). The level can change on reload;
//! the outputs are fixed at start.

pub mod elasticsearch;
pub mod journald;
pub mod ship;
pub mod syslog;

use crate::config::{Env, FileFormat, LogDestination, LogLevel, LogOutput, LoggingConfig};
use anyhow::Context as _;
use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type BoxedLayer = Box<dyn Layer<Filtered> + Send + Sync>;

/// What `init` chose, kept to change the level on reload and to report in health.
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    pub output: &'static str,
    /// Why the configured output could not be used (e.g. no journald), logged once started.
    pub fallback_reason: Option<String>,
    /// The syslog and Elasticsearch destinations, for their drop counters and the last flush.
    pub shippers: Vec<ship::Shipper>,
}

/// The filter for a level. Dependencies (zbus, hyper) are capped at `warn` unless tracing: at
/// `debug` they print every D-Bus message and HTTP frame. `$LLAMACTL_LOG` (an EnvFilter directive)
/// overrides everything, for debugging one module.
pub fn filter_for(level: LogLevel, env: &dyn Env) -> EnvFilter {
    if let Some(d) = env.var("LLAMACTL_LOG").filter(|d| !d.is_empty()) {
        if let Ok(f) = EnvFilter::try_new(&d) {
            return f;
        }
    }
    let l = level.as_str();
    let directive = if level == LogLevel::Trace {
        l.to_string()
    } else {
        format!("{l},zbus=warn,hyper=warn,hyper_util=warn,tower_http=warn")
    };
    EnvFilter::new(directive)
}

/// True when stderr is the journal's stream socket: systemd sets `$JOURNAL_STREAM` to its
/// `device:inode`, and comparing guards against the variable being inherited by a child whose
/// stderr was redirected elsewhere.
pub fn stderr_is_journal(env: &dyn Env) -> bool {
    let Some(v) = env.var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(cfg: &LoggingConfig, env: &dyn Env) -> anyhow::Result<Logging> {
    let (filter, handle) = reload::Layer::new(filter_for(cfg.level, env));
    let mut layers: Vec<BoxedLayer> = Vec::new();
    let mut fallback_reason = None;

    let want_journal = match cfg.output {
        LogOutput::Journal => true,
        LogOutput::Auto => stderr_is_journal(env),
        LogOutput::Json | LogOutput::Text => false,
    };
    let mut output = match cfg.output {
        LogOutput::Json => "json",
        _ => "text",
    };
    if want_journal {
        match journald::JournaldLayer::connect(Path::new(journald::JOURNAL_SOCKET), "llamactld") {
            Ok(l) => {
                layers.push(Box::new(l));
                output = "journal";
            }
            Err(e) => {
                fallback_reason = Some(format!(
                    "journal socket {} unusable ({e}); logging to stderr instead",
                    journald::JOURNAL_SOCKET
                ))
            }
        }
    }
    match output {
        "json" => layers.push(Box::new(
            fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_writer(std::io::stderr),
        )),
        "text" => layers.push(Box::new(fmt::layer().with_writer(std::io::stderr))),
        _ => {}
    }
    let mut shippers = Vec::new();
    for d in &cfg.destinations {
        let started = match d {
            LogDestination::File { .. } => None,
            LogDestination::Syslog(s) => Some(syslog::start(s, d.label().unwrap_or_default())),
            LogDestination::Elasticsearch(e) => {
                Some(elasticsearch::start(e, d.label().unwrap_or_default()))
            }
        };
        if let Some(started) = started {
            let (layer, shipper) =
                started.with_context(|| format!("starting the {} log destination", d.kind()))?;
            layers.push(Box::new(layer));
            shippers.push(shipper);
            continue;
        }
        let LogDestination::File { path, format } = d else {
            continue;
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating log directory {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening log file {}", path.display()))?;
        let file = Arc::new(file);
        let layer: BoxedLayer = match format {
            FileFormat::Json => Box::new(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(file),
            ),
            FileFormat::Text => Box::new(fmt::layer().with_ansi(false).with_writer(file)),
        };
        layers.push(layer);
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
        .context("installing the log subscriber")?;
    for d in &cfg.destinations {
        match d {
            LogDestination::Syslog(s) => tracing::info!(
                component = "logging",
                destination = d.label().unwrap_or_default(),
                socket = %s.socket.display(),
                facility = ?s.facility,
                "shipping log lines to syslog (RFC 5424)"
            ),
            LogDestination::Elasticsearch(e) => tracing::info!(
                component = "logging",
                destination = d.label().unwrap_or_default(),
                url = %e.url,
                index = %format!("{}-YYYY.MM.DD", e.index_prefix),
                "shipping log lines to Elasticsearch"
            ),
            LogDestination::File { .. } => {}
        }
    }
    Ok(Logging {
        filter: handle,
        output,
        fallback_reason,
        shippers,
    })
}

/// How long the last flush of the shipping destinations may take at stop.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends what the shipping destinations still hold, for up to `timeout` in all; what is left
/// then is counted as dropped. Called once, as the daemon stops.
pub fn close(shippers: &[ship::Shipper], timeout: Duration) {
    let until = Instant::now() + timeout;
    for s in shippers {
        s.stop(until);
    }
    for s in shippers {
        s.wait(until);
    }
}

impl Logging {
    /// Applies a new level (config reload).
    pub fn set_level(&self, level: LogLevel, env: &dyn Env) -> anyhow::Result<()> {
        self.filter
            .reload(filter_for(level, env))
            .context("changing the log level")
    }
}
