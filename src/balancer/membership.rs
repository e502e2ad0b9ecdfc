//! Who is in the pool. A watcher thread looks a few times a second at the servers file and at
//! the servers joined over the network (the admin listener): a server that appears joins, one
//! that disappears drains and leaves. A server that is listed but not in the pool (new, or its
//! connection broke) is reconnected: the watcher sends an attempt down a channel to one of
//! [`RECONNECTORS`] threads, which connects, checks that the server answers and sends the
//! outcome back; after a failure the watcher waits longer (capped exponential backoff) before
//! the next attempt. So every listed server is tried again and again, however many there are,
//! by a fixed number of threads. At most `--max-servers` servers are listed at once. The
//! balancer keeps one connection per worker of a server; a connection that broke, or sent what
//! no request asked for, is re-probed on a new connection ([`reprobe`]) while its server stays
//! in the pool; if that probe fails the connection is dropped, and a server in the pool with
//! fewer connections than workers is topped up like a server being reconnected. A server is
//! down when its last connection is gone.
//!
//! A server's states: **up** (in the pool, idle or busy), **draining** (finishing its requests
//! in flight, then leaving), **down** (listed, not in the pool, being reconnected).

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::balancer::backend::{Backend, BackendConn};
use crate::balancer::Balancer;
use crate::gauge::Held;
use crate::idle_queue::{Lease, Membership};
use crate::protocol::{Line, ReplyHeader};
use crate::servers_file::{self, ServerEntry};
use crate::tls::Connector;

/// How often the servers file is read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// First wait before reconnecting to a server that went down; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Reconnector threads: most servers being (re)connected at once.
pub const RECONNECTORS: usize = 16;
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The request that checks a (re)connected server really answers: a hung process still
/// completes TCP handshakes, so a connection alone proves nothing.
const PROBE: &[u8] = b"SELECT 1\n";

/// A listed server, as the watcher last saw it.
struct Known {
    backend: Arc<Backend>,
    /// Set when the server leaves the list, so an attempt in flight does not add it.
    cancelled: Arc<AtomicBool>,
    /// Whether an attempt to connect it is queued or being made.
    attempting: bool,
    /// Attempts that failed in a row.
    failures: u32,
    /// When the next attempt may start (after the backoff of the last failure).
    next_try: Instant,
    /// Whether it was in the pool at the last look (to log a fall once).
    was_up: bool,
    /// Whether it was missing from the list at the last look. A server leaves only when it
    /// is missing twice in a row: on a Ctrl-C that reaches the whole cluster, a server takes
    /// itself off the list at once, and the balancer must see its own Ctrl-C first so that
    /// the requests queued for that server are still answered.
    missing: bool,
}

impl Drop for Known {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
}

/// One attempt to connect a server, carried to a reconnector thread.
struct Attempt {
    backend: Arc<Backend>,
    cancelled: Arc<AtomicBool>,
    /// Attempts that failed before this one.
    failures: u32,
}

/// What an attempt found, carried back to the watcher.
struct Outcome {
    backend: Arc<Backend>,
    reached: bool,
}

/// Keeps the idle queue's membership in line with the servers file and the joined servers.
pub struct Watcher {
    lb: Arc<Balancer>,
    known: HashMap<u32, Known>,
    /// The servers file as last read well, kept when a later read fails.
    last_file: Vec<ServerEntry>,
    last_error: Option<String>,
    /// How many listed servers `--max-servers` left out at the last look (to warn once).
    left_out: usize,
    /// Carries attempts to the reconnector threads; they stop when it is dropped.
    attempts: Sender<Attempt>,
    /// Carries the outcomes of attempts back.
    outcomes: Receiver<Outcome>,
    /// Servers draining, to say once when each has left.
    draining: HashSet<u32>,
}

