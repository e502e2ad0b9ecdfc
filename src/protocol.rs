//! The wire protocol shared by client↔balancer and balancer↔server (see `docs/PROTOCOL.md`).
//!
//! A request is one UTF-8 line; a reply is `OK <length>[ key=value]...\n` and exactly
//! `<length>` bytes of body, or `ERR <code> <message>\n` with no body.

use std::io::{self, BufRead, IoSlice, Write};
use std::time::{Duration, Instant};

use crate::error::{Code, Error};

/// Longest request line, not counting the `\n`.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;
/// Longest reply header line, not counting the `\n`.
pub const MAX_HEADER_LINE: usize = 8 * 1024;

/// One request, as parsed from its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `file <name>`: download a file from the server's files folder.
    File(String),
    /// Any other line: one SQL statement.
    Query(String),
}

impl Request {
    /// Parses a request line (without its `\n`; a trailing `\r` is dropped here).
    ///
    /// # Errors
    /// [`Code::BadRequest`] for invalid UTF-8, an empty line, a NUL byte, a `\r` or `\n`
    /// inside the line, or `file` with no name; [`Code::TooLarge`] for a line over [`MAX_REQUEST_LINE`].
    pub fn parse(line: &[u8]) -> Result<Request, Error> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_REQUEST_LINE {
            return Err(
                Code::TooLarge.msg(format!("request line is over {MAX_REQUEST_LINE} bytes"))
            );
        }
        let text = std::str::from_utf8(line)
            .map_err(|_| Code::BadRequest.msg("request is not valid UTF-8"))?;
        if text.contains('\0') {
            return Err(Code::BadRequest.msg("request contains a NUL byte"));
        }
        if text.contains('\n') {
            // Only when the line did not come off the wire (the client's own arguments, say):
            // sent as it is, it would be two requests.
            return Err(Code::BadRequest.msg("request contains a newline inside the line"));
        }
        if text.contains('\r') {
            return Err(Code::BadRequest.msg("request contains a carriage return inside the line"));
        }
        if text.trim().is_empty() {
            return Err(Code::BadRequest.msg("empty request: send `file <name>` or an SQL query"));
        }
        if text == "file" || text.starts_with("file ") {
            let name = text["file".len()..].trim();
            if name.is_empty() {
                return Err(Code::BadRequest.msg("missing file name: `file <name>`"));
            }
            return Ok(Request::File(name.to_string()));
        }
        Ok(Request::Query(text.to_string()))
    }

    /// The request as a line, without the `\n`.
    pub fn line(&self) -> String {
        match self {
            Request::File(name) => format!("file {name}"),
            Request::Query(sql) => sql.clone(),
        }
    }
}

/// A parsed reply header line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyHeader {
    /// `OK <length>[ key=value]...`: a body of `length` bytes follows.
    Ok {
        /// Body length in bytes.
        length: u64,
        /// The `key=value` pairs, in order.
        fields: Vec<(String, String)>,
    },
    /// `ERR <code> <message>`: no body follows.
    Err(Error),
}

