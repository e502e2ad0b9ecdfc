//! The load balancer: accepts clients, hands each request to a free worker of the server the
//! policy chooses, and streams the reply back.
//!
//! Parts: [`listener`] (the accept loop, one thread per client), [`session`] (one client's
//! requests: the client side and the backend side of each), [`backend`] (servers and the
//! persistent connections to them), [`membership`] (who is in the pool: the servers file,
//! reconnecting to servers that went down), `health` (active health checks), [`admin`] (the admin listener: joins, the
//! dashboard) over [`http`] (a small HTTP/1.1 server with limits), [`stats`] and [`report`] (what is counted, and how it is reported). The idle
//! queue is `crate::idle_queue`.

pub mod admin;
pub(crate) mod backend;
mod health;
pub mod http;
pub mod listener;
pub mod membership;
pub(crate) mod report;
pub(crate) mod session;
pub(crate) mod stats;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use crate::cidr::{self, AllowList};
use crate::cli::{parse_seconds, parse_timeout};
use crate::gauge;
use crate::idle_queue::IdleQueue;
use crate::servers_file::ServerEntry;
use crate::{policy, tls, token};
use backend::BackendConn;

/// The balancer's settings: its command line (`#[command(flatten)]` in `bin/loadbalancer.rs`),
/// so each flag's name, default and help are written once, here.
#[derive(Debug, Clone, clap::Args)]
pub struct BalancerConfig {
    /// Address to listen on for clients.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on for clients (0 picks a free one).
    #[arg(long, default_value_t = 5070)]
    pub port: u16,
    /// Port of the TLS listener for clients, beside the plain one (0 picks a free one).
    #[arg(long, requires = "tls_cert")]
    pub tls_port: Option<u16>,
    /// Certificate chain (PEM) of the TLS listener; the admin listener then speaks HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// No plain listener: clients must use the TLS port.
    #[arg(long, requires = "tls_port")]
    pub no_plain: bool,
    /// The servers file to read and watch.
    #[arg(long, default_value = "data/servers.json")]
    pub servers_file: PathBuf,
    /// Balancing policy: power (fastest idle first, by declared time), measured, round-robin,
    /// least-connections or two-choices.
    #[arg(long, alias = "algorithm", default_value = "power", value_parser = clap::builder::PossibleValuesParser::new(policy::names()))]
    pub policy: String,
    /// Seconds a request waits for a busy server before `ERR busy`.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    pub queue_timeout: Duration,
    /// Seconds a server may take to start replying, on top of its processing time.
    #[arg(long, default_value = "30", value_parser = parse_timeout)]
    pub server_timeout: Duration,
    /// Extra attempts on other servers when a server fails before replying.
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// Most clients connected at once; more get `ERR busy`.
    #[arg(long, default_value_t = 10_000)]
    pub max_clients: usize,
    /// Seconds Ctrl-C waits for connected clients to get their replies and leave.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub grace: Duration,
    /// Address of the admin listener (HTTP: servers join here).
    #[arg(long, default_value = "127.0.0.1")]
    pub admin_host: String,
    /// Port of the admin listener (0 picks a free one).
    #[arg(long, default_value_t = 5080)]
    pub admin_port: u16,
    /// File holding the shared secret servers must present to join over the network;
    /// without it only loopback peers may join.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that servers speaking TLS (`"tls": true`) must be signed by.
    #[arg(long)]
    pub backend_ca: Option<PathBuf>,
    /// What `backend_ca` trusts, read at start.
    #[arg(skip)]
    pub backend_tls: Option<Arc<rustls::ClientConfig>>,
    /// The secret read from `token_file` at start.
    #[arg(skip)]
    pub token: Option<String>,
    /// Seconds a request line may take to arrive, from its first byte (0: no limit).
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub request_timeout: Duration,
    /// Seconds a client may stay silent between requests before it is disconnected (0: no limit).
    #[arg(long, default_value = "300", value_parser = parse_seconds)]
    pub idle_timeout: Duration,
    /// Serve only clients from this network, e.g. 10.0.0.0/8 or fd00::/8 (repeatable;
    /// default: every address). Others get `ERR forbidden`.
    #[arg(long = "allow", value_name = "CIDR", value_parser = cidr::parse_network)]
    pub networks: Vec<ipnet::IpNet>,
    /// The `networks` as the listener checks them.
    #[arg(skip)]
    pub allow: AllowList,
    /// Seconds between active health checks (a TCP connect to each server in the pool, with
    /// this as its timeout).
    #[arg(long, default_value = "1", value_parser = parse_timeout)]
    pub check_interval: Duration,
    /// Health checks missed in a row before a server is down: out of the pool, and the
    /// requests waiting on it retried elsewhere.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub check_fall: u32,
    /// Most servers in the pool, from the servers file and joins together: further joins get
    /// HTTP 503 and further file entries are ignored, with a warning.
    #[arg(long, default_value_t = 100, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub max_servers: usize,
}

