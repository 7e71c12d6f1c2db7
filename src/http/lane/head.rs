//! The request heads the lane takes: parsed with `httparse`, and taken only when the lane serves
//! them exactly as hyper would. Everything unusual — another method or route, HTTP/1.0, a
//! chunked request body, no or several `Content-Length`, `Upgrade`, an `Expect` other than
//! `100-continue`, a `Connection` option other than `keep-alive`/`close`, an invalid or very
//! large head — is handed to hyper with the bytes already read, so one HTTP implementation
//! answers every odd request (and the lane has no framing decisions of its own to get wrong).

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use std::ops::Range;

/// Longest head the lane waits for; a longer one is hyper's to take or refuse.
pub const MAX_HEAD: usize = 16 << 10;
/// Most headers the lane takes; with more, hyper decides (its own limit is 100).
const MAX_HEADERS: usize = 64;

/// What the bytes at the start of a connection's buffer are.
#[derive(Debug)]
pub enum Parse {
    /// The start of a head: read more.
    Partial,
    /// Not the lane's: hand the connection to hyper.
    Handoff,
    /// A model request's head: what `build` needs to make it, once its bytes are split off.
    Lane(Taken),
}

/// A head the lane takes, parsed once: where its parts are in its bytes.
#[derive(Debug)]
pub struct Taken {
    /// Bytes of the head, blank line included.
    pub len: usize,
    target: Range<usize>,
    /// Each header's name, and where its value is.
    headers: Vec<(HeaderName, Range<usize>)>,
    shape: Shape,
}

/// A model request's head, as the lane serves it.
#[derive(Debug)]
pub struct ModelHead {
    /// The request target as sent (origin form).
    pub target: String,
    /// The route template it is counted under (`app::model_route`'s).
    pub route: &'static str,
    pub headers: HeaderMap,
    pub content_length: u64,
    /// The client asked for the connection to close after the answer.
    pub close: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expects_continue: bool,
}

/// The route template a model request is counted under, as the router names it (`POST` only).
pub fn model_route(path: &str) -> Option<&'static str> {
    match path {
        "/infill" => Some("/infill"),
        p if p.starts_with("/v1/") && p.len() > 4 => Some("/v1/{*rest}"),
        _ => None,
    }
}

/// Decides what the start of `buf` is, without taking anything from it.
pub fn classify(buf: &[u8]) -> Parse {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Parse::Partial,
        _ => return Parse::Handoff,
    };
    // Where a slice of the head is in `buf` (httparse's slices all point into it).
    let at = |part: &[u8]| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + part.len()
    };
    let mut headers = Vec::with_capacity(req.headers.len());
    let Some(shape) = take(&req, |name, value| headers.push((name, at(value)))) else {
        return Parse::Handoff;
    };
    match req.path {
        Some(target) => Parse::Lane(Taken {
            len,
            target: at(target.as_bytes()),
            headers,
            shape,
        }),
        None => Parse::Handoff,
    }
}

/// The request `classify` took, from its head's bytes (exactly `taken.len` of them): header
/// values share `head`'s memory. `None` only if `head` is not the bytes `classify` read.
pub fn build(head: &Bytes, taken: Taken) -> Option<ModelHead> {
    if head.len() != taken.len {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(taken.headers.len());
    for (name, value) in taken.headers {
        let value = HeaderValue::from_maybe_shared(head.slice(value)).ok()?;
        headers.append(name, value);
    }
    let target = std::str::from_utf8(head.get(taken.target)?)
        .ok()?
        .to_string();
    let shape = taken.shape;
    Some(ModelHead {
        target,
        route: shape.route,
        headers,
        content_length: shape.content_length,
        close: shape.close,
        expects_continue: shape.expects_continue,
    })
}

#[derive(Debug)]
struct Shape {
    route: &'static str,
    content_length: u64,
    close: bool,
    expects_continue: bool,
}

/// Whether a complete head is the lane's, calling `header` with each header; `None` if not.
fn take(
    req: &httparse::Request<'_, '_>,
    mut header: impl FnMut(HeaderName, &[u8]),
) -> Option<Shape> {
    if req.method? != "POST" || req.version? != 1 {
        return None;
    }
    let target = req.path?;
    if !target.starts_with('/') {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let route = model_route(path)?;
    let mut length = None;
    let (mut close, mut expects_continue) = (false, false);
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        if name == "content-length" {
            if length.is_some() {
                return None;
            }
            length = Some(digits(h.value)?);
        } else if name == "transfer-encoding" || name == "upgrade" {
            return None;
        } else if name == "expect" {
            if !h.value.eq_ignore_ascii_case(b"100-continue") || expects_continue {
                return None;
            }
            expects_continue = true;
        } else if name == "connection" {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    return None;
                }
            }
        }
        header(name, h.value);
    }
    Some(Shape {
        route,
        content_length: length?,
        close,
        expects_continue,
    })
}

