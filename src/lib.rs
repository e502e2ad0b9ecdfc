//! minilb: a small load balancer, its backend servers and its client, over one line-based
//! TCP protocol. Blocking `std::net` sockets, one OS thread per client.
//!
//! - [`protocol`]: request lines and reply headers, and reading requests from untrusted peers
//!   within size and time limits; `error`: the `ERR` codes.
//! - `gauge`: counts of things in progress, kept right by guards.
//! - `cidr`: IP networks, for the balancer's `--allow` list.
//! - [`server`]: the backend server (request handler, database, file store).
//! - [`balancer`]: the load balancer (accept loop, sessions, backends, membership).
//! - `idle_queue`: the power-ordered idle queue; `policy`: one file per balancing policy.
//! - [`client`]: the client (one-shot and interactive); [`cli`]: command-line helpers.
//! - [`servers_file`]: the list of running servers that servers write and the balancer reads;
//!   `token`: the shared secret for servers that join over the network.
//! - [`tls`]: connections that are plain or TLS (rustls): certificates, handshakes, closing.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod balancer;
pub(crate) mod cidr;
pub mod cli;
pub mod client;
pub(crate) mod error;
pub(crate) mod gauge;
pub(crate) mod idle_queue;
pub(crate) mod policy;
pub mod protocol;
pub mod server;
pub mod servers_file;
pub mod tls;
pub(crate) mod token;

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

#[cfg(test)]
mod scratch_dir {
    //! Folders for unit tests that touch the file system, removed when dropped, so a test run
    //! leaves nothing behind in the temp folder, also when a test fails.

    use std::path::{Path, PathBuf};

    /// A fresh, empty folder under the system's temp folder, unique to this process and `name`.
    pub(crate) struct ScratchDir(PathBuf);

    impl ScratchDir {
        pub(crate) fn new(name: &str) -> ScratchDir {
            let dir = std::env::temp_dir().join(format!("minilb-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            ScratchDir(dir)
        }
    }

    impl std::ops::Deref for ScratchDir {
        type Target = Path;

        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
