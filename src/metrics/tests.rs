use std::io::Write;
use std::process::{Command, Stdio};

use super::*;
use crate::host::fixture_paths;

/// What Prometheus 2.x/3.x sends when scraping.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,\
    application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

fn metrics_with_traffic() -> Metrics {
    let metrics = Metrics::new(fixture_paths("v2"));
    metrics.observe_request("GET", "/v1/servers", 200, 0.0012);
    metrics.observe_request("GET", "/v1/servers", 200, 0.0007);
    metrics.observe_request("GET", "/v1/servers/{name}", 404, 0.0003);
    metrics.observe_request("POST", "/v1/servers/{name}/start", 202, 0.42);
    metrics.observe_request("POST", "/v1/servers/{name}/start", 500, 12.5);
    metrics.observe_request("GET", "/metrics", 200, f64::NAN);
    // Label values that need escaping must still produce valid exposition text.
    metrics.observe_request("GET", "/odd/\"quoted\"\\back\nslash", 400, 0.002);
    metrics
}

#[test]
fn metrics_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Metrics>();
}

#[test]
fn accept_header_selects_openmetrics_only_when_listed() {
    assert_eq!(Format::from_accept(None), Format::Prometheus);
    assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
    assert_eq!(
        Format::from_accept(Some("text/plain;version=0.0.4")),
        Format::Prometheus
    );
    assert_eq!(
        Format::from_accept(Some(PROMETHEUS_ACCEPT)),
        Format::OpenMetrics
    );
    assert_eq!(
        Format::from_accept(Some("Application/OpenMetrics-Text; version=1.0.0")),
        Format::OpenMetrics
    );
    assert_eq!(
        Format::from_accept(Some("application/openmetrics-text;q=0, text/plain")),
        Format::Prometheus
    );
    assert_eq!(
        Format::from_accept(Some("application/openmetrics-textual")),
        Format::Prometheus
    );
}

