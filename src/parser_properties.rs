//! The properties the parsers keep on any input whatever, in one place for both checkers: the
//! unit tests below (on generated input) and the fuzz targets in `fuzz/`. Each function panics
//! when a property fails; no input may make the parsers themselves panic. The parsers: the
//! protocol's request line and reply header, and the admin listener's request head and the
//! JSON body of a join.

use std::io::BufReader;
use std::net::SocketAddr;

use crate::balancer::http;
use crate::protocol::{self, Line, ReplyHeader, Request, MAX_REQUEST_LINE};
use crate::servers_file::ServerEntry;

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

/// The JSON body of a join (`POST /servers`), read as a server entry: reading never panics;
/// an entry read writes back as JSON that reads as the same entry.
pub fn join_body(data: &[u8]) {
    let Ok(entry) = serde_json::from_slice::<ServerEntry>(data) else {
        return;
    };
    assert!(entry.processing_time.is_finite(), "{entry:?}");
    assert!(entry.address().ends_with(&format!(":{}", entry.port)));
    let json = serde_json::to_string(&entry).expect("an entry always writes as JSON");
    let again: ServerEntry = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("{entry:?} wrote {json:?}, which does not read: {e}"));
    // serde_json reads floats to within one unit in the last place, not always exactly.
    let close = (again.processing_time - entry.processing_time).abs()
        <= entry.processing_time.abs() * 4.0 * f64::EPSILON;
    assert!(
        close
            && (again.id, &again.host, again.port, again.writable)
                == (entry.id, &entry.host, entry.port, entry.writable),
        "{entry:?} came back as {again:?}"
    );
}

/// An admin request head: reading it from memory never panics nor fails; what is refused is a
/// 4xx answer; what is accepted has a method and path without spaces or line breaks, a path
/// without its query, and a body length within the cap.
pub fn admin_request_head(data: &[u8]) {
    let remote = SocketAddr::from(([127, 0, 0, 1], 1));
    let mut reader = BufReader::with_capacity(64, data);
    match http::read_head(&mut reader, remote).expect("reading from memory cannot fail") {
        Ok((request, length)) => {
            assert!(length <= http::MAX_BODY, "{length}");
            for part in [&request.method, &request.path] {
                assert!(!part.contains([' ', '\r', '\n']), "{request:?}");
            }
            assert!(!request.path.contains('?'), "{request:?}");
        }
        Err(refusal) => assert!([400, 411, 413, 431].contains(&refusal.code), "{refusal:?}"),
    }
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

    /// Pieces of join bodies and admin request heads.
    const ADMIN_PIECES: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"\"",
        b"\"id\":",
        b"\"host\":",
        b"\"port\":",
        b"\"processing_time\":",
        b"\"writable\":",
        b"\"127.0.0.1\"",
        b"\"::1\"",
        b"\"\\u0000\"",
        b"\"\\ud800\"",
        b"0",
        b"-1",
        b"65535",
        b"65536",
        b"4294967296",
        b"0.5",
        b"1e308",
        b"1e400",
        b"-0.0",
        b"null",
        b"true",
        b"GET / HTTP/1.1",
        b"POST /servers?x=1 HTTP/1.1",
        b"\r\n",
        b"\n",
        b" ",
        b"Content-Length: ",
        b"Transfer-Encoding: chunked",
        b"Expect: 100-continue",
        b"65537",
        b"99999999999999999999999",
        b"\xff",
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
            self.from(INTERESTING)
        }

        /// Up to 40 pieces, each one of `pieces` or a random byte.
        fn from(&mut self, pieces: &[&[u8]]) -> Vec<u8> {
            let mut out = Vec::new();
            for _ in 0..self.below(40) {
                if self.below(3) == 0 {
                    out.push(self.next() as u8);
                } else {
                    out.extend_from_slice(pieces[self.below(pieces.len())]);
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

    #[test]
    fn join_bodies_on_generated_input() {
        let mut g = Gen(0x5eed_0004);
        let valid = br#"{"id": 7, "host": "127.0.0.1", "port": 5071, "processing_time": 0.5}"#;
        join_body(valid);
        for _ in 0..CASES {
            join_body(&g.from(ADMIN_PIECES));
            // A valid body with one piece cut out or put in, so most get deep into the parser.
            let mut body = valid.to_vec();
            let at = g.below(body.len());
            if g.below(2) == 0 {
                body.remove(at);
            } else {
                let piece = ADMIN_PIECES[g.below(ADMIN_PIECES.len())];
                body.splice(at..at, piece.iter().copied());
            }
            join_body(&body);
        }
    }

    #[test]
    fn admin_request_heads_on_generated_input() {
        let mut g = Gen(0x5eed_0005);
        for _ in 0..CASES {
            let mut head = g.from(ADMIN_PIECES);
            head.extend_from_slice(b"\r\n\r\n");
            admin_request_head(&head);
        }
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(http::MAX_HEAD + 10, b'a');
        admin_request_head(&long);
        admin_request_head(b"POST /servers HTTP/1.1\r\nContent-Length: 65537\r\n\r\n");
    }
}