impl ReplyHeader {
    /// An `OK` header with the given fields.
    pub fn ok(length: u64, fields: &[(&str, String)]) -> ReplyHeader {
        ReplyHeader::Ok {
            length,
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    /// Parses a header line (without its `\n`; a trailing `\r` is dropped).
    ///
    /// # Errors
    /// A message saying what is wrong when the line is not a valid header.
    pub fn parse(line: &[u8]) -> Result<ReplyHeader, String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|_| "reply header is not UTF-8")?;
        // A header is passed through as it came: nothing in it may break a line or a terminal.
        if text.contains(char::is_control) {
            return Err(format!(
                "reply header contains a control character: {text:?}"
            ));
        }
        if let Some(rest) = text.strip_prefix("OK ") {
            let mut parts = rest.split(' ');
            let length = parts.next().unwrap_or("");
            if length.is_empty() || !length.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("bad length in reply header: {text:?}"));
            }
            let length: u64 = length
                .parse()
                .map_err(|_| format!("length out of range in reply header: {text:?}"))?;
            let mut fields = Vec::new();
            for part in parts {
                match part.split_once('=') {
                    Some((k, v)) if !k.is_empty() => fields.push((k.to_string(), v.to_string())),
                    _ => return Err(format!("bad field {part:?} in reply header")),
                }
            }
            return Ok(ReplyHeader::Ok { length, fields });
        }
        if let Some(rest) = text.strip_prefix("ERR ") {
            let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
            return Code::parse(code)
                .map(|c| ReplyHeader::Err(c.msg(message)))
                .ok_or_else(|| format!("unknown error code {code:?} in reply header"));
        }
        Err(format!("reply header is neither OK nor ERR: {text:?}"))
    }

    /// Body length that follows this header (0 for `ERR`).
    pub fn body_length(&self) -> u64 {
        match self {
            ReplyHeader::Ok { length, .. } => *length,
            ReplyHeader::Err(_) => 0,
        }
    }

    /// The value of field `key` in an `OK` header.
    pub fn field(&self, key: &str) -> Option<&str> {
        match self {
            ReplyHeader::Ok { fields, .. } => fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str()),
            ReplyHeader::Err(_) => None,
        }
    }

    /// The header as one line, with its `\n`.
    pub fn to_line(&self) -> String {
        match self {
            ReplyHeader::Ok { length, fields } => {
                let mut s = format!("OK {length}");
                for (k, v) in fields {
                    s.push(' ');
                    s.push_str(k);
                    s.push('=');
                    s.push_str(v);
                }
                s.push('\n');
                s
            }
            ReplyHeader::Err(e) => e.header_line(),
        }
    }
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line is in the buffer, without its `\n`.
    Complete,
    /// The peer closed the connection before sending anything.
    Eof,
    /// The peer closed the connection in the middle of a line.
    Truncated,
    /// The line is longer than the limit; the connection can no longer be trusted.
    TooLong,
}

/// Reads one `\n`-terminated line into `line` (cleared first, `\n` not included), reading at
/// most `limit + 1` bytes so a peer cannot make us buffer without bound.
///
/// # Errors
/// The underlying I/O error (a timeout shows as `WouldBlock` or `TimedOut`).
pub fn read_line<R: BufRead>(reader: &mut R, line: &mut Vec<u8>, limit: usize) -> io::Result<Line> {
    line.clear();
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(if line.is_empty() {
                Line::Eof
            } else {
                Line::Truncated
            });
        }
        let room = limit + 1 - line.len();
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], i + 1),
            None => (available, available.len()),
        };
        if chunk.len() > room - 1 {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(chunk);
        let found = done > chunk.len();
        reader.consume(done);
        if found {
            return Ok(Line::Complete);
        }
    }
}

/// Writes `a` then `b` with as few system calls as the kernel allows (one, usually), so a
/// header and the start of its body leave in one TCP segment.
///
/// # Errors
/// The underlying I/O error.
pub fn write_both<W: Write>(w: &mut W, a: &[u8], b: &[u8]) -> io::Result<()> {
    let mut bufs = [IoSlice::new(a), IoSlice::new(b)];
    let mut bufs = &mut bufs[..];
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How far a socket timeout may differ from the time left before a deadline without being
/// reset: a call that ends quickly, the usual case, then costs no extra system call, and a
/// deadline is kept to within this.
pub const DEADLINE_SLACK: Duration = Duration::from_millis(10);

/// One deadline shared by a run of blocking calls on a socket (the reads of a reply header,
/// the writes of a reply), however many calls the run takes: a peer that trickles a byte per
/// call cannot stretch it. Kept through the socket's own timeout, reset before a call only
/// when it is more than [`DEADLINE_SLACK`] off the time left.
#[derive(Debug, Clone)]
pub struct Deadline {
    /// The socket's timeout for each call outside a run (`None`: no limit).
    per_call: Option<Duration>,
    /// The timeout now set on the socket.
    set: Option<Duration>,
    /// When the current run must end; `None` between runs.
    at: Option<Instant>,
}

impl Deadline {
    /// For a socket whose timeout is set to `per_call` now.
    pub fn new(per_call: Option<Duration>) -> Deadline {
        Deadline {
            per_call,
            set: per_call,
            at: None,
        }
    }

    /// With no per-call timeout, for a socket whose timeout is not known: the first call
    /// sets it.
    pub(crate) fn unknown() -> Deadline {
        Deadline {
            per_call: None,
            set: Some(Duration::MAX),
            at: None,
        }
    }

    /// The timeout each call gets outside a run.
    pub fn per_call(&self) -> Option<Duration> {
        self.per_call
    }

    /// Starts a run of calls that must all be done within `limit` from now (`None`: each
    /// call gets the per-call timeout, as between runs).
    pub fn start(&mut self, limit: Option<Duration>) {
        self.at = limit.and_then(|d| Instant::now().checked_add(d));
    }

    /// Ends the run: calls get the per-call timeout again.
    pub fn end(&mut self) {
        self.at = None;
    }

    /// Before a call: sets the socket's timeout through `set_timeout` if the one set is more
    /// than [`DEADLINE_SLACK`] off what the call may take.
    ///
    /// # Errors
    /// `TimedOut` once the run's deadline has passed; the error of `set_timeout`.
    pub fn before_call(
        &mut self,
        set_timeout: impl FnOnce(Option<Duration>) -> io::Result<()>,
    ) -> io::Result<()> {
        let want = match self.at {
            None => self.per_call,
            Some(at) => match at.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Err(io::ErrorKind::TimedOut.into()),
            },
        };
        let close = match (want, self.set) {
            (Some(want), Some(set)) => want.abs_diff(set) <= DEADLINE_SLACK,
            (want, set) => want == set,
        };
        if !close {
            set_timeout(want)?;
            self.set = want;
        }
        Ok(())
    }
}

