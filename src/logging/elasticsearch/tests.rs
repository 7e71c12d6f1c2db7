//! The Elasticsearch destination's tests: index names, bulk entries against the shipped index
//! templates, the authorization header, answers, and a batch against a fake `_bulk` endpoint.

use super::*;
use crate::config::Secret;
use crate::logging::ship::tests::records;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn index_names_follow_the_utc_date() {
    // 2025-06-01T23:59:59.999999Z and one microsecond later.
    let t = 1_748_822_399_999_999;
    assert_eq!(index_name("llamactl", t), "llamactl-2025.06.01");
    assert_eq!(index_name("llamactl", t + 1), "llamactl-2025.06.02");
    assert_eq!(index_name("logs-x", 0), "logs-x-1970.01.01");
}

#[test]
fn an_entry_is_an_action_line_and_a_document_line() {
    let mut r = records(|| {
        tracing::info!(target: "llamactl::instance::supervisor", llamactl_instance = "smol", port = 8001, "instance created")
    })
    .remove(0);
    r.time_us = 1_748_779_200_123_456; // 2025-06-01T12:00:00.123456Z
    let e = bulk_entry(&r, "llamactl", "gpu-1", 42);
    let lines: Vec<&str> = e.split_terminator('\n').collect();
    assert!(e.ends_with('\n') && lines.len() == 2, "{e}");
    assert_eq!(lines[0], r#"{"index":{"_index":"llamactl-2025.06.01"}}"#);
    assert_eq!(
        lines[1],
        r#"{"timestamp":"2025-06-01T12:00:00.123456Z","level":"info","message":"instance created","instance":"smol","component":"instance","target":"llamactl::instance::supervisor","host":"gpu-1","pid":42,"fields":{"port":"8001"}}"#
    );
    let r = &records(|| tracing::error!("no instance"))[0];
    let doc: serde_json::Value =
        serde_json::from_str(bulk_entry(r, "p", "h", 1).lines().nth(1).unwrap()).unwrap();
    assert!(doc.get("instance").is_none() && doc.get("fields").is_none());
    assert_eq!(doc["level"], "error");
}

#[test]
fn every_document_field_is_in_the_shipped_index_templates() {
    for file in ["llamactl-template.json", "llamactl-index-template.json"] {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/elasticsearch/");
        let t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{path}{file}")).unwrap())
                .unwrap();
        assert_eq!(
            t["index_patterns"],
            serde_json::json!(["llamactl-*"]),
            "{file}"
        );
        let mappings = if file == "llamactl-template.json" {
            &t["mappings"]
        } else {
            &t["template"]["mappings"]
        };
        let props = mappings["properties"].as_object().unwrap();
        let mut names: Vec<&str> = props.keys().map(String::as_str).collect();
        names.sort();
        let mut want = DOCUMENT_FIELDS.to_vec();
        want.sort();
        assert_eq!(names, want, "{file}");
        // The guide's five, as the guide types them.
        for (f, ty) in [
            ("timestamp", "date"),
            ("level", "keyword"),
            ("message", "text"),
            ("instance", "keyword"),
            ("component", "keyword"),
        ] {
            assert_eq!(props[f]["type"], ty, "{file}: {f}");
        }
    }
}

#[test]
fn base64_and_the_authorization_header() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"elastic:changeme"), "ZWxhc3RpYzpjaGFuZ2VtZQ==");
    let mut cfg = ElasticsearchDestination {
        username: Some("elastic".into()),
        password: Some(Secret::new("changeme")),
        ..Default::default()
    };
    let h = authorization(&cfg).unwrap();
    assert_eq!(h, "Basic ZWxhc3RpYzpjaGFuZ2VtZQ==");
    assert!(h.is_sensitive());
    cfg.username = None;
    cfg.password = None;
    assert!(authorization(&cfg).is_none());
    cfg.api_key = Some(Secret::new(
        "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==",
    ));
    assert_eq!(
        authorization(&cfg).unwrap(),
        "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
    );
}

#[test]
fn answers() {
    assert_eq!(outcome(200, br#"{"errors":false}"#, 3), Outcome::Delivered);
    assert_eq!(outcome(200, b"", 3), Outcome::Delivered);
    assert!(matches!(outcome(429, b"", 3), Outcome::Retry(_)));
    assert!(matches!(outcome(503, b"", 3), Outcome::Retry(_)));
    assert!(matches!(outcome(401, b"no", 3), Outcome::Refused(e) if e.contains("401")));
    let body = br#"{"errors":true,"items":[{"index":{"status":201}},{"index":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [pid]"}}},{"index":{"status":429}},{"index":{"status":400}}]}"#;
    assert_eq!(
        outcome(200, body, 4),
        Outcome::Partial {
            retry: vec![2],
            rejected: 2,
            reason: "400 mapper_parsing_exception: failed to parse field [pid]".into()
        }
    );
}

/// A stand-in for Elasticsearch on a local socket: answers each request with the next of
/// `answers` (the last one repeats) and keeps what it got.
/// What the stand-in received: (head, lowercased; body) per request.
type Received = Arc<Mutex<Vec<(String, String)>>>;

fn fake_es(answers: Vec<(u16, &'static str)>) -> (u16, Received) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for (n, conn) in l.incoming().enumerate() {
            let Ok(mut s) = conn else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            let head_end = loop {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break None,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
            keep.lock().unwrap().push((head, body));
            let (status, answer) = answers[n.min(answers.len() - 1)];
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (port, got)
}

#[test]
fn a_batch_reaches_bulk_and_429s_are_sent_again() {
    let (port, got) = fake_es(vec![
        (
            200,
            r#"{"errors":true,"items":[{"index":{"status":201}},{"index":{"status":429}},{"index":{"status":400,"error":{"type":"x","reason":"y"}}}]}"#,
        ),
        (200, r#"{"errors":false,"items":[]}"#),
    ]);
    let cfg = ElasticsearchDestination {
        url: format!("http://127.0.0.1:{port}/"),
        flush_interval: crate::config::HumanDuration(Duration::from_millis(300)),
        username: Some("u".into()),
        password: Some(Secret::new("p")),
        ..Default::default()
    };
    let (layer, shipper) = start(&cfg, "es".into()).unwrap();
    let sub = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(sub, || {
        tracing::info!("one");
        tracing::info!("two");
        tracing::info!("three");
    });
    let t = Instant::now();
    while got.lock().unwrap().len() < 2 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    shipper.close(Instant::now() + Duration::from_secs(5));
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    let (head, body) = &got[0];
    assert!(head.starts_with("post /_bulk?filter_path="), "{head}");
    assert!(
        head.contains("content-type: application/x-ndjson"),
        "{head}"
    );
    assert!(head.contains("authorization: basic dtpw"), "{head}"); // base64("u:p"), lowercased
    assert_eq!(body.lines().count(), 6);
    assert!(body.ends_with('\n'));
    // The second request carries only the document answered 429.
    let docs: Vec<serde_json::Value> = got[1]
        .1
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["message"], "two");
    assert_eq!(shipper.dropped.get(), 1);
}
