//! Fuzzing entry points: one function per family of parsers that read bytes llamactld does not
//! control (the config file, instance specs, a backend's response head, chunked body and token
//! counts, journalctl's JSON, cgroup and procfs files). Each calls the real parsers and asserts
//! what their callers rely on: no panic, no overflow, and the cheap invariants named below.
//! The cargo-fuzz targets in `fuzz/` (run by `tools/fuzz`) call these, and the test at the end
//! replays the checked-in corpora and crash inputs through them on every `cargo test`, so a fixed
//! crash stays fixed without a nightly toolchain. Nothing else in the crate uses this module.

use crate::config::{self, BackendsConfig, Config, InstancesConfig, LimitGroup, MapEnv};
use crate::host::{cgroup_layout, meminfo};
use crate::http::lane::head::{self as lane, Parse};
use crate::instance::logs;
use crate::instance::spec::{self, DesiredState, InstanceOptions, InstanceSpec};
use crate::proxy::tokens::{SseScanner, Usage};
use crate::proxy::upstream::chunked::{pass_in_pieces as pass, Chunked};
use crate::proxy::upstream::head::{parse_head, Framing};
use crate::stats::{cgroup, system};
use bytes::BytesMut;
use std::path::Path;
use std::time::Duration;

/// A fuzz target: arbitrary bytes in, a panic for a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its file in `fuzz/fuzz_targets/` and its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("spec", spec),
    ("response_head", response_head),
    ("chunked", chunked),
    ("lane_head", lane_head),
    ("tokens", tokens),
    ("journal", journal),
    ("cgroup", cgroup),
    ("procfs", procfs),
];

/// `parse_duration`'s bound, which every configured duration keeps: a deadline that far ahead
/// still fits an `Instant`.
const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// Years 0000-9999 in Unix seconds: what `format_rfc3339` prints as four digits.
const FOUR_DIGIT_YEARS: std::ops::Range<i64> = -62_167_219_200..253_402_300_800;

/// The config file (`config::parse`, then `validate`), and the scalar parsers it uses on values
/// (durations, RFC 3339 dates, key digests) on the whole text.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    config_values(&text);
    let path = Path::new("/etc/llamactl/config.toml");
    let c = match config::parse(&text, path) {
        Ok(c) => c,
        Err(e) => return assert!(!e.to_string().is_empty()),
    };
    match config::validate::validate(&c, path) {
        Ok(_) => {}
        Err(e) => return assert!(!e.to_string().is_empty()),
    }
    // What the daemon computes from a config it accepted.
    for (key, d) in durations(&c) {
        assert!(d <= YEAR, "{key} = {d:?} was accepted: over a year");
    }
    for g in LimitGroup::ALL {
        let (rate, _) = c.rate_limit.bucket(g);
        assert!(rate.is_finite() && rate >= 0.0, "{g:?} rate {rate}");
    }
    let env = MapEnv::default().with("STATE_DIRECTORY", "/var/lib/llamactl");
    let _ = (c.local_url(), c.state_dir(&env), c.socket_path(&env));
    let _ = config::restart_only_changes(&Config::default(), &c);
}

