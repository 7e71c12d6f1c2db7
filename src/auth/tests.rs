//! Access control decisions: principals, route needs, key checks, browser defences.

use super::*;
use crate::config::KeyConfig;
use axum::http::HeaderValue;

fn auth(tag: &str) -> (Auth, std::path::PathBuf) {
    let d = std::env::temp_dir().join(format!("llamactl-auth-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let a = Auth::open(&d, &AuthConfig::default(), &Default::default(), None).unwrap();
    (a, d)
}

fn with(name: &str, value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
        HeaderValue::from_str(value).unwrap(),
    );
    h
}

fn tcp() -> Peer {
    Peer::Tcp("127.0.0.1:5000".parse().unwrap())
}

fn key(a: &Auth, name: &str, scope: Scope) -> String {
    a.keys
        .create(
            keys::NewKey {
                name: name.into(),
                scope,
                instances: vec![],
                expires_at: Some(1000),
                can_start: true,
                can_evict: true,
            },
            1,
        )
        .unwrap()
        .0
}

#[test]
fn routes_map_to_scopes_and_unknown_ones_to_management() {
    let m = "/metrics";
    let route_scope = |t: Option<&str>, m: &str| route_need(t, m).scope();
    assert_eq!(route_need(Some("/api/v1/auth/login"), m), Need::AnyKey);
    assert_eq!(route_need(Some("/api/v1/auth/logout"), m), Need::AnyKey);
    assert_eq!(route_scope(Some("/v1/{*rest}"), m), Scope::Inference);
    assert_eq!(route_scope(Some("/v1/models"), m), Scope::Inference);
    assert_eq!(route_scope(Some("/infill"), m), Scope::Inference);
    assert_eq!(route_scope(Some("/metrics"), m), Scope::Monitoring);
    assert_eq!(route_scope(Some("/metrics"), "/m"), Scope::Management);
    assert_eq!(route_scope(Some("/api/health/live"), m), Scope::Monitoring);
    assert_eq!(
        route_scope(Some("/api/v1/sd/prometheus"), m),
        Scope::Monitoring
    );
    assert_eq!(route_scope(Some("/api/v1/instances"), m), Scope::Management);
    assert_eq!(
        route_scope(Some("/api/v1/instances/{name}/proxy/{*path}"), m),
        Scope::Management
    );
    assert_eq!(route_scope(Some("/api/v1/auth/keys"), m), Scope::Management);
    assert_eq!(route_scope(None, m), Scope::Management);
}

#[test]
fn tcp_matrix_with_the_default_config() {
    let (a, _) = auth("matrix");
    let cfg = AuthConfig::default();
    let mgmt = key(&a, "admin", Scope::Management);
    let inf = key(&a, "app", Scope::Inference);
    let mon = key(&a, "prom", Scope::Monitoring);
    let bearer = |k: &str| with("authorization", &format!("Bearer {k}"));
    let go = |h: &HeaderMap, s: Scope| a.authorize(&cfg, &tcp(), h, Need::Scope(s), 10);

    // Management needs a management key.
    let e = go(&HeaderMap::new(), Scope::Management).unwrap_err();
    assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    assert_eq!(e.challenge.as_deref(), Some("Bearer realm=\"llamactl\""));
    assert!(matches!(
        go(&bearer(&mgmt), Scope::Management),
        Ok(Principal::Key(_))
    ));
    assert!(matches!(
        go(&with("x-api-key", &mgmt), Scope::Management),
        Ok(Principal::Key(_))
    ));
    for k in [&inf, &mon] {
        let e = go(&bearer(k), Scope::Management).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(e.challenge.unwrap().contains("insufficient_scope"));
    }
    let e = go(&bearer("llk_0000"), Scope::Management).unwrap_err();
    assert_eq!(
        (e.status, e.code),
        (StatusCode::UNAUTHORIZED, "invalid_api_key")
    );
    assert!(go(&with("authorization", "Basic abc"), Scope::Management).is_err());

    // Inference and monitoring are open by default; a foreign token is ignored there, a
    // wrong llamactl key is not.
    assert!(matches!(
        go(&HeaderMap::new(), Scope::Inference),
        Ok(Principal::Anonymous)
    ));
    assert!(matches!(
        go(&bearer("sk-no-key-required"), Scope::Inference),
        Ok(Principal::Anonymous)
    ));
    assert!(go(&bearer("llk_wrong"), Scope::Inference).is_err());
    assert!(matches!(
        go(&bearer(&inf), Scope::Inference),
        Ok(Principal::Key(_))
    ));
    assert!(matches!(
        go(&HeaderMap::new(), Scope::Monitoring),
        Ok(Principal::Anonymous)
    ));

    // Expired keys are refused by name, with when.
    let e = a
        .authorize(
            &cfg,
            &tcp(),
            &bearer(&mgmt),
            Need::Scope(Scope::Management),
            1000,
        )
        .unwrap_err();
    assert!(
        e.message
            .contains("\"admin\" expired at 1970-01-01T00:16:40Z"),
        "{}",
        e.message
    );
    // Messages never carry the key.
    assert!(!e.message.contains(&mgmt[4..]));
}

#[test]
fn required_inference_and_monitoring_take_their_scope_or_management() {
    let (a, _) = auth("required");
    let cfg = AuthConfig {
        require_inference_auth: true,
        require_monitoring_auth: true,
        ..Default::default()
    };
    let mgmt = key(&a, "admin", Scope::Management);
    let inf = key(&a, "app", Scope::Inference);
    let mon = key(&a, "prom", Scope::Monitoring);
    let go = |k: Option<&str>, s: Scope| {
        let h = k.map_or_else(HeaderMap::new, |k| with("x-api-key", k));
        a.authorize(&cfg, &tcp(), &h, Need::Scope(s), 10)
            .map_err(|e| e.status.as_u16())
    };
    assert_eq!(go(None, Scope::Inference).unwrap_err(), 401);
    assert_eq!(go(Some("sk-foreign"), Scope::Inference).unwrap_err(), 401);
    assert!(go(Some(&inf), Scope::Inference).is_ok());
    assert!(go(Some(&mgmt), Scope::Inference).is_ok());
    assert_eq!(go(Some(&mon), Scope::Inference).unwrap_err(), 403);
    assert!(go(Some(&mon), Scope::Monitoring).is_ok());
    assert!(go(Some(&mgmt), Scope::Monitoring).is_ok());
    assert_eq!(go(Some(&inf), Scope::Monitoring).unwrap_err(), 403);
    assert_eq!(go(None, Scope::Monitoring).unwrap_err(), 401);
}

#[test]
fn socket_peers_root_or_group_members_only() {
    let (a, _) = auth("socket");
    let cfg = AuthConfig::default();
    let root = Peer::Unix(
        peer::PeerCred {
            uid: 0,
            gid: 0,
            pid: 1,
            groups: Some(vec![]),
            user: None,
        }
        .with_user_name(),
    );
    let p = a
        .authorize(
            &cfg,
            &root,
            &HeaderMap::new(),
            Need::Scope(Scope::Management),
            1,
        )
        .unwrap();
    assert_eq!(p.actor(), "uid:0(root)");
    // uid 65534 in no useful group: refused, named.
    let nobody = Peer::Unix(peer::PeerCred {
        uid: 65534,
        gid: 65534,
        pid: 2,
        groups: Some(vec![65534]),
        user: None,
    });
    let e = a
        .authorize(
            &cfg,
            &nobody,
            &HeaderMap::new(),
            Need::Scope(Scope::Monitoring),
            1,
        )
        .unwrap_err();
    assert_eq!(e.status, StatusCode::FORBIDDEN);
    assert!(e.message.contains("uid:65534"), "{}", e.message);

    // A member of the configured group (root's group here, which always exists).
    let cfg = AuthConfig {
        socket_group: "root".into(),
        ..Default::default()
    };
    a.reload(&cfg, &Default::default()).unwrap();
    assert_eq!(a.socket_gid(), Some(0));
    let member = Peer::Unix(peer::PeerCred {
        uid: 4242,
        gid: 4242,
        pid: 3,
        groups: Some(vec![4242, 0]),
        user: None,
    });
    let p = a
        .authorize(
            &cfg,
            &member,
            &HeaderMap::new(),
            Need::Scope(Scope::Management),
            1,
        )
        .unwrap();
    assert_eq!(p.actor(), "uid:4242(?)");
}

#[test]
fn principals_carry_instance_lists_and_rights() {
    let (a, _) = auth("rights");
    let (k, _) = a
        .keys
        .create(
            keys::NewKey {
                name: "limited".into(),
                scope: Scope::Inference,
                instances: vec!["smol".into()],
                expires_at: None,
                can_start: false,
                can_evict: false,
            },
            1,
        )
        .unwrap();
    let p = a
        .authorize(
            &AuthConfig::default(),
            &tcp(),
            &with("authorization", &format!("bearer {k}")),
            Need::Scope(Scope::Inference),
            5,
        )
        .unwrap();
    assert_eq!(p.actor(), "key:limited");
    assert!(p.may_use_instance("smol") && !p.may_use_instance("big"));
    assert!(!p.can_start() && !p.can_evict());
    assert!(Principal::Anonymous.can_start() && Principal::Anonymous.may_use_instance("big"));
}

#[test]
fn provisioned_config_keys_authenticate() {
    let (a, _) = auth("provisioned");
    let cfg = AuthConfig {
        keys: vec![KeyConfig {
            name: "ops".into(),
            scope: Scope::Management,
            hash: Some(keys::hash_string("llk_operator_chosen_value_123")),
            key: None,
            instances: vec![],
            expires: None,
            can_start: true,
            can_evict: true,
        }],
        ..Default::default()
    };
    a.reload(&cfg, &Default::default()).unwrap();
    let h = with("authorization", "Bearer llk_operator_chosen_value_123");
    assert!(a
        .authorize(&cfg, &tcp(), &h, Need::Scope(Scope::Management), 5)
        .is_ok());
}

/// Arbitrary header values (what any client may send) through every check: an answer, never a
/// panic. Deterministic pseudo-random input, so a failure reproduces.
#[test]
fn hostile_headers_never_panic() {
    let (a, _) = auth("hostile");
    let cfg = AuthConfig {
        require_inference_auth: true,
        ..Default::default()
    };
    let server = crate::config::ServerConfig {
        cors_origins: vec!["https://ui.example:3000".into()],
        ..Default::default()
    };
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const PIECES: &[&str] = &[
        "llk_",
        "Bearer ",
        "bearer",
        " ",
        ":",
        "[",
        "]",
        "::1",
        "127.0.0.1",
        "localhost",
        ".",
        "http://",
        "https://",
        "null",
        "évil",
        "\t",
        "%",
        "0",
        "99999999999999999999",
        "-",
        "ui.example",
        ":3000",
        "application/json",
        ";",
        "cross-site",
        "\u{7f}",
        "a",
    ];
    let names = [
        "host",
        "origin",
        "authorization",
        "x-api-key",
        "sec-fetch-site",
        "content-type",
        "content-length",
        "transfer-encoding",
    ];
    for _ in 0..20_000 {
        let mut h = HeaderMap::new();
        for name in names {
            if next() % 3 == 0 {
                continue;
            }
            let v: String = (0..next() % 6)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
                h.insert(axum::http::HeaderName::from_static(name), v);
            }
        }
        let _ = browser::check_host(&h, &server);
        let _ = browser::check_origin(&h, &server);
        let _ = browser::check_content_type(Scope::Management, &axum::http::Method::POST, &h);
        let _ = presented_key(&h);
        for s in [Scope::Management, Scope::Inference, Scope::Monitoring] {
            let _ = a.authorize(&cfg, &tcp(), &h, Need::Scope(s), 5);
        }
    }
}
