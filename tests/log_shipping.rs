//! `[[logging.destinations]]` of type `syslog` and `elasticsearch` from a running llamactld
//! under the private systemd: a Unix datagram socket bound by the test receives RFC 5424
//! messages and a local stand-in for Elasticsearch receives `_bulk` requests (NDJSON action
//! and document pairs, the daily index, the template's fields, basic authentication); a real
//! rsyslog (Debian's, installed by `tools/test`) parses every header field of the messages; an
//! Elasticsearch that accepts connections and never answers costs requests nothing, its lines
//! are counted as dropped, the failure is logged once and the recovery once; the monitoring
//! guide's `logging:` example passes `--check-config`.

use crate::util::sandbox::daemon;
use crate::util::{
    api, get, promtool_check, read_request, run, sample, scratch, slowest_get, wait_for, write,
    LLAMACTLD,
};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One `_bulk` request as received: the request line's target, the head (lowercased) and the
/// body.
#[derive(Clone, Debug)]
struct Bulk {
    target: String,
    head: String,
    body: String,
}

/// A stand-in for Elasticsearch: answers every request 200 with a `_bulk` answer saying all
/// went well, and keeps what it got.
struct FakeEs {
    got: Arc<Mutex<Vec<Bulk>>>,
}

impl FakeEs {
    fn start(l: TcpListener) -> FakeEs {
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(s) = conn else { continue };
                let keep = keep.clone();
                std::thread::spawn(move || serve(s, &keep));
            }
        });
        FakeEs { got }
    }

    fn bulks(&self) -> Vec<Bulk> {
        self.got.lock().unwrap().clone()
    }

    /// Every document received, each with its action line, after checking the framing.
    fn documents(&self) -> Vec<(serde_json::Value, serde_json::Value)> {
        let mut out = Vec::new();
        for b in self.bulks() {
            out.extend(check_bulk(&b));
        }
        out
    }
}

