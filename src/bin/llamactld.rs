//! The daemon binary: argument parsing and error printing only; the work is in `llamactl::daemon`.

use clap::Parser;
use llamactl::cli::{generate, DaemonArgs};
use llamactl::config::{self, ProcessEnv};
use llamactl::daemon::{self, Options};
use llamactl::host::HostPaths;
use std::process::ExitCode;

/// jemalloc instead of glibc's malloc: the proxy allocates and frees small buffers on every
/// request, and glibc's allocator was 8% of its CPU (bench/proxy-latency.md; mimalloc was used
/// for that until jemalloc replaced it for heap profiles). Built with profiling, so the debug
/// port can serve a heap profile (`llamactl::debug::heap`).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options (the prefixed build reads `_rjem_malloc_conf`): profiling
/// compiled in but not sampling (`prof_active:false`) until `[debug] pprof_enabled` turns it
/// on; then one sample per 2^19 bytes (512 KiB) allocated on average. `thp:never`: no
/// transparent huge pages for its arenas (each touched 2 MiB would be resident; mimalloc had
/// made the daemon 26 MB idle and 87 MB at 100 instances that way, bench/README.md).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"prof:true,prof_active:false,lg_prof_sample:19,thp:never\0";

fn main() -> ExitCode {
    let args = DaemonArgs::parse();
    if let Some(kind) = args.generate {
        return match generate::write::<DaemonArgs>(kind, &mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("llamactld: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.check_config {
        let (path, explicit) = config::resolve_path(args.config.as_deref(), &ProcessEnv);
        return match config::load(&path, explicit) {
            Ok(l) => {
                for w in &l.warnings {
                    eprintln!("warning: {w}");
                }
                println!("config OK: {l}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("llamactld: invalid config: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = Options {
        config: args.config,
        host: HostPaths {
            procfs: args.procfs,
            sysfs: args.sysfs,
        },
    };
    match daemon::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logging may not be up (bad config), so stderr; under systemd that is the journal.
            eprintln!("llamactld: {e:#}");
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
