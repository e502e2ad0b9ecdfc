//! One client's session: read a request (the client side), hand it to a server and stream the
//! reply back (the backend side), repeat until the client leaves.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::Instant;

use crate::balancer::backend::{BackendConn, RelayError, Unusable};
use crate::balancer::{membership, shared::Balancer};
use crate::error::{Code, Error};
use crate::gauge::Held;
use crate::idle_queue::{Lease, NoServer};
use crate::protocol::{Incoming, ReplyHeader, Request, RequestReader, Timed, Timeouts};
use crate::tls::{self, Stream};

/// Read buffer on the client side: requests are short, and ten thousand clients each hold one.
const CLIENT_BUFFER: usize = 2 * 1024;

/// The reply to a client that speaks plain text to the TLS port.
const PLAIN_ON_TLS: &[u8] =
    b"ERR bad_request this port speaks TLS: connect with `client --tls`, or use the plain port\n";

/// Serves one client until it disconnects, breaks the protocol, or the balancer stops; on the
/// TLS listener (`tls` given), after a handshake that must end within the request timeout.
pub fn serve_client(lb: &Arc<Balancer>, stream: TcpStream, tls: Option<&tls::Acceptor>) {
    let peer = stream.peer_addr().map_or("?".into(), |a| a.to_string());
    log::info!("Connected with {peer}");
    let stream = match tls::accept(tls, stream, lb.config.request_timeout, PLAIN_ON_TLS) {
        Ok(stream) => stream,
        Err(e) => return log::info!("{peer}: refused: TLS handshake failed: {e}"),
    };
    match serve(lb, stream, &peer) {
        Ok(()) => log::info!("{peer} disconnected"),
        Err(e) => log::info!("{peer} disconnected: {e}"),
    }
}

fn serve(lb: &Arc<Balancer>, mut stream: Stream, peer: &str) -> io::Result<()> {
    // A client that stops reading must not hold a server: all the writes of one reply share
    // one deadline, the request timeout, and the relay then drains the server's reply.
    let limits = Timeouts::new(lb.config.idle_timeout, lb.config.request_timeout);
    stream.set_write_timeout(limits.request)?;
    let from = stream.peer_addr().ok();
    // The clone takes a descriptor: when none is left, the client is told, not just closed.
    let reading = stream.try_clone().inspect_err(|_| {
        let busy = Code::Busy.msg("the load balancer is overloaded; try again later");
        let _ = stream.write_all(busy.header_line().as_bytes());
    })?;
    let mut reader = RequestReader::new(reading, limits, CLIENT_BUFFER);
    let mut client = Timed::new(stream, limits.request);
    let (mut line, mut header) = (Vec::new(), Vec::new());
    loop {
        match reader.next(&mut line)? {
            Incoming::Line => {}
            Incoming::Closed => return Ok(()),
            Incoming::Refused(e) => {
                log::info!("{peer}: refused: {e}");
                return reader.close_with(&mut client.stream, &e);
            }
        }
        // A request that comes after Ctrl-C is the client's last. Read when the request comes,
        // not after its reply: a client answered just before Ctrl-C may ask once more.
        let last = lb.stopping.load(SeqCst);
        let _in_flight = Held::new(&lb.in_flight);
        let id = lb.next_request.fetch_add(1, Relaxed);
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
        if last {
            return Ok(());
        }
        keep_small(&mut line);
        keep_small(&mut header);
    }
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
    client: &mut Timed,
) -> io::Result<()> {
    let started = Instant::now();
    let attempts = lb.config.retries + 1;
    let mut attempt = 0;
    // Connections found unusable before the request went out cost no attempt (nothing was
    // sent). Those holding junk count: one more than `attempts` ends the request, so a server
    // that keeps sending junk cannot hold it forever; closed ones do not (each leaves the idle
    // list, so there are only so many: a dead server's idle workers are all found closed).
    let mut unusable = 0;
    line.push(b'\n');
    while attempt < attempts && unusable <= attempts {
        let mut lease = match lb.queue.acquire(lb.config.queue_timeout) {
            Ok(lease) => lease,
            Err(why) => return reply_error(lb, &refusal(lb, id, why), started, client),
        };
        let taken = Instant::now();
        let backend = Arc::clone(&lease.server);
        let server = backend.id;
        // Bytes that came while the connection was idle would be read as this request's
        // reply, and a closed connection would lose a write: look first (one system call).
        if let Some(why) = lease.item().unusable() {
            unusable += u32::from(matches!(why, Unusable::Stray(_)));
            replace_connection(lb, id, lease, &why);
            continue;
        }
        attempt += 1;
        if log::log_enabled!(log::Level::Info) {
            let why = lb.queue.policy.explain(server, &lease.decision);
            log::info!("req {id}: Chosen server: {server} ({why})");
        }
        lb.stats.record_choice(id, taken, &backend, lease.decision);
        // A failed health check releases the request by shutting its connection down (see
        // `membership::check_health`).
        match lease.item().relay(line, header, client) {
            Ok((reply, bytes, service)) => {
                // Before the server is released, so its next request starts after this one ended.
                let latency = started.elapsed();
                let error = match &reply {
                    ReplyHeader::Err(e) => Some(e),
                    ReplyHeader::Ok { .. } => None,
                };
                backend.record_reply(service, latency, bytes, error);
                lb.stats.record_reply(latency, error);
                let times = (started, taken, started + latency);
                lb.stats.record_span(id, from, server, times, error.is_none());
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
                backend.errors.fetch_add(1, Relaxed);
                log::warn!("req {id}: server {server} failed mid-reply ({why}); closing the client's connection; re-probing the server");
                membership::reprobe(lb, lease);
                return Err(io::Error::other("reply cut short by a server failure"));
            }
            Err(RelayError::ServerBefore(why)) => {
                backend.errors.fetch_add(1, Relaxed);
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
                    let next = attempt + 1;
                    log::info!(
                        "req {id}: retrying on another server (attempt {next} of {attempts})"
                    );
                }
            }
        }
    }
    let e = Code::Unavailable
        .msg(format!("no server could answer after {attempts} attempts; try again"));
    reply_error(lb, &e, started, client)
}

