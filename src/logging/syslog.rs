//! `type = "syslog"`: each log line as an RFC 5424 message, one datagram on a Unix socket
//! (`/dev/log`, or the `socket` a syslog daemon listens on for us):
//!
//! ```text
//! <134>1 2025-06-01T12:00:00.123456Z gpu-1 llamactld 4242 instance - instance created instance=smol port=8001
//! ```
//!
//! PRI = facility × 8 + severity (error 3, warn 4, info 6, debug and trace 7), version 1, the
//! UTC timestamp with microseconds, this host's name, APP-NAME `llamactld`, PROCID the daemon's
//! pid, MSGID the component, no structured data (`-`: an SD-ID of our own would need an IANA
//! enterprise number; the fields are in MSG as `key=value`), then MSG, prefixed with a UTF-8 BOM
//! when it is not plain ASCII (§6.4). A message is cut to [`MAX_DATAGRAM`] bytes.
//!
//! Sent from the destination's thread (`ship.rs`), never from the thread that logs. A socket that
//! is missing or refuses is logged once, retried with backoff (the line waits; later ones queue,
//! then drop and are counted), and its recovery logged once.

use super::ship::{self, Backoff, Inbox, Record, ShipLayer, Shipper};
use crate::config::SyslogDestination;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

/// The longest datagram sent: rsyslog's and syslog-ng's default message size limit.
pub const MAX_DATAGRAM: usize = 8192;

pub const APP_NAME: &str = "llamactld";

/// How long one send may wait for a syslog daemon that does not read its socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// A header field: printable US-ASCII without spaces (others become `_`), at most `max`
/// characters, `-` (NILVALUE) when empty.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    if f.is_empty() {
        "-".into()
    } else {
        f
    }
}

/// One RFC 5424 message for a record.
pub fn message(r: &Record, facility: u8, host: &str, pid: u32) -> Vec<u8> {
    let pri = u32::from(facility) * 8 + u32::from(super::journald::priority(&r.level));
    let head = format!(
        "<{pri}>1 {} {} {APP_NAME} {pid} {} - ",
        r.timestamp(),
        header_field(host, 255),
        header_field(&r.component, 32),
    );
    let text = r.text();
    let mut out = Vec::with_capacity(head.len() + 3 + text.len());
    out.extend_from_slice(head.as_bytes());
    if !text.is_ascii() {
        out.extend_from_slice("\u{feff}".as_bytes());
    }
    let room = MAX_DATAGRAM.saturating_sub(out.len());
    let mut cut = text.len().min(room);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    out.extend_from_slice(&text.as_bytes()[..cut]);
    out
}

/// Starts the destination's thread; the layer hands it every line.
pub fn start(cfg: &SyslogDestination, name: String) -> io::Result<(ShipLayer, Shipper)> {
    let cfg = cfg.clone();
    let label = name.clone();
    ship::start(name, "syslog", cfg.queue_size, move |inbox: &Inbox| {
        run(&cfg, &label, inbox)
    })
}

fn connect(path: &Path) -> io::Result<UnixDatagram> {
    let s = UnixDatagram::unbound()?;
    s.connect(path)?;
    s.set_write_timeout(Some(SEND_TIMEOUT))?;
    Ok(s)
}

