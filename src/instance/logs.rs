//! An instance's log, read from the journal with `journalctl -u <unit> -o json` (the same
//! entries `journalctl -u` shows an operator: the backend's output and systemd's messages about
//! the unit). Running journalctl keeps libsystemd out of the daemon and follows the journal's
//! own rotation and permissions rules.
//!
//! Bounded (`[instances] logs_*`): at most `logs_max_lines` entries per answer, messages cut at
//! `logs_max_entry_bytes` (journalctl already gives fields over 4096 bytes as null, and only
//! the fields shown are asked for), and at most `logs_max_followers` `journalctl -f` at once.

use serde::Serialize;
use serde_json::Value;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogEntry {
    /// RFC 3339, UTC, microseconds.
    pub time: String,
    pub priority: u8,
    pub level: &'static str,
    pub identifier: String,
    pub pid: Option<u32>,
    pub message: String,
}

fn level(p: u8) -> &'static str {
    match p {
        0 => "emerg",
        1 => "alert",
        2 => "crit",
        3 => "err",
        4 => "warning",
        5 => "notice",
        6 => "info",
        _ => "debug",
    }
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), to print timestamps
/// without a date-time dependency.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub fn rfc3339(us: u64) -> String {
    let secs = (us / 1_000_000) as i64;
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        us % 1_000_000
    )
}

fn field(v: &Value, k: &str) -> Option<String> {
    match v.get(k)? {
        Value::String(s) => Some(s.clone()),
        // journalctl prints non-UTF-8 or binary values as byte arrays.
        Value::Array(b) => Some(
            String::from_utf8_lossy(
                &b.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u8)
                    .collect::<Vec<_>>(),
            )
            .into_owned(),
        ),
        _ => None,
    }
}

/// What a message journalctl left out (null: over its 4096-byte field limit) reads as.
pub const OMITTED: &str = "[message over 4096 bytes, not shown by journalctl]";

/// Cuts `message` to at most `max` bytes (at a character boundary), marked with `…`.
fn cut(mut message: String, max: usize) -> String {
    if message.len() <= max {
        return message;
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push('…');
    message
}

/// One `journalctl -o json` line → an entry, its message at most `max_message` bytes.
pub fn parse_limited(line: &str, max_message: usize) -> Option<LogEntry> {
    let mut e = parse(line)?;
    e.message = cut(e.message, max_message);
    Some(e)
}

/// One `journalctl -o json` line → an entry.
pub fn parse(line: &str) -> Option<LogEntry> {
    let v: Value = serde_json::from_str(line).ok()?;
    let us: u64 = field(&v, "__REALTIME_TIMESTAMP")?.parse().ok()?;
    let priority = field(&v, "PRIORITY")
        .and_then(|p| p.parse().ok())
        .unwrap_or(6);
    Some(LogEntry {
        time: rfc3339(us),
        priority,
        level: level(priority),
        identifier: field(&v, "SYSLOG_IDENTIFIER")
            .or_else(|| field(&v, "_COMM"))
            .unwrap_or_default(),
        pid: field(&v, "_PID").and_then(|p| p.parse().ok()),
        message: match v.get("MESSAGE") {
            Some(Value::Null) => OMITTED.to_string(),
            _ => field(&v, "MESSAGE").unwrap_or_default(),
        },
    })
}

/// `2026-11-25T01:02:03.000000Z info llama-server[42]: text` — journalctl's short format with
/// the priority spelled out.
pub fn text(e: &LogEntry) -> String {
    let pid = e.pid.map(|p| format!("[{p}]")).unwrap_or_default();
    format!(
        "{} {} {}{}: {}",
        e.time, e.level, e.identifier, pid, e.message
    )
}

fn journalctl(unit: &str, lines: usize, follow: bool) -> Command {
    let mut c = Command::new("journalctl");
    c.args([
        "--no-pager",
        "-o",
        "json",
        // Only what an entry shows (the timestamps come anyway).
        "--output-fields=MESSAGE,PRIORITY,SYSLOG_IDENTIFIER,_COMM,_PID",
        "-u",
        unit,
        "-n",
        &lines.to_string(),
    ]);
    if follow {
        c.arg("-f");
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.kill_on_drop(true);
    c
}

/// The last `lines` entries, messages cut at `max_message` bytes.
pub async fn tail(unit: &str, lines: usize, max_message: usize) -> anyhow::Result<Vec<LogEntry>> {
    let out = journalctl(unit, lines, false)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("running journalctl: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "journalctl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| parse_limited(l, max_message))
        .collect())
}

/// `follow=true` streams open now (process-wide; checked against the config in force).
static FOLLOWERS: AtomicU32 = AtomicU32::new(0);

/// One open follow stream's place under `logs_max_followers`, given back when dropped.
pub struct FollowSlot(());

impl FollowSlot {
    /// A place, if fewer than `max` streams are open.
    pub fn take(max: u32) -> Option<Self> {
        FOLLOWERS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| FollowSlot(()))
    }
}

