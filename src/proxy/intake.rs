//! Reading a proxied request's body, within three limits of `[proxy]`: its size
//! (`max_body_bytes`, 413), the time the client takes to send it (`body_timeout`, 408), and the
//! memory every body being read or forwarded holds together (`max_buffered_bytes`, 503 with
//! `Retry-After`). Bodies are read whole because the `model` field routes the request; without a
//! shared budget, a few hundred slow uploads of 32 MiB each could take gigabytes.

use super::oai_error;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bytes of `[proxy] max_buffered_bytes` not held by a body.
#[derive(Clone)]
pub struct Budget(Arc<Semaphore>);

impl Budget {
    pub fn new(bytes: u64) -> Self {
        let permits = usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self(Arc::new(Semaphore::new(permits)))
    }

    /// Bytes free now.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// A body's share of the budget, given back when dropped (once the request has been sent).
#[derive(Default)]
pub struct Held(Option<OwnedSemaphorePermit>);

impl Held {
    /// Takes `n` more bytes, or says no without waiting.
    fn take(&mut self, budget: &Budget, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(n) else {
            return false;
        };
        match budget.0.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                match &mut self.0 {
                    Some(held) => held.merge(p),
                    None => self.0 = Some(p),
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// The limits one body is read under.
#[derive(Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub deadline: Duration,
}

/// The whole request body, or the answer that refuses it. A declared length over the limit is
/// refused before anything is read.
pub async fn read(
    limits: Limits,
    budget: &Budget,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, Held), Response> {
    let max = limits.max_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&l| l > max) {
        return Err(too_large(format!(
            "request body of {len} bytes is over the limit of {max} bytes"
        )));
    }
    let mut held = Held::default();
    let reading = async {
        let mut body = body;
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                oai_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_request",
                    format!("reading the request body: {e}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total = total.saturating_add(data.len() as u64);
            if total > max {
                return Err(too_large(format!(
                    "request body over the limit of {max} bytes"
                )));
            }
            if !held.take(budget, data.len()) {
                return Err(busy());
            }
            chunks.push(data);
        }
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => Bytes::from(chunks.concat()),
        })
    };
    match tokio::time::timeout(limits.deadline, reading).await {
        Ok(Ok(bytes)) => Ok((bytes, held)),
        Ok(Err(answer)) => Err(answer),
        Err(_) => Err(timed_out(limits.deadline)),
    }
}

/// A body whose length is declared and which the front door reads itself (`http::lane`): the
/// answer that refuses it before anything is read, or its bytes of the budget, taken at once.
pub fn admit(limits: Limits, budget: &Budget, len: u64) -> Result<Held, Box<Response>> {
    let max = limits.max_bytes;
    if len > max {
        return Err(Box::new(too_large(format!(
            "request body of {len} bytes is over the limit of {max} bytes"
        ))));
    }
    let mut held = Held::default();
    match usize::try_from(len) {
        Ok(n) if held.take(budget, n) => Ok(held),
        _ => Err(Box::new(busy())),
    }
}

/// The answer to a body that did not arrive within `[proxy] body_timeout`.
pub fn timed_out(deadline: Duration) -> Response {
    oai_error(
        StatusCode::REQUEST_TIMEOUT,
        "invalid_request_error",
        "request_timeout",
        format!(
            "the request body did not arrive within {} s ([proxy] body_timeout)",
            deadline.as_secs_f64()
        ),
    )
}

fn too_large(message: String) -> Response {
    oai_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "request_too_large",
        message,
    )
}

fn busy() -> Response {
    let mut r = oai_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "server_busy",
        "too many request bodies are being received ([proxy] max_buffered_bytes); try again shortly",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{stream, StreamExt};
    use std::time::Duration;

    fn limits(max: u64) -> Limits {
        Limits {
            max_bytes: max,
            deadline: Duration::from_secs(5),
        }
    }

    fn chunked(parts: &[&'static [u8]]) -> Body {
        Body::from_stream(stream::iter(
            parts
                .iter()
                .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn a_body_is_read_whole_and_holds_its_bytes_of_the_budget_until_dropped() {
        let budget = Budget::new(100);
        let (b, held) = read(
            limits(50),
            &budget,
            &HeaderMap::new(),
            chunked(&[b"abc", b"de"]),
        )
        .await
        .map_err(|r| r.status())
        .expect("read");
        assert_eq!(&b[..], b"abcde");
        assert_eq!(budget.available(), 95);
        drop(held);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn over_the_size_limit_is_413_declared_or_not() {
        let budget = Budget::new(100);
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "51".parse().expect("header"));
        let r = read(limits(50), &budget, &h, Body::empty()).await;
        assert_eq!(
            r.err().map(|r| r.status()),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        let r = read(
            limits(4),
            &budget,
            &HeaderMap::new(),
            chunked(&[b"abc", b"de"]),
        )
        .await;
        assert_eq!(
            r.err().map(|r| r.status()),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        assert_eq!(
            budget.available(),
            100,
            "a refused body gives its bytes back"
        );
    }

    #[tokio::test]
    async fn an_exhausted_budget_is_503_with_retry_after() {
        let budget = Budget::new(8);
        let (_first, _held) = read(limits(50), &budget, &HeaderMap::new(), chunked(&[b"12345"]))
            .await
            .map_err(|r| r.status())
            .expect("the first fits");
        let r = read(
            limits(50),
            &budget,
            &HeaderMap::new(),
            chunked(&[b"12", b"345"]),
        )
        .await
        .err()
        .expect("the second does not");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            budget.available(),
            3,
            "the refused body's first chunk is given back"
        );
    }

    #[tokio::test]
    async fn a_body_that_never_ends_is_408_after_the_deadline() {
        let budget = Budget::new(100);
        let slow = Body::from_stream(
            stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{"))])
                .chain(stream::pending()),
        );
        let l = Limits {
            max_bytes: 50,
            deadline: Duration::from_millis(200),
        };
        let r = read(l, &budget, &HeaderMap::new(), slow).await;
        assert_eq!(
            r.err().map(|r| r.status()),
            Some(StatusCode::REQUEST_TIMEOUT)
        );
        assert_eq!(budget.available(), 100);
    }
}
