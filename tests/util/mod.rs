//! Shared helpers for the integration tests: a tiny HTTP client, the daemon binaries, and (in
//! `sandbox`) the private systemd every unit-level test runs against.

#![allow(dead_code)]

/// Holds the shared-manager lock for the rest of the test: `unit_test!();` at the top of every
/// test that uses the sandbox.
macro_rules! unit_test {
    () => {
        let _guard = crate::util::sandbox::EXCLUSIVE
            .read()
            .unwrap_or_else(|e| e.into_inner());
    };
}

pub mod prometheus;
pub mod sandbox;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const LLAMACTLD: &str = env!("CARGO_BIN_EXE_llamactld");
pub const LLAMACTL: &str = env!("CARGO_BIN_EXE_llamactl");

/// The management key every test daemon is provisioned with (`[[auth.keys]]` by digest), and
/// that `http`/`get`/`api` send unless the test sends its own credentials (`http_raw` sends
/// none).
pub const TEST_KEY: &str = "llk_integration_tests_management_key_not_secret_0123456789abcdef";

/// `sha256:<hex>` of a key, as `[[auth.keys]] hash` takes it (computed here independently of
/// the daemon's code, so a test compares against the documented digest, not against itself).
pub fn key_hash(key: &str) -> String {
    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The `[[auth.keys]]` entry for `TEST_KEY`, appended to every test daemon's config.
pub fn test_key_config() -> String {
    format!(
        "\n[[auth.keys]]\nname = \"it-admin\"\nscope = \"management\"\nhash = \"{}\"\n",
        key_hash(TEST_KEY)
    )
}

/// The client binary, with the test key for TCP.
pub fn llamactl() -> Command {
    let mut c = Command::new(LLAMACTL);
    c.env("LLAMACTL_API_KEY", TEST_KEY);
    c
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory under `target/it/`, inside the repository, so the sandbox (which binds the
/// repository live) sees the same files the test writes.
pub fn scratch(name: &str) -> PathBuf {
    let d = repo().join("target/it").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request with `Connection: close`, as the test's management key (unless
/// `headers` carry credentials of their own); enough for a JSON API and /metrics.
pub fn http(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let own = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("x-api-key")
    });
    let bearer = format!("Bearer {TEST_KEY}");
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if !own {
        all.push(("Authorization", &bearer));
    }
    http_raw(method, port, path, &all, body)
}

/// One HTTP/1.1 request exactly as given: no credentials are added.
pub fn http_raw(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    exchange(s, method, &format!("127.0.0.1:{port}"), path, headers, body)
}

/// One request on the admin socket at `sock` (no credentials: the daemon knows us as root).
pub fn http_unix(
    sock: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let s = std::os::unix::net::UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    exchange(s, method, "localhost", path, headers, body)
}

fn exchange<S: Read + Write>(
    mut s: S,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let has_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !has_host {
        req.push_str(&format!("Host: {host}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let explicit_len = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if !explicit_len && (!body.is_empty() || method == "POST") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    // A server may answer (413) and close before the body is sent: still read its answer.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn get(port: u16, path: &str) -> Reply {
    http("GET", port, path, &[], b"").unwrap_or_else(|e| panic!("GET {path} on :{port}: {e}"))
}

/// Polls `f` until it returns `Some`, or panics naming `what` after `limit`. This waits for an
/// event; it does not assert on how fast the event came.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// `promtool check metrics` must accept the exposition with no lint output at all.
pub fn promtool_check(metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: install the Debian package `prometheus` (see .ci/run)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "promtool check metrics: {:?}\n{text}\n--- exposition ---\n{metrics}",
        out.status
    );
}

/// A free port on loopback, picked by the kernel (tests run in parallel).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The fake OpenAI-compatible backend (`examples/fake_backend.rs`), built if this test run did
/// not build examples.
pub fn fake_backend() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let p = Path::new(LLAMACTLD)
                .parent()
                .unwrap()
                .join("examples/fake_backend");
            if !p.exists() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let out = run(Command::new(cargo)
                    .args(["build", "--example", "fake_backend"])
                    .current_dir(repo()));
                assert!(out.status.success(), "building fake_backend: {out:?}");
            }
            p
        })
        .clone()
}

/// The slowest of `n` GETs of `path` one after another, each answered 200: what a background
/// sender (logs, spans) that blocked the request path would show.
pub fn slowest_get(port: u16, path: &str, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        assert_eq!(get(port, path).status, 200, "GET {path}");
        slowest = slowest.max(t.elapsed());
    }
    slowest
}

/// One HTTP/1.1 request read by a test's stand-in server (Elasticsearch, Pyroscope): its head
/// (request line and headers, as text) and its body, `Content-Length` bytes of it. `None` when
/// the connection ends or times out before the head is complete.
pub fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some((head, buf.split_off(head_end)))
}

/// A real llama-server and model (`tools/llama-backend`: built once per machine and cached; the
/// first run takes minutes).
pub fn llama_backend() -> (String, String) {
    static PATHS: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    PATHS
        .get_or_init(|| {
            let out = run(Command::new(repo().join("tools/llama-backend")).current_dir(repo()));
            assert!(
                out.status.success(),
                "tools/llama-backend failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let var = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}=")))
                    .unwrap_or_else(|| panic!("{k} missing in {text}"))
                    .trim_matches('\'')
                    .to_string()
            };
            (var("LLAMA_SERVER"), var("LLAMA_MODEL"))
        })
        .clone()
}

/// A JSON request; returns the reply.
pub fn api(method: &str, port: u16, path: &str, body: Option<serde_json::Value>) -> Reply {
    let b = body.map(|b| b.to_string()).unwrap_or_default();
    let headers: &[(&str, &str)] = if b.is_empty() {
        &[]
    } else {
        &[("Content-Type", "application/json")]
    };
    http(method, port, path, headers, b.as_bytes())
        .unwrap_or_else(|e| panic!("{method} {path} on :{port}: {e}"))
}

/// The value of one series (name with its exact label set) in a Prometheus text scrape.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Instance names are unit names (`llamactl-NAME.service`), global to the shared sandbox where
/// tests run in parallel: two tests using one name fight over one unit. Every name a test puts
/// in an instance URL must be its own.
#[test]
fn instance_names_are_not_shared_between_tests() {
    let mut owner: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut files = Vec::new();
    let mut dirs = vec![repo().join("tests")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, test) in text.split("#[test]").enumerate().skip(1) {
            let name = format!("{}#{i}", f.display());
            for chunk in test.split("/api/v1/instances/").skip(1) {
                let inst: String = chunk
                    .chars()
                    .take_while(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(*c)
                    })
                    .collect();
                if inst.is_empty() {
                    continue;
                }
                let first = owner.entry(inst.clone()).or_insert_with(|| name.clone());
                assert!(
                    *first == name,
                    "instance {inst:?} is used by two tests ({first} and {name}): give each its own name"
                );
            }
        }
    }
    assert!(
        owner.len() > 20,
        "the scan found only {} names",
        owner.len()
    );
}
