//! One client's session: read a request (the client side), hand it to a server and stream the
//! reply back (the backend side), repeat until the client leaves.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::balancer::backend::BackendConn;
use crate::balancer::Balancer;
use crate::error::Error;
use crate::idle_queue::{Lease, NoServer};
use crate::protocol::{self, Line, ReplyHeader, Request, MAX_HEADER_LINE, MAX_REQUEST_LINE};

/// Read buffer on the client side: requests are short, and ten thousand clients each hold one.
const CLIENT_BUFFER: usize = 2 * 1024;

/// Serves one client until it disconnects, breaks the protocol, or the balancer stops.
pub fn serve_client(lb: &Balancer, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    log::info!("Connected with {peer}");
    match serve(lb, stream, &peer) {
        Ok(()) => log::info!("{peer} disconnected"),
        Err(e) => log::info!("{peer} disconnected: {e}"),
    }
}

fn serve(lb: &Balancer, stream: TcpStream, peer: &str) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(CLIENT_BUFFER, stream.try_clone()?);
    let mut client = stream;
    let mut line = Vec::new();
    let mut header = Vec::new();
    loop {
        match protocol::read_line(&mut reader, &mut line, MAX_REQUEST_LINE)? {
            Line::Complete => {}
            Line::Eof | Line::Truncated => return Ok(()),
            Line::TooLong => {
                let e = Error::TooLarge(format!(
                    "request line is over {MAX_REQUEST_LINE} bytes; closing the connection"
                ));
                client.write_all(e.header_line().as_bytes())?;
                return Ok(());
            }
        }
        let _in_flight = InFlight::new(lb);
        let id = lb.next_request.fetch_add(1, Ordering::Relaxed);
        match Request::parse(&line) {
            Ok(request) => {
                log::info!("req {id} from {peer}: {}", request.line());
                handle(lb, id, &request, &mut line, &mut header, &mut client)?;
            }
            Err(e) => {
                log::info!("req {id} from {peer}: refused: {e}");
                client.write_all(e.header_line().as_bytes())?;
            }
        }
        if lb.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Keep per-client memory small between requests.
        if line.capacity() > CLIENT_BUFFER {
            line = Vec::new();
        }
        if reader.buffer().is_empty() && reader.capacity() > CLIENT_BUFFER {
            reader = BufReader::with_capacity(CLIENT_BUFFER, client.try_clone()?);
        }
    }
}

/// Counts a request as in flight for as long as it lives.
struct InFlight<'a>(&'a Balancer);