impl Drop for FollowSlot {
    fn drop(&mut self) {
        FOLLOWERS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Follows the journal: the last `lines` entries, then new ones as they come, messages cut at
/// `max_message` bytes. Dropping the stream kills journalctl (a client that goes away ends the
/// follow) and gives back its `slot`.
pub fn follow(
    unit: &str,
    lines: usize,
    max_message: usize,
    slot: FollowSlot,
) -> anyhow::Result<impl futures_util::Stream<Item = LogEntry> + Send + 'static> {
    let mut child: Child = journalctl(unit, lines, true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("running journalctl: {e}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("journalctl has no stdout"))?;
    let reader = BufReader::new(stdout).lines();
    Ok(futures_util::stream::unfold(
        (reader, child, slot),
        move |(mut reader, child, slot)| async move {
            loop {
                match reader.next_line().await {
                    Ok(Some(l)) => {
                        if let Some(e) = parse_limited(&l, max_message) {
                            return Some((e, (reader, child, slot)));
                        }
                    }
                    _ => return None,
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_795_570_460_945_142),
            "2026-11-25T01:34:20.945142Z"
        );
        assert_eq!(rfc3339(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn parses_journal_json() {
        let l = r#"{"__REALTIME_TIMESTAMP":"1795570460945142","PRIORITY":"4","SYSLOG_IDENTIFIER":"llamactl-smol","_PID":"42","MESSAGE":"hello"}"#;
        let e = parse(l).unwrap();
        assert_eq!(e.level, "warning");
        assert_eq!(
            text(&e),
            "2026-11-25T01:34:20.945142Z warning llamactl-smol[42]: hello"
        );
        let bin = r#"{"__REALTIME_TIMESTAMP":"1","MESSAGE":[104,105]}"#;
        assert_eq!(parse(bin).unwrap().message, "hi");
        assert!(parse("not json").is_none());
    }

    #[test]
    fn long_messages_are_cut_and_omitted_ones_say_so() {
        let l = r#"{"__REALTIME_TIMESTAMP":"1","MESSAGE":"ääääb"}"#;
        // 5 bytes: "ää" and half an "ä" -> cut at the boundary.
        assert_eq!(parse_limited(l, 5).unwrap().message, "ää…");
        assert_eq!(parse_limited(l, 100).unwrap().message, "ääääb");
        let null = r#"{"__REALTIME_TIMESTAMP":"1","MESSAGE":null}"#;
        assert_eq!(parse(null).unwrap().message, OMITTED);
    }

    #[test]
    fn follow_slots_stop_at_the_limit_and_come_back() {
        let a = FollowSlot::take(2).expect("first");
        let b = FollowSlot::take(2).expect("second");
        assert!(FollowSlot::take(2).is_none());
        drop(a);
        let c = FollowSlot::take(2).expect("freed");
        drop((b, c));
    }
}
