//! A backend: a server as the balancer knows it. [`Backend`] is its one home: fixed settings
//! (from the servers file) and the live state that the idle queue, the policies and the status
//! page all read. [`BackendConn`] is the persistent connection the balancer keeps to it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::net::RecvFlags;

use crate::error::Error;
use crate::protocol::{self, Line, ReplyHeader, Timed, MAX_HEADER_LINE};
use crate::servers_file::{self, ServerEntry};
use crate::tls::{Connector, Stream};

/// Bytes read from a server at a time while relaying a reply; one buffer per server connection
/// (one per worker), not per client, so ten thousand idle clients cost no relay memory.
pub const RELAY_BUFFER: usize = 256 * 1024;
/// Largest reply read whole from the server before its header is passed on (see
/// [`BackendConn::relay`]).
const WHOLE_REPLY: u64 = 64 * 1024;

/// A server: fixed settings, then live state (atomics, bumped by request threads without a
/// lock). Up or down, and how many of its workers are busy, is the idle queue's to say.
#[derive(Debug, Default)]
pub struct Backend {
    pub id: u32,
    /// `host:port` to connect to.
    pub addr: String,
    /// Declared time per request.
    pub processing_time: Duration,
    /// Whether its database accepts writes (a query that may have run is then not retried).
    pub writable: bool,
    /// Requests it processes at once: the balancer keeps a connection to each worker.
    pub workers: usize,
    /// Whether it speaks TLS (its certificate is verified with `--backend-ca`).
    pub tls: bool,
    /// Its connections handed out (to requests, or to a re-probe), counted by the idle queue.
    pub in_flight: AtomicUsize,
    /// Replies relayed from it (`OK` and `ERR`).
    pub requests: AtomicU64,
    /// Its failures: broken connections and replies, and `ERR` replies that are not the
    /// request's fault (see [`crate::error::Code::is_client_error`]).
    pub errors: AtomicU64,
    /// `ERR` replies from it caused by the request (a bad query, a missing file, ...).
    pub client_errors: AtomicU64,
    /// Body bytes relayed from it.
    pub bytes: AtomicU64,
    /// Times it sent bytes that no request asked for (its connection was closed each time).
    pub stray: AtomicU64,
    /// When the idle queue last handed it out, as a sequence number (0 = never), for round
    /// robin; written under the queue's lock.
    pub last_chosen: AtomicU64,
    /// The request it handles (or last handled; 0 while re-probed), and when it took it in µs
    /// since the balancer started: the timeline's bar in progress.
    pub current_request: AtomicU64,
    pub current_taken_micros: AtomicU64,
    /// Moving averages of service time (request sent to reply header) and of whole-request
    /// latency, in µs (0 = none yet).
    service_micros: AtomicU64,
    latency_micros: AtomicU64,
    /// Guards the sockets of its open connections (each held by its [`BackendConn`]; gone
    /// when that closes), for a failed health check to shut down.
    sockets: Mutex<Vec<Weak<TcpStream>>>,
}

impl Backend {
    /// The server recorded by a servers-file entry.
    pub fn from_entry(entry: &ServerEntry) -> Backend {
        Backend {
            id: entry.id,
            addr: entry.address(),
            processing_time: Duration::try_from_secs_f64(entry.processing_time).unwrap_or_default(),
            writable: entry.writable,
            workers: entry.workers,
            tls: entry.tls,
            ..Backend::default()
        }
    }

    /// Whether `other` has the same fixed settings.
    pub fn same_settings(&self, other: &Backend) -> bool {
        let settings = |b: &Backend| (b.id, b.processing_time, b.writable, b.workers, b.tls);
        settings(self) == settings(other) && self.addr == other.addr
    }

    /// The measured service time, once there is one.
    pub fn measured(&self) -> Option<Duration> {
        micros(&self.service_micros)
    }

    /// The measured service time, or the declared one until a measurement exists.
    pub fn expected_time(&self) -> Duration {
        self.measured().unwrap_or(self.processing_time)
    }

