//! `client <client_id> [REQUEST...]`: the minilb client; `client bench ...`: its load generator.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use minilb::client::{self, ClientConfig};

#[path = "client/bench.rs"]
mod bench;

/// The minilb client: sends a request to the load balancer and shows the reply or saves the
/// file. With no request it prompts `Enter query: ` until end of input or `quit`.
#[derive(Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  client 1 'SELECT * FROM COLORS LIMIT 3;'   (quote it: the shell would expand * and ;)\n  client 1 file colors.csv\n  client 1            (interactive)\n  client bench --clients 32 --duration 10\nExit code: 0 on OK, 1 on ERR, 2 when the balancer cannot be reached."
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ClientConfig,
    /// The request: `file <name>` downloads a file; anything else is an SQL query.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    request: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Load generator: N clients send requests as fast as replies come back, then it prints
    /// requests/s, latency percentiles, errors by code and who answered how many.
    #[command(
        after_help = "Examples:\n  client bench --clients 32 --duration 10\n  client bench --clients 1 --requests 1000 --new-connection\n  client bench --clients 8 --requests 800 --mix 3:1 --file palette.png --json\nExit code: 0 when every request got OK, 1 when some failed, 2 when the bench could not run."
    )]
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Bench(bench_args)) => bench::main(bench_args),
        None => ExitCode::from(client::run(&args.config, &args.request)),
    }
}
