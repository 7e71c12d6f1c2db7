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

/// Following a chunked body that is passed on as it came (the front door's model requests,
/// `http::lane`): the bytes are not rewritten, only read to know which of them are data (for
/// the token tap) and where the body ends (the bytes after it are not the client's).
///
/// Stricter than `Chunked`, because the client parses these very bytes: lines end in CRLF
/// exactly, a size is hex digits and nothing else before an optional `;extension`, and no
/// control byte but HTAB appears in an extension or a trailer. Whatever is not that is an error,
/// and the response is cut off there.
#[derive(Default)]
pub struct Pass {
    state: PassState,
    /// Bytes of the current control line, and of all trailers.
    line: usize,
    trailer_bytes: usize,
}

#[derive(Default, PartialEq, Debug, Clone, Copy)]
enum PassState {
    /// In a chunk-size line: the size so far and its digit count, or in its extension.
    #[default]
    SizeStart,
    Size(u64, u8),
    Ext(u64),
    /// The LF of a line whose CR came; what follows it.
    Lf(After),
    Data(u64),
    /// The CR after a chunk's data.
    DataCr,
    /// At the start of a trailer line (or the final empty line), inside one.
    TrailerStart,
    Trailer,
    Done,
}

#[derive(PartialEq, Debug, Clone, Copy)]
enum After {
    Data(u64),
    Size,
    Trailers,
    Done,
}

impl Pass {
    pub(crate) fn is_done(&self) -> bool {
        self.state == PassState::Done
    }

    /// Reads `buf` from its start: returns how many of its bytes belong to the body (all of
    /// them unless it ends in there), and calls `data` with the range of each piece of data
    /// among them, in order.
    pub(crate) fn pass(
        &mut self,
        buf: &[u8],
        mut data: impl FnMut(std::ops::Range<usize>),
    ) -> io::Result<usize> {
        let mut i = 0;
        while i < buf.len() {
            if let PassState::Data(rem) = self.state {
                let n = (buf.len() - i).min(usize::try_from(rem).unwrap_or(usize::MAX));
                data(i..i + n);
                i += n;
                self.state = match rem - n as u64 {
                    0 => PassState::DataCr,
                    r => PassState::Data(r),
                };
                continue;
            }
            if self.state == PassState::Done {
                break;
            }
            let b = buf[i];
            i += 1;
            self.line += 1;
            if self.line > MAX_CHUNK_LINE && !self.in_trailers() {
                return Err(bad("line too long"));
            }
            self.state = match (self.state, b) {
                (PassState::SizeStart, _) => match hex(b) {
                    Some(d) => PassState::Size(d, 1),
                    None => return Err(bad("bad chunk size")),
                },
                (PassState::Size(n, digits), _) => match hex(b) {
                    Some(_) if digits >= 16 => return Err(bad("bad chunk size")),
                    Some(d) => PassState::Size((n << 4) | d, digits + 1),
                    None if b == b';' => PassState::Ext(n),
                    None if b == b'\r' => PassState::Lf(size_done(n)),
                    None => return Err(bad("bad chunk size")),
                },
                (PassState::Ext(n), b'\r') => PassState::Lf(size_done(n)),
                (PassState::Ext(n), _) if text(b) => PassState::Ext(n),
                (PassState::Lf(next), b'\n') => {
                    self.line = 0;
                    match next {
                        After::Data(n) => PassState::Data(n),
                        After::Size => PassState::SizeStart,
                        After::Trailers => PassState::TrailerStart,
                        After::Done => PassState::Done,
                    }
                }
                (PassState::DataCr, b'\r') => PassState::Lf(After::Size),
                (PassState::TrailerStart, b'\r') => PassState::Lf(After::Done),
                // A trailer line's bytes count with its CR: never more lenient than `Chunked`.
                (PassState::Trailer, b'\r') => {
                    self.count_trailer()?;
                    PassState::Lf(After::Trailers)
                }
                (PassState::TrailerStart | PassState::Trailer, _) if text(b) => {
                    self.count_trailer()?;
                    PassState::Trailer
                }
                _ => return Err(bad("malformed framing")),
            };
        }
        Ok(i)
    }

    fn count_trailer(&mut self) -> io::Result<()> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILERS {
            return Err(bad("trailers too large"));
        }
        Ok(())
    }

    fn in_trailers(&self) -> bool {
        matches!(
            self.state,
            PassState::TrailerStart | PassState::Trailer | PassState::Lf(After::Trailers)
        )
    }
}

/// Passes `body` arriving `read` bytes at a time (for the fuzz target and the tests): the data,
/// whether the body ended, and how many of its bytes it was. Panics if `Pass` ever claims more
/// bytes than it was given, or stops short inside a body it has not finished.
pub fn pass_in_pieces(body: &[u8], read: usize) -> Result<(Vec<u8>, bool, usize), String> {
    let (mut p, mut out, mut used) = (Pass::default(), Vec::new(), 0);
    for piece in body.chunks(read.max(1)) {
        let n = p
            .pass(piece, |r| out.extend_from_slice(&piece[r]))
            .map_err(|e| e.to_string())?;
        assert!(n <= piece.len());
        used += n;
        if p.is_done() {
            break;
        }
        assert_eq!(n, piece.len(), "stopped inside a body it had not finished");
    }
    Ok((out, p.is_done(), used))
}

fn size_done(n: u64) -> After {
    match n {
        0 => After::Trailers,
        n => After::Data(n),
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// A byte a client reads as part of a line: visible, space, HTAB, or obs-text.
fn text(b: u8) -> bool {
    b == b'\t' || (b >= b' ' && b != 0x7f)
}

#[cfg(test)]
mod tests;
