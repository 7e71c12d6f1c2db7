//! The module layering, checked: each top-level module may use only modules of a lower layer,
//! so the import graph has no circle. A test reads the sources (`crate::<module>` paths).

/// Layers, lowest first. A module may use the modules of the layers before its own.
pub const LAYERS: &[&[&str]] = &[
    &["host", "fsutil"],
    &["config"],
    &["logging", "stats", "systemd", "auth", "telemetry"],
    &["instance", "metrics"],
    &["proxy", "audit", "debug"],
    &["http"],
    &["daemon", "cli", "fuzzing"],
];

#[cfg(test)]
mod tests {
    use super::LAYERS;
    use std::path::Path;

    fn layer(module: &str) -> Option<usize> {
        LAYERS.iter().position(|l| l.contains(&module))
    }

    fn sources(p: &Path, out: &mut Vec<std::path::PathBuf>) {
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                sources(&e.unwrap().path(), out);
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p.to_path_buf());
        }
    }

    #[test]
    fn modules_use_only_lower_layers() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut bad = Vec::new();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_string();
            if ["lib", "layering", "bin"].contains(&name.as_str()) {
                continue;
            }
            let Some(mine) = layer(&name) else {
                panic!("module {name} is in no layer of src/layering.rs");
            };
            let mut files = Vec::new();
            sources(&path, &mut files);
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap();
                assert!(
                    !text.contains("crate::{"),
                    "{}: name modules one by one",
                    f.display()
                );
                for (i, _) in text.match_indices("crate::") {
                    let used: String = text[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if used == name {
                        continue;
                    }
                    match layer(&used) {
                        Some(l) if l < mine => {}
                        _ => bad.push(format!("{} uses crate::{used}", f.display())),
                    }
                }
            }
        }
        bad.sort();
        bad.dedup();
        assert!(
            bad.is_empty(),
            "imports against the layering:\n{}",
            bad.join("\n")
        );
    }
}
