//! The key store: creation, lookup, expiry, revocation, usage totals, keys.json on disk.

use super::*;
use crate::config::{Expiry, Secret};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llamactl-keys-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn new(name: &str, scope: Scope) -> NewKey {
    NewKey {
        name: name.into(),
        scope,
        instances: vec![],
        expires_at: None,
        can_start: true,
        can_evict: true,
    }
}

#[test]
fn generated_keys_are_random_prefixed_and_hash_as_documented() {
    let a = generate().unwrap();
    let b = generate().unwrap();
    assert_ne!(a, b);
    assert!(a.starts_with("llk_") && a.len() == 4 + 64, "{a}");
    assert!(looks_like_ours(&a) && !looks_like_ours("sk-no-key-required"));
    // The same digest `printf %s KEY | sha256sum` prints.
    assert_eq!(
        hash_string("abc"),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn create_authenticate_revoke_and_persist() {
    let d = tmpdir("crud");
    let s = KeyStore::open(&d);
    assert!(s.load_error().is_none());
    let (key, e) = s.create(new("ci", Scope::Inference), 100).unwrap();
    assert_eq!(e.scope, Scope::Inference);
    assert_eq!(s.authenticate(&key, 150).unwrap().name, "ci");
    assert_eq!(
        s.authenticate("llk_nope", 150).unwrap_err(),
        Rejected::Unknown
    );
    // A second key of the same name is refused and changes nothing.
    assert!(matches!(
        s.create(new("ci", Scope::Management), 100),
        Err(KeyError::Conflict(_))
    ));

    // The file holds the digest, never the key, and is private.
    let text = std::fs::read_to_string(d.join("keys.json")).unwrap();
    assert!(!text.contains(&key[4..]), "{text}");
    assert!(text.contains(&hash_string(&key)), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.join("keys.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // last_used_at survives a flush and a reopen.
    s.flush().unwrap();
    let s2 = KeyStore::open(&d);
    let e2 = s2.authenticate(&key, 160).unwrap();
    assert_eq!(e2.created_at, Some(100));
    let listed = s2.list();
    assert_eq!(listed.len(), 1);
    let v = listed[0].view(170);
    assert_eq!(v["last_used_at"], 160);
    assert!(v.get("hash").is_none() && !v.to_string().contains(&key[4..]));

    s2.revoke("ci").unwrap();
    assert_eq!(s2.authenticate(&key, 170).unwrap_err(), Rejected::Unknown);
    assert!(matches!(s2.revoke("ci"), Err(KeyError::NotFound(_))));
    assert_eq!(KeyStore::open(&d).list().len(), 0);
}

#[test]
fn expired_keys_are_refused_by_name() {
    let d = tmpdir("exp");
    let s = KeyStore::open(&d);
    let mut n = new("short", Scope::Monitoring);
    n.expires_at = Some(200);
    let (key, _) = s.create(n, 100).unwrap();
    assert!(s.authenticate(&key, 199).is_ok());
    assert_eq!(
        s.authenticate(&key, 200).unwrap_err(),
        Rejected::Expired {
            name: "short".into(),
            at: 200
        }
    );
    let mut past = new("past", Scope::Monitoring);
    past.expires_at = Some(50);
    assert!(matches!(s.create(past, 100), Err(KeyError::BadRequest(_))));
    assert!(matches!(
        s.create(new("bad name!", Scope::Monitoring), 100),
        Err(KeyError::BadRequest(_))
    ));
}

#[test]
fn provisioned_keys_authenticate_and_cannot_be_revoked_through_the_api() {
    let d = tmpdir("prov");
    let s = KeyStore::open(&d);
    let cfg = KeyConfig {
        name: "prometheus".into(),
        scope: Scope::Monitoring,
        hash: Some(hash_string("llk_from_config_0123456789")),
        key: None,
        instances: vec![],
        expires: Some(Expiry(1000)),
        can_start: true,
        can_evict: true,
    };
    let cred = KeyConfig {
        name: "ops".into(),
        scope: Scope::Management,
        hash: None,
        key: Some(Secret::new("a-credential-key-of-enough-length")),
        instances: vec![],
        expires: None,
        can_start: true,
        can_evict: false,
    };
    s.set_provisioned(std::slice::from_ref(&cfg), std::slice::from_ref(&cred), 100)
        .unwrap();
    assert_eq!(
        s.authenticate("llk_from_config_0123456789", 10)
            .unwrap()
            .source,
        Source::Config
    );
    assert!(
        !s.authenticate("a-credential-key-of-enough-length", 10)
            .unwrap()
            .can_evict
    );
    assert!(matches!(s.revoke("ops"), Err(KeyError::Conflict(_))));
    // Nothing provisioned reaches keys.json.
    assert!(!d.join("keys.json").exists());

    // A name used twice, or by an API key, is refused and the old set stays.
    assert!(s
        .set_provisioned(std::slice::from_ref(&cfg), std::slice::from_ref(&cfg), 100)
        .is_err());
    let (_, _) = s.create(new("apikey", Scope::Inference), 5).unwrap();
    let mut clash = cfg.clone();
    clash.name = "apikey".into();
    assert!(s.set_provisioned(&[clash], &[], 100).is_err());
    assert!(s.authenticate("llk_from_config_0123456789", 10).is_ok());
    // A reload without them removes them.
    s.set_provisioned(&[], &[], 100).unwrap();
    assert!(s.authenticate("llk_from_config_0123456789", 10).is_err());
    assert_eq!(s.list().len(), 1);

    let mut short = cred.clone();
    short.key = Some(Secret::new("short"));
    assert!(s.set_provisioned(&[], &[short], 100).is_err());
}

#[test]
fn a_corrupt_key_file_is_kept_and_not_served() {
    let d = tmpdir("corrupt");
    std::fs::write(d.join("keys.json"), b"{ \"keys\": [ not json").unwrap();
    let s = KeyStore::open(&d);
    assert!(s.load_error().unwrap().contains("keys.json"));
    assert!(matches!(
        s.create(new("x", Scope::Inference), 1),
        Err(KeyError::Failed(_))
    ));
    assert_eq!(
        std::fs::read(d.join("keys.json")).unwrap(),
        b"{ \"keys\": [ not json"
    );
}

#[test]
fn credential_files_parse_without_echoing_values() {
    let d = tmpdir("cred");
    assert!(read_credential(&d).unwrap().is_empty());
    std::fs::write(
        d.join(CREDENTIAL),
        "[[keys]]\nname = \"ops\"\nscope = \"management\"\nkey = \"super-secret-value-1234567890\"\n",
    )
    .unwrap();
    let k = read_credential(&d).unwrap();
    assert_eq!(k[0].name, "ops");
    std::fs::write(
        d.join(CREDENTIAL),
        "[[keys]]\nname = \"ops\"\nscope = \"root\"\nkey = \"super-secret-value-1234567890\"\n",
    )
    .unwrap();
    let e = read_credential(&d).unwrap_err();
    assert!(e.contains("line 3"), "{e}");
    assert!(!e.contains("super-secret"), "{e}");
}

#[test]
fn usage_totals_are_kept_across_restarts_and_keys_are_capped() {
    let d = tmpdir("usage");
    let s = KeyStore::open(&d);
    s.set_provisioned(&[], &[], 2).unwrap();
    let (key, e) = s.create(new("acct", Scope::Inference), 10).unwrap();
    e.count_request();
    e.count_request();
    e.count_tokens(5, 3);
    s.authenticate(&key, 20).unwrap();
    s.flush().unwrap();
    let v = KeyStore::open(&d).list()[0].view(30);
    assert_eq!(
        (
            v["requests"].as_u64(),
            v["prompt_tokens"].as_u64(),
            v["completion_tokens"].as_u64()
        ),
        (Some(2), Some(5), Some(3))
    );
    assert_eq!(v["last_used_at"], 20);
    // [auth] max_keys = 2: a third key is refused.
    s.create(new("second", Scope::Inference), 10).unwrap();
    assert!(
        matches!(s.create(new("third", Scope::Inference), 10), Err(KeyError::Conflict(m)) if m.contains("max_keys"))
    );
}
