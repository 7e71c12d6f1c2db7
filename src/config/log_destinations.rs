//! `[[logging.destinations]]`: the monitoring guide's three kinds, `file`, `syslog` (RFC 5424 on
//! a Unix datagram socket, `/dev/log` by default) and `elasticsearch` (the `_bulk` API, a daily
//! `llamactl-YYYY.MM.DD` index), and the checks serde cannot make. The senders are
//! `src/logging/`.

use super::duration::HumanDuration;
use super::secret::Secret;
use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

/// Extra log destinations beside the main output. Files are written on the thread that logs;
/// syslog and Elasticsearch get each line through a bounded queue drained by a thread of their
/// own, so a slow or dead destination never holds up a request (a full queue drops the line,
/// counted in `llamactl_log_shipping_dropped_total{destination}`).
//
// Deserialized in two steps (`Deserialize` below), not by serde's internally tagged enums: those
// buffer the element first and lose the key path, so a mistyped field was reported as
// `logging.destinations[1]` without its name.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum LogDestination {
    /// A JSON-lines or text file written by the daemon.
    File {
        /// The file, appended to (its directory must exist and be writable by the daemon).
        path: PathBuf,
        #[serde(default = "default_file_format")]
        /// `json` (one object a line) or `text`.
        format: FileFormat,
    },
    Syslog(SyslogDestination),
    Elasticsearch(ElasticsearchDestination),
}

fn default_file_format() -> FileFormat {
    FileFormat::Json
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Json,
    Text,
}

impl LogDestination {
    /// `file`, `syslog` or `elasticsearch`, as `type =` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            LogDestination::File { .. } => "file",
            LogDestination::Syslog(_) => "syslog",
            LogDestination::Elasticsearch(_) => "elasticsearch",
        }
    }

    /// The `destination` label of a shipping destination: its `name`, else its type. `None`
    /// for files, which are written in place and drop nothing.
    pub fn label(&self) -> Option<String> {
        let name = match self {
            LogDestination::File { .. } => return None,
            LogDestination::Syslog(s) => &s.name,
            LogDestination::Elasticsearch(e) => &e.name,
        };
        Some(name.clone().unwrap_or_else(|| self.kind().to_string()))
    }
}

/// Where `type = "syslog"` sends when `socket` is not given.
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";

/// One RFC 5424 message per log line, as a datagram on a Unix socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyslogDestination {
    /// The `destination` label of its drop counter (default `syslog`); unique.
    pub name: Option<String>,
    /// The syslog facility of every message (`daemon`, `user`, `local0`…`local7`, …).
    pub facility: SyslogFacility,
    /// A Unix datagram socket: the syslog daemon's `/dev/log`, or one it listens on for us.
    pub socket: PathBuf,
    /// Lines waiting for the socket; more are dropped (and counted).
    pub queue_size: usize,
}

impl Default for SyslogDestination {
    fn default() -> Self {
        Self {
            name: None,
            facility: SyslogFacility::Daemon,
            socket: PathBuf::from(DEFAULT_SYSLOG_SOCKET),
            queue_size: 10_000,
        }
    }
}

/// The syslog facilities by their usual names (RFC 5424 §6.2.1 codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFacility {
    Kern,
    User,
    Mail,
    Daemon,
    Auth,
    Syslog,
    Lpr,
    News,
    Uucp,
    Cron,
    Authpriv,
    Ftp,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl SyslogFacility {
    /// The numerical code: PRI = code × 8 + severity.
    pub fn code(self) -> u8 {
        use SyslogFacility::*;
        match self {
            Kern => 0,
            User => 1,
            Mail => 2,
            Daemon => 3,
            Auth => 4,
            Syslog => 5,
            Lpr => 6,
            News => 7,
            Uucp => 8,
            Cron => 9,
            Authpriv => 10,
            Ftp => 11,
            Local0 => 16,
            Local1 => 17,
            Local2 => 18,
            Local3 => 19,
            Local4 => 20,
            Local5 => 21,
            Local6 => 22,
            Local7 => 23,
        }
    }
}

/// Documents sent in batches to `{url}/_bulk`, each into the index
/// `{index_prefix}-YYYY.MM.DD` of its own UTC date.
// Every key but `url` has a default (one function each: a container-wide `default` would give
// `url` one too, and llamactl.toml(5) would show `""` for a key that must be set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchDestination {
    /// The `destination` label of its drop counter (default `elasticsearch`); unique.
    pub name: Option<String>,
    /// `http://host:9200`, optionally with a path prefix (a proxy in front).
    pub url: String,
    /// Documents go to the index `{index_prefix}-YYYY.MM.DD` of their UTC date.
    #[serde(default = "es::index_prefix")]
    pub index_prefix: String,
    /// Basic authentication: both or neither. The password is a secret (never logged).
    pub username: Option<String>,
    /// The basic-authentication password: a secret, never logged or shown.
    pub password: Option<Secret>,
    /// An Elasticsearch API key (the `encoded` value), sent as `Authorization: ApiKey …`.
    pub api_key: Option<Secret>,
    /// Documents waiting to be sent; more are dropped (and counted).
    #[serde(default = "es::queue_size")]
    pub queue_size: usize,
    /// Most documents in one `_bulk` request.
    #[serde(default = "es::batch_size")]
    pub batch_size: usize,
    /// Longest a document waits for its batch to fill before the batch is sent.
    #[serde(default = "es::flush_interval")]
    pub flush_interval: HumanDuration,
    /// Longest one `_bulk` request may take (connecting included) before it counts as failed.
    #[serde(default = "es::timeout")]
    pub timeout: HumanDuration,
    /// Ceiling of the backoff between retries (it starts at 500 ms and doubles).
    #[serde(default = "es::max_backoff")]
    pub max_backoff: HumanDuration,
}