fn run(cfg: &SyslogDestination, name: &str, inbox: &Inbox) {
    let host = ship::host_name();
    let pid = std::process::id();
    let facility = cfg.facility.code();
    let mut sock: Option<UnixDatagram> = None;
    let mut failing = false;
    let mut backoff = Backoff::new(Duration::from_secs(30));
    loop {
        let Some(r) = inbox.next(Duration::from_secs(1)) else {
            if inbox.stopping() {
                return;
            }
            continue;
        };
        let msg = message(&r, facility, &host, pid);
        loop {
            let sent = match &sock {
                Some(s) => s.send(&msg).map(drop),
                None => connect(&cfg.socket).and_then(|s| {
                    let r = s.send(&msg).map(drop);
                    sock = Some(s);
                    r
                }),
            };
            match sent {
                Ok(()) => {
                    if failing {
                        tracing::info!(
                            component = "logging",
                            destination = name,
                            socket = %cfg.socket.display(),
                            "the syslog socket takes log lines again"
                        );
                        failing = false;
                    }
                    backoff.reset();
                    break;
                }
                // Too long for this socket's buffer: this line only.
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    inbox.dropped.inc();
                    break;
                }
                Err(e) => {
                    sock = None;
                    if !failing {
                        tracing::warn!(
                            component = "logging",
                            destination = name,
                            socket = %cfg.socket.display(),
                            error = %e,
                            "cannot send log lines to the syslog socket; retrying with backoff (lines that do not fit the queue are counted in llamactl_log_shipping_dropped_total)"
                        );
                        failing = true;
                    }
                    if inbox.stopping() {
                        inbox.dropped.inc();
                        return;
                    }
                    inbox.sleep(backoff.step());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SyslogDestination, SyslogFacility};
    use crate::logging::ship::tests::records;
    use std::time::Instant;
    use tracing_subscriber::layer::SubscriberExt;

    /// Splits an RFC 5424 message into PRI, VERSION, TIMESTAMP, HOSTNAME, APP-NAME, PROCID,
    /// MSGID, STRUCTURED-DATA (NILVALUE only, as we send) and MSG, checking each field's syntax.
    pub fn parse(m: &[u8]) -> (u32, Vec<String>, String) {
        let text = String::from_utf8(m.to_vec()).expect("UTF-8");
        let rest = text.strip_prefix('<').expect("PRI opens with <");
        let (pri, rest) = rest.split_once('>').expect("PRI closes with >");
        assert!(
            (1..=3).contains(&pri.len()) && pri.bytes().all(|b| b.is_ascii_digit()),
            "{pri}"
        );
        assert!(
            pri == "0" || !pri.starts_with('0'),
            "PRI {pri} has a leading zero"
        );
        let pri: u32 = pri.parse().unwrap();
        assert!(pri <= 191);
        let mut parts = rest.splitn(8, ' ');
        let mut header = Vec::new();
        for (what, max) in [
            ("VERSION", 2),
            ("TIMESTAMP", 32),
            ("HOSTNAME", 255),
            ("APP-NAME", 48),
            ("PROCID", 128),
            ("MSGID", 32),
            ("STRUCTURED-DATA", 1),
        ] {
            let f = parts.next().unwrap_or_else(|| panic!("no {what}"));
            assert!(!f.is_empty() && f.len() <= max, "{what} {f:?}");
            assert!(f.bytes().all(|b| (33..=126).contains(&b)), "{what} {f:?}");
            header.push(f.to_string());
        }
        assert_eq!(header[0], "1", "VERSION");
        assert_eq!(header[6], "-", "STRUCTURED-DATA");
        let msg = parts.next().unwrap_or_default().to_string();
        let msg = msg
            .strip_prefix('\u{feff}')
            .map_or(msg.clone(), str::to_string);
        (pri, header, msg)
    }

    #[test]
    fn the_message_has_every_rfc5424_field() {
        let r = &records(
            || tracing::warn!(target: "llamactl::instance::supervisor", llamactl_instance = "smol", error = "boom", "instance start failed"),
        )[0];
        let m = message(r, SyslogFacility::Local0.code(), "gpu 1", 4242);
        let (pri, h, msg) = parse(&m);
        assert_eq!(pri, 16 * 8 + 4);
        assert_eq!(h[1], r.timestamp());
        assert_eq!(
            crate::config::time::parse_rfc3339_micros(&h[1]).unwrap(),
            r.time_us
        );
        assert_eq!(h[2], "gpu_1");
        assert_eq!(h[3], "llamactld");
        assert_eq!(h[4], "4242");
        assert_eq!(h[5], "instance");
        assert_eq!(msg, "instance start failed instance=smol error=boom");
    }

    #[test]
    fn non_ascii_gets_a_bom_and_long_messages_are_cut() {
        let r = &records(|| tracing::error!("température {}", "x".repeat(20_000)))[0];
        let m = message(r, 3, "h", 1);
        assert_eq!(m.len(), MAX_DATAGRAM);
        assert_eq!(parse(&m).0, 3 * 8 + 3);
        let s = String::from_utf8(m).unwrap();
        assert!(
            s.contains(" logging - \u{feff}température "),
            "{}",
            &s[..80]
        );
        let r = &records(|| tracing::debug!(target: "zbus::conn", "plain"))[0];
        let s = String::from_utf8(message(r, 1, "", 1)).unwrap();
        assert!(
            s.starts_with("<15>1 ") && s.contains(" - llamactld 1 zbus - plain"),
            "{s}"
        );
    }

    /// A socket bound by the test receives, from the destination's thread, one well-formed
    /// message per line; a socket that appears late gets the lines that waited.
    #[test]
    fn a_datagram_socket_receives_rfc5424_lines() {
        let dir = std::env::temp_dir().join(format!("llamactl-syslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.sock");
        let _ = std::fs::remove_file(&path);
        let cfg = SyslogDestination {
            facility: SyslogFacility::Local3,
            socket: path.clone(),
            ..Default::default()
        };
        let (layer, shipper) = start(&cfg, "syslog".into()).unwrap();
        let sub = tracing_subscriber::registry().with(layer);
        let _g = tracing::subscriber::set_default(sub);
        // No socket yet: the line waits (the failure is logged on the shipping thread).
        tracing::info!(target: "llamactl::daemon", "before the socket");
        std::thread::sleep(Duration::from_millis(200));
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tracing::error!(target: "llamactl::http::serve", address = "127.0.0.1:1", "cannot listen");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < 2 {
            let n = rx.recv(&mut buf).expect("a datagram within the backoff");
            got.push(parse(&buf[..n]));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        for (pri, h, _) in &got {
            assert!(*pri == 19 * 8 + 6 || *pri == 19 * 8 + 3, "{pri}");
            let t = crate::config::time::parse_rfc3339_micros(&h[1]).unwrap();
            assert!((now - t).abs() < 60_000_000, "{}", h[1]);
            assert_eq!(h[2], header_field(&ship::host_name(), 255));
            assert_eq!(h[3], "llamactld");
            assert_eq!(h[4], std::process::id().to_string());
        }
        assert_eq!(got[0].1[5], "daemon");
        assert_eq!(got[0].2, "before the socket");
        assert_eq!(got[1].0, 19 * 8 + 3);
        assert_eq!(got[1].1[5], "http");
        assert_eq!(got[1].2, "cannot listen address=127.0.0.1:1");
        let t = Instant::now();
        shipper.close(Instant::now() + Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(shipper.dropped.get(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
