//! The parsers' properties (tests/support/parser_properties.rs) checked on generated input:
//! the same checks the fuzz targets in `fuzz/` run on what libFuzzer makes up.

#[path = "support/parser_properties.rs"]
mod properties;

use minilb::balancer::http;
use minilb::protocol::MAX_REQUEST_LINE;
use properties::*;

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