/// Every default, and an empty `url` (which validation refuses): a base for tests.
impl Default for ElasticsearchDestination {
    fn default() -> Self {
        Self {
            name: None,
            url: String::new(),
            index_prefix: es::index_prefix(),
            username: None,
            password: None,
            api_key: None,
            queue_size: es::queue_size(),
            batch_size: es::batch_size(),
            flush_interval: es::flush_interval(),
            timeout: es::timeout(),
            max_backoff: es::max_backoff(),
        }
    }
}

/// The defaults of `ElasticsearchDestination`'s keys.
mod es {
    use super::HumanDuration;

    pub fn index_prefix() -> String {
        "llamactl".into()
    }
    pub fn queue_size() -> usize {
        10_000
    }
    pub fn batch_size() -> usize {
        500
    }
    pub fn flush_interval() -> HumanDuration {
        HumanDuration::secs(1)
    }
    pub fn timeout() -> HumanDuration {
        HumanDuration::secs(10)
    }
    pub fn max_backoff() -> HumanDuration {
        HumanDuration::secs(30)
    }
}

/// The keys of `type = "file"` (the variant's fields, for the second step of deserializing).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFields {
    path: PathBuf,
    #[serde(default = "default_file_format")]
    format: FileFormat,
}

impl<'de> Deserialize<'de> for LogDestination {
    /// First the element as a table, then its `type`, then the rest as that type's struct, with
    /// the path of a bad key inside the element put into the message (the outer path and
    /// position are the element's).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = toml::Table::deserialize(d)?;
        let kind = match table.remove("type") {
            Some(toml::Value::String(k)) => k,
            Some(other) => {
                return Err(D::Error::custom(format!(
                "`type`: expected a string (\"file\", \"syslog\" or \"elasticsearch\"), found {}",
                other.type_str()
            )))
            }
            None => return Err(D::Error::missing_field("type")),
        };
        fn rest<T: serde::de::DeserializeOwned, E: serde::de::Error>(
            table: toml::Table,
        ) -> Result<T, E> {
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let message = inner.message().trim();
                if path.is_empty() || path == "." {
                    E::custom(message)
                } else {
                    E::custom(format!("`{path}`: {message}"))
                }
            })
        }
        match kind.as_str() {
            "file" => {
                let f: FileFields = rest(table)?;
                Ok(LogDestination::File {
                    path: f.path,
                    format: f.format,
                })
            }
            "syslog" => rest(table).map(LogDestination::Syslog),
            "elasticsearch" => rest(table).map(LogDestination::Elasticsearch),
            other => Err(D::Error::unknown_variant(
                other,
                &["file", "syslog", "elasticsearch"],
            )),
        }
    }
}

impl ElasticsearchDestination {
    /// The `_bulk` endpoint, asking only for what the sender reads of the answer.
    pub fn bulk_url(&self) -> String {
        format!(
            "{}/_bulk?filter_path=errors,items.*.status,items.*.error.type,items.*.error.reason",
            self.url.trim().trim_end_matches('/')
        )
    }
}

/// Most lines one queue may hold.
const MAX_QUEUE: usize = 1_000_000;