    /// The moving average of whole-request latency, once there is one.
    pub fn latency(&self) -> Option<Duration> {
        micros(&self.latency_micros)
    }

    /// Whether the measured service time is off the declared one by more than half (and by
    /// more than 5 ms, so that tiny times do not flag on noise).
    pub fn declaration_off(&self) -> bool {
        let declared = self.processing_time;
        let diff = self.measured().map(|measured| measured.abs_diff(declared));
        diff.is_some_and(|diff| diff > declared / 2 && diff > Duration::from_millis(5))
    }

    /// Counts a reply relayed from it: `error` is its `ERR` code, if any.
    pub fn record_reply(
        &self,
        service: Duration,
        latency: Duration,
        bytes: u64,
        error: Option<&Error>,
    ) {
        self.requests.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        match error {
            Some(e) if e.kind().is_client_error() => self.client_errors.fetch_add(1, Relaxed),
            Some(_) => self.errors.fetch_add(1, Relaxed),
            None => 0,
        };
        fold(&self.service_micros, service);
        fold(&self.latency_micros, latency);
    }

    /// Shuts down every open connection to it (the server is down): each request waiting on
    /// a reply sees its connection broken at once, and an idle one is found closed. Returns
    /// how many there were.
    pub(crate) fn break_connections(&self) -> usize {
        let sockets = std::mem::take(&mut *self.sockets.lock());
        let open: Vec<Arc<TcpStream>> = sockets.iter().filter_map(Weak::upgrade).collect();
        for socket in &open {
            let _ = socket.shutdown(Shutdown::Both);
        }
        open.len()
    }
}

/// Folds `sample` into a moving average kept in `avg` (weight 1/5). An update that races
/// another (two workers of one server replying at once) loses a sample: an average can.
fn fold(avg: &AtomicU64, sample: Duration) {
    let sample = (sample.as_micros() as u64).max(1);
    let new = match avg.load(Relaxed) {
        0 => sample,
        old => (old * 4 + sample) / 5,
    };
    avg.store(new, Relaxed);
}

/// A moving average in µs as a duration; 0 means none yet.
fn micros(avg: &AtomicU64) -> Option<Duration> {
    let us = avg.load(Relaxed);
    (us != 0).then(|| Duration::from_micros(us))
}

/// An open, idle-or-leased connection to a backend: no bytes of an old reply are ever left on
/// it when it goes back to the idle queue (see [`BackendConn::unusable`]).
pub struct BackendConn {
    /// Reads replies, through one [`RELAY_BUFFER`]; each read waits at most the reply timeout.
    pub reader: BufReader<Timed>,
    pub writer: Stream,
    /// The socket again, registered with its server for [`Backend::break_connections`].
    _socket: Arc<TcpStream>,
}

impl BackendConn {
    /// Connects to `backend`, over TLS with `tls`, and registers the socket with it for its
    /// life. Reads fail after `reply_timeout` of silence, so a hung server is noticed.
    ///
    /// # Errors
    /// The connection error, or `NotFound` when the address does not resolve; `InvalidData`
    /// when the TLS handshake failed (its certificate did not verify, say).
    pub fn connect(
        backend: &Backend,
        connect_timeout: Duration,
        reply_timeout: Duration,
        tls: Option<&Connector>,
    ) -> io::Result<BackendConn> {
        let stream = servers_file::connect(&backend.addr, connect_timeout)?;
        stream.set_nodelay(true)?;
        let stream = match tls {
            None => Stream::Plain(stream),
            Some(tls) => tls.connect(stream, connect_timeout)?,
        };
        stream.set_read_timeout(Some(reply_timeout))?;
        stream.set_write_timeout(Some(reply_timeout))?;
        let read = Timed::new(stream.try_clone()?, Some(reply_timeout));
        // Once per connection, not per request: one more descriptor, and a lock that prunes
        // the closed ones.
        let socket = Arc::new(stream.tcp().try_clone()?);
        let mut sockets = backend.sockets.lock();
        sockets.retain(|s| s.strong_count() > 0);
        sockets.push(Arc::downgrade(&socket));
        drop(sockets);
        Ok(BackendConn {
            reader: BufReader::with_capacity(RELAY_BUFFER, read),
            writer: stream,
            _socket: socket,
        })
    }

