//! Reading requests from a peer that may be hostile, for the balancer's client side and the
//! server: one line at a time, at most [`MAX_REQUEST_LINE`] bytes (not counting a `\r\n` or
//! `\n` line end), the whole line within the
//! request timeout, and the connection closed after the idle timeout between requests.
//!
//! A socket read timeout alone does not stop a slowloris: a client sending one byte every few
//! seconds never trips it, and holds its thread forever. So the line gets a deadline when its
//! first byte arrives, and before each read the socket's timeout is set to the time left
//! (when it is more than [`protocol::DEADLINE_SLACK`] off: usually it is not, and a request
//! costs no `setsockopt`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::error::{Code, Error};
use crate::protocol::{self, Deadline, Line, MAX_REQUEST_LINE};
use crate::tls::{Stream, HANDSHAKE_RECORD};

/// How long a connection being closed after an error keeps reading (and discarding) what its
/// peer still sends, so the close does not reset the connection before the peer reads the reply.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read and discarded while lingering.
const LINGER_BYTES: usize = 256 * 1024;

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
        Timeouts {
            idle: limit(idle),
            request: limit(request),
        }
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

/// Which clock the next read runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// Waiting for a request's first byte.
    Idle,
    /// In the middle of a request line.
    Line,
}

/// The peer's socket, read against a deadline.
struct DeadlineStream {
    stream: Stream,
    timeouts: Timeouts,
    clock: Clock,
    /// The running clock's deadline, kept through the socket's read timeout.
    deadline: Deadline,
    /// Which clock ran out, once a read failed because of it.
    expired: Option<Clock>,
}

