//! The backend server: serves files from a folder and runs SQL on the shared database, up to
//! `--workers` requests at a time (one by default), each taking at least `processing_time` (the
//! server's simulated power).
//!
//! Parts: [`handler`] (the connections and workers), [`database`] (what both database engines
//! share: [`sqlite`] and [`postgres`]), [`file_store`] (the files folder), [`registration`] (the
//! servers file, or joining a balancer over the network).

mod database;
pub(crate) mod file_store;
mod handler;
mod postgres;
mod registration;
mod sqlite;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::cli::parse_seconds;
use crate::gauge;
use crate::servers_file::{ServerEntry, MAX_WORKERS};
use crate::{tls, token};
use database::{Database, DatabaseConfig, QueryLimits};
use file_store::FileStore;
use handler::Server;
use postgres::Postgres;
use registration::Registration;
use sqlite::Sqlite;

/// After Ctrl-C, how long before the server says what it is still waiting for (balancers
/// notice it left within a fifth of a second).
const DRAIN: Duration = Duration::from_secs(1);
/// After Ctrl-C, the longest wait for requests in flight and connections to close.
const GRACE: Duration = Duration::from_secs(10);

/// A server's settings: its command line (`#[command(flatten)]` in `bin/server.rs`), so each
/// flag's name, default and help are written once, here.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// This server's id, shown in every reply (`server=<id>`).
    #[arg(value_name = "SERVER_ID")]
    pub id: u32,
    /// Port to listen on (0 picks a free one).
    pub port: u16,
    /// Seconds each request takes at least, e.g. 0.5 (smaller = more powerful).
    #[arg(value_parser = parse_seconds)]
    pub processing_time: Duration,
    /// Announce this processing time to balancers instead of the real one: a server whose
    /// declaration is wrong, for the `measured` policy and the dashboard's flag to catch.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub declared_time: Option<Duration>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Where the server records itself for the load balancer.
    #[arg(long, default_value = "data/servers.json")]
    pub servers_file: PathBuf,
    /// Join the balancer whose admin listener is at HOST:PORT over the network, instead of
    /// recording this server in the servers file (for servers on other machines).
    #[arg(long, value_name = "HOST:PORT")]
    pub join: Option<String>,
    /// File holding the shared secret for --join (the balancer's --token-file).
    #[arg(long, requires = "join")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) of the balancer's certificate: --join then speaks HTTPS and
    /// verifies it.
    #[arg(long, requires = "join")]
    pub ca: Option<PathBuf>,
    /// Database settings (`{"path": "colors.db", "writable": false}`, or `"url"` for PostgreSQL).
    #[arg(long, default_value = "data/database.json")]
    pub db: PathBuf,
    /// Folder of files to serve.
    #[arg(long, default_value = "data/files")]
    pub files: PathBuf,
    /// Limits on queries.
    #[command(flatten)]
    pub limits: QueryLimits,
    /// Seconds a request line may take to arrive, from its first byte (0: no limit).
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub request_timeout: Duration,
    /// Requests processed at once, each by a worker with its own database connection.
    #[arg(long, default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_WORKERS as u64))]
    pub workers: usize,
    /// Certificate chain (PEM): speak TLS to the balancer, which verifies it (`--backend-ca`).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Runs a server until a message arrives on `shutdown`, then finishes the request in hand,
/// removes itself from the servers file and returns.
///
/// # Errors
/// A message saying what failed at start (database, files folder, port, servers file).
pub fn run(config: ServerConfig, shutdown: Receiver<()>) -> Result<(), String> {
    let registration = match config.join.clone() {
        Some(admin) => Registration::Join {
            tls: match &config.ca {
                Some(ca) => Some(tls::Connector::new(&tls::client_config(Some(ca))?, &admin)?),
                None => None,
            },
            admin,
            token: config.token_file.as_deref().map(token::read).transpose()?,
        },
        None => Registration::File(config.servers_file.clone()),
    };
    let acceptor = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let mut tls = tls::server_config(cert, key)?;
            // No session tickets: they would arrive on the balancer's idle connection, which
            // must stay silent between replies.
            tls.send_tls13_tickets = 0;
            Some(Arc::new(tls))
        }
        _ => None,
    };
    let db_config = DatabaseConfig::load(&config.db)?;
    let (back, idle) = crossbeam_channel::bounded(config.workers);
    for _ in 0..config.workers {
        let db: Box<dyn Database> = match &db_config.path {
            Some(path) => Box::new(Sqlite::open(path, &db_config, config.limits)?),
            None => {
                let url = db_config.url.as_deref().unwrap_or_default();
                Box::new(Postgres::open(url, &db_config, config.limits)?)
            }
        };
        let _ = back.send(db);
    }
    log::info!("Connected to database {} successfully", db_config.name());
    let files = FileStore::new(&config.files)?;
    let listener = TcpListener::bind((config.host.as_str(), config.port)).map_err(|e| {
        format!(
            "cannot listen on {}:{}: {e} (is another server using that port? port 0 picks a free one)",
            config.host, config.port
        )
    })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let id = config.id;
    let declared = config.declared_time.unwrap_or(config.processing_time);
    let entry = ServerEntry {
        id,
        host: config.host.clone(),
        port: addr.port(),
        processing_time: declared.as_secs_f64(),
        writable: db_config.writable,
        workers: config.workers,
        tls: acceptor.is_some(),
    };
    registration.update(&entry, true)?;
    let (secs, workers) = (config.processing_time.as_secs_f64(), config.workers);
    log::info!("Server {id} is starting (processing time {secs} s, {workers} worker(s))...");
    println!("server {id} listening on {addr}");
    let server = Arc::new(Server {
        id,
        processing_time: config.processing_time,
        request_timeout: config.request_timeout,
        back,
        idle,
        files,
        connections: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        tls: acceptor,
    });

    let accepting = Arc::clone(&server);
    let accept = std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || handler::accept_loop(&accepting, &listener))
        .map_err(|e| e.to_string())?;

    let _ = shutdown.recv();
    log::info!("Server {id} stopping: leaving the pool, finishing requests in flight");
    if let Err(e) = registration.update(&entry, false) {
        log::warn!("{e}");
    }
    // Keep answering until every balancer has let go (a balancer that is itself stopping
    // keeps its connection until its own queue is empty), up to GRACE. A request in flight
    // holds its connection, so no connection left means no request left either.
    let left = Instant::now();
    if !gauge::wait_for_zero(&server.connections, left + DRAIN) {
        log::info!(
            "waiting for {} connection(s) to close, {} request(s) in flight (up to {} s)",
            server.connections.load(Ordering::SeqCst),
            server.in_flight.load(Ordering::SeqCst),
            GRACE.as_secs()
        );
        gauge::wait_for_zero(&server.connections, left + GRACE);
    }
    // Wake the accept loop, blocked in accept(), so it sees `stopping` and ends.
    server.stopping.store(true, Ordering::SeqCst);
    if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
        let _ = accept.join();
    }
    log::info!("Server {id} stopped");
    Ok(())
}
