//! Who is in the pool. A watcher thread reads the servers file and the servers joined over the
//! network a few times a second: a server that appears joins, one that disappears drains and
//! leaves. A listed server not in the pool, or with fewer connections than workers, is
//! (re)connected by one of [`RECONNECTORS`] threads, which connects, checks that it answers
//! and sends the connections back: only the watcher adds servers to the pool, so one that has
//! left the list meanwhile is not added. Each failure in a row doubles the wait before the next
//! attempt (up to [`MAX_BACKOFF`]). A worker's connection that broke, or sent what no request
//! asked for, is re-probed on a new connection ([`reprobe`]) and dropped if that fails; a
//! server is down with its last connection.
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
    /// Set when the server leaves the list, so that an attempt not yet started is skipped.
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

/// Keeps the idle queue's membership in line with the servers file and the joined servers.
pub(crate) struct Watcher {
    lb: Arc<Balancer>,
    known: HashMap<u32, Known>,
    /// The servers file as last read well (kept when a later read fails).
    last_file: Vec<ServerEntry>,
    /// The warnings of the last look: each is logged when it appears, not again while it lasts.
    warned: Vec<String>,
    /// Carries attempts (a server, its `cancelled` flag) to the reconnector threads; they stop
    /// when it is dropped.
    attempts: Sender<(Arc<Backend>, Arc<AtomicBool>)>,
    /// Carries back each attempt's server and its new connections, each of which has answered.
    outcomes: Receiver<(Arc<Backend>, io::Result<Vec<BackendConn>>)>,
    /// Servers draining, to say once when each has left.
    draining: HashSet<u32>,
}

impl Watcher {
    /// A watcher for `lb`, with its reconnector threads started.
    pub(crate) fn new(lb: Arc<Balancer>) -> Result<Self, String> {
        let (attempts, to_do) = crossbeam_channel::unbounded::<(Arc<Backend>, Arc<AtomicBool>)>();
        let (done, outcomes) = crossbeam_channel::unbounded();
        for i in 0..RECONNECTORS {
            let (to_do, done) = (to_do.clone(), done.clone());
            spawn_prober(&lb, format!("reconnect-{i}"), move |lb| {
                for (backend, cancelled) in to_do {
                    if cancelled.load(Ordering::SeqCst) || lb.stopping.load(Ordering::SeqCst) {
                        continue;
                    }
                    let missing = backend.workers.saturating_sub(lb.queue.connections(backend.id));
                    let conns = connect_and_probe(lb, &backend, missing);
                    let _ = done.send((backend, conns));
                }
            })
            .map_err(|e| format!("cannot start a reconnector thread: {e}"))?;
        }
        Ok(Watcher {
            lb,
            known: HashMap::new(),
            last_file: Vec::new(),
            warned: Vec::new(),
            attempts,
            outcomes,
            draining: HashSet::new(),
        })
    }

    /// Looks every [`POLL_INTERVAL`], and takes each attempt's outcome as it comes, until
    /// `stop` is closed.
    pub(crate) fn run(mut self, stop: &Receiver<()>) {
        // Carries a tick every POLL_INTERVAL: time for the next look.
        let ticks = crossbeam_channel::tick(POLL_INTERVAL);
        self.poll();
        loop {
            crossbeam_channel::select! {
                recv(ticks) -> _ => self.poll(),
                recv(self.outcomes) -> outcome => match outcome {
                    Ok((backend, conns)) => self.settle(backend, conns),
                    // Every reconnector has died: no outcome can come any more.
                    Err(_) => self.outcomes = crossbeam_channel::never(),
                },
                recv(stop) -> _ => return,
            }
        }
    }

