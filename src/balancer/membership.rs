//! Who is in the pool. A watcher thread reads the servers file and the servers joined over the
//! network a few times a second: a server that appears joins, one that disappears drains and
//! leaves. A listed server not in the pool, or with fewer connections than workers, is
//! (re)connected by one of [`RECONNECTORS`] threads, which connects, checks that it answers
//! and sends the outcome back; each failure in a row doubles the wait before the next attempt
//! (up to [`MAX_BACKOFF`]). A worker's connection that broke, or sent what no request asked
//! for, is re-probed on a new connection ([`reprobe`]) and dropped if that fails; a server is
//! down with its last connection.
//!
//! Health checks ([`check_health`], as HAProxy's `check`): every `--check-interval` a TCP
//! connect to each server in the pool, which costs it no worker. After `--check-fall` misses in
//! a row it is down: out of the pool, and the requests waiting on its replies are released at
//! once to be retried elsewhere, whatever `--server-timeout` says.
//!
//! A server is **up** (in the pool, idle or busy), **draining** (finishing its requests in
//! flight, then leaving) or **down** (listed, not in the pool, being reconnected).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::balancer::backend::{Backend, BackendConn};
use crate::balancer::shared::Balancer;
use crate::gauge::Held;
use crate::idle_queue::{Lease, Membership};
use crate::protocol::{Line, ReplyHeader};
use crate::servers_file::{self, ServerEntry};
use crate::tls::Connector;

/// How often the servers file is read.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Most servers being (re)connected at once.
const RECONNECTORS: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The request that checks a (re)connected server really answers: a hung process still
/// completes TCP handshakes, so a connection alone proves nothing.
const PROBE: &[u8] = b"SELECT 1\n";
/// Servers health-checked at once: a round with dead servers takes a connect timeout per batch.
const BATCH: usize = 16;

