//! The supervisor's logic on an in-memory systemd (`systemd::fake`): on-demand start, LRU
//! eviction, idle stop, port choice, model routing, specs on disk. The sandbox tests
//! (`tests/systemd.rs`, `tests/instances.rs`) prove the same paths against the real manager.

use super::demand::Requester;
use super::spec::{parse_options, InstanceSpec};
use super::{OpError, Rights, Settings, State, Supervisor};
use crate::config::{BackendType, InstancesConfig};
use crate::systemd::fake::FakeUnits;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

struct All;
impl Requester for All {
    fn rights(&self) -> Rights {
        Rights::ALL
    }
}

/// A supervisor over a fresh state directory and a fake manager; ports from `ports` (each test
/// its own range: the fake backends bind them for real).
struct Rig {
    sup: Arc<Supervisor>,
    units: Arc<FakeUnits>,
    dir: PathBuf,
    _stop: watch::Sender<bool>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llamactl-unit-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rig_with(test: &str, ports: u16, units: FakeUnits, tune: impl FnOnce(&mut Settings)) -> Rig {
    let dir = scratch(test);
    rig_in(dir, ports, units, tune)
}

fn rig_in(dir: PathBuf, ports: u16, units: FakeUnits, tune: impl FnOnce(&mut Settings)) -> Rig {
    let mut settings = Settings {
        instances: InstancesConfig {
            port_range: [ports, ports + 19],
            allowed_backends: vec![BackendType::Command],
            health_check_interval: crate::config::HumanDuration::secs(1),
            ..Default::default()
        },
        idle_check_interval: Duration::from_millis(50),
        ..Default::default()
    };
    tune(&mut settings);
    let units = Arc::new(units);
    let store = super::store::Store::open(&dir).unwrap();
    let sup = Supervisor::open(store, settings, "llamactl.slice".into(), 1, units.clone()).unwrap();
    let (stop, rx) = watch::channel(false);
    sup.spawn_background(rx.clone());
    sup.spawn_idle_stopper(rx);
    Rig {
        sup,
        units,
        dir,
        _stop: stop,
    }
}

fn rig(test: &str, ports: u16, tune: impl FnOnce(&mut Settings)) -> Rig {
    rig_with(test, ports, FakeUnits::default(), tune)
}

fn spec(extra: serde_json::Value) -> super::spec::InstanceOptions {
    let mut v = json!({"backend_type": "command", "backend_options": {"command": ["/bin/true"]}});
    let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) else {
        unreachable!()
    };
    for (k, x) in e {
        o.insert(k.clone(), x.clone());
    }
    parse_options(&serde_json::to_vec(&v).unwrap()).unwrap()
}

fn unit(name: &str) -> String {
    format!("llamactl-{name}.service")
}

async fn wait_state(sup: &Supervisor, name: &str, want: State) {
    for _ in 0..200 {
        if sup.state_of(name).ok() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name} never {want:?} (is {:?})", sup.state_of(name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_first_requests_start_it_once() {
    let r = rig_with(
        "concurrent",
        42000,
        FakeUnits::new(Duration::from_millis(200)),
        |_| {},
    );
    r.sup
        .create("odm", spec(json!({"on_demand_start": true})))
        .await
        .unwrap();
    let calls = (0..10).map(|_| {
        let sup = r.sup.clone();
        tokio::spawn(async move {
            let h = sup.route("odm").unwrap();
            sup.ensure_ready(&h, Duration::from_secs(10), Arc::new(All))
                .await
        })
    });
    let results = futures_util::future::join_all(calls).await;
    let started: Vec<bool> = results.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert_eq!(started.iter().filter(|s| **s).count(), 1, "{started:?}");
    assert_eq!(r.units.starts(), [unit("odm")]);
    assert_eq!(r.sup.state_of("odm").unwrap(), State::Ready);
    assert!(r.sup.route("odm").unwrap().is_ready());
}

#[tokio::test]
async fn on_demand_start_off_or_failing_is_an_error_not_a_wait() {
    let r = rig("ondemand", 42020, |_| {});
    r.sup
        .create("off", spec(json!({"on_demand_start": false})))
        .await
        .unwrap();
    let e = r
        .sup
        .ensure_ready(
            &r.sup.route("off").unwrap(),
            Duration::from_secs(5),
            Arc::new(All),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OpError::Unavailable(m) if m.contains("on_demand_start is off")),
        "{e:?}"
    );
    assert!(r.units.starts().is_empty());
    r.sup
        .create("broken", spec(json!({"on_demand_start": true})))
        .await
        .unwrap();
    r.units.fail_next_start(&unit("broken"));
    let e = r
        .sup
        .ensure_ready(
            &r.sup.route("broken").unwrap(),
            Duration::from_secs(5),
            Arc::new(All),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, OpError::Failed(_)), "{e:?}");
    assert_eq!(r.sup.state_of("broken").unwrap(), State::Failed);
}

