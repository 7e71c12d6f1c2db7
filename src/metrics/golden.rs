//! Golden `/metrics`: the whole Prometheus exposition rendered from the v2 and hybrid fixture
//! trees (`tests/fixtures/cgroup/`), with a fake instance source holding an instance in every
//! state, fake GPUs and fixed API, proxy and access traffic, compared line by line with
//! `tests/fixtures/metrics/<layout>.prom` (as node_exporter's `e2e-output.txt`).
//!
//! After an intended change to the exposition, regenerate the files and review their diff:
//!
//! ```sh
//! LLAMACTL_UPDATE_GOLDEN=1 cargo test --lib metrics::golden
//! ```
//!
//! Inputs are fixed rather than filtered: procfs and sysfs are fixture trees (the process
//! collector reads `tests/fixtures/host/v2` with 100 ticks/s and 4 KiB pages), the build labels
//! are fixed, every duration is given, and the rates compare two snapshots between which the test
//! advances only the host's CPU counters (in a scratch copy of the fixture `proc`), so instance
//! CPU is 0 % and host CPU 75 % whatever the time between them. One rule normalizes the text:
//! within a family, series are sorted by label set (a histogram's lines for one label set stay
//! together, in their order), because prometheus-client's `Family` keeps its series in a
//! `HashMap` whose order changes from run to run.

use super::access::{DestinationLabels, EventLabels, KeyLabels, KeyTokenLabels};
use super::build::BuildLabels;
use super::resources::STATES;
use super::tests::promtool_check;
use super::*;
use crate::host::fixture_paths;
use crate::stats::gpu::{GpuDevice, GpuSnapshot, GpuSource};
use crate::stats::snapshot::{InstanceInfo, InstanceSource};
use std::path::{Path, PathBuf};

const UPDATE_VAR: &str = "LLAMACTL_UPDATE_GOLDEN";
const REGENERATE: &str = "LLAMACTL_UPDATE_GOLDEN=1 cargo test --lib metrics::golden";

#[test]
fn v2() {
    check("v2");
}

#[test]
fn hybrid() {
    check("hybrid");
}

