//! The typed spec: names, options to flags, bounded values, errors naming the field, round trips.

use super::*;
use crate::config::BackendsConfig;
use serde_json::{json, Value};

fn opts(v: Value) -> Result<InstanceOptions, String> {
    let mut o: InstanceOptions = parse_options(&serde_json::to_vec(&v).unwrap())?;
    o.normalise(&InstancesConfig::default())?;
    Ok(o)
}

#[test]
fn names() {
    for ok in ["a", "smol", "llama-3.1-8b", "q4_k_m", "0x"] {
        validate_name(ok).unwrap();
    }
    let long = "a".repeat(300);
    for bad in [
        "",
        "../x",
        "a b",
        "x.service",
        "A",
        "-x",
        ".x",
        "x/y",
        "x\n",
        "é",
        long.as_str(),
        "a.slice",
    ] {
        let e = validate_name(bad).unwrap_err();
        assert!(e.starts_with("invalid instance name"), "{bad}: {e}");
    }
    assert_eq!(unit_name("smol"), "llamactl-smol.service");
    assert_eq!(name_from_unit("llamactl-smol.service"), Some("smol"));
    assert_eq!(name_from_unit("llamactl.service"), None);
    assert_eq!(name_from_unit("llamactld-it-x.service"), None);
    assert_eq!(name_from_unit("llamactl-smol.scope"), None);
}

#[test]
fn llama_options_map_to_flags_with_defaults_filled() {
    let o = opts(json!({
        "backend_type": "llama_cpp",
        "backend_options": {"m": "/m/smol.gguf", "c": 2048, "ngl": 0, "port": 8123,
                            "flash_attn": true, "no_mmap": false, "lora": ["/a", "/b"],
                            "extra_args": ["--verbose"]},
        "environment": {"HF_HOME": "/var/cache/hf"},
        "gpus": [0, 1]
    }))
    .unwrap();
    assert_eq!(o.backend_options.model.as_deref(), Some("/m/smol.gguf"));
    assert_eq!(o.auto_restart, Some(true));
    assert_eq!(o.max_restarts, Restarts::new(3));
    assert_eq!(o.restart_delay, DelaySeconds::new(5));
    let argv = command_line(&o, &BackendsConfig::default());
    assert_eq!(
        argv,
        [
            "llama-server",
            "--host",
            "127.0.0.1",
            "--port",
            "8123",
            "--metrics",
            "--ctx-size",
            "2048",
            "--flash-attn",
            "--gpu-layers",
            "0",
            "--lora",
            "/a",
            "--lora",
            "/b",
            "--model",
            "/m/smol.gguf",
            "--verbose"
        ]
    );
    let env = environment("smol", &o, &BackendsConfig::default());
    assert!(
        env.contains(&"CUDA_VISIBLE_DEVICES=0,1".to_string()),
        "{env:?}"
    );
    assert!(env.contains(&"LLAMACTL_INSTANCE=smol".to_string()));
    assert!(env.contains(&"HF_HOME=/var/cache/hf".to_string()));
}

#[test]
fn vllm_and_command() {
    let o = opts(json!({"backend_type": "vllm", "backend_options": {"model": "Qwen/Qwen2-0.5B", "port": 9000, "tensor_parallel_size": 2}})).unwrap();
    assert_eq!(
        command_line(&o, &BackendsConfig::default()),
        [
            "vllm",
            "serve",
            "Qwen/Qwen2-0.5B",
            "--host",
            "127.0.0.1",
            "--port",
            "9000",
            "--tensor-parallel-size",
            "2"
        ]
    );
    let o = opts(json!({"backend_type": "command", "backend_options": {"command": ["/bin/srv", "--listen", "{host}:{port}"], "port": 9001, "health_path": "/ready"}})).unwrap();
    assert_eq!(
        command_line(&o, &BackendsConfig::default()),
        ["/bin/srv", "--listen", "127.0.0.1:9001"]
    );
    assert_eq!(o.health_path(), "/ready");
    assert_eq!(o.metrics_path(), None);
    let o = opts(
        json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m", "metrics": false}}),
    )
    .unwrap();
    assert_eq!(o.metrics_path(), None);
    assert!(!command_line(&o, &BackendsConfig::default()).contains(&"--metrics".to_string()));
}