fn durations(c: &Config) -> Vec<(&'static str, Duration)> {
    let (s, i, p) = (&c.systemd, &c.instances, &c.proxy);
    let mut out = vec![
        ("server.request_timeout", c.server.request_timeout.get()),
        ("server.header_timeout", c.server.header_timeout.get()),
        (
            "monitoring.collection_interval",
            c.monitoring.collection_interval.get(),
        ),
        ("systemd.ready_timeout", s.ready_timeout.get()),
        ("systemd.check_interval", s.check_interval.get()),
        (
            "systemd.reconnect_max_backoff",
            s.reconnect_max_backoff.get(),
        ),
        ("instances.job_timeout", i.job_timeout.get()),
        ("instances.stop_timeout", i.stop_timeout.get()),
        (
            "instances.health_check_interval",
            i.health_check_interval.get(),
        ),
        ("proxy.start_timeout", p.start_timeout.get()),
        ("proxy.idle_check_interval", p.idle_check_interval.get()),
        ("proxy.body_timeout", p.body_timeout.get()),
        (
            "proxy.response_header_timeout",
            p.response_header_timeout.get(),
        ),
        ("proxy.backend_idle_timeout", p.backend_idle_timeout.get()),
        (
            "profiling.pyroscope.upload_interval",
            c.profiling.pyroscope.upload_interval.get(),
        ),
    ];
    for d in &c.logging.destinations {
        if let config::LogDestination::Elasticsearch(e) = d {
            out.extend([
                (
                    "logging.destinations.flush_interval",
                    e.flush_interval.get(),
                ),
                ("logging.destinations.timeout", e.timeout.get()),
                ("logging.destinations.max_backoff", e.max_backoff.get()),
            ]);
        }
    }
    out
}

