//! The audit file: JSON lines appended (`O_APPEND`, 0600) and written before the action's
//! answer is sent; reopened on reload for logrotate. Before a mutation it is checked to still be
//! the file at its path, on a writable file system with room, so a removed file, a read-only
//! or full disk refuses the mutation instead of losing its record. Queries read it backwards.

use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Below this much free space the file counts as full: one more record must always fit.
const MIN_FREE_BYTES: u64 = 1 << 20;

pub struct AuditFile {
    path: PathBuf,
    file: Option<File>,
}

impl AuditFile {
    /// Opens (creating) the file; a failure leaves it closed, to be retried at the next check.
    pub fn new(path: PathBuf) -> (Self, Option<String>) {
        let mut f = Self { path, file: None };
        let err = f.reopen().err();
        (f, err)
    }

    /// A file that is off (`[audit] file = false`): never opened.
    pub fn new_closed(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes and opens the path again (after logrotate moved the file away).
    pub fn reopen(&mut self) -> Result<(), String> {
        self.file = None;
        if let Some(dir) = self.path.parent() {
            if !dir.exists() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
        }
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| format!("opening {}: {e}", self.path.display()))?;
        self.file = Some(f);
        Ok(())
    }

    /// Whether a record can be written now: the open file is still the one at the path (else
    /// it is reopened), and its file system is writable with room.
    pub fn check(&mut self) -> Result<(), String> {
        let same = match (&self.file, std::fs::metadata(&self.path)) {
            (Some(f), Ok(at_path)) => f
                .metadata()
                .is_ok_and(|m| m.dev() == at_path.dev() && m.ino() == at_path.ino()),
            _ => false,
        };
        if !same {
            self.reopen()?;
        }
        let Some(f) = &self.file else {
            return Err(format!("{} is not open", self.path.display()));
        };
        // SAFETY: fstatvfs fills the struct we own from a valid open descriptor.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatvfs(f.as_raw_fd(), &mut st) } != 0 {
            return Err(format!(
                "checking {}: {}",
                self.path.display(),
                io::Error::last_os_error()
            ));
        }
        if st.f_flag & libc::ST_RDONLY != 0 {
            return Err(format!(
                "{} is on a read-only file system",
                self.path.display()
            ));
        }
        let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
        if free < MIN_FREE_BYTES {
            return Err(format!(
                "{} has no room: {free} bytes free",
                self.path.display()
            ));
        }
        Ok(())
    }

    /// Appends one line, in one write; then fsyncs when asked.
    pub fn append(&mut self, line: &[u8], fsync: bool) -> Result<(), String> {
        self.check()?;
        let Some(f) = self.file.as_mut() else {
            return Err(format!("{} is not open", self.path.display()));
        };
        let mut write = || -> io::Result<()> {
            f.write_all(line)?;
            if fsync {
                f.sync_data()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            // A failed write may have left part of a line: reopen before the next one.
            self.file = None;
            format!("writing {}: {e}", self.path.display())
        })
    }
}

/// What a query asks for.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    /// An event name, or a prefix such as `instance` (every `instance.*`).
    pub event: Option<String>,
    pub actor: Option<String>,
    pub instance: Option<String>,
    pub outcome: Option<String>,
    pub limit: usize,
}

impl Query {
    fn matches(&self, v: &Value) -> bool {
        let s = |k: &str| v[k].as_str();
        if let Some(e) = &self.event {
            let name = s("event").unwrap_or("");
            let prefix = name
                .strip_prefix(e.as_str())
                .is_some_and(|rest| rest.starts_with('.'));
            if name != e && !prefix {
                return false;
            }
        }
        let eq = |want: &Option<String>, k: &str| want.as_deref().is_none_or(|w| s(k) == Some(w));
        if !eq(&self.actor, "actor")
            || !eq(&self.instance, "instance")
            || !eq(&self.outcome, "outcome")
        {
            return false;
        }
        if self.since_us.is_some() || self.until_us.is_some() {
            let Some(t) = s("time").and_then(|t| crate::config::time::parse_rfc3339_micros(t).ok())
            else {
                return false;
            };
            if self.since_us.is_some_and(|since| t < since) || self.until_us.is_some_and(|u| t > u)
            {
                return false;
            }
        }
        true
    }
}

/// How much of the file one query reads at most, from its end (a day of busy records is far
/// less; logrotate keeps the file small).
pub const SCAN_BUDGET: u64 = 64 << 20;

