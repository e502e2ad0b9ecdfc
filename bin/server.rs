//! `server <server_id> <port> <processing_time>`: a minilb backend server.

use std::process::ExitCode;

use clap::Parser;
use minilb::server::{self, ServerConfig};

/// A minilb backend server: serves files from a folder and runs SQL on the shared database,
/// one request at a time, each taking at least <PROCESSING_TIME> seconds.
#[derive(Parser)]
#[command(
    version,
    after_help = "Example: server 1 5071 0.5   (Ctrl-C stops it and removes it from the servers file)"
)]
struct Args {
    #[command(flatten)]
    config: ServerConfig,
}

fn main() -> ExitCode {
    let config = Args::parse().config;
    minilb::init_logging();
    let result = minilb::ctrl_c_channel().and_then(|ctrl_c| server::run(config, ctrl_c));
    minilb::cli::exit("server", result)
}
