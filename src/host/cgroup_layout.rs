//! Which cgroup hierarchy the host runs, and where this process sits in it.
//!
//! The layout decides where resource accounting for a model server lives (`memory.current` on
//! v2, `memory/…/memory.usage_in_bytes` on v1), so it is detected once from what is actually
//! mounted rather than guessed from the kernel version or the systemd version.

use std::fmt;

use anyhow::{anyhow, bail, Context};

use super::HostPaths;

/// The mount point systemd (and every container runtime) uses for the cgroup tree.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How cgroups are mounted, in systemd's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupLayout {
    /// Unified: cgroup2 is mounted at `/sys/fs/cgroup` and owns every controller.
    V2,
    /// Controllers on v1 hierarchies, plus a controller-less cgroup2 tree (usually
    /// `/sys/fs/cgroup/unified`) that systemd uses only to track processes.
    Hybrid,
    /// Legacy: v1 hierarchies only.
    V1,
}

impl fmt::Display for CgroupLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupLayout::V2 => "v2",
            CgroupLayout::Hybrid => "hybrid",
            CgroupLayout::V1 => "v1",
        })
    }
}

/// Decides the layout from `<procfs>/self/mountinfo`.
pub fn detect_layout(paths: &HostPaths) -> anyhow::Result<CgroupLayout> {
    let path = paths.proc("self/mountinfo");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mounts = parse_mountinfo(&text).with_context(|| format!("parsing {}", path.display()))?;
    layout_from_mounts(&mounts)
        .with_context(|| format!("deciding cgroup layout from {}", path.display()))
}

/// This process's cgroup path (e.g. `/system.slice/llamactld.service`) from `<procfs>/self/cgroup`.
///
/// The v2 line (`0::`) is preferred because on v2 and hybrid hosts it is the tree systemd manages
/// units in; on v1-only hosts the `name=systemd` hierarchy plays that role.
pub fn own_cgroup(paths: &HostPaths) -> anyhow::Result<String> {
    let path = paths.proc("self/cgroup");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    cgroup_from_proc_self(&text).with_context(|| format!("parsing {}", path.display()))
}

/// One line of mountinfo, reduced to what layout detection needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Mount {
    pub(crate) mount_point: String,
    pub(crate) fstype: String,
}

/// Parses mountinfo (proc(5)): `id parent maj:min root mount-point options [optional…] - fstype
/// source super-options`. The optional fields vary in number, hence the search for the `-`.
pub(crate) fn parse_mountinfo(text: &str) -> anyhow::Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let separator = fields
            .iter()
            .position(|field| *field == "-")
            .ok_or_else(|| anyhow!("line {}: no ` - ` separator: {line:?}", index + 1))?;
        if separator < 6 {
            bail!(
                "line {}: fewer than 6 fields before ` - `: {line:?}",
                index + 1
            );
        }
        let fstype = fields.get(separator + 1).ok_or_else(|| {
            anyhow!(
                "line {}: no filesystem type after ` - `: {line:?}",
                index + 1
            )
        })?;
        mounts.push(Mount {
            mount_point: unescape_octal(fields[4]),
            fstype: (*fstype).to_owned(),
        });
    }
    Ok(mounts)
}

/// The kernel escapes space, tab, newline and backslash in mount points as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(value) = bytes.get(i + 1..i + 4).and_then(octal_byte) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn octal_byte(digits: &[u8]) -> Option<u8> {
    digits.iter().try_fold(0u8, |acc, digit| match digit {
        b'0'..=b'7' => acc.checked_mul(8)?.checked_add(digit - b'0'),
        _ => None,
    })
}

pub(crate) fn layout_from_mounts(mounts: &[Mount]) -> anyhow::Result<CgroupLayout> {
    let v2_mounts: Vec<&str> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2")
        .map(|m| m.mount_point.as_str())
        .collect();
    let has_v1 = mounts.iter().any(|m| m.fstype == "cgroup");

    if v2_mounts.contains(&CGROUP_ROOT) {
        return Ok(CgroupLayout::V2);
    }
    let v2_under_root = v2_mounts.iter().any(|m| {
        m.strip_prefix(CGROUP_ROOT)
            .is_some_and(|rest| rest.starts_with('/'))
    });
    match (has_v1, v2_under_root) {
        (true, true) => Ok(CgroupLayout::Hybrid),
        // A cgroup2 tree outside /sys/fs/cgroup is not one systemd manages units in.
        (true, false) => Ok(CgroupLayout::V1),
        (false, _) if v2_mounts.is_empty() => bail!("no cgroup filesystem mounted"),
        (false, _) => bail!(
            "cgroup2 is mounted only at {} and not at {CGROUP_ROOT}; this layout is not supported",
            v2_mounts.join(", ")
        ),
    }
}

