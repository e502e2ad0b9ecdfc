//! The backend server: serves files from a folder and runs SQL on the shared database, one
//! request at a time, each taking at least `processing_time` (the server's simulated power).
//!
//! Parts: [`handler`] (one connection), [`database`] (the shared SQLite file) and its
//! [`authorizer`] (what SQL may do), [`file_store`] (the files folder).

pub mod authorizer;
pub mod database;
pub mod file_store;
pub mod handler;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use crate::servers_file::{self, ServerEntry};
use database::{Database, DatabaseConfig, QueryLimits};
use file_store::FileStore;

/// A server's settings, from its command line.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The server's id.
    pub id: u32,
    /// Address to listen on.
    pub host: String,
    /// Port to listen on; 0 lets the OS choose.
    pub port: u16,
    /// Time each request takes at least.
    pub processing_time: Duration,
    /// Where the server records itself for the balancer.
    pub servers_file: PathBuf,
    /// `database.json`.
    pub db_config: PathBuf,
    /// Folder of files to serve.
    pub files: PathBuf,
    /// Limits on queries.
    pub limits: QueryLimits,
    /// How long a request line may take to arrive, from its first byte (0: no limit).
    pub request_timeout: Duration,
}

/// A running server's shared state.
pub struct Server {
    /// The server's id, sent in every `OK` header as `server=<id>`.
    pub id: u32,
    /// Time each request takes at least.
    pub processing_time: Duration,
    /// The one worker: taking it is what makes the server busy; guards the database connection.
    pub worker: Mutex<Database>,
    /// The files folder.
    pub files: FileStore,
    /// How long a request line may take to arrive, from its first byte (0: no limit).
    pub request_timeout: Duration,
}

/// Runs a server until a message arrives on `shutdown`, then finishes the request in hand,
/// removes itself from the servers file and returns.
///
/// # Errors
/// A message saying what failed at start (database, files folder, port, servers file).
pub fn run(config: ServerConfig, shutdown: Receiver<()>) -> Result<(), String> {
    let db_config = DatabaseConfig::load(&config.db_config)?;
    let database = Database::open(&db_config, config.limits)?;
    log::info!(
        "Connected to database {} successfully",
        db_config.path.display()
    );
    let files = FileStore::new(&config.files)?;
    let listener = TcpListener::bind((config.host.as_str(), config.port)).map_err(|e| {
        format!(
            "cannot listen on {}:{}: {e} (is another server using that port? port 0 picks a free one)",
            config.host, config.port
        )
    })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let entry = ServerEntry {
        id: config.id,
        host: config.host.clone(),
        port: addr.port(),
        processing_time: config.processing_time.as_secs_f64(),
        writable: db_config.writable,
    };
    servers_file::register(&config.servers_file, &entry).map_err(|e| {
        format!(
            "cannot record this server in {}: {e}",
            config.servers_file.display()
        )
    })?;
    let server = Arc::new(Server {
        id: config.id,
        processing_time: config.processing_time,
        worker: Mutex::new(database),
        files,
        request_timeout: config.request_timeout,
    });
    log::info!(
        "Server {} is starting (processing time {} s)...",
        config.id,
        config.processing_time.as_secs_f64()
    );
    println!("server {} listening on {addr}", config.id);

    let accepting = Arc::clone(&server);
    std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || accept_loop(&accepting, &listener))
        .map_err(|e| e.to_string())?;

    let _ = shutdown.recv();
    log::info!(
        "Server {} stopping: finishing the request in hand",
        config.id
    );
    // Waiting for the worker means the request being processed has finished.
    let _idle = server.worker.lock();
    if let Err(e) = servers_file::deregister(&config.servers_file, config.id, addr.port()) {
        log::warn!(
            "could not remove this server from {}: {e}",
            config.servers_file.display()
        );
    }
    log::info!("Server {} stopped", config.id);
    Ok(())
}

fn accept_loop(server: &Arc<Server>, listener: &TcpListener) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let server = Arc::clone(server);
                let spawned = std::thread::Builder::new()
                    .name("connection".into())
                    .stack_size(256 * 1024)
                    .spawn(move || handler::serve_connection(&server, stream));
                if let Err(e) = spawned {
                    log::error!("cannot start a thread for a connection: {e}");
                }
            }
            Err(e) => {
                log::warn!("accept failed: {e}");
                // Out of file descriptors, say: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