impl Watcher {
    /// A watcher for `lb`, with its reconnector threads started.
    ///
    /// # Errors
    /// A message when a thread cannot be started.
    pub fn new(lb: Arc<Balancer>) -> Result<Self, String> {
        let (attempts, to_do) = crossbeam_channel::unbounded::<Attempt>();
        let (done, outcomes) = crossbeam_channel::unbounded();
        for i in 0..RECONNECTORS {
            let (to_do, done) = (to_do.clone(), done.clone());
            spawn_prober(&lb, format!("reconnect-{i}"), move |lb| {
                // Ends when the watcher, and with it the sending side, is gone.
                for attempt in to_do {
                    let Attempt {
                        backend,
                        cancelled,
                        failures,
                    } = attempt;
                    let reached = reconnect(lb, &backend, &cancelled, failures);
                    let _ = done.send(Outcome { backend, reached });
                }
            })
            .map_err(|e| format!("cannot start a reconnector thread: {e}"))?;
        }
        Ok(Watcher {
            lb,
            known: HashMap::new(),
            last_file: Vec::new(),
            last_error: None,
            left_out: 0,
            attempts,
            outcomes,
            draining: HashSet::new(),
        })
    }

    /// Polls every [`POLL_INTERVAL`] until `stop` is closed (or carries a message); its
    /// reconnector threads end once their attempt in hand is done.
    pub fn run(mut self, stop: &Receiver<()>) {
        // Carries a tick every POLL_INTERVAL: time for the next look.
        let ticks = crossbeam_channel::tick(POLL_INTERVAL);
        loop {
            self.poll();
            crossbeam_channel::select! {
                recv(ticks) -> _ => {}
                recv(stop) -> _ => return,
            }
        }
    }

    /// One look: join new servers, drain removed ones, start reconnecting lost ones.
    pub fn poll(&mut self) {
        for outcome in self.outcomes.try_iter() {
            let id = outcome.backend.id;
            // An outcome for a server that has left the list, or is listed anew, is stale.
            let Some(known) = self
                .known
                .get_mut(&id)
                .filter(|k| Arc::ptr_eq(&k.backend, &outcome.backend))
            else {
                continue;
            };
            known.attempting = false;
            if outcome.reached {
                known.failures = 0;
            } else {
                known.failures = known.failures.saturating_add(1);
                known.next_try = Instant::now() + backoff(known.failures);
            }
        }
        let listed = self.listed();
        let lb = Arc::clone(&self.lb);
        let queue = &lb.queue;
        // Servers gone from the list, or listed again with other settings: drain them.
        let stats = &lb.stats;
        self.draining.retain(|id| {
            let left = queue.membership(*id).is_none();
            if left {
                log::info!("server {id} removed: its last request is done");
            }
            !left
        });
        let mut gone = Vec::new();
        self.known.retain(|id, known| {
            match listed.get(id) {
                Some(b) if b.same_settings(&known.backend) => {
                    known.missing = false;
                    return true;
                }
                None if !known.missing => {
                    known.missing = true;
                    return true;
                }
                // Gone a second time, or listed anew with other settings.
                _ => {}
            }
            stats.forget(*id);
            gone.push(*id);
            false
        });
        for id in gone {
            self.retire(id);
        }
        for (id, backend) in listed {
            let known = self.known.entry(id).or_insert_with(|| {
                let backend = Arc::new(backend);
                stats.list(Arc::clone(&backend));
                Known {
                    backend,
                    cancelled: Arc::new(AtomicBool::new(false)),
                    attempting: false,
                    failures: 0,
                    next_try: Instant::now(),
                    was_up: false,
                    missing: false,
                }
            });
            match queue.membership(id) {
                Some(Membership::Active) => {
                    known.was_up = true;
                    if queue.connections(id) >= known.backend.workers {
                        continue;
                    }
                }
                // Its old self is finishing its requests; reconnect once it has left.
                Some(Membership::Draining) => continue,
                None if known.was_up => {
                    known.was_up = false;
                    log::warn!("server {id} is down; reconnecting in the background");
                }
                None => {}
            }
            if !known.attempting && Instant::now() >= known.next_try {
                let attempt = Attempt {
                    backend: Arc::clone(&known.backend),
                    cancelled: Arc::clone(&known.cancelled),
                    failures: known.failures,
                };
                // One attempt per server at a time, so the channel holds at most one per
                // listed server.
                known.attempting = self.attempts.send(attempt).is_ok();
            }
        }
        // A reconnector may have added its server just as the server left the list.
        for (id, state) in queue.snapshot().members {
            if state == Membership::Active && !self.known.contains_key(&id) {
                self.retire(id);
            }
        }
    }

