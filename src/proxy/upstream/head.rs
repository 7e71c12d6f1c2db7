//! Message heads: the request head sent to a backend, and the response head parsed from it
//! (status, end-to-end headers, how the body is framed, whether the connection stays open).

use super::chunked::Chunked;
use super::UpstreamError;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// Most headers in a backend's response head.
const MAX_HEADERS: usize = 128;

/// Headers that describe one hop (RFC 9110 7.6.1) or its framing, which each side sets for
/// itself: never passed on, either way. Requests also lose `host` (the backend's own is sent)
/// and `expect` (the body has been read from the client already).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// The client's headers that go on to the backend: not this hop's, and not its credentials for
/// llamactld (`authorization`, `x-api-key`): a llamactl key never reaches a backend.
fn passed_on_request(name: &str) -> bool {
    !HOP_BY_HOP.contains(&name)
        && !matches!(name, "host" | "expect" | "authorization" | "x-api-key")
}

/// The request head for `path_and_query` on the backend at `addr` (`host:port`), with the
/// client's end-to-end headers, and `backend_key` (the instance's own `api_key`, when it has
/// one) as its bearer token. A target that is not one origin-form token (a space or control
/// byte would end the request line early) is refused.
#[cfg(test)]
pub fn encode_head(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    addr: &str,
    body_len: usize,
    backend_key: Option<&str>,
) -> Result<Vec<u8>, String> {
    encode_head_traced(
        method,
        path_and_query,
        headers,
        addr,
        body_len,
        backend_key,
        None,
    )
}

/// `encode_head`, with the proxy's own `traceparent` in place of the client's when the request
/// is traced (the backend's spans become children of the proxy's; `tracestate` passes on).
pub fn encode_head_traced(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    addr: &str,
    body_len: usize,
    backend_key: Option<&str>,
    traceparent: Option<&str>,
) -> Result<Vec<u8>, String> {
    if !path_and_query.starts_with('/') || path_and_query.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "{path_and_query:?} is not a path the backend can be sent"
        ));
    }
    let mut h = Vec::with_capacity(256);
    h.extend_from_slice(method.as_str().as_bytes());
    h.push(b' ');
    h.extend_from_slice(path_and_query.as_bytes());
    h.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    h.extend_from_slice(addr.as_bytes());
    h.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        if passed_on_request(k.as_str()) && !(traceparent.is_some() && k == "traceparent") {
            h.extend_from_slice(k.as_str().as_bytes());
            h.extend_from_slice(b": ");
            h.extend_from_slice(v.as_bytes());
            h.extend_from_slice(b"\r\n");
        }
    }
    if let Some(k) = backend_key.filter(|k| !k.bytes().any(|b| b < b' ' || b == 0x7f)) {
        h.extend_from_slice(b"authorization: Bearer ");
        h.extend_from_slice(k.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    if let Some(t) = traceparent.filter(|t| !t.bytes().any(|b| b < b' ' || b == 0x7f)) {
        h.extend_from_slice(b"traceparent: ");
        h.extend_from_slice(t.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    h.extend_from_slice(b"x-forwarded-proto: http\r\n");
    if body_len > 0 || !matches!(*method, Method::GET | Method::HEAD | Method::DELETE) {
        h.extend_from_slice(b"content-length: ");
        h.extend_from_slice(body_len.to_string().as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    h.extend_from_slice(b"\r\n");
    Ok(h)
}

/// A backend's response head: status and end-to-end headers.
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

pub(crate) struct Parsed {
    pub head: Head,
    pub framing: Framing,
    pub keep_alive: bool,
    /// Bytes of the head, blank line included.
    pub len: usize,
}

fn invalid(what: impl Into<String>) -> UpstreamError {
    UpstreamError::Invalid(what.into())
}

/// Parses a complete response head at the start of `buf`; `None` if more bytes are needed.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Parsed>, UpstreamError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut raw);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(e.to_string())),
    };
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| invalid("bad status code"))?;
    let http11 = res.version == Some(1);
    let mut headers = HeaderMap::with_capacity(res.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = !http11;
    for h in res.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| invalid(format!("bad header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| invalid(format!("bad value of header {}", h.name)))?;
        if name == axum::http::header::CONTENT_LENGTH {
            let digits = h.value.trim_ascii();
            let n = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| invalid("bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid("conflicting content-length headers"));
            }
            length = Some(n);
        } else if name == axum::http::header::TRANSFER_ENCODING {
            // Codings across all the headers form one list. Only chunked (last) is decoded
            // here; another transfer coding (gzip, …) could not be passed on as it is.
            for coding in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if coding.is_empty() || coding.eq_ignore_ascii_case(b"identity") {
                    continue;
                }
                if !coding.eq_ignore_ascii_case(b"chunked") || chunked {
                    return Err(invalid(format!(
                        "unsupported transfer-encoding {:?}",
                        String::from_utf8_lossy(h.value)
                    )));
                }
                chunked = true;
            }
        } else if name == axum::http::header::CONNECTION {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    close = false;
                }
            }
        }
        if !HOP_BY_HOP.contains(&name.as_str()) {
            headers.append(name, value);
        }
    }
    // A transfer coding overrides any length (RFC 9112 6.3), and a message with both is not
    // trusted to leave the connection clean.
    let framing = if chunked {
        close |= length.is_some();
        Framing::Chunked(Chunked::default())
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Eof
    };
    Ok(Some(Parsed {
        head: Head { status, headers },
        framing,
        keep_alive: !close,
        len,
    }))
}

pub(crate) enum Framing {
    /// This many body bytes remain.
    Length(u64),
    Chunked(Chunked),
    /// Until the backend closes the connection.
    Eof,
}
