//! A real Prometheus (the Debian package `prometheus`, installed by `tools/test`) on a scratch
//! config made from the shipped `packaging/prometheus/prometheus.yml`, pointed at a test daemon
//! and scraping every second; and its HTTP query API.

use super::{free_port, http, repo, scratch, wait_for, write, Reply};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running Prometheus; killed when dropped.
pub struct Prometheus {
    child: Child,
    pub port: u16,
}

impl Prometheus {
    /// Starts Prometheus with the shipped example config (and its alert rules), its targets
    /// moved to `127.0.0.1:daemon_port`, scrape, evaluation and service-discovery refresh
    /// intervals cut to 1 s; returns once it answers `/-/ready`. `name` names its scratch
    /// directory (`target/it/<name>`).
    pub fn start(name: &str, daemon_port: u16) -> Prometheus {
        let dir = scratch(name);
        let example = std::fs::read_to_string(repo().join("packaging/prometheus/prometheus.yml"))
            .expect("packaging/prometheus/prometheus.yml");
        let config = example
            .replace("localhost:8080", &format!("127.0.0.1:{daemon_port}"))
            .replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
            .replace("refresh_interval: 30s", "refresh_interval: 1s")
            .replace(
                "  - alerts.yml",
                &format!(
                    "  - {}",
                    repo().join("packaging/prometheus/alerts.yml").display()
                ),
            );
        assert!(
            config.contains(&format!("127.0.0.1:{daemon_port}")) && !config.contains("15s"),
            "packaging/prometheus/prometheus.yml changed shape; update tests/util/prometheus.rs:\n{config}"
        );
        write(&dir.join("prometheus.yml"), &config);
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect(
                "prometheus not found: install the Debian package `prometheus` (tools/test does)",
            );
        let mut p = Prometheus { child, port };
        let log = dir.join("prometheus.log");
        wait_for("Prometheus to be ready", Duration::from_secs(60), || {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!(
                    "prometheus exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            http("GET", p.port, "/-/ready", &[], b"")
                .ok()
                .filter(|r| r.status == 200)
        });
        p
    }

    /// `GET` on its HTTP API (`path` with its query string already encoded).
    pub fn get(&self, path: &str) -> Reply {
        http("GET", self.port, path, &[], b"")
            .unwrap_or_else(|e| panic!("GET {path} on Prometheus: {e}"))
    }

    /// An instant query (`/api/v1/query`): the whole JSON answer, `status` "success" or
    /// "error" (with `error`), as Prometheus gave it.
    pub fn query(&self, promql: &str) -> Value {
        let r = self.get(&format!("/api/v1/query?query={}", encode(promql)));
        serde_json::from_str(&r.body).unwrap_or_else(|_| {
            serde_json::json!({"status": "error", "error": format!("HTTP {}: {}", r.status, r.body)})
        })
    }

    /// The result vector of an instant query; empty on an error.
    pub fn result(&self, promql: &str) -> Vec<Value> {
        self.query(promql)["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for a query string).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
