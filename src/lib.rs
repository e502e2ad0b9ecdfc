//! minilb: a small load balancer, its backend servers and its client, over one line-based
//! TCP protocol. Blocking `std::net` sockets, one OS thread per client.
//!
//! - [`protocol`]: request lines and reply headers; [`error`]: the `ERR` codes.
//! - [`server`]: the backend server (request handler, database, file store).
//! - [`balancer`]: the load balancer (accept loop, sessions, backends, membership).
//! - [`idle_queue`]: the power-ordered idle queue; [`policy`]: one file per balancing policy.
//! - [`client`]: the client (one-shot and interactive).
//! - [`servers_file`]: the list of running servers that servers write and the balancer reads.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod balancer;
pub mod client;
pub mod error;
pub mod idle_queue;
pub mod policy;
pub mod protocol;
pub mod server;
pub mod servers_file;

pub use error::Error;

/// Installs the logger: `info` unless `RUST_LOG` says otherwise.
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

/// A channel that receives one message when Ctrl-C (or SIGTERM) arrives.
///
/// # Errors
/// A message when the handler cannot be installed.
pub fn ctrl_c_channel() -> Result<crossbeam_channel::Receiver<()>, String> {
    // Carries Ctrl-C from the signal handler to the thread that shuts down.
    let (tx, rx) = crossbeam_channel::bounded(1);
    ctrlc::set_handler(move || {
        let _ = tx.try_send(());
    })
    .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))?;
    Ok(rx)
}

/// Parses a number of seconds given on a command line (`0.5`, `10`), for clap.
///
/// # Errors
/// A message saying what a number of seconds looks like.
pub fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 0.5)"))?;
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{s:?} must be a number of seconds, 0 or more"))
}
