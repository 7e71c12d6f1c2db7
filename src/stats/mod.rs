//! Resource statistics: per-instance cgroup accounting, host-wide procfs counters and GPUs,
//! gathered into one snapshot per scrape (shared by scrapes that arrive together).

pub mod cgroup;
pub mod gpu;
pub mod snapshot;
pub mod system;
