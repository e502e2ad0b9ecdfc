//! The properties the parsers keep on any input whatever, in one place for both checkers:
//! tests/parser_properties.rs (on generated input) and the fuzz targets in `fuzz/`, which
//! include this file by its path. Each function panics
//! when a property fails; no input may make the parsers themselves panic. The parsers: the
//! protocol's request line and reply header, and the admin listener's request head and the
//! JSON body of a join.
// Each includer uses some of these.
#![allow(dead_code)]

use std::io::BufReader;
use std::net::SocketAddr;

use minilb::balancer::http;
use minilb::protocol::{self, Line, ReplyHeader, Request, MAX_REQUEST_LINE};
use minilb::servers_file::ServerEntry;

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
        Err(e) => assert!(matches!(e.code(), "bad_request" | "too_large"), "{data:?}: {e}"),
    }
}

/// A reply header line: parsing never panics; an accepted header writes back as exactly one
/// line that parses to the same header (an `ERR` message may be folded once, then no more).
pub fn reply_header(data: &[u8]) {
    let Ok(header) = ReplyHeader::parse(data) else {
        return;
    };
    let line = header.to_line();
    assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{line:?}");
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
