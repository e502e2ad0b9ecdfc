//! Who is in the pool. A watcher thread reads the servers file a few times a second: a server
//! that records itself joins, one that removes itself drains and leaves, and one whose
//! connection broke is reconnected with capped exponential backoff.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balancer::backend::{Backend, BackendConn};
use crate::balancer::Balancer;
use crate::servers_file;

/// How often the servers file is read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// First wait before reconnecting to a server that went down; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The watcher's memory of each server it has seen in the file.
struct Known {
    backend: Arc<Backend>,
    /// When to try connecting again, and the wait after that if it fails.
    retry_at: Instant,
    backoff: Duration,
    /// Whether it was in the pool at the last look (to log changes once).
    was_up: bool,
}

/// Keeps the idle queue's membership in line with the servers file.
pub struct Membership {
    lb: Arc<Balancer>,
    known: HashMap<u32, Known>,
    last_file_error: Option<String>,
}

impl Membership {
    /// A watcher for `lb`'s servers file.
    pub fn new(lb: Arc<Balancer>) -> Self {
        Membership {
            lb,
            known: HashMap::new(),
            last_file_error: None,
        }
    }

    /// Polls until the balancer stops.
    pub fn run(mut self) {
        while !self.lb.stopping.load(Ordering::SeqCst) {
            std::thread::sleep(POLL_INTERVAL);
            if let Err(e) = self.poll() {
                if self.last_file_error.as_ref() != Some(&e) {
                    log::warn!("{e}");
                    self.last_file_error = Some(e);
                }
            }
        }
    }

    /// One look at the servers file: join new servers, drain removed ones, reconnect lost ones.
    ///
    /// # Errors
    /// A message when the servers file cannot be read.
    pub fn poll(&mut self) -> Result<(), String> {
        let path = &self.lb.config.servers_file;
        let entries = servers_file::read(path)
            .map_err(|e| format!("cannot read servers file {}: {e}", path.display()))?;
        self.last_file_error = None;
        let listed: HashMap<u32, Backend> = entries
            .iter()
            .map(|e| (e.id, Backend::from_entry(e)))
            .collect();

        // Servers gone from the file, or recorded again with other settings: drain them.
        let queue = &self.lb.queue;
        self.known.retain(|id, known| {
            if listed.get(id) == Some(&known.backend) {
                return true;
            }
            if queue.retire(*id) {
                log::info!(
                    "server {id} left the servers file: draining (its request in flight completes)"
                );
            }
            false
        });

        let now = Instant::now();
        for (id, backend) in listed {
            let known = self.known.entry(id).or_insert_with(|| Known {
                backend: Arc::new(backend),
                retry_at: now,
                backoff: FIRST_BACKOFF,
                was_up: false,
            });
            let up = queue.membership(id).is_some();
            if up {
                known.was_up = true;
                continue;
            }
            if known.was_up {
                known.was_up = false;
                known.retry_at = now;
                known.backoff = FIRST_BACKOFF;
                log::warn!("server {id} is down; reconnecting in the background");
            }
            if now < known.retry_at {
                continue;
            }
            connect(&self.lb, known, now);
        }
        Ok(())
    }
}

fn connect(lb: &Balancer, known: &mut Known, now: Instant) {
    let backend = Arc::clone(&known.backend);
    let reply_timeout = lb.config.server_timeout + backend.processing_time;
    match BackendConn::connect(Arc::clone(&backend), CONNECT_TIMEOUT, reply_timeout) {
        Ok(conn) => {
            if lb.queue.add(backend.candidate(), conn) {
                log::info!(
                    "Connected to server {} at {} (processing time {} s)",
                    backend.id,
                    backend.addr,
                    backend.processing_time.as_secs_f64()
                );
                known.was_up = true;
                known.backoff = FIRST_BACKOFF;
            }
        }
        Err(e) => {
            log::warn!(
                "cannot connect to server {} at {}: {e}; next try in {:.1} s",
                backend.id,
                backend.addr,
                known.backoff.as_secs_f64()
            );
            known.retry_at = now + known.backoff;
            known.backoff = (known.backoff * 2).min(MAX_BACKOFF);
        }
    }
}
