//! Configuration: TOML at `/etc/llamactl/config.toml` (or `--config`, or `$LLAMACTL_CONFIG`),
//! parsed into typed sections, then validated. Parse errors name the file, line and key.

mod audit;
pub mod auth;
mod duration;
mod env;
mod live;
pub mod log_destinations;
#[cfg(test)]
mod manpage;
pub mod reload;
mod secret;
pub mod time;
mod types;
pub(crate) mod validate;

pub use audit::{AuditConfig, OnFailure, AUDIT_EVENTS};
pub use auth::{
    parse_digest, validate_key_name, AuthConfig, Bucket, Expiry, KeyConfig, LimitGroup,
    RateLimitConfig, Scope,
};
pub use duration::{parse_duration, HumanDuration};
pub use env::{Env, MapEnv, ProcessEnv};
pub use live::Live;
pub use log_destinations::{
    ElasticsearchDestination, FileFormat, LogDestination, SyslogDestination, SyslogFacility,
};
pub use reload::{changed_keys, restart_only_changes, Reload};
pub use secret::{Secret, REDACTED};
pub use types::*;
pub use validate::{is_loopback, split_authority};

use std::fmt;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/llamactl/config.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/llamactl";

/// A config error, printed as one line an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is part of the one line, not a `source()`: printed as a chain (`{:#}`) it
    /// would appear twice.
    #[error("cannot read config file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {location}{message}")]
    Parse {
        path: PathBuf,
        /// `line N, column M, key `a.b`: ` (whatever of it is known)
        location: String,
        message: String,
    },
    #[error("{path}: invalid value for `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// Where the config came from and what it said; kept beside the config for health and reloads.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    /// The file read, or `None` when the default path did not exist and built-in defaults apply.
    pub path: Option<PathBuf>,
    /// Non-fatal findings (settings accepted but not acted on), logged once at load.
    pub warnings: Vec<String>,
}

/// Which file to read: `--config`, else `$LLAMACTL_CONFIG`, else the default path. The flag wins
/// because it is the most specific thing the operator typed.
pub fn resolve_path(flag: Option<&Path>, env: &dyn Env) -> (PathBuf, bool) {
    if let Some(p) = flag {
        return (p.to_path_buf(), true);
    }
    match env.var("LLAMACTL_CONFIG") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (PathBuf::from(DEFAULT_PATH), false),
    }
}

/// Reads and validates the config. A missing file is an error when it was named explicitly, and
/// means "defaults" when it is the default path (a fresh install works without one).
pub fn load(path: &Path, explicit: bool) -> Result<Loaded, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let config = parse(&text, path)?;
            let warnings = validate::validate(&config, path)?;
            Ok(Loaded {
                config,
                path: Some(path.to_path_buf()),
                warnings,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            let config = Config::default();
            let warnings = validate::validate(&config, path)?;
            Ok(Loaded {
                config,
                path: None,
                warnings,
            })
        }
        Err(cause) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        }),
    }
}

/// Parses TOML text. `serde_path_to_error` supplies the dotted key; toml's span gives the line.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let parse_err = |e: toml::de::Error, key: Option<String>| {
        let mut location = String::new();
        if let Some(span) = e.span() {
            let start = element_start(text, span.start, key.as_deref().unwrap_or_default());
            let (line, col) = line_col(text, start);
            location.push_str(&format!("line {line}, column {col}, "));
        }
        if let Some(k) = key.filter(|k| !k.is_empty() && k != ".") {
            location.push_str(&format!("key `{k}`: "));
        }
        ConfigError::Parse {
            path: path.to_path_buf(),
            location,
            message: e.message().trim().to_string(),
        }
    };
    let de = toml::Deserializer::parse(text).map_err(|e| parse_err(e, None))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        parse_err(e.into_inner(), Some(key))
    })
}

/// toml places an error inside one element of an array of tables (`[[logging.destinations]]`,
/// whose elements are read as a whole) at the array's first header. With the key ending in the
/// element's index, this finds that element's own header: the index-th line equal to the first.
fn element_start(text: &str, start: usize, key: &str) -> usize {
    let index = key
        .strip_suffix(']')
        .and_then(|k| k.rsplit_once('['))
        .and_then(|(_, i)| i.parse::<usize>().ok());
    let (Some(index), Some(rest)) = (index, text.get(start..)) else {
        return start;
    };
    if !rest.starts_with("[[") {
        return start;
    }
    let header = rest.lines().next().unwrap_or_default().trim_end();
    let mut seen = 0;
    let mut at = start;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == header {
            if seen == index {
                return at;
            }
            seen += 1;
        }
        at += line.len();
    }
    start
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl Config {
    /// The state directory: the config's, else systemd's `$STATE_DIRECTORY`, else the default.
    pub fn state_dir(&self, env: &dyn Env) -> PathBuf {
        if let Some(d) = &self.server.state_dir {
            return d.clone();
        }
        // StateDirectory= may list several, colon-separated; ours is the first.
        match env.var("STATE_DIRECTORY") {
            Some(s) if !s.is_empty() => PathBuf::from(s.split(':').next().unwrap_or(&s)),
            _ => PathBuf::from(DEFAULT_STATE_DIR),
        }
    }

    /// The admin socket: `[server] socket` (`""` = none), else `$RUNTIME_DIRECTORY/llamactl.sock`
    /// (systemd's `RuntimeDirectory=llamactl`), else `/run/llamactl/llamactl.sock`.
    pub fn socket_path(&self, env: &dyn Env) -> Option<PathBuf> {
        match &self.server.socket {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => Some(match env.var("RUNTIME_DIRECTORY") {
                Some(d) if !d.is_empty() => {
                    PathBuf::from(d.split(':').next().unwrap_or(&d)).join("llamactl.sock")
                }
                _ => PathBuf::from(DEFAULT_SOCKET),
            }),
        }
    }

    /// The URL a local client should use to reach the API (a wildcard listen address is reached
    /// over loopback).
    pub fn local_url(&self) -> String {
        let host = match self.server.host.as_str() {
            "0.0.0.0" | "" => "127.0.0.1".to_string(),
            "::" | "[::]" => "[::1]".to_string(),
            h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
            h => h.to_string(),
        };
        format!("http://{host}:{}", self.server.port)
    }
}

impl fmt::Display for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}", p.display()),
            None => write!(f, "built-in defaults ({DEFAULT_PATH} not found)"),
        }
    }
}

#[cfg(test)]
mod tests;
