//! One client's session: read a request (the client side), hand it to a server and stream the
//! reply back (the backend side), repeat until the client leaves.

use std::io::{self, BufRead, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balancer::backend::{BackendConn, Unusable};
use crate::balancer::{membership, shared::Balancer, stats};
use crate::error::{Code, Error};
use crate::gauge::Held;
use crate::idle_queue::{Lease, NoServer};
use crate::policy::Facts;
use crate::protocol::{self, Deadline, Line, ReplyHeader, Request};
use crate::request_reader::{Incoming, RequestReader, Timeouts};
use crate::tls::{self, Stream};

/// Read buffer on the client side: requests are short, and ten thousand clients each hold one.
const CLIENT_BUFFER: usize = 2 * 1024;
/// Largest reply read whole from the server before its header is passed on (see [`relay`]).
const WHOLE_REPLY: u64 = 64 * 1024;

/// The reply to a client that speaks plain text to the TLS port.
const PLAIN_ON_TLS: &[u8] =
    b"ERR bad_request this port speaks TLS: connect with `client --tls`, or use the plain port\n";

/// The client's socket as replies are written to it. All the writes of one reply share one
/// deadline, the request timeout: a client that reads slowly or not at all frees its server
/// within that time, however the writes split up.
struct Client {
    stream: Stream,
    deadline: Deadline,
}

impl Client {
    /// Starts the deadline of a reply about to be written.
    fn start_reply(&mut self) {
        let limit = self.deadline.per_call();
        self.deadline.start(limit);
    }
}

impl Write for Client {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let stream = &self.stream;
        self.deadline.before_call(|t| stream.set_write_timeout(t))?;
        self.stream.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let stream = &self.stream;
        self.deadline.before_call(|t| stream.set_write_timeout(t))?;
        self.stream.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serves one client until it disconnects, breaks the protocol, or the balancer stops; on the
/// TLS listener (`tls` given), after a handshake that must end within the request timeout.
pub fn serve_client(lb: &Arc<Balancer>, stream: TcpStream, tls: Option<&tls::Acceptor>) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    log::info!("Connected with {peer}");
    let stream = match tls {
        None => Stream::Plain(stream),
        Some(config) => {
            match tls::accept(config, stream, lb.config.request_timeout, PLAIN_ON_TLS) {
                Ok(stream) => stream,
                Err(e) => return log::info!("{peer}: refused: TLS handshake failed: {e}"),
            }
        }
    };
    match serve(lb, stream, &peer) {
        Ok(()) => log::info!("{peer} disconnected"),
        Err(e) => log::info!("{peer} disconnected: {e}"),
    }
}

fn serve(lb: &Arc<Balancer>, mut stream: Stream, peer: &str) -> io::Result<()> {
    // A client that stops reading must not hold a server: a reply not written within the
    // request timeout fails, and the relay drains the server's reply.
    let limits = Timeouts::new(lb.config.idle_timeout, lb.config.request_timeout);
    stream.set_write_timeout(limits.request)?;
    let from = stream.peer_addr().ok();
    // The clone takes a descriptor: when none is left, the client is told, not just closed.
    let reading = match stream.try_clone() {
        Ok(reading) => reading,
        Err(e) => {
            let busy = Code::Busy.msg("the load balancer is overloaded; try again later");
            let _ = stream.write_all(busy.header_line().as_bytes());
            return Err(e);
        }
    };
    let mut reader = RequestReader::new(reading, limits, CLIENT_BUFFER);
    let mut client = Client {
        stream,
        deadline: Deadline::new(limits.request),
    };
    let mut line = Vec::new();
    let mut header = Vec::new();
    loop {
        match reader.next(&mut line)? {
            Incoming::Line => {}
            Incoming::Closed => return Ok(()),
            Incoming::Refused(e) => {
                log::info!("{peer}: refused: {e}");
                return reader.close_with(&mut client.stream, &e);
            }
        }
        let _in_flight = Held::new(&lb.in_flight);
        let id = lb.next_request.fetch_add(1, Ordering::Relaxed);
        match Request::parse(&line) {
            Ok(request) => {
                log::info!("req {id} from {peer}: {}", request.line());
                handle(lb, id, from, &request, &mut line, &mut header, &mut client)?;
            }
            Err(e) => {
                log::info!("req {id} from {peer}: refused: {e}");
                reply_error(lb, &e, Instant::now(), &mut client)?;
            }
        }
        if lb.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Keep per-client memory small between requests.
        if line.capacity() > CLIENT_BUFFER {
            line = Vec::new();
        }
        if header.capacity() > CLIENT_BUFFER {
            header = Vec::new();
        }
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
/// reply started, try another server, at most `retries` more times. A server connection
/// that failed, or holds bytes no request asked for, is closed and its server re-probed.
///
/// # Errors
/// Only errors that end the client's connection.
#[allow(clippy::too_many_arguments)]
fn handle(
    lb: &Arc<Balancer>,
    id: u64,
    from: Option<SocketAddr>,
    request: &Request,
    line: &mut Vec<u8>,
    header: &mut Vec<u8>,
    client: &mut Client,
) -> io::Result<()> {
    let started = Instant::now();
    let attempts = lb.config.retries + 1;
    let mut attempt = 0;
    // Connections found unusable before the request went out cost no attempt (nothing was
    // sent). Those holding junk count, at most `attempts` of them, so a server that keeps
    // sending junk cannot hold the request forever; closed ones do not (each leaves the idle
    // list, so there are only so many: a dead server's idle workers are all found closed).
    let mut unusable = 0;
    line.push(b'\n');
    while attempt < attempts && unusable <= attempts {
        let mut lease = match lb.queue.acquire(lb.config.queue_timeout) {
            Ok(lease) => lease,
            Err(why) => return refuse(lb, id, why, started, client),
        };
        let taken = Instant::now();
        let server = lease.id();
        // Bytes that came while the connection was idle would be read as this request's
        // reply, and a closed connection would lose a write: look first (one system call).
        if let Some(why) = lease.item().unusable() {
            unusable += u32::from(matches!(why, Unusable::Stray(_)));
            replace_connection(lb, id, lease, &why);
            continue;
        }
        attempt += 1;
        // The decision is recorded as facts, with the figures the policy's reason quotes as
        // they are now (later requests change them); words are made only when read.
        let backend = Arc::clone(lease.server());
        let facts = Facts::of(&backend);
        if log::log_enabled!(log::Level::Info) {
            let why = stats::explain(lb.queue.policy(), server, &facts, lease.decision());
            log::info!("req {id}: Chosen server: {server} ({why})");
        }
        let decision = *lease.decision();
        lb.stats.record_choice(id, taken, server, facts, decision);
        lb.stats.record_taken(&backend, id, taken);
        // A failed health check releases the request by shutting its connection down (see
        // `health`).
        let relayed = relay(lease.item(), line, header, client);
        match relayed {
            Ok(Relayed {
                reply,
                bytes,
                service,
            }) => {
                // Before the server is released, so its next request starts after this one ended.
                let latency = started.elapsed();
                let error = match &reply {
                    ReplyHeader::Err(e) => Some(e),
                    ReplyHeader::Ok { .. } => None,
                };
                backend.record_reply(service, latency, bytes, error);
                lb.stats.record_reply(latency, error);
                let ended = started + latency;
                lb.stats
                    .record_span(id, from, server, started, taken, ended, error.is_none());
                log::info!(
                    "req {id}: reply sent: {} from server {server}, {bytes} bytes, {:.3} s",
                    error.map_or_else(|| "OK".to_string(), |e| format!("ERR {}", e.code())),
                    latency.as_secs_f64()
                );
                give_back(lb, id, lease);
                return Ok(());
            }
            Err(RelayError::ClientGone(e)) => {
                log::info!("req {id}: client left during the reply; server {server}'s connection drained and reused");
                give_back(lb, id, lease);
                return Err(e);
            }
            Err(RelayError::ServerDuring(why)) => {
                backend.errors.fetch_add(1, Ordering::Relaxed);
                log::warn!("req {id}: server {server} failed mid-reply ({why}); closing the client's connection; re-probing the server");
                membership::reprobe(lb, lease);
                return Err(io::Error::other("reply cut short by a server failure"));
            }
            Err(RelayError::ServerBefore(why)) => {
                backend.errors.fetch_add(1, Ordering::Relaxed);
                log::warn!("req {id}: server {server} failed ({why}); re-probing it");
                let may_have_run = matches!(request, Request::Query(_)) && backend.writable;
                membership::reprobe(lb, lease);
                if may_have_run {
                    let e = Code::Unavailable.msg(format!(
                        "server {server} failed while running the query; it may or may not have run, so it was not retried"
                    ));
                    return reply_error(lb, &e, started, client);
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
    let e = Code::Unavailable.msg(format!(
        "no server could answer after {attempts} attempts; try again"
    ));
    reply_error(lb, &e, started, client)
}

/// Returns a server to the idle list after a reply, unless bytes beyond that reply were read
/// with it (see [`replace_connection`]). Bytes that come later, and a close, are found by the
/// peek before the connection's next request (in [`handle`]): it looks later, so it sees all
/// that a peek here would, and one peek per request is enough.
fn give_back(lb: &Arc<Balancer>, id: u64, mut lease: Lease<'_, BackendConn>) {
    match lease.item().buffered_stray() {
        None => lease.release(),
        Some(why) => replace_connection(lb, id, lease, &why),
    }
}

/// Closes a server connection that cannot take another request and re-probes its server;
/// stray bytes are counted, since they mean the server's replies are out of step.
fn replace_connection(lb: &Arc<Balancer>, id: u64, lease: Lease<'_, BackendConn>, why: &Unusable) {
    let server = lease.id();
    match why {
        Unusable::Stray(_) => {
            let stray = &lease.server().stray;
            let times = stray.fetch_add(1, Ordering::Relaxed) + 1;
            log::warn!("req {id}: server {server} is out of step: {why} (stray bytes #{times}); closing that connection, so that no later request reads them, and re-probing the server");
        }
        Unusable::Closed(_) => {
            log::warn!("req {id}: server {server}: {why}; re-probing it");
        }
    }
    membership::reprobe(lb, lease);
}

/// Sends an `ERR` reply made by the balancer itself, and counts it.
fn reply_error(lb: &Balancer, e: &Error, started: Instant, client: &mut Client) -> io::Result<()> {
    lb.stats.record_reply(started.elapsed(), Some(e));
    client.start_reply();
    client.write_all(e.header_line().as_bytes())
}

fn refuse(
    lb: &Balancer,
    id: u64,
    why: NoServer,
    started: Instant,
    client: &mut Client,
) -> io::Result<()> {
    let e = match why {
        NoServer::NoneUp => Code::Unavailable
            .msg("no server is up; start one with `server <id> <port> <processing_time>`"),
        NoServer::TimedOut => Code::Busy.msg(format!(
            "every server stayed busy for {:.0} s (--queue-timeout); try again later",
            lb.config.queue_timeout.as_secs_f64()
        )),
        NoServer::Stopped => Code::Unavailable.msg("the load balancer is shutting down"),
    };
    log::warn!("req {id}: {e}");
    lb.stats.record_refusal(id, e.message().to_string());
    reply_error(lb, &e, started, client)
}

/// A reply relayed in full.
struct Relayed {
    reply: ReplyHeader,
    /// Body bytes.
    bytes: u64,
    /// From sending the request to reading the reply header: the server's service time.
    service: Duration,
}

/// Sends `line` (with its `\n`) to the server and streams its reply to the client, through
/// the server connection's own buffer: the header and the start of the body leave in one write.
/// The header must come whole within the reply timeout; the body, keep coming.
/// A reply of at most [`WHOLE_REPLY`] bytes is checked complete before any of it is sent; a
/// longer one that breaks off mid-body can only be cut (the client's connection then closes).
fn relay(
    conn: &mut BackendConn,
    line: &[u8],
    header: &mut Vec<u8>,
    client: &mut Client,
) -> Result<Relayed, RelayError> {
    let before = |e: io::Error| RelayError::ServerBefore(e.to_string());
    let sent = Instant::now();
    conn.writer.write_all(line).map_err(before)?;
    match conn.read_header(header).map_err(before)? {
        Line::Complete => {}
        Line::Eof | Line::Truncated => {
            return Err(RelayError::ServerBefore("connection closed".into()))
        }
        Line::TooLong => return Err(RelayError::ServerBefore("reply header too long".into())),
    }
    let service = sent.elapsed();
    let reply = ReplyHeader::parse(header).map_err(RelayError::ServerBefore)?;
    let length = reply.body_length();
    header.push(b'\n');
    if length > conn.reader.buffer().len() as u64 && length <= WHOLE_REPLY {
        // A small reply is read whole before any of it goes out, so a server that promises
        // more than it sends is caught while the client can still get `ERR unavailable`.
        let mut body = Vec::with_capacity(length as usize);
        (&mut conn.reader)
            .take(length)
            .read_to_end(&mut body)
            .map_err(before)?;
        if (body.len() as u64) < length {
            return Err(RelayError::ServerBefore(format!(
                "reply body ended after {} of its {length} bytes",
                body.len()
            )));
        }
        client.start_reply();
        return match protocol::write_both(client, header, &body) {
            Ok(()) => Ok(Relayed {
                reply,
                bytes: length,
                service,
            }),
            Err(e) => Err(RelayError::ClientGone(e)),
        };
    }

    let buffered = conn.reader.buffer();
    let first = buffered
        .len()
        .min(usize::try_from(length).unwrap_or(usize::MAX));
    client.start_reply();
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
        None => Ok(Relayed {
            reply,
            bytes: length,
            service,
        }),
    }
}
