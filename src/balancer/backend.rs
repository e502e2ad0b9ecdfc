//! A backend: a server as the balancer knows it. [`Backend`] is its fixed settings (from the
//! servers file); [`BackendConn`] is the persistent connection the balancer keeps to it.

use std::io::{self, BufReader, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::RecvFlags;

use crate::balancer::stats::ServerStats;
use crate::policy::Candidate;
use crate::protocol::{self, Deadline, Line, MAX_HEADER_LINE};
use crate::servers_file::ServerEntry;

/// Bytes read from a server at a time while relaying a reply; one buffer per server, not per
/// client, so ten thousand idle clients cost no relay memory.
pub const RELAY_BUFFER: usize = 256 * 1024;

/// A server's fixed settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// The server's id.
    pub id: u32,
    /// `host:port` to connect to.
    pub addr: String,
    /// Declared seconds per request.
    pub processing_time: Duration,
    /// Whether its database accepts writes (a query that may have run is then not retried).
    pub writable: bool,
}

impl Backend {
    /// The backend recorded by a servers-file entry.
    pub fn from_entry(entry: &ServerEntry) -> Backend {
        Backend {
            id: entry.id,
            addr: entry.address(),
            processing_time: Duration::try_from_secs_f64(entry.processing_time)
                .unwrap_or(Duration::ZERO),
            writable: entry.writable,
        }
    }

    /// How the idle queue's policy sees it before it was ever chosen.
    pub fn candidate(&self) -> Candidate {
        Candidate::new(self.id, self.processing_time)
    }
}

/// An open, idle-or-leased connection to a backend: no bytes of an old reply are ever left on
/// it when it goes back to the idle queue (see [`BackendConn::unusable`]).
pub struct BackendConn {
    /// Who is at the other end.
    pub backend: Arc<Backend>,
    /// Its live counters.
    pub stats: Arc<ServerStats>,
    /// Reads replies, through one [`RELAY_BUFFER`].
    pub reader: BufReader<ServerStream>,
    /// Sends requests.
    pub writer: TcpStream,
}

/// The server's socket as replies are read from it: each read waits at most the reply
/// timeout, and a reply header's reads share one deadline (see [`BackendConn::read_header`]).
pub struct ServerStream {
    stream: TcpStream,
    deadline: Deadline,
}

impl Read for ServerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stream = &self.stream;
        self.deadline.before_call(|t| stream.set_read_timeout(t))?;
        self.stream.read(buf)
    }
}

impl BackendConn {
    /// Connects to `backend`. Reads fail after `reply_timeout` of silence, so a hung server
    /// is noticed.
    ///
    /// # Errors
    /// The connection error, or `NotFound` when the address does not resolve.
    pub fn connect(
        backend: Arc<Backend>,
        stats: Arc<ServerStats>,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> io::Result<BackendConn> {
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} does not resolve to an address", backend.addr),
        );
        for addr in backend.addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, connect_timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(reply_timeout))?;
                    stream.set_write_timeout(Some(reply_timeout))?;
                    let read = ServerStream {
                        stream: stream.try_clone()?,
                        deadline: Deadline::new(Some(reply_timeout)),
                    };
                    let reader = BufReader::with_capacity(RELAY_BUFFER, read);
                    return Ok(BackendConn {
                        backend,
                        stats,
                        reader,
                        writer: stream,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Reads a reply header into `header` (see [`protocol::read_line`]). The whole header must
    /// arrive within the reply timeout of the request being sent, however it trickles in.
    ///
    /// # Errors
    /// The I/O error; `TimedOut`, saying so, when the header was late.
    pub fn read_header(&mut self, header: &mut Vec<u8>) -> io::Result<Line> {
        let deadline = &mut self.reader.get_mut().deadline;
        let limit = deadline.per_call();
        deadline.start(limit);
        let read = protocol::read_line(&mut self.reader, header, MAX_HEADER_LINE);
        // The body's reads each get the reply timeout again: it must keep making progress.
        self.reader.get_mut().deadline.end();
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

    /// Why this connection cannot take another request, if it cannot: it holds bytes beyond
    /// the last reply (buffered, or waiting in the socket), or the server closed it. Looks
    /// without blocking, in one system call: a non-blocking peek (`MSG_PEEK | MSG_DONTWAIT`),
    /// which leaves the socket's blocking mode alone (`set_nonblocking` would take two more).
    pub fn unusable(&self) -> Option<Unusable> {
        if !self.reader.buffer().is_empty() {
            return Some(Unusable::Stray("sent bytes beyond its reply"));
        }
        let mut byte = [0u8; 1];
        match rustix::net::recv(
            &self.writer,
            &mut byte,
            RecvFlags::PEEK | RecvFlags::DONTWAIT,
        ) {
            Ok((0, _)) => Some(Unusable::Closed("was closed while idle".into())),
            Ok(_) => Some(Unusable::Stray("sent bytes that no request asked for")),
            Err(rustix::io::Errno::AGAIN) => None,
            Err(e) => Some(Unusable::Closed(format!(
                "failed while idle: {}",
                io::Error::from(e)
            ))),
        }
    }
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
mod tests {
    use super::*;
    use crate::balancer::stats::Stats;
    use std::io::Write;
    use std::net::TcpListener;
    use std::time::Instant;

    /// A connection to a listener in this test, and the test's end of it.
    fn pair() -> (BackendConn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = Arc::new(Backend {
            id: 1,
            addr: listener.local_addr().unwrap().to_string(),
            processing_time: Duration::ZERO,
            writable: false,
        });
        let stats = Stats::default().server(&backend);
        let second = Duration::from_secs(1);
        let conn = BackendConn::connect(backend, stats, second, second).unwrap();
        (conn, listener.accept().unwrap().0)
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

    #[test]
    fn a_connection_is_unusable_once_it_holds_stray_bytes_or_is_closed() {
        let (mut conn, mut server) = pair();
        assert_eq!(conn.unusable(), None);
        server.write_all(b"OK 1\nx").unwrap();
        assert!(matches!(unusable_soon(&conn), Some(Unusable::Stray(_))));
        // Read a reply and leave bytes of the next in the buffer: still stray.
        server.write_all(b"OK 1\ny").unwrap();
        let mut header = Vec::new();
        assert_eq!(conn.read_header(&mut header).unwrap(), Line::Complete);
        assert!(matches!(conn.unusable(), Some(Unusable::Stray(_))));

        let (conn, server) = pair();
        drop(server);
        assert!(matches!(unusable_soon(&conn), Some(Unusable::Closed(_))));
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
