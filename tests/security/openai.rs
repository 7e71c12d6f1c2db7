//! The official OpenAI Python client (PyPI `openai`, installed by `.ci/run`) against the proxy:
//! with the loopback defaults and the placeholder key such clients insist on, and with
//! `require_inference_auth` and an inference key; a wrong key is the client's
//! AuthenticationError.

use super::*;
use std::process::Command;

/// Chat (plain and streamed) and the model list through the client; prints one JSON line.
const CLIENT: &str = r#"
import json, os, sys
import openai
c = openai.OpenAI(base_url=os.environ["BASE_URL"], api_key=os.environ["API_KEY"], max_retries=0)
try:
    r = c.chat.completions.create(model=os.environ["MODEL"], messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    s = c.chat.completions.create(model=os.environ["MODEL"], messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True)
    streamed = "".join((ch.choices[0].delta.content or "") for ch in s if ch.choices)
    models = [m.id for m in c.models.list()]
    print(json.dumps({"content": r.choices[0].message.content, "streamed": streamed, "models": models}))
except openai.AuthenticationError as e:
    print(json.dumps({"error": "authentication", "status": e.status_code}))
"#;

fn client(port: u16, key: &str, model: &str) -> Value {
    let out = crate::util::run(
        Command::new("python3")
            .args(["-c", CLIENT])
            .env("BASE_URL", format!("http://127.0.0.1:{port}/v1"))
            .env("API_KEY", key)
            .env("MODEL", model),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the openai client failed (is PyPI's openai installed? .ci/run installs it):\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn the_openai_client_works_with_defaults_and_with_inference_keys() {
    unit_test!();
    let d = daemon("sec-openai", "");
    assert_eq!(
        api(
            "POST",
            d.port,
            "/api/v1/instances/oai1",
            Some(fake(json!({})))
        )
        .status,
        201
    );
    let v = client(d.port, "sk-no-key-required", "oai1");
    assert_eq!(v["content"], "Hello from fake", "{v}");
    assert!(!v["streamed"].as_str().unwrap().is_empty(), "{v}");
    assert_eq!(v["models"], json!(["oai1"]));
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/oai1", None).status,
        204
    );

    let d = daemon("sec-openai-auth", "[auth]\nrequire_inference_auth = true\n");
    assert_eq!(
        api(
            "POST",
            d.port,
            "/api/v1/instances/oai2",
            Some(fake(json!({})))
        )
        .status,
        201
    );
    let key = create_key(&d, json!({"name": "app", "scope": "inference"}));
    let v = client(d.port, &key, "oai2");
    assert_eq!(v["content"], "Hello from fake", "{v}");
    let v = client(d.port, "sk-no-key-required", "oai2");
    assert_eq!(v, json!({"error": "authentication", "status": 401}));
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/oai2", None).status,
        204
    );
    assert_nowhere(&d, &[&key]);
}
