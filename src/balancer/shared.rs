//! The balancer's settings (its command line) and the state that all its threads share.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use parking_lot::Mutex;

use crate::balancer::backend::BackendConn;
use crate::balancer::stats::Stats;
use crate::cidr;
use crate::cli::{parse_seconds, parse_timeout};
use crate::idle_queue::IdleQueue;
use crate::policy;
use crate::servers_file::ServerEntry;

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
    #[arg(long, alias = "algorithm", default_value = "power", value_parser = clap::builder::PossibleValuesParser::new(policy::ALL.map(|p| p.name)))]
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

/// State shared by every thread of a running balancer.
pub struct Balancer {
    /// Settings.
    pub config: BalancerConfig,
    /// Idle servers and the requests waiting for one.
    pub queue: IdleQueue<BackendConn>,
    /// Set once Ctrl-C arrives: no new clients, and a request read after it is its client's last.
    pub stopping: AtomicBool,
    /// Clients connected now.
    pub clients: AtomicUsize,
    /// Requests being handled now (read, not yet answered).
    pub in_flight: AtomicUsize,
    /// Threads reconnecting or re-probing servers now (see `membership`).
    pub probing: AtomicUsize,
    /// Numbers requests in the log.
    pub next_request: AtomicU64,
    /// Guards the servers that joined over the network (admin listener), by id.
    pub joined: Mutex<HashMap<u32, ServerEntry>>,
    /// Counters for the status page, the metrics and the dashboard.
    pub stats: Stats,
}
