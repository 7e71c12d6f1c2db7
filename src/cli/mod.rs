//! Command-line definitions for both binaries (clap derive), the `llamactl` client commands, and
//! the man pages and completions generated from the same definitions.

mod audit;
mod client;
mod commands;
pub mod generate;
mod instances;
mod keys;
mod session;

pub use commands::run;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const DAEMON_AFTER: &str = "\
Files:
  /etc/llamactl/config.toml   the config: every key in llamactl.toml(5) and the shipped file
  /var/lib/llamactl/instances/NAME.json   instance specs (StateDirectory=llamactl)
  /lib/systemd/system/llamactl.service

Endpoints (README \"Security\" says who may use which):
  /api/v1/instances[/{name}[/start|/stop|/restart|/logs]]   the instance API (see README)
  /api/v1/auth/keys[/{name}]  API keys: create (POST), list (GET), revoke (DELETE)
  /v1/*, /infill              the OpenAI-compatible proxy
  GET /api/instances/{name}/health                          200 ready, 503 not, 404 unknown
  GET /api/health/live        liveness: 200 while the server answers
  GET /api/health             readiness: 200, or 503 listing the failing checks
  GET /api/system/health      version, uptime, systemd, cgroup layout, memory, capabilities
  GET /metrics                Prometheus text (OpenMetrics when the Accept header asks)

Files (run time):
  /run/llamactl/llamactl.sock the admin socket (0660, group llamactl): root and the group's
                              members manage llamactld through it without a key
  /var/lib/llamactl/keys.json API keys created through the API (SHA-256 digests, 0600)
  $CREDENTIALS_DIRECTORY/llamactl.keys   keys provisioned as a systemd credential

Environment:
  LLAMACTL_CONFIG             config file when --config is not given
  LLAMACTL_LOG                a tracing filter overriding [logging] level (e.g. llamactl::systemd=trace)
  DBUS_SYSTEM_BUS_ADDRESS     the system bus, unless [systemd] address is set

Instances run as transient units llamactl-NAME.service in llamactl.slice:
  systemctl status llamactl-NAME.service, journalctl -u llamactl-NAME.service,
  journalctl LLAMACTL_INSTANCE=NAME (the backend's lines and the daemon's about it).
  Restarting or killing llamactld never stops them; it re-adopts them when it starts.

Journal:
  journalctl -u llamactl                         the daemon's log
  journalctl -u llamactl LLAMACTL_COMPONENT=systemd   one component (daemon, http, systemd, config)
  journalctl -u llamactl -p warning              warnings and errors only
  journalctl -u llamactl -o json                 every field (CODE_FILE, CODE_LINE, ...)

Exit status: 0 after a clean stop; 1 when the config is invalid or the port cannot be bound.
See also: llamactl(1), llamactl.toml(5), systemd.service(5), sd_notify(3).";

const CLIENT_AFTER: &str = "\
Exit status: 0 success (for `health`: ready and healthy), 1 failure or unhealthy, 2 usage error.

Where the daemon is: --socket PATH; else --url / $LLAMACTL_URL (TCP); else the admin socket
(/run/llamactl/llamactl.sock, or the config's [server] socket) when it exists and is writable (as
root or a member of its group: no key needed); else TCP to the config's [server] address. Over
TCP the management commands need a management API key: $LLAMACTL_API_KEY or --api-key-file
(no flag takes the key itself: command lines are visible to every user).

Examples:
  llamactl health                      readiness and system health as a table
  llamactl -o json health | jq .       the same, as JSON
  llamactl create smol -m /srv/models/smol.gguf --ctx-size 4096 --wait
  llamactl create echo --backend command --start -- /usr/bin/my-server --port {port}
  llamactl create big -f big.toml      a spec file: the API's JSON body, or the same keys in TOML
  llamactl list
  llamactl logs smol -f                follow the instance's journal
  llamactl health smol                 exit 0 when the instance is ready
  LLAMACTL_URL=http://10.0.0.5:8080 llamactl version
  llamactl keys create app --scope inference --instance smol --expires 30d
  llamactl keys list
  llamactl keys revoke app
  llamactl audit --since 1h --event instance   what happened to instances in the last hour
  llamactl --url http://10.0.0.5:8080 login    store a key for that daemon (read from stdin)

See also: llamactld(8), llamactl.toml(5).";

/// Waiting for an instance to be ready.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Wait until the instance is ready (its health endpoint answers), showing progress
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (exit 1)
    #[arg(long, value_name = "DURATION", default_value = "5m",
          value_parser = crate::config::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Instance name: lowercase letters, digits, '.', '_', '-'
    pub name: String,
    /// Spec file: the API's JSON body, or the same keys in TOML; flags below override it
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Backend type
    #[arg(long, value_parser = ["llama_cpp", "vllm", "command"])]
    pub backend: Option<String>,
    /// Model: a GGUF path (llama_cpp) or a model name/path (vllm)
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Port of the backend [default: the next free one of [instances] port_range]
    #[arg(long, short = 'p')]
    pub port: Option<u16>,
    /// llama.cpp context size
    #[arg(long)]
    pub ctx_size: Option<u64>,
    /// llama.cpp GPU layers
    #[arg(long)]
    pub gpu_layers: Option<i64>,
    /// Backend threads
    #[arg(long)]
    pub threads: Option<u64>,
    /// Model alias the backend reports
    #[arg(long)]
    pub alias: Option<String>,
    /// Any backend option as KEY=VALUE (VALUE is JSON when it parses, else a string), e.g.
    /// --opt flash_attn=true
    #[arg(long = "opt", value_name = "KEY=VALUE")]
    pub opts: Vec<String>,
    /// Extra argument appended verbatim to the backend's command line (repeatable)
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Environment variable KEY=VALUE (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Memory limit, e.g. 8G (MemoryMax=)
    #[arg(long)]
    pub memory_max: Option<crate::instance::spec::ByteSize>,
    /// CPU limit in percent of one CPU, e.g. 200 (CPUQuota=)
    #[arg(long)]
    pub cpu_quota: Option<f64>,
    /// GPUs to use, comma-separated (CUDA_VISIBLE_DEVICES)
    #[arg(long, value_delimiter = ',')]
    pub gpus: Vec<String>,
    /// Do not restart the backend when it fails
    #[arg(long)]
    pub no_auto_restart: bool,
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// Seconds between restarts
    #[arg(long)]
    pub restart_delay: Option<u32>,
    /// Start it right away
    #[arg(long)]
    pub start: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// For --backend command: the argv to run ({port} and {host} are substituted)
    #[arg(last = true, value_name = "ARGV")]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// From this time: a duration back from now (1h, 30m) or a date
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Until this time (same forms)
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// An event (instance.delete) or a family (instance)
    #[arg(long)]
    pub event: Option<String>,
    /// An actor (key:NAME, uid:0(root), llamactld)
    #[arg(long)]
    pub actor: Option<String>,
    /// An instance
    #[arg(long)]
    pub instance: Option<String>,
    /// success or failure
    #[arg(long)]
    pub outcome: Option<String>,
    /// How many of the newest records
    #[arg(short = 'n', long, default_value_t = 100)]
    pub lines: usize,
    /// Keep following new records
    #[arg(short, long)]
    pub follow: bool,
}

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
    /// Base URL of llamactld (TCP)
    #[arg(long, global = true, env = "LLAMACTL_URL", value_name = "URL")]
    pub url: Option<String>,

    /// Use this admin socket (wins over --url and $LLAMACTL_URL) [default:
    /// /run/llamactl/llamactl.sock when it exists and is writable, unless a URL is given]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Read the API key for TCP from this file [default: $LLAMACTL_API_KEY]
    #[arg(long, global = true, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Config file to read the daemon's address from [default: /etc/llamactl/config.toml; env:
    /// LLAMACTL_CONFIG]
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Output format
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: Output,

    /// Give up on one HTTP request to the daemon after this long (e.g. 500ms, 10s)
    #[arg(long, global = true, value_name = "DURATION", default_value = "90s",
          value_parser = crate::config::parse_duration)]
    pub http_timeout: std::time::Duration,

    /// Print a man page or shell completions and exit
    #[arg(long, value_name = "KIND", hide = true)]
    pub generate: Option<Generate>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Without NAME: the daemon's readiness and system health. With NAME: that instance's
    /// health. Exit 0 when healthy/ready, 1 otherwise
    Health {
        /// An instance
        name: Option<String>,
    },
    /// List instances
    #[command(alias = "ls")]
    List,
    /// Create an instance from flags or a spec file (TOML or JSON)
    Create(Box<CreateArgs>),
    /// Show one instance
    Show { name: String },
    /// Start an instance
    Start {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop an instance
    Stop { name: String },
    /// Restart an instance
    Restart {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete an instance (a running one is stopped first)
    #[command(alias = "rm")]
    Delete { name: String },
    /// Show an instance's log from the journal
    Logs {
        name: String,
        /// How many of the last lines
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        /// Keep following new lines
        #[arg(short, long)]
        follow: bool,
    },
    /// Manage API keys (management scope)
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Show the audit trail, oldest first (management scope)
    Audit(AuditArgs),
    /// Check an API key against llamactld and store it, with the URL, for later commands
    /// (~/.config/llamactl/credentials, 0600). The key is read from stdin (or
    /// --api-key-file / $LLAMACTL_API_KEY)
    Login,
    /// Forget the stored key (and tell llamactld, which records it)
    Logout,
    /// Show the client's and the daemon's versions (exit 1 when the daemon is unreachable)
    Version {
        /// Only the client's version; do not contact the daemon
        #[arg(long)]
        client: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints it once (store it now: only its digest is kept)
    Create {
        /// A name for the key (shown in lists and logs; 1-64 of letters, digits, . _ -)
        name: String,
        /// management (everything), inference (/v1/*, /infill), monitoring (/metrics, health,
        /// service discovery)
        #[arg(long, value_parser = ["management", "inference", "monitoring"])]
        scope: String,
        /// An instance the key may use (repeatable; default: all)
        #[arg(long = "instance", value_name = "NAME")]
        instances: Vec<String>,
        /// When it stops working: a duration from now (30d, 12h) or a date (2027-01-31)
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
        /// May not start a stopped instance on demand
        #[arg(long)]
        no_start: bool,
        /// May not stop another instance to make room under max_running
        #[arg(long)]
        no_evict: bool,
    },
    /// List keys (never the keys themselves)
    #[command(alias = "ls")]
    List,
    /// Revoke a key created through the API
    #[command(alias = "rm")]
    Revoke { name: String },
    /// Print a new random key and its digest for [[auth.keys]], without the daemon
    Generate,
}
