//! Durable file replacement, shared by every state file the daemon writes (instance specs,
//! `keys.json`): temp file in the same directory, fsync, rename over, fsync the directory. A
//! crash or power cut leaves either the old file or the new one, never half of either.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// What names a temp file, after `.<name>`.
const TMP_MARK: &str = ".tmp-";

/// Replaces `path` with `body`, created with permission bits `mode` (the temp file is created
/// with them, so the content is never readable more widely, even for a moment). Temp files are
/// hidden (`.<name>.tmp-<pid>-<n>`) so directory scans skip them.
pub fn write_atomic(path: &Path, body: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}{TMP_MARK}{}-{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Whether `file` is one of `write_atomic`'s temp files.
pub fn is_temp_name(file: &str) -> bool {
    file.starts_with('.') && file.contains(TMP_MARK)
}

/// Removes the temp files a crash between `write_atomic`'s create and rename left in `dir`.
/// They are never read (scans skip hidden files), only piled up, one per crash. Called at
/// start, before anything writes there. Returns how many went.
pub fn clean_temp_files(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(is_temp_name))
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_left_by_a_crash_are_cleaned_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("llamactl-fsutil-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir");
        write_atomic(&dir.join("a.json"), b"{}", 0o600).expect("write");
        // What a crash after the create and before the rename leaves.
        fs::write(dir.join(".a.json.tmp-4242-7"), b"{\"half").expect("write");
        fs::write(dir.join(".hidden"), b"x").expect("write");
        assert_eq!(clean_temp_files(&dir), 1);
        let mut left: Vec<String> = fs::read_dir(&dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".hidden", "a.json"]);
        assert_eq!(clean_temp_files(&dir), 0);
        let _ = fs::remove_dir_all(&dir);
    }
}
