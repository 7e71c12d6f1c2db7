//! Defences against the operator's own browser being used against the API: a page on any site
//! can send a CORS-"simple" request (a `text/plain` POST) to `127.0.0.1:8080`, or rebind its own
//! DNS name to 127.0.0.1 and then read the answers. Checked before authentication and before any
//! handler runs:
//! - `Host` must name this listener (loopback names, an IP literal, this machine's name, the
//!   configured `host`, `[server] allowed_hosts`); a rebound name is refused with 421;
//! - an `Origin` other than the request's own or one in `[server] cors_origins` is refused
//!   (403), and so is `Sec-Fetch-Site: cross-site`/`same-site` without such an origin;
//! - a management request that mutates with a body must say `Content-Type: application/json`
//!   (415), which a simple request cannot.
//!
//! Listed origins get CORS answers, preflights included; nobody else does.

use super::{Denied, Scope};
use crate::config::{split_authority, ServerConfig};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use std::net::IpAddr;
use std::sync::OnceLock;

/// This machine's host name (`gethostname`), lower case; read once.
fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most buf.len() bytes into buf.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return String::new();
        }
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase()
    })
}

/// Whether `host` (from a `Host` header, without its port) names this listener. On every
/// request, proxied ones included: no allocation.
pub fn host_allowed(host: &str, server: &ServerConfig) -> bool {
    let h = host.trim_end_matches('.');
    let bare = h.trim_start_matches('[').trim_end_matches(']');
    let localhost = "localhost";
    let sub_of_localhost = h.len() > localhost.len() + 1
        && h.as_bytes()[h.len() - localhost.len() - 1] == b'.'
        && h[h.len() - localhost.len()..].eq_ignore_ascii_case(localhost);
    if h.eq_ignore_ascii_case(localhost) || sub_of_localhost || bare.parse::<IpAddr>().is_ok() {
        return true;
    }
    let me = hostname();
    let short = me.split('.').next().unwrap_or("");
    (!me.is_empty() && (h.eq_ignore_ascii_case(me) || h.eq_ignore_ascii_case(short)))
        || server.host.eq_ignore_ascii_case(h)
        || server
            .allowed_hosts
            .iter()
            .any(|a| a.trim_end_matches('.').eq_ignore_ascii_case(h))
}

/// The `Host` check. A request without `Host` (HTTP/1.0 tools) passes: browsers always send it.
pub fn check_host(headers: &HeaderMap, server: &ServerConfig) -> Result<(), Denied> {
    let Some(v) = headers.get(header::HOST) else {
        return Ok(());
    };
    let host = v.to_str().ok().and_then(split_authority).map(|(h, _)| h);
    match host {
        Some(h) if host_allowed(h, server) => Ok(()),
        _ => Err(Denied::new(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
            format!(
                "the Host header {:?} does not name this server; add the name to [server] allowed_hosts if it should",
                String::from_utf8_lossy(v.as_bytes())
            ),
        )),
    }
}

/// The `Origin` and `Sec-Fetch-Site` checks. `Ok(Some(origin))` for a listed CORS origin,
/// whose response then carries CORS headers.
pub fn check_origin(
    headers: &HeaderMap,
    server: &ServerConfig,
) -> Result<Option<HeaderValue>, Denied> {
    let refused = |what: String| {
        Denied::new(
            StatusCode::FORBIDDEN,
            "cross_origin_refused",
            format!("{what}; a browser page may call llamactld only from an origin listed in [server] cors_origins"),
        )
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let o = origin.to_str().unwrap_or("");
        if server
            .cors_origins
            .iter()
            .any(|c| c.eq_ignore_ascii_case(o))
        {
            return Ok(Some(origin.clone()));
        }
        // The request's own origin (a page this server served) is not cross-origin.
        let own = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| {
                o.strip_prefix("http://")
                    .is_some_and(|rest| rest.eq_ignore_ascii_case(h))
            });
        if own {
            return Ok(None);
        }
        return Err(refused(format!("cross-origin request from {o:?} refused")));
    }
    match headers
        .get("sec-fetch-site")
        .map(|v| v.as_bytes().to_ascii_lowercase())
        .as_deref()
    {
        Some(b"cross-site") | Some(b"same-site") => Err(refused(
            "a request from another site's page (Sec-Fetch-Site) is refused".into(),
        )),
        _ => Ok(None),
    }
}

/// A CORS preflight (`OPTIONS` with `Access-Control-Request-Method`).
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Headers for an answer to a listed origin (`preflight`: the answer to its `OPTIONS`).
pub fn cors_headers(origin: &HeaderValue, preflight: bool) -> Vec<(HeaderName, HeaderValue)> {
    let mut h = vec![
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()),
        (header::VARY, HeaderValue::from_static("Origin")),
    ];
    if preflight {
        h.push((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS"),
        ));
        h.push((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-api-key, x-request-id"),
        ));
        h.push((
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        ));
    } else {
        h.push((
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id"),
        ));
    }
    h
}

