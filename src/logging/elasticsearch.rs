//! `type = "elasticsearch"`: log lines as documents, sent in batches to the `_bulk` API,
//! each into the daily index `{index_prefix}-YYYY.MM.DD` of its UTC date:
//!
//! ```text
//! POST /_bulk?filter_path=…            Content-Type: application/x-ndjson
//! {"index":{"_index":"llamactl-2025.06.01"}}
//! {"timestamp":"2025-06-01T12:00:00.123456Z","level":"info","message":"instance created","instance":"smol","component":"instance","target":"llamactl::instance::supervisor","host":"gpu-1","pid":4242,"fields":{"port":"8001"}}
//! ```
//!
//! The fields are the index template's (`packaging/elasticsearch/`): the monitoring guide's
//! `timestamp`, `level`, `message`, `instance`, `component`, and ours, `target`, `host`, `pid`
//! and `fields` (the event's other fields, as strings). `instance` is absent when the line is
//! not about one.
//!
//! The destination's thread (`ship.rs`) takes a batch of up to `batch_size` documents, waiting
//! at most `flush_interval` for it to fill, and posts it with a deadline of `timeout` (on a
//! current-thread runtime of its own: nothing here runs on the daemon's runtimes). A connection
//! failure, a timeout, 429 or 5xx keeps the batch and retries it with backoff (500 ms doubling to
//! `max_backoff`) while new lines queue, then drop and are counted; other answers (400, 401, 403,
//! 413, …) and documents refused one by one in the answer (a mapping conflict) are dropped and
//! counted, and documents answered 429/5xx in the answer are retried. A failing endpoint is
//! logged once, its recovery once; the first refused document once.

use super::ship::{self, Backoff, Inbox, Record, ShipLayer, Shipper};
use crate::config::time::format_rfc3339;
use crate::config::ElasticsearchDestination;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::time::{Duration, Instant};

/// Every field a document can have: the index template's `mappings.properties`.
pub const DOCUMENT_FIELDS: &[&str] = &[
    "timestamp",
    "level",
    "message",
    "instance",
    "component",
    "target",
    "host",
    "pid",
    "fields",
];

/// The largest answer read (the filtered `_bulk` answer is a few bytes per document).
const MAX_ANSWER: usize = 4 << 20;

#[derive(Serialize)]
struct Doc<'a> {
    timestamp: String,
    level: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<&'a str>,
    component: &'a str,
    target: &'a str,
    host: &'a str,
    pid: u32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    fields: BTreeMap<&'a str, &'a str>,
}

/// `{prefix}-YYYY.MM.DD` for a time in Unix microseconds (UTC).
pub fn index_name(prefix: &str, time_us: i64) -> String {
    let t = format_rfc3339(time_us.div_euclid(1_000_000));
    let (date, _) = t.split_once('T').unwrap_or((&t, ""));
    format!("{prefix}-{}", date.replace('-', "."))
}

/// A document's two NDJSON lines, the action and the source, each ending in `\n`.
pub fn bulk_entry(r: &Record, prefix: &str, host: &str, pid: u32) -> String {
    let action = serde_json::json!({ "index": { "_index": index_name(prefix, r.time_us) } });
    let doc = Doc {
        timestamp: r.timestamp(),
        level: r.level_name(),
        message: &r.message,
        instance: r.instance.as_deref(),
        component: &r.component,
        target: r.target,
        host,
        pid,
        fields: r.fields.iter().map(|(k, v)| (*k, v.as_str())).collect(),
    };
    let doc = serde_json::to_string(&doc).unwrap_or_default();
    format!("{action}\n{doc}\n")
}

/// RFC 4648 base64 with padding.
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `Authorization` header the config asks for, marked sensitive.
fn authorization(cfg: &ElasticsearchDestination) -> Option<HeaderValue> {
    let v = match (&cfg.username, &cfg.password, &cfg.api_key) {
        (Some(u), Some(p), _) => {
            format!("Basic {}", base64(format!("{u}:{}", p.expose()).as_bytes()))
        }
        (_, _, Some(k)) => format!("ApiKey {}", k.expose()),
        _ => return None,
    };
    let mut h = HeaderValue::try_from(v).ok()?;
    h.set_sensitive(true);
    Some(h)
}

