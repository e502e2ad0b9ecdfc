//! The accept loop: one thread per client, up to `--max-clients`, for clients in the `--allow`
//! list. A thread whose client left waits a moment for the next one, so that a connection per
//! request does not start and end a thread each time.
//!
//! Running out of descriptors is planned for (as HAProxy and nginx do): the loop keeps a spare,
//! and when accept() fails for want of one it closes the spare, accepts the waiting client and
//! tells it `ERR busy`, rather than leave it in the backlog and spin on the same error.

use std::fs::File;
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::balancer::session;
use crate::balancer::shared::Balancer;
use crate::cidr;
use crate::error::{Code, Error};
use crate::gauge::Held;
use crate::tls::Acceptor;

/// Stack of a client thread: a session keeps its buffers on the heap, so 10,000 clients fit.
const CLIENT_STACK: usize = 128 * 1024;
/// How long writing a refusal to a turned-away client may block the accept loop.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the loop rests after a failed accept, so it never spins.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// Most client threads waiting for a next client (per listener), and how long each waits.
const MAX_PARKED: usize = 64;
const PARK_TIME: Duration = Duration::from_secs(5);

/// The client threads waiting for a next client.
struct Parked {
    /// Carries an admitted client to a waiting thread (no capacity: `try_send` succeeds only
    /// when one waits). Dropped when the loop ends, which ends the waits.
    hand: Sender<TcpStream>,
    take: Receiver<TcpStream>,
    /// Threads waiting, at most [`MAX_PARKED`].
    waiting: Arc<AtomicUsize>,
}

/// Accepts clients (with `tls`: TLS clients) until the balancer stops; then admits those
/// already in the backlog (they connected before Ctrl-C and get their replies).
pub(crate) fn accept_loop(lb: &Arc<Balancer>, listener: TcpListener, tls: Option<Acceptor>) {
    let (hand, take) = crossbeam_channel::bounded(0);
    let parked = Parked { hand, take, waiting: Arc::default() };
    let admit = |lb: &Arc<Balancer>, stream| admit(lb, stream, tls.as_ref(), &parked);
    // Says both what it listens on and who may connect: "every address" alone read as 0.0.0.0.
    let on = listener.local_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
    let from = cidr::describe(&lb.config.networks);
    log::info!("Accepting clients on {on} from {from} (--allow)");
    let mut spare = File::open("/dev/null").ok();
    while !lb.stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => admit(lb, stream),
            Err(e) if out_of_descriptors(&e) => {
                drop(spare.take());
                let waiting = listener.accept();
                spare = File::open("/dev/null").ok();
                // accept() fails at once on a full table, client or not: this one may come
                // long after descriptors freed up, so it is turned away only if still short.
                match waiting {
                    Ok((stream, _)) if spare.is_some() => admit(lb, stream),
                    Ok((stream, _)) => {
                        log::warn!("out of file descriptors ({e}): turned a client away");
                        let busy =
                            Code::Busy.msg("the load balancer is overloaded; try again later");
                        turn_away(stream, &busy);
                    }
                    Err(_) => std::thread::sleep(ACCEPT_PAUSE),
                }
                // Turning a client away freed a descriptor; with none free, let clients leave.
                spare = spare.or_else(|| File::open("/dev/null").ok());
                if spare.is_none() {
                    std::thread::sleep(ACCEPT_PAUSE);
                }
            }
            Err(e) => {
                log::warn!("accept failed: {e}");
                std::thread::sleep(ACCEPT_PAUSE);
            }
        }
    }
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    // Until WouldBlock: the backlog is empty (or accept fails, and the rest are let go).
    while let Ok((stream, _)) = listener.accept() {
        if stream.set_nonblocking(false).is_ok() {
            admit(lb, stream);
        }
    }
}

/// Whether accept() failed for want of a descriptor (in this process or the system).
fn out_of_descriptors(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(Errno::from_io_error(e), Some(Errno::MFILE | Errno::NFILE))
}

/// Starts (or wakes) a session thread for a client, or turns it away with no thread:
/// `ERR forbidden` when its address is not allowed, `ERR busy` when there are too many.
fn admit(lb: &Arc<Balancer>, stream: TcpStream, tls: Option<&Acceptor>, parked: &Parked) {
    let _ = stream.set_nodelay(true);
    // A client whose address cannot be read has already gone; with an allow list it is refused.
    let peer = stream.peer_addr().ok();
    if !peer.is_some_and(|p| cidr::permits(&lb.config.networks, p.ip())) {
        let who = peer.map_or_else(|| "a client".to_string(), |p| p.to_string());
        log::warn!("refused {who}: not in the --allow list");
        turn_away(stream, &Code::Forbidden.msg("your address may not use this load balancer"));
        return;
    }
    let max = lb.config.max_clients;
    // Counted here, in the accept thread, so that no burst slips past the limit.
    if lb.clients.fetch_add(1, Ordering::SeqCst) >= max {
        lb.clients.fetch_sub(1, Ordering::SeqCst);
        log::warn!("refused a client: {max} clients already connected (--max-clients)");
        turn_away(stream, &Code::Busy.msg(format!("too many clients ({max}); try again later")));
        return;
    }
    let Err(handed) = parked.hand.try_send(stream) else {
        return;
    };
    let mut stream = handed.into_inner();
    let session_lb = Arc::clone(lb);
    let tls = tls.cloned();
    let (take, waiting) = (parked.take.clone(), Arc::clone(&parked.waiting));
    let spawned = std::thread::Builder::new().name("client".into()).stack_size(CLIENT_STACK).spawn(
        move || loop {
            // Each client's unit of `clients` was added by `admit`.
            let client = Held::adopt(&session_lb.clients);
            session::serve_client(&session_lb, stream, tls.as_ref());
            drop(client);
            if waiting.fetch_add(1, Ordering::SeqCst) >= MAX_PARKED {
                waiting.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            let next = take.recv_timeout(PARK_TIME);
            waiting.fetch_sub(1, Ordering::SeqCst);
            match next {
                Ok(next) => stream = next,
                Err(_) => return,
            }
        },
    );
    if let Err(e) = spawned {
        // The closure, and the unit it would have adopted, never ran.
        lb.clients.fetch_sub(1, Ordering::SeqCst);
        log::error!("cannot start a thread for a client: {e}");
    }
}

/// Sends a refusal and closes: a fresh connection's send buffer is empty, so the short write
/// does not block the accept loop, and the timeout makes sure of it.
fn turn_away(mut stream: TcpStream, e: &Error) {
    let _ = stream.set_write_timeout(Some(REFUSAL_WRITE_TIMEOUT));
    let _ = stream.write_all(e.header_line().as_bytes());
}
