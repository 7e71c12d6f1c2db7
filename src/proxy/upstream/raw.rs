//! A backend's response body passed on to the client as it came (the front door's lane).

use super::{chunked, poll_more, release, Body, Conn, Framing};
use bytes::Bytes;
use std::io;
use std::task::{ready, Context, Poll};

/// A response body passed on as it came, framing included (`http::lane`): the backend's
/// chunked framing is what the client receives, read here only to find the data (for the token
/// tap) and the body's end. Saves de-chunking and re-chunking every event of a stream.
pub struct RawBody {
    conn: Option<Conn>,
    addr: String,
    framing: RawFraming,
    keep_alive: bool,
}

/// How a passed-on body is framed, as the client must be told.
pub enum RawFraming {
    /// `content-length`: this many bytes remain.
    Length(u64),
    /// `transfer-encoding: chunked`, passed on as it is.
    Chunked(chunked::Pass),
    /// Until the backend closes: the client's connection must close after it too.
    Eof,
}

impl Body {
    /// This body, untouched so far, passed on as it comes from here on.
    pub fn into_raw(mut self) -> RawBody {
        let framing = match &self.framing {
            Framing::Length(n) => RawFraming::Length(*n),
            Framing::Chunked(_) => RawFraming::Chunked(chunked::Pass::default()),
            Framing::Eof => RawFraming::Eof,
        };
        RawBody {
            conn: self.conn.take(),
            addr: std::mem::take(&mut self.addr),
            framing,
            keep_alive: self.keep_alive,
        }
    }
}

impl RawBody {
    pub fn framing(&self) -> &RawFraming {
        &self.framing
    }

    /// Whether the whole body has been read (`poll_raw` has nothing more to give).
    pub fn is_end(&self) -> bool {
        self.conn.is_none() || self.complete()
    }

    fn complete(&self) -> bool {
        match &self.framing {
            RawFraming::Length(rem) => *rem == 0,
            RawFraming::Chunked(c) => c.is_done(),
            RawFraming::Eof => false,
        }
    }

    fn done(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.buf.is_empty() {
                release(&self.addr, conn);
            }
        }
    }

    /// The next bytes of the body as they came, with the ranges of data among them in `data`
    /// (cleared first); `None` at the end. An error (a malformed body, the backend gone before
    /// the end) means the client's response cannot be completed.
    pub fn poll_raw(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Vec<std::ops::Range<usize>>,
    ) -> Poll<Option<io::Result<Bytes>>> {
        data.clear();
        loop {
            if self.complete() {
                self.done();
                return Poll::Ready(None);
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if !conn.buf.is_empty() {
                let n = match &mut self.framing {
                    RawFraming::Length(rem) => {
                        let n = conn
                            .buf
                            .len()
                            .min(usize::try_from(*rem).unwrap_or(usize::MAX));
                        *rem -= n as u64;
                        data.push(0..n);
                        n
                    }
                    RawFraming::Chunked(c) => match c.pass(&conn.buf, |r| data.push(r)) {
                        Ok(n) => n,
                        Err(e) => {
                            self.conn = None;
                            return Poll::Ready(Some(Err(e)));
                        }
                    },
                    RawFraming::Eof => {
                        data.push(0..conn.buf.len());
                        conn.buf.len()
                    }
                };
                let raw = conn.buf.split_to(n).freeze();
                if self.complete() {
                    self.done();
                }
                return Poll::Ready(Some(Ok(raw)));
            }
            let until_close = matches!(self.framing, RawFraming::Eof);
            match ready!(poll_more(&mut self.conn, until_close, cx)) {
                Ok(true) => {}
                Ok(false) => return Poll::Ready(None),
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }
}

impl Drop for RawBody {
    /// As `Body`'s: read to its end, the connection is reused; dropped earlier, it is closed.
    fn drop(&mut self) {
        if self.complete() {
            self.done();
        }
    }
}
