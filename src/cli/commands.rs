//! The client's subcommands.

use super::client::{Client, Reply, Target};
use super::{ClientArgs, Command, Output};
use crate::config::{self, ProcessEnv};
use anyhow::Context as _;
use serde_json::{json, Value};
use std::fmt::Write as _;

/// Where to reach the daemon: `--socket`; else `--url`/`$LLAMACTL_URL` (clap merged them);
/// else the admin socket when it exists and we may write to it (root, or its group); else the
/// URL of `llamactl login`; else TCP to the config's `[server]` address. A config that cannot be read is not an error here: the
/// client may run on a host without one.
fn target(args: &ClientArgs) -> Target {
    if let Some(p) = &args.socket {
        return Target::Unix(p.clone());
    }
    if let Some(u) = &args.url {
        return Target::Tcp(u.clone());
    }
    let (path, explicit) = config::resolve_path(args.config.as_deref(), &ProcessEnv);
    let cfg = config::load(&path, explicit)
        .map(|l| l.config)
        .unwrap_or_default();
    // Not the daemon's $RUNTIME_DIRECTORY: that is the unit's, not ours.
    if let Some(sock) = cfg.socket_path(&config::MapEnv::default()) {
        if writable(&sock) {
            return Target::Unix(sock);
        }
    }
    // Where `llamactl login` went, else the config's address.
    match super::session::load() {
        Some(c) => Target::Tcp(c.url),
        None => Target::Tcp(cfg.local_url()),
    }
}

/// Whether we may connect to the socket at `p` (connecting needs write permission).
fn writable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(m) = std::fs::metadata(p) else {
        return false;
    };
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: access(2) reads the NUL-terminated path we own for the duration of the call.
    m.file_type().is_socket() && unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0
}

/// The API key for TCP to `target`: `--api-key-file`, else `$LLAMACTL_API_KEY`, else the key
/// `llamactl login` stored for that URL.
fn api_key(args: &ClientArgs, target: &Target) -> anyhow::Result<Option<config::Secret>> {
    if let Some(k) = given_key(args)? {
        return Ok(Some(k));
    }
    Ok(match (target, super::session::load()) {
        (Target::Tcp(url), Some(c)) if same_url(url, &c.url) => Some(c.key),
        _ => None,
    })
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// A key given for this command: `--api-key-file`, else `$LLAMACTL_API_KEY`.
fn given_key(args: &ClientArgs) -> anyhow::Result<Option<config::Secret>> {
    if let Some(f) = &args.api_key_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading the API key file {}", f.display()))?;
        let key = text.trim();
        if key.is_empty() {
            anyhow::bail!("the API key file {} is empty", f.display());
        }
        return Ok(Some(config::Secret::new(key)));
    }
    Ok(std::env::var("LLAMACTL_API_KEY")
        .ok()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .map(config::Secret::new))
}

/// Runs the command; returns the process exit code.
pub async fn run(args: ClientArgs) -> anyhow::Result<u8> {
    const DEFAULT: Command = Command::Health { name: None };
    let command = args.command.as_ref().unwrap_or(&DEFAULT);
    let client = || {
        let t = target(&args);
        let key = api_key(&args, &t)?;
        Client::new(t, args.http_timeout, key)
    };
    match command {
        Command::Version { client: true } => {
            print_version(args.output, None);
            Ok(0)
        }
        Command::Version { client: false } => {
            let c = client()?;
            match c.get("/api/system/health").await {
                Ok(r) => {
                    print_version(args.output, Some(&r.body));
                    Ok(0)
                }
                Err(e) => {
                    print_version(args.output, None);
                    Err(e)
                }
            }
        }
        Command::Keys(k @ super::KeysCommand::Generate) => {
            // Offline: no daemon needed.
            let c = Client::new(
                Target::Tcp("http://127.0.0.1".into()),
                args.http_timeout,
                None,
            )?;
            super::keys::run(&c, args.output, k).await
        }
        Command::Keys(k) => super::keys::run(&client()?, args.output, k).await,
        Command::Audit(a) => super::audit::run(&client()?, args.output, a).await,
        Command::Login => {
            let key = match given_key(&args)? {
                Some(k) => k,
                None => super::session::read_key()?,
            };
            // Login is for TCP: an explicit URL, else the config's (never the socket).
            let t = match &args.url {
                Some(u) => Target::Tcp(u.clone()),
                None => match target(&args) {
                    Target::Unix(_) => Target::Tcp(
                        config::load(
                            &config::resolve_path(args.config.as_deref(), &ProcessEnv).0,
                            false,
                        )
                        .map(|l| l.config.local_url())
                        .unwrap_or_else(|_| config::Config::default().local_url()),
                    ),
                    t => t,
                },
            };
            super::session::login(t, key, args.http_timeout, args.output).await
        }
        Command::Logout => super::session::logout(args.http_timeout, args.output).await,
        Command::Health { name: Some(name) } => {
            super::instances::health(&client()?, args.output, name).await
        }
        other @ (Command::List
        | Command::Create(_)
        | Command::Show { .. }
        | Command::Start { .. }
        | Command::Stop { .. }
        | Command::Restart { .. }
        | Command::Delete { .. }
        | Command::Logs { .. }) => super::instances::run(&client()?, args.output, other).await,
        Command::Health { name: None } => {
            let c = client()?;
            let ready = c.get("/api/health").await?;
            let system = c.get("/api/system/health").await?;
            let ok = ready.status == 200 && system.status == 200;
            match args.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "url": c.url(""),
                        "healthy": ok,
                        "readiness": { "http_status": ready.status, "body": ready.body },
                        "system": { "http_status": system.status, "body": system.body },
                    }))?
                ),
                Output::Table => print!("{}", health_table(&c.url(""), &ready, &system)),
            }
            Ok(if ok { 0 } else { 1 })
        }
    }
}

