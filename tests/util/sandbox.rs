//! The private systemd the unit-level tests run against.
//!
//! On a machine whose PID 1 is not systemd (this project's CI), the first test that needs it boots
//! `tests/harness/systemd-sandbox.sh` once for the whole test binary: a real systemd as PID 1 of new
//! namespaces, with its D-Bus system bus and journald, sharing the host's network so the tests
//! reach daemons on 127.0.0.1. It is powered off when the test binary exits. When the tests already
//! run under a systemd system manager (e.g. `systemd-sandbox.sh exec cargo test`), that manager is
//! used directly and test units go to the runtime unit directory `/run/systemd/system`.

use super::{repo, run, wait_for, LLAMACTLD};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

const NAME: &str = "llamactl-it";
const STATE: &str = "/tmp/llamactl-it";

pub struct Sandbox {
    /// `None`: we run under a systemd manager already and talk to it directly.
    pid1: Option<u32>,
    script: PathBuf,
}

static SANDBOX: OnceLock<Sandbox> = OnceLock::new();

/// Tests that disturb the whole manager (restarting D-Bus) take this for writing; every other
/// unit test holds it for reading.
pub static EXCLUSIVE: RwLock<()> = RwLock::new(());

extern "C" fn power_off() {
    if let Some(sb) = SANDBOX.get() {
        if sb.pid1.is_some() {
            let _ = sb.script_cmd("down").output();
        }
    }
}

/// Whether to use the running manager. `LLAMACTL_TEST_SANDBOX=1` boots the private one even
/// then (from a delegated scope on a pure cgroup v2 host: `systemd-run --scope -p Delegate=yes`).
fn under_systemd() -> bool {
    std::env::var_os("LLAMACTL_TEST_SANDBOX").is_none_or(|v| v != "1")
        && Path::new("/run/systemd/system").is_dir()
        && std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

pub fn sandbox() -> &'static Sandbox {
    SANDBOX.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the systemd integration tests need root: they boot a private systemd in namespaces"
        );
        let script = repo().join("tests/harness/systemd-sandbox.sh");
        if under_systemd() {
            return Sandbox { pid1: None, script };
        }
        // One sandbox of this name at a time on the machine: a second test run waits here.
        let lock = std::fs::File::create("/tmp/llamactl-it.lock").unwrap();
        // SAFETY: flock on a valid fd; the File is leaked so the lock lives as long as the process.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        std::mem::forget(lock);
        let sb = Sandbox { pid1: None, script };
        let out = run(&mut sb.script_cmd("up"));
        assert!(
            out.status.success(),
            "booting the systemd sandbox failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let pid1: u32 = std::fs::read_to_string(format!("{STATE}/pid1"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: registering a plain extern "C" fn.
        unsafe { libc::atexit(power_off) };
        Sandbox {
            pid1: Some(pid1),
            script: sb.script,
        }
    })
}

impl Sandbox {
    fn script_cmd(&self, verb: &str) -> Command {
        // The binaries' directory too, even inside the repository: it may be a mount of its
        // own (the VM test binds them there), which the harness's non-recursive bind of the
        // repository would not carry.
        let mut binds = vec![repo()];
        if let Some(bin_dir) = Path::new(LLAMACTLD).parent() {
            binds.push(bin_dir.to_path_buf());
        }
        let binds: Vec<String> = binds.iter().map(|b| b.display().to_string()).collect();
        let mut c = Command::new("bash");
        c.arg(&self.script)
            .arg(verb)
            .env("SANDBOX_NAME", NAME)
            .env("SANDBOX_STATE", STATE)
            .env("SANDBOX_NET", "host")
            .env("SANDBOX_BIND", binds.join(":"))
            .env("SANDBOX_EXEC_SCOPE", "0")
            .current_dir(repo());
        c
    }

    /// A command run inside the sandbox (or directly when we are under systemd already).
    pub fn cmd(&self, argv: &[&str]) -> Command {
        match self.pid1 {
            Some(_) => {
                let mut c = self.script_cmd("exec");
                c.args(argv);
                c
            }
            None => {
                let mut c = Command::new(argv[0]);
                c.args(&argv[1..]);
                c
            }
        }
    }