/// Renders `layout`, lints it with promtool, and compares it with (or, with
/// `LLAMACTL_UPDATE_GOLDEN` set, writes) its golden file.
fn check(layout: &str) {
    let text = render(layout);
    promtool_check(&text);
    let rendered = normalize(&text);
    let golden = repo()
        .join("tests/fixtures/metrics")
        .join(format!("{layout}.prom"));
    if std::env::var_os(UPDATE_VAR).is_some_and(|v| !v.is_empty() && v != "0") {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &rendered).unwrap();
        eprintln!("wrote {}", golden.display());
        return;
    }
    let expected = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e}; create it with `{REGENERATE}`", golden.display()));
    if expected != rendered {
        panic!(
            "{} differs from the rendered /metrics (- golden, + rendered, with line numbers):\n{}\
             If the change is intended, regenerate with `{REGENERATE}` and review the diff.",
            golden.display(),
            diff(&expected, &rendered)
        );
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The second of two scrapes of the full registry (the first primes the CPU rates).
fn render(layout: &str) -> String {
    let fixture = repo().join("tests/fixtures/cgroup").join(layout);
    let procfs =
        std::env::temp_dir().join(format!("llamactl-golden-{layout}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&procfs);
    copy_tree(&fixture.join("proc"), &procfs);
    let paths = HostPaths {
        procfs: procfs.clone(),
        sysfs: fixture.join("sys"),
    };
    let groups = vec![
        MetricGroup::InstanceStats,
        MetricGroup::ApiPerformance,
        MetricGroup::SystemResources,
        MetricGroup::Gpu,
    ];
    let sampler = Arc::new(Sampler::new(
        paths,
        Some(Arc::new(Fleet)),
        Box::new(Gpus),
        groups,
    ));
    let build = BuildLabels {
        version: "0.0.0-golden",
        arch: "golden-arch",
        os: "linux",
    };
    let process = ProcessCollector::with_units(fixture_paths("v2"), 100, 4096);
    let metrics = Metrics::assemble(process, build, sampler);
    traffic(&metrics);
    metrics.encode(Format::Prometheus).unwrap();
    advance_host_cpu(&procfs.join("stat"));
    // The instance CPU rate divides by the time between snapshots: make it non-zero.
    std::thread::sleep(std::time::Duration::from_millis(2));
    let text = metrics.encode(Format::Prometheus).unwrap();
    std::fs::remove_dir_all(&procfs).unwrap();
    text
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// Adds 3 s of user time and 1 s of idle time to the `cpu` line of `/proc/stat`: 75 % busy.
fn advance_host_cpu(stat: &Path) {
    let text = std::fs::read_to_string(stat).unwrap();
    let advanced: Vec<String> = text
        .lines()
        .map(|line| match line.strip_prefix("cpu ") {
            Some(fields) => {
                let mut v: Vec<u64> = fields
                    .split_whitespace()
                    .map(|f| f.parse().unwrap())
                    .collect();
                v[0] += 300;
                v[3] += 100;
                let v: Vec<String> = v.iter().map(u64::to_string).collect();
                format!("cpu  {}", v.join(" "))
            }
            None => line.to_owned(),
        })
        .collect();
    std::fs::write(stat, advanced.join("\n") + "\n").unwrap();
}

/// An instance in each state of `llamactl_instance_state` (a state added there without one here
/// fails the test), `running` and `up` as the supervisor derives them from its state.
fn instance(state: &'static str) -> InstanceInfo {
    let unit = |name: &str| format!("/llamactl.slice/llamactl-{name}.service");
    let info = match state {
        "stopped" => InstanceInfo {
            name: "idle".into(),
            on_demand_starts: 4,
            evictions: 2,
            ..Default::default()
        },
        // Its cgroup is not in the fixture trees: no resource series, not zeros.
        "starting" => InstanceInfo {
            name: "warming".into(),
            running: true,
            control_group: unit("warming"),
            ..Default::default()
        },
        // Only some files in v2 (memory.current, memory.max, cpu.stat), none in hybrid.
        "loading" => InstanceInfo {
            name: "sparse".into(),
            running: true,
            start_time: Some(1_735_689_950),
            control_group: unit("sparse"),
            ..Default::default()
        },
        "ready" => InstanceInfo {
            name: "smol".into(),
            up: true,
            running: true,
            start_time: Some(1_735_689_900),
            restarts: 1,
            control_group: unit("smol"),
            in_flight: 2,
            on_demand_starts: 1,
            ..Default::default()
        },
        "restarting" => InstanceInfo {
            name: "flaky".into(),
            running: true,
            restarts: 3,
            ..Default::default()
        },
        "stopping" => InstanceInfo {
            name: "retiring".into(),
            start_time: Some(1_735_689_000),
            control_group: unit("retiring"),
            evictions: 1,
            ..Default::default()
        },
        "failed" => InstanceInfo {
            name: "broken".into(),
            restarts: 5,
            ..Default::default()
        },
        other => panic!("no golden instance in state {other:?}: add one"),
    };
    InstanceInfo { state, ..info }
}

/// The fake instance source: one instance per state.
struct Fleet;

impl InstanceSource for Fleet {
    fn instances(&self) -> Vec<InstanceInfo> {
        STATES.iter().map(|s| instance(s)).collect()
    }
}

/// One GPU reporting everything, one reporting only its memory; pids 3100 and 3107 are in
/// smol's cgroup (`cgroup.procs` in both trees), 9999 in none.
struct Gpus;

impl GpuSource for Gpus {
    fn snapshot(&self) -> GpuSnapshot {
        GpuSnapshot {
            devices: vec![
                GpuDevice {
                    index: 0,
                    name: "Fake A100".into(),
                    uuid: "GPU-0000".into(),
                    utilization_percent: Some(87),
                    memory_used_bytes: Some(7 << 30),
                    memory_total_bytes: Some(80 << 30),
                    temperature_celsius: Some(64),
                    power_watts: Some(212.5),
                },
                GpuDevice {
                    index: 1,
                    name: "Fake L4".into(),
                    memory_total_bytes: Some(24 << 30),
                    ..Default::default()
                },
            ],
            processes: vec![(3100, 6 << 30), (3107, 1 << 30), (9999, 512 << 20)],
        }
    }
}

/// API, proxy and access traffic with fixed durations and label values.
fn traffic(m: &Metrics) {
    for (method, route, status, seconds) in [
        ("GET", "/api/v1/instances", 200, 0.0012),
        ("GET", "/api/v1/instances", 200, 0.0007),
        ("GET", "/api/v1/instances/{name}/health", 404, 0.0003),
        ("POST", "/api/v1/instances/{name}/start", 202, 0.42),
        ("POST", "/api/v1/instances/{name}/start", 500, 12.5),
        ("GET", "/metrics", 200, f64::NAN),
        ("other", "unmatched", 405, 0.0001),
        // A value that needs escaping.
        ("GET", "/odd/\"quoted\"\\back\nslash", 400, 0.002),
    ] {
        m.observe_request(method, route, status, seconds);
    }

    // The proxy's endpoint labels, as `proxy::ENDPOINTS` has them (a subset).
    const ENDPOINTS: &[&str] = &["chat_completions", "embeddings", "completions"];
    let smol = super::proxy::InstanceSeries::new(&m.proxy, "smol", ENDPOINTS);
    let sparse = super::proxy::InstanceSeries::new(&m.proxy, "sparse", ENDPOINTS);
    smol.observe(0, 200, 1.8, Some(0.12));
    smol.observe(0, 200, 35.0, Some(0.3));
    smol.observe(0, 499, 3.5, Some(0.2));
    smol.observe(1, 200, 0.004, Some(0.004));
    sparse.observe(2, 503, 0.002, None);
    smol.tokens(120, 480, Some(42.5));
    smol.tokens(30, 0, None);
    let llm = smol.llm("smol");
    llm.ttft.observe(0.18);
    llm.queue.observe(0.0);
    llm.queue.observe(2.4);
    let mut itl = llm.itl.tally();
    itl.observe_n(0.021, 479);
    itl.observe(0.3);
    llm.itl.add(&itl);
    llm.prompt_tokens.observe(120.0);
    llm.completion_tokens.observe(480.0);
    smol.llm("smol/lora-de").queue.observe(0.0);
    // An instance's handle keeps its series for as long as the instance exists; dropping them
    // would take the series out of `/metrics` (a deleted instance's, see `InstanceSeries`).
    std::mem::forget(smol);
    std::mem::forget(sparse);

    let a = &m.access;
    a.count_auth("management", "success");
    a.count_auth("inference", "success");
    a.count_auth("inference", "missing");
    a.count_auth("monitoring", "anonymous");
    a.count_auth("auth", "failure");
    a.count_limit("inference", "key", false);
    a.count_limit("inference", "key", true);
    a.count_limit("auth", "address", true);
    for (event, outcome, n) in [
        ("instance.start", "success", 2),
        ("instance.evict", "success", 1),
        ("auth.failure", "failure", 1),
    ] {
        let event = EventLabels { event, outcome };
        a.audit_events.get_or_create(&event).inc_by(n);
    }
    let file = DestinationLabels {
        destination: "file",
    };
    a.audit_write_failures.get_or_create(&file).inc_by(2);
    a.audit_pending.set(2);
    let key = |group| KeyLabels {
        key_name: "ci".into(),
        group,
    };
    a.key_requests.get_or_create(&key("inference")).inc_by(3);
    a.key_requests.get_or_create(&key("management")).inc();
    // Two shipping log destinations, one that dropped lines.
    let dropped = prometheus_client::metrics::counter::Counter::default();
    dropped.inc_by(17);
    m.log_shipping.add("elasticsearch", dropped);
    m.log_shipping.add("syslog", Default::default());
    for (kind, n) in [("prompt", 120), ("completion", 480)] {
        let tokens = KeyTokenLabels {
            key_name: "ci".into(),
            r#type: kind,
        };
        a.key_tokens.get_or_create(&tokens).inc_by(n);
    }
}

/// Sorts the series of each family by label set (stable: a histogram's `_bucket`, `_sum` and
/// `_count` lines for one label set keep their order); comment lines stay where they are.
fn normalize(text: &str) -> String {
    fn flush(series: &mut Vec<&str>, out: &mut String) {
        series.sort_by_key(|line| label_set(line));
        for line in series.drain(..) {
            out.push_str(line);
            out.push('\n');
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut series = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut series, &mut out);
            out.push_str(line);
            out.push('\n');
        } else {
            series.push(line);
        }
    }
    flush(&mut series, &mut out);
    out
}

/// A series line's labels without `le`, which the encoder writes last: `x_bucket{a="1",le="5"} 3`
/// → `a="1"`.
fn label_set(line: &str) -> &str {
    let (Some(open), Some(close)) = (line.find('{'), line.rfind('}')) else {
        return "";
    };
    let labels = &line[open + 1..close];
    match labels.rfind("le=\"") {
        Some(i) if i == 0 || labels[..i].ends_with(',') => labels[..i].trim_end_matches(','),
        _ => labels,
    }
}

/// The lines that differ, `-` golden and `+` rendered with their line numbers, aligned on a
/// longest common subsequence so a changed line shows as one pair.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    // common[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut common = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i][j] = if a[i] == b[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || common[i + 1][j] >= common[i][j + 1]) {
            out += &format!("-{:>4} {}\n", i + 1, a[i]);
            i += 1;
        } else {
            out += &format!("+{:>4} {}\n", j + 1, b[j]);
            j += 1;
        }
    }
    out
}

