//! Continuous profiling (`[profiling] enabled`): a CPU profile of every `upload_interval`
//! pushed to Pyroscope's ingest API, `POST {server_address}/ingest?name={app}.cpu{…}&from=…&until=…
//! &format=pprof&sampleRate=99&spyName=llamactl` with the pprof protobuf as the body and, when
//! `auth_token` is set, `Authorization: Bearer …`.
//!
//! Never fatal and never in a request's way: the push runs on the main runtime with a deadline;
//! a failure is logged once (then at debug until a push succeeds again) and counted in
//! `llamactl_profiling_uploads_total{result="error"}`. A window in which the profiler is busy
//! with an on-demand profile is skipped (`result="skipped"`).

use super::cpu::{CpuProfiler, FREQUENCY};
use crate::config::PyroscopeConfig;
use crate::metrics::profiling::ProfilingMetrics;
use crate::metrics::runtime::Runtimes;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The longest a push may take before it counts as failed.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Characters kept as they are in a query value (RFC 3986 unreserved).
fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The ingest URL for a profile taken from `from` to `until` (Unix seconds).
pub fn ingest_url(cfg: &PyroscopeConfig, host: &str, from: u64, until: u64) -> String {
    let base = cfg.server_address.trim_end_matches('/');
    let name = format!(
        "{}.cpu{{hostname={}}}",
        cfg.application_name,
        host.replace([',', '}', '{', '='], "_")
    );
    format!(
        "{base}/ingest?name={}&from={from}&until={until}&format=pprof&sampleRate={FREQUENCY}&spyName=llamactl&units=samples&aggregationType=sum",
        encode_query(&name)
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Starts the push loop on the current runtime; it ends at shutdown.
pub fn spawn(
    cfg: PyroscopeConfig,
    cpu: CpuProfiler,
    metrics: ProfilingMetrics,
    runtimes: &Runtimes,
    mut shutdown: watch::Receiver<bool>,
) {
    metrics.enable();
    let listed = runtimes.task("pyroscope push", "main");
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let host = host_name();
    let interval = cfg.upload_interval.get();
    info!(
        component = "profiling",
        server = %cfg.server_address,
        application = %cfg.application_name,
        interval = %cfg.upload_interval,
        "continuous profiling: pushing CPU profiles to Pyroscope"
    );
    tokio::spawn(async move {
        let _listed = listed;
        // Whether the last push failed: the first failure is a warning, the rest debug lines.
        let mut failing = false;
        loop {
            let from = unix_now();
            let window = tokio::select! {
                w = cpu.window(interval) => w,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let body = match window {
                Some(Ok(body)) => body,
                Some(Err(e)) => {
                    metrics.skipped.inc();
                    debug!(component = "profiling", error = %e, "no profile for this window");
                    // Do not spin when the profiler cannot start.
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                    continue;
                }
                None => {
                    metrics.skipped.inc();
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                    continue;
                }
            };
            // The profile covers the sampled window, which ends `interval` after `from`; the
            // clock now also counts the report's symbolization, seconds in a debug build.
            let until = from.saturating_add(interval.as_secs().max(1));
            let url = ingest_url(&cfg, &host, from, until);
            match push(&client, &cfg, &url, body).await {
                Ok(()) => {
                    metrics.ok.inc();
                    if failing {
                        info!(
                            component = "profiling",
                            "pushing profiles to Pyroscope works again"
                        );
                    }
                    failing = false;
                }
                Err(e) => {
                    metrics.failed.inc();
                    if failing {
                        debug!(component = "profiling", error = %e, "profile push failed");
                    } else {
                        warn!(component = "profiling", server = %cfg.server_address, error = %e, "profile push to Pyroscope failed; counting further failures in llamactl_profiling_uploads_total{{result=\"error\"}}");
                    }
                    failing = true;
                }
            }
        }
    });
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn push(
    client: &HttpClient,
    cfg: &PyroscopeConfig,
    url: &str,
    body: Vec<u8>,
) -> Result<(), String> {
    let mut req = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .header(
            hyper::header::USER_AGENT,
            concat!("llamactld/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(token) = &cfg.auth_token {
        req = req.header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", token.expose()),
        );
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("building the request: {e}"))?;
    let resp = tokio::time::timeout(PUSH_TIMEOUT, client.request(req))
        .await
        .map_err(|_| format!("no answer within {} s", PUSH_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("the server answered {}", resp.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ingest_url_carries_the_name_times_and_format() {
        let cfg = PyroscopeConfig {
            server_address: "http://pyro:4040/".into(),
            application_name: "llamactl".into(),
            ..Default::default()
        };
        let u = ingest_url(&cfg, "gpu-1", 100, 110);
        assert_eq!(
            u,
            "http://pyro:4040/ingest?name=llamactl.cpu%7Bhostname%3Dgpu-1%7D&from=100&until=110&format=pprof&sampleRate=99&spyName=llamactl&units=samples&aggregationType=sum"
        );
        assert!(ingest_url(&cfg, "a,b}", 1, 2).contains("hostname%3Da_b_%7D"));
    }
}