    /// Reads a reply header into `header` (see [`protocol::read_line`]). The whole header must
    /// arrive within the reply timeout of the request being sent, however it trickles in.
    ///
    /// # Errors
    /// The I/O error; `TimedOut`, saying so, when the header was late.
    pub fn read_header(&mut self, header: &mut Vec<u8>) -> io::Result<Line> {
        let limit = self.reader.get_mut().start();
        let read = protocol::read_line(&mut self.reader, header, MAX_HEADER_LINE);
        // The body's reads each get the reply timeout again: it must keep making progress.
        self.reader.get_mut().deadline.start(None);
        read.map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no whole reply header within {:.1} s (--server-timeout plus processing time)",
                    limit.unwrap_or_default().as_secs_f64()
                ),
            ),
            _ => e,
        })
    }

    /// Whether this connection holds bytes beyond the last reply in its buffer, read along
    /// with the reply: it cannot take another request. Costs no system call.
    pub fn buffered_stray(&self) -> Option<Unusable> {
        (!self.reader.buffer().is_empty()).then_some(Unusable::Stray("sent bytes beyond its reply"))
    }

    /// Why this connection cannot take another request, if it cannot: it holds bytes beyond
    /// the last reply (buffered, or waiting in the socket), or the server closed it. Looks
    /// without blocking, in one system call: a non-blocking peek (`MSG_PEEK | MSG_DONTWAIT`),
    /// which leaves the socket's blocking mode alone (`set_nonblocking` would take two more).
    pub fn unusable(&self) -> Option<Unusable> {
        if let Some(why) = self.buffered_stray() {
            return Some(why);
        }
        let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
        match rustix::net::recv(self.writer.tcp(), &mut [0u8; 1], flags) {
            Ok((0, _)) => Some(Unusable::Closed("was closed while idle".into())),
            Ok(_) => Some(Unusable::Stray("sent bytes that no request asked for")),
            Err(rustix::io::Errno::AGAIN) => None,
            Err(e) => {
                let e = io::Error::from(e);
                Some(Unusable::Closed(format!("failed while idle: {e}")))
            }
        }
    }

    /// Sends `line` (with its `\n`) to the server and streams its reply to the client, through
    /// the server connection's own buffer: the header and the start of the body leave in one write.
    /// The header must come whole within the reply timeout; the body, keep coming.
    /// A reply of at most [`WHOLE_REPLY`] bytes is checked complete before any of it is sent; a
    /// longer one that breaks off mid-body can only be cut (the client's connection then closes).
    /// Returns the reply, its body's length and the server's service time (request sent to
    /// reply header read).
    pub fn relay(
        &mut self,
        line: &[u8],
        header: &mut Vec<u8>,
        client: &mut Timed,
    ) -> Result<(ReplyHeader, u64, Duration), RelayError> {
        let before = |e: io::Error| RelayError::ServerBefore(e.to_string());
        let sent = Instant::now();
        self.writer.write_all(line).map_err(before)?;
        match self.read_header(header).map_err(before)? {
            Line::Complete => {}
            Line::TooLong => return Err(RelayError::ServerBefore("reply header too long".into())),
            Line::Eof | Line::Truncated => {
                return Err(RelayError::ServerBefore("connection closed".into()))
            }
        }
        let service = sent.elapsed();
        let reply = ReplyHeader::parse(header).map_err(RelayError::ServerBefore)?;
        let length = reply.body_length();
        header.push(b'\n');
        if length > self.reader.buffer().len() as u64 && length <= WHOLE_REPLY {
            // A small reply is read whole before any of it goes out, so a server that promises
            // more than it sends is caught while the client can still get `ERR unavailable`.
            let mut body = Vec::with_capacity(length as usize);
            (&mut self.reader).take(length).read_to_end(&mut body).map_err(before)?;
            if (body.len() as u64) < length {
                let got = body.len();
                let e = format!("reply body ended after {got} of its {length} bytes");
                return Err(RelayError::ServerBefore(e));
            }
            client.start();
            return protocol::write_both(client, header, &body)
                .map(|()| (reply, length, service))
                .map_err(RelayError::ClientGone);
        }
        let buffered = self.reader.buffer();
        let first = u64::min(buffered.len() as u64, length) as usize;
        client.start();
        let mut client_error = protocol::write_both(client, header, &buffered[..first]).err();
        let mut body = (&mut self.reader).take(length);
        body.consume(first);
        while body.limit() > 0 {
            let chunk = match body.fill_buf() {
                Ok([]) => return Err(RelayError::ServerDuring("connection closed".into())),
                Ok(chunk) => chunk,
                Err(e) => return Err(RelayError::ServerDuring(e.to_string())),
            };
            let n = chunk.len();
            if client_error.is_none() {
                client_error = client.write_all(chunk).err();
            }
            // After the client is gone, keep reading to the reply's end so the server connection
            // is clean for the next request.
            body.consume(n);
        }
        match client_error {
            Some(e) => Err(RelayError::ClientGone(e)),
            None => Ok((reply, length, service)),
        }
    }
}