    /// Takes server `id` out of rotation, saying so once: removed at once if idle, else
    /// draining until its request in flight completes (then `poll` says it was removed).
    fn retire(&mut self, id: u32) {
        let queue = &self.lb.queue;
        if !queue.retire(id) {
            return;
        }
        if queue.membership(id).is_some() {
            log::info!("server {id} left the list: draining (its requests in flight complete)");
            self.draining.insert(id);
        } else {
            log::info!("server {id} left the list: removed");
        }
    }

    /// Every listed server: the servers file's, then those joined over the network, up to
    /// `--max-servers`. A second entry with an id or address already listed is ignored, so no
    /// server is in the pool twice.
    fn listed(&mut self) -> HashMap<u32, Backend> {
        let path = &self.lb.config.servers_file;
        match servers_file::read(path) {
            Ok(entries) => {
                self.last_file = entries;
                self.last_error = None;
            }
            Err(e) => {
                // Keep the last good list rather than drain every server over a bad edit.
                let e = format!("cannot read servers file {}: {e}", path.display());
                if self.last_error.as_ref() != Some(&e) {
                    log::warn!("{e}; keeping the servers already known");
                    self.last_error = Some(e);
                }
            }
        }
        let mut entries = self.last_file.clone();
        entries.extend(self.lb.joined.lock().values().cloned());
        let mut listed = Vec::new();
        let (mut ids, mut addresses) = (HashSet::new(), HashSet::new());
        for entry in entries {
            let backend = Backend::from_entry(&entry);
            if !ids.insert(backend.id) || !addresses.insert(backend.addr.clone()) {
                log::debug!(
                    "ignoring a second entry for server {} at {}",
                    backend.id,
                    backend.addr
                );
                continue;
            }
            listed.push(backend);
        }
        let max = self.lb.config.max_servers;
        let left_out = listed.len().saturating_sub(max);
        if left_out > 0 {
            // Servers already in the pool keep their places: a newcomer never pushes one out.
            listed.sort_by_key(|b| !self.known.contains_key(&b.id));
            listed.truncate(max);
            if left_out != self.left_out {
                log::warn!(
                    "{} servers are listed, more than --max-servers {max}: ignoring {left_out} of them; remove them from {} or raise --max-servers",
                    max + left_out,
                    path.display()
                );
            }
        }
        self.left_out = left_out;
        listed.into_iter().map(|b| (b.id, b)).collect()
    }
}

/// The wait before the next attempt after `failures` failures in a row: [`FIRST_BACKOFF`],
/// doubling up to [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF * (1 << doublings)).min(MAX_BACKOFF)
}

/// One attempt to bring a server back: connect each of its workers that has no connection,
/// check that the server answers on each, add them to the pool. `failures` counts the attempts
/// that failed before, for the log. Returns whether the server answered.
fn reconnect(lb: &Balancer, backend: &Arc<Backend>, cancelled: &AtomicBool, failures: u32) -> bool {
    if cancelled.load(Ordering::SeqCst) || lb.stopping.load(Ordering::SeqCst) {
        return false;
    }
    let missing = backend
        .workers
        .saturating_sub(lb.queue.connections(backend.id));
    match connect_and_probe(lb, backend, missing) {
        Ok(conns) => {
            if cancelled.load(Ordering::SeqCst) {
                return true;
            }
            let joins = lb.queue.membership(backend.id).is_none();
            let added = conns
                .into_iter()
                .map(|conn| lb.queue.add(Arc::clone(backend), conn))
                .filter(|added| *added)
                .count();
            if joins && added > 0 {
                log::info!(
                    "Connected to server {} at {} (processing time {} s, {} worker(s)){}",
                    backend.id,
                    backend.addr,
                    backend.processing_time.as_secs_f64(),
                    backend.workers,
                    if failures > 0 {
                        format!(" after {failures} failed attempt(s)")
                    } else {
                        String::new()
                    }
                );
            }
            true
        }
        Err(e) => {
            let message = format!(
                "cannot reach server {} at {}: {e}; next try in {:.1} s",
                backend.id,
                backend.addr,
                backoff(failures + 1).as_secs_f64()
            );
            // The first failure is news; the rest are the same story.
            if failures == 0 {
                log::warn!("{message}");
            } else {
                log::debug!("{message}");
            }
            false
        }
    }
}