/// Whether `e` is a socket timeout firing: Linux reports an expired `SO_RCVTIMEO` or
/// `SO_SNDTIMEO` as `WouldBlock`, other systems as `TimedOut`.
pub(crate) fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    #[test]
    fn parses_file_and_query_requests() {
        assert_eq!(
            Request::parse(b"file colors.csv").unwrap(),
            Request::File("colors.csv".into())
        );
        assert_eq!(
            Request::parse(b"file  a b.txt \r").unwrap(),
            Request::File("a b.txt".into())
        );
        assert_eq!(
            Request::parse(b"SELECT * FROM COLORS LIMIT 3;\r").unwrap(),
            Request::Query("SELECT * FROM COLORS LIMIT 3;".into())
        );
        // Only the exact word `file` makes a file request, as in the original.
        assert_eq!(
            Request::parse(b"filename").unwrap(),
            Request::Query("filename".into())
        );
    }

    #[test]
    fn rejects_bad_requests() {
        for bad in [
            &b""[..],
            b"   ",
            b"\r",
            b"file",
            b"file   ",
            b"SELECT\0 1",
            b"SELECT\r1",
            b"SELECT 1\nDELETE FROM COLORS",
            b"file a\nb",
            b"SELECT 1\nSELECT 2",
            b"\xff\xfe",
        ] {
            let e = Request::parse(bad).unwrap_err();
            assert_eq!(e.code(), "bad_request", "{bad:?}");
        }
        let long = vec![b'a'; MAX_REQUEST_LINE + 1];
        assert_eq!(Request::parse(&long).unwrap_err().code(), "too_large");
        let max = vec![b'a'; MAX_REQUEST_LINE];
        assert!(Request::parse(&max).is_ok());
    }

    #[test]
    fn parses_reply_headers() {
        let h = ReplyHeader::parse(b"OK 12 server=2 rows=3").unwrap();
        assert_eq!(h.body_length(), 12);
        assert_eq!(h.field("server"), Some("2"));
        assert_eq!(h.field("nope"), None);
        assert_eq!(h.to_line(), "OK 12 server=2 rows=3\n");
        let e = ReplyHeader::parse(b"ERR not_found no such file: x").unwrap();
        assert_eq!(e, ReplyHeader::Err(Code::NotFound.msg("no such file: x")));
        assert_eq!(e.body_length(), 0);
        assert_eq!(ReplyHeader::parse(b"OK 0").unwrap().body_length(), 0);
    }

    #[test]
    fn rejects_bad_reply_headers() {
        for bad in [
            &b"OK"[..],
            b"OK ",
            b"OK -1",
            b"OK +1",
            b"OK 1x",
            b"OK 99999999999999999999999",
            b"OK 1 novalue",
            b"OK 1 =v",
            b"ERR nonsense message",
            b"HELLO",
            b"\xff",
            b"OK 1 a=b\nOK 2",
            b"OK 1 a=\tb",
            b"ERR sql line\rbreak",
            b"ERR sql nul\0",
        ] {
            assert!(ReplyHeader::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn read_line_splits_and_limits() {
        let mut r = BufReader::with_capacity(4, &b"ab\ncdefgh\nxyz"[..]);
        let mut line = Vec::new();
        assert_eq!(read_line(&mut r, &mut line, 10).unwrap(), Line::Complete);
        assert_eq!(line, b"ab");
        assert_eq!(read_line(&mut r, &mut line, 10).unwrap(), Line::Complete);
        assert_eq!(line, b"cdefgh");
        assert_eq!(read_line(&mut r, &mut line, 10).unwrap(), Line::Truncated);
        assert_eq!(read_line(&mut r, &mut line, 10).unwrap(), Line::Eof);

        let mut r = BufReader::with_capacity(3, &b"abcdef\n"[..]);
        assert_eq!(read_line(&mut r, &mut line, 6).unwrap(), Line::Complete);
        let mut r = BufReader::with_capacity(3, &b"abcdefg\n"[..]);
        assert_eq!(read_line(&mut r, &mut line, 6).unwrap(), Line::TooLong);
    }

    #[test]
    fn a_deadline_resets_the_socket_timeout_only_when_it_is_off() {
        let second = Duration::from_secs(1);
        let mut d = Deadline::new(Some(second));
        let mut sets = Vec::new();
        // A run that starts now has about the per-call timeout left: nothing to set.
        d.start(Some(second));
        d.before_call(|t| {
            sets.push(t);
            Ok(())
        })
        .unwrap();
        assert!(sets.is_empty());
        // Once time has passed, the time left is set; then the per-call timeout again.
        d.start(Some(Duration::from_millis(200)));
        d.before_call(|t| {
            sets.push(t);
            Ok(())
        })
        .unwrap();
        assert!(sets[0].unwrap() <= Duration::from_millis(200));
        d.end();
        d.before_call(|t| {
            sets.push(t);
            Ok(())
        })
        .unwrap();
        assert_eq!(sets[1], Some(second));
        // A deadline that has passed fails the call without touching the socket.
        d.start(Some(Duration::ZERO));
        let e = d.before_call(|_| panic!("no call")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(sets.len(), 2);
    }

    #[test]
    fn write_both_writes_everything() {
        let mut out = Vec::new();
        write_both(&mut out, b"OK 3\n", b"abc").unwrap();
        assert_eq!(out, b"OK 3\nabc");
    }

    /// A writer that fails with `errors` in turn, then takes at most `step` bytes a call.
    struct Flaky {
        errors: Vec<io::ErrorKind>,
        step: usize,
        out: Vec<u8>,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(kind) = self.errors.pop() {
                return Err(kind.into());
            }
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_both_retries_an_interrupted_write_and_resumes_short_ones() {
        let mut w = Flaky {
            errors: vec![io::ErrorKind::Interrupted],
            step: 2,
            out: Vec::new(),
        };
        write_both(&mut w, b"OK 3\n", b"abc").unwrap();
        assert_eq!(w.out, b"OK 3\nabc");
    }

    #[test]
    fn write_both_gives_up_on_a_closed_peer() {
        // Run apart with a deadline: a writer that retried every error would spin forever.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut w = Flaky {
                errors: vec![io::ErrorKind::BrokenPipe; 1000],
                step: 1,
                out: Vec::new(),
            };
            let _ = done_tx.send(write_both(&mut w, b"OK 1\n", b"x").map_err(|e| e.kind()));
        });
        let outcome = done_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("write_both returned");
        assert_eq!(outcome, Err(io::ErrorKind::BrokenPipe));
        let mut zero = Flaky {
            errors: Vec::new(),
            step: 0,
            out: Vec::new(),
        };
        assert_eq!(
            write_both(&mut zero, b"OK 1\n", b"x").unwrap_err().kind(),
            io::ErrorKind::WriteZero
        );
    }
}
