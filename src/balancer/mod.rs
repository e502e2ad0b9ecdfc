//! The load balancer: accepts clients, hands each request to an idle server chosen by the
//! policy, and streams the reply back.
//!
//! Parts: [`listener`] (the accept loop, one thread per client), [`session`] (one client's
//! requests: the client side and the backend side of each), [`backend`] (servers and the
//! persistent connections to them), [`membership`] (who is in the pool: the servers file,
//! reconnecting to servers that went down), [`admin`] (the admin listener: joins, the
//! dashboard) over [`http`] (a small HTTP/1.1 server with limits), [`stats`] and [`status`] (what is counted, and how it is shown). The idle
//! queue is [`crate::idle_queue`].

pub mod admin;
pub mod backend;
pub mod http;
pub mod listener;
pub mod membership;
pub mod session;
pub mod stats;
pub mod status;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use crate::cidr::AllowList;
use crate::gauge;
use crate::idle_queue::IdleQueue;
use crate::policy;
use crate::servers_file::ServerEntry;
use backend::BackendConn;

/// The balancer's settings, from its command line.
#[derive(Debug, Clone)]
pub struct BalancerConfig {
    /// Address to listen on for clients.
    pub host: String,
    /// Port to listen on; 0 lets the OS choose.
    pub port: u16,
    /// The servers file to read and watch.
    pub servers_file: PathBuf,
    /// Policy name (see [`policy::names`]).
    pub algorithm: String,
    /// How long a request waits for a busy server before `ERR busy`.
    pub queue_timeout: Duration,
    /// How long a server may take to start replying, on top of its processing time.
    pub server_timeout: Duration,
    /// Most attempts at one request when servers fail.
    pub retries: u32,
    /// Most clients connected at once.
    pub max_clients: usize,
    /// How long Ctrl-C waits for connected clients to get their replies and leave.
    pub grace: Duration,
    /// Address of the admin listener (HTTP).
    pub admin_host: String,
    /// Port of the admin listener; 0 lets the OS choose.
    pub admin_port: u16,
    /// Shared secret that servers joining over the network must present.
    pub token: Option<String>,
    /// How long a request line may take to arrive, from its first byte (0: no limit).
    pub request_timeout: Duration,
    /// How long a client may stay silent between requests (0: no limit).
    pub idle_timeout: Duration,
    /// Client addresses served (empty: every address).
    pub allow: AllowList,
    /// Most servers in the pool (listed in the file and joined over the network together).
    pub max_servers: usize,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            host: "127.0.0.1".into(),
            port: 5070,
            servers_file: PathBuf::from("data/servers.json"),
            algorithm: "power".into(),
            queue_timeout: Duration::from_secs(30),
            server_timeout: Duration::from_secs(30),
            retries: 2,
            max_clients: 10_000,
            grace: Duration::from_secs(10),
            admin_host: "127.0.0.1".into(),
            admin_port: 5080,
            token: None,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            allow: AllowList::default(),
            max_servers: 100,
        }
    }
}

/// How long start-up waits for the servers already listed to be connected.
const STARTUP_WAIT: Duration = Duration::from_secs(3);

/// Descriptors kept for everything but clients: standard streams, the two listeners, the
/// accept loop's spare, the servers file, servers being probed, and admin connections.
const OTHER_DESCRIPTORS: u64 = 32 + http::MAX_CONNECTIONS as u64;

/// State shared by every thread of a running balancer.
pub struct Balancer {
    /// Settings.
    pub config: BalancerConfig,
    /// Idle servers and the requests waiting for one.
    pub queue: IdleQueue<BackendConn>,
    /// Set once Ctrl-C arrives: no new clients, no new requests after the one in hand.
    pub stopping: AtomicBool,
    /// Clients connected now.
    pub clients: AtomicUsize,
    /// Requests being handled now (read, not yet answered).
    pub in_flight: AtomicUsize,
    /// Numbers requests in the log.
    pub next_request: AtomicU64,
    /// Guards the servers that joined over the network (admin listener), by id.
    pub joined: Mutex<HashMap<u32, ServerEntry>>,
    /// Counters for the status page, the metrics and the dashboard.
    pub stats: stats::Stats,
}