/// Whether a request carries a body (declared length above zero, or chunked).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// A management request that changes something and has a body must be JSON.
pub fn check_content_type(
    scope: Scope,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), Denied> {
    let mutating = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if scope != Scope::Management || !mutating || !has_body(headers) {
        return Ok(());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if json {
        Ok(())
    } else {
        Err(Denied::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body with Content-Type: application/json",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn server() -> ServerConfig {
        ServerConfig {
            allowed_hosts: vec!["llm.internal".into()],
            cors_origins: vec!["https://ui.example:3000".into()],
            ..Default::default()
        }
    }

    #[test]
    fn hosts_that_name_the_listener_pass_and_rebound_names_do_not() {
        let s = server();
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "10.1.2.3:8080",
            "llm.internal:8080",
            "llm.internal.",
            "app.localhost:8080",
        ] {
            assert!(check_host(&h(&[("host", ok)]), &s).is_ok(), "{ok}");
        }
        assert!(check_host(&HeaderMap::new(), &s).is_ok());
        for bad in [
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "llm.internal.evil",
            "",
            "a b",
        ] {
            let e = check_host(&h(&[("host", bad)]), &s).unwrap_err();
            assert_eq!(e.status, StatusCode::MISDIRECTED_REQUEST, "{bad}");
        }
    }

    #[test]
    fn origins_other_than_our_own_or_listed_are_refused() {
        let s = server();
        let listed = check_origin(&h(&[("origin", "https://ui.example:3000")]), &s).unwrap();
        assert_eq!(listed.unwrap(), "https://ui.example:3000");
        let own = check_origin(
            &h(&[
                ("origin", "http://127.0.0.1:8080"),
                ("host", "127.0.0.1:8080"),
            ]),
            &s,
        );
        assert_eq!(own.unwrap(), None);
        for bad in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:3000",
            "https://ui.example:3001",
        ] {
            let e =
                check_origin(&h(&[("origin", bad), ("host", "127.0.0.1:8080")]), &s).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{bad}");
        }
        assert!(check_origin(&h(&[("sec-fetch-site", "cross-site")]), &s).is_err());
        assert!(check_origin(&h(&[("sec-fetch-site", "same-site")]), &s).is_err());
        assert!(check_origin(&h(&[("sec-fetch-site", "none")]), &s).is_ok());
        assert!(check_origin(&h(&[("sec-fetch-site", "same-origin")]), &s).is_ok());
        // A listed origin may come cross-site.
        assert!(check_origin(
            &h(&[
                ("origin", "https://ui.example:3000"),
                ("sec-fetch-site", "cross-site")
            ]),
            &s
        )
        .is_ok());
    }

    #[test]
    fn mutating_management_bodies_must_be_json() {
        let post = Method::POST;
        let plain = h(&[("content-type", "text/plain"), ("content-length", "10")]);
        let e = check_content_type(Scope::Management, &post, &plain).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(check_content_type(
            Scope::Management,
            &post,
            &h(&[
                ("content-type", "Application/JSON; charset=utf-8"),
                ("content-length", "2")
            ])
        )
        .is_ok());
        // No body (POST .../start), a GET, or an inference request: no requirement.
        assert!(
            check_content_type(Scope::Management, &post, &h(&[("content-length", "0")])).is_ok()
        );
        assert!(check_content_type(Scope::Management, &Method::GET, &plain).is_ok());
        assert!(check_content_type(Scope::Inference, &post, &plain).is_ok());
        assert!(check_content_type(
            Scope::Management,
            &Method::PUT,
            &h(&[("transfer-encoding", "chunked")])
        )
        .is_err());
    }

    #[test]
    fn preflights_and_cors_headers() {
        let o = HeaderValue::from_static("https://ui.example:3000");
        assert!(is_preflight(
            &Method::OPTIONS,
            &h(&[("access-control-request-method", "POST")])
        ));
        assert!(!is_preflight(&Method::OPTIONS, &HeaderMap::new()));
        let pre = cors_headers(&o, true);
        assert!(pre
            .iter()
            .any(|(k, v)| k == header::ACCESS_CONTROL_ALLOW_HEADERS
                && v.to_str().unwrap().contains("authorization")));
        assert!(cors_headers(&o, false)
            .iter()
            .any(|(k, v)| k == header::ACCESS_CONTROL_ALLOW_ORIGIN && v == o));
    }
}