pub(crate) fn cgroup_from_proc_self(text: &str) -> anyhow::Result<String> {
    let mut systemd_v1 = None;
    for line in text.lines() {
        // hierarchy-ID:controller-list:cgroup-path; the path itself may contain ':'.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(cgroup)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            return Ok(cgroup.to_owned());
        }
        if systemd_v1.is_none() && controllers.split(',').any(|c| c == "name=systemd") {
            systemd_v1 = Some(cgroup.to_owned());
        }
    }
    systemd_v1.ok_or_else(|| anyhow!("neither a cgroup v2 (`0::`) line nor a `name=systemd` line"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fixture_paths;

    #[test]
    fn detects_each_fixture_layout() {
        for (name, expected) in [
            ("v2", CgroupLayout::V2),
            ("hybrid", CgroupLayout::Hybrid),
            ("v1", CgroupLayout::V1),
        ] {
            assert_eq!(
                detect_layout(&fixture_paths(name)).unwrap(),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn own_cgroup_prefers_v2_then_name_systemd() {
        for name in ["v2", "hybrid", "v1"] {
            assert_eq!(
                own_cgroup(&fixture_paths(name)).unwrap(),
                "/system.slice/llamactld.service",
                "{name}"
            );
        }
        let text = "1:name=systemd:/user.slice/a.scope\n0::/system.slice/b.service\n";
        assert_eq!(
            cgroup_from_proc_self(text).unwrap(),
            "/system.slice/b.service"
        );
        assert_eq!(
            cgroup_from_proc_self("3:cpu:/x:y\n1:name=systemd:/p:q\n").unwrap(),
            "/p:q"
        );
        assert!(cgroup_from_proc_self("4:memory:/x\n").is_err());
    }

    #[test]
    fn no_cgroup_mount_is_an_error() {
        let mounts = parse_mountinfo(
            "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
             27 1 254:0 / / rw,relatime shared:1 master:2 - ext4 /dev/vda rw\n",
        )
        .unwrap();
        let err = layout_from_mounts(&mounts).unwrap_err();
        assert_eq!(err.to_string(), "no cgroup filesystem mounted");
    }

    #[test]
    fn cgroup2_outside_the_root_is_reported() {
        let mounts =
            parse_mountinfo("40 22 0:38 / /run/cg2 rw,relatime - cgroup2 cgroup2 rw\n").unwrap();
        let err = layout_from_mounts(&mounts).unwrap_err();
        assert!(err.to_string().contains("/run/cg2"), "{err}");
    }

    #[test]
    fn optional_fields_and_escapes_are_handled() {
        let mounts = parse_mountinfo(
            "32 22 0:28 / /sys/fs/cgroup rw,nosuid shared:4 master:1 propagate_from:2 - cgroup2 cgroup2 rw\n\
             90 28 0:50 / /mnt/my\\040disk rw - ext4 /dev/sdb1 rw\n",
        )
        .unwrap();
        assert_eq!(mounts[0].fstype, "cgroup2");
        assert_eq!(mounts[1].mount_point, "/mnt/my disk");
        assert_eq!(layout_from_mounts(&mounts).unwrap(), CgroupLayout::V2);
    }

    #[test]
    fn malformed_mountinfo_names_the_line() {
        let err = parse_mountinfo("22 27 0:21 / /proc rw,relatime proc proc rw\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn layout_displays_and_serializes_lowercase() {
        assert_eq!(CgroupLayout::Hybrid.to_string(), "hybrid");
        assert_eq!(serde_json::to_string(&CgroupLayout::V2).unwrap(), "\"v2\"");
        assert_eq!(serde_json::to_string(&CgroupLayout::V1).unwrap(), "\"v1\"");
    }

    #[test]
    fn real_host_is_detected_or_clearly_without_cgroups() {
        match detect_layout(&HostPaths::default()) {
            Ok(layout) => assert!(!layout.to_string().is_empty()),
            Err(err) => assert!(format!("{err:#}").contains("cgroup"), "{err:#}"),
        }
    }
}
