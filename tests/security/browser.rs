//! Browser attacks: the cross-origin text/plain create, Sec-Fetch-Site, DNS rebinding, CORS.

use super::*;
use crate::util::{free_port, http, TEST_KEY};

#[test]
fn browsers_cannot_be_used_against_the_api() {
    unit_test!();
    // (Lines before any table header land in the harness's [server].)
    let d = DaemonUnit::install(
        "sec-browser",
        free_port(),
        "cors_origins = [\"https://ui.example:3000\"]\nallowed_hosts = [\"llm.internal\"]\n",
        "",
    );
    d.start();
    let evil = r#"{"backend_type":"command","backend_options":{"command":["/bin/sh","-c","id; sleep 1000"]}}"#;
    // The attack from the issue: a cross-origin text/plain POST (a browser sends no key; with
    // one or without, it is refused before any handler), then a start.
    for key in [None, Some(TEST_KEY)] {
        let bearer = key.map(|k| format!("Bearer {k}"));
        let mut h = vec![
            ("Content-Type", "text/plain"),
            ("Origin", "http://evil.example"),
        ];
        if let Some(b) = &bearer {
            h.push(("Authorization", b));
        }
        let r = http_raw(
            "POST",
            d.port,
            "/api/v1/instances/evil",
            &h,
            evil.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 403, "{}", r.body);
        let r = http_raw("POST", d.port, "/api/v1/instances/evil/start", &h, b"").unwrap();
        assert_eq!(r.status, 403, "{}", r.body);
    }
    // Sec-Fetch-Site without Origin (a navigation or no-cors fetch): refused too.
    let r = http(
        "POST",
        d.port,
        "/api/v1/instances/evil",
        &[
            ("Content-Type", "text/plain"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
        evil.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 403);
    // Without any browser header, a text/plain body is still not taken (415).
    let r = http(
        "POST",
        d.port,
        "/api/v1/instances/evil",
        &[("Content-Type", "text/plain")],
        evil.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 415, "{}", r.body);
    assert_eq!(get(d.port, "/api/v1/instances/evil").status, 404);
    assert!(
        d.sb.run(&["systemctl", "status", "llamactl-evil.service"])
            .status
            .code()
            != Some(0)
    );

    // DNS rebinding: the page's own name in Host.
    let r = http_raw(
        "GET",
        d.port,
        "/v1/models",
        &[("Host", &format!("evil.example:{}", d.port))],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 421, "{}", r.body);
    let r = http_raw(
        "GET",
        d.port,
        "/metrics",
        &[("Host", "rebind.evil.example")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 421);
    for ok in ["localhost", "llm.internal:8080", "[::1]"] {
        assert_eq!(
            http_raw("GET", d.port, "/metrics", &[("Host", ok)], b"")
                .unwrap()
                .status,
            200,
            "{ok}"
        );
    }

    // A listed origin gets CORS: the preflight, then the request.
    let pre = http_raw(
        "OPTIONS",
        d.port,
        "/api/v1/instances",
        &[
            ("Origin", "https://ui.example:3000"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(pre.status, 204, "{}", pre.body);
    assert_eq!(
        pre.header("Access-Control-Allow-Origin"),
        Some("https://ui.example:3000")
    );
    assert!(pre
        .header("Access-Control-Allow-Headers")
        .unwrap()
        .contains("authorization"));
    let r = http(
        "GET",
        d.port,
        "/api/v1/instances",
        &[("Origin", "https://ui.example:3000")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("https://ui.example:3000")
    );
    // Anyone else gets none.
    let pre = http_raw(
        "OPTIONS",
        d.port,
        "/api/v1/instances",
        &[
            ("Origin", "https://other.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(pre.status, 403);
    assert!(pre.header("Access-Control-Allow-Origin").is_none());
}
