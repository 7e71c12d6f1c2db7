//! Logging: the journal's native protocol under systemd, JSON or text on stderr elsewhere, plus
//! optional files. The level can change on reload; the outputs are fixed at start.

pub mod journald;

use crate::config::{Env, FileFormat, LogDestination, LogLevel, LogOutput, LoggingConfig};
use anyhow::Context as _;
use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
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
    for d in &cfg.destinations {
        let LogDestination::File { path, format } = d;
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
    Ok(Logging {
        filter: handle,
        output,
        fallback_reason,
    })
}

impl Logging {
    /// Applies a new level (config reload).
    pub fn set_level(&self, level: LogLevel, env: &dyn Env) -> anyhow::Result<()> {
        self.filter
            .reload(filter_for(level, env))
            .context("changing the log level")
    }
}