impl<'a> InFlight<'a> {
    fn new(lb: &'a Balancer) -> Self {
        lb.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(lb)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How relaying one reply went wrong.
enum RelayError {
    /// The server failed before any byte reached the client: the request can be retried.
    ServerBefore(String),
    /// The server failed in the middle of a reply: the client's reply is cut, so its
    /// connection must close.
    ServerDuring(String),
    /// The client went away; the server's reply was read to its end, so its connection is clean.
    ClientGone(io::Error),
}

/// Answers one request: acquire a server, relay, release; on a server failure before the
/// reply started, try another server, at most `retries` more times.
///
/// # Errors
/// Only errors that end the client's connection.
fn handle(
    lb: &Balancer,
    id: u64,
    request: &Request,
    line: &mut Vec<u8>,
    header: &mut Vec<u8>,
    client: &mut TcpStream,
) -> io::Result<()> {
    let started = Instant::now();
    let attempts = lb.config.retries + 1;
    line.push(b'\n');
    for attempt in 1..=attempts {
        let mut lease = match lb.queue.acquire(lb.config.queue_timeout) {
            Ok(lease) => lease,
            Err(why) => return refuse(lb, id, why, client),
        };
        log::info!(
            "req {id}: Chosen server: {} ({})",
            lease.id(),
            why_chosen(lb, &lease)
        );
        let server = lease.id();
        match relay(lease.item(), line, header, client) {
            Ok((reply, bytes)) => {
                lease.release();
                log::info!(
                    "req {id}: reply sent: {} from server {server}, {bytes} bytes, {:.3} s",
                    reply_kind(&reply),
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            Err(RelayError::ClientGone(e)) => {
                lease.release();
                log::info!("req {id}: client left during the reply; server {server}'s connection drained and reused");
                return Err(e);
            }
            Err(RelayError::ServerDuring(why)) => {
                lease.discard();
                log::warn!("req {id}: server {server} failed mid-reply ({why}); marked down; closing the client's connection");
                return Err(io::Error::other("reply cut short by a server failure"));
            }
            Err(RelayError::ServerBefore(why)) => {
                let conn = lease.discard();
                log::warn!("req {id}: server {server} failed ({why}); marked down");
                let may_have_run = matches!(request, Request::Query(_)) && conn.backend.writable;
                if may_have_run {
                    let e = Error::Unavailable(format!(
                        "server {server} failed while running the query; it may or may not have run, so it was not retried"
                    ));
                    return client.write_all(e.header_line().as_bytes());
                }
                if attempt < attempts {
                    log::info!(
                        "req {id}: retrying on another server (attempt {} of {attempts})",
                        attempt + 1
                    );
                }
            }
        }
    }
    let e = Error::Unavailable(format!(
        "no server could answer after {attempts} attempts; try again"
    ));
    client.write_all(e.header_line().as_bytes())
}

fn refuse(lb: &Balancer, id: u64, why: NoServer, client: &mut TcpStream) -> io::Result<()> {
    let e = match why {
        NoServer::NoneUp => Error::Unavailable(
            "no server is up; start one with `server <id> <port> <processing_time>`".into(),
        ),
        NoServer::TimedOut => Error::Busy(format!(
            "every server stayed busy for {:.0} s (--queue-timeout); try again later",
            lb.config.queue_timeout.as_secs_f64()
        )),
        NoServer::Stopped => Error::Unavailable("the load balancer is shutting down".into()),
    };
    log::warn!("req {id}: {e}");
    client.write_all(e.header_line().as_bytes())
}

fn why_chosen(lb: &Balancer, lease: &Lease<'_, BackendConn>) -> String {
    let c = lease.candidate();
    let mut why = format!(
        "{} of {} idle by {}, processing time {} s",
        if lease.idle_count == 1 {
            "only one"
        } else {
            "best"
        },
        lease.idle_count,
        lb.queue.policy_name(),
        c.processing_time.as_secs_f64()
    );
    if !lease.waited.is_zero() && lease.waited.as_millis() > 0 {
        why.push_str(&format!(", waited {} ms", lease.waited.as_millis()));
    }
    why
}

fn reply_kind(reply: &ReplyHeader) -> String {
    match reply {
        ReplyHeader::Ok { .. } => "OK".into(),
        ReplyHeader::Err(e) => format!("ERR {}", e.code()),
    }
}

/// Sends `line` (with its `\n`) to the server and streams its reply to the client, through
/// the server connection's own buffer: the header and the start of the body leave in one write.
fn relay(
    conn: &mut BackendConn,
    line: &[u8],
    header: &mut Vec<u8>,
    client: &mut TcpStream,
) -> Result<(ReplyHeader, u64), RelayError> {
    let before = |e: io::Error| RelayError::ServerBefore(e.to_string());
    conn.writer.write_all(line).map_err(before)?;
    match protocol::read_line(&mut conn.reader, header, MAX_HEADER_LINE).map_err(before)? {
        Line::Complete => {}
        Line::Eof | Line::Truncated => {
            return Err(RelayError::ServerBefore("connection closed".into()))
        }
        Line::TooLong => return Err(RelayError::ServerBefore("reply header too long".into())),
    }
    let reply = ReplyHeader::parse(header).map_err(RelayError::ServerBefore)?;
    let length = reply.body_length();
    header.push(b'\n');

    let buffered = conn.reader.buffer();
    let first = buffered
        .len()
        .min(usize::try_from(length).unwrap_or(usize::MAX));
    let mut client_error = protocol::write_both(client, header, &buffered[..first]).err();
    conn.reader.consume(first);
    let mut remaining = length - first as u64;
    while remaining > 0 {
        let chunk = match conn.reader.fill_buf() {
            Ok([]) => return Err(RelayError::ServerDuring("connection closed".into())),
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RelayError::ServerDuring(e.to_string())),
        };
        let n = chunk
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        if client_error.is_none() {
            client_error = client.write_all(&chunk[..n]).err();
        }
        // After the client is gone, keep reading to the reply's end so the server connection
        // is clean for the next request.
        conn.reader.consume(n);
        remaining -= n as u64;
    }
    match client_error {
        Some(e) => Err(RelayError::ClientGone(e)),
        None => Ok((reply, length)),
    }
}
