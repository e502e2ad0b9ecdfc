//! `client <client_id> [REQUEST...]`: the minilb client; `client bench ...`: its load generator.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use minilb::client::bench::{self, BenchConfig, Mix, Stop};
use minilb::client::{self, ClientConfig};

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
    Bench(BenchArgs),
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("stop").required(true).args(["requests", "duration"])))]
struct BenchArgs {
    /// Client threads, each with its own connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    clients: u32,
    /// Requests in all, shared evenly among the clients (or give --duration).
    #[arg(long)]
    requests: Option<u64>,
    /// Seconds to run, e.g. 10 or 0.5 (or give --requests).
    #[arg(long, value_parser = minilb::cli::parse_seconds)]
    duration: Option<Duration>,
    /// The query each request sends (or any request line, e.g. `file big.bin`).
    #[arg(long, default_value = "SELECT Name FROM COLORS LIMIT 1")]
    request: String,
    /// The file that the file share of --mix downloads.
    #[arg(long, default_value = "hello.txt")]
    file: String,
    /// Query requests for file requests, e.g. 3:1; 1:0 sends queries only.
    #[arg(long, default_value = "1:0", value_parser = Mix::parse)]
    mix: Mix,
    /// A new connection for every request, like the original's client.
    #[arg(long)]
    new_connection: bool,
    /// Open every client's connection before the first request, so all are open at once.
    #[arg(long)]
    connect_first: bool,
    /// Print the numbers as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Load balancer address (or a server's, to measure it directly).
    #[arg(long, default_value = "127.0.0.1:5070")]
    lb: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Bench(bench_args)) => run_bench(bench_args),
        None => run_client(args),
    }
}

fn run_client(args: Args) -> ExitCode {
    let config = args.config;
    if !config.download_dir.is_dir() {
        eprintln!(
            "client: download folder {} does not exist; create it or pass --download-dir",
            config.download_dir.display()
        );
        return ExitCode::from(2);
    }
    if let Err(e) = client::remove_partial_download_on_signal() {
        eprintln!("client: {e}");
        return ExitCode::from(2);
    }
    let code = if args.request.is_empty() {
        client::interactive(&config, &mut io::stdin().lock(), &mut io::stdout())
    } else {
        client::run_once(&config, &args.request.join(" "))
    };
    ExitCode::from(code)
}

fn run_bench(args: BenchArgs) -> ExitCode {
    let stop = match (args.requests, args.duration) {
        (Some(n), _) => Stop::Requests(n),
        (None, Some(d)) => Stop::Duration(d),
        (None, None) => unreachable!("clap requires --requests or --duration"),
    };
    let config = BenchConfig {
        addr: args.lb,
        clients: args.clients as usize,
        stop,
        query: args.request,
        file: format!("file {}", args.file),
        mix: args.mix,
        new_connection: args.new_connection,
        connect_first: args.connect_first,
        progress: bench::stderr_is_terminal(),
    };
    let report = match bench::run(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("client bench: {e}");
            return ExitCode::from(2);
        }
    };
    let text = if args.json {
        format!("{}\n", report.to_json())
    } else {
        report.to_text()
    };
    // A closed stdout (`| head`) is not worth a panic.
    let _ = io::stdout().write_all(text.as_bytes());
    ExitCode::from(u8::from(report.error_count() > 0))
}
