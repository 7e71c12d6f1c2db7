//! The pass-through's reading of chunked bodies (`Pass`): what it takes, where it stops, and
//! what it refuses that `Chunked` (the decoder) would take.

use super::{pass_in_pieces as pass, Chunked, MAX_CHUNK_LINE, MAX_TRAILERS};
use bytes::BytesMut;

#[test]
fn a_body_is_read_the_same_however_it_is_split_and_stops_at_its_end() {
    let body = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
    let after = b"HTTP/1.1 200 OK\r\n";
    let all = [&body[..], &after[..]].concat();
    for read in 1..=all.len() {
        assert_eq!(
            pass(&all, read),
            Ok((b"hello world".to_vec(), true, body.len())),
            "in pieces of {read}"
        );
    }
    // What the decoder makes of the same bytes.
    let mut buf = BytesMut::from(&body[..]);
    let mut c = Chunked::default();
    let data = c.decode(&mut buf).expect("decodes").expect("data");
    assert_eq!((&data[..], c.is_done()), (&b"hello world"[..], true));
}

#[test]
fn an_unfinished_body_takes_everything_and_is_not_done() {
    assert_eq!(pass(b"a\r\n01234", 3), Ok((b"01234".to_vec(), false, 8)));
    assert_eq!(pass(b"", 1), Ok((Vec::new(), false, 0)));
}

/// What a client might read differently from us is refused: the decoder's leniencies (bare LF,
/// spaces around the size, no CRLF after the data) and anything over the limits.
#[test]
fn framing_that_is_not_strictly_valid_is_an_error() {
    let long_ext = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE));
    let long_trailer = format!("0\r\nx: {}\r\n\r\n", "t".repeat(MAX_TRAILERS));
    let cases: Vec<&[u8]> = vec![
        b"5\nhello\n0\n\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"5\r\nhello\r0\r\n\r\n",
        b"g\r\n",
        b"\r\n",
        b"1;a\nb\r\nx\r\n0\r\n\r\n",
        b"1;a\x01\r\nx\r\n0\r\n\r\n",
        b"0\r\nx: \x00\r\n\r\n",
        b"0\r\n\r\r",
        b"10000000000000000\r\n",
        long_ext.as_bytes(),
        long_trailer.as_bytes(),
    ];
    for c in cases {
        for read in [1, 7, c.len().max(1)] {
            assert!(
                pass(c, read).is_err(),
                "{:?} in pieces of {read}",
                String::from_utf8_lossy(c)
            );
        }
    }
    // The largest size there is, and the most digits, are a size.
    assert!(pass(b"ffffffffffffffff\r\nab", 4).is_ok());
}
