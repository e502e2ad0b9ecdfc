//! `server <server_id> <port> <processing_time>`: a minilb backend server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use minilb::cli::parse_seconds;
use minilb::server::{self, database::QueryLimits, registration::Registration, ServerConfig};

/// A minilb backend server: serves files from a folder and runs SQL on the shared database,
/// one request at a time, each taking at least <PROCESSING_TIME> seconds.
#[derive(Parser)]
#[command(
    version,
    after_help = "Example: server 1 5071 0.5   (Ctrl-C stops it and removes it from the servers file)"
)]
struct Args {
    /// This server's id, shown in every reply (`server=<id>`).
    server_id: u32,
    /// Port to listen on (0 picks a free one).
    port: u16,
    /// Seconds each request takes at least, e.g. 0.5 (smaller = more powerful).
    #[arg(value_parser = parse_seconds)]
    processing_time: Duration,
    /// Announce this processing time to balancers instead of the real one: a server whose
    /// declaration is wrong, for the `measured` policy and the dashboard's flag to catch.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    declared_time: Option<Duration>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Where the server records itself for the load balancer.
    #[arg(long, default_value = "data/servers.json")]
    servers_file: PathBuf,
    /// Join the balancer whose admin listener is at HOST:PORT over the network, instead of
    /// recording this server in the servers file (for servers on other machines).
    #[arg(long, value_name = "HOST:PORT")]
    join: Option<String>,
    /// File holding the shared secret for --join (the balancer's --token-file).
    #[arg(long, requires = "join")]
    token_file: Option<PathBuf>,
    /// Database settings (`{"path": "colors.db", "writable": false}`).
    #[arg(long, default_value = "data/database.json")]
    db: PathBuf,
    /// Folder of files to serve.
    #[arg(long, default_value = "data/files")]
    files: PathBuf,
    /// Seconds a query may run before it is stopped.
    #[arg(long, default_value = "5", value_parser = parse_seconds)]
    query_timeout: Duration,
    /// Largest query reply, in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_reply: usize,
    /// Seconds a request line may take to arrive, from its first byte (0: no limit).
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    request_timeout: Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    minilb::init_logging();
    minilb::cli::exit("server", run(args))
}

fn run(args: Args) -> Result<(), String> {
    let token = args
        .token_file
        .as_deref()
        .map(minilb::token::read)
        .transpose()?;
    let registration = match args.join {
        Some(admin) => Registration::Join { admin, token },
        None => Registration::File(args.servers_file),
    };
    let config = ServerConfig {
        id: args.server_id,
        host: args.host,
        port: args.port,
        processing_time: args.processing_time,
        declared_time: args.declared_time,
        registration,
        db_config: args.db,
        files: args.files,
        limits: QueryLimits {
            timeout: args.query_timeout,
            max_reply: args.max_reply,
        },
        request_timeout: args.request_timeout,
    };
    server::run(config, minilb::ctrl_c_channel()?)
}
