//! A tracing layer speaking journald's native protocol, so every line carries real fields
//! (`PRIORITY`, `CODE_FILE`, `CODE_LINE`, `LLAMACTL_COMPONENT`, the event's own fields) that
//! `journalctl FIELD=value` can match. Written here rather than taken from `tracing-journald` because
//! that crate cannot derive a per-module component field and does not say when the socket is gone.
//! No timestamps: journald adds its own.

use std::fmt::Write as _;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Values longer than this are cut: a datagram must fit the socket's buffer, and a log line that
/// long is a bug to be shown, not a payload to be kept.
const MAX_VALUE: usize = 48 * 1024;

pub struct JournaldLayer {
    socket: UnixDatagram,
    identifier: String,
}

impl JournaldLayer {
    /// Connects to the journal socket; fails when there is no journald (the caller falls back).
    pub fn connect(socket: &Path, identifier: &str) -> io::Result<Self> {
        let s = UnixDatagram::unbound()?;
        s.connect(socket)?;
        Ok(Self {
            socket: s,
            identifier: identifier.to_string(),
        })
    }
}

/// journald priorities, which are syslog severities (RFC 5424 §6.2.1): the syslog destination
/// uses them too.
pub(super) fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// `llamactl::systemd::monitor` → `systemd`; a dependency's target → its crate name.
pub fn component_of(target: &str) -> &str {
    let mut parts = target.split("::");
    match (parts.next(), parts.next()) {
        (Some("llamactl"), Some(c)) => c,
        (Some(first), _) => first,
        _ => target,
    }
}

/// Journal field names are `[A-Z0-9_]`, not starting with `_` or a digit.
fn field_name(name: &str) -> Option<String> {
    let up: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let up = up.trim_start_matches(|c: char| c == '_' || c.is_ascii_digit());
    (!up.is_empty() && up.len() <= 64).then(|| up.to_string())
}

/// Appends one `KEY=value` field of the native protocol (binary-safe form for multi-line values).
pub fn put(buf: &mut Vec<u8>, key: &str, value: &str) {
    let mut v = value;
    if v.len() > MAX_VALUE {
        let mut cut = MAX_VALUE;
        while !v.is_char_boundary(cut) {
            cut -= 1;
        }
        v = &v[..cut];
    }
    buf.extend_from_slice(key.as_bytes());
    if v.contains('\n') {
        // Binary-safe form: KEY\n<u64 LE length><value>\n
        buf.push(b'\n');
        buf.extend_from_slice(&(v.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(v.as_bytes());
    buf.push(b'\n');
}

#[derive(Default)]
struct Fields {
    message: String,
    component: Option<String>,
    /// ` key=value` for each extra field, appended to MESSAGE.
    suffix: String,
    /// (journal name, value); also echoed into MESSAGE so `journalctl -u` shows them.
    extra: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Fields {
    fn record(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            "component" => self.component = Some(value),
            name => {
                if let Some(key) = field_name(name) {
                    let _ = write!(self.suffix, " {name}={value}");
                    self.extra.push((key, value));
                }
            }
        }
    }
}

/// Builds one journal entry; separate from sending so it is unit-testable.
pub fn entry(event: &Event<'_>, identifier: &str) -> Vec<u8> {
    let meta = event.metadata();
    let mut f = Fields::default();
    event.record(&mut f);
    let mut buf = Vec::with_capacity(256);
    let message = format!("{}{}", f.message, f.suffix);
    put(&mut buf, "MESSAGE", message.trim_start());
    put(&mut buf, "PRIORITY", &priority(meta.level()).to_string());
    put(&mut buf, "SYSLOG_IDENTIFIER", identifier);
    let component = f
        .component
        .unwrap_or_else(|| component_of(meta.target()).to_string());
    put(&mut buf, "LLAMACTL_COMPONENT", &component);
    put(&mut buf, "TARGET", meta.target());
    if let Some(file) = meta.file() {
        put(&mut buf, "CODE_FILE", file);
    }
    if let Some(line) = meta.line() {
        put(&mut buf, "CODE_LINE", &line.to_string());
    }
    if let Some(module) = meta.module_path() {
        put(&mut buf, "CODE_FUNC", module);
    }
    for (k, v) in f.extra {
        // Our own fields must not shadow journald's trusted or reserved ones.
        let key = match k.as_str() {
            "MESSAGE" | "PRIORITY" | "SYSLOG_IDENTIFIER" | "TARGET" | "LLAMACTL_COMPONENT" => {
                format!("LLAMACTL_{k}")
            }
            _ if k.starts_with("CODE_") => format!("LLAMACTL_{k}"),
            _ => k,
        };
        put(&mut buf, &key, &v);
    }
    buf
}

impl<S: Subscriber> Layer<S> for JournaldLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let buf = entry(event, &self.identifier);
        // A full journal must never block or crash the daemon: drop the line.
        let _ = self.socket.send(&buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    struct Capture(Arc<Mutex<Vec<Vec<u8>>>>);
    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            self.0.lock().unwrap().push(entry(event, "llamactld"));
        }
    }

    fn capture(f: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sub = tracing_subscriber::registry().with(Capture(out.clone()));
        tracing::subscriber::with_default(sub, f);
        let v = out.lock().unwrap();
        String::from_utf8_lossy(&v.concat()).into_owned()
    }

    #[test]
    fn fields_priority_and_component() {
        let e = capture(
            || tracing::warn!(target: "llamactl::systemd::monitor", version = "252", "lost bus"),
        );
        assert!(e.contains("MESSAGE=lost bus version=252\n"), "{e}");
        assert!(e.contains("PRIORITY=4\n"));
        assert!(e.contains("LLAMACTL_COMPONENT=systemd\n"));
        assert!(e.contains("VERSION=252\n"));
        assert!(e.contains("CODE_FILE=src/logging/journald.rs\n"));
        assert!(e.contains("CODE_LINE="));
    }

    #[test]
    fn explicit_component_and_reserved_names() {
        let e = capture(|| tracing::error!(component = "config", priority = 1, "bad"));
        assert!(e.contains("LLAMACTL_COMPONENT=config\n"), "{e}");
        assert!(e.contains("PRIORITY=3\n"));
        assert!(e.contains("LLAMACTL_PRIORITY=1\n"));
    }

    #[test]
    fn multiline_values_use_the_binary_form() {
        let e = capture(|| tracing::info!("a\nb"));
        let mut expect = b"MESSAGE\n".to_vec();
        expect.extend_from_slice(&3u64.to_le_bytes());
        expect.extend_from_slice(b"a\nb\n");
        assert!(
            e.as_bytes().windows(expect.len()).any(|w| w == expect),
            "{e:?}"
        );
    }

    #[test]
    fn names() {
        assert_eq!(component_of("llamactl::http::health"), "http");
        assert_eq!(component_of("zbus::connection"), "zbus");
        assert_eq!(field_name("request_id").as_deref(), Some("REQUEST_ID"));
        assert_eq!(field_name("_x").as_deref(), Some("X"));
        assert_eq!(field_name("__"), None);
    }
}