    /// One look: join new servers, drain removed ones, start reconnecting lost ones.
    fn poll(&mut self) {
        let listed = self.listed();
        let (queue, stats) = (&self.lb.queue, &self.lb.stats);
        for id in self.draining.extract_if(|id| queue.membership(*id).is_none()) {
            log::info!("server {id} removed: its last request is done");
        }
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
            // Out of rotation: removed at once if idle, else draining until its requests in
            // flight complete (a later look says when it has left).
            if !queue.retire(id) {
                continue;
            }
            if queue.membership(id).is_some() {
                log::info!("server {id} left the list: draining (its requests in flight complete)");
                self.draining.insert(id);
            } else {
                log::info!("server {id} left the list: removed");
            }
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
                let attempt = (Arc::clone(&known.backend), Arc::clone(&known.cancelled));
                // Fails only if every reconnector is gone, and then no attempt can be made.
                let _ = self.attempts.send(attempt);
            }
        }
    }

    /// Takes an attempt's outcome: adds the new connections to the pool, or counts the
    /// failure; either way sets when the next attempt may start.
    fn settle(&mut self, backend: Arc<Backend>, conns: io::Result<Vec<BackendConn>>) {
        // An outcome for a server that has left the list, or is listed anew, is stale.
        let known = self.known.get_mut(&backend.id).filter(|k| Arc::ptr_eq(&k.backend, &backend));
        let Some(known) = known else {
            return;
        };
        let (id, addr, failures) = (backend.id, &backend.addr, known.failures);
        match conns {
            Ok(conns) => {
                let queue = &self.lb.queue;
                let joins = queue.membership(id).is_none();
                let mut added = false;
                for conn in conns {
                    added |= queue.add(Arc::clone(&backend), conn);
                }
                if joins && added {
                    let (secs, workers) = (backend.processing_time.as_secs_f64(), backend.workers);
                    let after = match failures {
                        0 => String::new(),
                        n => format!(" after {n} failed attempt(s)"),
                    };
                    log::info!("Connected to server {id} at {addr} (processing time {secs} s, {workers} worker(s)){after}");
                }
                known.failures = 0;
            }
            Err(e) => {
                known.failures = failures.saturating_add(1);
                // The first failure is news; the rest are the same story.
                let level = if failures == 0 { log::Level::Warn } else { log::Level::Debug };
                let next = backoff(known.failures).as_secs_f64();
                log::log!(
                    level,
                    "cannot reach server {id} at {addr}: {e}; next try in {next:.1} s"
                );
            }
        }
        known.next_try = Some(Instant::now() + backoff(known.failures));
    }

    /// Every listed server: the servers file's, then those joined over the network, up to
    /// `--max-servers`. A second entry with an id or address already listed is ignored, so no
    /// server is in the pool twice.
    fn listed(&mut self) -> HashMap<u32, Backend> {
        let path = &self.lb.config.servers_file;
        let mut warnings = Vec::new();
        match servers_file::read(path) {
            Ok(entries) => self.last_file = entries,
            // Keep the last good list rather than drain every server over a bad edit.
            Err(e) => warnings.push(format!(
                "cannot read servers file {}: {e}; keeping the servers already known",
                path.display()
            )),
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
        if listed.len() > max {
            // Servers already in the pool keep their places: a newcomer never pushes one out.
            listed.sort_by_key(|b| !self.known.contains_key(&b.id));
            warnings.push(format!(
                "{} servers are listed, more than --max-servers {max}: ignoring {} of them; remove them from {} or raise --max-servers",
                listed.len(),
                listed.len() - max,
                path.display()
            ));
            listed.truncate(max);
        }
        for warning in warnings.iter().filter(|w| !self.warned.contains(w)) {
            log::warn!("{warning}");
        }
        self.warned = warnings;
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
    // Each reply read whole: the server is alive and speaks the protocol.
    for conn in &mut conns {
        let mut header = Vec::new();
        if conn.read_header(&mut header)? != Line::Complete {
            return Err(io::Error::other("closed the connection instead of answering"));
        }
        let length = ReplyHeader::parse(&header).map_err(io::Error::other)?.body_length();
        if io::copy(&mut (&mut conn.reader).take(length), &mut io::sink())? < length {
            return Err(io::Error::other("reply cut short"));
        }
    }
    Ok(conns)
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