/// How relaying one reply went wrong.
pub enum RelayError {
    /// The server failed before any byte reached the client: the request can be retried.
    ServerBefore(String),
    /// The server failed mid-reply: the client's reply is cut, so its connection must close.
    ServerDuring(String),
    /// The client went away; the server's reply was read to its end, so its connection is clean.
    ClientGone(io::Error),
}

/// Why a server connection cannot take another request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// The server sent what no request asked for: its replies are out of step with requests.
    Stray(&'static str),
    /// The connection was closed by the server, or failed.
    Closed(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Stray(what) => write!(f, "it {what}"),
            Unusable::Closed(what) => write!(f, "its connection {what}"),
        }
    }
}

#[cfg(test)]
impl Backend {
    /// A server with these settings that has served nothing yet.
    pub fn new(id: u32, addr: String, processing_time: Duration, writable: bool) -> Backend {
        let workers = 1;
        Backend { id, addr, processing_time, writable, workers, ..Backend::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};
    use std::net::TcpListener;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    #[test]
    fn a_server_is_made_from_its_entry_and_any_changed_setting_makes_it_another() {
        let entry = ServerEntry {
            id: 7,
            host: "127.0.0.2".into(),
            port: 5001,
            processing_time: 0.25,
            writable: true,
            workers: 3,
            tls: true,
        };
        let b = Backend::from_entry(&entry);
        let settings = (b.id, b.addr.as_str(), b.processing_time, b.writable, b.workers, b.tls);
        let quarter = Duration::from_millis(250);
        assert_eq!(settings, (7, "127.0.0.2:5001", quarter, true, 3, true));
        assert!(b.same_settings(&Backend::from_entry(&entry)));
        let changes: [&dyn Fn(&mut ServerEntry); 6] = [
            &|e| e.id = 8,
            &|e| e.port = 5002,
            &|e| e.processing_time = 0.5,
            &|e| e.writable = false,
            &|e| e.workers = 4,
            &|e| e.tls = false,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut other = entry.clone();
            change(&mut other);
            assert!(!b.same_settings(&Backend::from_entry(&other)), "change {i}");
        }
    }

    /// A connection to `s` (at a listener in this test), and the test's end of it.
    fn connect(s: &Backend, listener: &TcpListener) -> (BackendConn, TcpStream) {
        let second = Duration::from_secs(1);
        let conn = BackendConn::connect(s, second, second, None).unwrap();
        (conn, listener.accept().unwrap().0)
    }

    /// A server at a listener in this test.
    fn listening() -> (Backend, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        (Backend::new(1, addr, Duration::ZERO, false), listener)
    }

    /// A connection to a listener in this test, and the test's end of it.
    fn pair() -> (BackendConn, TcpStream) {
        let (s, listener) = listening();
        connect(&s, &listener)
    }

    /// Waits (bounded) until the connection's check says something.
    fn unusable_soon(conn: &BackendConn) -> Option<Unusable> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let why = conn.unusable();
            if why.is_some() || Instant::now() > deadline {
                return why;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn backend(secs: f64) -> Backend {
        Backend::new(1, "127.0.0.1:5001".into(), Duration::from_secs_f64(secs), false)
    }

    #[test]
    fn flags_a_declaration_off_by_more_than_half() {
        let s = backend(0.1);
        assert!(!s.declaration_off(), "nothing measured yet");
        s.record_reply(Duration::from_millis(140), Duration::ZERO, 0, None);
        assert!(!s.declaration_off());
        let t = backend(0.1);
        t.record_reply(Duration::from_millis(400), Duration::ZERO, 0, None);
        assert!(t.declaration_off());
        // Off by exactly half is not "more than half"; twice the declared time is.
        let t = backend(0.1);
        t.record_reply(Duration::from_millis(150), Duration::ZERO, 0, None);
        assert!(!t.declaration_off());
        let t = backend(0.1);
        t.record_reply(Duration::from_millis(200), Duration::ZERO, 0, None);
        assert!(t.declaration_off());
        // A server declared instant is flagged only past 5 ms: tiny times are noise.
        for (ms, off) in [(5, false), (6, true)] {
            let t = backend(0.0);
            t.record_reply(Duration::from_millis(ms), Duration::ZERO, 0, None);
            assert_eq!(t.declaration_off(), off, "{ms} ms");
        }
    }

    #[test]
    fn closed_connections_leave_the_list_a_failed_health_check_breaks() {
        let (s, listener) = listening();
        for _ in 0..3 {
            drop(connect(&s, &listener));
        }
        let _open = connect(&s, &listener);
        assert_eq!(s.sockets.lock().len(), 1);
        assert_eq!(s.break_connections(), 1);
    }

    #[test]
    fn measured_time_is_a_moving_average() {
        let s = backend(0.5);
        assert_eq!(s.expected_time(), Duration::from_millis(500));
        s.record_reply(Duration::from_millis(100), Duration::ZERO, 0, None);
        assert_eq!(s.expected_time(), Duration::from_millis(100));
        s.record_reply(Duration::from_millis(600), Duration::ZERO, 0, None);
        assert_eq!(s.expected_time(), Duration::from_millis(200));
    }

    #[test]
    fn a_requests_mistake_is_not_the_servers_error() {
        use crate::error::Code;
        let s = backend(0.1);
        let sql = Code::Sql.msg("no such table");
        let internal = Code::Internal.msg("disk");
        for e in [None, Some(&sql), Some(&sql), Some(&internal)] {
            s.record_reply(Duration::ZERO, Duration::ZERO, 0, e);
        }
        assert_eq!(s.requests.load(Ordering::Relaxed), 4);
        assert_eq!(s.client_errors.load(Ordering::Relaxed), 2);
        assert_eq!(s.errors.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_connection_is_unusable_once_it_holds_stray_bytes_or_is_closed() {
        let (mut conn, mut server) = pair();
        assert_eq!(conn.unusable(), None);
        server.write_all(b"OK 1\nx").unwrap();
        assert!(matches!(unusable_soon(&conn), Some(Unusable::Stray(_))));
        // The look took nothing: the header is read whole, and the byte left in the buffer
        // behind it is still stray.
        let mut header = Vec::new();
        assert_eq!(conn.read_header(&mut header).unwrap(), Line::Complete);
        assert_eq!(header, b"OK 1");
        assert!(matches!(conn.unusable(), Some(Unusable::Stray(_))));

        let (conn, server) = pair();
        drop(server);
        assert!(matches!(unusable_soon(&conn), Some(Unusable::Closed(_))));
    }

    #[test]
    fn breaking_the_connections_releases_the_request_waiting_on_a_reply() {
        let (s, listener) = listening();
        let (mut conn, _server) = connect(&s, &listener);
        // The server never answers: the read ends when the connection is broken (before or
        // while it waits), not after the reply timeout.
        let released = std::thread::scope(|scope| {
            let breaker = scope.spawn(|| s.break_connections());
            assert_eq!(conn.read_header(&mut Vec::new()).unwrap(), Line::Eof);
            breaker.join().unwrap()
        });
        assert_eq!(released, 1);
    }

    #[test]
    fn breaking_shuts_down_the_open_connections_idle_ones_too_not_the_closed() {
        let (s, listener) = listening();
        let (idle, _a) = connect(&s, &listener);
        let (closed, _b) = connect(&s, &listener);
        drop(closed);
        assert_eq!(s.break_connections(), 1);
        assert!(matches!(idle.unusable(), Some(Unusable::Closed(_))));
        assert_eq!(s.break_connections(), 0);
    }

    /// A client connection for `relay` to write to, and the test's end of it.
    fn client() -> (Timed, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let theirs = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let stream = Stream::Plain(listener.accept().unwrap().0);
        (Timed::new(stream, Some(Duration::from_secs(10))), theirs)
    }

    #[test]
    fn a_long_reply_is_streamed_whole_and_leaves_the_connection_ready() {
        let (mut conn, mut server) = pair();
        let (mut to_client, mut client_end) = client();
        // Longer than what is read whole and than the relay buffer: streamed in parts.
        let len = 300_000;
        let reply = [format!("OK {len} server=1\n").into_bytes(), vec![b'x'; len]].concat();
        let sent = reply.clone();
        let serving = std::thread::spawn(move || {
            let mut requests = BufReader::new(server.try_clone().unwrap());
            for _ in 0..2 {
                let mut line = String::new();
                requests.read_line(&mut line).unwrap();
                server.write_all(&sent).unwrap();
            }
        });
        let reading = std::thread::spawn(move || {
            let mut got = Vec::new();
            let _ = client_end.read_to_end(&mut got);
            got
        });
        for _ in 0..2 {
            match conn.relay(b"file big\n", &mut Vec::new(), &mut to_client) {
                Ok((_, bytes, _)) => assert_eq!(bytes, len as u64),
                Err(_) => panic!("relay failed"),
            }
            assert_eq!(conn.buffered_stray(), None, "bytes left over");
        }
        serving.join().unwrap();
        drop(to_client);
        assert!(reading.join().unwrap() == [&reply[..], &reply[..]].concat());
    }

    #[test]
    fn a_reply_that_stops_mid_body_fails_within_the_reply_timeout() {
        let (mut conn, mut server) = pair();
        let (mut to_client, _client_end) = client();
        // Promises 300,000 bytes, sends 100,000, then goes quiet with the connection open.
        let mut reply = b"OK 300000 server=1\n".to_vec();
        reply.resize(reply.len() + 100_000, b'x');
        server.write_all(&reply).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let failed = conn.relay(b"file big\n", &mut Vec::new(), &mut to_client);
            _ = done.send(matches!(failed, Err(RelayError::ServerDuring(_))));
            drop(server);
        });
        // The reply timeout is 1 s; a relay that keeps waiting fails the test, not hangs it.
        let outcome = finished.recv_timeout(Duration::from_secs(20));
        assert_eq!(outcome, Ok(true), "a server that went quiet mid-reply");
    }

    #[test]
    fn a_header_that_trickles_in_times_out_as_a_whole() {
        let (mut conn, mut server) = pair();
        let writer = std::thread::spawn(move || {
            // A byte every 300 ms: each read waits far less than the 1 s reply timeout.
            for b in b"OK 1 server=1\n" {
                std::thread::sleep(Duration::from_millis(300));
                if server.write_all(&[*b]).is_err() {
                    return;
                }
            }
        });
        let started = Instant::now();
        let e = conn.read_header(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(conn);
        writer.join().unwrap();
    }
}
