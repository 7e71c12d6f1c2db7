//! Writing the lane's answers: the response head (as hyper writes it: status line, headers in
//! lower case, `date`, the framing), and whole answers such as the proxy's JSON errors.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// How the body after a head is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    /// The body is sent in chunked framing (the backend's own, passed on).
    Chunked,
    /// Until the connection closes.
    Close,
}

/// The head of a response: `headers` (end-to-end ones; framing and connection headers in them
/// are dropped), then `date`, the framing and, if `close`, `connection: close`.
pub fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    for (k, v) in headers {
        if matches!(
            k.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "keep-alive"
        ) {
            continue;
        }
        dated |= k == "date";
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    // No body can follow these, and they carry no length (RFC 9110 8.6).
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    match framing {
        _ if bodiless => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa_u64(n).as_slice());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Close => {}
    }
    if close || framing == Framing::Close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A whole answer made by llamactld itself (a refusal, an error), with `extra` headers added:
/// its head and body, ready to write.
pub async fn whole(res: Response, extra: &[(&'static str, &HeaderValue)], close: bool) -> Vec<u8> {
    let (mut parts, body) = res.into_parts();
    for (k, v) in extra {
        parts.headers.entry(*k).or_insert_with(|| (*v).clone());
    }
    // Our own answers are small and complete; a body that fails to collect is sent empty.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut out = Vec::with_capacity(256 + body.len());
    encode_head(
        &mut out,
        parts.status,
        &parts.headers,
        Framing::Length(body.len() as u64),
        close,
    );
    out.extend_from_slice(&body);
    out
}

thread_local! {
    /// The `date` value of the current second, made once a second per thread.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends the current time in HTTP's date format.
fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(d.1.as_bytes());
    });
}

/// A number's decimal digits, without allocating.
fn itoa_u64(mut n: u64) -> Digits {
    let mut d = Digits {
        buf: [0; 20],
        start: 20,
    };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    d
}

struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: StatusCode, h: &HeaderMap, framing: Framing, close: bool) -> String {
        let mut out = Vec::new();
        encode_head(&mut out, status, h, framing, close);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn a_head_is_written_as_hyper_writes_it() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert("content-length", HeaderValue::from_static("99"));
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        let text = head(StatusCode::OK, &h, Framing::Chunked, false);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ndate: "));
        assert!(
            text.ends_with(" GMT\r\ntransfer-encoding: chunked\r\n\r\n"),
            "{text}"
        );
        assert!(
            !text.contains("99") && !text.contains("keep-alive"),
            "{text}"
        );

        let none = HeaderMap::new();
        let text = head(
            StatusCode::NOT_FOUND,
            &none,
            Framing::Length(12345678901),
            true,
        );
        assert!(
            text.starts_with("HTTP/1.1 404 Not Found\r\ndate: "),
            "{text}"
        );
        let end = "\r\ncontent-length: 12345678901\r\nconnection: close\r\n\r\n";
        assert!(text.ends_with(end), "{text}");

        let text = head(StatusCode::OK, &none, Framing::Close, false);
        assert!(text.ends_with("GMT\r\nconnection: close\r\n\r\n"), "{text}");
        // No length on answers that cannot have a body.
        let text = head(StatusCode::NO_CONTENT, &none, Framing::Length(0), false);
        assert!(text.ends_with("GMT\r\n\r\n"), "{text}");
        for n in [0, 7, 10, u64::MAX] {
            assert_eq!(itoa_u64(n).as_slice(), n.to_string().as_bytes());
        }
    }
}
