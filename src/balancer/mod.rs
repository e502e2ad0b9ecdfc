//! The load balancer: accepts clients, hands each request to a free worker of the server the
//! policy chooses, and streams the reply back.
//!
//! Parts: [`shared`] (settings and shared state), `listener` (the accept loop, one thread per
//! client), `session` (one client's requests: their client side and backend side), `backend`
//! (servers and the connections to them), `membership` (who is in the pool: the servers file,
//! reconnects, health checks), `admin` (joins, the dashboard) over [`http`] (a small HTTP/1.1
//! server with limits), `stats` and `report` (what is counted, and how it is reported). The
//! idle queue is `crate::idle_queue`.

mod admin;
pub(crate) mod backend;
pub mod http;
mod listener;
mod membership;
pub(crate) mod report;
mod session;
pub(crate) mod shared;
pub(crate) mod stats;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::idle_queue::IdleQueue;
use crate::servers_file::ServerEntry;
use crate::{gauge, policy, servers_file, tls, token};
use shared::Balancer;
pub use shared::BalancerConfig;

/// How long start-up waits for the servers already listed to be connected.
const STARTUP_WAIT: Duration = Duration::from_secs(3);
/// How long shutting down waits for the threads probing servers to end.
const PROBE_WAIT: Duration = Duration::from_secs(1);
/// Descriptors kept for everything but clients: standard streams, the listeners, the accept
/// loop's spare, the servers file, servers being probed, and admin connections.
const OTHER_DESCRIPTORS: u64 = 32 + http::MAX_CONNECTIONS as u64;

/// Runs the balancer until a message arrives on `shutdown`; then stops accepting (answering
/// the clients already in the backlog), lets the clients connected get their replies and
/// leave (up to the grace period) and returns.
///
/// # Errors
/// A message saying what failed at start (unknown policy, port in use, bad servers file).
pub fn run(mut config: BalancerConfig, shutdown: Receiver<()>) -> Result<(), String> {
    config.token = config.token_file.as_deref().map(token::read).transpose()?;
    config.backend_tls =
        config.backend_ca.as_deref().map(|ca| tls::client_config(Some(ca))).transpose()?;
    config.max_clients = fit_descriptors(config.max_clients);
    // clap allows only known names; this is for callers of the library.
    let policy = policy::by_name(&config.policy)
        .ok_or_else(|| format!("unknown policy {:?}", config.policy))?;
    let listed = listed_at_start(&config.servers_file)?;
    let acceptor = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(tls::server_config(cert, key)?)),
        _ => None,
    };
    let hint = "is another balancer running? port 0 picks a free port";
    let client_side = |port| bind("listen", &config.host, port, hint);
    let plain = (!config.no_plain).then(|| client_side(config.port)).transpose()?;
    let secure = config.tls_port.map(client_side).transpose()?;
    let (host, port) = (&config.admin_host, config.admin_port);
    let hint = "--admin-port 0 picks a free port";
    let (admin, admin_addr) = bind("start the admin listener", host, port, hint)?;
    let lb = Arc::new(Balancer {
        config,
        queue: IdleQueue::new(policy),
        stopping: AtomicBool::new(false),
        clients: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        probing: AtomicUsize::new(0),
        next_request: AtomicU64::new(1),
        joined: Default::default(),
        stats: stats::Stats::default(),
    });
    log::info!(
        "Load balancer listening on {} (admin on {}://{admin_addr}), policy {}; {} server(s) in {}",
        [(&plain, ""), (&secure, " (TLS)")]
            .iter()
            .filter_map(|(l, what)| l.as_ref().map(|(_, a)| format!("{a}{what}")))
            .collect::<Vec<_>>()
            .join(" and "),
        if acceptor.is_some() { "https" } else { "http" },
        lb.queue.policy.name,
        listed.len(),
        lb.config.servers_file.display()
    );
    let watcher = membership::Watcher::new(Arc::clone(&lb))?;
    // Closed (the sender dropped) at shutdown: the watcher and the health checks stop.
    let (stop_watcher, stop) = crossbeam_channel::bounded::<()>(0);
    let checking = (Arc::clone(&lb), stop.clone());
    let watcher = spawn("membership", move || watcher.run(&stop))?;
    let health = spawn("health", move || membership::check_health(&checking.0, &checking.1))?;
    if listed.is_empty() {
        log::warn!(
            "no server is listed yet: start one with `server <id> <port> <processing_time>`; it joins within a second"
        );
    }
    // Let the servers listed be connected and probed, so the first clients find them (they
    // wait in the backlog meanwhile); a slow or dead one joins later in the background.
    let expected = listed.len().min(lb.config.max_servers);
    lb.queue.wait_for_members(expected, STARTUP_WAIT);
    // Tests and scripts read these lines to learn the ports.
    if let Some((_, addr)) = &plain {
        println!("loadbalancer listening on {addr}");
    }
    println!("admin listening on {admin_addr}");
    if let Some((_, addr)) = &secure {
        println!("loadbalancer listening for TLS on {addr}");
    }

    // Ctrl-C during the start-up wait: stop before the listeners start, so the clients in the
    // backlog are each answered once and let go, as after any Ctrl-C.
    let interrupted = shutdown.try_recv().is_ok();
    if interrupted {
        begin_stopping(&lb);
    }
    let mut listeners = Vec::new();
    let sides = [plain.map(|l| (l, None)), secure.map(|l| (l, acceptor.clone()))];
    for ((listener, addr), tls) in sides.into_iter().flatten() {
        let accepting = Arc::clone(&lb);
        let accept = spawn("accept", move || listener::accept_loop(&accepting, listener, tls))?;
        listeners.push((accept, addr));
    }
    let admin_lb = Arc::clone(&lb);
    let admin = spawn("admin", move || admin::serve(&admin_lb, admin, acceptor))?;
    listeners.push((admin, admin_addr));

    if !interrupted {
        let _ = shutdown.recv();
        begin_stopping(&lb);
    }
    drop(stop_watcher);
    let _ = watcher.join();
    let _ = health.join();
    shut_down(&lb, listeners);
    Ok(())
}

