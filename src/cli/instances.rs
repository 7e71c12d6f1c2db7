//! `llamactl list | create | show | start | stop | restart | delete | logs | health NAME`.

use super::client::{Client, Reply};
use super::{Command, CreateArgs, Output, WaitArgs};
use anyhow::{bail, Context as _};
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

fn path(name: &str, rest: &str) -> String {
    format!("/api/v1/instances/{name}{rest}")
}

/// An error reply becomes an error with the server's message; success passes through.
fn ok(r: Reply, what: &str) -> anyhow::Result<Value> {
    if (200..300).contains(&r.status) {
        Ok(r.body)
    } else {
        bail!("{what}: {} (HTTP {})", r.message(), r.status)
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn table(list: &[Value]) -> String {
    let mut out = format!(
        "{:<24} {:<11} {:<6} {:>6} {:>8} {:>8}  {}\n",
        "NAME", "STATE", "STATUS", "PORT", "PID", "RESTARTS", "BACKEND"
    );
    for i in list {
        let _ = writeln!(
            out,
            "{:<24} {:<11} {:<6} {:>6} {:>8} {:>8}  {}",
            s(&i["name"]),
            s(&i["state"]),
            s(&i["status"]),
            s(&i["port"]),
            s(&i["main_pid"]),
            s(&i["restarts"]),
            s(&i["options"]["backend_type"]),
        );
    }
    out
}

fn detail(i: &Value) -> String {
    let mut out = String::new();
    for (k, v) in [
        ("name", &i["name"]),
        ("state", &i["state"]),
        ("status", &i["status"]),
        ("desired", &i["desired_state"]),
        ("unit", &i["unit"]),
        ("port", &i["port"]),
        ("pid", &i["main_pid"]),
        ("restarts", &i["restarts"]),
        ("result", &i["result"]),
        ("cgroup", &i["control_group"]),
        ("health", &i["health"]["error"]),
        ("last error", &i["last_error"]),
    ] {
        let _ = writeln!(out, "{k:<12}{}", s(v));
    }
    let _ = writeln!(
        out,
        "{:<12}{}",
        "options",
        serde_json::to_string(&i["options"]).unwrap_or_default()
    );
    out
}

fn print(output: Output, v: &Value, human: impl FnOnce(&Value) -> String) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Table => print!("{}", human(v)),
    }
}

fn kv(items: &[String], what: &str) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|i| {
            i.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("{what} {i:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// The create body: the spec file (if any), then the flags on top.
pub fn create_body(a: &CreateArgs) -> anyhow::Result<Value> {
    let mut body = match &a.file {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let is_json =
                f.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
            if is_json {
                serde_json::from_str::<Value>(&text)
                    .with_context(|| format!("parsing {}", f.display()))?
            } else {
                let t: toml::Value =
                    toml::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
                serde_json::to_value(t)?
            }
        }
        None => json!({}),
    };
    let obj = body
        .as_object_mut()
        .context("the spec must be a table/object")?;
    if let Some(b) = &a.backend {
        obj.insert("backend_type".into(), json!(b));
    }
    obj.entry("backend_type")
        .or_insert(json!(if a.command.is_empty() {
            "llama_cpp"
        } else {
            "command"
        }));
    let bo = obj
        .entry("backend_options")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .context("backend_options must be a table/object")?;
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            bo.insert(k.into(), v);
        }
    };
    set("model", a.model.clone().map(Value::from));
    set("port", a.port.map(Value::from));
    set("ctx_size", a.ctx_size.map(Value::from));
    set("gpu_layers", a.gpu_layers.map(Value::from));
    set("threads", a.threads.map(Value::from));
    set("alias", a.alias.clone().map(Value::from));
    if !a.args.is_empty() {
        set("extra_args", Some(json!(a.args)));
    }
    if !a.command.is_empty() {
        set("command", Some(json!(a.command)));
    }
    for (k, v) in kv(&a.opts, "--opt")? {
        let v = serde_json::from_str(&v).unwrap_or(Value::String(v));
        bo.insert(k, v);
    }
    let env = obj
        .entry("environment")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .context("environment must be a table/object")?;
    for (k, v) in kv(&a.env, "--env")? {
        env.insert(k, Value::from(v));
    }
    if a.no_auto_restart {
        obj.insert("auto_restart".into(), json!(false));
    }
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            obj.insert(k.into(), v);
        }
    };
    put("max_restarts", a.max_restarts.map(Value::from));
    put("restart_delay", a.restart_delay.map(Value::from));
    put(
        "memory_max",
        a.memory_max
            .as_ref()
            .map(serde_json::to_value)
            .transpose()?,
    );
    put("cpu_quota", a.cpu_quota.map(Value::from));
    if !a.gpus.is_empty() {
        put("gpus", Some(json!(a.gpus)));
    }
    // The daemon's own parser: a bad value is reported here, naming the field, before anything
    // is sent (the daemon checks again, with its config's policy).
    crate::instance::spec::parse_options(&serde_json::to_vec(&body)?)
        .map_err(|e| anyhow::anyhow!("invalid instance options: {e}"))?;
    Ok(body)
}