#[test]
fn normalize_sorts_series_within_a_family_only() {
    let text = "# TYPE h histogram\n\
                h_bucket{r=\"b\",le=\"1\"} 1\nh_bucket{r=\"b\",le=\"+Inf\"} 1\nh_sum{r=\"b\"} 1\n\
                h_bucket{r=\"a\",le=\"1\"} 0\nh_bucket{r=\"a\",le=\"+Inf\"} 2\nh_sum{r=\"a\"} 9\n\
                # TYPE c counter\nc{x=\"2\"} 1\nc{x=\"1\"} 1\n";
    assert_eq!(
        normalize(text),
        "# TYPE h histogram\n\
         h_bucket{r=\"a\",le=\"1\"} 0\nh_bucket{r=\"a\",le=\"+Inf\"} 2\nh_sum{r=\"a\"} 9\n\
         h_bucket{r=\"b\",le=\"1\"} 1\nh_bucket{r=\"b\",le=\"+Inf\"} 1\nh_sum{r=\"b\"} 1\n\
         # TYPE c counter\nc{x=\"1\"} 1\nc{x=\"2\"} 1\n"
    );
}

#[test]
fn diff_shows_only_the_changed_lines() {
    assert_eq!(
        diff("a\nb\nc\nd\n", "a\nB\nc\nd\ne\n"),
        "-   2 b\n+   2 B\n+   5 e\n"
    );
}