/// A listed server, as the watcher last saw it.
struct Known {
    backend: Arc<Backend>,
    /// Set when the server leaves the list, so an attempt in flight does not add it.
    cancelled: Arc<AtomicBool>,
    /// Attempts that failed in a row, and when the next may start (`None`: one is under way,
    /// so the attempts channel holds at most one per server).
    failures: u32,
    next_try: Option<Instant>,
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

/// One attempt for a reconnector: the server, its `cancelled` flag, the failures before.
type Attempt = (Arc<Backend>, Arc<AtomicBool>, u32);

/// Keeps the idle queue's membership in line with the servers file and the joined servers.
pub(crate) struct Watcher {
    lb: Arc<Balancer>,
    known: HashMap<u32, Known>,
    /// The servers file as last read well (kept when a later read fails), and that failure.
    last_file: Vec<ServerEntry>,
    last_error: Option<String>,
    /// How many listed servers `--max-servers` left out at the last look (to warn once).
    left_out: usize,
    /// Carries attempts to the reconnector threads; they stop when it is dropped.
    attempts: Sender<Attempt>,
    /// Carries back each attempt's server and whether it was reached.
    outcomes: Receiver<(Arc<Backend>, bool)>,
    /// Servers draining, to say once when each has left.
    draining: HashSet<u32>,
}

impl Watcher {
    /// A watcher for `lb`, with its reconnector threads started.
    pub(crate) fn new(lb: Arc<Balancer>) -> Result<Self, String> {
        let (attempts, to_do) = crossbeam_channel::unbounded::<Attempt>();
        let (done, outcomes) = crossbeam_channel::unbounded();
        for i in 0..RECONNECTORS {
            let (to_do, done) = (to_do.clone(), done.clone());
            spawn_prober(&lb, format!("reconnect-{i}"), move |lb| {
                for (backend, cancelled, failures) in to_do {
                    let reached = reconnect(lb, &backend, &cancelled, failures);
                    let _ = done.send((backend, reached));
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

    /// Looks every [`POLL_INTERVAL`] until `stop` is closed.
    pub(crate) fn run(mut self, stop: &Receiver<()>) {
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
    fn poll(&mut self) {
        for (backend, reached) in self.outcomes.try_iter() {
            // An outcome for a server that has left the list, or is listed anew, is stale.
            let Some(known) =
                (self.known.get_mut(&backend.id)).filter(|k| Arc::ptr_eq(&k.backend, &backend))
            else {
                continue;
            };
            let failed = known.failures.saturating_add(1);
            known.failures = if reached { 0 } else { failed };
            known.next_try = Some(Instant::now() + backoff(known.failures));
        }
        let listed = self.listed();
        let lb = Arc::clone(&self.lb);
        let (queue, stats) = (&lb.queue, &lb.stats);
        self.draining.retain(|id| {
            let left = queue.membership(*id).is_none();
            if left {
                log::info!("server {id} removed: its last request is done");
            }
            !left
        });
        // Servers gone from the list (twice), or listed again with other settings: drain them.
        let mut gone = Vec::new();
        self.known.retain(|id, known| {
            match listed.get(id) {
                Some(b) if b.same_settings(&known.backend) => known.missing = false,
                None if !known.missing => known.missing = true,
                _ => {
                    stats.forget(*id);
                    gone.push(*id);
                    return false;
                }
            }
            true
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
                    cancelled: Arc::default(),
                    failures: 0,
                    next_try: Some(Instant::now()),
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
            if known.next_try.is_some_and(|t| t <= Instant::now()) {
                known.next_try = None;
                let (backend, cancelled) = (&known.backend, &known.cancelled);
                let attempt = (Arc::clone(backend), Arc::clone(cancelled), known.failures);
                // Fails only if every reconnector is gone, and then no attempt can be made.
                let _ = self.attempts.send(attempt);
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
    /// draining until its requests in flight complete (then `poll` says it was removed).
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
        let joined = self.lb.joined.lock().values().cloned().collect::<Vec<_>>();
        let mut listed = Vec::new();
        let (mut ids, mut addresses) = (HashSet::new(), HashSet::new());
        for entry in self.last_file.iter().chain(&joined) {
            let b = Backend::from_entry(entry);
            if ids.insert(b.id) && addresses.insert(b.addr.clone()) {
                listed.push(b);
            } else {
                log::debug!("ignoring a second entry for server {} at {}", b.id, b.addr);
            }
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

/// The wait before the next attempt after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => (FIRST_BACKOFF * (1 << (n - 1).min(16))).min(MAX_BACKOFF),
    }
}

/// One attempt to bring a server back: connect each of its workers that has no connection,
/// check that it answers on each, add them to the pool. Returns whether the server answered.
fn reconnect(lb: &Balancer, backend: &Arc<Backend>, cancelled: &AtomicBool, failures: u32) -> bool {
    if cancelled.load(Ordering::SeqCst) || lb.stopping.load(Ordering::SeqCst) {
        return false;
    }
    let missing = backend.workers.saturating_sub(lb.queue.connections(backend.id));
    let conns = match connect_and_probe(lb, backend, missing) {
        Ok(conns) => conns,
        Err(e) => {
            // The first failure is news; the rest are the same story.
            let level = match failures {
                0 => log::Level::Warn,
                _ => log::Level::Debug,
            };
            log::log!(
                level,
                "cannot reach server {} at {}: {e}; next try in {:.1} s",
                backend.id,
                backend.addr,
                backoff(failures + 1).as_secs_f64()
            );
            return false;
        }
    };
    if cancelled.load(Ordering::SeqCst) {
        return true;
    }
    let joins = lb.queue.membership(backend.id).is_none();
    let added = conns
        .into_iter()
        .map(|conn| lb.queue.add(Arc::clone(backend), conn))
        .filter(|&added| added)
        .count();
    if joins && added > 0 {
        let (id, addr, workers) = (backend.id, &backend.addr, backend.workers);
        let secs = backend.processing_time.as_secs_f64();
        let after = match failures {
            0 => String::new(),
            n => format!(" after {n} failed attempt(s)"),
        };
        log::info!("Connected to server {id} at {addr} (processing time {secs} s, {workers} worker(s)){after}");
    }
    true
}

/// Closes a worker's connection that can no longer be trusted and probes the server on a new
/// one, in the background. Meanwhile the worker stays counted, busy, so requests wait for it
/// rather than find no server up. At most one thread per connection (this takes its lease).
pub(crate) fn reprobe(lb: &Arc<Balancer>, lease: Lease<'_, BackendConn>) {
    let (backend, old) = lease.set_aside();
    drop(old);
    // Busy with no client's request: the dashboard must not show the ended one in progress.
    backend.current_request.store(0, Ordering::Relaxed);
    let id = backend.id;
    let probed = Arc::clone(&backend);
    let spawned = spawn_prober(lb, format!("reprobe-{id}"), move |lb| {
        match connect_and_probe(lb, &probed, 1) {
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
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start a thread to re-probe server {id}: {e}; dropping that connection");
        lb.queue.drop_connection(&backend);
    }
}

/// Starts a thread that talks to servers, counted in `lb.probing` so shutting down can wait.
fn spawn_prober(
    lb: &Arc<Balancer>,
    name: String,
    f: impl FnOnce(&Arc<Balancer>) + Send + 'static,
) -> io::Result<()> {
    lb.probing.fetch_add(1, Ordering::SeqCst);
    let prober = Arc::clone(lb);
    let spawned = std::thread::Builder::new().name(name).stack_size(128 * 1024).spawn(move || {
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
    let cut = |why: &str| io::Error::new(io::ErrorKind::UnexpectedEof, why.to_string());
    let mut header = Vec::new();
    if conn.read_header(&mut header)? != Line::Complete {
        return Err(cut("closed the connection instead of answering"));
    }
    let reply =
        ReplyHeader::parse(&header).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let length = reply.body_length();
    if io::copy(&mut (&mut conn.reader).take(length), &mut io::sink())? < length {
        return Err(cut("reply cut short"));
    }
    Ok(())
}

/// Health-checks the servers in the pool every `--check-interval` until `stop` is closed.
pub(crate) fn check_health(lb: &Balancer, stop: &Receiver<()>) {
    // Carries a tick every check interval: time for the next round.
    let ticks = crossbeam_channel::tick(lb.config.check_interval);
    // Checks missed in a row, by server id, for the servers in the pool.
    let mut misses: HashMap<u32, u32> = HashMap::new();
    loop {
        crossbeam_channel::select! {
            recv(ticks) -> _ => {}
            recv(stop) -> _ => return,
        }
        let servers: Vec<Arc<Backend>> = (lb.stats.servers().into_iter())
            .filter(|b| lb.queue.membership(b.id) == Some(Membership::Active))
            .collect();
        misses.retain(|id, _| servers.iter().any(|b| b.id == *id));
        for batch in servers.chunks(BATCH) {
            if stop.try_recv() != Err(TryRecvError::Empty) {
                return;
            }
            let timeout = lb.config.check_interval;
            std::thread::scope(|s| {
                let checks: Vec<_> = (batch.iter())
                    .map(|b| {
                        let thread = std::thread::Builder::new().stack_size(64 * 1024);
                        let check = move || servers_file::connect(&b.addr, timeout).map(drop);
                        (b, thread.spawn_scoped(s, check))
                    })
                    .collect();
                for (backend, check) in checks {
                    let missed = misses.entry(backend.id).or_default();
                    // A check that could not run (no thread left) is no news.
                    match check.ok().and_then(|c| c.join().ok()) {
                        Some(Err(e)) => {
                            *missed += 1;
                            log::debug!("server {}: health check {missed} missed: {e}", backend.id);
                            if *missed == lb.config.check_fall {
                                take_down(lb, backend, &e);
                            }
                        }
                        _ => *missed = 0,
                    }
                }
            });
        }
    }
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
