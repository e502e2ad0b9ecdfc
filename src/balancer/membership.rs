//! Who is in the pool. A watcher thread looks a few times a second at the servers file and at
//! the servers joined over the network (the admin listener): a server that appears joins, one
//! that disappears drains and leaves. A server that is listed but not in the pool (new, or its
//! connection broke) gets a reconnector thread that connects, checks that the server answers,
//! and retries with capped exponential backoff.
//!
//! A server's states: **up** (in the pool, idle or busy), **draining** (finishing its request
//! in flight, then leaving), **down** (listed, not in the pool, being reconnected).

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balancer::backend::{Backend, BackendConn};
use crate::balancer::stats::ServerStats;
use crate::balancer::Balancer;
use crate::idle_queue::Membership as InPool;
use crate::protocol::{self, Line, ReplyHeader, MAX_HEADER_LINE};
use crate::servers_file::{self, ServerEntry};

/// How often the servers file is read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// First wait before reconnecting to a server that went down; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The request that checks a (re)connected server really answers: a hung process still
/// completes TCP handshakes, so a connection alone proves nothing.
const PROBE: &[u8] = b"SELECT 1\n";

/// A listed server, as the watcher last saw it.
struct Known {
    backend: Arc<Backend>,
    stats: Arc<ServerStats>,
    /// Set when the server leaves the list, to stop its reconnector.
    cancelled: Arc<AtomicBool>,
    /// Set while a reconnector thread runs for it.
    reconnecting: Arc<AtomicBool>,
    /// Whether it was in the pool at the last look (to log a fall once).
    was_up: bool,
}

impl Drop for Known {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
}

/// Keeps the idle queue's membership in line with the servers file and the joined servers.
pub struct Watcher {
    lb: Arc<Balancer>,
    known: HashMap<u32, Known>,
    /// The servers file as last read well, kept when a later read fails.
    last_file: Vec<ServerEntry>,
    last_error: Option<String>,
    /// Servers draining, to say once when each has left.
    draining: HashSet<u32>,
}

impl Watcher {
    /// A watcher for `lb`.
    pub fn new(lb: Arc<Balancer>) -> Self {
        Watcher {
            lb,
            known: HashMap::new(),
            last_file: Vec::new(),
            last_error: None,
            draining: HashSet::new(),
        }
    }

    /// Polls until the balancer stops.
    pub fn run(mut self) {
        while !self.lb.stopping.load(Ordering::SeqCst) {
            self.poll();
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// One look: join new servers, drain removed ones, start reconnecting lost ones.
    pub fn poll(&mut self) {
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
            if listed.get(id) == Some(&*known.backend) {
                return true;
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
                Known {
                    stats: stats.server(&backend),
                    backend,
                    cancelled: Arc::new(AtomicBool::new(false)),
                    reconnecting: Arc::new(AtomicBool::new(false)),
                    was_up: false,
                }
            });
            match queue.membership(id) {
                Some(InPool::Active) => {
                    known.was_up = true;
                    continue;
                }
                // Its old self is finishing a request; reconnect once it has left.
                Some(InPool::Draining) => continue,
                None => {}
            }
            if known.was_up {
                known.was_up = false;
                log::warn!("server {id} is down; reconnecting in the background");
            }
            if !known.reconnecting.swap(true, Ordering::SeqCst) {
                spawn_reconnector(&self.lb, known);
            }
        }
        // A reconnector may have added its server just as the server left the list.
        for (id, state) in queue.snapshot().members {
            if state == InPool::Active && !self.known.contains_key(&id) {
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
            log::info!("server {id} left the list: draining (its request in flight completes)");
            self.draining.insert(id);
        } else {
            log::info!("server {id} left the list: removed");
        }
    }

    /// Every listed server: the servers file's, then those joined over the network. A second
    /// entry with an id or address already listed is ignored, so no server is in the pool twice.
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
        let mut listed = HashMap::new();
        let mut addresses = HashSet::new();
        for entry in entries {
            let backend = Backend::from_entry(&entry);
            if listed.contains_key(&backend.id) || !addresses.insert(backend.addr.clone()) {
                log::debug!(
                    "ignoring a second entry for server {} at {}",
                    backend.id,
                    backend.addr
                );
                continue;
            }
            listed.insert(backend.id, backend);
        }
        listed
    }
}

fn spawn_reconnector(lb: &Arc<Balancer>, known: &Known) {
    let (lb, backend, stats) = (
        Arc::clone(lb),
        Arc::clone(&known.backend),
        Arc::clone(&known.stats),
    );
    let (cancelled, reconnecting) = (
        Arc::clone(&known.cancelled),
        Arc::clone(&known.reconnecting),
    );
    let spawned = std::thread::Builder::new()
        .name(format!("reconnect-{}", backend.id))
        .stack_size(128 * 1024)
        .spawn(move || {
            reconnect(&lb, &backend, &stats, &cancelled);
            reconnecting.store(false, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        known.reconnecting.store(false, Ordering::SeqCst);
        log::error!("cannot start a reconnector thread: {e}");
    }
}

/// Connects and probes until the server answers, waiting longer after each failure.
fn reconnect(
    lb: &Balancer,
    backend: &Arc<Backend>,
    stats: &Arc<ServerStats>,
    cancelled: &AtomicBool,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u32;
    while !cancelled.load(Ordering::SeqCst) && !lb.stopping.load(Ordering::SeqCst) {
        let reply_timeout = lb.config.server_timeout + backend.processing_time;
        let attempt = BackendConn::connect(
            Arc::clone(backend),
            Arc::clone(stats),
            CONNECT_TIMEOUT,
            reply_timeout,
        )
        .and_then(|mut conn| probe(&mut conn).map(|()| conn));
        match attempt {
            Ok(conn) => {
                if cancelled.load(Ordering::SeqCst) {
                    return;
                }
                if lb.queue.add(backend.candidate(), conn) {
                    log::info!(
                        "Connected to server {} at {} (processing time {} s){}",
                        backend.id,
                        backend.addr,
                        backend.processing_time.as_secs_f64(),
                        if failures > 0 {
                            format!(" after {failures} failed attempt(s)")
                        } else {
                            String::new()
                        }
                    );
                }
                return;
            }
            Err(e) => {
                failures += 1;
                let message = format!(
                    "cannot reach server {} at {}: {e}; next try in {:.1} s",
                    backend.id,
                    backend.addr,
                    backoff.as_secs_f64()
                );
                // The first failure is news; the rest are the same story.
                if failures == 1 {
                    log::warn!("{message}");
                } else {
                    log::debug!("{message}");
                }
                let until = Instant::now() + backoff;
                while Instant::now() < until && !cancelled.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50).min(backoff));
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Sends [`PROBE`] and reads its whole reply: the server is alive and speaks the protocol.
fn probe(conn: &mut BackendConn) -> io::Result<()> {
    conn.writer.write_all(PROBE)?;
    let mut header = Vec::new();
    if protocol::read_line(&mut conn.reader, &mut header, MAX_HEADER_LINE)? != Line::Complete {
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
