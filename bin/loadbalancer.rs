//! `loadbalancer`: the minilb load balancer.

use std::process::ExitCode;

use clap::Parser;
use minilb::balancer::{self, BalancerConfig};

/// The minilb load balancer: gives each client request to an idle server, most powerful
/// first (round robin among equals), and streams the reply back.
#[derive(Parser)]
#[command(
    version,
    after_help = "Servers record themselves in the servers file; the balancer picks them up within a second.\nLogs go to stderr; RUST_LOG=debug shows more, RUST_LOG=warn less."
)]
struct Args {
    #[command(flatten)]
    config: BalancerConfig,
}

fn main() -> ExitCode {
    let config = Args::parse().config;
    minilb::init_logging();
    let result = minilb::ctrl_c_channel().and_then(|ctrl_c| balancer::run(config, ctrl_c));
    minilb::cli::exit("loadbalancer", result)
}