#[tokio::test]
async fn eviction_stops_the_least_recently_used_idle_instance() {
    let r = rig("evict", 42040, |s| s.instances.max_running = 2);
    for n in ["eva", "evb", "evc"] {
        r.sup.create(n, spec(json!({}))).await.unwrap();
    }
    r.sup.start("eva").await.unwrap();
    r.sup.start("evb").await.unwrap();
    // eva served a request after evb started: evb is now the least recently used.
    tokio::time::sleep(Duration::from_millis(5)).await;
    drop(r.sup.handle("evb").unwrap().begin());
    tokio::time::sleep(Duration::from_millis(5)).await;
    drop(r.sup.handle("eva").unwrap().begin());
    r.sup.start("evc").await.unwrap();
    assert_eq!(r.units.stops(), [unit("evb")]);
    assert_eq!(r.sup.state_of("evb").unwrap(), State::Stopped);
    assert!(r.sup.state_of("eva").unwrap().is_running());
    assert!(r.sup.state_of("evc").unwrap().is_running());
}

#[tokio::test]
async fn busy_instances_are_never_evicted() {
    let r = rig("busy", 42060, |s| s.instances.max_running = 1);
    r.sup.create("busya", spec(json!({}))).await.unwrap();
    r.sup.create("busyb", spec(json!({}))).await.unwrap();
    r.sup.start("busya").await.unwrap();
    let held = r.sup.handle("busya").unwrap().begin();
    let e = r.sup.start("busyb").await.unwrap_err();
    assert!(
        matches!(&e, OpError::Busy(m) if m.contains("in flight")),
        "{e:?}"
    );
    // Without the right to evict, not even an idle one is stopped.
    drop(held);
    let e = r
        .sup
        .start_with(
            "busyb",
            Rights {
                can_start: true,
                can_evict: false,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OpError::Busy(m) if m.contains("can_evict")),
        "{e:?}"
    );
    assert!(r.units.stops().is_empty());
    // Once it is idle, a start that may evict does.
    r.sup.start("busyb").await.unwrap();
    assert_eq!(r.units.stops(), [unit("busya")]);
}

#[tokio::test]
async fn idle_instances_are_stopped_and_busy_ones_kept() {
    let r = rig("idle", 42080, |_| {});
    // 0.002 minutes = 120 ms.
    for n in ["idlea", "idleb"] {
        r.sup
            .create(n, spec(json!({"idle_timeout": 0.002})))
            .await
            .unwrap();
        r.sup.start(n).await.unwrap();
    }
    let held = r.sup.handle("idleb").unwrap().begin();
    wait_state(&r.sup, "idlea", State::Stopped).await;
    assert!(r.sup.state_of("idleb").unwrap().is_running());
    drop(held);
    wait_state(&r.sup, "idleb", State::Stopped).await;
    assert_eq!(r.units.stops().len(), 2);
}

