use super::*;
use serde_json::json;

fn opts(v: Value) -> Result<InstanceOptions, String> {
    let mut o: InstanceOptions = serde_json::from_value(v).map_err(|e| e.to_string())?;
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
    assert_eq!(o.backend_options["model"], "/m/smol.gguf");
    assert_eq!(o.auto_restart, Some(true));
    assert_eq!(o.max_restarts, Some(3));
    assert_eq!(o.restart_delay, Some(5));
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

#[test]
fn sizes() {
    assert_eq!(parse_bytes(&json!("8G")).unwrap(), 8 << 30);
    assert_eq!(parse_bytes(&json!("512m")).unwrap(), 512 << 20);
    assert_eq!(parse_bytes(&json!(1000)).unwrap(), 1000);
    assert!(parse_bytes(&json!("-1G")).is_err());
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