/// The newest records matching `q`, newest first, and whether the scan stopped at the budget
/// before the start of the file. A line that does not parse is skipped.
pub fn query(path: &Path, q: &Query) -> Result<(Vec<Value>, bool), String> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let len = f
        .metadata()
        .map_err(|e| format!("reading {}: {e}", path.display()))?
        .len();
    let stop = len.saturating_sub(SCAN_BUDGET);
    let mut pos = len;
    let mut out = Vec::new();
    // Bytes of a line whose start is still before `pos`.
    let mut carry: Vec<u8> = Vec::new();
    const CHUNK: u64 = 64 * 1024;
    while pos > stop && out.len() < q.limit {
        let start = pos.saturating_sub(CHUNK).max(stop);
        let mut buf = vec![0u8; (pos - start) as usize];
        f.seek(SeekFrom::Start(start))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        buf.extend_from_slice(&carry);
        pos = start;
        // Every line after the first newline of the chunk is complete (the first may not be).
        let first_nl = if pos == 0 {
            None
        } else {
            buf.iter().position(|b| *b == b'\n')
        };
        let (head, body) = match first_nl {
            Some(i) => buf.split_at(i + 1),
            None if pos == 0 => (&buf[..0], &buf[..]),
            None => {
                carry = buf;
                continue;
            }
        };
        for line in body.split(|b| *b == b'\n').rev() {
            if out.len() >= q.limit {
                break;
            }
            if line.is_empty() {
                continue;
            }
            if let Ok(v) = serde_json::from_slice::<Value>(line) {
                if q.matches(&v) {
                    out.push(v);
                }
            }
        }
        carry = head.strip_suffix(b"\n").unwrap_or(head).to_vec();
    }
    let truncated = pos > 0 && out.len() < q.limit;
    Ok((out, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("llamactl-audit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("sub/audit.log")
    }

    #[test]
    fn appends_private_lines_and_follows_the_path_after_rotation() {
        let p = tmp("rotate");
        let (mut f, err) = AuditFile::new(p.clone());
        assert!(err.is_none(), "{err:?}");
        f.append(b"{\"n\":1}\n", false).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // logrotate moves it away: the next record goes to a new file at the path.
        std::fs::rename(&p, p.with_extension("log.1")).unwrap();
        f.append(b"{\"n\":2}\n", true).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"n\":2}\n");
        assert_eq!(
            std::fs::read_to_string(p.with_extension("log.1")).unwrap(),
            "{\"n\":1}\n"
        );
    }

    #[test]
    fn a_removed_file_and_directory_are_made_again() {
        // (That a directory the daemon may not write to fails the check is shown under the
        // shipped unit, where root has no capabilities: tests/audit/failures.rs.)
        let p = tmp("gone");
        let (mut f, _) = AuditFile::new(p.clone());
        assert!(f.check().is_ok());
        std::fs::remove_dir_all(p.parent().unwrap().parent().unwrap()).unwrap();
        // The directory is recreated (as LogsDirectory= would have it).
        assert!(f.check().is_ok());
        assert!(p.exists());
    }

    #[test]
    fn queries_read_newest_first_across_chunks_with_filters() {
        let p = tmp("query");
        let (mut f, _) = AuditFile::new(p.clone());
        let mut lines = String::new();
        for i in 0..5000 {
            let ev = if i % 2 == 0 {
                "instance.create"
            } else {
                "auth.failure"
            };
            let line = json!({"time": crate::config::time::format_rfc3339_micros(1_000_000 * i),
                "event": ev, "actor": format!("key:k{}", i % 3), "instance": format!("i{i}"),
                "outcome": "success", "pad": "x".repeat(40)});
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        f.append(lines.as_bytes(), false).unwrap();
        f.append(b"not json\n", false).unwrap();
        let q = |q: Query| query(&p, &q).unwrap();
        let (all, truncated) = q(Query {
            limit: 3,
            ..Default::default()
        });
        assert!(!truncated);
        let names: Vec<_> = all
            .iter()
            .map(|v| v["instance"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["i4999", "i4998", "i4997"]);
        let (creates, _) = q(Query {
            event: Some("instance".into()),
            limit: 10_000,
            ..Default::default()
        });
        assert_eq!(creates.len(), 2500);
        assert!(creates.iter().all(|v| v["event"] == "instance.create"));
        let (window, _) = q(Query {
            since_us: Some(1_000_000 * 10),
            until_us: Some(1_000_000 * 19),
            actor: Some("key:k1".into()),
            limit: 100,
            ..Default::default()
        });
        let got: Vec<_> = window
            .iter()
            .map(|v| v["instance"].as_str().unwrap())
            .collect();
        assert_eq!(got, ["i19", "i16", "i13", "i10"]);
        // No prefix match inside a name.
        let (none, _) = q(Query {
            event: Some("inst".into()),
            limit: 10,
            ..Default::default()
        });
        assert!(none.is_empty());
        assert_eq!(
            query(
                &p.with_extension("none"),
                &Query {
                    limit: 1,
                    ..Default::default()
                }
            )
            .unwrap()
            .0
            .len(),
            0
        );
    }
}
