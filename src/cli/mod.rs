//! Command-line definitions for both binaries (clap derive), the `llamactl` client commands, and
//! the man pages and completions generated from the same definitions.

mod client;
mod commands;
pub mod generate;

pub use commands::run;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const DAEMON_AFTER: &str = "\
Files:
  /etc/llamactl/config.toml   the config (every key documented in the shipped file)
  /var/lib/llamactl/          state (StateDirectory=llamactl)
  /lib/systemd/system/llamactl.service

Endpoints:
  GET /api/health/live        liveness: 200 while the server answers
  GET /api/health             readiness: 200, or 503 listing the failing checks
  GET /api/system/health      version, uptime, systemd, cgroup layout, memory, capabilities
  GET /metrics                Prometheus text (OpenMetrics when the Accept header asks)

Environment:
  LLAMACTL_CONFIG             config file when --config is not given
  LLAMACTL_LOG                a tracing filter overriding [logging] level (e.g. llamactl::systemd=trace)
  DBUS_SYSTEM_BUS_ADDRESS     the system bus, unless [systemd] address is set

Journal:
  journalctl -u llamactl                         the daemon's log
  journalctl -u llamactl LLAMACTL_COMPONENT=systemd   one component (daemon, http, systemd, config)
  journalctl -u llamactl -p warning              warnings and errors only
  journalctl -u llamactl -o json                 every field (CODE_FILE, CODE_LINE, ...)

Exit status: 0 after a clean stop; 1 when the config is invalid or the port cannot be bound.
See also: llamactl(1), systemd.service(5), sd_notify(3).";

const CLIENT_AFTER: &str = "\
Exit status: 0 success (for `health`: ready and healthy), 1 failure or unhealthy, 2 usage error.

Examples:
  llamactl health                      readiness and system health as a table
  llamactl -o json health | jq .       the same, as JSON
  LLAMACTL_URL=http://10.0.0.5:8080 llamactl version

See also: llamactld(8).";

/// What `--generate` writes to stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Generate {
    /// A roff man page
    Man,
    /// Bash completions
    CompleteBash,
    /// Zsh completions
    CompleteZsh,
    /// Fish completions
    CompleteFish,
}

/// Run local LLM servers as systemd units and make them observable.
///
/// Started by systemd (llamactl.service, Type=notify). Serves the REST API, health endpoints and
/// Prometheus metrics on [server] host:port (default 127.0.0.1:8080). Logs go to the journal
/// under systemd (`journalctl -u llamactl`), to stderr otherwise.
///
/// Signals: SIGHUP re-reads the config (a broken file is rejected, the old config stays);
/// SIGTERM/SIGINT stop gracefully.
#[derive(Debug, Parser)]
#[command(name = "llamactld", version, max_term_width = 100, after_long_help = DAEMON_AFTER)]
pub struct DaemonArgs {
    /// Config file [default: /etc/llamactl/config.toml; env: LLAMACTL_CONFIG]
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Validate the config and exit: 0 when valid, 1 (with file, line and key) when not
    #[arg(long)]
    pub check_config: bool,

    /// Where procfs is mounted (to read a host's /proc from a container, or a fixture tree)
    #[arg(long = "path.procfs", value_name = "DIR", default_value = "/proc")]
    pub procfs: PathBuf,

    /// Where sysfs is mounted
    #[arg(long = "path.sysfs", value_name = "DIR", default_value = "/sys")]
    pub sysfs: PathBuf,

    /// Print a man page or shell completions and exit
    #[arg(long, value_name = "KIND", hide = true)]
    pub generate: Option<Generate>,
}

/// Output format of the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people
    Table,
    /// The server's JSON, for scripts
    Json,
}

/// The command-line client of llamactld.
///
/// Talks to the daemon's HTTP API. The URL comes from --url, else $LLAMACTL_URL, else the
/// [server] section of the daemon's config file, else http://127.0.0.1:8080.
#[derive(Debug, Parser)]
#[command(name = "llamactl", version, max_term_width = 100, after_long_help = CLIENT_AFTER)]
pub struct ClientArgs {
    /// Base URL of llamactld
    #[arg(long, global = true, env = "LLAMACTL_URL", value_name = "URL")]
    pub url: Option<String>,

    /// Config file to read the daemon's address from [default: /etc/llamactl/config.toml; env:
    /// LLAMACTL_CONFIG]
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Output format
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: Output,

    /// Give up on the daemon after this long (e.g. 500ms, 10s)
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s",
          value_parser = crate::config::parse_duration)]
    pub timeout: std::time::Duration,

    /// Print a man page or shell completions and exit
    #[arg(long, value_name = "KIND", hide = true)]
    pub generate: Option<Generate>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show readiness and system health; exit 0 when both are healthy, 1 otherwise
    Health,
    /// Show the client's and the daemon's versions (exit 1 when the daemon is unreachable)
    Version {
        /// Only the client's version; do not contact the daemon
        #[arg(long)]
        client: bool,
    },
}
