//! `/debug/pprof/goroutine`: the counterpart of Go's goroutine dump, in text. Tokio cannot list
//! or trace its tasks in a stable build (`Handle::dump()` needs `--cfg tokio_unstable` and the
//! `taskdump` feature), so this prints what can be known: each runtime's workers, alive tasks,
//! queue depth and per-worker busy time and parks; the daemon's long-lived tasks; and the
//! process's OS threads with their state and CPU time (from `/proc/self/task`).

use crate::metrics::runtime::{RuntimeSample, Runtimes, TaskSample};
use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

/// One OS thread of the process.
#[derive(Debug, PartialEq)]
pub struct ThreadSample {
    pub tid: u32,
    pub name: String,
    pub state: char,
    pub cpu_ticks: u64,
}

/// The text answer.
pub fn dump(runtimes: &Runtimes) -> String {
    render(&runtimes.sample(), &runtimes.tasks(), &threads())
}

pub fn render(rts: &[RuntimeSample], tasks: &[TaskSample], threads: &[ThreadSample]) -> String {
    let mut out = String::new();
    let alive: usize = rts.iter().map(|r| r.alive_tasks).sum();
    let _ = writeln!(
        out,
        "llamactld {}: {} tokio runtime(s), {alive} alive task(s), {} OS thread(s)\n",
        env!("CARGO_PKG_VERSION"),
        rts.len(),
        threads.len()
    );
    for r in rts {
        let _ = writeln!(
            out,
            "runtime {} ({}): workers={} alive_tasks={} global_queue_depth={}",
            r.name, r.flavor, r.workers, r.alive_tasks, r.global_queue_depth
        );
        for (i, w) in r.per_worker.iter().enumerate() {
            let _ = writeln!(
                out,
                "  worker {i}: busy={:.3}s parks={} park_unparks={}",
                w.busy.as_secs_f64(),
                w.parks,
                w.park_unparks
            );
        }
    }
    let _ = writeln!(out, "\nlong-lived tasks ({}):", tasks.len());
    for t in tasks {
        let started = t
            .started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "  {} on {}: running for {}s (started at unix {started})",
            t.name,
            t.runtime,
            t.age.as_secs()
        );
    }
    let _ = writeln!(out, "\nthreads ({}):", threads.len());
    for t in threads {
        let _ = writeln!(
            out,
            "  {} {} state={} cpu_ticks={}",
            t.tid, t.name, t.state, t.cpu_ticks
        );
    }
    out
}

/// The process's threads from `/proc/self/task/*/stat`; a thread that exits while listed is
/// left out.
fn threads() -> Vec<ThreadSample> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out: Vec<ThreadSample> = dir
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            parse_stat(&stat)
        })
        .collect();
    out.sort_by_key(|t| t.tid);
    out
}

/// `tid (comm) state ... utime stime ...`: comm may hold spaces and parentheses, so the fields
/// are counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<ThreadSample> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let tid = stat.get(..open)?.trim().parse().ok()?;
    let name = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let state = rest.first()?.chars().next()?;
    // After the state: fields 4.. of proc(5); utime and stime are fields 14 and 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some(ThreadSample {
        tid,
        name,
        state,
        cpu_ticks: utime.saturating_add(stime),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_and_odd_ones_do_not() {
        let s =
            "4242 (llamactld-http0) S 1 4240 4240 0 -1 4194560 10 0 0 0 7 3 0 0 20 0 12 0 100 0 0";
        assert_eq!(
            parse_stat(s),
            Some(ThreadSample {
                tid: 4242,
                name: "llamactld-http0".into(),
                state: 'S',
                cpu_ticks: 10
            })
        );
        let odd = "7 (a) b) R 1 1 1 0 -1 0 0 0 0 0 1 2 0";
        assert_eq!(parse_stat(odd).map(|t| t.name), Some("a) b".into()));
        for bad in ["", "x", "1 (a", "(a) R", "1 (a) R 1"] {
            assert_eq!(parse_stat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_dump_names_runtimes_tasks_and_threads() {
        let r = Runtimes::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        r.add("main", rt.handle().clone());
        let _g = r.task("pyroscope push", "main");
        let text = dump(&r);
        assert!(
            text.contains("runtime main (current_thread): workers=1"),
            "{text}"
        );
        assert!(text.contains("  worker 0: busy="), "{text}");
        assert!(
            text.contains("pyroscope push on main: running for"),
            "{text}"
        );
        assert!(text.contains("threads ("), "{text}");
    }
}