fn name_ok(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// An index name prefix Elasticsearch accepts once `-YYYY.MM.DD` is added: lowercase, none of
/// `\ / * ? " < > | , # :` or spaces, not starting with `-`, `_` or `+`.
fn index_prefix_ok(p: &str) -> bool {
    (1..=200).contains(&p.len())
        && p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-+".contains(&b))
}

/// The checks of every destination. Keys are named `logging.destinations.<key>` and the message
/// says which destination (its position, from 1, and type).
pub fn validate(
    destinations: &[LogDestination],
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let mut labels = HashSet::new();
    for (i, d) in destinations.iter().enumerate() {
        let which = format!("destination {} ({})", i + 1, d.kind());
        let bad = |key: &str, why: String| invalid(&format!("logging.destinations.{key}"), why);
        let queue = match d {
            LogDestination::File { path, .. } => {
                if !path.is_absolute() {
                    return Err(bad(
                        "path",
                        format!("{} must be an absolute path", path.display()),
                    ));
                }
                None
            }
            LogDestination::Syslog(s) => {
                if !s.socket.is_absolute() {
                    return Err(bad(
                        "socket",
                        format!(
                            "{which}: {} must be an absolute path (a Unix datagram socket such as /dev/log)",
                            s.socket.display()
                        ),
                    ));
                }
                Some(s.queue_size)
            }
            LogDestination::Elasticsearch(e) => {
                validate_elasticsearch(e, &which, &bad)?;
                Some(e.queue_size)
            }
        };
        if let Some(q) = queue {
            if !(1..=MAX_QUEUE).contains(&q) {
                return Err(bad(
                    "queue_size",
                    format!("{which}: {q} is not in 1..={MAX_QUEUE}"),
                ));
            }
        }
        let name = match d {
            LogDestination::Syslog(s) => s.name.as_deref(),
            LogDestination::Elasticsearch(e) => e.name.as_deref(),
            LogDestination::File { .. } => None,
        };
        if let Some(n) = name {
            if !name_ok(n) {
                return Err(bad(
                    "name",
                    format!(
                        "{which}: {n:?} must be 1-64 lowercase letters, digits, '.', '_' or '-'"
                    ),
                ));
            }
        }
        if let Some(label) = d.label() {
            if !labels.insert(label.clone()) {
                return Err(bad(
                    "name",
                    format!("{which}: another destination is already called {label:?} (the `destination` label of llamactl_log_shipping_dropped_total): give one of them a `name`"),
                ));
            }
        }
    }
    Ok(())
}

fn validate_elasticsearch(
    e: &ElasticsearchDestination,
    which: &str,
    bad: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let url = e.url.trim();
    if url.is_empty() {
        return Err(bad(
            "url",
            format!("{which}: url is required (e.g. \"http://elasticsearch:9200\")"),
        ));
    }
    if url.starts_with("https://") {
        return Err(bad(
            "url",
            format!("{which}: {url:?}: https is not supported (the daemon has no TLS client): send to Elasticsearch over http on a trusted network, or to a local proxy or shipper that forwards with TLS (README \"Log destinations\")"),
        ));
    }
    let rest = url.strip_prefix("http://").unwrap_or_default();
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad(
            "url",
            format!("{which}: credentials do not go in the URL: use username and password (a secret, never logged), or api_key"),
        ));
    }
    if !url.starts_with("http://")
        || super::split_authority(authority).is_none()
        || url.contains(['?', '#', ' '])
        || url.parse::<axum::http::Uri>().is_err()
    {
        return Err(bad(
            "url",
            format!("{which}: {url:?} is not an http:// URL such as \"http://elasticsearch:9200\" (a path prefix is allowed; no query)"),
        ));
    }
    if !index_prefix_ok(&e.index_prefix) {
        return Err(bad(
            "index_prefix",
            format!("{which}: {:?} is not an index name prefix: 1-200 lowercase letters, digits, '.', '_', '-' or '+', starting with a letter or digit", e.index_prefix),
        ));
    }
    match (&e.username, &e.password) {
        (Some(u), Some(_))
            if u.is_empty() || u.contains(':') || u.chars().any(char::is_control) =>
        {
            return Err(bad(
                "username",
                format!("{which}: {u:?} is not a user name (no ':' or control characters)"),
            ));
        }
        (Some(_), None) => {
            return Err(bad(
                "password",
                format!("{which}: username is set without a password"),
            ))
        }
        (None, Some(_)) => {
            return Err(bad(
                "username",
                format!("{which}: password is set without a username"),
            ))
        }
        _ => {}
    }
    if let Some(p) = &e.password {
        if p.expose().chars().any(char::is_control) {
            // A secret: say what is wrong with it, never what it is.
            return Err(bad(
                "password",
                format!("{which}: the password has control characters"),
            ));
        }
    }
    if let Some(k) = &e.api_key {
        if e.username.is_some() {
            return Err(bad(
                "api_key",
                format!("{which}: give api_key or username and password, not both"),
            ));
        }
        if k.expose().is_empty()
            || axum::http::HeaderValue::try_from(format!("ApiKey {}", k.expose())).is_err()
        {
            return Err(bad(
                "api_key",
                format!("{which}: the API key is empty or has characters a header cannot carry"),
            ));
        }
    }
    if !(1..=10_000).contains(&e.batch_size) || e.batch_size > e.queue_size {
        return Err(bad(
            "batch_size",
            format!(
                "{which}: {} is not in 1..=10000 or is more than queue_size ({})",
                e.batch_size, e.queue_size
            ),
        ));
    }
    for (key, d, lo, hi) in [
        (
            "flush_interval",
            e.flush_interval,
            Duration::from_millis(10),
            Duration::from_secs(60),
        ),
        (
            "timeout",
            e.timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        ),
        (
            "max_backoff",
            e.max_backoff,
            Duration::from_millis(500),
            Duration::from_secs(3600),
        ),
    ] {
        if !(lo..=hi).contains(&d.get()) {
            return Err(bad(
                key,
                format!(
                    "{which}: {d} is not between {} and {}",
                    HumanDuration(lo),
                    HumanDuration(hi)
                ),
            ));
        }
    }
    Ok(())
}