fn serve(mut s: TcpStream, keep: &Mutex<Vec<Bulk>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let Some((head, body)) = read_request(&mut s) else {
        return;
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    let docs = body.lines().count() / 2;
    let items: Vec<String> = (0..docs)
        .map(|_| r#"{"index":{"status":201}}"#.to_string())
        .collect();
    let answer = format!(
        r#"{{"took":1,"errors":false,"items":[{}]}}"#,
        items.join(",")
    );
    keep.lock().unwrap().push(Bulk {
        target: head.split(' ').nth(1).unwrap_or_default().to_string(),
        head: head.to_lowercase(),
        body,
    });
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

/// The fields of the shipped index template.
fn template_fields() -> Vec<String> {
    let t: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            crate::util::repo().join("packaging/elasticsearch/llamactl-template.json"),
        )
        .unwrap(),
    )
    .unwrap();
    t["mappings"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

/// Checks one `_bulk` request as Elasticsearch would read it and returns its (action, document)
/// pairs.
fn check_bulk(b: &Bulk) -> Vec<(serde_json::Value, serde_json::Value)> {
    assert!(b.head.starts_with("post "), "{}", b.head);
    assert!(
        b.target == "/_bulk" || b.target.starts_with("/_bulk?"),
        "{}",
        b.target
    );
    assert!(
        b.head
            .contains("\r\ncontent-type: application/x-ndjson\r\n"),
        "{}",
        b.head
    );
    assert!(!b.body.is_empty() && b.body.ends_with('\n'), "{:?}", b.body);
    let lines: Vec<&str> = b.body.split_terminator('\n').collect();
    assert_eq!(lines.len() % 2, 0, "action and document lines pair up");
    let fields = template_fields();
    lines
        .chunks(2)
        .map(|pair| {
            let action: serde_json::Value = serde_json::from_str(pair[0]).unwrap();
            let doc: serde_json::Value = serde_json::from_str(pair[1]).unwrap();
            let index = action["index"]["_index"].as_str().unwrap_or_default();
            let ts = doc["timestamp"].as_str().unwrap_or_default();
            assert!(ts.len() >= 20 && ts.ends_with('Z'), "{doc}");
            // The daily index of the document's own UTC date.
            assert_eq!(index, format!("llamactl-{}", ts[..10].replace('-', ".")));
            for k in doc.as_object().unwrap().keys() {
                assert!(
                    fields.contains(k),
                    "{k} is not in the index template: {doc}"
                );
            }
            for k in ["timestamp", "level", "message", "component", "host", "pid"] {
                assert!(!doc[k].is_null(), "no {k}: {doc}");
            }
            assert!(
                ["error", "warn", "info", "debug", "trace"]
                    .contains(&doc["level"].as_str().unwrap()),
                "{doc}"
            );
            (action, doc)
        })
        .collect()
}

/// Splits an RFC 5424 message (as llamactld sends it: no structured data) into its PRI, the
/// header fields after it and MSG, checking the syntax of each.
fn rfc5424(m: &[u8]) -> (u32, Vec<String>, String) {
    let text = String::from_utf8(m.to_vec()).expect("UTF-8");
    let rest = text.strip_prefix('<').expect("<PRI>");
    let (pri, rest) = rest.split_once('>').expect("<PRI>");
    assert!(
        (1..=3).contains(&pri.len()) && pri.bytes().all(|b| b.is_ascii_digit()),
        "{text}"
    );
    let mut parts = rest.splitn(8, ' ');
    let mut header = Vec::new();
    for max in [2, 32, 255, 48, 128, 32, 1] {
        let f = parts
            .next()
            .unwrap_or_else(|| panic!("short header: {text}"));
        assert!(
            !f.is_empty() && f.len() <= max && f.bytes().all(|b| (33..=126).contains(&b)),
            "{f:?} in {text}"
        );
        header.push(f.to_string());
    }
    assert_eq!(header[0], "1", "VERSION: {text}");
    assert_eq!(header[6], "-", "STRUCTURED-DATA: {text}");
    let msg = parts.next().unwrap_or_default();
    let msg = msg.strip_prefix('\u{feff}').unwrap_or(msg).to_string();
    (pri.parse().unwrap(), header, msg)
}

/// The daemon's host name (the private systemd has a UTS namespace of its own).
fn host_of(d: &crate::util::sandbox::DaemonUnit) -> String {
    d.sb.ok(&["cat", "/proc/sys/kernel/hostname"])
        .trim()
        .to_string()
}

/// `2025-06-01T12:00:00.123456Z` is a time within `slack` of now.
fn recent(ts: &str, slack: Duration) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    llamactl::config::time::parse_rfc3339(ts)
        .is_ok_and(|t| (now - t).unsigned_abs() <= slack.as_secs())
}

#[test]
fn syslog_and_elasticsearch_receive_the_daemons_lines() {
    unit_test!();
    let dir = scratch("logship-socket");
    let sock_path = dir.join("syslog.sock");
    let syslog = UnixDatagram::bind(&sock_path).unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let es_port = l.local_addr().unwrap().port();
    let es = FakeEs::start(l);
    let d = daemon(
        "logship",
        &format!(
            "[logging]\nlevel = \"info\"\n\
             [[logging.destinations]]\ntype = \"syslog\"\nfacility = \"local0\"\nsocket = \"{}\"\n\
             [[logging.destinations]]\ntype = \"elasticsearch\"\nurl = \"http://127.0.0.1:{es_port}\"\n\
             username = \"llamactl\"\npassword = \"es-s3cret-pw\"\nflush_interval = \"200ms\"\n",
            sock_path.display()
        ),
        "",
    );
    let pid = d.prop("MainPID");
    let r = api(
        "POST",
        d.port,
        "/api/v1/instances/logship-doc",
        Some(serde_json::json!({
            "backend_type": "command",
            "backend_options": {"command": ["/bin/sh", "-c", "exec sleep 600"]}
        })),
    );
    assert!(
        r.status == 200 || r.status == 201,
        "{} {}",
        r.status,
        r.body
    );

    // Elasticsearch: the start-up lines and the instance's, with its name in `instance`.
    let docs = wait_for(
        "the instance's line in Elasticsearch",
        Duration::from_secs(30),
        || {
            let docs = es.documents();
            docs.iter()
                .any(|(_, d)| d["message"] == "instance created")
                .then_some(docs)
        },
    );
    let created = &docs
        .iter()
        .find(|(_, d)| d["message"] == "instance created")
        .unwrap()
        .1;
    assert_eq!(created["instance"], "logship-doc", "{created}");
    assert_eq!(created["component"], "instance", "{created}");
    assert_eq!(created["level"], "info");
    assert_eq!(created["pid"].to_string(), pid);
    assert_eq!(created["target"], "llamactl::instance::supervisor");
    assert!(created["fields"]["port"].is_string(), "{created}");
    assert_eq!(created["host"], host_of(&d));
    assert!(recent(
        created["timestamp"].as_str().unwrap(),
        Duration::from_secs(120)
    ));
    let starting = &docs
        .iter()
        .find(|(_, d)| d["message"] == "llamactld starting")
        .expect("the first line of the daemon")
        .1;
    assert_eq!(starting["component"], "daemon");
    assert!(starting.get("instance").is_none(), "{starting}");
    // Basic authentication on every request (base64 of "llamactl:es-s3cret-pw").
    for b in es.bulks() {
        assert!(
            b.head
                .contains("\r\nauthorization: basic bgxhbwfjdgw6zxmtcznjcmv0lxb3\r\n"),
            "{}",
            b.head
        );
    }

    // Syslog: RFC 5424 from facility local0, up to the instance's line.
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !lines
        .iter()
        .any(|(_, _, m): &(u32, Vec<String>, String)| m.starts_with("instance created"))
    {
        let n = syslog.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no RFC 5424 datagram ({e}) after {} lines; the journal:\n{}",
                lines.len(),
                d.journal_text()
            )
        });
        lines.push(rfc5424(&buf[..n]));
    }
    let host = host_of(&d);
    for (pri, h, _) in &lines {
        assert!((128..=135).contains(pri), "facility local0: {pri}");
        assert!(recent(&h[1], Duration::from_secs(120)), "{}", h[1]);
        assert_eq!(h[2], host);
        assert_eq!(h[3], "llamactld");
        assert_eq!(h[4], pid);
    }
    let (pri, h, msg) = lines.last().unwrap();
    assert_eq!(*pri, 16 * 8 + 6);
    assert_eq!(h[5], "instance");
    assert!(msg.contains(" instance=logship-doc"), "{msg}");
    assert!(lines
        .iter()
        .any(|(_, _, m)| m.starts_with("llamactld starting")));

    // Nothing dropped; the series are there for both destinations.
    let m = get(d.port, "/metrics").body;
    for dest in ["syslog", "elasticsearch"] {
        assert_eq!(
            sample(
                &m,
                &format!("llamactl_log_shipping_dropped_total{{destination=\"{dest}\"}}")
            ),
            Some(0.0),
            "{m}"
        );
    }
    promtool_check(&m);
    assert!(
        !d.journal_text().contains("es-s3cret-pw"),
        "the password reached the journal"
    );
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/logship-doc", None).status,
        204
    );
    // At stop, what is queued is sent: the daemon's last line reaches Elasticsearch.
    let out = d.systemctl("stop");
    assert!(out.status.success(), "{out:?}");
    wait_for(
        "the last line in Elasticsearch",
        Duration::from_secs(10),
        || {
            es.documents()
                .iter()
                .any(|(_, d)| d["message"] == "stopped")
                .then_some(())
        },
    );
}

