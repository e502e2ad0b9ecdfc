//! A backend: a server as the balancer knows it. [`Backend`] is its fixed settings (from the
//! servers file); [`BackendConn`] is the persistent connection the balancer keeps to it.

use std::io::{self, BufReader};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::balancer::stats::ServerStats;
use crate::policy::Candidate;
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
/// it when it goes back to the idle queue.
pub struct BackendConn {
    /// Who is at the other end.
    pub backend: Arc<Backend>,
    /// Its live counters.
    pub stats: Arc<ServerStats>,
    /// Reads replies, through one [`RELAY_BUFFER`].
    pub reader: BufReader<TcpStream>,
    /// Sends requests.
    pub writer: TcpStream,
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
                    let reader = BufReader::with_capacity(RELAY_BUFFER, stream.try_clone()?);
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

    /// Whether this idle connection is unusable: the server closed it (it died, say), or it
    /// holds bytes no request asked for. Looks without blocking; costs three system calls,
    /// so it is used only where a failure could not be retried.
    pub fn is_stale(&self) -> bool {
        if !self.reader.buffer().is_empty() || self.writer.set_nonblocking(true).is_err() {
            return true;
        }
        let mut byte = [0u8; 1];
        let stale = match self.writer.peek(&mut byte) {
            Ok(_) => true,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        };
        self.writer.set_nonblocking(false).is_err() || stale
    }
}