/// Polls the instance until ready, failed, or the deadline; shows the state as it goes (a
/// rewritten line on a terminal, one line per change otherwise).
async fn wait_ready(c: &Client, name: &str, w: &WaitArgs) -> anyhow::Result<Value> {
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    let spinner = ['|', '/', '-', '\\'];
    let mut i = 0;
    loop {
        let v = ok(c.get(&path(name, "")).await?, "reading the instance")?;
        let state = s(&v["state"]);
        if tty {
            eprint!(
                "\r{} waiting for {name}: {state} ({:.0}s)   ",
                spinner[i % 4],
                start.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
            i += 1;
        } else if state != last {
            eprintln!("{name}: {state}");
        }
        last = state.clone();
        match state.as_str() {
            "ready" => {
                if tty {
                    eprintln!(
                        "\r{name} is ready ({:.1}s)                    ",
                        start.elapsed().as_secs_f64()
                    );
                }
                return Ok(v);
            }
            "failed" | "stopped" => {
                if tty {
                    eprintln!();
                }
                bail!(
                    "{name} is {state} (result {}, last error: {}); see `llamactl logs {name}`",
                    s(&v["result"]),
                    s(&v["last_error"])
                );
            }
            _ => {}
        }
        if start.elapsed() > w.timeout {
            if tty {
                eprintln!();
            }
            bail!("{name} not ready after {:?} (state {state})", w.timeout);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn health(c: &Client, output: Output, name: &str) -> anyhow::Result<u8> {
    let r = c.get(&format!("/api/instances/{name}/health")).await?;
    if r.status == 404 || r.status == 400 {
        bail!("{} (HTTP {})", r.message(), r.status);
    }
    print(output, &r.body, |b| {
        format!("{name}: {} ({})\n", s(&b["state"]), s(&b["status"]))
    });
    Ok(if r.status == 200 { 0 } else { 1 })
}

pub async fn run(c: &Client, output: Output, cmd: &Command) -> anyhow::Result<u8> {
    match cmd {
        Command::List => {
            let v = ok(c.get("/api/v1/instances").await?, "listing instances")?;
            let list = v.as_array().cloned().unwrap_or_default();
            print(output, &v, |_| table(&list));
        }
        Command::Show { name } => {
            let v = ok(c.get(&path(name, "")).await?, name)?;
            print(output, &v, detail);
        }
        Command::Create(a) => {
            let body = create_body(a)?;
            let mut v = ok(
                c.request("POST", &path(&a.name, ""), Some(&body)).await?,
                "create",
            )?;
            if a.start || a.wait.wait {
                v = ok(
                    c.request("POST", &path(&a.name, "/start"), None).await?,
                    "start",
                )?;
                if a.wait.wait {
                    v = wait_ready(c, &a.name, &a.wait).await?;
                }
            }
            print(output, &v, detail);
        }
        Command::Start { name, wait } | Command::Restart { name, wait } => {
            let verb = if matches!(cmd, Command::Start { .. }) {
                "/start"
            } else {
                "/restart"
            };
            let mut v = ok(
                c.request("POST", &path(name, verb), None).await?,
                &verb[1..],
            )?;
            if wait.wait {
                v = wait_ready(c, name, wait).await?;
            }
            print(output, &v, |v| format!("{name}: {}\n", s(&v["state"])));
        }
        Command::Stop { name } => {
            let v = ok(c.request("POST", &path(name, "/stop"), None).await?, "stop")?;
            print(output, &v, |v| format!("{name}: {}\n", s(&v["state"])));
        }
        Command::Delete { name } => {
            ok(c.request("DELETE", &path(name, ""), None).await?, "delete")?;
            print(output, &json!({"deleted": name}), |_| {
                format!("{name}: deleted\n")
            });
        }
        Command::Logs {
            name,
            lines,
            follow,
        } => {
            let fmt = if output == Output::Json {
                "&format=json"
            } else {
                ""
            };
            if *follow {
                let p = path(name, &format!("/logs?lines={lines}&follow=true{fmt}"));
                let status = c
                    .stream(&p, |chunk| {
                        let mut out = std::io::stdout();
                        let _ = out.write_all(chunk);
                        let _ = out.flush();
                    })
                    .await?;
                if status != 200 {
                    bail!("logs: HTTP {status}");
                }
            } else {
                let r = c
                    .get(&path(name, &format!("/logs?lines={lines}&format=json")))
                    .await?;
                let v = ok(r, "logs")?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                    Output::Table => {
                        for e in v.as_array().into_iter().flatten() {
                            println!(
                                "{} {} {}: {}",
                                s(&e["time"]),
                                s(&e["level"]),
                                s(&e["identifier"]),
                                s(&e["message"])
                            );
                        }
                    }
                }
            }
        }
        Command::Health { .. }
        | Command::Version { .. }
        | Command::Keys(_)
        | Command::Audit(_)
        | Command::Login
        | Command::Logout => {
            bail!("not an instance command")
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{ClientArgs, Command};
    use clap::Parser;

    fn body(args: &[&str]) -> anyhow::Result<Value> {
        let cli = ClientArgs::try_parse_from(["llamactl", "create", "x"].iter().chain(args))?;
        let Some(Command::Create(a)) = cli.command else {
            panic!("not a create")
        };
        create_body(&a)
    }

    #[test]
    fn flags_become_the_typed_spec() {
        let v = body(&[
            "--model",
            "/m.gguf",
            "--memory-max",
            "8G",
            "--cpu-quota",
            "150",
        ])
        .unwrap();
        assert_eq!(v["memory_max"], "8G");
        assert_eq!(v["backend_options"]["model"], "/m.gguf");
    }

    /// Bad values are refused before anything is sent, naming the field.
    #[test]
    fn bad_values_are_refused_locally() {
        let e = body(&["--model", "/m", "--memory-max", "lots"]).unwrap_err();
        assert!(e.to_string().contains("--memory-max"), "{e}");
        for (args, field) in [
            (&["--restart-delay", "999999"][..], "restart_delay"),
            (&["--cpu-quota=0"][..], "cpu_quota"),
            (&["--opt", "x={\"a\":1}"][..], "backend_options.x"),
            (&["--port", "70000"][..], "--port"),
        ] {
            let mut a = vec!["--model", "/m"];
            a.extend_from_slice(args);
            let e = format!("{:#}", body(&a).unwrap_err());
            assert!(e.contains(field), "{args:?}: {e}");
        }
    }
}