#[test]
fn content_types() {
    assert_eq!(
        Format::Prometheus.content_type(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(
        Format::OpenMetrics.content_type(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
}

#[test]
fn prometheus_format_has_expected_families_and_no_openmetrics_syntax() {
    let out = metrics_with_traffic().encode(Format::Prometheus).unwrap();
    for expected in [
        "# TYPE process_cpu_seconds_total counter\n",
        "# TYPE process_open_fds gauge\n",
        "# TYPE llamactl_build_info gauge\n",
        "# TYPE llamactl_system_memory_total_bytes gauge\n",
        "\nllamactl_system_memory_available_bytes 52550291456\n",
        "# TYPE llamactl_api_requests_total counter\n",
        "\nllamactl_api_requests_total{method=\"GET\",route=\"/v1/servers\",status=\"200\"} 2\n",
        "\nllamactl_api_requests_total{method=\"POST\",route=\"/v1/servers/{name}/start\",status=\"500\"} 1\n",
        "\nllamactl_api_requests_total{method=\"GET\",route=\"/odd/\\\"quoted\\\"\\\\back\\nslash\",status=\"400\"} 1\n",
        "# TYPE llamactl_api_request_duration_seconds histogram\n",
        "\nllamactl_api_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/servers\",le=\"0.001\"} 1\n",
        "\nllamactl_api_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/servers\",le=\"0.0025\"} 2\n",
        "\nllamactl_api_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/servers/{name}/start\",le=\"10\"} 1\n",
        "\nllamactl_api_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/servers/{name}/start\",le=\"+Inf\"} 2\n",
        "\nllamactl_api_request_duration_seconds_count{method=\"POST\",route=\"/v1/servers/{name}/start\"} 2\n",
        // The NaN observation was recorded as 0.
        "\nllamactl_api_request_duration_seconds_sum{method=\"GET\",route=\"/metrics\"} 0.0\n",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in\n{out}");
    }
    for forbidden in ["# EOF", "# UNIT", "_created", "# TYPE llamactl_build info"] {
        assert!(
            !out.contains(forbidden),
            "unexpected {forbidden:?} in\n{out}"
        );
    }
    let buckets = out
        .lines()
        .filter(|l| l.starts_with("llamactl_api_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/servers\","))
        .count();
    assert_eq!(buckets, API_DURATION_BUCKETS.len() + 1);
}

#[test]
fn openmetrics_format_ends_with_eof() {
    let out = metrics_with_traffic().encode(Format::OpenMetrics).unwrap();
    assert!(out.ends_with("# EOF\n"), "{out}");
    assert_eq!(out.matches("# EOF").count(), 1);
    assert!(out.contains("# TYPE llamactl_build info\n"), "{out}");
    assert!(
        out.contains("# TYPE llamactl_api_requests counter\n"),
        "{out}"
    );
    assert!(
        out.contains("# UNIT llamactl_api_request_duration_seconds seconds\n"),
        "{out}"
    );
    assert!(out.contains("\nprocess_cpu_seconds_total "), "{out}");
}

#[test]
fn empty_families_are_not_exposed() {
    let out = Metrics::new(fixture_paths("v2"))
        .encode(Format::Prometheus)
        .unwrap();
    assert!(!out.contains("llamactl_api_requests"), "{out}");
    assert!(out.contains("llamactl_build_info{"), "{out}");
}

/// `promtool check metrics` is the reference linter: exit 0 with no output means the exposition
/// parses and follows the naming conventions (HELP everywhere, `_total` counters, base units).
#[test]
fn promtool_accepts_prometheus_output() {
    let metrics = metrics_with_traffic();
    // Include the real process collector too, not only fixture values.
    let real = Metrics::new(HostPaths::default());
    real.observe_request("DELETE", "/v1/servers/{name}", 204, 0.03);
    for text in [
        metrics.encode(Format::Prometheus).unwrap(),
        real.encode(Format::Prometheus).unwrap(),
    ] {
        promtool_check(&text);
    }
}

/// Pipes an exposition through `promtool check metrics`; fails unless it exits 0 with no output.
pub(crate) fn promtool_check(text: &str) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(err) => panic!(
            "cannot run `promtool` ({err}); this test needs it: install the `prometheus` \
             package (Debian/Ubuntu: `apt-get install prometheus`) or put promtool on PATH"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.is_empty() && stderr.is_empty(),
        "promtool rejected the exposition ({}):\nstdout: {stdout}\nstderr: {stderr}\ninput:\n{text}",
        output.status
    );
}

/// The model front doors' kept series are the family's own: counted either way, a label set is
/// one series with one count, and a bad duration counts as zero.
#[test]
fn model_requests_counted_through_kept_series_are_the_same_series() {
    let metrics = Metrics::new(fixture_paths("v2"));
    metrics.observe_model_request("POST", "/v1/{*rest}", 200, 0.25);
    metrics.observe_model_request("POST", "/v1/{*rest}", 200, f64::NAN);
    metrics.observe_request("POST", "/v1/{*rest}", 200, 0.25);
    metrics.observe_model_request("POST", "/v1/{*rest}", 503, 0.001);
    let text = metrics.encode(Format::Prometheus).expect("encode");
    let line = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .to_string()
    };
    let ok = r#"llamactl_api_requests_total{method="POST",route="/v1/{*rest}",status="200"}"#;
    let busy = r#"llamactl_api_requests_total{method="POST",route="/v1/{*rest}",status="503"}"#;
    assert_eq!(line(ok), "3");
    assert_eq!(line(busy), "1");
    let sum = r#"llamactl_api_request_duration_seconds_sum{method="POST",route="/v1/{*rest}"}"#;
    let count = r#"llamactl_api_request_duration_seconds_count{method="POST",route="/v1/{*rest}"}"#;
    assert_eq!(line(count), "4");
    assert!((line(sum).parse::<f64>().expect("a sum") - 0.501).abs() < 1e-9);
}