impl DeadlineStream {
    fn start(&mut self, clock: Clock) {
        let limit = match clock {
            Clock::Idle => self.timeouts.idle,
            Clock::Line => self.timeouts.request,
        };
        self.clock = clock;
        self.deadline.start(limit);
        self.expired = None;
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let stream = &self.stream;
            if let Err(e) = self.deadline.before_call(|t| stream.set_read_timeout(t)) {
                if e.kind() == io::ErrorKind::TimedOut {
                    self.expired = Some(self.clock);
                }
                return Err(e);
            }
            match self.stream.read(buf) {
                Ok(n) => {
                    if n > 0 && self.clock == Clock::Idle {
                        // The first bytes of a request: from now on the whole line must
                        // arrive within the request timeout.
                        self.start(Clock::Line);
                    }
                    return Ok(n);
                }
                // The socket timeout fired (or a signal): the loop checks the deadline again.
                Err(e)
                    if crate::protocol::timed_out(&e) || e.kind() == io::ErrorKind::Interrupted => {
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The reading half of a connection that receives requests.
pub struct RequestReader {
    reader: BufReader<DeadlineStream>,
    timeouts: Timeouts,
}

impl RequestReader {
    /// Reads requests from `stream` (the reading half; replies go out through a clone), with
    /// a buffer of `capacity` bytes.
    pub fn new(stream: Stream, timeouts: Timeouts, capacity: usize) -> RequestReader {
        let stream = DeadlineStream {
            stream,
            timeouts,
            clock: Clock::Idle,
            // The socket's timeout is not known (a TLS handshake leaves one): the first read
            // sets it.
            deadline: Deadline::unknown(),
            expired: None,
        };
        RequestReader {
            reader: BufReader::with_capacity(capacity, stream),
            timeouts,
        }
    }

    /// Reads the next request line into `line` (without its `\n`).
    ///
    /// # Errors
    /// An I/O error from the socket (the connection is then gone).
    pub fn next(&mut self, line: &mut Vec<u8>) -> io::Result<Incoming> {
        // Bytes already buffered are the start of the next request (sent right behind the
        // last one), so its line clock starts now; otherwise the connection is idle.
        let started = !self.reader.buffer().is_empty();
        self.reader
            .get_mut()
            .start(if started { Clock::Line } else { Clock::Idle });
        let too_long = || {
            Ok(Incoming::Refused(Code::TooLarge.msg(format!(
                "request line is over {MAX_REQUEST_LINE} bytes; closing the connection"
            ))))
        };
        // A TLS client on a plain port sends a ClientHello, not a line: say so at once, rather
        // than wait for a `\n` that may never come.
        let read = match self.reader.fill_buf() {
            Ok([HANDSHAKE_RECORD, 3, ..]) => {
                return Ok(Incoming::Refused(Code::BadRequest.msg(
                    "this looks like a TLS handshake, but this port speaks plain text (use the TLS port)",
                )))
            }
            Ok(_) => protocol::read_line(&mut self.reader, line, MAX_REQUEST_LINE + 1),
            Err(e) => Err(e),
        };
        // One byte more than the limit, for the `\r` of a `\r\n` line end, which does not count.
        let e = match read {
            Ok(Line::Complete)
                if line.strip_suffix(b"\r").unwrap_or(line).len() > MAX_REQUEST_LINE =>
            {
                return too_long()
            }
            Ok(Line::Complete) => return Ok(Incoming::Line),
            Ok(Line::Eof | Line::Truncated) => return Ok(Incoming::Closed),
            // A TLS peer that closes without a close_notify, as most do: just a close.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Incoming::Closed),
            Ok(Line::TooLong) => return too_long(),
            Err(e) => e,
        };
        let secs = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64());
        match self.reader.get_ref().expired {
            Some(Clock::Idle) => Ok(Incoming::Refused(Code::Timeout.msg(format!(
                "no request for {} s (--idle-timeout); closing the connection",
                secs(self.timeouts.idle)
            )))),
            Some(Clock::Line) => Ok(Incoming::Refused(Code::Timeout.msg(format!(
                "the request line did not arrive within {} s (--request-timeout); closing the connection",
                secs(self.timeouts.request)
            )))),
            None => Err(e),
        }
    }

    /// Sends `error` as the connection's last reply through `writer` and closes it gently:
    /// stop sending, then read and discard what the peer still sends for a moment, so that
    /// unread bytes do not make the close a reset that could destroy the reply unread.
    ///
    /// # Errors
    /// The error from writing the reply.
    pub fn close_with(mut self, writer: &mut impl Write, error: &Error) -> io::Result<()> {
        writer.write_all(error.header_line().as_bytes())?;
        let stream = &mut self.reader.get_mut().stream;
        stream.close_notify();
        linger(stream.tcp());
        Ok(())
    }
}

/// Closes a connection gently after its last reply: stop sending, then read and discard what
/// the peer still sends, for at most [`LINGER`] and [`LINGER_BYTES`], so that unread bytes do
/// not make the close a reset that could destroy the reply before the peer reads it.
pub(crate) fn linger(mut stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut scratch = [0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A connected pair: (the peer's end, our reader, our writer).
    fn pair(timeouts: Timeouts) -> (TcpStream, RequestReader, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        let reader = RequestReader::new(Stream::Plain(ours.try_clone().unwrap()), timeouts, 64);
        (peer, reader, ours)
    }

    const SHORT: Duration = Duration::from_millis(300);

    #[test]
    fn zero_means_no_limit() {
        let t = Timeouts::new(Duration::ZERO, Duration::from_secs(2));
        assert_eq!(t.idle, None);
        assert_eq!(t.request, Some(Duration::from_secs(2)));
    }

    #[test]
    fn reads_pipelined_lines_then_sees_the_close() {
        let (mut peer, mut reader, _ours) = pair(Timeouts::new(SHORT, SHORT));
        peer.write_all(b"one\ntwo\nthr").unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        let mut line = Vec::new();
        assert_eq!(reader.next(&mut line).unwrap(), Incoming::Line);
        assert_eq!(line, b"one");
        assert_eq!(reader.next(&mut line).unwrap(), Incoming::Line);
        assert_eq!(line, b"two");
        assert_eq!(reader.next(&mut line).unwrap(), Incoming::Closed);
    }

    #[test]
    fn a_request_costs_no_setsockopt_while_the_timeout_set_is_close_enough() {
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
    }

    #[test]
    fn an_idle_peer_is_timed_out() {
        let (_peer, mut reader, _ours) = pair(Timeouts::new(SHORT, Duration::from_secs(60)));
        let started = Instant::now();
        match reader.next(&mut Vec::new()).unwrap() {
            Incoming::Refused(e) => {
                assert_eq!(e.code(), "timeout");
                assert!(e.message().starts_with("no request for 0.3 s"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() >= SHORT);
    }

    #[test]
    fn a_trickling_peer_is_cut_off_at_the_line_deadline() {
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
        match reader.next(&mut Vec::new()).unwrap() {
            Incoming::Refused(e) => {
                assert_eq!(e.code(), "timeout");
                assert!(e.message().contains("did not arrive within 0.3 s"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // 100 bytes at 20 ms each would take 2 s: the deadline cut it well before.
        assert!(started.elapsed() < Duration::from_millis(1500));
        drop(reader);
        trickle.join().unwrap();
    }

    #[test]
    fn a_long_line_is_refused() {
        let (mut peer, mut reader, mut ours) = pair(Timeouts::new(SHORT, SHORT));
        let writer = std::thread::spawn(move || {
            let _ = peer.write_all(&vec![b'a'; MAX_REQUEST_LINE + 10]);
            let _ = peer.write_all(b"\n");
            let mut reply = String::new();
            let _ = peer.read_to_string(&mut reply);
            reply
        });
        let e = match reader.next(&mut Vec::new()).unwrap() {
            Incoming::Refused(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(e.code(), "too_large");
        reader.close_with(&mut ours, &e).unwrap();
        drop(ours);
        assert_eq!(
            writer.join().unwrap(),
            "ERR too_large request line is over 65536 bytes; closing the connection\n"
        );
    }

    #[test]
    fn the_refusal_survives_bytes_the_peer_is_still_sending() {
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
        let e = match reader.next(&mut Vec::new()).unwrap() {
            Incoming::Refused(e) => e,
            other => panic!("{other:?}"),
        };
        sent_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        reader.close_with(&mut ours, &e).unwrap();
        drop(ours);
        closed_tx.send(()).unwrap();
        let reply = sender.join().unwrap().expect("a clean close, not a reset");
        assert_eq!(reply, e.header_line().as_bytes());
    }

    #[test]
    fn a_peer_that_keeps_sending_cannot_stretch_the_close() {
        let (mut peer, mut reader, mut ours) = pair(Timeouts::new(SHORT, SHORT));
        let flood = std::thread::spawn(move || {
            let chunk = vec![b'a'; 64 * 1024];
            // Bounded: for 2 s at most, or until the connection is closed on us.
            let until = Instant::now() + 2 * LINGER;
            while Instant::now() < until && peer.write_all(&chunk).is_ok() {}
        });
        let e = match reader.next(&mut Vec::new()).unwrap() {
            Incoming::Refused(e) => e,
            other => panic!("{other:?}"),
        };
        let started = Instant::now();
        reader.close_with(&mut ours, &e).unwrap();
        drop(ours);
        // It drains at most LINGER_BYTES, then lets go well before LINGER has passed.
        assert!(started.elapsed() < LINGER / 2, "{:?}", started.elapsed());
        flood.join().unwrap();
    }

    #[test]
    fn the_cr_of_a_crlf_line_end_does_not_count() {
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
        match reader.next(&mut line).unwrap() {
            Incoming::Refused(e) => assert_eq!(e.code(), "too_large"),
            other => panic!("{other:?}"),
        }
        drop(writer.join().unwrap());
    }
}
