//! `llamactl login` and `logout`, and the credentials they keep: the daemon's URL and an API
//! key in `$XDG_CONFIG_HOME/llamactl/credentials` (else `~/.config/llamactl/credentials`),
//! 0600 in a 0700 directory. Later commands to that URL use the key when no other is given.

use super::client::{Client, Target};
use super::Output;
use crate::config::Secret;
use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    url: String,
    key: String,
}

/// A stored login.
pub struct Credentials {
    pub url: String,
    pub key: Secret,
}

/// Where the credentials live.
pub fn path() -> Option<PathBuf> {
    let base = match std::env::var("XDG_CONFIG_HOME") {
        Ok(d) if d.starts_with('/') => PathBuf::from(d),
        _ => PathBuf::from(std::env::var("HOME").ok()?).join(".config"),
    };
    Some(base.join("llamactl/credentials"))
}

/// The stored login, if any (an unreadable file counts as none).
pub fn load() -> Option<Credentials> {
    let text = std::fs::read_to_string(path()?).ok()?;
    let s: Stored = toml::from_str(&text).ok()?;
    Some(Credentials {
        url: s.url,
        key: Secret::new(s.key),
    })
}

fn save(url: &str, key: &Secret) -> anyhow::Result<PathBuf> {
    let p = path().context("no home directory ($HOME) to keep the credentials in")?;
    let dir = p.parent().context("no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))?;
    let body = toml::to_string(&Stored {
        url: url.to_string(),
        key: key.expose().to_string(),
    })?;
    crate::fsutil::write_atomic(&p, body.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// Reads a key from stdin: one line, not echoed on a terminal.
pub fn read_key() -> anyhow::Result<Secret> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprint!("API key: ");
        let _ = std::io::stderr().flush();
    }
    let echo = tty.then(|| set_echo(false)).flatten();
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(old) = echo {
        restore(old);
        eprintln!();
    }
    read.context("reading the key from stdin")?;
    let key = line.trim();
    if key.is_empty() {
        bail!("no key given (on stdin, or with --api-key-file / $LLAMACTL_API_KEY)");
    }
    Ok(Secret::new(key))
}

/// Turns terminal echo off; returns the settings to restore.
fn set_echo(on: bool) -> Option<libc::termios> {
    // SAFETY: tcgetattr/tcsetattr on stdin with a termios we own.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) != 0 {
            return None;
        }
        let old = t;
        if on {
            t.c_lflag |= libc::ECHO;
        } else {
            t.c_lflag &= !libc::ECHO;
        }
        (libc::tcsetattr(0, libc::TCSANOW, &t) == 0).then_some(old)
    }
}

fn restore(t: libc::termios) {
    // SAFETY: as above.
    unsafe {
        libc::tcsetattr(0, libc::TCSANOW, &t);
    }
}

/// `llamactl login`: the key is checked by llamactld (`POST /api/v1/auth/login`), then kept.
pub async fn login(
    target: Target,
    key: Secret,
    timeout: std::time::Duration,
    output: Output,
) -> anyhow::Result<u8> {
    let Target::Tcp(url) = &target else {
        bail!("the admin socket needs no login: give --url (or $LLAMACTL_URL) of the daemon to log in to");
    };
    let url = url.clone();
    let c = Client::new(target, timeout, Some(key.clone()))?;
    let r = c.request("POST", "/api/v1/auth/login", None).await?;
    if r.status != 200 {
        bail!("logging in to {url}: {} (HTTP {})", r.message(), r.status);
    }
    let p = save(&url, &key)?;
    match output {
        Output::Json => println!("{}", r.body),
        Output::Table => {
            let b = &r.body;
            let expires = b["expires_at"]
                .as_i64()
                .map_or_else(|| "never".into(), crate::config::time::format_rfc3339);
            println!(
                "logged in to {url} as {} (scope {}, expires {expires}); key kept in {}",
                b["name"].as_str().unwrap_or("?"),
                b["scope"].as_str().unwrap_or("?"),
                p.display()
            );
        }
    }
    Ok(0)
}

/// `llamactl logout`: tells llamactld (recorded), then forgets the key.
pub async fn logout(timeout: std::time::Duration, output: Output) -> anyhow::Result<u8> {
    let Some(creds) = load() else {
        println!("not logged in");
        return Ok(0);
    };
    let c = Client::new(Target::Tcp(creds.url.clone()), timeout, Some(creds.key))?;
    match c.request("POST", "/api/v1/auth/logout", None).await {
        Ok(r) if r.status == 200 => {}
        Ok(r) => eprintln!(
            "llamactl: {} answered {}: {}",
            creds.url,
            r.status,
            r.message()
        ),
        Err(e) => eprintln!("llamactl: {e:#}"),
    }
    if let Some(p) = path() {
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
    }
    match output {
        Output::Json => println!("{}", serde_json::json!({"logged_out": creds.url})),
        Output::Table => println!("logged out of {}", creds.url),
    }
    Ok(0)
}