/// Runs the balancer until a message arrives on `shutdown`; then stops accepting (answering
/// the clients already in the backlog), lets the clients connected get their replies and
/// leave (up to the grace period) and returns.
///
/// # Errors
/// A message saying what failed at start (unknown policy, port in use, bad servers file).
pub fn run(mut config: BalancerConfig, shutdown: Receiver<()>) -> Result<(), String> {
    config.max_clients = fit_descriptors(config.max_clients);
    let policy = policy::by_name(&config.algorithm).ok_or_else(|| {
        format!(
            "unknown algorithm {:?}; choose one of: {}",
            config.algorithm,
            policy::names().join(", ")
        )
    })?;
    check_servers_file(&config.servers_file)?;
    let listener = TcpListener::bind((config.host.as_str(), config.port)).map_err(|e| {
        format!(
            "cannot listen on {}:{}: {e} (is another balancer running? --port 0 picks a free port)",
            config.host, config.port
        )
    })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let admin =
        TcpListener::bind((config.admin_host.as_str(), config.admin_port)).map_err(|e| {
            format!(
                "cannot start the admin listener on {}:{}: {e} (--admin-port 0 picks a free port)",
                config.admin_host, config.admin_port
            )
        })?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
    let lb = Arc::new(Balancer {
        config,
        queue: IdleQueue::new(policy),
        stopping: AtomicBool::new(false),
        clients: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        next_request: AtomicU64::new(1),
        joined: Mutex::new(HashMap::new()),
        stats: stats::Stats::default(),
    });

    let listed = crate::servers_file::read(&lb.config.servers_file).map_err(|e| {
        format!(
            "cannot read servers file {}: {e}",
            lb.config.servers_file.display()
        )
    })?;
    log::info!(
        "Load balancer listening on {addr} (admin on http://{admin_addr}), policy {}; {} server(s) in {}",
        lb.queue.policy_name(),
        listed.len(),
        lb.config.servers_file.display()
    );
    let watcher = membership::Watcher::new(Arc::clone(&lb))?;
    spawn("membership", move || watcher.run())?;
    if listed.is_empty() {
        log::warn!(
            "no server is listed yet: start one with `server <id> <port> <processing_time>`; it joins within a second"
        );
    }
    // Give the servers already listed a moment to be connected (and probed), so the first
    // clients find them; a slow or dead one joins later in the background.
    // Clients that connect meanwhile wait in the listen backlog.
    let expected = listed.len().min(lb.config.max_servers);
    lb.queue.wait_for_members(expected, STARTUP_WAIT);
    // Tests and scripts read these two lines to learn the ports.
    println!("loadbalancer listening on {addr}");
    println!("admin listening on {admin_addr}");

    let accepting = Arc::clone(&lb);
    let accept = spawn("accept", move || {
        listener::accept_loop(&accepting, listener)
    })?;
    let admin_lb = Arc::clone(&lb);
    let admin = spawn("admin", move || admin::serve(&admin_lb, admin))?;

    let _ = shutdown.recv();
    shut_down(&lb, [(accept, addr), (admin, admin_addr)]);
    Ok(())
}

/// Stops both listeners (the client one takes in the clients already in its backlog first),
/// then waits up to the grace period for every client to get its reply and leave.
fn shut_down(lb: &Balancer, listeners: [(JoinHandle<()>, SocketAddr); 2]) {
    log::info!("Shutting down: no new clients; answering the clients connected");
    lb.stopping.store(true, Ordering::SeqCst);
    for (thread, addr) in listeners {
        // Wake the loop, blocked in accept(), so it sees `stopping`. Without a descriptor to
        // connect with, it cannot be woken: leave it, rather than wait for it for ever.
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            let _ = thread.join();
        }
    }
    // A session ends after the request in hand once `stopping` is set; idle clients are
    // waited for, so one that sends a request now still gets its reply.
    if !gauge::wait_for_zero(&lb.clients, Instant::now() + lb.config.grace) {
        log::warn!(
            "grace period over with {} client(s) still connected, {} request(s) in flight",
            lb.clients.load(Ordering::SeqCst),
            lb.in_flight.load(Ordering::SeqCst)
        );
    }
    lb.queue.stop();
    log::info!("Load balancer stopped");
}

/// Raises the soft limit on open descriptors to the hard limit (as HAProxy does), and lowers
/// `max_clients` when it still does not fit: each client needs its own socket and, during a
/// request, one to its server.
fn fit_descriptors(max_clients: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let soft = if limit.current != limit.maximum && setrlimit(Resource::Nofile, raised).is_ok() {
        limit.maximum
    } else {
        limit.current
    };
    // `None` is no limit at all.
    let Some(soft) = soft else {
        return max_clients;
    };
    let fits = usize::try_from(soft.saturating_sub(OTHER_DESCRIPTORS) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    if max_clients <= fits {
        return max_clients;
    }
    log::warn!(
        "--max-clients lowered from {max_clients} to {fits}: only {soft} file descriptors may be open (ulimit -n; hard limit {})",
        limit.maximum.map_or_else(|| "none".to_string(), |m| m.to_string())
    );
    fits
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| format!("cannot start the {name} thread: {e}"))
}

/// A servers file that is missing reads as no servers; one whose folder is missing means the
/// balancer was started from the wrong folder (or given a typo), which would otherwise go
/// unnoticed until every client gets `ERR unavailable`.
fn check_servers_file(path: &std::path::Path) -> Result<(), String> {
    const HINT: &str = "run from the project folder, or pass --servers-file";
    if path.exists() {
        return Ok(());
    }
    match path.parent() {
        Some(dir) if dir.as_os_str().is_empty() || dir.is_dir() => {
            log::warn!(
                "servers file {} does not exist ({HINT}); servers that start create it",
                path.display()
            );
            Ok(())
        }
        _ => Err(format!(
            "servers file {}: its folder does not exist ({HINT})",
            path.display()
        )),
    }
}