/// What became of one `_bulk` request.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Delivered,
    /// The answer refused some documents for good (`rejected`, with the first reason) and asked
    /// for others (`retry`, their positions) to be sent again.
    Partial {
        retry: Vec<usize>,
        rejected: usize,
        reason: String,
    },
    /// Worth retrying: no answer, 429, 5xx.
    Retry(String),
    /// Not worth retrying this batch: 4xx and the like.
    Refused(String),
}

#[derive(Deserialize)]
struct BulkAnswer {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<HashMap<String, Item>>,
}

#[derive(Deserialize)]
struct Item {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

fn retryable(status: u16) -> bool {
    status == 429 || status >= 500
}

/// Reads a `_bulk` answer for a batch of `n` documents.
pub fn outcome(status: u16, body: &[u8], n: usize) -> Outcome {
    let excerpt = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    if retryable(status) {
        return Outcome::Retry(format!("Elasticsearch answered {status}: {}", excerpt()));
    }
    if !(200..300).contains(&status) {
        return Outcome::Refused(format!("Elasticsearch answered {status}: {}", excerpt()));
    }
    // An answer that is not the usual JSON (a proxy's, a stand-in's) took the batch.
    let Ok(a) = serde_json::from_slice::<BulkAnswer>(body) else {
        return Outcome::Delivered;
    };
    if !a.errors {
        return Outcome::Delivered;
    }
    let (mut retry, mut rejected, mut reason) = (Vec::new(), 0, String::new());
    for (i, item) in a.items.iter().enumerate().take(n) {
        let Some(it) = item.values().next() else {
            continue;
        };
        if (200..300).contains(&it.status) {
            continue;
        }
        if retryable(it.status) {
            retry.push(i);
        } else {
            rejected += 1;
            if reason.is_empty() {
                reason = match &it.error {
                    Some(e) => format!(
                        "{} {}: {}",
                        it.status,
                        e["type"].as_str().unwrap_or("error"),
                        e["reason"].as_str().unwrap_or("")
                    ),
                    None => it.status.to_string(),
                };
            }
        }
    }
    if retry.is_empty() && rejected == 0 {
        Outcome::Delivered
    } else {
        Outcome::Partial {
            retry,
            rejected,
            reason,
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn post(
    client: &HttpClient,
    url: &hyper::Uri,
    auth: Option<&HeaderValue>,
    body: Bytes,
) -> Result<(u16, Bytes), String> {
    let mut req = hyper::Request::post(url.clone())
        .header(CONTENT_TYPE, "application/x-ndjson")
        .header(USER_AGENT, concat!("llamactld/", env!("CARGO_PKG_VERSION")));
    if let Some(a) = auth {
        req = req.header(AUTHORIZATION, a.clone());
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| format!("building the request: {e}"))?;
    let resp = client.request(req).await.map_err(|e| {
        // The connector's error (refused, unreachable) is the useful part.
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            s = format!("{s}: {c}");
            src = c.source();
        }
        s
    })?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// Starts the destination's thread; the layer hands it every line.
pub fn start(cfg: &ElasticsearchDestination, name: String) -> io::Result<(ShipLayer, Shipper)> {
    let cfg = cfg.clone();
    let label = name.clone();
    ship::start(
        name,
        "elasticsearch",
        cfg.queue_size,
        move |inbox: &Inbox| run(&cfg, &label, inbox),
    )
}

/// The sender's logging of its own state: a failure once, its recovery once.
struct Health<'a> {
    name: &'a str,
    url: &'a str,
    failing: bool,
    warned_refused_document: bool,
}

impl Health<'_> {
    fn failed(&mut self, why: &str) {
        if !self.failing {
            tracing::warn!(
                component = "logging",
                destination = self.name,
                url = self.url,
                error = why,
                "cannot ship log lines to Elasticsearch; retrying with backoff (lines that do not fit the queue are counted in llamactl_log_shipping_dropped_total)"
            );
            self.failing = true;
        } else {
            tracing::debug!(
                component = "logging",
                destination = self.name,
                error = why,
                "log shipping to Elasticsearch still failing"
            );
        }
    }

    fn delivered(&mut self) {
        if self.failing {
            tracing::info!(
                component = "logging",
                destination = self.name,
                url = self.url,
                "Elasticsearch takes log lines again"
            );
            self.failing = false;
        }
    }

    fn refused_documents(&mut self, n: usize, reason: &str) {
        if !self.warned_refused_document {
            tracing::warn!(
                component = "logging",
                destination = self.name,
                documents = n,
                reason,
                "Elasticsearch refused log documents; they are dropped and counted in llamactl_log_shipping_dropped_total (this is said once)"
            );
            self.warned_refused_document = true;
        }
    }
}

fn run(cfg: &ElasticsearchDestination, name: &str, inbox: &Inbox) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(component = "logging", destination = name, error = %e, "cannot start the Elasticsearch sender; its lines are dropped");
            return;
        }
    };
    let client: HttpClient = {
        let _enter = rt.enter();
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(cfg.timeout.get()));
        http.set_nodelay(true);
        Client::builder(TokioExecutor::new()).build(http)
    };
    let url: hyper::Uri = match cfg.bulk_url().parse() {
        Ok(u) => u,
        Err(e) => {
            // validate() accepted it; this would be a bug, said rather than hidden.
            tracing::error!(component = "logging", destination = name, error = %e, "bad Elasticsearch URL; its lines are dropped");
            return;
        }
    };
    let auth = authorization(cfg);
    let host = ship::host_name();
    let pid = std::process::id();
    let entry = |r: &Record| bulk_entry(r, &cfg.index_prefix, &host, pid);
    let mut health = Health {
        name,
        url: &cfg.url,
        failing: false,
        warned_refused_document: false,
    };
    let mut backoff = Backoff::new(cfg.max_backoff.get());
    let mut batch: Vec<String> = Vec::new();
    loop {
        if batch.is_empty() {
            match inbox.next(Duration::from_secs(1)) {
                Some(r) => batch.push(entry(&r)),
                None if inbox.stopping() => return,
                None => continue,
            }
            let until = Instant::now() + cfg.flush_interval.get();
            while batch.len() < cfg.batch_size {
                match inbox.next(until.saturating_duration_since(Instant::now())) {
                    Some(r) => batch.push(entry(&r)),
                    None => break,
                }
            }
        }
        let timeout = match inbox.time_left() {
            Some(left) => cfg.timeout.get().min(left),
            None => cfg.timeout.get(),
        };
        if timeout.is_zero() {
            inbox.dropped.inc_by(batch.len() as u64);
            return;
        }
        let body = Bytes::from(batch.concat());
        let answer = rt.block_on(async {
            tokio::time::timeout(timeout, post(&client, &url, auth.as_ref(), body)).await
        });
        let result = match answer {
            Err(_) => Outcome::Retry(format!(
                "no answer within {}",
                crate::config::HumanDuration(timeout)
            )),
            Ok(Err(e)) => Outcome::Retry(e),
            Ok(Ok((status, body))) => outcome(status, &body, batch.len()),
        };
        match result {
            Outcome::Delivered => {
                health.delivered();
                backoff.reset();
                batch.clear();
                continue;
            }
            Outcome::Partial {
                retry,
                rejected,
                reason,
            } => {
                inbox.dropped.inc_by(rejected as u64);
                if rejected > 0 {
                    health.refused_documents(rejected, &reason);
                }
                let kept: Vec<String> = retry
                    .into_iter()
                    .filter_map(|i| batch.get_mut(i).map(std::mem::take))
                    .collect();
                batch = kept;
                if batch.is_empty() {
                    health.delivered();
                    backoff.reset();
                    continue;
                }
                health.failed(
                    "Elasticsearch asked for documents to be sent again (429 or 5xx in its answer)",
                );
            }
            Outcome::Retry(e) => health.failed(&e),
            Outcome::Refused(e) => {
                health.failed(&e);
                inbox.dropped.inc_by(batch.len() as u64);
                // Not retried, but the next batch need not follow at once.
                batch.clear();
            }
        }
        // Not delivered (in full): back off before the next attempt.
        if inbox.stopping() {
            // The last flush failed: what is left counts as dropped.
            inbox.dropped.inc_by(batch.len() as u64);
            return;
        }
        inbox.sleep(backoff.step());
    }
}

#[cfg(test)]
mod tests;
