//! The debug port's routes without a listener: the `seconds` bounds, the `Host` check, the
//! task dump, and one CPU profile at a time.

use super::*;
use axum::body::Body;
use tower::ServiceExt as _;

fn app(shutdown: watch::Receiver<bool>) -> Router {
    router(Debug {
        cpu: cpu::CpuProfiler::new(shutdown),
        runtimes: Runtimes::default(),
        loopback: true,
    })
}

async fn get_status(app: &Router, uri: &str, host: &str) -> (StatusCode, String) {
    let resp = app
        .clone()
        .oneshot(
            axum::http::Request::get(uri)
                .header("host", host)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn seconds_are_bounded() {
    let q = |v: &str| HashMap::from([("seconds".to_string(), v.to_string())]);
    assert_eq!(parse_seconds(&HashMap::new()), Ok(Duration::from_secs(30)));
    assert_eq!(parse_seconds(&q("1")), Ok(Duration::from_secs(1)));
    assert_eq!(parse_seconds(&q("300")), Ok(Duration::from_secs(300)));
    for bad in [
        "0",
        "301",
        "-1",
        "1.5",
        "",
        "abc",
        "99999999999999999999999",
    ] {
        let e = parse_seconds(&q(bad)).unwrap_err();
        assert!(e.contains("from 1 to 300"), "{bad}: {e}");
    }
}

#[tokio::test]
async fn bad_seconds_are_400_and_foreign_hosts_421() {
    let (_tx, rx) = watch::channel(false);
    let app = app(rx);
    let (s, body) = get_status(&app, "/debug/pprof/profile?seconds=0", "localhost:6060").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, _) = get_status(&app, "/debug/pprof/profile?seconds=x", "127.0.0.1").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = get_status(&app, "/debug/pprof/goroutine", "evil.example:6060").await;
    assert_eq!(s, StatusCode::MISDIRECTED_REQUEST);
    let (s, body) = get_status(&app, "/debug/pprof/goroutine", "[::1]:6060").await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("long-lived tasks"), "{body}");
    let (s, body) = get_status(&app, "/debug/pprof/", "localhost").await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("/debug/pprof/heap"));
    // The unit tests' allocator is the system one: no heap profile, said plainly.
    let (s, body) = get_status(&app, "/debug/pprof/heap", "localhost").await;
    assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cpu_profile_at_a_time() {
    let (tx, rx) = watch::channel(false);
    let app = app(rx);
    let first = {
        let app = app.clone();
        tokio::spawn(async move {
            get_status(&app, "/debug/pprof/profile?seconds=2", "localhost").await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, body) = get_status(&app, "/debug/pprof/profile?seconds=1", "localhost").await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    // The task dump is not held up by a profile in progress.
    let (s, _) = get_status(&app, "/debug/pprof/goroutine", "localhost").await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = first.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{body}");
    // A profile cut short by shutdown answers 503, and frees the profiler.
    let again = {
        let app = app.clone();
        tokio::spawn(async move {
            get_status(&app, "/debug/pprof/profile?seconds=60", "localhost").await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.send(true).unwrap();
    let (s, _) = again.await.unwrap();
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
}