/// Returns a server to the idle list after a reply, unless bytes beyond that reply were read
/// with it. Bytes that come later, and a close, are found by the peek before the connection's
/// next request (in [`handle`]): it looks later, so it sees all that a peek here would.
fn give_back(lb: &Arc<Balancer>, id: u64, mut lease: Lease<'_, BackendConn>) {
    match lease.item().buffered_stray() {
        None => lease.release(),
        Some(why) => replace_connection(lb, id, lease, &why),
    }
}

/// Closes a server connection that cannot take another request and re-probes its server;
/// stray bytes are counted, since they mean the server's replies are out of step.
fn replace_connection(lb: &Arc<Balancer>, id: u64, lease: Lease<'_, BackendConn>, why: &Unusable) {
    let server = lease.server.id;
    if let Unusable::Stray(_) = why {
        let times = lease.server.stray.fetch_add(1, Relaxed) + 1;
        log::warn!("req {id}: server {server} is out of step: {why} (stray bytes #{times}); closing that connection, so that no later request reads them, and re-probing the server");
    } else {
        log::warn!("req {id}: server {server}: {why}; re-probing it");
    }
    membership::reprobe(lb, lease);
}

/// Sends an `ERR` reply made by the balancer itself, and counts it.
fn reply_error(lb: &Balancer, e: &Error, started: Instant, client: &mut Timed) -> io::Result<()> {
    lb.stats.record_reply(started.elapsed(), Some(e));
    client.start();
    client.write_all(e.header_line().as_bytes())
}

/// Why no server was handed out, in the words the client gets; logged and kept among the
/// decisions.
fn refusal(lb: &Balancer, id: u64, why: NoServer) -> Error {
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
    e
}

/// Lets go of a buffer that a large request or reply header grew, so that an idle client holds
/// little memory; one of the usual size is kept, to be reused without an allocation.
fn keep_small(buffer: &mut Vec<u8>) {
    if buffer.capacity() > CLIENT_BUFFER {
        *buffer = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_grown_by_a_large_request_is_let_go_and_a_usual_one_kept() {
        // A long query (1.5 KiB) and the limit itself are reused; a 64 KiB line is not kept.
        for usual in [1536, CLIENT_BUFFER] {
            let mut buffer = Vec::with_capacity(usual);
            keep_small(&mut buffer);
            assert!(buffer.capacity() >= usual, "{usual}-byte buffer let go");
        }
        let mut grown = Vec::with_capacity(64 * 1024);
        keep_small(&mut grown);
        assert_eq!(grown.capacity(), 0);
    }
}
