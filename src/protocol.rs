//! The wire protocol shared by client↔balancer and balancer↔server (see `docs/PROTOCOL.md`).
//!
//! A request is one UTF-8 line; a reply is `OK <length>[ key=value]...\n` and exactly
//! `<length>` bytes of body, or `ERR <code> <message>\n` with no body. Here: [`Request`] and
//! [`ReplyHeader`], reading a line within a size limit, [`Timed`], a socket whose calls share a
//! [`Deadline`], and [`RequestReader`], which reads requests from a peer that may be hostile.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::time::{Duration, Instant};

use crate::error::{Code, Error};
use crate::tls::{self, Stream, HANDSHAKE_RECORD};

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
    /// [`Code::TooLarge`] for a line over [`MAX_REQUEST_LINE`], else [`Code::BadRequest`].
    pub fn parse(line: &[u8]) -> Result<Request, Error> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_REQUEST_LINE {
            return Err(
                Code::TooLarge.msg(format!("request line is over {MAX_REQUEST_LINE} bytes"))
            );
        }
        let text = std::str::from_utf8(line)
            .map_err(|_| Code::BadRequest.msg("request is not valid UTF-8"))?;
        // A `\n` comes only from a line that did not come off the wire (the client's own
        // arguments, say): sent as it is, it would be two requests.
        for (c, why) in [
            ('\0', "request contains a NUL byte"),
            ('\n', "request contains a newline inside the line"),
            ('\r', "request contains a carriage return inside the line"),
        ] {
            if text.contains(c) {
                return Err(Code::BadRequest.msg(why));
            }
        }
        if text.trim().is_empty() {
            return Err(Code::BadRequest.msg("empty request: send `file <name>` or an SQL query"));
        }
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        match (word, rest.trim()) {
            ("file", "") => Err(Code::BadRequest.msg("missing file name: `file <name>`")),
            ("file", name) => Ok(Request::File(name.to_string())),
            _ => Ok(Request::Query(text.to_string())),
        }
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
        let fields = fields.iter().map(|(k, v)| (k.to_string(), v.clone()));
        ReplyHeader::Ok { length, fields: fields.collect() }
    }

    /// Parses a header line (without its `\n`; a trailing `\r` is dropped).
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn parse(line: &[u8]) -> Result<ReplyHeader, String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|_| "reply header is not UTF-8")?;
        // A header is passed through as it came: nothing in it may break a line or a terminal.
        if text.contains(char::is_control) {
            return Err(format!("reply header contains a control character: {text:?}"));
        }
        if let Some(rest) = text.strip_prefix("ERR ") {
            let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
            return Code::parse(code)
                .map(|c| ReplyHeader::Err(c.msg(message)))
                .ok_or_else(|| format!("unknown error code {code:?} in reply header"));
        }
        let Some(rest) = text.strip_prefix("OK ") else {
            return Err(format!("reply header is neither OK nor ERR: {text:?}"));
        };
        let mut parts = rest.split(' ');
        let length = parts.next().unwrap_or_default();
        // Digits only: `parse` would take a sign.
        if length.is_empty() || !length.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad length in reply header: {text:?}"));
        }
        let length =
            length.parse().map_err(|_| format!("length out of range in reply header: {text:?}"))?;
        let fields = parts.map(|part| match part.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("bad field {part:?} in reply header")),
        });
        Ok(ReplyHeader::Ok { length, fields: fields.collect::<Result<_, _>>()? })
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
        let ReplyHeader::Ok { fields, .. } = self else {
            return None;
        };
        Some(&fields.iter().find(|(k, _)| k == key)?.1)
    }

    /// The header as one line, with its `\n`.
    pub fn to_line(&self) -> String {
        match self {
            ReplyHeader::Ok { length, fields } => {
                let mut s = format!("OK {length}");
                for (k, v) in fields {
                    let _ = write!(s, " {k}={v}");
                }
                s + "\n"
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
/// most `limit + 1` bytes so a peer cannot make us buffer without bound. Errors are the
/// reader's (a timeout shows as `WouldBlock` or `TimedOut`).
pub fn read_line<R: BufRead>(reader: &mut R, line: &mut Vec<u8>, limit: usize) -> io::Result<Line> {
    line.clear();
    reader.take(limit as u64 + 1).read_until(b'\n', line)?;
    Ok(if line.pop_if(|b| *b == b'\n').is_some() {
        Line::Complete
    } else if line.len() > limit {
        Line::TooLong
    } else if line.is_empty() {
        Line::Eof
    } else {
        Line::Truncated
    })
}

/// Writes `a` then `b` with as few system calls as the kernel allows (one, usually), so a
/// header and the start of its body leave in one TCP segment.
pub fn write_both<W: Write>(w: &mut W, a: &[u8], b: &[u8]) -> io::Result<()> {
    let mut bufs = [IoSlice::new(a), IoSlice::new(b)];
    let mut bufs = &mut bufs[..];
    // Drops empty slices: writing nothing is then done at once, not a write of 0 bytes
    // that would look like a closed peer.
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
/// reset: a call that ends quickly, the usual case, then costs no extra system call.
const DEADLINE_SLACK: Duration = Duration::from_millis(10);

/// The deadline of a run of blocking calls on a socket, however many calls the run takes
/// (see [`Timed`]). Kept through the socket's own timeout, reset before a call only when it is
/// more than [`DEADLINE_SLACK`] off the time left.
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
        Deadline { per_call, set: per_call, at: None }
    }

    /// Starts a run of calls that must all be done within `limit` from now; `None` ends the
    /// run: each call gets the per-call timeout again.
    pub fn start(&mut self, limit: Option<Duration>) {
        self.at = limit.and_then(|d| Instant::now().checked_add(d));
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

/// A socket whose calls of one run share one [`Deadline`]: the reads of a request line, of a
/// reply header or of an admin request, the writes of a reply. A socket timeout alone does not
/// stop a slowloris: a peer sending a byte every few seconds never trips it, and holds its
/// thread forever.
pub struct Timed {
    /// The connection.
    pub stream: Stream,
    /// The current run's deadline.
    pub deadline: Deadline,
}

impl Timed {
    /// For `stream`, whose timeouts are set to `per_call` now.
    pub fn new(stream: Stream, per_call: Option<Duration>) -> Timed {
        Timed { stream, deadline: Deadline::new(per_call) }
    }

    /// Starts a run that must end within the per-call timeout from now; returns that limit.
    pub fn start(&mut self) -> Option<Duration> {
        let limit = self.deadline.per_call;
        self.deadline.start(limit);
        limit
    }
}

impl Read for Timed {
    /// In a run, fails with `TimedOut` only once the deadline has passed (the socket timeout,
    /// kept within [`DEADLINE_SLACK`] of the time left, may fire first); outside a run, a
    /// socket timeout that fires is returned.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let stream = &self.stream;
            self.deadline.before_call(|t| stream.set_read_timeout(t))?;
            match self.stream.read(buf) {
                // A signal, or the socket timeout within a run: the loop checks the deadline.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if tls::timed_out(&e) && self.deadline.at.is_some() => {}
                read => return read,
            }
        }
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.deadline.before_call(|t| self.stream.set_write_timeout(t))?;
        self.stream.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.deadline.before_call(|t| self.stream.set_write_timeout(t))?;
        self.stream.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The time limits on a connection's requests. `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest silence before the first byte of a request (between requests).
    pub idle: Option<Duration>,
    /// Longest time from a request's first byte to its `\n`.
    pub request: Option<Duration>,
}

impl Timeouts {
    /// Timeouts from command-line values, where 0 means no limit.
    pub fn new(idle: Duration, request: Duration) -> Timeouts {
        let limit = |d: Duration| (!d.is_zero()).then_some(d);
        Timeouts { idle: limit(idle), request: limit(request) }
    }
}

/// What waiting for the next request came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A whole request line is in the buffer (without its `\n`).
    Line,
    /// The peer closed the connection, between requests or in the middle of one.
    Closed,
    /// The peer broke a limit (line too long, too slow, idle too long): send this error, then
    /// close with [`RequestReader::close_with`]. The rest of the stream cannot be trusted.
    Refused(Error),
}

/// The reading half of a connection that receives requests (the balancer's client side, and
/// the server): one line at a time, at most [`MAX_REQUEST_LINE`] bytes (not counting a `\r\n`
/// or `\n` line end), the whole line within the request timeout, and the connection closed
/// after the idle timeout between requests.
pub struct RequestReader {
    reader: BufReader<Timed>,
    timeouts: Timeouts,
}

impl RequestReader {
    /// Reads requests from `stream` (replies go out through a clone of it).
    pub fn new(stream: Stream, timeouts: Timeouts, capacity: usize) -> RequestReader {
        // The socket's timeout is not known (a TLS handshake leaves one): `set` is one it
        // cannot have, so the first read sets it.
        let deadline = Deadline { set: Some(Duration::MAX), ..Deadline::new(None) };
        let stream = Timed { stream, deadline };
        RequestReader { reader: BufReader::with_capacity(capacity, stream), timeouts }
    }

    /// Reads the next request line into `line` (without its `\n`). An error is the socket's:
    /// the connection is then gone.
    pub fn next(&mut self, line: &mut Vec<u8>) -> io::Result<Incoming> {
        // Waiting for a request's first byte runs on the idle clock. Bytes already buffered
        // (sent right behind the last request) are returned at once.
        self.reader.get_mut().deadline.start(self.timeouts.idle);
        match self.reader.fill_buf() {
            // A TLS client on a plain port sends a ClientHello, not a line: say so at once,
            // rather than wait for a `\n` that may never come.
            Ok([HANDSHAKE_RECORD, 3, ..]) => {
                return Ok(Incoming::Refused(Code::BadRequest.msg(
                    "this looks like a TLS handshake, but this port speaks plain text (use the TLS port)",
                )))
            }
            Ok(_) => {}
            Err(e) => {
                let idle = self.timeouts.idle.unwrap_or_default().as_secs_f64();
                return failed(e, format!("no request for {idle} s (--idle-timeout)"));
            }
        }
        // From its first byte on, the whole line must arrive within the request timeout.
        self.reader.get_mut().deadline.start(self.timeouts.request);
        // One byte more than the limit, for the `\r` of a `\r\n` line end, which does not count.
        let e = match read_line(&mut self.reader, line, MAX_REQUEST_LINE + 1) {
            Ok(Line::Complete)
                if line.strip_suffix(b"\r").unwrap_or(line).len() <= MAX_REQUEST_LINE =>
            {
                return Ok(Incoming::Line)
            }
            Ok(Line::Complete | Line::TooLong) => {
                return Ok(Incoming::Refused(Code::TooLarge.msg(format!(
                    "request line is over {MAX_REQUEST_LINE} bytes; closing the connection"
                ))))
            }
            Ok(Line::Eof | Line::Truncated) => return Ok(Incoming::Closed),
            Err(e) => e,
        };
        let request = self.timeouts.request.unwrap_or_default().as_secs_f64();
        failed(e, format!("the request line did not arrive within {request} s (--request-timeout)"))
    }

    /// Sends `error` as the connection's last reply through `writer`, then closes it gently
    /// (see [`tls::linger`]).
    pub fn close_with(mut self, writer: &mut impl Write, error: &Error) -> io::Result<()> {
        writer.write_all(error.header_line().as_bytes())?;
        let stream = &mut self.reader.get_mut().stream;
        stream.close_notify();
        tls::linger(stream.tcp());
        Ok(())
    }
}

/// What a failed read of a request comes to: a close, a refusal saying `timeout` once the
/// deadline has passed, or else the socket's error.
fn failed(e: io::Error, timeout: String) -> io::Result<Incoming> {
    match e.kind() {
        // A TLS peer that closes without a close_notify, as most do: just a close.
        io::ErrorKind::UnexpectedEof => Ok(Incoming::Closed),
        io::ErrorKind::TimedOut => {
            Ok(Incoming::Refused(Code::Timeout.msg(format!("{timeout}; closing the connection"))))
        }
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    #[test]
    fn parses_file_and_query_requests() {
        assert_eq!(Request::parse(b"file colors.csv").unwrap(), Request::File("colors.csv".into()));
        assert_eq!(Request::parse(b"file  a b.txt \r").unwrap(), Request::File("a b.txt".into()));
        assert_eq!(
            Request::parse(b"SELECT * FROM COLORS LIMIT 3;\r").unwrap(),
            Request::Query("SELECT * FROM COLORS LIMIT 3;".into())
        );
        // Only the exact word `file` makes a file request, as in the original.
        assert_eq!(Request::parse(b"filename").unwrap(), Request::Query("filename".into()));
        // The line a request is logged and forwarded as.
        for line in ["file colors.csv", "SELECT 1 AS n"] {
            assert_eq!(Request::parse(line.as_bytes()).unwrap().line(), line);
        }
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
        // A peer that stops at exactly the limit, with no `\n`, sent a cut line, not a long one.
        let mut r = BufReader::with_capacity(3, &b"abcdef"[..]);
        assert_eq!(read_line(&mut r, &mut line, 6).unwrap(), Line::Truncated);
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
        d.start(None);
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

        // A socket with no per-call limit (a timeout of 0 means none) still gets the run's
        // deadline, and no limit again after the run; none is set twice.
        let mut d = Deadline::new(None);
        let mut sets = Vec::new();
        let mut call = |d: &mut Deadline| {
            d.before_call(|t| {
                sets.push(t);
                Ok(())
            })
            .unwrap()
        };
        d.start(Some(Duration::from_millis(200)));
        call(&mut d);
        d.start(None);
        call(&mut d);
        call(&mut d);
        assert_eq!(sets.len(), 2, "{sets:?}");
        assert!(sets[0].is_some_and(|t| t <= Duration::from_millis(200)));
        assert_eq!(sets[1], None);
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
        let mut w = Flaky { errors: vec![io::ErrorKind::Interrupted], step: 2, out: Vec::new() };
        write_both(&mut w, b"OK 3\n", b"abc").unwrap();
        assert_eq!(w.out, b"OK 3\nabc");
    }

    #[test]
    fn write_both_gives_up_on_a_closed_peer() {
        // Run apart with a deadline: a writer that retried every error would spin forever.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut w =
                Flaky { errors: vec![io::ErrorKind::BrokenPipe; 1000], step: 1, out: Vec::new() };
            let _ = done_tx.send(write_both(&mut w, b"OK 1\n", b"x").map_err(|e| e.kind()));
        });
        let outcome =
            done_rx.recv_timeout(std::time::Duration::from_secs(5)).expect("write_both returned");
        assert_eq!(outcome, Err(io::ErrorKind::BrokenPipe));
        let mut zero = Flaky { errors: Vec::new(), step: 0, out: Vec::new() };
        assert_eq!(
            write_both(&mut zero, b"OK 1\n", b"x").unwrap_err().kind(),
            io::ErrorKind::WriteZero
        );
    }
}

#[cfg(test)]
mod request_reader_tests {
    use super::*;
    use crate::tls::LINGER;
    use std::net::{Shutdown, TcpListener, TcpStream};
    /// A connected pair: (the peer's end, our reader, our writer).
    fn pair(timeouts: Timeouts) -> (TcpStream, RequestReader, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        let reader = RequestReader::new(Stream::Plain(ours.try_clone().unwrap()), timeouts, 64);
        (peer, reader, ours)
    }

    const SHORT: Duration = Duration::from_millis(300);

    /// The next read, which must be a refusal.
    fn refused(reader: &mut RequestReader, line: &mut Vec<u8>) -> Error {
        match reader.next(line).unwrap() {
            Incoming::Refused(e) => e,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Runs a test on its own thread and fails it after 20 s: a regression that leaves a read
    /// with no deadline (one that would wait for ever) fails the suite instead of hanging it.
    fn bounded(test: impl FnOnce() + Send + 'static) {
        let (done, finished) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            test();
            _ = done.send(());
        });
        match finished.recv_timeout(Duration::from_secs(20)) {
            Ok(()) => thread.join().unwrap(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(thread.join().unwrap_err())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("still running after 20 s: a read waits with no deadline")
            }
        }
    }

    #[test]
    fn zero_means_no_limit() {
        let t = Timeouts::new(Duration::ZERO, Duration::from_secs(2));
        assert_eq!(t.idle, None);
        assert_eq!(t.request, Some(Duration::from_secs(2)));
    }

    #[test]
    fn reads_pipelined_lines_then_sees_the_close() {
        bounded(|| {
            let (mut peer, mut reader, _ours) = pair(Timeouts::new(SHORT, SHORT));
            peer.write_all(b"one\ntwo\nthr").unwrap();
            peer.shutdown(Shutdown::Write).unwrap();
            let mut line = Vec::new();
            assert_eq!(reader.next(&mut line).unwrap(), Incoming::Line);
            assert_eq!(line, b"one");
            assert_eq!(reader.next(&mut line).unwrap(), Incoming::Line);
            assert_eq!(line, b"two");
            assert_eq!(reader.next(&mut line).unwrap(), Incoming::Closed);
        });
    }

    #[test]
    fn a_request_costs_no_setsockopt_while_the_timeout_set_is_close_enough() {
        bounded(|| {
            let (mut peer, mut reader, ours) = pair(Timeouts::new(Duration::from_secs(60), SHORT));
            let mut line = Vec::new();
            peer.write_all(b"one\n").unwrap();
            assert_eq!(reader.next(&mut line).unwrap(), Incoming::Line);
            // Changed behind the reader's back: it is not set again while the idle timeout it
            // set last is still within the slack of the time left.
            let marker = Some(Duration::from_secs(7));
            ours.set_read_timeout(marker).unwrap();
            peer.write_all(b"two\n").unwrap();
            assert_eq!(reader.next(&mut line).unwrap(), Incoming::Line);
            assert_eq!(ours.read_timeout().unwrap(), marker);
        });
    }

    #[test]
    fn an_idle_peer_is_timed_out() {
        bounded(|| {
            // A request timeout long enough to tell apart, short enough that taking the wrong
            // clock fails the test in seconds.
            let (_peer, mut reader, _ours) = pair(Timeouts::new(SHORT, Duration::from_secs(5)));
            let started = Instant::now();
            let e = refused(&mut reader, &mut Vec::new());
            assert_eq!(e.code(), "timeout");
            assert!(e.message().starts_with("no request for 0.3 s"), "{e}");
            assert!(started.elapsed() >= SHORT);
        });
    }

    #[test]
    fn a_trickling_peer_is_cut_off_at_the_line_deadline() {
        bounded(|| {
            // Each byte arrives well within any per-read timeout; only the line deadline stops it.
            let (mut peer, mut reader, _ours) = pair(Timeouts::new(Duration::from_secs(60), SHORT));
            let trickle = std::thread::spawn(move || {
                for _ in 0..100 {
                    if peer.write_all(b"x").is_err() {
                        return;
                    }
                    // Deliberately slow: this simulates the slowloris client.
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            let started = Instant::now();
            let e = refused(&mut reader, &mut Vec::new());
            assert_eq!(e.code(), "timeout");
            assert!(e.message().contains("did not arrive within 0.3 s"), "{e}");
            // 100 bytes at 20 ms each would take 2 s: the deadline cut it well before.
            assert!(started.elapsed() < Duration::from_millis(1500));
            drop(reader);
            trickle.join().unwrap();
        });
    }

    #[test]
    fn a_long_line_is_refused() {
        bounded(|| {
            let (mut peer, mut reader, mut ours) = pair(Timeouts::new(SHORT, SHORT));
            let writer = std::thread::spawn(move || {
                let _ = peer.write_all(&vec![b'a'; MAX_REQUEST_LINE + 10]);
                let _ = peer.write_all(b"\n");
                let mut reply = String::new();
                let _ = peer.read_to_string(&mut reply);
                reply
            });
            let e = refused(&mut reader, &mut Vec::new());
            assert_eq!(e.code(), "too_large");
            reader.close_with(&mut ours, &e).unwrap();
            drop(ours);
            assert_eq!(
                writer.join().unwrap(),
                "ERR too_large request line is over 65536 bytes; closing the connection\n"
            );
        });
    }

    #[test]
    fn the_refusal_survives_bytes_the_peer_is_still_sending() {
        bounded(|| {
            // The peer keeps sending after its line was refused. Closing with those bytes unread
            // would be a reset, which can destroy the `ERR` line before the peer reads it (on a
            // real network): the close must drain them and end with a clean FIN.
            let (mut peer, mut reader, mut ours) = pair(Timeouts::new(SHORT, SHORT));
            // Says when every byte is sent, so they sit unread when the refusal goes out.
            let (sent_tx, sent_rx) = std::sync::mpsc::channel();
            // Says when our end is closed, so a reset would have arrived.
            let (closed_tx, closed_rx) = std::sync::mpsc::channel();
            let sender = std::thread::spawn(move || {
                let _ = peer.write_all(&vec![b'a'; MAX_REQUEST_LINE + 10]);
                let _ = peer.write_all(&vec![b'b'; 64 * 1024]);
                sent_tx.send(()).unwrap();
                let mut reply = Vec::new();
                peer.read_to_end(&mut reply)?;
                closed_rx.recv_timeout(Duration::from_secs(5)).unwrap();
                // A reset after the FIN leaves the reply readable, but the connection is then
                // dead for writing too: after a clean close our write is still accepted.
                peer.write_all(b"x")?;
                Ok::<_, io::Error>(reply)
            });
            let e = refused(&mut reader, &mut Vec::new());
            sent_rx.recv_timeout(Duration::from_secs(5)).unwrap();
            reader.close_with(&mut ours, &e).unwrap();
            drop(ours);
            closed_tx.send(()).unwrap();
            let reply = sender.join().unwrap().expect("a clean close, not a reset");
            assert_eq!(reply, e.header_line().as_bytes());
        });
    }

    #[test]
    fn a_peer_that_keeps_sending_cannot_stretch_the_close() {
        bounded(|| {
            let (mut peer, mut reader, mut ours) = pair(Timeouts::new(SHORT, SHORT));
            let flood = std::thread::spawn(move || {
                let chunk = vec![b'a'; 64 * 1024];
                // Bounded: for 2 s at most, or until the connection is closed on us.
                let until = Instant::now() + 2 * LINGER;
                while Instant::now() < until && peer.write_all(&chunk).is_ok() {}
            });
            let e = refused(&mut reader, &mut Vec::new());
            let started = Instant::now();
            reader.close_with(&mut ours, &e).unwrap();
            drop(ours);
            // It drains at most LINGER_BYTES, then lets go well before LINGER has passed.
            assert!(started.elapsed() < LINGER / 2, "{:?}", started.elapsed());
            flood.join().unwrap();
        });
    }

    #[test]
    fn the_cr_of_a_crlf_line_end_does_not_count() {
        bounded(|| {
            let (mut peer, mut reader, _ours) = pair(Timeouts::new(SHORT, SHORT));
            let longest = vec![b'a'; MAX_REQUEST_LINE];
            let writer = std::thread::spawn(move || {
                for end in [&b"\r\n"[..], b"\n", b"a\r\n"] {
                    peer.write_all(&longest).unwrap();
                    peer.write_all(end).unwrap();
                }
                peer
            });
            let mut line = Vec::new();
            assert_eq!(reader.next(&mut line).unwrap(), Incoming::Line);
            assert_eq!(line.len(), MAX_REQUEST_LINE + 1);
            assert_eq!(reader.next(&mut line).unwrap(), Incoming::Line);
            assert_eq!(line.len(), MAX_REQUEST_LINE);
            assert_eq!(refused(&mut reader, &mut line).code(), "too_large");
            drop(writer.join().unwrap());
            // One byte over with a bare `\n` is too long as well.
            let (mut peer, mut reader, _ours) = pair(Timeouts::new(SHORT, SHORT));
            peer.write_all(&[&vec![b'a'; MAX_REQUEST_LINE + 1][..], b"\n"].concat()).unwrap();
            assert_eq!(refused(&mut reader, &mut line).code(), "too_large");
        });
    }

    #[test]
    fn a_peer_that_resets_is_gone_at_once_not_at_its_timeout() {
        bounded(|| {
            let (peer, mut reader, _ours) = pair(Timeouts::new(Duration::from_secs(30), SHORT));
            // Closing with a zero linger sends a reset instead of a FIN.
            rustix::net::sockopt::set_socket_linger(&peer, Some(Duration::ZERO)).unwrap();
            drop(peer);
            let started = Instant::now();
            let outcome = reader.next(&mut Vec::new());
            assert!(
                outcome.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset),
                "{outcome:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(10));
        });
    }
}