fn print_version(output: Output, server: Option<&Value>) {
    let client = env!("CARGO_PKG_VERSION");
    let server_version = server.and_then(|b| b["version"].as_str());
    match output {
        Output::Json => println!("{}", json!({ "client": client, "server": server_version })),
        Output::Table => {
            println!("client  {client}");
            println!("server  {}", server_version.unwrap_or("unreachable"));
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn gib(v: &Value) -> String {
    v.as_f64()
        .map(|b| format!("{:.1} GiB", b / (1u64 << 30) as f64))
        .unwrap_or_else(|| "-".into())
}

/// The human view: a summary, then every check with its status.
pub fn health_table(url: &str, ready: &Reply, system: &Reply) -> String {
    let b = &system.body;
    let sd = &b["systemd"];
    let mut out = String::new();
    let _ = writeln!(out, "{:<12}{} ({})", "daemon", url, s(&b["version"]));
    let _ = writeln!(
        out,
        "{:<12}{} (HTTP {})",
        "readiness",
        s(&ready.body["status"]),
        ready.status
    );
    let _ = writeln!(
        out,
        "{:<12}{} (HTTP {})",
        "system",
        s(&b["status"]),
        system.status
    );
    let _ = writeln!(
        out,
        "{:<12}{:.0}s",
        "uptime",
        b["uptime_seconds"].as_f64().unwrap_or(0.0)
    );
    let systemd = if sd["connected"] == Value::Bool(true) {
        format!(
            "connected, {} ({})",
            s(&sd["version"]),
            s(&sd["system_state"])
        )
    } else {
        format!("DISCONNECTED: {}", s(&sd["last_error"]))
    };
    let _ = writeln!(out, "{:<12}{systemd}", "systemd");
    let _ = writeln!(out, "{:<12}{}", "cgroup", s(&b["cgroup"]["layout"]));
    let _ = writeln!(
        out,
        "{:<12}{} available of {}",
        "memory",
        gib(&b["memory"]["available_bytes"]),
        gib(&b["memory"]["total_bytes"])
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<16}{:<8}MESSAGE", "CHECK", "STATUS");
    let mut seen = std::collections::HashSet::new();
    for c in ready.body["checks"]
        .as_array()
        .into_iter()
        .chain(b["checks"].as_array())
        .flatten()
    {
        let name = s(&c["name"]);
        if seen.insert(name.clone()) {
            let _ = writeln!(
                out,
                "{:<16}{:<8}{}",
                name,
                s(&c["status"]),
                s(&c["message"])
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_checks_once_and_flags_disconnection() {
        let ready = Reply {
            status: 503,
            body: json!({"status": "unavailable", "checks": [
                {"name": "systemd", "status": "fail", "message": "no bus"}]}),
        };
        let system = Reply {
            status: 503,
            body: json!({"status": "unhealthy", "version": "0.1.0", "uptime_seconds": 3.2,
                "systemd": {"connected": false, "last_error": "no bus"},
                "cgroup": {"layout": "v2"},
                "memory": {"total_bytes": 2147483648u64, "available_bytes": 1073741824u64},
                "checks": [{"name": "systemd", "status": "fail", "message": "no bus"},
                           {"name": "cgroup", "status": "pass", "message": "cgroup layout v2"}]}),
        };
        let t = health_table("http://127.0.0.1:8080", &ready, &system);
        assert!(t.contains("DISCONNECTED: no bus"), "{t}");
        assert!(t.contains("1.0 GiB available of 2.0 GiB"), "{t}");
        assert_eq!(t.matches("systemd         fail").count(), 1, "{t}");
        assert!(t.contains("cgroup          pass"), "{t}");
    }
}
