//! Instance specs on disk: one JSON file per instance under `<state_dir>/instances/`, each write
//! atomic (temp file, fsync, rename, fsync the directory), so a crash or power cut leaves either
//! the old file or the new one, never half of either. A file that does not parse is reported and
//! left alone: it is never dropped, and a create under its name is refused until an operator has
//! looked at it.

use anyhow::Context as _;
use serde::{de::DeserializeOwned, Serialize};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// A spec file that could not be read or parsed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Corrupt {
    pub name: String,
    pub path: PathBuf,
    pub error: String,
}

/// What `load_all` found: parsed specs by file name, and the files that failed.
pub type Loaded<T> = (Vec<(String, T)>, Vec<Corrupt>);

pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating) `<state_dir>/instances`.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let dir = state_dir.join("instances");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of an instance. `name` must already be validated (no `/`, no leading dot).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Reads every `*.json`; returns the parsed ones and the ones that failed. Hidden files
    /// (our temp files) are skipped.
    pub fn load_all<T: DeserializeOwned>(&self) -> anyhow::Result<Loaded<T>> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        let entries =
            fs::read_dir(&self.dir).with_context(|| format!("listing {}", self.dir.display()))?;
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            if file.starts_with('.') {
                continue;
            }
            let Some(name) = file.strip_suffix(".json") else {
                continue;
            };
            // An error names the field (`options.memory_max: ...`) as well as the line.
            let parsed = fs::read(&path).map_err(|e| e.to_string()).and_then(|b| {
                let mut de = serde_json::Deserializer::from_slice(&b);
                serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
                    let path = e.path().to_string();
                    match path.as_str() {
                        "" | "." => e.inner().to_string(),
                        p => format!("{p}: {}", e.inner()),
                    }
                })
            });
            match parsed {
                Ok(spec) => ok.push((name.to_string(), spec)),
                Err(error) => bad.push(Corrupt {
                    name: name.to_string(),
                    path: path.clone(),
                    error,
                }),
            }
        }
        Ok((ok, bad))
    }

    /// Writes atomically (see `fsutil::write_atomic`). Blocking (fsync): the supervisor runs
    /// on the daemon's main runtime, never on an HTTP worker (`http::detach`, on-demand starts
    /// through `Supervisor::set_spawner`), and a write is not split from the memory update
    /// that follows it by an await, so a cancelled operation cannot leave the two apart.
    pub fn save<T: Serialize>(&self, name: &str, spec: &T) -> anyhow::Result<()> {
        let (path, body) = self.encode(name, spec)?;
        write(&path, &body)
    }

    fn encode<T: Serialize>(&self, name: &str, spec: &T) -> anyhow::Result<(PathBuf, Vec<u8>)> {
        let mut body = serde_json::to_vec_pretty(spec).context("serialising the spec")?;
        body.push(b'\n');
        Ok((self.path(name), body))
    }

    /// Removes an instance's file (and fsyncs the directory so the removal is durable).
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        remove(&self.path(name), &self.dir)
    }

    /// Removes the temp files a crash left behind (see `fsutil::clean_temp_files`).
    pub fn clean_temp_files(&self) -> usize {
        crate::fsutil::clean_temp_files(&self.dir)
    }
}

fn write(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    // 0600: specs can hold secrets (environment values, tokens).
    crate::fsutil::write_atomic(path, body, 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

fn remove(path: &Path, dir: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("llamactl-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn save_load_remove_round_trip() {
        let d = tmpdir("rt");
        let s = Store::open(&d).unwrap();
        s.save("a", &json!({"x": 1})).unwrap();
        s.save("b", &json!({"x": 2})).unwrap();
        s.save("a", &json!({"x": 3})).unwrap();
        let (ok, bad) = s.load_all::<Value>().unwrap();
        assert!(bad.is_empty());
        assert_eq!(
            ok,
            vec![("a".into(), json!({"x": 3})), ("b".into(), json!({"x": 2}))]
        );
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        s.remove("a").unwrap();
        s.remove("a").unwrap();
        assert_eq!(s.load_all::<Value>().unwrap().0.len(), 1);
    }

    #[test]
    fn corrupt_files_are_reported_and_kept() {
        let d = tmpdir("corrupt");
        let s = Store::open(&d).unwrap();
        s.save("good", &json!({"x": 1})).unwrap();
        fs::write(s.path("bad"), b"{ not json").unwrap();
        fs::write(s.dir().join(".bad.json.tmp-1-1"), b"partial").unwrap();
        let (ok, bad) = s.load_all::<Value>().unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].name, "bad");
        assert!(bad[0].error.contains("line 1"), "{}", bad[0].error);
        assert_eq!(fs::read(s.path("bad")).unwrap(), b"{ not json");
    }
}