/// A `Content-Length` value: decimal digits only, at most 18 of them (no overflow, and far over
/// any body limit).
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head at the start of `buf`, which must be the lane's and `len` bytes long.
    fn lane(buf: &[u8], len: usize) -> ModelHead {
        let Parse::Lane(t) = classify(buf) else {
            panic!("not the lane's: {:?}", String::from_utf8_lossy(buf));
        };
        assert_eq!(t.len, len);
        build(&Bytes::copy_from_slice(&buf[..len]), t).expect("built")
    }

    const OK: &str = "POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n";

    #[test]
    fn a_plain_model_request_is_the_lanes_and_its_headers_are_kept() {
        let body = format!("{OK}{{}}");
        let head = lane(body.as_bytes(), OK.len());
        assert_eq!(head.target, "/v1/chat/completions");
        assert_eq!(head.route, "/v1/{*rest}");
        assert_eq!(head.content_length, 2);
        assert_eq!(head.headers["content-type"], "application/json");
        assert_eq!(head.headers["host"], "h");
        assert!(!head.close && !head.expects_continue);
        for partial in [&OK[..10], &OK[..OK.len() - 1]] {
            assert!(
                matches!(classify(partial.as_bytes()), Parse::Partial),
                "{partial:?}"
            );
        }
    }

    /// Empty lines before the request line are skipped, as RFC 9112 2.2 allows (found by the
    /// fuzzer, fuzz/artifacts/lane_head/): the head taken includes them.
    #[test]
    fn empty_lines_before_a_request_are_part_of_its_head() {
        let h = format!("\r\n\n{OK}");
        assert_eq!(lane(h.as_bytes(), h.len()).content_length, 2);
    }

    #[test]
    fn close_continue_and_infill_are_the_lanes_too() {
        let h = "POST /infill?x=1 HTTP/1.1\r\nConnection: Keep-Alive, close\r\nExpect: 100-Continue\r\nContent-Length: 0\r\n\r\n";
        let head = lane(h.as_bytes(), h.len());
        assert_eq!(
            (head.route, head.target.as_str()),
            ("/infill", "/infill?x=1")
        );
        assert!(head.close && head.expects_continue);
    }

    /// What hyper answers (or refuses) in its own way goes to it: framing the lane does not
    /// take (request smuggling lives there), other methods and routes, odd heads.
    #[test]
    fn everything_unusual_is_handed_to_hyper() {
        let cases = [
            "GET /v1/models HTTP/1.1\r\n\r\n",
            "POST /api/v1/instances HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "POST /v1/ HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "POST /v1x HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "POST http://h/v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.0\r\nContent-Length: 2\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 1234567890123456789\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nExpect: something\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nUpgrade: h2c\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nConnection: upgrade\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nBad Header: x\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nX: a\r\n folded\r\n\r\n",
        ];
        for c in cases {
            assert!(matches!(classify(c.as_bytes()), Parse::Handoff), "{c:?}");
        }
        let mut many = String::from("POST /v1/chat/completions HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        assert!(
            matches!(classify(many.as_bytes()), Parse::Handoff),
            "too many headers"
        );
        let huge = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nX: {}",
            "y".repeat(MAX_HEAD)
        );
        assert!(
            matches!(classify(huge.as_bytes()), Parse::Handoff),
            "an endless head"
        );
        let whole = format!("{huge}\r\nContent-Length: 0\r\n\r\n");
        assert!(
            matches!(classify(whole.as_bytes()), Parse::Handoff),
            "a head over the limit that came whole"
        );
    }
}