    pub fn run(&self, argv: &[&str]) -> Output {
        run(&mut self.cmd(argv))
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        assert!(
            out.status.success(),
            "{argv:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The sandbox's root file system as seen from here.
    pub fn root(&self) -> PathBuf {
        match self.pid1 {
            Some(p) => PathBuf::from(format!("/proc/{p}/root")),
            None => PathBuf::from("/"),
        }
    }

    pub fn is_private(&self) -> bool {
        self.pid1.is_some()
    }

    /// The group the shipped unit joins (`SupplementaryGroups=llamactl`) and gives the admin
    /// socket to, as the packages create it. In the private sandbox this lands in its
    /// throw-away overlay.
    pub fn ensure_socket_group(&self) {
        static DONE: OnceLock<()> = OnceLock::new();
        DONE.get_or_init(|| {
            if !self.run(&["getent", "group", "llamactl"]).status.success() {
                self.ok(&["groupadd", "--system", "llamactl"]);
            }
        });
    }
}

/// llamactld installed as a unit made from the shipped `units/llamactl.service` (renamed per test,
/// ExecStart pointed at the freshly built binary and a per-test config; `extra` adds lines to
/// the `[Service]` section of the drop-in).
pub struct DaemonUnit {
    pub sb: &'static Sandbox,
    pub unit: String,
    pub port: u16,
    pub config: PathBuf,
    /// The daemon's own state directory (inside the sandbox), one per test so that test
    /// daemons never share instance specs.
    pub state_dir: String,
    /// Its admin socket (inside the sandbox): `$RUNTIME_DIRECTORY/llamactl.sock`, with a
    /// runtime directory of its own.
    pub socket: String,
    /// Its audit file (inside the sandbox): `$LOGS_DIRECTORY/audit.log`, a logs directory of
    /// its own.
    pub audit_log: String,
}

impl DaemonUnit {
    pub fn install(test: &str, port: u16, config_toml: &str, extra: &str) -> DaemonUnit {
        let sb = sandbox();
        // Not `llamactl-*`: that pattern is the instances' (a daemon would adopt other tests').
        let unit = format!("llamactld-it-{test}.service");
        let dir = super::scratch(test);
        let config = dir.join("config.toml");
        let state_dir = format!("/var/lib/llamactl-it/{test}");
        let socket = format!("/run/llamactl-it/{test}/llamactl.sock");
        let audit_log = format!("/var/log/llamactl-it/{test}/audit.log");
        super::write(
            &config,
            &format!(
                "[server]\nport = {port}\nstate_dir = \"{state_dir}\"\n{config_toml}{}",
                super::test_key_config()
            ),
        );
        sb.ensure_socket_group();
        let units = sb.root().join("run/systemd/system");
        std::fs::create_dir_all(units.join(format!("{unit}.d"))).unwrap();
        let shipped = std::fs::read_to_string(repo().join("units/llamactl.service")).unwrap();
        super::write(&units.join(&unit), &shipped);
        super::write(
            &units.join(format!("{unit}.d/test.conf")),
            &format!(
                "[Service]\nExecStart=\nExecStart={LLAMACTLD} --config {}\nStateDirectory=llamactl-it/{test}\nRuntimeDirectory=\nRuntimeDirectory=llamactl-it/{test}\nLogsDirectory=\nLogsDirectory=llamactl-it/{test}\n{extra}\n",
                config.display()
            ),
        );
        sb.ok(&["systemctl", "daemon-reload"]);
        let _ = std::fs::remove_dir_all(sb.root().join(state_dir.trim_start_matches('/')));
        let _ = std::fs::remove_dir_all(sb.root().join(format!("var/log/llamactl-it/{test}")));
        DaemonUnit {
            sb,
            unit,
            port,
            config,
            state_dir,
            socket,
            audit_log,
        }
    }

    /// Rewrites the config file, keeping the port, state directory and test key.
    pub fn rewrite_config(&self, config_toml: &str) {
        super::write(
            &self.config,
            &format!(
                "[server]\nport = {}\nstate_dir = \"{}\"\n{config_toml}{}",
                self.port,
                self.state_dir,
                super::test_key_config()
            ),
        );
    }

    /// The audit file's records (JSON lines), read through the sandbox's root.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.sb.root().join(self.audit_log.trim_start_matches('/')))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The admin socket as seen from the test (through the sandbox's root).
    pub fn socket_path(&self) -> PathBuf {
        self.sb.root().join(self.socket.trim_start_matches('/'))
    }

    /// The state directory as seen from the test (through the sandbox's root).
    pub fn state_path(&self) -> PathBuf {
        self.sb.root().join(self.state_dir.trim_start_matches('/'))
    }

    pub fn systemctl(&self, verb: &str) -> Output {
        self.sb.run(&["systemctl", verb, &self.unit])
    }

    pub fn start(&self) {
        let out = self.systemctl("start");
        assert!(
            out.status.success(),
            "systemctl start {} failed: {}\n{}",
            self.unit,
            String::from_utf8_lossy(&out.stderr),
            self.journal_text()
        );
    }

    pub fn prop(&self, name: &str) -> String {
        self.sb
            .ok(&["systemctl", "show", "-p", name, "--value", &self.unit])
            .trim()
            .to_string()
    }

    /// The unit's journal entries (`journalctl -u`), as JSON objects.
    pub fn journal(&self) -> Vec<serde_json::Value> {
        self.sb
            .ok(&["journalctl", "-u", &self.unit, "-o", "json", "--no-pager"])
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn journal_text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .sb
                .run(&["journalctl", "-u", &self.unit, "--no-pager"])
                .stdout,
        )
        .into_owned()
    }

    /// Waits for a journal entry of this unit whose MESSAGE contains `needle`, and returns it.
    pub fn wait_log(&self, needle: &str) -> serde_json::Value {
        wait_for(
            &format!("{needle:?} in the journal of {}", self.unit),
            Duration::from_secs(15),
            || {
                self.journal()
                    .into_iter()
                    .find(|e| e["MESSAGE"].as_str().is_some_and(|m| m.contains(needle)))
            },
        )
    }

    pub fn wait_active(&self) {
        wait_for(
            &format!("{} to be active", self.unit),
            Duration::from_secs(30),
            || (self.prop("ActiveState") == "active").then_some(()),
        )
    }
}

/// Instance port ranges of 100 ports, one per test daemon of this run (all tests are one binary,
/// and one run at a time holds the sandbox), so no two daemons hand out the same port.
fn instance_ports() -> (u16, u16) {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 300;
    let lo = 20000 + n * 100;
    (lo, lo + 99)
}

/// A started test daemon whose instances get a port range of their own, every backend allowed
/// (the fake backend is a command instance) and quick health probes. `more` continues the
/// `[instances]` section (and may open others); `extra_unit` goes into the unit's drop-in.
pub fn daemon(test: &str, more: &str, extra_unit: &str) -> DaemonUnit {
    daemon_with(test, "", more, extra_unit)
}

/// [`daemon`] with `server` keys added to its `[server]` section.
pub fn daemon_with(test: &str, server: &str, more: &str, extra_unit: &str) -> DaemonUnit {
    let (lo, hi) = instance_ports();
    let d = DaemonUnit::install(
        test,
        super::free_port(),
        &format!("{server}[instances]\nallowed_backends = [\"llama_cpp\", \"vllm\", \"command\"]\nport_range = [{lo}, {hi}]\nhealth_check_interval = \"500ms\"\n{more}"),
        extra_unit,
    );
    d.start();
    d
}

impl Drop for DaemonUnit {
    fn drop(&mut self) {
        let _ = self.systemctl("stop");
        let _ = self.sb.run(&["systemctl", "reset-failed", &self.unit]);
    }
}
