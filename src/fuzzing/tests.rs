//! The fuzzers' findings as regression tests: every file of `fuzz/corpus/<target>/` (seeds and
//! what the fuzzer kept) and `fuzz/artifacts/<target>/` (crash inputs, kept once fixed) goes
//! through its target. A target without a corpus fails, so the replay cannot pass by finding
//! nothing.

use super::TARGETS;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// The names of the entries of `dir` (without `.rs` for target files).
fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    out.sort();
    out
}

#[test]
fn corpora_and_crash_inputs_replay_without_a_panic() {
    let mut failed = Vec::new();
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty");
        let artifacts = fuzz_dir().join("artifacts").join(name);
        let crashes = if artifacts.is_dir() {
            files(&artifacts)
        } else {
            Vec::new()
        };
        for file in corpus.iter().chain(&crashes) {
            let data = std::fs::read(file).unwrap();
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                failed.push(file.display().to_string());
            }
            replayed += 1;
        }
    }
    assert!(
        failed.is_empty(),
        "inputs that panic:\n{}",
        failed.join("\n")
    );
    assert!(replayed >= TARGETS.len());
}

/// `TARGETS`, the cargo-fuzz targets and the corpus directories name the same targets, so a new
/// target cannot go unreplayed (or a corpus unused).
#[test]
fn every_target_has_a_fuzz_target_and_a_corpus() {
    let mut want: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    want.sort();
    assert_eq!(
        names(&fuzz_dir().join("fuzz_targets")),
        want,
        "fuzz/fuzz_targets"
    );
    assert_eq!(names(&fuzz_dir().join("corpus")), want, "fuzz/corpus");
    let artifacts = fuzz_dir().join("artifacts");
    if artifacts.is_dir() {
        for a in names(&artifacts) {
            assert!(want.contains(&a), "fuzz/artifacts/{a} is no target's");
        }
    }
}

/// `durations` names every duration of the config, so a new one is held to a year as well: as
/// many as the `pub …: HumanDuration` fields of src/config.
#[test]
fn every_config_duration_is_checked() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    let fields: usize = files(&dir)
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            text.lines()
                .filter(|l| l.trim_start().starts_with("pub ") && l.contains(": HumanDuration"))
                .count()
        })
        .sum();
    // Destinations' durations are per destination: one of each kind that has any.
    let mut c = crate::config::Config::default();
    c.logging
        .destinations
        .push(crate::config::LogDestination::Elasticsearch(
            Default::default(),
        ));
    assert_eq!(super::durations(&c).len(), fields);
}
