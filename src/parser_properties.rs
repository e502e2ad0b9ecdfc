//! The properties the protocol's parsers keep on any input whatever, in one place for both
//! checkers: the unit tests below (on generated input) and the fuzz targets in `fuzz/`.
//! Each function panics when a property fails; no input may make the parsers themselves panic.

use std::io::BufReader;

use crate::protocol::{self, Line, ReplyHeader, Request, MAX_REQUEST_LINE};

/// A request line: parsing never panics; what is refused is `bad_request` or `too_large`;
/// what is accepted turns back into a line that parses to the same request.
pub fn request_line(data: &[u8]) {
    match Request::parse(data) {
        Ok(request) => {
            let line = request.line();
            assert!(line.len() <= MAX_REQUEST_LINE, "{request:?}");
            assert!(!line.contains(['\n', '\r', '\0']), "{request:?}");
            assert_eq!(Request::parse(line.as_bytes()).as_ref(), Ok(&request));
        }
        Err(e) => assert!(
            matches!(e.code(), "bad_request" | "too_large"),
            "{data:?}: {e}"
        ),
    }
}

/// A reply header line: parsing never panics; an accepted header writes back as exactly one
/// line that parses to the same header (an `ERR` message may be folded once, then no more).
pub fn reply_header(data: &[u8]) {
    let Ok(header) = ReplyHeader::parse(data) else {
        return;
    };
    let line = header.to_line();
    assert!(
        line.ends_with('\n') && line.matches('\n').count() == 1,
        "{line:?}"
    );
    let again = ReplyHeader::parse(&line.as_bytes()[..line.len() - 1])
        .unwrap_or_else(|e| panic!("{header:?} wrote {line:?}, which does not parse: {e}"));
    match header {
        ReplyHeader::Ok { .. } => assert_eq!(again, header),
        ReplyHeader::Err(_) => assert_eq!(again.to_line(), line),
    }
}

/// A byte stream split by [`protocol::read_line`] through a small buffer: lines come out
/// without `\n` and never over the limit, and the stream ends in a bounded number of reads.
pub fn line_splitting(data: &[u8], limit: usize, buffer: usize) {
    let mut reader = BufReader::with_capacity(buffer.max(1), data);
    let mut line = Vec::new();
    // Each complete line consumes at least its `\n`, so this bound is never reached.
    for _ in 0..=data.len() {
        match protocol::read_line(&mut reader, &mut line, limit) {
            Ok(Line::Complete) => {
                assert!(line.len() <= limit && !line.contains(&b'\n'), "{line:?}");
            }
            Ok(Line::TooLong | Line::Eof | Line::Truncated) => return,
            Err(e) => panic!("reading from memory failed: {e}"),
        }
    }
    panic!("read_line did not reach the end of {} bytes", data.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes the parsers treat specially, and pieces of the words they look for.
    const INTERESTING: &[&[u8]] = &[
        b"\n",
        b"\r",
        b"\0",
        b" ",
        b"\t",
        b"=",
        b"file",
        b"file ",
        b"OK ",
        b"ERR ",
        b"sql",
        b"not_found",
        b"0",
        b"9",
        b"-",
        b"+",
        b"\xff",
        b"\xc3",
        b"\xc3\xa9",
        b"\xe2\x98\x83",
        b"\xe2\x80\xae",
        b"\xf0\x9f\x92\xa9",
        b"\xc2\xa0",
        b"k=v",
        b"18446744073709551616",
    ];

    /// A small deterministic generator (xorshift64*), so a failure can be replayed.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Up to 40 pieces, each an interesting token or a random byte.
        fn bytes(&mut self) -> Vec<u8> {
            let mut out = Vec::new();
            for _ in 0..self.below(40) {
                if self.below(3) == 0 {
                    out.push(self.next() as u8);
                } else {
                    out.extend_from_slice(INTERESTING[self.below(INTERESTING.len())]);
                }
            }
            out
        }
    }

    const CASES: usize = 20_000;

    #[test]
    fn request_lines_on_generated_input() {
        let mut g = Gen(0x5eed_0001);
        for _ in 0..CASES {
            request_line(&g.bytes());
        }
        // Around the length limit, with and without a trailing `\r`.
        for n in [MAX_REQUEST_LINE - 1, MAX_REQUEST_LINE, MAX_REQUEST_LINE + 1] {
            let mut line = vec![b'a'; n];
            request_line(&line);
            line.push(b'\r');
            request_line(&line);
        }
    }

    #[test]
    fn reply_headers_on_generated_input() {
        let mut g = Gen(0x5eed_0002);
        for _ in 0..CASES {
            // Most of them start like a header, to get past the first check.
            let start: &[u8] = match g.below(3) {
                0 => b"OK ",
                1 => b"ERR sql ",
                _ => b"",
            };
            let mut data = start.to_vec();
            data.extend(g.bytes());
            reply_header(&data);
        }
        for fixed in [
            &b"OK 0"[..],
            b"OK 18446744073709551615 a=b==c d=",
            b"ERR sql  two  spaces  ",
            b"ERR timeout \xe2\x80\xaeflipped",
        ] {
            reply_header(fixed);
        }
    }

    #[test]
    fn line_splitting_on_generated_input() {
        let mut g = Gen(0x5eed_0003);
        for _ in 0..CASES {
            let data = g.bytes();
            let limit = g.below(20);
            let buffer = 1 + g.below(16);
            line_splitting(&data, limit, buffer);
        }
    }
}