/// From here on, a request is its connection's last. The flag is set before the line is
/// logged, so a client that sees the line and then asks is told apart from one asking before.
fn begin_stopping(lb: &Balancer) {
    lb.stopping.store(true, Ordering::SeqCst);
    log::info!("Shutting down: no new clients; answering the clients connected");
}

/// Stops the listeners (the client ones take in the clients already in their backlog first),
/// then waits up to the grace period for every client to get its reply and leave, and for
/// the threads probing servers to end.
fn shut_down(lb: &Balancer, listeners: Vec<(JoinHandle<()>, SocketAddr)>) {
    for (thread, addr) in listeners {
        // Wake the loop, blocked in accept(), so it sees `stopping` (one that saw it at once
        // has ended). Without a descriptor to connect with, it cannot be woken: leave it,
        // rather than wait for it for ever.
        if thread.is_finished() || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        {
            let _ = thread.join();
        }
    }
    // A session ends after a request read once `stopping` was set; idle clients are waited
    // for, so one that sends a request now still gets its reply.
    let deadline = Instant::now() + lb.config.grace;
    if !gauge::wait_for_zero(&lb.clients, deadline) {
        log::warn!(
            "grace period over with {} client(s) still connected, {} request(s) in flight",
            lb.clients.load(Ordering::SeqCst),
            lb.in_flight.load(Ordering::SeqCst)
        );
    }
    lb.queue.stop();
    // The watcher is gone, so the reconnectors end after their attempt in hand. A probe of a
    // live server takes a moment; one stuck on a hung server is not worth delaying the exit.
    if !gauge::wait_for_zero(&lb.probing, deadline.min(Instant::now() + PROBE_WAIT)) {
        log::debug!("{} server probe(s) still running", lb.probing.load(Ordering::SeqCst));
    }
    log::info!("Load balancer stopped");
}

/// Raises the soft limit on open descriptors to the hard limit (as HAProxy does), and lowers
/// `max_clients` when it still does not fit: each client needs its own socket and, during a
/// request, one to its server.
fn fit_descriptors(max_clients: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit { current: limit.maximum, ..limit };
    let raised = setrlimit(Resource::Nofile, raised).is_ok();
    // `None` is no limit at all.
    let Some(soft) = (if raised { limit.maximum } else { limit.current }) else {
        return max_clients;
    };
    let fits =
        usize::try_from(soft.saturating_sub(OTHER_DESCRIPTORS) / 2).unwrap_or(usize::MAX).max(1);
    if max_clients <= fits {
        return max_clients;
    }
    log::warn!(
        "--max-clients lowered from {max_clients} to {fits}: only {soft} file descriptors may be open (ulimit -n; hard limit {})",
        limit.maximum.map_or_else(|| "none".to_string(), |m| m.to_string())
    );
    fits
}

/// A listener on `host:port` and the address it got; the error says what could not `what`.
fn bind(
    what: &str,
    host: &str,
    port: u16,
    hint: &str,
) -> Result<(TcpListener, SocketAddr), String> {
    let listener = TcpListener::bind((host, port))
        .map_err(|e| format!("cannot {what} on {host}:{port}: {e} ({hint})"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    Ok((listener, addr))
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| format!("cannot start the {name} thread: {e}"))
}

/// The servers listed at start. A missing servers file lists none; a missing folder means the
/// balancer was started from the wrong folder (or given a typo), which would otherwise go
/// unnoticed until every client gets `ERR unavailable`.
fn listed_at_start(path: &Path) -> Result<Vec<ServerEntry>, String> {
    const HINT: &str = "run from the project folder, or pass --servers-file";
    let shown = path.display();
    if !path.exists() {
        match path.parent() {
            Some(dir) if dir.as_os_str().is_empty() || dir.is_dir() => log::warn!(
                "servers file {shown} does not exist ({HINT}); servers that start create it"
            ),
            _ => return Err(format!("servers file {shown}: its folder does not exist ({HINT})")),
        }
    }
    servers_file::read(path).map_err(|e| format!("cannot read servers file {shown}: {e}"))
}
