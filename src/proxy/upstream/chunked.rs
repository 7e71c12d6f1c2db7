//! Decoding `Transfer-Encoding: chunked` as bytes arrive.

use bytes::{Bytes, BytesMut};
use std::io;

/// Longest chunk-size line, and most trailer bytes, of a chunked body.
pub(super) const MAX_CHUNK_LINE: usize = 4 << 10;
const MAX_TRAILERS: usize = 16 << 10;

/// Decoding `Transfer-Encoding: chunked`, resumable at any byte.
#[derive(Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    trailer_bytes: usize,
}

#[derive(Default, PartialEq, Debug, Clone, Copy)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data: this many bytes remain.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

impl Chunked {
    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Takes the complete lines and data in `buf`: returns the data, concatenated (without a
    /// copy when there is one piece), or `None` if none is complete yet.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        let mut one: Option<Bytes> = None;
        let mut many: Option<BytesMut> = None;
        loop {
            match self.state {
                ChunkState::Data(rem) => {
                    if buf.is_empty() {
                        break;
                    }
                    let n = buf.len().min(usize::try_from(rem).unwrap_or(usize::MAX));
                    let piece = buf.split_to(n).freeze();
                    self.state = match rem - n as u64 {
                        0 => ChunkState::DataEnd,
                        r => ChunkState::Data(r),
                    };
                    match (&mut one, &mut many) {
                        (None, None) => one = Some(piece),
                        (Some(first), None) => {
                            let mut m = BytesMut::with_capacity(first.len() + piece.len());
                            m.extend_from_slice(first);
                            m.extend_from_slice(&piece);
                            one = None;
                            many = Some(m);
                        }
                        (_, Some(m)) => m.extend_from_slice(&piece),
                    }
                }
                ChunkState::Done => break,
                _ => {
                    let Some(line) = take_line(buf, self.line_limit())? else {
                        break;
                    };
                    self.state = self.after_line(&line)?;
                }
            }
        }
        Ok(many.map(BytesMut::freeze).or(one))
    }

    /// The state after a whole control line (a chunk size, the end of a chunk, a trailer).
    fn after_line(&mut self, line: &[u8]) -> io::Result<ChunkState> {
        Ok(match self.state {
            ChunkState::Size => match chunk_size(line)? {
                0 => ChunkState::Trailers,
                n => ChunkState::Data(n),
            },
            ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
            ChunkState::DataEnd => return Err(bad("no CRLF after chunk data")),
            ChunkState::Trailers if line.is_empty() => ChunkState::Done,
            ChunkState::Trailers => {
                self.trailer_bytes += line.len();
                if self.trailer_bytes > MAX_TRAILERS {
                    return Err(bad("trailers too large"));
                }
                ChunkState::Trailers
            }
            other => other,
        })
    }

    fn line_limit(&self) -> usize {
        match self.state {
            ChunkState::Trailers => MAX_TRAILERS,
            _ => MAX_CHUNK_LINE,
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad chunked body from the backend: {what}"),
    )
}

/// One line (without its CRLF or LF) from the front of `buf`, if a whole one is there. A line
/// over `limit` is refused whether or not its end has arrived, so the answer does not depend on
/// how the bytes were split into reads.
fn take_line(buf: &mut BytesMut, limit: usize) -> io::Result<Option<BytesMut>> {
    match memchr::memchr(b'\n', buf) {
        Some(i) if i > limit => Err(bad("line too long")),
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > limit => Err(bad("line too long")),
        None => Ok(None),
    }
}

/// The size of a chunk-size line (`HEX[;extensions]`).
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let hex = line.split(|&b| b == b';').next().unwrap_or_default();
    let hex = hex.trim_ascii();
    if hex.is_empty() || hex.len() > 16 {
        return Err(bad("bad chunk size"));
    }
    let mut n: u64 = 0;
    for &b in hex {
        let d = (b as char)
            .to_digit(16)
            .ok_or_else(|| bad("bad chunk size"))?;
        n = (n << 4) | u64::from(d);
    }
    Ok(n)
}
