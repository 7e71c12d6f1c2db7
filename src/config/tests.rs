//! Config parsing, defaults, validation and the errors an operator sees (file, line, key).

use super::*;
use std::path::Path;

fn p() -> &'static Path {
    Path::new("/etc/llamactl/config.toml")
}

#[test]
fn empty_file_is_defaults() {
    let c = parse("", p()).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.server.host, "127.0.0.1");
    assert_eq!(c.server.port, 8080);
    assert_eq!(c.monitoring.prometheus.path, "/metrics");
}

#[test]
fn shipped_default_config_parses_to_the_defaults() {
    // etc/llamactl/config.toml documents every key with its default value: if a default changes in
    // code, this test makes the file change with it.
    let text = include_str!("../../etc/llamactl/config.toml");
    let c = parse(text, p()).unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn shipped_config_documents_every_key() {
    let text = include_str!("../../etc/llamactl/config.toml");
    let uncommented: String = text
        .lines()
        .map(|l| l.trim_start().trim_start_matches('#').trim_start())
        .collect::<Vec<_>>()
        .join("\n");
    let full = toml::to_string(&Config::default()).unwrap();
    let mut section = String::new();
    for line in full.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_string();
            // A table-valued key (e.g. `headers = {}`) may be documented inline.
            let last = section
                .trim_matches(['[', ']'])
                .rsplit('.')
                .next()
                .unwrap_or("");
            assert!(
                uncommented.contains(&section) || uncommented.contains(&format!("\n{last} =")),
                "section {section} undocumented"
            );
        } else if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            assert!(
                uncommented.contains(&format!("\n{key} =")),
                "key {key} of {section} is not documented in etc/llamactl/config.toml"
            );
        }
    }
    for key in ["state_dir", "address", "destinations"] {
        assert!(uncommented.contains(key), "{key} undocumented");
    }
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = "[server]\nport = 9000\nprot = 1\n";
    let e = parse(text, p()).unwrap_err().to_string();
    assert!(e.starts_with("/etc/llamactl/config.toml: line 3"), "{e}");
    assert!(e.contains("prot"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn unknown_section_is_rejected() {
    let e = parse("[sever]\nport = 1\n", p()).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("sever"), "{e}");
}

#[test]
fn wrong_type_names_line_and_key() {
    let text = "[monitoring]\nenabled = true\n[monitoring.prometheus]\nenabled = \"yes\"\n";
    let e = parse(text, p()).unwrap_err().to_string();
    assert!(e.contains("line 4"), "{e}");
    assert!(e.contains("key `monitoring.prometheus.enabled`"), "{e}");
    assert!(e.contains("invalid type"), "{e}");
}

#[test]
fn a_bad_key_in_a_log_destination_names_its_element_line_and_key() {
    let text = "[[logging.destinations]]\ntype = \"file\"\npath = \"/tmp/x.log\"\n\n\
                [[logging.destinations]]\ntype = \"elasticsearch\"\nurl = \"http://es:9200\"\n\
                index_prefix = 5\n";
    let e = parse(text, p()).unwrap_err().to_string();
    // The second element's header, not the list's first.
    assert!(e.contains("line 5, column 1"), "{e}");
    assert!(
        e.contains("key `logging.destinations[1]`: `index_prefix`: invalid type"),
        "{e}"
    );
    let cases = [
        // (element, what the message must say)
        ("type = \"elasticsearch\"\n", "missing field `url`"),
        (
            "type = \"syslog\"\nfacility = \"local9\"\n",
            "`facility`: unknown variant `local9`",
        ),
        (
            "type = \"file\"\npath = \"/x\"\nfacility = \"local0\"\n",
            "unknown field `facility`",
        ),
        ("type = \"stdout\"\n", "unknown variant `stdout`"),
        ("type = 3\n", "`type`: expected a string"),
        ("path = \"/x\"\n", "missing field `type`"),
    ];
    for (element, want) in cases {
        let text = format!("[logging]\nlevel = \"info\"\n[[logging.destinations]]\n{element}");
        let e = parse(&text, p()).unwrap_err().to_string();
        assert!(
            e.contains("line 3, column 1, key `logging.destinations[0]`"),
            "{e}"
        );
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn syntax_error_names_line() {
    let e = parse("[server\nport = 1\n", p()).unwrap_err().to_string();
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn durations_and_enums() {
    let text = "[systemd]\nbus = \"user\"\nready_timeout = \"1500ms\"\n[logging]\nlevel = \"debug\"\noutput = \"json\"\n";
    let c = parse(text, p()).unwrap();
    assert_eq!(c.systemd.bus, BusKind::User);
    assert_eq!(c.systemd.ready_timeout.get().as_millis(), 1500);
    assert_eq!(c.logging.level, LogLevel::Debug);
    assert_eq!(c.logging.output, LogOutput::Json);
    let e = parse("[systemd]\nbus = \"session\"\n", p())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown variant") && e.contains("systemd.bus"),
        "{e}"
    );
}

/// The monitoring guide's `logging:` example, as TOML.
const SEED_LOGGING: &str = r#"
[logging]
level = "info"
output = "json"

[[logging.destinations]]
type = "file"
path = "/var/log/llamactl/app.log"

[[logging.destinations]]
type = "syslog"
facility = "local0"

[[logging.destinations]]
type = "elasticsearch"
url = "http://elasticsearch:9200"
"#;

#[test]
fn the_guides_destinations_parse_and_validate() {
    let l = load_text(SEED_LOGGING).unwrap();
    let d = &l.config.logging.destinations;
    assert_eq!(d.len(), 3);
    assert!(matches!(
        &d[0],
        LogDestination::File {
            format: FileFormat::Json,
            ..
        }
    ));
    let LogDestination::Syslog(s) = &d[1] else {
        panic!("{d:?}")
    };
    assert_eq!(s.facility, SyslogFacility::Local0);
    assert_eq!(s.facility.code(), 16);
    assert_eq!(s.socket, Path::new("/dev/log"));
    let LogDestination::Elasticsearch(e) = &d[2] else {
        panic!("{d:?}")
    };
    assert_eq!(e.url, "http://elasticsearch:9200");
    assert_eq!(e.index_prefix, "llamactl");
    assert_eq!(
        e.bulk_url(),
        "http://elasticsearch:9200/_bulk?filter_path=errors,items.*.status,items.*.error.type,items.*.error.reason"
    );
    let labels: Vec<_> = d.iter().map(LogDestination::label).collect();
    assert_eq!(
        labels,
        [None, Some("syslog".into()), Some("elasticsearch".into())]
    );
    // The default facility, every key given, and a password that never prints.
    let full = r#"
[[logging.destinations]]
type = "syslog"
name = "local-rsyslog"
socket = "/run/rsyslog/llamactl.sock"
queue_size = 100
[[logging.destinations]]
type = "elasticsearch"
name = "es-main"
url = "http://10.0.0.5:9200/es/"
index_prefix = "llamactl-prod"
username = "llamactl"
password = "s3cret-pw"
queue_size = 2000
batch_size = 200
flush_interval = "250ms"
timeout = "5s"
max_backoff = "1m"
"#;
    let c = load_text(full).unwrap().config;
    let LogDestination::Syslog(s) = &c.logging.destinations[0] else {
        panic!()
    };
    assert_eq!((s.facility, s.queue_size), (SyslogFacility::Daemon, 100));
    let LogDestination::Elasticsearch(e) = &c.logging.destinations[1] else {
        panic!()
    };
    assert_eq!(e.password.as_ref().unwrap().expose(), "s3cret-pw");
    assert!(e.bulk_url().starts_with("http://10.0.0.5:9200/es/_bulk?"));
    assert!(!format!("{c:?}").contains("s3cret-pw"));
    assert!(!toml::to_string(&c).unwrap().contains("s3cret-pw"));
    assert_eq!(
        c.logging.destinations[1].label().as_deref(),
        Some("es-main")
    );
}

#[test]
fn destination_parse_errors_name_the_key() {
    for (text, needle) in [
        ("type = \"kafka\"\n", "unknown variant `kafka`"),
        (
            "type = \"syslog\"\nfacility = \"local9\"\n",
            "unknown variant `local9`",
        ),
        ("type = \"syslog\"\nurl = \"x\"\n", "unknown field `url`"),
        (
            "type = \"elasticsearch\"\nurl = \"http://es:9200\"\nindex = \"x\"\n",
            "unknown field `index`",
        ),
        (
            "type = \"elasticsearch\"\nurl = \"http://es:9200\"\ntimeout = \"soon\"\n",
            "invalid duration \"soon\"",
        ),
    ] {
        let text = format!("[[logging.destinations]]\n{text}");
        let e = parse(&text, p()).unwrap_err().to_string();
        assert!(
            e.contains(needle) && e.contains("logging.destinations"),
            "{text}: {e}"
        );
    }
}

#[test]
fn destination_validation_errors_name_the_key() {
    let es = |more: &str| {
        format!(
            "[[logging.destinations]]\ntype = \"elasticsearch\"\nurl = \"http://es:9200\"\n{more}"
        )
    };
    let syslog = |more: &str| format!("[[logging.destinations]]\ntype = \"syslog\"\n{more}");
    for (text, key, why) in [
        (
            "[[logging.destinations]]\ntype = \"file\"\npath = \"app.log\"\n".to_string(),
            "path",
            "absolute",
        ),
        (syslog("socket = \"dev/log\"\n"), "socket", "absolute"),
        (syslog("queue_size = 0\n"), "queue_size", "not in 1..="),
        (syslog("queue_size = 1000001\n"), "queue_size", "not in 1..="),
        (syslog("name = \"Main Syslog\"\n"), "name", "lowercase"),
        (syslog("") + &syslog(""), "name", "already called \"syslog\""),
        (
            syslog("name = \"x\"\n") + &es("name = \"x\"\n"),
            "name",
            "already called \"x\"",
        ),
        ("[[logging.destinations]]\ntype = \"elasticsearch\"\nurl = \" \"\n".to_string(), "url", "required"),
        (
            "[[logging.destinations]]\ntype = \"elasticsearch\"\nurl = \"https://es:9200\"\n".to_string(),
            "url",
            "https is not supported",
        ),
        (
            "[[logging.destinations]]\ntype = \"elasticsearch\"\nurl = \"es:9200\"\n".to_string(),
            "url",
            "not an http:// URL",
        ),
        (
            "[[logging.destinations]]\ntype = \"elasticsearch\"\nurl = \"http://es:9200/?pretty\"\n".to_string(),
            "url",
            "no query",
        ),
        (
            "[[logging.destinations]]\ntype = \"elasticsearch\"\nurl = \"http://elastic:pw@es:9200\"\n".to_string(),
            "url",
            "credentials do not go in the URL",
        ),
        (es("index_prefix = \"Llamactl\"\n"), "index_prefix", "lowercase"),
        (es("index_prefix = \"_x\"\n"), "index_prefix", "starting with"),
        (es("index_prefix = \"a/b\"\n"), "index_prefix", "not an index name prefix"),
        (es("username = \"elastic\"\n"), "password", "without a password"),
        (es("password = \"pw\"\n"), "username", "without a username"),
        (es("username = \"a:b\"\npassword = \"pw\"\n"), "username", "not a user name"),
        (es("username = \"u\"\npassword = \"p\\nw\"\n"), "password", "control characters"),
        (
            es("username = \"u\"\npassword = \"pw\"\napi_key = \"k\"\n"),
            "api_key",
            "not both",
        ),
        (es("api_key = \"\"\n"), "api_key", "empty"),
        (es("api_key = \"a\\u0001\"\n"), "api_key", "header"),
        (es("batch_size = 0\n"), "batch_size", "not in 1..=10000"),
        (es("queue_size = 10\nbatch_size = 11\n"), "batch_size", "more than queue_size"),
        (es("queue_size = 0\nbatch_size = 0\n"), "batch_size", "not in"),
        (es("flush_interval = \"0s\"\n"), "flush_interval", "not between 10ms and 60s"),
        (es("flush_interval = \"2m\"\n"), "flush_interval", "not between"),
        (es("timeout = \"50ms\"\n"), "timeout", "not between 100ms and 300s"),
        (es("max_backoff = \"100ms\"\n"), "max_backoff", "not between 500ms and 3600s"),
    ] {
        let e = load_text(&text).unwrap_err().to_string();
        assert!(
            e.contains(&format!("`logging.destinations.{key}`")) && e.contains(why),
            "{text}: {e}"
        );
        assert!(!e.contains("p\nw") && !e.contains("a\u{1}"), "a secret in {e}");
    }
}

fn load_text(text: &str) -> Result<Loaded, ConfigError> {
    let dir = std::env::temp_dir().join(format!("llamactl-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join(format!(
        "{:x}.toml",
        text.len() * 31 + text.bytes().map(u64::from).sum::<u64>() as usize
    ));
    std::fs::write(&f, text).unwrap();
    let r = load(&f, true);
    let _ = std::fs::remove_file(&f);
    r
}

#[test]
fn validation_errors_name_the_key() {
    for (text, key) in [
        ("[server]\nhost = \"not an ip\"\n", "server.host"),
        ("[server]\nport = 0\n", "server.port"),
        ("[server]\nstate_dir = \"relative\"\n", "server.state_dir"),
        (
            "[monitoring.prometheus]\npath = \"metrics\"\n",
            "monitoring.prometheus.path",
        ),
        (
            "[monitoring.prometheus]\npath = \"/api/health\"\n",
            "monitoring.prometheus.path",
        ),
        ("[systemd]\nslice = \"../x\"\n", "systemd.slice"),
        (
            "[systemd]\ncheck_interval = \"0s\"\n",
            "systemd.check_interval",
        ),
        (
            "[telemetry]\nsampling_rate = 2.0\n",
            "telemetry.sampling_rate",
        ),
        ("[audit]\nevents = [\"instance.explode\"]\n", "audit.events"),
    ] {
        let e = load_text(text).unwrap_err().to_string();
        assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
    }
}

#[test]
fn the_debug_port_stays_local_and_pyroscope_is_checked() {
    for (text, key) in [
        ("[debug]\npprof_host = \"0.0.0.0\"\n", "debug.pprof_host"),
        ("[debug]\npprof_host = \"10.0.0.5\"\n", "debug.pprof_host"),
        (
            "[debug]\npprof_host = \"pprof.example\"\n",
            "debug.pprof_host",
        ),
        ("[debug]\npprof_port = 0\n", "debug.pprof_port"),
        (
            "[debug]\npprof_enabled = true\npprof_port = 8080\n",
            "debug.pprof_port",
        ),
        (
            "[profiling]\nenabled = true\n",
            "profiling.pyroscope.server_address",
        ),
        (
            "[profiling.pyroscope]\nserver_address = \"https://pyro:4040\"\n",
            "profiling.pyroscope.server_address",
        ),
        (
            "[profiling.pyroscope]\nserver_address = \"pyro:4040\"\n",
            "profiling.pyroscope.server_address",
        ),
        (
            "[profiling.pyroscope]\napplication_name = \"a b\"\n",
            "profiling.pyroscope.application_name",
        ),
        (
            "[profiling.pyroscope]\nupload_interval = \"500ms\"\n",
            "profiling.pyroscope.upload_interval",
        ),
        (
            "[profiling.pyroscope]\nupload_interval = \"301s\"\n",
            "profiling.pyroscope.upload_interval",
        ),
    ] {
        let e = load_text(text).unwrap_err().to_string();
        assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
    }
    let https = load_text("[profiling.pyroscope]\nserver_address = \"https://p\"\n")
        .unwrap_err()
        .to_string();
    assert!(https.contains("https is not supported"), "{https}");
    for ok in [
        "[debug]\npprof_enabled = true\n",
        "[debug]\npprof_host = \"::1\"\n",
        "[debug]\npprof_host = \"0.0.0.0\"\npprof_allow_remote = true\n",
        "[profiling]\nenabled = true\n[profiling.pyroscope]\nserver_address = \"http://127.0.0.1:4040/\"\nauth_token = \"t0k3n\"\nupload_interval = \"2s\"\n",
    ] {
        let l = load_text(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert!(l.warnings.is_empty(), "{ok}: {:?}", l.warnings);
    }
}

#[test]
fn telemetry_needs_an_http_endpoint_and_sendable_headers() {
    let err = |text: &str| match load_text(text) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted: {text}"),
    };
    let on = "[telemetry]\nenabled = true\n";
    assert!(err(on).contains("telemetry.otlp.endpoint"), "required");
    let e = err(&format!(
        "{on}[telemetry.otlp]\nendpoint = \"https://otlp.example:4318\"\n"
    ));
    assert!(e.contains("https is not supported"), "{e}");
    let e = err(&format!(
        "{on}[telemetry.otlp]\nendpoint = \"localhost\"\nprotocol = \"grpc\"\n"
    ));
    assert!(e.contains("not an http:// URL"), "{e}");
    let e = err(&format!(
        "{on}[telemetry.otlp]\nendpoint = \"http://c:4317\"\nprotocol = \"http/json\"\n"
    ));
    assert!(e.contains("protocol"), "{e}");
    let e = err(&format!("{on}[telemetry.otlp]\nendpoint = \"http://c:4318\"\n[telemetry.otlp.headers]\n\"x y\" = \"v\"\n"));
    assert!(e.contains("telemetry.otlp.headers.x y"), "{e}");
    let e = err(&format!("{on}[telemetry.otlp]\nendpoint = \"http://c:4318\"\n[telemetry.otlp.headers]\nauthorization = \"top\\nsecret\"\n"));
    assert!(e.contains("cannot carry") && !e.contains("secret"), "{e}");
    assert!(err("[telemetry]\nsampling_rate = 1.5\n").contains("telemetry.sampling_rate"));
    let ok = load_text(&format!(
        "{on}[telemetry.otlp]\nendpoint = \"http://127.0.0.1:4318\"\n"
    ))
    .unwrap();
    assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);
    assert_eq!(
        ok.config.telemetry.otlp.effective_endpoint().0,
        "http://127.0.0.1:4318/v1/traces"
    );
}

#[test]
fn the_seeds_jaeger_endpoint_goes_to_jaegers_otlp_receiver() {
    // monitoring.md's example, as TOML.
    let l = load_text("[telemetry]\nenabled = true\nsampling_rate = 0.1\n[telemetry.otlp]\nendpoint = \"http://jaeger:14268/api/traces\"\n").unwrap();
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(
        l.warnings[0].contains("http://jaeger:4318/v1/traces"),
        "{}",
        l.warnings[0]
    );
    let mut o = l.config.telemetry.otlp.clone();
    assert_eq!(o.effective_endpoint().0, "http://jaeger:4318/v1/traces");
    o.protocol = OtlpProtocol::Grpc;
    assert_eq!(o.effective_endpoint().0, "http://jaeger:4317");
    o.endpoint = "http://collector:4318/custom/traces".into();
    o.protocol = OtlpProtocol::HttpProtobuf;
    assert_eq!(
        o.effective_endpoint(),
        ("http://collector:4318/custom/traces".into(), None)
    );
}

#[test]
fn missing_default_file_means_defaults_but_explicit_must_exist() {
    let nowhere = Path::new("/nonexistent/llamactl/config.toml");
    let l = load(nowhere, false).unwrap();
    assert!(l.path.is_none());
    assert_eq!(l.config, Config::default());
    let e = load(nowhere, true).unwrap_err().to_string();
    assert!(e.contains("cannot read config file /nonexistent"), "{e}");
}

#[test]
fn path_resolution_order() {
    let env = MapEnv::default().with("LLAMACTL_CONFIG", "/env.toml");
    assert_eq!(
        resolve_path(Some(Path::new("/flag.toml")), &env).0,
        Path::new("/flag.toml")
    );
    assert_eq!(resolve_path(None, &env), (PathBuf::from("/env.toml"), true));
    assert_eq!(
        resolve_path(None, &MapEnv::default()),
        (PathBuf::from(DEFAULT_PATH), false)
    );
}

#[test]
fn state_dir_from_systemd() {
    let c = Config::default();
    let env = MapEnv::default().with("STATE_DIRECTORY", "/var/lib/llamactl:/var/lib/other");
    assert_eq!(c.state_dir(&env), Path::new("/var/lib/llamactl"));
    assert_eq!(
        c.state_dir(&MapEnv::default()),
        Path::new(DEFAULT_STATE_DIR)
    );
}

#[test]
fn secrets_never_in_debug_or_serialized_config() {
    let text = "[telemetry.otlp]\nendpoint = \"http://otel:4318\"\nheaders = { authorization = \"Bearer s3cr3t\" }\n";
    let c = parse(text, p()).unwrap();
    assert_eq!(
        c.telemetry.otlp.headers["authorization"].expose(),
        "Bearer s3cr3t"
    );
    assert!(!format!("{c:?}").contains("s3cr3t"));
    assert!(!serde_json::to_string(&c).unwrap().contains("s3cr3t"));
}

#[test]
fn local_url_uses_loopback_for_wildcards() {
    let mut c = Config::default();
    assert_eq!(c.local_url(), "http://127.0.0.1:8080");
    c.server.host = "0.0.0.0".into();
    assert_eq!(c.local_url(), "http://127.0.0.1:8080");
    c.server.host = "::1".into();
    assert_eq!(c.local_url(), "http://[::1]:8080");
}

/// Parses and validates, like `load` does for a file.
fn checked(text: &str) -> Result<Config, String> {
    let c = parse(text, p()).map_err(|e| e.to_string())?;
    validate::validate(&c, p()).map_err(|e| e.to_string())?;
    Ok(c)
}

#[test]
fn a_non_loopback_listener_needs_inference_and_management_auth() {
    let e = checked("[server]\nhost = \"0.0.0.0\"\n").unwrap_err();
    assert!(e.contains("auth.require_inference_auth"), "{e}");
    assert!(
        checked("[server]\nhost = \"0.0.0.0\"\n[auth]\nrequire_inference_auth = true\n").is_ok()
    );
    assert!(checked(
        "[server]\nhost = \"10.0.0.5\"\n[auth]\nallow_unauthenticated_inference = true\n"
    )
    .is_ok());
    let e = checked("[server]\nhost = \"0.0.0.0\"\n[auth]\nrequire_inference_auth = true\nrequire_management_auth = false\n").unwrap_err();
    assert!(e.contains("auth.require_management_auth"), "{e}");
    // Loopback stays as before.
    for h in ["127.0.0.1", "::1", "localhost", "127.0.0.2"] {
        assert!(
            checked(&format!("[server]\nhost = \"{h}\"\n")).is_ok(),
            "{h}"
        );
    }
}

#[test]
fn instances_never_run_as_root() {
    for u in ["root", "0"] {
        let e = checked(&format!("[instances]\nuser = \"{u}\"\n")).unwrap_err();
        assert!(e.contains("instances.user") && e.contains("root"), "{e}");
    }
    assert!(checked("[instances]\nuser = \"nobody\"\n").is_ok());
}

#[test]
fn provisioned_keys_need_a_valid_digest_and_never_the_key() {
    let hash = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let c = checked(&format!(
        "[[auth.keys]]\nname = \"prom\"\nscope = \"monitoring\"\nhash = \"{hash}\"\nexpires = 2027-01-31T00:00:00Z\n"
    ))
    .unwrap();
    assert_eq!(c.auth.keys[0].expires, Some(Expiry(1_801_353_600)));
    assert!(c.auth.keys[0].can_start && c.auth.keys[0].can_evict);
    let c = checked(&format!(
        "[[auth.keys]]\nname = \"prom\"\nscope = \"monitoring\"\nhash = \"{hash}\"\nexpires = \"2027-01-31\"\ncan_evict = false\n"
    ))
    .unwrap();
    assert_eq!(c.auth.keys[0].expires, Some(Expiry(1_801_353_600)));
    assert!(!c.auth.keys[0].can_evict);
    for (text, want) in [
        (
            "name = \"k\"\nscope = \"monitoring\"\nkey = \"llk_plain_text_key_in_config\"\n",
            "must not be written in the config",
        ),
        ("name = \"k\"\nscope = \"monitoring\"\n", "hash"),
        (
            "name = \"k\"\nscope = \"monitoring\"\nhash = \"md5:abc\"\n",
            "sha256:",
        ),
        (
            "name = \"k\"\nscope = \"monitoring\"\nhash = \"sha256:xyz\"\n",
            "64 hex",
        ),
        (
            "name = \"bad name\"\nscope = \"monitoring\"\nhash = \"sha256:00\"\n",
            "invalid key name",
        ),
        (
            "name = \"k\"\nscope = \"root\"\nhash = \"sha256:00\"\n",
            "unknown variant",
        ),
        (
            "name = \"k\"\nscope = \"monitoring\"\nhash = \"sha256:00\"\nexpires = \"soon\"\n",
            "invalid date",
        ),
    ] {
        let e = checked(&format!("[[auth.keys]]\n{text}")).unwrap_err();
        assert!(e.contains(want), "{text}: {e}");
        assert!(!e.contains("llk_plain_text_key_in_config"), "{e}");
    }
    let twice = format!("[[auth.keys]]\nname = \"k\"\nscope = \"monitoring\"\nhash = \"{hash}\"\n");
    assert!(checked(&format!("{twice}{twice}"))
        .unwrap_err()
        .contains("two keys"));
}

#[test]
fn browser_settings_are_checked() {
    assert!(checked("[server]\ncors_origins = [\"https://ui.example:3000\", \"http://[::1]:8081\", \"http://localhost\"]\nallowed_hosts = [\"llm.internal\", \"10.0.0.5\"]\n").is_ok());
    for bad in [
        "ui.example",
        "https://ui.example/",
        "ftp://x",
        "https://ui.example:99999",
        "*",
    ] {
        let e = checked(&format!("[server]\ncors_origins = [\"{bad}\"]\n")).unwrap_err();
        assert!(e.contains("server.cors_origins"), "{bad}: {e}");
    }
    for bad in ["http://llm.internal", "llm.internal:8080", "a/b", ""] {
        let e = checked(&format!("[server]\nallowed_hosts = [\"{bad}\"]\n")).unwrap_err();
        assert!(e.contains("server.allowed_hosts"), "{bad}: {e}");
    }
    assert!(checked("[server]\nsocket = \"relative.sock\"\n").is_err());
    assert!(checked("[server]\nsocket = \"\"\n").is_ok());
}

#[test]
fn instance_policy_settings_are_checked() {
    let c = checked("[instances]\nallowed_backends = [\"llama_cpp\", \"command\"]\nenvironment_deny = [\"HF_*\", \"MY_VAR\"]\n").unwrap();
    assert_eq!(
        c.instances.allowed_backends,
        vec![BackendType::LlamaCpp, BackendType::Command]
    );
    assert!(checked("[instances]\nallowed_backends = [\"mlx\"]\n").is_err());
    assert!(checked("[instances]\nallowed_backends = []\n").is_err());
    assert!(checked("[instances]\nenvironment_deny = [\"*\"]\n").is_err());
    assert!(checked("[instances]\nmax_instances = 0\n").is_err());
}

#[test]
fn rate_limits_fill_in_what_is_left_out() {
    let c = checked("").unwrap();
    assert_eq!(c.rate_limit.bucket(LimitGroup::Management), (50.0, 200));
    assert_eq!(c.rate_limit.bucket(LimitGroup::Inference), (0.0, 0));
    assert_eq!(c.rate_limit.bucket(LimitGroup::Auth), (2.0, 20));
    // A rate alone keeps the group's burst, or twice the rate where it has none.
    let c = checked("[rate_limit.management]\nrequests_per_second = 10\n[rate_limit.inference]\nrequests_per_second = 2.5\n").unwrap();
    assert_eq!(c.rate_limit.bucket(LimitGroup::Management), (10.0, 200));
    assert_eq!(c.rate_limit.bucket(LimitGroup::Inference), (2.5, 5));
    assert!(c.rate_limit.enabled());
    for bad in [
        "[rate_limit.auth]\nrequests_per_second = -1\n",
        "[rate_limit.auth]\nrequests_per_second = nan\n",
        "[rate_limit.auth]\nrequests_per_second = 5\nburst = 0\n",
        "[rate_limit.monitoring]\nburst = -3\n",
        "[rate_limit.everything]\nburst = 3\n",
    ] {
        assert!(checked(bad).is_err(), "{bad}");
    }
}

#[test]
fn audit_settings_are_checked_and_the_file_follows_logs_directory() {
    let c = checked("").unwrap();
    assert!(c.audit.enabled && c.audit.journal && c.audit.file && c.audit.api);
    assert_eq!(c.audit.events.len(), AUDIT_EVENTS.len());
    assert_eq!(
        c.audit.log_path(Some("/var/log/llamactl-it/x:/other")),
        Path::new("/var/log/llamactl-it/x/audit.log")
    );
    assert_eq!(
        c.audit.log_path(None),
        Path::new("/var/log/llamactl/audit.log")
    );
    // The seed's example, as TOML.
    let seed = "[audit]\nenabled = true\nlog_file = \"/var/log/llamactl/audit.log\"\nevents = [\"auth.login\", \"auth.logout\", \"instance.create\", \"instance.delete\", \"config.update\"]\n";
    let c = checked(seed).unwrap();
    assert_eq!(c.audit.events.len(), 5);
    assert!(checked("[audit]\nevents = [\"config.reload\"]\n").is_err());
    assert!(checked("[audit]\nlog_file = \"audit.log\"\n").is_err());
    assert!(checked("[audit]\nfile = false\n")
        .unwrap_err()
        .contains("audit.api"));
    assert!(checked("[audit]\nfile = false\napi = false\n").is_ok());
    assert!(checked("[audit]\non_failure = \"ignore\"\n").is_err());
}