/// Closes a worker's connection that can no longer be trusted (it broke, or the server's
/// replies are out of step with the requests) and probes the server on a new one, in the
/// background. Meanwhile the worker stays counted, busy, so requests wait for it rather than
/// find no server up; if the probe fails the connection is dropped (the server is down with
/// its last). At most one thread per connection (this takes its lease).
pub fn reprobe(lb: &Arc<Balancer>, lease: Lease<'_, BackendConn>) {
    let (backend, old) = lease.set_aside();
    drop(old);
    // Busy with no client's request: the dashboard must not show the ended one in progress.
    backend.current_request.store(0, Ordering::Relaxed);
    let id = backend.id;
    let probed = Arc::clone(&backend);
    let spawned = spawn_prober(
        lb,
        format!("reprobe-{id}"),
        move |lb| match connect_and_probe(lb, &probed, 1) {
            Ok(conns) => {
                log::info!(
                    "Connected to server {id} at {} again: it answered the re-probe",
                    probed.addr
                );
                for conn in conns {
                    lb.queue.give_back(Arc::clone(&probed), conn);
                }
            }
            Err(e) if lb.queue.drop_connection(&probed) => {
                log::warn!("server {id} is down: the re-probe failed ({e})");
            }
            Err(e) => {
                log::warn!("server {id}: a worker's re-probe failed ({e}); dropped its connection");
            }
        },
    );
    if let Err(e) = spawned {
        log::error!("cannot start a thread to re-probe server {id}: {e}; dropping that connection");
        lb.queue.drop_connection(&backend);
    }
}

/// Starts a thread that talks to servers (a reconnector, a re-probe), counted in
/// `lb.probing` until it ends, so that shutting down can wait for it.
fn spawn_prober(
    lb: &Arc<Balancer>,
    name: String,
    f: impl FnOnce(&Arc<Balancer>) + Send + 'static,
) -> io::Result<()> {
    lb.probing.fetch_add(1, Ordering::SeqCst);
    let prober = Arc::clone(lb);
    let spawned = std::thread::Builder::new()
        .name(name)
        .stack_size(128 * 1024)
        .spawn(move || {
            let _held = Held::adopt(&prober.probing);
            f(&prober);
        });
    if spawned.is_err() {
        // The closure, and the unit it would have adopted, never ran.
        lb.probing.fetch_sub(1, Ordering::SeqCst);
    }
    spawned.map(drop)
}

/// `n` new connections to `backend`, each of which has answered [`PROBE`]. The probes are
/// all sent before any reply is read, so a server with `n` workers answers them together.
fn connect_and_probe(lb: &Balancer, backend: &Backend, n: usize) -> io::Result<Vec<BackendConn>> {
    let reply_timeout = lb.config.server_timeout + backend.processing_time;
    let tls = match (backend.tls, &lb.config.backend_tls) {
        (false, _) => None,
        (true, Some(config)) => {
            Some(Connector::new(config, &backend.addr).map_err(io::Error::other)?)
        }
        (true, None) => {
            return Err(io::Error::other(
                "it speaks TLS, and the balancer has no --backend-ca to verify its certificate",
            ))
        }
    };
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut conn = BackendConn::connect(backend, CONNECT_TIMEOUT, reply_timeout, tls.as_ref())?;
        conn.writer.write_all(PROBE)?;
        conns.push(conn);
    }
    for conn in &mut conns {
        read_probe_reply(conn)?;
    }
    Ok(conns)
}

/// Reads the whole reply to [`PROBE`]: the server is alive and speaks the protocol.
fn read_probe_reply(conn: &mut BackendConn) -> io::Result<()> {
    let mut header = Vec::new();
    if conn.read_header(&mut header)? != Line::Complete {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed the connection instead of answering",
        ));
    }
    let reply =
        ReplyHeader::parse(&header).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let length = reply.body_length();
    let read = io::copy(
        &mut io::Read::take(&mut conn.reader, length),
        &mut io::sink(),
    )?;
    if read < length {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "reply cut short",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let waits: Vec<u128> = (1..=6).map(|f| backoff(f).as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