/// How long start-up waits for the servers already listed to be connected.
const STARTUP_WAIT: Duration = Duration::from_secs(3);

/// How long shutting down waits for the threads probing servers to end.
const PROBE_WAIT: Duration = Duration::from_secs(1);

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
    /// Threads reconnecting or re-probing servers now (see [`membership`]).
    pub probing: AtomicUsize,
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
    config.token = config.token_file.as_deref().map(token::read).transpose()?;
    config.allow = AllowList::new(config.networks.clone());
    config.backend_tls = config
        .backend_ca
        .as_deref()
        .map(|ca| tls::client_config(Some(ca)))
        .transpose()?;
    config.max_clients = fit_descriptors(config.max_clients);
    let policy = policy::by_name(&config.policy).ok_or_else(|| {
        format!(
            "unknown policy {:?}; choose one of: {}",
            config.policy,
            policy::names().join(", ")
        )
    })?;
    check_servers_file(&config.servers_file)?;
    let acceptor = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(tls::server_config(cert, key)?)),
        _ => None,
    };
    let bind = |port: u16| {
        let listener = TcpListener::bind((config.host.as_str(), port)).map_err(|e| {
            format!(
                "cannot listen on {}:{port}: {e} (is another balancer running? port 0 picks a free port)",
                config.host
            )
        })?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        Ok::<_, String>((listener, addr))
    };
    let plain = (!config.no_plain).then(|| bind(config.port)).transpose()?;
    let secure = config.tls_port.map(bind).transpose()?;
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
        probing: AtomicUsize::new(0),
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
    let health = spawn("health", move || health::run(&checking.0, &checking.1))?;
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
    // Tests and scripts read these lines to learn the ports.
    if let Some((_, addr)) = &plain {
        println!("loadbalancer listening on {addr}");
    }
    println!("admin listening on {admin_addr}");
    if let Some((_, addr)) = &secure {
        println!("loadbalancer listening for TLS on {addr}");
    }

    let mut listeners = Vec::new();
    for (listening, tls) in [(plain, None), (secure, acceptor.clone())] {
        let Some((listener, addr)) = listening else {
            continue;
        };
        let accepting = Arc::clone(&lb);
        let accept = spawn("accept", move || {
            listener::accept_loop(&accepting, listener, tls)
        })?;
        listeners.push((accept, addr));
    }
    let admin_lb = Arc::clone(&lb);
    let admin = spawn("admin", move || admin::serve(&admin_lb, admin, acceptor))?;
    listeners.push((admin, admin_addr));

    let _ = shutdown.recv();
    log::info!("Shutting down: no new clients; answering the clients connected");
    lb.stopping.store(true, Ordering::SeqCst);
    drop(stop_watcher);
    let _ = watcher.join();
    let _ = health.join();
    shut_down(&lb, listeners);
    Ok(())
}

/// Stops the listeners (the client ones take in the clients already in their backlog first),
/// then waits up to the grace period for every client to get its reply and leave, and for
/// the threads probing servers to end.
fn shut_down(lb: &Balancer, listeners: Vec<(JoinHandle<()>, SocketAddr)>) {
    for (thread, addr) in listeners {
        // Wake the loop, blocked in accept(), so it sees `stopping`. Without a descriptor to
        // connect with, it cannot be woken: leave it, rather than wait for it for ever.
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            let _ = thread.join();
        }
    }
    // A session ends after the request in hand once `stopping` is set; idle clients are
    // waited for, so one that sends a request now still gets its reply.
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
        log::debug!(
            "{} server probe(s) still running",
            lb.probing.load(Ordering::SeqCst)
        );
    }
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