/// rsyslogd as a child process, with only the given config (killed when dropped).
struct Rsyslogd(std::process::Child);

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real rsyslog reads the messages as RFC 5424, on a socket of its own configured as README
/// "Log destinations" says: every header field lands where it belongs.
#[test]
fn rsyslog_parses_the_messages() {
    unit_test!();
    let dir = scratch("logship-rsyslog-dir");
    let (sock, out) = (dir.join("llamactl.sock"), dir.join("out.log"));
    write(
        &dir.join("rsyslog.conf"),
        &format!(
            "global(workDirectory=\"{d}\")\n\
             module(load=\"imuxsock\" SysSock.Use=\"off\")\n\
             input(type=\"imuxsock\" Socket=\"{s}\" UseSpecialParser=\"off\" ParseHostname=\"on\")\n\
             template(name=\"fields\" type=\"string\" string=\"%syslogfacility-text%|%syslogseverity-text%|%protocol-version%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%procid%|%msgid%|%structured-data%|%msg%\\n\")\n\
             local0.* action(type=\"omfile\" file=\"{o}\" template=\"fields\")\n",
            d = dir.display(),
            s = sock.display(),
            o = out.display()
        ),
    );
    let rsyslogd = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("rsyslogd not found: install Debian's rsyslog (tools/test does)");
    let _r = Rsyslogd(
        Command::new(rsyslogd)
            .arg("-n")
            .arg("-f")
            .arg(dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("rsyslog's socket", Duration::from_secs(10), || {
        sock.exists().then_some(())
    });
    let d = daemon(
        "logship-rsyslog",
        &format!(
            "[[logging.destinations]]\ntype = \"syslog\"\nfacility = \"local0\"\nsocket = \"{}\"\n",
            sock.display()
        ),
        "",
    );
    let lines = wait_for(
        "the daemon's lines in rsyslog's file",
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            text.lines()
                .any(|l| l.contains("|ready address="))
                .then(|| text.lines().map(str::to_string).collect::<Vec<_>>())
        },
    );
    let (pid, host) = (d.prop("MainPID"), host_of(&d));
    for l in &lines {
        let f: Vec<&str> = l.splitn(10, '|').collect();
        assert_eq!(f.len(), 10, "{l}");
        assert_eq!(f[0], "local0", "{l}");
        assert!(["info", "warning", "err", "debug"].contains(&f[1]), "{l}");
        assert_eq!(f[2], "1", "{l}");
        // rsyslog's own rendering of the time it parsed: 2025-06-01T12:00:00.123456+00:00.
        assert!(recent(f[3], Duration::from_secs(120)), "{l}");
        assert_eq!(
            (f[4], f[5], f[6]),
            (host.as_str(), "llamactld", pid.as_str()),
            "{l}"
        );
        assert_eq!(f[8], "-", "{l}");
    }
    let starting = lines
        .iter()
        .find(|l| l.contains("|llamactld starting "))
        .expect("the first line");
    assert!(
        starting.contains("|daemon|-|llamactld starting version="),
        "{starting}"
    );
}

/// A server that accepts connections and never answers (nor reads).
struct Blackhole {
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Blackhole {
    fn start(l: TcpListener) -> Blackhole {
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (s, h) = (stop.clone(), held.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => h.lock().unwrap().push(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Blackhole {
            stop,
            held,
            thread: Some(thread),
        }
    }

    fn connections(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.held.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn a_dead_elasticsearch_costs_requests_nothing_and_is_counted() {
    unit_test!();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let es_port = l.local_addr().unwrap().port();
    let hole = Blackhole::start(l);
    // Every request logs a debug line: 3000 requests against a queue of 100.
    let d = daemon(
        "logship-dead",
        &format!(
            "[rate_limit]\nenabled = false\n[logging]\nlevel = \"debug\"\n\
             [[logging.destinations]]\ntype = \"elasticsearch\"\nurl = \"http://127.0.0.1:{es_port}\"\n\
             queue_size = 100\nbatch_size = 20\nflush_interval = \"100ms\"\ntimeout = \"10s\"\nmax_backoff = \"1s\"\n"
        ),
        "",
    );
    let slowest = slowest_get(d.port, "/api/health/live", 3000);
    // A request that waited for the destination would wait for its 10 s timeout.
    assert!(
        slowest < Duration::from_secs(2),
        "slowest request {slowest:?}"
    );
    assert!(hole.connections() >= 1, "the sender never connected");
    let m = get(d.port, "/metrics").body;
    let dropped = sample(
        &m,
        "llamactl_log_shipping_dropped_total{destination=\"elasticsearch\"}",
    )
    .unwrap_or_else(|| panic!("no drop counter in\n{m}"));
    eprintln!(
        "3000 requests against a dead Elasticsearch: slowest {slowest:?}, {dropped} lines dropped"
    );
    assert!(dropped >= 2000.0, "dropped {dropped}");
    d.wait_log("cannot ship log lines to Elasticsearch");

    // Elasticsearch comes back on the same port: the waiting batch and what followed arrive,
    // and the recovery is said once, as the failure was.
    drop(hole);
    let es = FakeEs::start(TcpListener::bind(("127.0.0.1", es_port)).unwrap());
    d.wait_log("Elasticsearch takes log lines again");
    wait_for(
        "request lines in Elasticsearch",
        Duration::from_secs(20),
        || {
            es.documents()
                .iter()
                .any(|(_, doc)| doc["message"] == "request" && doc["fields"]["route"].is_string())
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let count = |needle: &str| {
        d.journal()
            .iter()
            .filter(|e| e["MESSAGE"].as_str().is_some_and(|m| m.contains(needle)))
            .count()
    };
    assert_eq!(count("cannot ship log lines to Elasticsearch"), 1);
    assert_eq!(count("Elasticsearch takes log lines again"), 1);
    // The sender's own lines are not shipped (no loop): they are only in the journal.
    assert!(!es.documents().iter().any(|(_, doc)| {
        let m = doc["message"].as_str().unwrap_or("");
        m.contains("cannot ship") || m.contains("takes log lines again")
    }));
    assert_eq!(d.prop("ActiveState"), "active");
    assert_eq!(d.prop("NRestarts"), "0");
}

/// The guide's `logging:` example, as TOML.
#[test]
fn the_guides_logging_example_passes_check_config() {
    let dir = scratch("logship-check-config");
    let f = dir.join("config.toml");
    write(
        &f,
        "[logging]\nlevel = \"info\"\noutput = \"json\"\n\n\
         [[logging.destinations]]\ntype = \"file\"\npath = \"/var/log/llamactl/app.log\"\n\n\
         [[logging.destinations]]\ntype = \"syslog\"\nfacility = \"local0\"\n\n\
         [[logging.destinations]]\ntype = \"elasticsearch\"\nurl = \"http://elasticsearch:9200\"\n",
    );
    let out = run(Command::new(LLAMACTLD)
        .arg("--check-config")
        .arg("-c")
        .arg(&f));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    write(
        &f,
        "[[logging.destinations]]\ntype = \"elasticsearch\"\nurl = \"https://elasticsearch:9200\"\n",
    );
    let out = run(Command::new(LLAMACTLD)
        .arg("--check-config")
        .arg("-c")
        .arg(&f));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("`logging.destinations.url`"),
        "{err}"
    );
}
