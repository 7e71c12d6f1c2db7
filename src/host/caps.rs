//! The daemon's own capabilities.
//!
//! Reported in status output so an operator can see at a glance why binding a low port or raising
//! a memlock limit for a model server fails: unit files commonly drop capabilities
//! (`CapabilityBoundingSet=`, `AmbientCapabilities=`) and the effect is otherwise invisible.

use caps::CapSet;

/// Effective capabilities of the calling thread as sorted lowercase names
/// (`cap_net_bind_service`).
///
/// Failure is not an error for callers: the list is informational, so an unreadable set (e.g.
/// under a seccomp filter that denies `capget`) is logged and reported as empty.
pub fn effective_capabilities() -> Vec<String> {
    match caps::read(None, CapSet::Effective) {
        Ok(set) => {
            let mut names: Vec<String> = set
                .iter()
                .map(|cap| cap.to_string().to_lowercase())
                .collect();
            names.sort();
            names
        }
        Err(err) => {
            tracing::debug!(error = %err, "could not read effective capabilities");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sorted_lowercase_and_match_the_kernel_mask() {
        let names = effective_capabilities();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.iter().all(
            |n| n.starts_with("cap_") && n.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        ));

        // Cross-check the count with CapEff from /proc (a hex bit mask), limited to the
        // capabilities this caps version knows about.
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let mask = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
            .unwrap();
        let known = caps::all()
            .iter()
            .filter(|cap| mask & cap.bitmask() != 0)
            .count();
        assert_eq!(names.len(), known);
    }
}
