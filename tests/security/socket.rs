//! The admin socket: 0660 root:llamactl, root and members without a key, nobody refused.

use super::*;
use crate::util::{http_unix, LLAMACTL};

#[test]
fn the_admin_socket_takes_root_and_its_group_and_refuses_others() {
    unit_test!();
    let d = daemon("sec-socket", "");
    let sock = d.socket_path();
    // 0660 root:llamactl.
    let st = d.sb.ok(&["stat", "-c", "%a %U %G", &d.socket]);
    assert_eq!(st.trim(), "660 root llamactl");

    // Root: everything, no key. (Clients of a Unix socket send odd Host headers, such as
    // requests-unixsocket's escaped path: the browser defences are for TCP.)
    let r = http_unix(&sock, "GET", "/api/v1/instances", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let odd = [("Host", "%2Frun%2Fllamactl%2Fllamactl.sock")];
    assert_eq!(
        http_unix(&sock, "GET", "/api/v1/instances", &odd, b"")
            .unwrap()
            .status,
        200
    );
    let body = fake(json!({})).to_string();
    let r = http_unix(
        &sock,
        "POST",
        "/api/v1/instances/viasock",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        http_unix(&sock, "GET", "/metrics", &[], b"")
            .unwrap()
            .status,
        200
    );

    // The CLI finds the socket by itself (from the config's [server] socket) and needs no key.
    let cfg = d.sb.root().join("run/sec-socket-client.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nsocket = \"{}\"\nport = 1\n", d.socket),
    )
    .unwrap();
    let list = d.sb.ok(&[
        LLAMACTL,
        "-c",
        "/run/sec-socket-client.toml",
        "-o",
        "json",
        "list",
    ]);
    assert!(list.contains("viasock"), "{list}");
    // Keys over the socket, with the CLI: created (printed once), listed, revoked.
    let created = d.sb.ok(&[
        LLAMACTL,
        "--socket",
        &d.socket,
        "-o",
        "json",
        "keys",
        "create",
        "viacli",
        "--scope",
        "inference",
        "--instance",
        "viasock",
        "--expires",
        "30d",
        "--no-evict",
    ]);
    let created: Value = serde_json::from_str(&created).unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    assert_eq!(created["name"], "viacli");
    assert_eq!(created["can_evict"], false);
    assert!(created["expires_at"].as_i64().unwrap() > now() + 29 * 86400);
    let table = d.sb.ok(&[LLAMACTL, "--socket", &d.socket, "keys", "list"]);
    assert!(
        table.contains("viacli") && table.contains("viasock") && !table.contains(&key[4..]),
        "{table}"
    );
    let r = http_raw(
        "GET",
        d.port,
        "/v1/models",
        &[("Authorization", &format!("Bearer {key}"))],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    d.sb.ok(&[LLAMACTL, "--socket", &d.socket, "keys", "revoke", "viacli"]);
    let r = http_raw(
        "GET",
        d.port,
        "/v1/models",
        &[("Authorization", &format!("Bearer {key}"))],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);

    // `llamactl --socket … list` as another user; (success, stderr).
    let list_as = |ids: &[&str]| {
        let mut argv = vec!["setpriv"];
        argv.extend_from_slice(ids);
        argv.extend_from_slice(&[LLAMACTL, "--socket", &d.socket, "list"]);
        let out = d.sb.run(&argv);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    // nobody: the kernel refuses the connection (0660).
    let (ok, err) = list_as(&nobody);
    assert!(!ok && err.contains("ermission denied"), "{err}");
    // A member of the group: a management principal, no key.
    let gid = d.sb.ok(&["getent", "group", "llamactl"]);
    let member = format!("--groups={}", gid.split(':').nth(2).unwrap().trim());
    let (ok, err) = list_as(&["--reuid=4242", "--regid=4242", &member]);
    assert!(ok, "{err}");
    // And were the socket opened to everyone, the daemon itself still refuses non-members.
    d.sb.ok(&["chmod", "0666", &d.socket]);
    let (ok, err) = list_as(&nobody);
    assert!(
        !ok && err.contains("HTTP 403") && err.contains("uid:65534(nobody)"),
        "{err}"
    );
    d.sb.ok(&["chmod", "0660", &d.socket]);
    assert_eq!(
        api("DELETE", d.port, "/api/v1/instances/viasock", None).status,
        204
    );
    assert_nowhere(&d, &[&key]);
}