#[test]
fn invalid_specs_name_the_field() {
    for (v, field) in [
        (
            json!({"backend_type": "llama_cpp", "backend_options": {}}),
            "backend_options.model",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"model": "rel.gguf"}}),
            "backend_options.model",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m", "port": 70000}}),
            "backend_options.port",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m", "x": {"y": 1}}}),
            "backend_options.x",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m", "--rm": 1}}),
            "invalid option name",
        ),
        (
            json!({"backend_type": "command", "backend_options": {"command": []}}),
            "backend_options.command",
        ),
        (
            json!({"backend_type": "command", "backend_options": {"command": ["/x"], "model": "m"}}),
            "backend_options.model",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m", "port": "80"}}),
            "backend_options.port",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m", "host": "evil.example"}}),
            "backend_options.host",
        ),
        (
            json!({"backend_type": "command", "backend_options": {"command": ["/x"], "health_path": "ready"}}),
            "backend_options.health_path",
        ),
        (
            json!({"backend_type": "command", "backend_options": {"command": ["/x", {"a": 1}]}}),
            "backend_options.command",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m\0x"}}),
            "backend_options.model",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"m": 5}}),
            "backend_options.model",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"m": "/a", "model": "/b"}}),
            "both",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m"}, "environment": {"A B": "1"}}),
            "environment",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m"}, "memory_max": "lots"}),
            "memory_max",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m"}, "cpu_quota": -1}),
            "cpu_quota",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m"}, "nodes": ["n2"]}),
            "nodes",
        ),
    ] {
        let e = opts(v.clone()).unwrap_err();
        assert!(e.contains(field), "{v}: {e}");
    }
    let e = opts(json!({"backend_type": "mlx_lm", "backend_options": {}})).unwrap_err();
    assert!(e.contains("unknown variant"), "{e}");
    let e = opts(json!({"backend_type": "vllm", "bogus": 1})).unwrap_err();
    assert!(e.contains("unknown field"), "{e}");
}

/// The typed options are written back as upstream's flat object, as their author wrote them.
#[test]
fn backend_options_round_trip() {
    let v = json!({"backend_type": "llama_cpp", "backend_options": {
        "model": "/m.gguf", "port": 8100, "host": "::1", "alias": "a,b", "api_key": "k",
        "metrics": false, "extra_args": ["-v"], "ctx_size": 2048, "rope_scale": 0.5,
        "flash_attn": true, "lora": ["/a", 2], "seed": null},
        "memory_max": "8G", "cpu_quota": 150, "gpus": [0, "GPU-ab"], "idle_timeout": 5});
    let o: InstanceOptions = parse_options(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(serde_json::to_value(&o).unwrap(), v);
    assert_eq!(o.backend_options.port, Some(8100));
    assert_eq!(o.connect_addr().as_deref(), Some("[::1]:8100"));
    assert_eq!(o.model_aliases(), ["a", "b"]);
    assert_eq!(o.backend_key(), Some("k"));
    assert_eq!(o.metrics_path(), None);
    assert_eq!(o.memory_max.as_ref().map(ByteSize::bytes), Some(8 << 30));
    // port 0 means "assign one".
    let o = opts(json!({"backend_type": "vllm", "backend_options": {"model": "m", "port": 0}}))
        .unwrap();
    assert_eq!(o.port(), None);
}

/// The inputs that once panicked the daemon are refused, naming the field.
#[test]
fn numbers_that_would_overflow_are_refused() {
    let base = |extra: Value| {
        let mut v = json!({"backend_type": "llama_cpp", "backend_options": {"model": "/m"}});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    for (extra, field) in [
        (
            json!({"restart_delay": 9223372036854775807u64}),
            "restart_delay",
        ),
        (json!({"restart_delay": -5}), "restart_delay"),
        (json!({"idle_timeout": 1e20}), "idle_timeout"),
        (json!({"max_restarts": 100000}), "max_restarts"),
        (json!({"memory_max": "99999999999T"}), "memory_max"),
        (json!({"gpus": [1e3]}), "gpus"),
    ] {
        let v = base(extra);
        let e = serde_path_to_error::deserialize::<_, InstanceOptions>(v.clone())
            .map_err(|e| e.to_string())
            .unwrap_err();
        assert!(e.starts_with(field), "{v}: {e}");
    }
}

#[test]
fn resolving_commands() {
    assert_eq!(
        resolve_command("sh", Some("/nonexistent:/bin")).unwrap(),
        PathBuf::from("/bin/sh")
    );
    assert!(resolve_command("no-such-binary-xyz", Some("/bin"))
        .unwrap_err()
        .contains("not found in PATH"));
    assert!(resolve_command("./sh", None).is_err());
    assert!(resolve_command("/etc/passwd", None)
        .unwrap_err()
        .contains("not executable"));
}