fn config_values(text: &str) {
    use config::time::{format_rfc3339, parse_rfc3339, parse_rfc3339_micros};
    if let Ok(d) = config::parse_duration(text) {
        assert!(d <= YEAR, "{d:?}");
    }
    match (parse_rfc3339(text), parse_rfc3339_micros(text)) {
        (Ok(secs), Ok(us)) => {
            assert_eq!(us.div_euclid(1_000_000), secs);
            if FOUR_DIGIT_YEARS.contains(&secs) {
                assert_eq!(parse_rfc3339(&format_rfc3339(secs)), Ok(secs));
            }
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("seconds {a:?} but microseconds {b:?}"),
    }
    let _ = config::parse_digest(text);
}

/// An instance spec: the API's create/update body (`parse_options`, then `normalise`) and a spec
/// file as the store loads it. What is accepted is saved, so it must load back as it was.
pub fn spec(data: &[u8]) {
    let mut de = serde_json::Deserializer::from_slice(data);
    if let Ok(stored) = serde_path_to_error::deserialize::<_, InstanceSpec>(&mut de) {
        uses(&stored.options);
    }
    let Ok(mut o) = spec::parse_options(data) else {
        return;
    };
    let cfg = InstancesConfig::default();
    if o.normalise(&cfg).is_err() {
        return;
    }
    let stored = InstanceSpec {
        name: "fuzz".into(),
        created: 0,
        desired_state: DesiredState::Running,
        options: o.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&stored).expect("an accepted spec serialises");
    let back: InstanceSpec = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "a saved spec does not load: {e}\n{}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(back, stored, "a saved spec loads as another");
    let mut again = o.clone();
    again.normalise(&cfg).expect("normalising again");
    assert_eq!(again, o, "normalising is not idempotent");
    uses(&o);
}

/// What the supervisor and proxy derive from a spec; no NUL byte may reach an argv or env.
fn uses(o: &InstanceOptions) {
    let backends = BackendsConfig::default();
    for s in spec::command_line(o, &backends)
        .iter()
        .chain(&spec::environment("fuzz", o, &backends))
    {
        assert!(!s.contains('\0'), "NUL in {s:?}");
    }
    let _ = (o.connect_addr(), o.metrics_path(), o.model_aliases());
    let _ = (o.idle_after(), o.backend_key(), o.health_path());
    let _ = (
        o.memory_max.as_ref().map(|m| m.bytes()),
        o.cpu_quota.map(|q| q.per_sec_usec()),
    );
}

/// A backend's response head; a chunked body after it goes through the decoder.
pub fn response_head(data: &[u8]) {
    let p = match parse_head(data) {
        Ok(Some(p)) => p,
        Ok(None) => return,
        Err(e) => return assert!(!e.to_string().is_empty()),
    };
    assert!((100..=999).contains(&p.head.status.as_u16()));
    assert!(p.len > 0 && p.len <= data.len(), "head of {} bytes", p.len);
    for hop in [
        "connection",
        "transfer-encoding",
        "content-length",
        "keep-alive",
    ] {
        assert!(!p.head.headers.contains_key(hop), "{hop} passed on");
    }
    let alone = parse_head(&data[..p.len])
        .ok()
        .flatten()
        .expect("the head alone");
    assert_eq!((alone.len, alone.head.status), (p.len, p.head.status));
    if let Framing::Chunked(c) = p.framing {
        let body = &data[p.len..];
        let _ = decode(c, body, body.len().max(1));
    }
}

/// A chunked body (the first byte is the size of the reads it arrives in, 1-256 bytes). The
/// decoder is resumable at any byte: in pieces it gives what it gives for the whole, and never
/// more bytes than it was given.
pub fn chunked(data: &[u8]) {
    let Some((&read, body)) = data.split_first() else {
        return;
    };
    let whole = decode(Chunked::default(), body, body.len().max(1));
    let pieces = decode(Chunked::default(), body, usize::from(read) + 1);
    match (&whole, &pieces) {
        (Ok(w), Ok(p)) => assert_eq!(w, p, "in pieces of {}", usize::from(read) + 1),
        (Err(_), Err(_)) => {}
        _ => panic!(
            "whole: {whole:?}, in pieces of {}: {pieces:?}",
            usize::from(read) + 1
        ),
    }
    // Passed on as it came (the lane): the same in pieces as whole, and a body it accepts is
    // one the decoder reads the same data from (it is the stricter of the two).
    let passed = pass(body, body.len().max(1));
    let in_pieces = pass(body, usize::from(read) + 1);
    match (&passed, &in_pieces) {
        (Ok(w), Ok(p)) => assert_eq!(w, p, "passed in pieces of {}", usize::from(read) + 1),
        (Err(_), Err(_)) => {}
        _ => panic!("passed whole: {passed:?}, in pieces: {in_pieces:?}"),
    }
    if let Ok((data, true, used)) = passed {
        let decoded = decode(Chunked::default(), &body[..used], used.max(1));
        assert_eq!(
            decoded,
            Ok((data, true)),
            "passed on, but decoded otherwise"
        );
    }
}

/// A request head at the start of a connection (`http::lane`): what the lane takes it is
/// exactly the head, and what it makes of it agrees with the bytes.
pub fn lane_head(data: &[u8]) {
    let Parse::Lane(taken) = lane::classify(data) else {
        return;
    };
    let len = taken.len;
    assert!(len <= data.len() && len <= lane::MAX_HEAD);
    let head = bytes::Bytes::copy_from_slice(&data[..len]);
    let Some(req) = lane::build(&head, taken) else {
        return;
    };
    // Empty lines before a request line are skipped (RFC 9112 2.2), by httparse as by hyper.
    let start = data
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    assert!(
        data[start..].starts_with(b"POST /"),
        "{:?}",
        &data[..len.min(32)]
    );
    assert!(req.target.starts_with('/'));
    let path = req.target.split('?').next().unwrap_or_default();
    assert_eq!(lane::model_route(path), Some(req.route));
    let lengths: Vec<_> = req.headers.get_all("content-length").iter().collect();
    assert_eq!(lengths.len(), 1);
    assert_eq!(
        lengths[0].to_str().ok().and_then(|v| v.parse().ok()),
        Some(req.content_length)
    );
    assert!(!req.headers.contains_key("transfer-encoding"));
}

/// Decodes `body` arriving `read` bytes at a time: the data and whether the body ended.
fn decode(mut c: Chunked, body: &[u8], read: usize) -> Result<(Vec<u8>, bool), String> {
    let (mut buf, mut out, mut given) = (BytesMut::new(), Vec::new(), 0);
    for piece in body.chunks(read) {
        buf.extend_from_slice(piece);
        given += piece.len();
        if let Some(b) = c.decode(&mut buf).map_err(|e| e.to_string())? {
            out.extend_from_slice(&b);
        }
        assert!(out.len() <= given, "{} bytes out of {given}", out.len());
        if c.is_done() {
            break;
        }
    }
    Ok((out, c.is_done()))
}

/// Token counts: a whole JSON body, and the text as an SSE stream, which gives the same counts
/// whether it arrives at once or in pieces (the first byte is the piece size).
pub fn tokens(data: &[u8]) {
    let mut json = Usage::default();
    json.absorb_json(data);
    assert!(json.per_second.is_none_or(f64::is_finite));
    let Some((&read, stream)) = data.split_first() else {
        return;
    };
    let mut whole = SseScanner::default();
    whole.feed(stream);
    let mut pieces = SseScanner::default();
    for p in stream.chunks(usize::from(read) + 1) {
        pieces.feed(p);
    }
    assert_eq!(
        whole.usage,
        pieces.usage,
        "in pieces of {}",
        usize::from(read) + 1
    );
}

/// `journalctl -o json` lines, as `tail` reads them: parsed whole and cut at 16 bytes; the
/// time printed is the entry's.
pub fn journal(data: &[u8]) {
    for line in String::from_utf8_lossy(data).lines() {
        let Some(full) = logs::parse(line) else {
            assert!(logs::parse_limited(line, 16).is_none());
            continue;
        };
        let cut = logs::parse_limited(line, 16).expect("parsed whole, not cut");
        if full.message.len() <= 16 {
            assert_eq!(cut, full);
        } else {
            let kept = cut.message.strip_suffix('…').expect("marked as cut");
            assert!(kept.len() <= 16 && full.message.starts_with(kept));
        }
        let _ = (logs::text(&cut), serde_json::to_string(&cut));
        let v: serde_json::Value = serde_json::from_str(line).expect("parsed before");
        if let Some(us) = v["__REALTIME_TIMESTAMP"]
            .as_str()
            .and_then(|s| s.parse::<i64>().ok())
        {
            if FOUR_DIGIT_YEARS.contains(&us.div_euclid(1_000_000)) {
                assert_eq!(config::time::parse_rfc3339_micros(&full.time), Ok(us));
            }
        }
    }
}

/// A cgroup file (memory.stat, cpu.stat, io.stat, *.pressure, cpuacct.stat, blkio…): every
/// reader of `stats::cgroup` on the same text.
pub fn cgroup(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for key in [
        "anon",
        "file",
        "oom_kill",
        "usage_usec",
        "user_usec",
        "system_usec",
        "throttled_usec",
        "rss",
        "cache",
        "throttled_time",
    ] {
        let _ = cgroup::keyed(&text, key);
    }
    let _ = cgroup::psi_some_total(&text);
    let _ = cgroup::io_stat(&text);
    let _ = cgroup::blkio(&text);
    let _ = cgroup::cpuacct_stat(&text);
}

/// A procfs file (stat, diskstats, net/dev, loadavg, meminfo, self/mountinfo, self/cgroup):
/// every reader of `stats::system` and `host` on the same text.
pub fn procfs(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some((_, busy, total)) = system::cpu(&text) {
        assert!(
            busy.is_finite() && (0.0..=total).contains(&busy),
            "{busy} of {total}"
        );
    }
    let _ = (
        system::diskstats(&text),
        system::netdev(&text),
        system::loadavg(&text),
    );
    if let Err(e) = meminfo::parse_meminfo(&text) {
        assert!(!format!("{e:#}").is_empty());
    }
    match cgroup_layout::parse_mountinfo(&text) {
        Ok(mounts) => {
            let _ = cgroup_layout::layout_from_mounts(&mounts).map_err(|e| e.to_string());
        }
        Err(e) => assert!(!format!("{e:#}").is_empty()),
    }
    let _ = cgroup_layout::cgroup_from_proc_self(&text);
}

#[cfg(test)]
mod tests;
