//! Active health checks, as HAProxy's default `check`: every `--check-interval` a TCP connect
//! to each server in the pool, which costs the server no worker (no request is sent). After
//! `--check-fall` misses in a row the server is down: it leaves the pool, and the requests
//! waiting on its replies are released at once ([`Backend::break_connections`]), so a read is
//! retried on another server within seconds of a link going dead, whatever
//! `--server-timeout` says. It comes back through the reconnect path ([`super::membership`]).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};

use crate::balancer::backend::Backend;
use crate::balancer::Balancer;
use crate::idle_queue::Membership;

/// Servers checked at once: a round with dead servers takes a connect timeout per batch.
const BATCH: usize = 16;

/// Checks the servers in the pool every `--check-interval` until `stop` is closed.
pub(crate) fn run(lb: &Balancer, stop: &Receiver<()>) {
    // Carries a tick every check interval: time for the next round.
    let ticks = crossbeam_channel::tick(lb.config.check_interval);
    // Checks missed in a row, by server id, for the servers in the pool.
    let mut misses: HashMap<u32, u32> = HashMap::new();
    loop {
        crossbeam_channel::select! {
            recv(ticks) -> _ => {}
            recv(stop) -> _ => return,
        }
        let active: HashSet<u32> = (lb.queue.snapshot().members.into_iter())
            .filter(|(_, m)| *m == Membership::Active)
            .map(|(id, _)| id)
            .collect();
        let servers: Vec<Arc<Backend>> = (lb.stats.servers().into_iter())
            .filter(|b| active.contains(&b.id))
            .collect();
        misses.retain(|id, _| active.contains(id));
        for batch in servers.chunks(BATCH) {
            if stop.try_recv() != Err(TryRecvError::Empty) {
                return;
            }
            let timeout = lb.config.check_interval;
            let results: Vec<io::Result<()>> = std::thread::scope(|s| {
                let checks: Vec<_> = (batch.iter())
                    .map(|b| {
                        let thread = std::thread::Builder::new().stack_size(64 * 1024);
                        thread.spawn_scoped(s, move || reachable(&b.addr, timeout))
                    })
                    .collect();
                // A check that could not run (no thread left) is no news.
                (checks.into_iter())
                    .map(|c| c.ok().and_then(|c| c.join().ok()).unwrap_or(Ok(())))
                    .collect()
            });
            for (backend, result) in batch.iter().zip(results) {
                let missed = misses.entry(backend.id).or_default();
                match result {
                    Ok(()) => *missed = 0,
                    Err(e) => {
                        *missed += 1;
                        log::debug!("server {}: health check {missed} missed: {e}", backend.id);
                        if *missed == lb.config.check_fall {
                            take_down(lb, backend, &e);
                        }
                    }
                }
            }
        }
    }
}

/// Whether a TCP connection to `addr` opens within `timeout` (closed at once).
fn reachable(addr: &str, timeout: Duration) -> io::Result<()> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the address does not resolve");
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Takes a server that failed its checks out of the pool and releases the requests waiting
/// on it: each session sees its connection broken and retries as for any broken connection.
fn take_down(lb: &Balancer, backend: &Backend, why: &io::Error) {
    log::warn!(
        "server {} is down: {} health checks in a row failed (last: {why}); taking it out of the pool",
        backend.id,
        lb.config.check_fall
    );
    lb.queue.retire(backend.id);
    // `retire` closed its idle connections: those left carry requests (or a re-probe).
    let released = backend.break_connections();
    if released > 0 {
        log::warn!(
            "server {}: {released} request(s) waiting on its reply released, to be retried",
            backend.id
        );
    }
}
