//! The front door's lane (`src/http/lane/`): model requests served without hyper, on kept-alive
//! connections, as a client sends them — pipelined, with `Expect: 100-continue`, `Connection:
//! close`, slow bodies — and everything else handed to hyper mid-connection with the bytes
//! already read, against a daemon in the private systemd and the fake backend.

use crate::util::sandbox::DaemonUnit;
use crate::util::{api, get, sample, TEST_KEY};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A daemon with `server` keys in its `[server]` section and `more` sections after, and the
/// fake backend as an on-demand instance named `test` (instances are units of the one sandbox
/// systemd: each test's own name).
fn daemon(test: &str, server: &str, more: &str) -> DaemonUnit {
    let d = crate::util::sandbox::daemon_with(test, server, more, "");
    let fake = crate::util::fake_backend().display().to_string();
    let spec = json!({"backend_type": "command", "on_demand_start": true,
        "backend_options": {"command": [&fake, "--port", "{port}"]}});
    let r = api(
        "POST",
        d.port,
        &format!("/api/v1/instances/{test}"),
        Some(spec),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    d
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

/// Reads one response from a kept-alive connection: its head, and its body by its own framing.
fn answer(r: &mut BufReader<TcpStream>) -> Answer {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("a response head");
        assert!(n > 0, "the connection closed; head so far: {head:?}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head[9..12].parse().expect("a status");
    let mut a = Answer {
        status,
        head,
        body: String::new(),
    };
    let mut body = Vec::new();
    if a.header("transfer-encoding") == Some("chunked") {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).expect("a chunk size");
            let n = usize::from_str_radix(size.trim_end(), 16).expect("hex size");
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).expect("a chunk");
            assert_eq!(&chunk[n..], b"\r\n", "a chunk ends in CRLF");
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = a.header("content-length") {
        body.resize(len.parse().expect("a length"), 0);
        r.read_exact(&mut body).expect("the body");
    } else if status != 100 {
        r.read_to_end(&mut body).expect("the body");
    }
    a.body = String::from_utf8(body).expect("UTF-8");
    a
}

fn connect(port: u16) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let r = BufReader::new(s.try_clone().expect("clone"));
    (s, r)
}

/// A model request for `CHAT` or `STREAM` (whose model is `MODEL`) to the instance `model`.
fn model_request(model: &str, body: &str, extra: &str) -> String {
    let body = body.replace(MODEL, model);
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TEST_KEY}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const MODEL: &str = "MODEL";
const CHAT: &str = r#"{"model":"MODEL","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str =
    r#"{"model":"MODEL","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// Does the connection close (EOF) within `limit`?
fn closes_within(r: &mut BufReader<TcpStream>, limit: Duration) -> bool {
    let t = Instant::now();
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    rest.is_empty() && t.elapsed() < limit
}

/// Requests sent together on one connection are answered in order: a JSON answer, a stream
/// (the backend's chunked framing passed on, whole), a request the lane hands to hyper, and
/// model requests after it (served by hyper's side from then on).
#[test]
fn pipelined_requests_and_a_hand_off_to_hyper_share_one_connection() {
    unit_test!();
    let m = "lane-pipeline";
    let d = daemon(m, "", "");
    let (mut s, mut r) = connect(d.port);
    let models = format!(
        "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TEST_KEY}\r\n\r\n"
    );
    let all = [
        model_request(m, CHAT, "X-Request-Id: first\r\n"),
        model_request(m, STREAM, ""),
        models,
        model_request(m, STREAM, ""),
    ]
    .concat();
    s.write_all(all.as_bytes()).expect("write");

    let json = answer(&mut r);
    assert_eq!(json.status, 200, "{}\n{}", json.head, json.body);
    assert_eq!(json.header("x-request-id"), Some("first"));
    assert!(
        json.header("date").is_some_and(|d| d.ends_with("GMT")),
        "{}",
        json.head
    );
    let v: serde_json::Value = serde_json::from_str(&json.body).expect("JSON");
    assert_eq!(v["usage"]["completion_tokens"], 3, "{v}");

    let a = answer(&mut r);
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(a.header("transfer-encoding"), Some("chunked"), "{}", a.head);
    assert!(
        a.header("x-request-id").is_some_and(|v| v.len() == 36),
        "{}",
        a.head
    );
    assert!(a.body.starts_with("data: "), "{}", a.body);
    assert!(a.body.ends_with("data: [DONE]\n\n"), "{}", a.body);

    let listed = answer(&mut r);
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert!(listed.body.contains(&format!("\"{m}\"")), "{}", listed.body);

    let after = answer(&mut r);
    assert_eq!(after.status, 200, "{}", after.head);
    assert!(after.body.ends_with("data: [DONE]\n\n"), "{}", after.body);

    // Every model request was counted once, under its route, with the tokens of each.
    let scrape = get(d.port, "/metrics").body;
    assert_eq!(
        sample(
            &scrape,
            &format!("llamactl_proxy_requests_total{{instance_name=\"{m}\",endpoint=\"chat_completions\",status=\"200\"}}")
        ),
        Some(3.0),
        "{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            &format!("llamactl_instance_tokens_total{{instance_name=\"{m}\",type=\"completion\"}}")
        ),
        Some(9.0),
        "{scrape}"
    );
}

/// `Expect: 100-continue` gets its interim answer before the body is sent; a body that comes
/// slowly is waited for; `Connection: close` closes after the answer; a refused request whose
/// body has come keeps the connection; a body that stops coming is 408 after `body_timeout`; a
/// kept-alive connection that says nothing is closed after `header_timeout`.
#[test]
fn continue_slow_bodies_close_refusals_and_timeouts() {
    unit_test!();
    let m = "lane-timing";
    let d = daemon(
        m,
        "header_timeout = \"2s\"\n",
        "[proxy]\nbody_timeout = \"1s\"\n",
    );
    let (mut s, mut r) = connect(d.port);
    let req = model_request(m, CHAT, "Expect: 100-continue\r\n");
    let body_len = CHAT.replace(MODEL, m).len();
    let (head, body) = req.split_at(req.len() - body_len);
    s.write_all(head.as_bytes()).expect("write");
    let interim = answer(&mut r);
    assert_eq!(interim.status, 100, "{}", interim.head);
    s.write_all(body.as_bytes()).expect("write");
    assert_eq!(answer(&mut r).status, 200);

    // The body in two pieces, a moment apart.
    s.write_all(head.replace("Expect: 100-continue\r\n", "").as_bytes())
        .expect("write");
    s.write_all(&body.as_bytes()[..10]).expect("write");
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(&body.as_bytes()[10..]).expect("write");
    assert_eq!(answer(&mut r).status, 200);

    // Refused (a wrong key) with its body sent: the connection stays.
    let wrong = model_request(m, CHAT, "").replace(TEST_KEY, "llk_wrong");
    s.write_all(wrong.as_bytes()).expect("write");
    let refused = answer(&mut r);
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.header("x-request-id").is_some());
    s.write_all(model_request(m, CHAT, "").as_bytes())
        .expect("write");
    assert_eq!(answer(&mut r).status, 200, "kept alive after a refusal");

    // Kept alive, then silent: closed by the header timeout.
    assert!(closes_within(&mut r, Duration::from_secs(8)));

    let (mut s, mut r) = connect(d.port);
    s.write_all(model_request(m, CHAT, "Connection: close\r\n").as_bytes())
        .expect("write");
    let closing = answer(&mut r);
    assert_eq!(closing.status, 200);
    assert_eq!(closing.header("connection"), Some("close"));
    assert!(closes_within(&mut r, Duration::from_secs(5)));

    // Half a body, then nothing: 408 after body_timeout, and closed.
    let (mut s, mut r) = connect(d.port);
    let req = model_request(m, CHAT, "");
    s.write_all(&req.as_bytes()[..req.len() - 5])
        .expect("write");
    let t = Instant::now();
    let late = answer(&mut r);
    assert_eq!(late.status, 408, "{}", late.body);
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert!(closes_within(&mut r, Duration::from_secs(5)));
    let scrape = get(d.port, "/metrics").body;
    assert!(
        sample(
            &scrape,
            "llamactl_http_connections_closed_by_limit_total{reason=\"header_timeout\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{scrape}"
    );
}

/// Framing the lane does not take goes to hyper, which answers it as before: a chunked request
/// body is served; conflicting lengths are refused and the connection closed, so the bytes after
/// them are never read as a request of their own.
#[test]
fn framing_the_lane_does_not_take_is_hyper_s() {
    unit_test!();
    let m = "lane-framing";
    let d = daemon(m, "", "");
    let chat = CHAT.replace(MODEL, m);
    let (mut s, mut r) = connect(d.port);
    let chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TEST_KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chat}\r\n0\r\n\r\n",
        chat.len()
    );
    s.write_all(chunked.as_bytes()).expect("write");
    let a = answer(&mut r);
    assert_eq!(a.status, 200, "{}\n{}", a.head, a.body);
    assert!(a.body.contains("Hello from fake"), "{}", a.body);

    let (mut s, mut r) = connect(d.port);
    let smuggle = model_request(m, CHAT, "Content-Length: 5\r\n");
    let smuggle = format!("{smuggle}{}", model_request(m, CHAT, ""));
    s.write_all(smuggle.as_bytes()).expect("write");
    let a = answer(&mut r);
    assert_eq!(a.status, 400, "{}\n{}", a.head, a.body);
    assert!(
        closes_within(&mut r, Duration::from_secs(5)),
        "nothing after it is served"
    );
    let scrape = get(d.port, "/metrics").body;
    assert_eq!(
        sample(
            &scrape,
            &format!("llamactl_proxy_requests_total{{instance_name=\"{m}\",endpoint=\"chat_completions\",status=\"200\"}}")
        ),
        Some(1.0),
        "{scrape}"
    );
}
