//! System memory from `/proc/meminfo`.
//!
//! Parsed by hand rather than with `procfs::Meminfo`: that parser insists on two dozen fields the
//! daemon never looks at, so a trimmed or old-kernel file would fail for no reason, and its errors
//! do not say which line was wrong.

use std::collections::HashMap;

use anyhow::{anyhow, Context};

use super::HostPaths;

/// Memory totals in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemInfo {
    pub total_bytes: u64,
    /// The kernel's estimate of memory available to new workloads without swapping. This, not
    /// `MemFree`, is what decides whether another model fits: page cache is reclaimable.
    pub available_bytes: u64,
}

/// Reads `<procfs>/meminfo`.
pub fn read_meminfo(paths: &HostPaths) -> anyhow::Result<MemInfo> {
    let path = paths.proc("meminfo");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_meminfo(&text).with_context(|| format!("parsing {}", path.display()))
}

pub(crate) fn parse_meminfo(text: &str) -> anyhow::Result<MemInfo> {
    let mut fields = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (key, rest) = line
            .split_once(':')
            .ok_or_else(|| anyhow!("line {}: expected `Key: value`, got {line:?}", index + 1))?;
        let mut words = rest.split_whitespace();
        let value: u64 = words
            .next()
            .ok_or_else(|| anyhow!("line {}: {key} has no value", index + 1))?
            .parse()
            .with_context(|| {
                format!("line {}: {key} value is not a number: {line:?}", index + 1)
            })?;
        // Everything but the HugePages_* counters is in kB (which the kernel means as KiB).
        let bytes = match words.next() {
            Some("kB") => value
                .checked_mul(1024)
                .ok_or_else(|| anyhow!("line {}: {key} overflows u64 bytes", index + 1))?,
            _ => value,
        };
        fields.insert(key.trim(), bytes);
    }

    let get = |key: &str| fields.get(key).copied();
    let total_bytes = get("MemTotal").ok_or_else(|| anyhow!("no MemTotal line"))?;
    // MemAvailable appeared in Linux 3.14. Before that, free + buffers + page cache is the usual
    // approximation (what `free` printed as "-/+ buffers/cache").
    let available_bytes = match get("MemAvailable") {
        Some(available) => available,
        None => match (get("MemFree"), get("Buffers"), get("Cached")) {
            (Some(free), Some(buffers), Some(cached)) => free
                .saturating_add(buffers)
                .saturating_add(cached)
                .min(total_bytes),
            _ => {
                return Err(anyhow!(
                    "no MemAvailable line, and MemFree/Buffers/Cached are not all present \
                     to estimate it"
                ))
            }
        },
    };
    Ok(MemInfo {
        total_bytes,
        available_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fixture_paths;

    #[test]
    fn modern_kernel_uses_mem_available() {
        let info = read_meminfo(&fixture_paths("v2")).unwrap();
        assert_eq!(
            info,
            MemInfo {
                total_bytes: 65_742_196 * 1024,
                available_bytes: 51_318_644 * 1024,
            }
        );
    }

    #[test]
    fn old_kernel_falls_back_to_free_buffers_cached() {
        let info = read_meminfo(&fixture_paths("old-kernel")).unwrap();
        assert_eq!(info.total_bytes, 8_061_740 * 1024);
        // MemFree + Buffers + Cached from the Linux 3.2 fixture.
        assert_eq!(
            info.available_bytes,
            (2_191_736 + 208_900 + 3_870_984) * 1024
        );
    }

    #[test]
    fn malformed_file_names_the_path_and_the_line() {
        let err = read_meminfo(&fixture_paths("malformed")).unwrap_err();
        let chain = format!("{err:#}");
        assert!(chain.contains("malformed/proc/meminfo"), "{chain}");
        assert!(chain.contains("line 2"), "{chain}");
        assert!(chain.contains("MemFree"), "{chain}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = read_meminfo(&fixture_paths("does-not-exist")).unwrap_err();
        assert!(format!("{err:#}").contains("does-not-exist/proc/meminfo"));
    }

    #[test]
    fn missing_mem_total_is_an_error() {
        let err = parse_meminfo("MemFree: 1 kB\n").unwrap_err();
        assert!(err.to_string().contains("MemTotal"));
    }

    #[test]
    fn unitless_counters_are_not_scaled() {
        let info =
            parse_meminfo("MemTotal: 4 kB\nMemAvailable: 2 kB\nHugePages_Total: 7\n").unwrap();
        assert_eq!(info.total_bytes, 4096);
        assert_eq!(info.available_bytes, 2048);
    }

    #[test]
    fn real_proc_meminfo_parses() {
        let info = read_meminfo(&HostPaths::default()).unwrap();
        assert!(info.total_bytes > 0);
        assert!(info.available_bytes <= info.total_bytes);
    }
}