#[tokio::test]
async fn ports_come_from_the_range_skip_taken_ones_and_conflicts_are_refused() {
    let r = rig("ports", 42100, |_| {});
    // Another process holds the first port of the range.
    let blocker = std::net::TcpListener::bind(("127.0.0.1", 42100)).unwrap();
    let v = r.sup.create("pa", spec(json!({}))).await.unwrap();
    assert_eq!(v["port"], 42101);
    let v = r.sup.create("pb", spec(json!({}))).await.unwrap();
    assert_eq!(v["port"], 42102);
    let e = r
        .sup
        .create(
            "pc",
            spec(json!({"backend_options": {"command": ["/bin/true"], "port": 42101}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OpError::Conflict(m) if m.contains("already used by instance \"pa\"")),
        "{e:?}"
    );
    let e = r
        .sup
        .create(
            "pd",
            spec(json!({"backend_options": {"command": ["/bin/true"], "port": 1}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OpError::Conflict(m) if m.contains("own port")),
        "{e:?}"
    );
    // An explicit port someone else holds: created, but the start says why it cannot run.
    r.sup
        .create(
            "pe",
            spec(json!({"backend_options": {"command": ["/bin/true"], "port": 42100}})),
        )
        .await
        .unwrap();
    let e = r.sup.start("pe").await.unwrap_err();
    assert!(
        matches!(&e, OpError::Conflict(m) if m.contains("in use")),
        "{e:?}"
    );
    assert!(r.units.starts().is_empty());
    drop(blocker);
}

#[tokio::test]
async fn models_route_by_name_instance_slash_model_and_alias() {
    let r = rig("routing", 42120, |_| {});
    r.sup
        .create("rta", spec(json!({"aliases": ["gpt-4o", "small"]})))
        .await
        .unwrap();
    r.sup.create("rtb", spec(json!({}))).await.unwrap();
    let route = |m: &str| r.sup.route(m).map(|h| h.name().to_string());
    assert_eq!(route("rta").as_deref(), Some("rta"));
    assert_eq!(route("rtb/any-model.gguf").as_deref(), Some("rtb"));
    assert_eq!(route("small").as_deref(), Some("rta"));
    assert_eq!(route("gpt-4o").as_deref(), Some("rta"));
    assert_eq!(route("nope"), None);
    assert_eq!(route("nope/rta"), None);
}

#[tokio::test]
async fn an_unreachable_manager_is_503_and_specs_are_still_written() {
    let r = rig("nobus", 42140, |_| {});
    r.units.set_available(false);
    r.sup.create("nb", spec(json!({}))).await.unwrap();
    let e = r.sup.start("nb").await.unwrap_err();
    assert!(matches!(e, OpError::Unavailable(_)), "{e:?}");
    r.units.set_available(true);
    r.sup.start("nb").await.unwrap();
}

/// An invalid spec on disk is reported with its reason and never started, even when its
/// desired state is running; a valid one that should run is started at adoption.
#[tokio::test]
async fn specs_on_disk_are_validated_and_adopted() {
    let dir = scratch("disk");
    let inst = dir.join("instances");
    std::fs::create_dir_all(&inst).unwrap();
    let write = |name: &str, options: serde_json::Value| {
        let s = json!({"name": name, "created": 1, "desired_state": "running", "options": options});
        std::fs::write(inst.join(format!("{name}.json")), s.to_string()).unwrap();
    };
    write(
        "good",
        json!({"backend_type": "command", "backend_options": {"command": ["/bin/true"], "port": 42160}}),
    );
    write(
        "lots",
        json!({"backend_type": "command", "memory_max": "lots", "backend_options": {"command": ["/bin/true"]}}),
    );
    write(
        "empty",
        json!({"backend_type": "command", "backend_options": {"command": []}}),
    );
    let r = rig_in(dir, 42161, FakeUnits::default(), |_| {});
    wait_state(&r.sup, "good", State::Ready).await;
    let corrupt: Vec<(String, String)> = r
        .sup
        .corrupt()
        .into_iter()
        .map(|c| (c.name, c.error))
        .collect();
    assert_eq!(corrupt.len(), 2, "{corrupt:?}");
    assert!(corrupt
        .iter()
        .any(|(n, e)| n == "lots" && e.contains("memory_max")));
    assert!(corrupt
        .iter()
        .any(|(n, e)| n == "empty" && e.contains("backend_options.command")));
    assert_eq!(r.units.starts(), [unit("good")]);
    // What was saved is what was loaded.
    let saved: InstanceSpec =
        serde_json::from_slice(&std::fs::read(r.dir.join("instances/good.json")).unwrap()).unwrap();
    assert_eq!(saved.options.port(), Some(42160));
}

/// What disk, memory and the manager say about one instance must agree: the spec file and the
/// table hold the same options and desired state (or neither has the instance), and a running
/// unit always has a spec that wants it running (never a running unit a restarted daemon would
/// not know to keep).
async fn agree(r: &Rig, name: &str) -> Result<(), String> {
    use crate::systemd::manager::UnitManager;
    let file = r.dir.join(format!("instances/{name}.json"));
    let disk: Option<InstanceSpec> = match std::fs::read(&file) {
        Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| format!("spec on disk: {e}"))?),
        Err(_) => None,
    };
    let memory = r.sup.table().instances.get(name).map(|e| e.spec.clone());
    match (&disk, &memory) {
        (Some(d), Some(m)) => {
            if d.desired_state != m.desired_state || d.options != m.options {
                return Err(format!("disk {d:?} != memory {m:?}"));
            }
        }
        (None, None) => {}
        (d, m) => {
            return Err(format!(
                "on disk: {}, in memory: {}",
                d.is_some(),
                m.is_some()
            ))
        }
    }
    let unit = r
        .units
        .state(&unit(name))
        .await
        .map_err(|e| e.to_string())?;
    if unit.active_state == "active"
        && disk.as_ref().map(|d| d.desired_state) != Some(super::spec::DesiredState::Running)
    {
        return Err(format!("unit active, spec on disk {disk:?}"));
    }
    Ok(())
}

/// Cuts `op` off after `after` (as a client leaving or a deadline would, before operations
/// were detached) and lets the background settle.
async fn cut<F: std::future::Future>(after: Duration, op: F) {
    let _ = tokio::time::timeout(after, op).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
}

/// Every lifecycle operation, cancelled at every point a timer can reach (the fake manager's
/// start takes 60 ms), leaves disk, memory and the manager agreeing.
#[tokio::test]
async fn operations_cancelled_anywhere_leave_disk_memory_and_systemd_agreeing() {
    let cuts = [0u64, 1, 10, 30, 59, 61, 90, 200];
    for (i, &ms) in cuts.iter().enumerate() {
        let at = Duration::from_millis(ms);
        let port = 42200 + 20 * i as u16;
        let r = rig_with(
            &format!("cancel-{ms}"),
            port,
            FakeUnits::new(Duration::from_millis(60)),
            |_| {},
        );
        cut(at, r.sup.create("c", spec(json!({})))).await;
        agree(&r, "c")
            .await
            .map_err(|e| format!("create cut at {ms} ms: {e}"))
            .unwrap();
        if r.sup.get("c").is_err() {
            r.sup.create("c", spec(json!({}))).await.unwrap();
        }
        cut(at, r.sup.start("c")).await;
        agree(&r, "c")
            .await
            .map_err(|e| format!("start cut at {ms} ms: {e}"))
            .unwrap();
        // An update of a running instance restarts it with the new options.
        let _ = r.sup.start("c").await;
        cut(at, r.sup.update("c", spec(json!({"idle_timeout": 7})))).await;
        agree(&r, "c")
            .await
            .map_err(|e| format!("update cut at {ms} ms: {e}"))
            .unwrap();
        // An update never leaves a running instance wanting to be stopped.
        assert_eq!(
            r.sup.get("c").unwrap()["desired_state"],
            "running",
            "update cut at {ms} ms"
        );
        cut(at, r.sup.restart("c")).await;
        agree(&r, "c")
            .await
            .map_err(|e| format!("restart cut at {ms} ms: {e}"))
            .unwrap();
        cut(at, r.sup.stop("c")).await;
        agree(&r, "c")
            .await
            .map_err(|e| format!("stop cut at {ms} ms: {e}"))
            .unwrap();
        let _ = r.sup.start("c").await;
        cut(at, r.sup.delete("c")).await;
        agree(&r, "c")
            .await
            .map_err(|e| format!("delete cut at {ms} ms: {e}"))
            .unwrap();
    }
}

/// Temp files a crash left between a spec write's create and rename are removed at start;
/// the specs themselves are loaded.
#[tokio::test]
async fn temp_spec_files_left_by_a_crash_are_removed_at_start() {
    let dir = scratch("leftovers");
    let first = rig_in(dir.clone(), 42540, FakeUnits::new(Duration::ZERO), |_| {});
    first.sup.create("kept", spec(json!({}))).await.unwrap();
    let leftover = dir.join("instances/.kept.json.tmp-4242-3");
    std::fs::write(&leftover, b"{\"name\": \"ke").unwrap();
    let r = rig_in(dir.clone(), 42540, FakeUnits::new(Duration::ZERO), |_| {});
    assert!(!leftover.exists(), "the temp file is still there");
    assert!(r.sup.get("kept").is_ok());
    assert!(r.sup.table().corrupt.is_empty());
    drop(first);
}

/// A crash between recording "stopped" and stopping the unit leaves a running unit whose spec
/// says stopped: adoption finishes the stop (and starts one that should run but does not).
#[tokio::test]
async fn adoption_makes_units_match_the_desired_state() {
    use crate::systemd::manager::UnitManager;
    let r = rig("adopt-desired", 42560, |_| {});
    for n in ["halted", "wanted"] {
        r.sup.create(n, spec(json!({}))).await.unwrap();
        r.sup.start(n).await.unwrap();
    }
    // "halted": stopped recorded, the crash came before the unit was stopped.
    let mut halted = r.sup.table().instances.get("halted").unwrap().spec.clone();
    halted.desired_state = super::spec::DesiredState::Stopped;
    r.sup.store.save("halted", &halted).unwrap();
    r.sup.table().instances.get_mut("halted").unwrap().spec = halted;
    // "wanted": running recorded, the crash came before the unit was started.
    r.units
        .stop(&unit("wanted"), Duration::from_secs(5))
        .await
        .unwrap();
    r.sup.refresh("wanted").await.unwrap();
    // The fake manager's backend lets go of the port a moment after the stop.
    let port = r.sup.get("wanted").unwrap()["port"].as_u64().unwrap() as u16;
    for _ in 0..200 {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r.sup.adopt().await;
    // Stopped transient units are unloaded: inactive, or not there at all.
    let halted = r.units.state(&unit("halted")).await.unwrap().active_state;
    assert!(matches!(halted.as_str(), "" | "inactive"), "{halted:?}");
    assert_eq!(
        r.units.state(&unit("wanted")).await.unwrap().active_state,
        "active"
    );
    for n in ["halted", "wanted"] {
        agree(&r, n).await.unwrap();
    }
}

/// A requester that counts the starts reported to it (what the audit trail records).
#[derive(Default)]
struct Counting(std::sync::atomic::AtomicUsize);
impl Requester for Counting {
    fn rights(&self) -> Rights {
        Rights::ALL
    }
    fn started(&self, _: &str, result: &Result<(), String>) {
        assert!(result.is_ok(), "{result:?}");
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An on-demand start whose request goes away (client gone, deadline) at any point still runs
/// to completion: the unit is started, the spec says running, and the start is reported (to
/// the audit trail) once.
#[tokio::test]
async fn an_on_demand_start_outlives_its_request() {
    for (i, ms) in [0u64, 1, 10, 30, 59, 61, 90].into_iter().enumerate() {
        let r = rig_with(
            &format!("odm-cut-{ms}"),
            42400 + 20 * i as u16,
            FakeUnits::new(Duration::from_millis(60)),
            |_| {},
        );
        r.sup
            .create("o", spec(json!({"on_demand_start": true})))
            .await
            .unwrap();
        let h = r.sup.route("o").unwrap();
        let requester = Arc::new(Counting::default());
        cut(
            Duration::from_millis(ms),
            r.sup
                .ensure_ready(&h, Duration::from_secs(10), requester.clone()),
        )
        .await;
        wait_state(&r.sup, "o", State::Ready).await;
        // The report comes right after the start job, which takes the fake 60 ms.
        for _ in 0..100 {
            if requester.0.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            requester.0.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "start reported, cut at {ms} ms"
        );
        agree(&r, "o")
            .await
            .map_err(|e| format!("on-demand start cut at {ms} ms: {e}"))
            .unwrap();
        assert_eq!(
            r.sup.get("o").unwrap()["desired_state"],
            "running",
            "{ms} ms"
        );
        assert_eq!(r.units.starts(), [unit("o")], "cut at {ms} ms");
    }
}

/// A spec that cannot be written changes nothing: not the memory, not the unit.
#[tokio::test]
async fn a_failed_spec_write_changes_neither_memory_nor_the_unit() {
    use std::os::unix::fs::PermissionsExt;
    // Root ignores directory permissions: a file in the spec's place that is a directory makes
    // the atomic rename fail for anyone.
    let r = rig("wfail", 42400, |_| {});
    r.sup.create("w", spec(json!({}))).await.unwrap();
    let tmp_blocker = r.dir.join("instances/w.json");
    std::fs::remove_file(&tmp_blocker).unwrap();
    std::fs::create_dir(&tmp_blocker).unwrap();
    std::fs::set_permissions(&tmp_blocker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = r.sup.start("w").await.unwrap_err();
    assert!(matches!(e, OpError::Failed(_)), "{e:?}");
    assert!(
        r.units.starts().is_empty(),
        "no unit started: {:?}",
        r.units.starts()
    );
    assert_eq!(
        r.sup.get("w").unwrap()["desired_state"],
        "stopped",
        "memory unchanged"
    );
    let e = r
        .sup
        .update("w", spec(json!({"idle_timeout": 9})))
        .await
        .unwrap_err();
    assert!(matches!(e, OpError::Failed(_)), "{e:?}");
    assert_ne!(r.sup.get("w").unwrap()["options"]["idle_timeout"], 9);
}

/// A full file system is told apart from other write failures (507, not 500).
#[test]
fn a_full_disk_is_no_space_and_other_write_errors_are_failures() {
    use anyhow::Context as _;
    let full: anyhow::Result<()> = Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
        .context("writing /var/lib/llamactl/instances/x.json");
    let e = super::supervisor::store_error(full.unwrap_err());
    assert!(
        matches!(&e, OpError::NoSpace(m) if m.contains("x.json") && m.contains("nothing was changed")),
        "{e:?}"
    );
    let denied: anyhow::Result<()> =
        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied)).context("writing y");
    assert!(matches!(
        super::supervisor::store_error(denied.unwrap_err()),
        OpError::Failed(_)
    ));
}
