//! A running server's shared state and its connections: the accept loop, a thread per
//! connection that reads request lines and answers them until the peer closes, and the
//! workers that make at most N requests run at once.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::database::Database;
use super::file_store::FileStore;
use crate::error::Error;
use crate::gauge::Held;
use crate::protocol::{self, Incoming, ReplyHeader, Request, RequestReader, Timeouts};
use crate::tls::{self, Stream};

/// The reply to a peer that speaks plain text to a server that speaks TLS.
const PLAIN_ON_TLS: &[u8] = b"ERR bad_request this server speaks TLS\n";

/// A running server's shared state.
pub(crate) struct Server {
    /// Sent in every `OK` header as `server=<id>`.
    pub id: u32,
    /// Time each request takes at least.
    pub processing_time: Duration,
    /// How long a request line may take to arrive, from its first byte (0: no limit).
    pub request_timeout: Duration,
    /// Idle workers (each a database connection of its own) go back on this channel...
    pub back: Sender<Box<dyn Database>>,
    /// ...and a request takes one here, waiting while all are busy.
    pub idle: Receiver<Box<dyn Database>>,
    pub files: FileStore,
    /// Open connections (the balancer's and direct clients').
    pub connections: AtomicUsize,
    /// Requests read and not yet fully answered.
    pub in_flight: AtomicUsize,
    /// Set after the grace period: the accept loop ends at its next wake-up.
    pub stopping: AtomicBool,
    /// With `--tls-cert`: each connection starts with a TLS handshake.
    pub tls: Option<tls::Acceptor>,
}

/// A worker taken by one request; back to the idle ones when dropped, even by a panic.
struct Worker<'a>(Option<Box<dyn Database>>, &'a Sender<Box<dyn Database>>);

impl Drop for Worker<'_> {
    fn drop(&mut self) {
        if let Some(db) = self.0.take() {
            let _ = self.1.send(db);
        }
    }
}

/// A reply ready to send: the work is done, only I/O is left.
enum Reply {
    Text(ReplyHeader, Vec<u8>),
    /// A file, streamed from disk.
    File(ReplyHeader, File, u64),
    Err(Error),
}

/// Accepts connections until `stopping` is set (and a connection wakes it), a thread each.
pub(crate) fn accept_loop(server: &Arc<Server>, listener: &TcpListener) {
    for stream in listener.incoming() {
        if server.stopping.load(Ordering::SeqCst) {
            break;
        }
        match stream {
            Ok(stream) => {
                let server = Arc::clone(server);
                let spawned = std::thread::Builder::new()
                    .name("connection".into())
                    .stack_size(256 * 1024)
                    .spawn(move || serve_connection(&server, stream));
                if let Err(e) = spawned {
                    log::error!("cannot start a thread for a connection: {e}");
                }
            }
            Err(e) => {
                log::warn!("accept failed: {e}");
                // Out of file descriptors, say: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Serves one connection until the peer closes it or breaks the protocol.
fn serve_connection(server: &Server, stream: TcpStream) {
    let peer = stream.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
    let _connection = Held::new(&server.connections);
    match serve(server, stream, &peer) {
        Err(e) => log::info!("connection with {peer} ended: {e}"),
        // A balancer's health check connects and closes every second: not worth a line.
        Ok(0) => log::debug!("connection with {peer} closed without a request"),
        Ok(_) => log::info!("connection with {peer} closed"),
    }
}

/// Serves requests until the peer closes; returns how many came.
fn serve(server: &Server, stream: TcpStream, peer: &str) -> io::Result<u64> {
    stream.set_nodelay(true)?;
    let timeout = server.request_timeout;
    let stream = match tls::accept(server.tls.as_ref(), stream, timeout, PLAIN_ON_TLS) {
        Ok(stream) => stream,
        // A balancer's health check: it connects and closes, with no handshake.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
        Err(e) => return Err(e),
    };
    // No idle timeout: the balancer's persistent connections are silent between requests.
    let limits = Timeouts::new(Duration::ZERO, timeout);
    let mut reader = RequestReader::new(stream.try_clone()?, limits, 8 * 1024);
    let mut writer = stream;
    let mut line = Vec::new();
    let mut requests = 0;
    loop {
        match reader.next(&mut line)? {
            Incoming::Line => {}
            Incoming::Closed => return Ok(requests),
            Incoming::Refused(e) => {
                log::info!("{peer}: refused: {e}");
                return reader.close_with(&mut writer, &e).map(|()| requests);
            }
        }
        if requests == 0 {
            log::info!("Connected with {peer}");
        }
        requests += 1;
        // Counted until its reply is sent, so Ctrl-C never cuts a reply short.
        let _in_flight = Held::new(&server.in_flight);
        let started = Instant::now();
        let reply = match Request::parse(&line) {
            Ok(request) => {
                log::info!("{peer}: {}", request.line());
                log::debug!("Received request. Processing...");
                answer(server, &request)
            }
            Err(e) => Reply::Err(e),
        };
        let sent = send(&mut writer, reply)?;
        let secs = started.elapsed().as_secs_f64();
        log::info!("{peer}: response sent ({sent}, {secs:.3} s)");
    }
}

/// Does the request's work: as many requests at a time as the server has workers, each taking
/// at least the server's processing time.
fn answer(server: &Server, request: &Request) -> Reply {
    let id = server.id.to_string();
    // Held while the request is processed (not while the reply is sent): taking a worker is
    // what makes it busy, and its database connection is this request's alone. `Server`
    // holds both ends of the channel, so it never disconnects.
    let mut worker = Worker(server.idle.recv().ok(), &server.back);
    std::thread::sleep(server.processing_time);
    let reply = match (request, worker.0.as_mut()) {
        (Request::Query(sql), Some(db)) => db.query(sql).map(|out| {
            let mut fields = vec![("server", id), ("rows", out.rows.to_string())];
            if let Some(n) = out.changes {
                fields.push(("changes", n.to_string()));
            }
            Reply::Text(ReplyHeader::ok(out.body.len() as u64, &fields), out.body)
        }),
        (Request::File(name), _) => server
            .files
            .open(name)
            .map(|(file, len)| Reply::File(ReplyHeader::ok(len, &[("server", id)]), file, len)),
        (Request::Query(_), None) => unreachable!("the workers' channel never disconnects"),
    };
    reply.unwrap_or_else(Reply::Err)
}

/// Writes a reply; says what was sent, for the log.
fn send(writer: &mut Stream, reply: Reply) -> io::Result<String> {
    match reply {
        Reply::Text(header, body) => {
            protocol::write_both(writer, header.to_line().as_bytes(), &body)?;
            Ok(format!("{} bytes", body.len()))
        }
        Reply::File(header, file, len) => {
            writer.write_all(header.to_line().as_bytes())?;
            // `io::copy` from a file to a socket uses sendfile(2) on Linux: no copy through us.
            let copied = match writer {
                Stream::Plain(tcp) => io::copy(&mut file.take(len), tcp)?,
                tls => io::copy(&mut file.take(len), tls)?,
            };
            if copied < len {
                // The file shrank while we sent it: the reply cannot be completed, so the
                // connection must close rather than carry a short body.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file shrank while sending ({copied} of {len} bytes)"),
                ));
            }
            Ok(format!("file, {len} bytes"))
        }
        Reply::Err(e) => {
            writer.write_all(e.header_line().as_bytes())?;
            Ok(format!("ERR {}", e.code()))
        }
    }
}
